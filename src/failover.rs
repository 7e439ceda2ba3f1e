//! Failover of the primary: fence, choose, promote, re-point, record.
//!
//! Reads: fresh probes of every standby, the primary's last known WAL position.
//! Changes: kills the old primary's container (restart policy `no` first; network disconnect when
//! it cannot be killed), promotes the chosen standby over SQL, re-points the other standbys,
//! keeps `synchronous_standby_names` right, updates the authoritative primary, records metrics.
//! Runs on demand from three triggers (pgpool's hook, Docker events, the probe loop); the
//! `failover_lock` makes it single-flight and the primary check makes a repeat a no-op.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;

use crate::cluster::restart::{OpKind, Step};
use crate::cluster::{choose_candidate, followers, NoCandidate};
use crate::docker::{ContainerInfo, ContainerStatus, DockerError};
use crate::postgres::PgError;
use crate::state::{Ctx, FailoverRecord, NodeState};

#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error("cannot fence old primary {node}: {source}")]
    FenceFailed { node: String, source: DockerError },
    #[error("no standby may be promoted: {0}")]
    NoCandidate(#[from] NoCandidate),
    #[error("promotion failed: {0}")]
    PromoteFailed(#[from] PgError),
}

/// What a failover request ended in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The node was not (or no longer) the primary: nothing to do.
    NotPrimary {
        current: Option<usize>,
    },
    /// The "failed" primary answered and is writable: no failover.
    PrimaryAlive,
    Promoted {
        new_primary: usize,
    },
}

/// Is the primary really gone? pgpool also calls its failover hook on a single broken backend
/// connection; a quick look keeps a live primary from being fenced for that.
async fn primary_alive(ctx: &Ctx, node: usize) -> bool {
    let name = ctx.node_name(node).to_string();
    match ctx.docker.find(&name).await {
        // A paused container is not dead: only the SQL probe can tell it does not answer.
        Ok(Some(c)) if c.status.is_up() || c.status == ContainerStatus::Paused => {}
        Ok(_) => return false,
        // Docker unreachable: fall through to SQL, it is the better witness anyway.
        Err(_) => {}
    }
    let mut s = ctx.sessions[node].lock().await;
    let limit = ctx.probe_timeout().min(Duration::from_millis(500));
    matches!(s.probe(limit).await, Ok(pg) if !pg.in_recovery)
}

/// Fences `node`, which Docker reported SIGKILLed through its API: nothing in it takes a write
/// any more, and Docker does not restart a container killed through its API, whatever its
/// restart policy (checked on Docker 20.10 with `always` and `unless-stopped`). So the promotion
/// need not wait for the fence's Docker calls: while Docker tears the container down (0.2-0.3 s
/// on 2 cores) it answers neither a kill nor a policy update, and every write waited for them.
/// They run beside the promotion: restart policy `no` (for a daemon restart with `always`), and
/// the kill that makes sure.
async fn fence_killed(ctx: &Arc<Ctx>, node: usize) -> Result<(), FailoverError> {
    let name = ctx.node_name(node).to_string();
    let container = match ctx.docker.find(&name).await {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(()),
        Err(_) => return fence(ctx, node).await,
    };
    tracing::warn!(node = %name, "fenced: Docker reported it killed; setting its restart policy to no and killing it again to be sure");
    let c = ctx.clone();
    ctx.spawn(format!("fence-kill-{name}"), async move {
        // Logged and counted inside; nothing waits for the outcome.
        let _ = fence_container(&c, &container).await;
    });
    Ok(())
}

/// Fences `node`: kill (restart policy `no` first), or cut it off the networks if it cannot be
/// killed. Idempotent: a node already down is fenced by setting its policy.
pub async fn fence(ctx: &Ctx, node: usize) -> Result<(), FailoverError> {
    let name = ctx.node_name(node).to_string();
    let looked = Instant::now();
    match ctx.docker.find(&name).await {
        Ok(Some(c)) => {
            tracing::debug!(node = %name, find_ms = looked.elapsed().as_millis(), "fence: container found");
            fence_container(ctx, &c).await
        }
        // No container at all: nothing can run it, which is what fencing wants.
        Ok(None) => Ok(()),
        Err(e) => {
            ctx.metrics
                .docker_api_errors
                .with_label_values(&[e.operation()])
                .inc();
            Err(FailoverError::FenceFailed {
                node: name,
                source: e,
            })
        }
    }
}

