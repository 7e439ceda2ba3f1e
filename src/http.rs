//! The HTTP API (hyper): `/metrics`, `/healthz`, `/readyz`, `/status`.
//!
//! Reads: the metrics registry and the shared state, per request. Changes: nothing yet; mutating
//! endpoints will require the bearer token and are off without one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::state::Ctx;

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn json_reply(status: StatusCode, v: serde_json::Value) -> Resp {
    reply(status, "application/json", v.to_string())
}

/// Serves until the daemon is cancelled (the task is dropped).
pub async fn serve(ctx: Arc<Ctx>, listener: TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                continue;
            }
        };
        let c = ctx.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let c = c.clone();
                async move { Ok::<_, Infallible>(route(&c, req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            // A client that never finishes its request must not hold a task forever.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

fn route(ctx: &Ctx, req: Request<Incoming>) -> Resp {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            ctx.metrics.render(),
        ),
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
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
        (_, "/metrics" | "/healthz" | "/readyz" | "/status") => reply(
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
                })
            })
            .collect();
        json!({
            "primary": s.view.primary.map(|p| ctx.node_name(p).to_string()),
            "primary_id": s.view.primary,
            "pgpool_up": s.pgpool_up,
            "nodes": nodes,
            "last_failover": s.last_failover,
            "last_refusal": s.last_refusal,
            "config": ctx.cfg.redacted(),
        })
    })
}
