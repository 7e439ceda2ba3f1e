//! The HTTP API (hyper): `/metrics`, `/healthz`, `/readyz`, `/status`, and the mutating
//! `POST /nodes/{id}/recover[?rebuild=true]` and `POST /switchover[?to=<node>]`.
//!
//! Reads: the metrics registry and the shared state, per request. Changes: through recovery and
//! switchover, only for a request carrying the configured bearer token; without a configured
//! token the mutating endpoints are off.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::recovery::RecoveryError;
use crate::state::Ctx;
use crate::switchover::SwitchoverError;

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

/// Most HTTP connections served at once; more wait in the listen backlog. Scrapes and probes
/// are few, and each connection costs a descriptor pgpool's supervision also needs.
const HTTP_MAX_CONNECTIONS: usize = 64;

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accept errors such as EMFILE last until something frees a descriptor: retrying at once
/// spins a core and writes a log line per try. Shared with the hook socket.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    delay: Option<Duration>,
    failures: u64,
}

impl AcceptBackoff {
    /// The pause before the next accept, and whether this failure starts a streak (the only
    /// one to log).
    pub fn failed(&mut self) -> (Duration, bool) {
        let first = self.delay.is_none();
        let delay = self
            .delay
            .map_or(ACCEPT_BACKOFF_MIN, |d| (d * 2).min(ACCEPT_BACKOFF_MAX));
        self.delay = Some(delay);
        self.failures += 1;
        (delay, first)
    }

    /// How many accepts failed in the streak this success ends, if one does.
    pub fn succeeded(&mut self) -> Option<u64> {
        self.delay
            .take()
            .map(|_| std::mem::take(&mut self.failures))
    }
}

fn json_reply(status: StatusCode, v: serde_json::Value) -> Resp {
    reply(status, "application/json", v.to_string())
}

/// Extra time a pass may take while the failover lock is held: a promotion waits up to 30 s
/// inside the pass, and a switchover holds the lock a pass may wait for.
const FAILOVER_ALLOWANCE: Duration = Duration::from_secs(60);

/// How long the first pass may take after start: it lists the containers and adopts a primary
/// while the nodes may still be starting.
const STARTUP_GRACE: Duration = Duration::from_secs(30);

/// Age of the last pass beyond which the reconcile loop counts as stuck: three missed ticks,
/// or one tick plus two probe timeouts for a pass whose probes and follow-up calls both hang
/// to their deadline, whichever is longer.
pub fn stale_after(probe_interval: Duration, probe_timeout: Duration) -> Duration {
    (probe_interval * 3).max(probe_interval + probe_timeout * 2)
}

/// The `/healthz` rule. Pure, for unit tests. Until the first pass completes the daemon counts
/// as healthy for `limit` + [`STARTUP_GRACE`] after start; after that a pass must have
/// completed within `limit` (plus [`FAILOVER_ALLOWANCE`] while a failover runs). `Err` is the
/// reason.
pub fn liveness(
    now: Instant,
    started: Instant,
    last_pass: Option<Instant>,
    limit: Duration,
    failing_over: bool,
) -> Result<(), String> {
    let limit = if failing_over {
        limit + FAILOVER_ALLOWANCE
    } else {
        limit
    };
    match last_pass {
        Some(at) if now.saturating_duration_since(at) > limit => Err(format!(
            "the last reconcile pass completed {:.1} s ago (limit {:.1} s)",
            now.saturating_duration_since(at).as_secs_f64(),
            limit.as_secs_f64()
        )),
        Some(_) => Ok(()),
        None if now.saturating_duration_since(started) > limit + STARTUP_GRACE => Err(format!(
            "no reconcile pass completed in the {:.1} s since start",
            now.saturating_duration_since(started).as_secs_f64()
        )),
        None => Ok(()),
    }
}

fn healthz(ctx: &Ctx, started: Instant) -> Resp {
    let last_pass = ctx.with_state(|s| s.last_pass);
    let failing_over = ctx.failover_lock.try_lock().is_err();
    let limit = stale_after(ctx.cfg.probe_interval, ctx.cfg.probe_timeout);
    match liveness(Instant::now(), started, last_pass, limit, failing_over) {
        Ok(()) => json_reply(StatusCode::OK, json!({ "status": "ok" })),
        Err(reason) => json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "unhealthy", "reason": reason }),
        ),
    }
}