/// Kill, else disconnect from every network: the one fencing step, logged and counted.
async fn fence_container(ctx: &Ctx, container: &ContainerInfo) -> Result<(), FailoverError> {
    let name = &container.name;
    let counted = |action: &str, outcome: &str| {
        ctx.metrics
            .fencing_actions
            .with_label_values(&[action, outcome])
            .inc();
    };
    let api_error = |e: &DockerError| {
        ctx.metrics
            .docker_api_errors
            .with_label_values(&[e.operation()])
            .inc();
    };
    match ctx.docker.fence_kill(container).await {
        Ok(()) => {
            counted("kill", "success");
            tracing::warn!(node = %name, "fenced: container killed, restart policy set to no");
            return Ok(());
        }
        Err(e) => {
            counted("kill", "failure");
            api_error(&e);
            tracing::error!(node = %name, error = %e, "cannot kill old primary; disconnecting it");
        }
    }
    match ctx.docker.disconnect_all(container).await {
        Ok(()) => {
            counted("disconnect", "success");
            tracing::warn!(node = %name, "fenced: container cut off every network");
            Ok(())
        }
        Err(e) => {
            counted("disconnect", "failure");
            api_error(&e);
            tracing::error!(node = %name, error = %e, "cannot disconnect old primary either");
            Err(FailoverError::FenceFailed {
                node: name.clone(),
                source: e,
            })
        }
    }
}

/// Fails over from `old`. `verify` asks for the liveness check first (pgpool's hook); the
/// sidecar's own triggers have already seen the primary fail.
/// What the trigger knows about the primary it reports failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Only suspected (pgpool's hook, a paused container): a quick look first, and a primary
    /// that answers is left alone.
    Suspected,
    /// Found down (the probes, a restart's unfinished failover): fenced and replaced.
    Down,
    /// Docker reported the SIGKILL sent: fenced without waiting for Docker's teardown of the
    /// container (see [`fence_killed`]), then replaced.
    Killed,
}

pub async fn failover(
    ctx: &Arc<Ctx>,
    old: usize,
    trigger: &str,
    reason: &str,
    report: Report,
) -> Result<Outcome, FailoverError> {
    let verify = report == Report::Suspected;
    let _guard = ctx.failover_lock.lock().await;
    let current = ctx.primary();
    if current != Some(old) {
        return Ok(Outcome::NotPrimary { current });
    }
    let started = Instant::now();
    if verify && primary_alive(ctx, old).await {
        tracing::warn!(node = %ctx.node_name(old), trigger, "primary reported failed but answers; no failover");
        return Ok(Outcome::PrimaryAlive);
    }
    tracing::warn!(node = %ctx.node_name(old), trigger, reason, "Primary node is down. Performing failover...");
    let result = run(ctx, old, report == Report::Killed).await;
    let seconds = started.elapsed().as_secs_f64();
    let label = if result.is_ok() { "success" } else { "failure" };
    ctx.metrics.failovers.with_label_values(&[label]).inc();
    ctx.metrics
        .failover_duration
        .with_label_values(&[label])
        .observe(seconds);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    if result.is_ok() {
        ctx.metrics.last_failover.set(now);
    }
    let record = FailoverRecord {
        old_primary: old,
        new_primary: result.as_ref().ok().copied(),
        trigger: trigger.to_string(),
        reason: reason.to_string(),
        seconds,
        result: match &result {
            Ok(_) => "success".into(),
            Err(e) => e.to_string(),
        },
        at_unix: now,
    };
    ctx.with_state(|s| s.last_failover = Some(record));
    match result {
        Ok(new_primary) => {
            tracing::warn!(
                old = %ctx.node_name(old),
                new = %ctx.node_name(new_primary),
                seconds,
                "failover complete"
            );
            if trigger != "pgpool" {
                // pgpool still routes to the old primary until told; its own failover then
                // calls our hook (a no-op now); the standbys follow already.
                let c = ctx.clone();
                ctx.spawn(format!("pgpool-detach-{old}"), async move {
                    if let Err(e) = c.pgpool.detach(old, Duration::from_secs(30)).await {
                        tracing::warn!(error = %e, "pcp_detach_node of the old primary failed");
                    }
                });
            }
            ctx.wake.notify_one();
            Ok(Outcome::Promoted { new_primary })
        }
        Err(e) => {
            tracing::error!(error = %e, "failover failed");
            ctx.with_state(|s| s.last_refusal = Some(e.to_string()));
            Err(e)
        }
    }
}

