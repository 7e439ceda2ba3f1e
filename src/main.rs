//! The `pgpool-sidecar` command: a thin shell over the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pgpool_sidecar::config::{self, LogFormat, ProcessEnv, DEFAULT_HOOK_SOCKET};
use pgpool_sidecar::pgpool::conf::{pgpool_conf, Paths};
use pgpool_sidecar::pgpool::version::PgpoolVersion;
use pgpool_sidecar::{client, daemon, hook};

/// Exit code for bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "pgpool-sidecar",
    version,
    about = "pgpool-II plus automatic failover and recovery for PostgreSQL on Docker"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the container's PID 1): supervise pgpool and manage the cluster.
    Run,
    /// Validate the configuration from the environment and print it with secrets redacted.
    Configcheck,
    /// Exit 0 when the local daemon reports ready (for container healthchecks).
    Healthcheck,
    /// Bring a node back as a streaming standby (re-attach → pg_rewind → rebuild), through the
    /// local daemon's API (needs PGPOOL_SIDECAR_API_TOKEN).
    Recover {
        /// Node id or host name, e.g. `pg-1`.
        node: String,
        /// Skip the cheaper rungs and rebuild from the primary.
        #[arg(long)]
        rebuild: bool,
    },
    /// Planned switchover, no acknowledged commit lost (needs PGPOOL_SIDECAR_API_TOKEN).
    Switchover {
        /// The standby to promote (default: the most advanced healthy one).
        #[arg(long)]
        to: Option<String>,
    },
    /// Called by pgpool (its failover_command); forwards to the daemon.
    Hook {
        /// The daemon's hook socket.
        #[arg(long, default_value = DEFAULT_HOOK_SOCKET)]
        socket: PathBuf,
        /// Seconds to wait for the daemon's answer.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        #[command(subcommand)]
        call: HookCall,
    },
}

#[derive(Subcommand)]
enum HookCall {
    /// pgpool detached a node (`%d %P`).
    #[command(allow_negative_numbers = true)]
    Failover {
        /// The failed node id (%d).
        failed_node: i64,
        /// pgpool's primary node id before the failure (%P; -1 when none).
        old_primary: i64,
        /// pgpool's new main node id (%m); ignored: the sidecar chooses the new primary.
        new_main: Option<i64>,
    },
}

fn init_tracing(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // tokio-postgres logs every query's text at debug level, and some hold a secret (the
    // standby's password file line, the replication role's verifier): never, whatever
    // RUST_LOG asks (a directive for the same target replaces the user's).
    for target in ["tokio_postgres::simple_query", "tokio_postgres::query"] {
        if let Ok(off) = format!("{target}=off").parse() {
            filter = filter.add_directive(off);
        }
    }
    // Colours only for a person at a terminal: `docker logs` and log shippers get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn load_config() -> Result<config::Config, ExitCode> {
    config::load(&ProcessEnv).map_err(|e| {
        eprintln!("pgpool-sidecar: invalid configuration:\n{e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let cfg = match load_config() {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_tracing(cfg.log_format);
            tracing::info!(
                version = env!("CARGO_PKG_VERSION"),
                "pgpool-sidecar starting"
            );
            match daemon::run(cfg).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "pgpool-sidecar failed");
                    eprintln!("pgpool-sidecar: {e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
        Command::Configcheck => match load_config() {
            Ok(cfg) => {
                // `run` renders pgpool.conf before anything else; the same refusals here, with
                // the same exit code, so a passing configcheck means `run` gets that far. None
                // of them depends on the pgpool version, which configcheck does not ask for (it
                // runs where pgpool may not be installed).
                if let Err(e) = pgpool_conf(&cfg, &Paths::default(), PgpoolVersion::NEWEST_KNOWN) {
                    eprintln!("pgpool-sidecar: invalid configuration:\n{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
                match serde_json::to_string_pretty(&cfg.redacted()) {
                    Ok(text) => {
                        println!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("pgpool-sidecar: cannot print the configuration: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(code) => code,
        },
        Command::Healthcheck => {
            let cfg = match load_config() {
                Ok(c) => c,
                Err(code) => return code,
            };
            match client::healthcheck(&cfg).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("not ready: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Recover { node, rebuild } => api_call(&client::recover_path(&node, rebuild)).await,
        Command::Switchover { to } => api_call(&client::switchover_path(to.as_deref())).await,
        Command::Hook {
            socket,
            timeout,
            call,
        } => {
            let req = match call {
                HookCall::Failover {
                    failed_node,
                    old_primary,
                    ..
                } => hook::HookRequest::Failover {
                    failed_node,
                    old_primary,
                },
            };
            match hook::call(&socket, &req, Duration::from_secs(timeout)).await {
                Ok(msg) => {
                    println!("pgpool-sidecar hook: {msg}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pgpool-sidecar hook: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// A mutating API call with the configured token; prints the answer.
async fn api_call(path: &str) -> ExitCode {
    let cfg = match load_config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client::api_call(&cfg, path).await {
        Ok(body) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pgpool-sidecar: {e}");
            ExitCode::FAILURE
        }
    }
}