/// Serves until the daemon is cancelled (the task is dropped).
pub async fn serve(ctx: Arc<Ctx>, listener: TcpListener) {
    let started = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(HTTP_MAX_CONNECTIONS));
    let mut backoff = AcceptBackoff::default();
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                if let Some(failures) = backoff.succeeded() {
                    tracing::info!(failures, "HTTP accepts connections again");
                }
                stream
            }
            Err(e) => {
                let (delay, first) = backoff.failed();
                if first {
                    tracing::warn!(error = %e, "HTTP accept failing; retrying with back-off");
                }
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let c = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let c = c.clone();
                async move { Ok::<_, Infallible>(route(&c, req, started).await) }
            });
            // A client that never finishes its request headers must not hold a task forever;
            // a recovery it asked for may legitimately take minutes.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            let _ = conn.await;
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Resp {
    json_reply(status, json!({ "error": message.to_string() }))
}

/// The bearer token check; `Err` is the response to send.
fn authorize(ctx: &Ctx, req: &Request<Incoming>) -> Result<(), Box<Resp>> {
    let Some(token) = &ctx.cfg.api_token else {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "mutating endpoints are disabled: set PGPOOL_SIDECAR_API_TOKEN to enable them",
        )));
    };
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if token.matches(g) => Ok(()),
        Some(_) => Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "wrong bearer token",
        ))),
        None => Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <token>` header",
        ))),
    }
}

/// A node named by id (`1`) or host (`pg-1`).
pub fn node_by_name(ctx: &Ctx, key: &str) -> Option<usize> {
    key.parse::<usize>()
        .ok()
        .filter(|&i| i < ctx.cfg.nodes.len())
        .or_else(|| ctx.cfg.nodes.iter().position(|n| n.host == key))
}

fn query_param<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, "true"));
        (k == key).then_some(v)
    })
}

async fn recover(ctx: &Arc<Ctx>, req: Request<Incoming>, key: &str) -> Resp {
    if let Err(r) = authorize(ctx, &req) {
        return *r;
    }
    let Some(node) = node_by_name(ctx, key) else {
        return error(StatusCode::NOT_FOUND, format!("unknown node {key:?}"));
    };
    let rebuild = matches!(query_param(&req, "rebuild"), Some("true" | "1" | "yes"));
    match crate::recovery::recover(ctx, node, rebuild, "requested over HTTP").await {
        Ok(r) => json_reply(StatusCode::OK, json!(r)),
        Err(e @ (RecoveryError::IsPrimary(_) | RecoveryError::Busy(_))) => {
            error(StatusCode::CONFLICT, e)
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn switchover(ctx: &Arc<Ctx>, req: Request<Incoming>) -> Resp {
    if let Err(r) = authorize(ctx, &req) {
        return *r;
    }
    let to = match query_param(&req, "to") {
        None => None,
        Some(key) => match node_by_name(ctx, key) {
            Some(n) => Some(n),
            None => return error(StatusCode::NOT_FOUND, format!("unknown node {key:?}")),
        },
    };
    match crate::switchover::switchover(ctx, to).await {
        Ok(r) => json_reply(StatusCode::OK, json!(r)),
        Err(
            e @ (SwitchoverError::AlreadyPrimary(_)
            | SwitchoverError::TargetUnhealthy { .. }
            | SwitchoverError::NoStandby
            | SwitchoverError::NoPrimary),
        ) => error(StatusCode::CONFLICT, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn route(ctx: &Arc<Ctx>, req: Request<Incoming>, started: Instant) -> Resp {
    let path = req.uri().path().to_string();
    if req.method() == Method::POST {
        if path == "/switchover" {
            return switchover(ctx, req).await;
        }
        if let Some(key) = path
            .strip_prefix("/nodes/")
            .and_then(|r| r.strip_suffix("/recover"))
        {
            return recover(ctx, req, key).await;
        }
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => match ctx.metrics.render() {
            Ok(text) => reply(StatusCode::OK, "text/plain; version=0.0.4", text),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
        (&Method::GET, "/healthz") => healthz(ctx, started),
        (&Method::GET, "/readyz") => {
            let (ready, why) = ctx.with_state(|s| {
                if s.view.primary.is_none() {
                    (false, "no primary known yet")
                } else if !s.pgpool_up {
                    (false, "pgpool does not answer")
                } else {
                    (true, "ready")
                }
            });
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "text/plain", format!("{why}\n"))
        }
        (&Method::GET, "/status") => json_reply(StatusCode::OK, status(ctx)),
        (_, "/metrics" | "/healthz" | "/readyz" | "/status" | "/switchover") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// `/status`: the cluster as the sidecar sees it. Built from plain state; no secret is in it.
pub fn status(ctx: &Ctx) -> serde_json::Value {
    ctx.with_state(|s| {
        let nodes: Vec<serde_json::Value> = s
            .view
            .nodes
            .iter()
            .map(|n| {
                let pool = s.pool_nodes.iter().find(|p| p.node_id == n.id);
                let rep = s.replication.get(&n.name);
                json!({
                    "id": n.id,
                    "name": n.name,
                    "state": s.node_state.get(&n.id),
                    "role": match &n.pg {
                        Some(pg) if !pg.in_recovery => "primary",
                        Some(_) => "standby",
                        None => "unknown",
                    },
                    "container": n.container,
                    "reachable": n.pg.is_some(),
                    "probe_failures": n.probe_failures,
                    "timeline": n.pg.as_ref().map(|p| p.timeline),
                    "lsn": n.pg.as_ref().map(|p| crate::postgres::format_lsn(p.lsn)),
                    "upstream": n.pg.as_ref().and_then(|p| p.upstream_host.clone()),
                    "streaming": n.streaming_from_primary,
                    "lag_bytes": rep.map(|r| r.replay_lag_bytes),
                    "lag_seconds": rep.map(|r| r.replay_lag_seconds),
                    "sync_state": rep.map(|r| r.sync_state.clone()),
                    "pgpool_status": pool.map(|p| p.status),
                    "pgpool_role": pool.map(|p| p.role.clone()),
                    "fenced": s.fenced.contains(&n.id),
                    "foreign": s.foreign.contains(&n.id),
                    "busy": s.busy.contains(&n.id),
                    "intent": crate::cluster::restart::intent(
                        s.fenced.contains(&n.id),
                        s.stopped.contains_key(&n.id),
                    ),
                    "operation": s.operations.get(&n.id),
                    "replication_slot": s.slots.get(&n.id),
                    "connections": n.pg.as_ref().map(|p| json!({
                        "in_use": p.client_backends,
                        "max": p.max_connections,
                    })),
                })
            })
            .collect();
        json!({
            "primary": s.view.primary.map(|p| ctx.node_name(p).to_string()),
            "primary_id": s.view.primary,
            "pgpool_up": s.pgpool_up,
            "pgpool_version": ctx.pgpool_version.to_string(),
            // `in_use` is null until read through PCP, or when the last read failed.
            "pgpool_clients": {
                "in_use": s.pgpool_clients.map(|c| c.in_use),
                "max": crate::pgpool::conf::num_init_children(&ctx.cfg),
            },
            "nodes": nodes,
            "last_failover": s.last_failover,
            "last_refusal": s.last_refusal,
            "adoption": s.adoption,
            "state_file": {
                "path": ctx.journal.path().display().to_string(),
                "at_start": s.state_file,
            },
            "remembered_primary": s.view.remembered_primary.map(|p| ctx.node_name(p).to_string()),
            "resumed": s.resumed,
            "tls": s.tls,
            "users": s.users,
            "config": ctx.cfg.redacted(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn accept_failures_back_off_and_log_once_per_streak() {
        let mut b = AcceptBackoff::default();
        let ms = Duration::from_millis;
        let got: Vec<_> = (0..6).map(|_| b.failed()).collect();
        assert_eq!(
            got,
            [
                (ms(100), true),
                (ms(200), false),
                (ms(400), false),
                (ms(800), false),
                (ms(1000), false),
                (ms(1000), false)
            ]
        );
        assert_eq!(b.succeeded(), Some(6));
        assert_eq!(b.succeeded(), None);
        assert_eq!(b.failed(), (ms(100), true));
    }

    #[test]
    fn stale_after_covers_missed_ticks_and_hung_probes() {
        assert_eq!(stale_after(S, S), 3 * S);
        assert_eq!(stale_after(2 * S, 5 * S), 12 * S);
    }

    #[test]
    fn healthz_fails_when_the_last_pass_is_old() {
        let start = Instant::now();
        let limit = 3 * S;
        let at = |secs: u32| start + secs * S;
        assert!(liveness(at(100), start, Some(at(98)), limit, false).is_ok());
        let e = liveness(at(100), start, Some(at(90)), limit, false).unwrap_err();
        assert!(e.contains("10.0 s ago"), "{e}");
        // A failover holds the pass up to its own deadlines, not forever.
        assert!(liveness(at(100), start, Some(at(90)), limit, true).is_ok());
        assert!(liveness(at(100), start, Some(at(30)), limit, true).is_err());
    }

    #[test]
    fn healthz_grants_a_start_up_grace_before_the_first_pass() {
        let start = Instant::now();
        let limit = 3 * S;
        assert!(liveness(start + 20 * S, start, None, limit, false).is_ok());
        let e = liveness(start + 40 * S, start, None, limit, false).unwrap_err();
        assert!(e.contains("since start"), "{e}");
    }
}