async fn run(ctx: &Arc<Ctx>, old: usize, killed: bool) -> Result<usize, FailoverError> {
    // 1. Fence before anything can be promoted: two writable primaries must never coexist.
    //    Recorded first: a sidecar that dies after the kill must come back knowing it.
    ctx.begin(old, OpKind::Failover, Step::Fencing);
    ctx.with_state(|s| {
        s.fenced.insert(old);
        s.node_state.insert(old, NodeState::Fenced);
    });
    let fenced = if killed {
        fence_killed(ctx, old).await
    } else {
        fence(ctx, old).await
    };
    if let Err(e) = fenced {
        ctx.with_state(|s| {
            s.fenced.remove(&old);
            s.operations.remove(&old);
        });
        return Err(e);
    }
    ctx.begin(old, OpKind::Failover, Step::Promoting);
    let result = elect(ctx, old).await;
    ctx.end(old);
    result
}

/// How long a failover waits for the standbys' positions to be final, and how often it looks.
const SETTLE_LIMIT: Duration = Duration::from_secs(1);
const SETTLE_STEP: Duration = Duration::from_millis(15);

/// The positions of standbys `others`, all probed at once, again until each is final (it
/// replays nothing more, see `position_settled`) or SETTLE_LIMIT passes: the most advanced
/// standby is the one with the most WAL, which in synchronous mode holds every acknowledged
/// commit. `None` for a standby that never answered.
async fn final_positions(
    ctx: &Arc<Ctx>,
    others: &[usize],
) -> Vec<(usize, Option<crate::cluster::PgState>)> {
    let timeout = ctx.probe_timeout();
    let mut seen: Vec<Option<crate::cluster::PgState>> = vec![None; ctx.cfg.nodes.len()];
    let mut settled = vec![false; ctx.cfg.nodes.len()];
    let settle_by = Instant::now() + SETTLE_LIMIT;
    let mut limit = timeout;
    loop {
        let pending: Vec<usize> = others.iter().copied().filter(|&n| !settled[n]).collect();
        let probes = join_all(pending.iter().map(|&n| async move {
            let mut s = ctx.sessions[n].lock().await;
            (n, s.probe(limit).await.ok())
        }))
        .await;
        // Looks after the first stay within the limit: a standby that does not answer must not
        // hold the failover for a probe timeout each time.
        limit = timeout
            .min(settle_by.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(200));
        for (n, pg) in probes {
            if let Some(pg) = pg {
                settled[n] = crate::cluster::position_settled(seen[n].as_ref(), &pg);
                seen[n] = Some(pg);
            }
        }
        if others.iter().all(|&n| settled[n]) || Instant::now() >= settle_by {
            break;
        }
        tokio::time::sleep(SETTLE_STEP).await;
    }
    let unsettled: Vec<&str> = others
        .iter()
        .filter(|&&n| !settled[n])
        .map(|&n| ctx.node_name(n))
        .collect();
    if !unsettled.is_empty() {
        tracing::warn!(nodes = ?unsettled, "standby positions not final within {SETTLE_LIMIT:?}; choosing on the last seen");
    }
    others.iter().map(|&n| (n, seen[n].take())).collect()
}

