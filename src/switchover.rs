//! Planned switchover (and failback, which is a switchover back to the preferred node).
//!
//! Reads: the cluster view, the old primary's final checkpoint (offline, `pg_controldata`), the
//! target's received WAL position. Changes: stops the old primary cleanly, promotes the target
//! once it has received every byte the old primary wrote, re-points the other standbys, turns the
//! old primary into a standby of the target and re-attaches everything. On demand (CLI, HTTP) or
//! from the reconcile loop (automatic failback). Holds the failover lock while the primary
//! changes, so pgpool's hook and the sidecar's own detection wait instead of racing it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::followers;
use crate::cluster::restart::{OpKind, Step};
use crate::docker::{ContainerInfo, DockerError};
use crate::postgres::{parse_lsn, PgError};
use crate::state::{BusyGuard, Ctx, NodeState};
use crate::{failover, recovery};

#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    #[error("no primary is known")]
    NoPrimary,
    #[error("{0} is busy with another operation")]
    Busy(String),
    #[error("{0} is already the primary")]
    AlreadyPrimary(String),
    #[error("target {node} is not a healthy standby: {why}")]
    TargetUnhealthy { node: String, why: String },
    #[error("no standby streams from the primary")]
    NoStandby,
    #[error("cannot read the old primary's final WAL position: {0}")]
    FinalLsn(String),
    #[error("target {node} did not receive the old primary's last WAL ({lsn}) within {seconds} s")]
    NotCaughtUp {
        node: String,
        lsn: String,
        seconds: u64,
    },
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Postgres(#[from] PgError),
}

#[derive(Debug, Clone, Serialize)]
pub struct SwitchoverReport {
    pub old_primary: String,
    pub new_primary: String,
    /// From the old primary's stop to the target accepting writes.
    pub write_unavailable_seconds: f64,
    pub seconds: f64,
    pub old_primary_rejoined_by: Option<String>,
}

const FINAL_LSN_SCRIPT: &str = r#"
pg_controldata -D "$PGDATA" | sed -n 's/^Latest checkpoint location: *//p' | sed 's/^/lsn=/'
pg_controldata -D "$PGDATA" | sed -n 's/^Database cluster state: *//p' | sed 's/^/state=/'
"#;

/// Which standby may take over: the named one if it is healthy, else the best healthy one.
fn pick_target(ctx: &Ctx, old: usize, to: Option<usize>) -> Result<usize, SwitchoverError> {
    let view = ctx.with_state(|s| s.view.clone());
    match to {
        Some(t) if t == old => Err(SwitchoverError::AlreadyPrimary(
            ctx.node_name(t).to_string(),
        )),
        Some(t) => {
            view.is_healthy_standby(t)
                .map(|()| t)
                .map_err(|why| SwitchoverError::TargetUnhealthy {
                    node: ctx.node_name(t).to_string(),
                    why: why.to_string(),
                })
        }
        None => view
            .nodes
            .iter()
            .filter(|n| n.id != old && view.is_healthy_standby(n.id).is_ok())
            .max_by_key(|n| (n.pg.as_ref().map(|p| p.lsn), std::cmp::Reverse(n.id)))
            .map(|n| n.id)
            .ok_or(SwitchoverError::NoStandby),
    }
}

