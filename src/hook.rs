//! pgpool's callbacks into the daemon.
//!
//! pgpool runs `pgpool-sidecar hook failover …` (its failover_command). That client forwards the call over a local unix
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
        let mut line = serde_json::to_string(req).map_err(std::io::Error::other)?;
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
    let permits = Arc::new(tokio::sync::Semaphore::new(HOOK_MAX_CONNECTIONS));
    let mut backoff = crate::http::AcceptBackoff::default();
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return Ok(());
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                if let Some(failures) = backoff.succeeded() {
                    tracing::info!(failures, "hook socket accepts connections again");
                }
                stream
            }
            Err(e) => {
                let (delay, first) = backoff.failed();
                if first {
                    tracing::warn!(error = %e, "hook accept failing; retrying with back-off");
                }
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let c = ctx.clone();
        ctx.spawn("hook-call", async move {
            let _permit = permit;
            if let Err(e) = handle(c, stream).await {
                tracing::warn!(error = %e, "hook call failed");
            }
        });
    }
}

/// Most callbacks handled at once: pgpool makes one per node at a time, so more is a client
/// gone wrong, and each holds a descriptor.
const HOOK_MAX_CONNECTIONS: usize = 16;

/// Longest request line; a real one is under 100 bytes.
const HOOK_LINE_MAX: usize = 4096;

/// How long a client may take to send its line: one that never ends it must not hold a slot.
const HOOK_READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("hook request longer than {0} bytes")]
    TooLong(usize),
    #[error("no complete hook request within {0:?}")]
    TimedOut(Duration),
    #[error("hook request is not UTF-8")]
    NotText,
    #[error("cannot read the hook request: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the one request line: at most `max` bytes (newline excluded), within `limit`.
pub async fn read_request<R: tokio::io::AsyncRead + Unpin>(
    read: R,
    max: usize,
    limit: Duration,
) -> Result<String, RequestError> {
    use tokio::io::AsyncReadExt;
    let mut line = Vec::new();
    let mut reader = BufReader::new(read.take(max as u64 + 1));
    tokio::time::timeout(limit, reader.read_until(b'\n', &mut line))
        .await
        .map_err(|_| RequestError::TimedOut(limit))??;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    if line.len() > max {
        return Err(RequestError::TooLong(max));
    }
    String::from_utf8(line).map_err(|_| RequestError::NotText)
}

async fn handle(ctx: Arc<Ctx>, stream: UnixStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let resp = match read_request(read, HOOK_LINE_MAX, HOOK_READ_TIMEOUT).await {
        Ok(line) => match serde_json::from_str::<HookRequest>(line.trim()) {
            Ok(req) => dispatch(&ctx, req).await,
            Err(e) => HookResponse {
                ok: false,
                message: format!("malformed hook request: {e}"),
            },
        },
        Err(e) => HookResponse {
            ok: false,
            message: e.to_string(),
        },
    };
    let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| {
        r#"{"ok":false,"message":"the daemon could not encode its answer"}"#.to_string()
    });
    out.push('\n');
    // A client that stopped reading must not hold the slot either.
    tokio::time::timeout(HOOK_READ_TIMEOUT, write.write_all(out.as_bytes()))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client does not read"))?
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
            match failover::failover(
                ctx,
                node,
                "pgpool",
                "pgpool detached the primary",
                failover::Report::Suspected,
            )
            .await
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_line_is_read_within_its_limits() {
        let (mut client, server) = UnixStream::pair().unwrap();
        client
            .write_all(b"{\"hook\":\"failover\"}\n")
            .await
            .unwrap();
        let line = read_request(server, 64, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(line, "{\"hook\":\"failover\"}");
    }

    #[tokio::test]
    async fn an_overlong_line_is_refused() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let writer = tokio::spawn(async move {
            let _ = client.write_all(&[b'a'; 10_000]).await;
            client
        });
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            read_request(server, HOOK_LINE_MAX, Duration::from_secs(60)),
        )
        .await
        .expect("refused without waiting for a newline");
        assert!(
            matches!(r, Err(RequestError::TooLong(HOOK_LINE_MAX))),
            "{r:?}"
        );
        drop(writer);
    }

    #[tokio::test]
    async fn a_client_that_never_ends_its_line_is_timed_out() {
        let (mut client, server) = UnixStream::pair().unwrap();
        client.write_all(b"{\"hook\":").await.unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            read_request(server, HOOK_LINE_MAX, Duration::from_millis(100)),
        )
        .await
        .expect("read_request returns by itself");
        assert!(matches!(r, Err(RequestError::TimedOut(_))), "{r:?}");
        drop(client);
    }
}