/// Synchronous mode: names `node`'s synchronous standbys (every other node not fenced). Done
/// on the candidate while it is still a standby (where the setting does nothing), so its first
/// commit as primary already waits for a standby; set after the promotion, the commits of the
/// first tens of milliseconds were acknowledged from the new primary alone. True when set, or
/// when not in synchronous mode.
pub async fn name_synchronous_standbys(ctx: &Ctx, node: usize) -> bool {
    if ctx.cfg.synchronous_standbys == 0 {
        return true;
    }
    let value = ctx.synchronous_value(node);
    match ctx.sessions[node]
        .lock()
        .await
        .set_synchronous_standbys(&value, ctx.probe_timeout())
        .await
    {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(node = %ctx.node_name(node), error = %e, "cannot set synchronous_standby_names");
            false
        }
    }
}

/// Steps 2-5 of a failover whose old primary is fenced.
async fn elect(ctx: &Arc<Ctx>, old: usize) -> Result<usize, FailoverError> {
    // 2. Fresh positions of every standby, final ones (see `final_positions`).
    let others: Vec<usize> = (0..ctx.cfg.nodes.len()).filter(|&n| n != old).collect();
    let probes = final_positions(ctx, &others).await;
    let (mut view, old_lsn) = ctx.with_state(|s| (s.view.clone(), s.last_primary_lsn));
    for (n, pg) in probes {
        if let Some(node) = view.nodes.get_mut(n) {
            node.pg = pg;
            node.fenced = ctx.with_state(|s| s.fenced.contains(&n));
        }
    }
    let candidate = choose_candidate(&view, &ctx.policy(), old, old_lsn)?;
    let cand_name = ctx.node_name(candidate).to_string();
    tracing::info!(candidate = %cand_name, "promoting the most advanced standby");

    // 3. Promote over SQL and wait until it accepts writes; in synchronous mode it names its
    //    synchronous standbys first.
    let synchronous_set = name_synchronous_standbys(ctx, candidate).await;
    ctx.sessions[candidate]
        .lock()
        .await
        .promote(Duration::from_secs(30))
        .await?;
    ctx.with_state(|s| {
        s.view.primary = Some(candidate);
        s.generation += 1;
        s.last_primary_lsn = None;
        s.node_state.insert(candidate, NodeState::Primary);
    });
    tracing::info!(node = %cand_name, "promoted: the new primary takes writes");

    // Every standby's slot on the new primary before WAL of the new timeline can be recycled.
    crate::slots::on_promotion(ctx, candidate).await;

    // 4. Synchronous replication named after all, if it could not be before the promotion.
    if !synchronous_set {
        name_synchronous_standbys(ctx, candidate).await;
    }

    // 5. Re-point the other standbys at the new primary, all at once. Busy flags as they are
    //    now: a recovery may have started since the view was taken.
    ctx.with_state(|s| {
        for n in view.nodes.iter_mut() {
            n.busy = s.busy.contains(&n.id);
        }
    });
    let live = followers(&view, candidate, &[old]);
    join_all(live.iter().map(|&n| repoint(ctx, n, candidate))).await;
    Ok(candidate)
}

/// Points standby `node` at `primary`, through its replication slot there (made first when it
/// is missing). Idempotent: the same settings again are a no-op reload.
/// Re-points `node` at `primary`; false (and logged) when the node could not be changed.
pub async fn repoint(ctx: &Ctx, node: usize, primary: usize) -> bool {
    let p = &ctx.cfg.nodes[primary];
    let conninfo = ctx.conninfo_for(node, primary);
    let slot = crate::slots::ensure_for(ctx, primary, node).await;
    let result = ctx.sessions[node]
        .lock()
        .await
        .set_upstream(
            &conninfo,
            &ctx.passfile_line(),
            slot.as_deref(),
            ctx.probe_timeout().max(Duration::from_secs(2)),
        )
        .await;
    match result {
        Ok(()) => {
            tracing::info!(node = %ctx.node_name(node), primary = %p.host, slot = ?slot, "standby re-pointed");
            true
        }
        Err(e) => {
            tracing::error!(node = %ctx.node_name(node), error = %e, "cannot re-point standby");
            false
        }
    }
}
