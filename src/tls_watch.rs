//! Watches which legs are encrypted: client→pgpool, pgpool→each node, each standby→primary.
//!
//! Reads: on every node, pgpool's sessions in `pg_stat_activity` joined with `pg_stat_ssl`; on
//! the primary, its walsenders in `pg_stat_replication` joined with `pg_stat_ssl`. Changes: the
//! `tls_*` metrics and the `tls` part of `/status`. How often: every [`EVERY`], on connections
//! of its own with the probe timeout, so a slow node never delays the reconcile loop's probes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use prometheus::{IntGaugeVec, Opts, Registry};

use crate::postgres::Session;
use crate::state::Ctx;
use crate::tls::{replication_leg, Legs, Sessions};

/// Often enough for a dashboard and the tests; each look is two small queries per node.
pub const EVERY: Duration = Duration::from_secs(2);

pub const LEGS: [&str; 3] = ["client", "pgpool_backend", "replication"];

/// The `tls_*` series.
#[derive(Clone)]
pub struct TlsMetrics {
    /// 1 when the leg is set up for TLS by the sidecar (today: `client`, pgpool's `ssl = on`).
    pub enabled: IntGaugeVec,
    /// Sessions on the leg by node and `encrypted`; a standby's stream counts 1 on its node.
    pub sessions: IntGaugeVec,
}

impl TlsMetrics {
    pub fn new(r: &Registry, node_count: usize) -> Result<Self, prometheus::Error> {
        let enabled = IntGaugeVec::new(
            Opts::new(
                "pgpool_sidecar_tls_enabled",
                "1 when the leg offers TLS (client: pgpool serves it to clients).",
            ),
            &["leg"],
        )?;
        r.register(Box::new(enabled.clone()))?;
        let sessions = IntGaugeVec::new(
            Opts::new(
                "pgpool_sidecar_tls_sessions",
                "Sessions on a leg by node and whether they are encrypted: pgpool_backend = \
                 pgpool's sessions on the node, replication = the standby's stream from the primary.",
            ),
            &["leg", "node", "encrypted"],
        )?;
        r.register(Box::new(sessions.clone()))?;
        enabled.with_label_values(&["client"]).set(0);
        for node in 0..node_count {
            let node = node.to_string();
            for leg in &LEGS[1..] {
                for encrypted in ["true", "false"] {
                    sessions
                        .with_label_values(&[*leg, node.as_str(), encrypted])
                        .set(0);
                }
            }
        }
        Ok(TlsMetrics { enabled, sessions })
    }
}

/// Runs until the daemon is cancelled (the task is dropped then).
pub async fn run(ctx: Arc<Ctx>) {
    let n = ctx.cfg.nodes.len();
    let mut sessions: Vec<Session> = (0..n).map(|i| Session::new(ctx.endpoint(i))).collect();
    // pgpool.conf always has `ssl = on` (the key is reserved), written before this task starts.
    ctx.metrics
        .tls
        .enabled
        .with_label_values(&["client"])
        .set(1);
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let primary = ctx.primary();
        let timeout = ctx.probe_timeout();
        let seen = join_all(sessions.iter_mut().enumerate().map(|(i, s)| async move {
            let backend = s.pgpool_sessions_tls(timeout).await;
            let walsenders = match primary {
                Some(p) if p == i => s.replication_tls(timeout).await.ok(),
                _ => None,
            };
            (backend, walsenders)
        }))
        .await;
        let names: Vec<&str> = (0..n).map(|i| ctx.node_name(i)).collect();
        let mut legs = Legs {
            client: true,
            ..Legs::default()
        };
        let mut replication = None;
        for (i, (backend, walsenders)) in seen.into_iter().enumerate() {
            match backend {
                Ok((encrypted, plain)) => {
                    legs.pgpool_backend
                        .insert(names[i].to_owned(), Sessions { encrypted, plain });
                }
                Err(e) => tracing::debug!(node = names[i], error = %e, "cannot read pg_stat_ssl"),
            }
            replication = replication.or(walsenders);
        }
        if let Some(w) = &replication {
            legs.replication = replication_leg(w, &names);
        }
        record(&ctx, &legs, replication.is_some());
        ctx.with_state(|s| s.tls = legs);
    }
}

fn record(ctx: &Ctx, legs: &Legs, replication_seen: bool) {
    let m = &ctx.metrics.tls.sessions;
    for i in 0..ctx.cfg.nodes.len() {
        let node = i.to_string();
        let name = ctx.node_name(i);
        // A node that did not answer keeps its last numbers rather than dropping to 0.
        if let Some(s) = legs.pgpool_backend.get(name) {
            let set = |enc: &str, v: u64| {
                m.with_label_values(&["pgpool_backend", node.as_str(), enc])
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            };
            set("true", s.encrypted);
            set("false", s.plain);
        }
        if replication_seen {
            let ssl = legs.replication.get(name).copied();
            m.with_label_values(&["replication", node.as_str(), "true"])
                .set(i64::from(ssl == Some(true)));
            m.with_label_values(&["replication", node.as_str(), "false"])
                .set(i64::from(ssl == Some(false)));
        }
    }
}