/// Wakes the control loop and waits (one probe interval and two probe timeouts at most) for a
/// view whose probes began after now.
async fn fresh_view(ctx: &Ctx) {
    let asked = Instant::now();
    let deadline = asked + ctx.cfg.probe_interval + 2 * ctx.probe_timeout();
    ctx.wake.notify_one();
    while Instant::now() < deadline {
        if ctx.with_state(|s| s.view_probed_at.is_some_and(|t| t > asked)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::debug!("no fresh view for the switchover; deciding on the last one");
}

/// Undoes a switchover that stopped the old primary but promoted nothing: the old primary,
/// which has every acknowledged commit, is started again as the primary. A target whose
/// promotion failed half-way is fenced first, so two writable nodes never coexist.
async fn restore_old_primary(ctx: &Ctx, old: &ContainerInfo, failed_target: Option<usize>) {
    if let Some(o) = ctx.cfg.nodes.iter().position(|n| n.host == old.name) {
        ctx.with_state(|s| {
            s.fenced.remove(&o);
            s.operations.remove(&o);
        });
    }
    if let Some(t) = failed_target {
        // Recorded before the kill, like every fence: its events are then known to be ours.
        ctx.with_state(|s| {
            s.fenced.insert(t);
            s.node_state.insert(t, NodeState::Fenced);
        });
        if let Err(e) = failover::fence(ctx, t).await {
            ctx.with_state(|s| s.fenced.remove(&t));
            tracing::error!(node = %ctx.node_name(t), error = %e, "cannot fence the switchover target")
        }
    }
    tracing::warn!(node = %old.name, "switchover failed; starting the old primary again");
    if let Err(e) = ctx.docker.start(old).await {
        // The probe loop sees a primary that is down and fails over.
        tracing::error!(node = %old.name, error = %e, "cannot start the old primary again");
        return;
    }
    // Still under the failover lock: pgpool's hook for the stopped primary, waiting behind it,
    // must find a primary that answers, not one half-way through its start.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some(p) = ctx.primary() {
        let probe = ctx.sessions[p]
            .lock()
            .await
            .probe(ctx.probe_timeout())
            .await;
        if probe.is_ok_and(|pg| !pg.in_recovery) {
            tracing::warn!(node = %old.name, "old primary takes writes again");
            // A pass that looked while it was down would fail it over: such views are void.
            ctx.with_state(|s| s.generation += 1);
            break;
        }
        if Instant::now() > deadline {
            tracing::error!(node = %old.name, "old primary did not come back within 30 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ctx.wake.notify_one();
}

pub async fn switchover(
    ctx: &Arc<Ctx>,
    to: Option<usize>,
) -> Result<SwitchoverReport, SwitchoverError> {
    let started = Instant::now();
    let result = run(ctx, to, started).await;
    let label = if result.is_ok() { "success" } else { "failure" };
    ctx.metrics.switchovers.with_label_values(&[label]).inc();
    ctx.metrics
        .switchover_duration
        .with_label_values(&[label])
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(r) => tracing::warn!(
            old = %r.old_primary,
            new = %r.new_primary,
            write_unavailable_seconds = r.write_unavailable_seconds,
            seconds = r.seconds,
            "switchover complete"
        ),
        Err(e) => tracing::error!(error = %e, "switchover refused or failed"),
    }
    result
}

async fn run(
    ctx: &Arc<Ctx>,
    to: Option<usize>,
    started: Instant,
) -> Result<SwitchoverReport, SwitchoverError> {
    // A target that is not healthy in the last view may have come back since it was taken (a
    // recovery that just ended): decided on a look taken after the request instead.
    let stale = ctx.primary().is_some_and(|old| {
        matches!(
            pick_target(ctx, old, to),
            Err(SwitchoverError::TargetUnhealthy { .. } | SwitchoverError::NoStandby)
        )
    });
    if stale {
        fresh_view(ctx).await;
    }
    let guard = ctx.failover_lock.lock().await;
    let old = ctx.primary().ok_or(SwitchoverError::NoPrimary)?;
    let target = pick_target(ctx, old, to)?;
    let (old_name, target_name) = (
        ctx.node_name(old).to_string(),
        ctx.node_name(target).to_string(),
    );
    tracing::warn!(old = %old_name, target = %target_name, "switchover: stopping the primary cleanly");
    let container = ctx
        .docker
        .find(&old_name)
        .await?
        .ok_or_else(|| DockerError::NoContainer(old_name.clone()))?;
    // The old primary is ours until it is a standby again: no event or pass may act on it.
    let busy = BusyGuard::take(ctx, old).ok_or(SwitchoverError::Busy(old_name.clone()))?;
    // Until the promotion starts, a crash undoes the switchover (the old primary has every
    // commit and is started again); from then on it finishes it (see cluster::restart).
    ctx.begin(old, OpKind::Switchover, Step::Stopping);

    // 1. Clean stop: on a fast shutdown the walsenders send everything up to the shutdown
    //    checkpoint before the server exits.
    let stopped_at = Instant::now();
    if let Err(e) = ctx.docker.stop(&container, Duration::from_secs(60)).await {
        restore_old_primary(ctx, &container, None).await;
        return Err(e.into());
    }

    // 2. The old primary's last WAL position, read from its data directory.
    let out = ctx
        .docker
        .run_job(
            &container,
            "final-lsn",
            FINAL_LSN_SCRIPT,
            vec![],
            Duration::from_secs(60),
        )
        .await;
    let Some(final_lsn) = out
        .as_ref()
        .ok()
        .and_then(|o| o.lines().find_map(|l| l.trim().strip_prefix("lsn=")))
        .and_then(parse_lsn)
    else {
        restore_old_primary(ctx, &container, None).await;
        return Err(SwitchoverError::FinalLsn(format!("{out:?}")));
    };

    // 3. The target must have received past the shutdown checkpoint: then no commit is lost.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = ctx.sessions[target]
            .lock()
            .await
            .probe(ctx.probe_timeout())
            .await;
        if probe.is_ok_and(|p| p.receive_lsn.unwrap_or(0) > final_lsn) {
            break;
        }
        if Instant::now() > deadline {
            restore_old_primary(ctx, &container, None).await;
            return Err(SwitchoverError::NotCaughtUp {
                node: target_name,
                lsn: crate::postgres::format_lsn(final_lsn),
                seconds: 30,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 4. Promote; the target is the primary from here on. The old primary is fenced first: a
    //    sidecar that dies during the promotion must not start it again beside the target.
    ctx.begin(old, OpKind::Switchover, Step::Promoting);
    ctx.with_state(|s| s.fenced.insert(old));
    let synchronous_set = failover::name_synchronous_standbys(ctx, target).await;
    let promoted = ctx.sessions[target]
        .lock()
        .await
        .promote(Duration::from_secs(30))
        .await;
    if let Err(e) = promoted {
        // The target may still finish its promotion later: it is fenced before the old
        // primary, which has every commit, takes writes again. Recovery brings it back.
        restore_old_primary(ctx, &container, Some(target)).await;
        return Err(e.into());
    }
    let write_unavailable_seconds = stopped_at.elapsed().as_secs_f64();
    ctx.with_state(|s| {
        s.view.primary = Some(target);
        s.generation += 1;
        s.last_primary_lsn = None;
        s.node_state.insert(target, NodeState::Primary);
    });
    ctx.begin(old, OpKind::Switchover, Step::Demoting);
    crate::slots::on_promotion(ctx, target).await;
    if !synchronous_set {
        failover::name_synchronous_standbys(ctx, target).await;
    }
    let others = followers(&ctx.with_state(|s| s.view.clone()), target, &[old]);
    futures_util::future::join_all(others.iter().map(|&n| failover::repoint(ctx, n, target))).await;
    drop(guard);

    // 5. pgpool learns the new primary: its own failover on the old node finds the target.
    if let Err(e) = ctx.pgpool.detach(old, Duration::from_secs(10)).await {
        tracing::debug!(error = %e, "old primary already detached in pgpool");
    }

    // 6. The old primary comes back as a standby: it stopped cleanly at a point the target
    //    has, so it follows the new timeline without a rewind; the ladder covers the rest.
    let rejoined = recovery::demote_cleanly_stopped(ctx, old, target, &container).await;
    // The ladder below takes the node busy itself.
    drop(busy);
    // From here the ladder (or its success) owns the node's record.
    let rejoined_by = match rejoined {
        Ok(()) => {
            ctx.with_state(|s| {
                s.fenced.remove(&old);
                s.operations.remove(&old);
            });
            Some("attach".to_string())
        }
        Err(e) => {
            tracing::warn!(node = %old_name, error = %e, "old primary did not follow as is; recovery ladder");
            ctx.with_state(|s| s.operations.remove(&old));
            recovery::recover(ctx, old, false, "after switchover")
                .await
                .ok()
                .map(|r| r.method.as_str().to_string())
        }
    };
    ctx.wake.notify_one();
    Ok(SwitchoverReport {
        old_primary: old_name,
        new_primary: target_name,
        write_unavailable_seconds,
        seconds: started.elapsed().as_secs_f64(),
        old_primary_rejoined_by: rejoined_by,
    })
}
