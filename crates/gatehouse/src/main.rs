//! `gatehouse`: one binary for the gateway role (and, later, sidecar and control).
//! This crate parses the command line and starts roles; the logic lives in the library crates.

mod gateway;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "API gateway and service mesh in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the edge API gateway.
    Gateway {
        /// Configuration file (YAML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Worker threads (default: one per core).
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
    },
    /// Validate a configuration file: exit 0 when valid, 1 with FILE:LINE:COLUMN lines otherwise.
    Check {
        /// Configuration file (YAML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print the JSON Schema of the configuration.
    Schema,
    /// Run a self-contained demo: the gateway in front of demo services started in-process.
    Demo {
        /// Address of the gateway listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Address of the admin listener.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Schema => {
            print!("{}", gatehouse_config::schema_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => Ok(gateway::check(&config)),
        Command::Gateway { config, threads } => {
            init_logging();
            runtime(threads).and_then(|rt| rt.block_on(gateway::run_file(&config)))
        }
        Command::Demo { listen, admin } => {
            init_logging();
            runtime(None).and_then(|rt| rt.block_on(gateway::run_demo(listen, admin)))
        }
    };
    result.unwrap_or_else(|code| code)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(n) = threads.filter(|n| *n > 1) {
        builder.worker_threads(n);
    }
    builder.enable_all().build().map_err(|err| {
        eprintln!("gatehouse: cannot start the runtime: {err}");
        ExitCode::FAILURE
    })
}
