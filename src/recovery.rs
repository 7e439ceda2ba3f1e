//! Bringing a node back as a streaming standby of the current primary.
//!
//! Reads: the node's container spec, the primary's replication view. Changes: detaches the node
//! from pgpool, stops its container, rebuilds its PGDATA in a one-off job container
//! (`pg_basebackup`), starts it, waits until it streams, attaches it. Runs on demand, one task
//! per node; the node is marked busy so nothing else acts on it meanwhile.
//!
//! A job that fails leaves the node stopped and detached — never attached half-built — and the
//! reconcile loop tries again on a later pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::docker::DockerError;
use crate::pgpool::control::PgpoolError;
use crate::postgres::{primary_conninfo, sql_literal};
use crate::state::{Ctx, NodeState};

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("no primary to recover from")]
    NoPrimary,
    #[error("node {0} is the primary; refusing to rebuild it")]
    IsPrimary(String),
    #[error("node {0} has no container in this cluster")]
    NoContainer(String),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("node {node} did not stream from the primary within {seconds} s")]
    NotStreaming { node: String, seconds: u64 },
    #[error(transparent)]
    Pgpool(#[from] PgpoolError),
}

/// The job: empty PGDATA (it may be a mount point, so its contents, not itself), clone the
/// primary, and leave a standby configuration behind. Values arrive in the environment, never
/// interpolated into the script.
const REBUILD_SCRIPT: &str = r#"
set -euo pipefail
echo "rebuilding $PGDATA from $SOURCE_HOST:$SOURCE_PORT"
find "$PGDATA" -mindepth 1 -delete
pg_basebackup -h "$SOURCE_HOST" -p "$SOURCE_PORT" -U "$REPLICATION_USER" -D "$PGDATA" \
  -X stream -c fast --no-password --progress --verbose 2>&1 | tr '\r' '\n' | tail -n 20
test -s "$PGDATA/PG_VERSION"
printf '%s\n' "$STANDBY_CONF" >> "$PGDATA/postgresql.auto.conf"
touch "$PGDATA/standby.signal"
echo "rebuild complete"
"#;

/// Rebuilds `node` from the current primary and attaches it once it streams.
pub async fn rebuild(ctx: &Arc<Ctx>, node: usize, reason: &str) -> Result<(), RecoveryError> {
    let started = Instant::now();
    let name = ctx.node_name(node).to_string();
    let result = rebuild_inner(ctx, node, reason).await;
    let label = if result.is_ok() { "success" } else { "failure" };
    let node_label = node.to_string();
    ctx.metrics
        .recoveries
        .with_label_values(&[&node_label, "rebuild", label])
        .inc();
    ctx.metrics
        .recovery_duration
        .with_label_values(&[&node_label, "rebuild", label])
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(()) => tracing::info!(
            node = %name,
            method = "rebuild",
            seconds = started.elapsed().as_secs_f64(),
            "node recovered and attached"
        ),
        Err(e) => tracing::error!(node = %name, method = "rebuild", error = %e, "recovery failed"),
    }
    result
}

async fn rebuild_inner(ctx: &Arc<Ctx>, node: usize, reason: &str) -> Result<(), RecoveryError> {
    let name = ctx.node_name(node).to_string();
    let primary = ctx.primary().ok_or(RecoveryError::NoPrimary)?;
    if primary == node {
        return Err(RecoveryError::IsPrimary(name));
    }
    let container = ctx
        .docker
        .find(&name)
        .await?
        .ok_or_else(|| RecoveryError::NoContainer(name.clone()))?;
    tracing::warn!(node = %name, reason, "rebuilding node from the primary (its data is discarded)");
    ctx.with_state(|s| s.node_state.insert(node, NodeState::Rebuilding));

    // Out of pgpool first, so no client is routed to a node about to vanish.
    if let Err(e) = ctx.pgpool.detach(node, Duration::from_secs(5)).await {
        tracing::debug!(node = %name, error = %e, "detach before rebuild (already detached?)");
    }
    ctx.docker.stop(&container, Duration::from_secs(30)).await?;

    let p = &ctx.cfg.nodes[primary];
    let conninfo = primary_conninfo(
        &p.host,
        p.port,
        &ctx.cfg.replication_user,
        &ctx.cfg.replication_password,
        &name,
    );
    let env = vec![
        format!("SOURCE_HOST={}", p.host),
        format!("SOURCE_PORT={}", p.port),
        format!("REPLICATION_USER={}", ctx.cfg.replication_user),
        format!("PGPASSWORD={}", ctx.cfg.replication_password.expose()),
        format!("STANDBY_CONF=primary_conninfo = {}", sql_literal(&conninfo)),
    ];
    let log = ctx
        .docker
        .run_job(
            &container,
            "rebuild",
            REBUILD_SCRIPT,
            env,
            ctx.cfg.job_timeout,
        )
        .await?;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        tracing::info!(node = %name, job = "rebuild", "{line}");
    }
    ctx.docker.start(&container).await?;
    wait_streaming(ctx, node, Duration::from_secs(120)).await?;
    ctx.pgpool.attach(node, Duration::from_secs(30)).await?;
    ctx.with_state(|s| s.node_state.insert(node, NodeState::Streaming));
    Ok(())
}

/// Polls the primary until `node` streams from it (only such a node may be attached).
pub async fn wait_streaming(ctx: &Ctx, node: usize, limit: Duration) -> Result<(), RecoveryError> {
    let name = ctx.node_name(node).to_string();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(primary) = ctx.primary() {
            let stats = ctx.sessions[primary]
                .lock()
                .await
                .replication(ctx.probe_timeout())
                .await;
            if let Ok(stats) = stats {
                if stats.get(&name).is_some_and(|r| r.state == "streaming") {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(RecoveryError::NotStreaming {
        node: name,
        seconds: limit.as_secs(),
    })
}
