//! `gatehouse`: one binary for the gateway, sidecar and control-plane roles.
//! This crate parses the command line and starts roles; the logic lives in the library crates.

mod directory;
mod gateway;
mod keys;
mod mesh;
mod metering;
mod users;

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
    /// Show what the gateway would do with a request: the route and why earlier routes did
    /// not match, the policies and their decisions, the action. Sends nothing upstream.
    Explain {
        /// Configuration file (YAML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Request method.
        #[arg(short = 'X', long, default_value = "GET")]
        method: String,
        /// Request header, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header", value_name = "HEADER")]
        headers: Vec<String>,
        /// Client address the policies see.
        #[arg(long, value_name = "IP")]
        client_ip: Option<std::net::IpAddr>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Absolute URL, e.g. https://api.example.com/orders/42.
        url: String,
    },
    /// Make credentials: API keys and password hashes for `consumers`.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage dashboard users (in the configuration's store).
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Run the mesh sidecar next to one application (`mesh` and `sidecar` sections).
    Sidecar {
        /// Configuration file (YAML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Worker threads (default: one per core).
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
    },
    /// Run the mesh control plane (`control` section, state in `store`), or manage it.
    Control {
        /// Configuration file (YAML).
        #[arg(short, long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<ControlCommand>,
    },
    /// Run a self-contained demo: the gateway in front of demo services started in-process.
    Demo {
        /// Address of the gateway listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Address of the admin listener (and the dashboard).
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Address of the developer portal.
        #[arg(long, default_value = "127.0.0.1:8081")]
        portal: SocketAddr,
        /// Run the service-mesh demo instead: a control plane, the gateway and five
        /// workloads with sidecars (docs/mesh.md).
        #[arg(long)]
        mesh: bool,
        /// First of the loopback ports the mesh demo uses (it takes the next 60).
        #[arg(long, default_value = "7400")]
        mesh_base_port: u16,
    },
}

#[derive(Subcommand)]
enum ControlCommand {
    /// Create a join token for a service; prints it once (it is stored hashed).
    Token {
        /// The service (service account) the token's holder becomes.
        #[arg(long)]
        service: String,
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Lifetime, e.g. `1h` (default: does not expire).
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
    },
    /// Generate a new root CA for the trust domain (PEM certificate and key, for
    /// `control.ca`): the first step of rotating the mesh's root (docs/mesh.md).
    NewRoot {
        /// Where to write the certificate (must not exist).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// Where to write the private key, readable by its owner only (must not exist).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Create a dashboard user, or reset the name, role and password of an existing one
    /// (ending its sessions). The password is read from the first line of stdin.
    Add {
        /// Configuration whose `store` holds the users.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long)]
        email: String,
        /// Display name (default: the email).
        #[arg(long, default_value = "")]
        name: String,
        /// `admin`, `editor` or `viewer`.
        #[arg(long)]
        role: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Generate an API key: prints the key once, then the entry for the configuration.
    Generate {
        /// Configuration whose `authentication.api_key_secret` keys the hash.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Read the secret from this environment variable instead.
        #[arg(long, value_name = "VAR")]
        secret_env: Option<String>,
        /// Key prefix (letters and digits), e.g. `live` or `test`.
        #[arg(long, default_value = "gh")]
        prefix: String,
        /// Expiry (RFC 3339), e.g. 2027-01-01T00:00:00Z.
        #[arg(long, value_name = "TIME")]
        expires: Option<String>,
    },
    /// Hash a password read from stdin (argon2id) for `basic_auth.password_hash`.
    HashPassword,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Schema => {
            print!("{}", gatehouse_config::schema_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => Ok(gateway::check(&config)),
        Command::Keys {
            command:
                KeysCommand::Generate {
                    config,
                    secret_env,
                    prefix,
                    expires,
                },
        } => Ok(keys::generate(
            config.as_deref(),
            secret_env.as_deref(),
            &prefix,
            expires.as_deref(),
        )),
        Command::Keys {
            command: KeysCommand::HashPassword,
        } => Ok(keys::hash_password()),
        Command::Users {
            command:
                UsersCommand::Add {
                    config,
                    email,
                    name,
                    role,
                },
        } => runtime(Some(1)).map(|rt| rt.block_on(users::add(&config, &email, &name, &role))),
        Command::Explain {
            config,
            method,
            headers,
            client_ip,
            json,
            url,
        } => runtime(Some(1)).and_then(|rt| {
            rt.block_on(gateway::explain(
                &config, &method, &headers, client_ip, json, &url,
            ))
        }),
        Command::Gateway { config, threads } => {
            init_logging();
            runtime(threads).and_then(|rt| rt.block_on(mesh::run_gateway_in_mesh(&config)))
        }
        Command::Sidecar { config, threads } => {
            init_logging();
            runtime(threads).and_then(|rt| rt.block_on(mesh::run_sidecar(&config)))
        }
        Command::Control { config, command } => match config {
            None => {
                eprintln!("gatehouse control: --config FILE is required");
                Ok(ExitCode::FAILURE)
            }
            Some(config) => match command {
                None => {
                    init_logging();
                    runtime(None).and_then(|rt| rt.block_on(mesh::run_control(&config)))
                }
                Some(ControlCommand::Token {
                    service,
                    namespace,
                    ttl,
                }) => runtime(Some(1)).and_then(|rt| {
                    rt.block_on(mesh::create_token(
                        &config,
                        &namespace,
                        &service,
                        ttl.as_deref(),
                    ))
                }),
                Some(ControlCommand::NewRoot { cert, key }) => {
                    mesh::create_root(&config, &cert, &key)
                }
            },
        },
        Command::Demo {
            listen,
            admin,
            portal: _,
            mesh: true,
            mesh_base_port,
        } => {
            init_logging();
            let ports = gatehouse_demo::mesh::MeshPorts {
                base: mesh_base_port,
                gateway: listen,
                admin,
            };
            runtime(None).and_then(|rt| rt.block_on(mesh::run_mesh_demo(ports)))
        }
        Command::Demo {
            listen,
            admin,
            portal,
            mesh: false,
            ..
        } => {
            init_logging();
            runtime(None).and_then(|rt| rt.block_on(gateway::run_demo(listen, admin, portal)))
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
