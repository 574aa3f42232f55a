//! Gatehouse configuration: the YAML model, loading with `${ENV_VAR}` substitution, and
//! validation that reports every problem as `FILE:LINE:COLUMN: message`.
//!
//! The data plane compiles a validated [`Config`] into its runtime snapshot; this crate only
//! knows what a configuration says, not how it runs.

pub mod auth;
pub mod authorization;
pub mod caching;
pub mod grpc;
mod load;
pub mod mesh;
pub mod model;
mod problem;
pub mod shaping;
pub mod telemetry;
pub mod traffic;
pub mod transform;
pub mod units;
mod validate;
pub mod versioning;

pub use auth::*;
pub use authorization::*;
pub use caching::*;
pub use grpc::*;
pub use load::{load_file, parse_str, parse_value, schema_json};
pub use mesh::*;
pub use model::*;
pub use problem::{ConfigErrors, Problem};
pub use serde_saphyr::{Location, Spanned};
pub use shaping::*;
pub use telemetry::*;
pub use traffic::*;
pub use transform::*;
pub use units::{ByteSize, HumanDuration};
pub use validate::{parse_cidr, parse_rfc3339, template_captures, JWT_ALGORITHMS};
pub use versioning::*;
