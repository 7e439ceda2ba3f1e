//! The `pgpool-sidecar` command: a thin shell over the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pgpool_sidecar::config::{self, LogFormat, ProcessEnv, DEFAULT_HOOK_SOCKET};
use pgpool_sidecar::pgpool::conf::{pgpool_conf, Paths};
use pgpool_sidecar::{daemon, hook};

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
    /// Called by pgpool (failover_command / follow_primary_command); forwards to the daemon.
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
    /// pgpool asks standby `node` (%d) to follow the new primary (%m).
    #[command(allow_negative_numbers = true)]
    FollowPrimary { node: i64, new_primary: i64 },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
                // the same exit code, so a passing configcheck means `run` gets that far.
                if let Err(e) = pgpool_conf(&cfg, &Paths::default()) {
                    eprintln!("pgpool-sidecar: invalid configuration:\n{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
                println!(
                    "{}",
                    serde_json::to_string_pretty(&cfg.redacted()).expect("json")
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Healthcheck => healthcheck().await,
        Command::Recover { node, rebuild } => {
            let path = format!(
                "/nodes/{node}/recover{}",
                if rebuild { "?rebuild=true" } else { "" }
            );
            api_call(&path).await
        }
        Command::Switchover { to } => {
            let path = match to {
                Some(t) => format!("/switchover?to={t}"),
                None => "/switchover".to_string(),
            };
            api_call(&path).await
        }
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
                HookCall::FollowPrimary { node, new_primary } => {
                    hook::HookRequest::FollowPrimary { node, new_primary }
                }
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

/// One request to the local daemon's HTTP API; (status, body). One request line needs no HTTP
/// client library.
async fn local_request(
    method: &str,
    path: &str,
    token: Option<&str>,
    limit: Duration,
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = std::env::var("PGPOOL_SIDECAR_HTTP_LISTEN")
        .ok()
        .and_then(|v| {
            v.rsplit(':')
                .next()
                .and_then(|p| p.trim().parse::<u16>().ok())
        })
        .unwrap_or(9720);
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.0\r\nHost: localhost\r\n{auth}Content-Length: 0\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let resp = tokio::time::timeout(limit, attempt)
        .await
        .map_err(|_| format!("no answer from the daemon on port {port} within {limit:?}"))?
        .map_err(|e| format!("cannot reach the daemon on 127.0.0.1:{port}: {e}"))?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.trim().to_string()))
}

/// GET /readyz: exit 0 when ready.
async fn healthcheck() -> ExitCode {
    match local_request("GET", "/readyz", None, Duration::from_secs(3)).await {
        Ok((200, _)) => ExitCode::SUCCESS,
        Ok((_, body)) => {
            eprintln!("not ready: {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("not ready: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A mutating API call with the token from PGPOOL_SIDECAR_API_TOKEN(_FILE); prints the answer.
async fn api_call(path: &str) -> ExitCode {
    let token = std::env::var("PGPOOL_SIDECAR_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| {
            let f = std::env::var("PGPOOL_SIDECAR_API_TOKEN_FILE").ok()?;
            std::fs::read_to_string(f)
                .ok()
                .map(|t| t.trim_end_matches('\n').to_string())
        });
    match local_request("POST", path, token.as_deref(), Duration::from_secs(3600)).await {
        Ok((200, body)) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("pgpool-sidecar: refused ({status}): {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("pgpool-sidecar: {e}");
            ExitCode::FAILURE
        }
    }
}
