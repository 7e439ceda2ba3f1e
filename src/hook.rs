//! pgpool's callbacks into the daemon.
//!
//! pgpool runs `pgpool-sidecar hook failover …` / `… hook follow-primary …` (its
//! failover_command and follow_primary_command). That client forwards the call over a local unix
//! socket to the running daemon and waits for the answer, so pgpool's own (often first)
//! detection goes through the same single-flight failover as the sidecar's.
//!
//! Reads: one JSON line per connection. Changes: through failover/repoint. Runs per callback.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::failover::{self, Outcome};
use crate::state::Ctx;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot reach the pgpool-sidecar daemon at {path}: {message} (is `pgpool-sidecar run` running?)")]
    DaemonUnreachable { path: String, message: String },
    #[error("the daemon did not answer within {0} s")]
    NoAnswer(u64),
    #[error("the daemon sent a malformed answer: {0}")]
    BadAnswer(String),
    #[error("the daemon refused: {0}")]
    Refused(String),
    #[error("cannot listen on {path}: {message}")]
    Listen { path: String, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "hook", rename_all = "kebab-case")]
pub enum HookRequest {
    /// pgpool detached `failed_node`; `old_primary` is pgpool's primary id (-1: none).
    Failover { failed_node: i64, old_primary: i64 },
    /// After a primary change pgpool asks each standby to follow `new_primary`.
    FollowPrimary { node: i64, new_primary: i64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookResponse {
    pub ok: bool,
    pub message: String,
}

/// Client side: send one request, wait for the answer.
pub async fn call(socket: &Path, req: &HookRequest, limit: Duration) -> Result<String, HookError> {
    let path = socket.display().to_string();
    let mut stream =
        UnixStream::connect(socket)
            .await
            .map_err(|e| HookError::DaemonUnreachable {
                path: path.clone(),
                message: e.to_string(),
            })?;
    let exchange = async {
        let mut line = serde_json::to_string(req).expect("request serializes");
        line.push('\n');
        stream.write_all(line.as_bytes()).await?;
        let mut reader = BufReader::new(stream);
        let mut answer = String::new();
        reader.read_line(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| HookError::NoAnswer(limit.as_secs()))?
        .map_err(|e| HookError::DaemonUnreachable {
            path,
            message: e.to_string(),
        })?;
    let resp: HookResponse =
        serde_json::from_str(answer.trim()).map_err(|e| HookError::BadAnswer(e.to_string()))?;
    if resp.ok {
        Ok(resp.message)
    } else {
        Err(HookError::Refused(resp.message))
    }
}

/// Daemon side: accept callbacks until cancelled.
pub async fn serve(ctx: Arc<Ctx>, path: PathBuf) -> Result<(), HookError> {
    let listen_err = |e: std::io::Error| HookError::Listen {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen_err)?;
    }
    // A socket file left by a previous run would make bind fail.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(listen_err)?;
    // pgpool's user calls this socket (its hooks run as that user); nobody else may.
    if let Some(o) = ctx.paths.owner {
        use std::os::unix::fs::PermissionsExt;
        let perm = |p: &std::path::Path, mode: u32| -> std::io::Result<()> {
            std::os::unix::fs::chown(p, None, Some(o.gid))?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        };
        // The socket alone: its directory may be a shared one (HOOK_SOCKET=/tmp/…).
        perm(&path, 0o660).map_err(listen_err)?;
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "hook accept failed");
                continue;
            }
        };
        let c = ctx.clone();
        ctx.spawn("hook-call", async move {
            if let Err(e) = handle(c, stream).await {
                tracing::warn!(error = %e, "hook call failed");
            }
        });
    }
}

async fn handle(ctx: Arc<Ctx>, stream: UnixStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let resp = match serde_json::from_str::<HookRequest>(line.trim()) {
        Ok(req) => dispatch(&ctx, req).await,
        Err(e) => HookResponse {
            ok: false,
            message: format!("malformed hook request: {e}"),
        },
    };
    let mut out = serde_json::to_string(&resp).expect("response serializes");
    out.push('\n');
    write.write_all(out.as_bytes()).await
}

fn node_index(ctx: &Ctx, id: i64) -> Option<usize> {
    usize::try_from(id)
        .ok()
        .filter(|&i| i < ctx.cfg.nodes.len())
}

async fn dispatch(ctx: &Arc<Ctx>, req: HookRequest) -> HookResponse {
    let ok = |m: String| HookResponse {
        ok: true,
        message: m,
    };
    match req {
        HookRequest::Failover { failed_node, .. } => {
            let Some(node) = node_index(ctx, failed_node) else {
                return HookResponse {
                    ok: false,
                    message: format!("unknown node id {failed_node}"),
                };
            };
            let name = ctx.node_name(node).to_string();
            if ctx.primary() != Some(node) {
                tracing::warn!(node = %name, "Standby node is down. Failover not triggered!");
                ctx.wake.notify_one();
                return ok(format!("standby {name} is down; failover not triggered"));
            }
            match failover::failover(ctx, node, "pgpool", "pgpool detached the primary", true).await
            {
                Ok(Outcome::Promoted { new_primary }) => {
                    ok(format!("promoted {}", ctx.node_name(new_primary)))
                }
                Ok(Outcome::NotPrimary { current }) => ok(format!(
                    "already failed over; primary is {}",
                    current
                        .map(|p| ctx.node_name(p).to_string())
                        .unwrap_or("unknown".into())
                )),
                Ok(Outcome::PrimaryAlive) => {
                    // pgpool detached a live primary: put it back once pgpool's failover ends.
                    let c = ctx.clone();
                    ctx.spawn(format!("reattach-{name}"), async move {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let _ = c.pgpool.attach(node, Duration::from_secs(30)).await;
                    });
                    ok(format!("primary {name} is alive; re-attaching it"))
                }
                Err(e) => HookResponse {
                    ok: false,
                    message: e.to_string(),
                },
            }
        }
        HookRequest::FollowPrimary { node, .. } => {
            let Some(node) = node_index(ctx, node) else {
                return HookResponse {
                    ok: false,
                    message: format!("unknown node id {node}"),
                };
            };
            // Under the failover lock, like every re-point: a promotion in flight would
            // otherwise be undone for this standby.
            let _guard = ctx.failover_lock.lock().await;
            let (primary, may_follow) = ctx.with_state(|s| {
                let primary = s.view.primary;
                let followers = primary
                    .map(|p| crate::cluster::followers(&s.view, p, &[]))
                    .unwrap_or_default();
                (primary, followers.contains(&node))
            });
            match primary {
                Some(p) if may_follow => {
                    failover::repoint(ctx, node, p).await;
                    ctx.wake.notify_one();
                    ok(format!(
                        "{} follows {}",
                        ctx.node_name(node),
                        ctx.node_name(p)
                    ))
                }
                _ => ok(format!("{} needs no re-pointing", ctx.node_name(node))),
            }
        }
    }
}
