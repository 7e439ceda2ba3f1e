//! The control loop: observe → decide → act → record, once per probe interval (or sooner when
//! woken), plus the Docker event watcher that reacts to a dying container at once.
//!
//! Reads: node containers (Docker), SQL probes of every node, the primary's replication view,
//! `SHOW POOL_NODES`. Changes: through [`crate::cluster::decide`]'s plan — adopts the primary and
//! starts pgpool, fails over, rebuilds fresh nodes, fences rogue primaries, attaches and detaches
//! nodes in pgpool — and the metrics and `/status` state; starts the adoption check of a plain
//! primary ([`crate::adopt`]) when one is due.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::StreamExt;

use crate::cluster::restart::{
    classify_exit, is_stop_signal, next_restart_backoff, takes_node_down, Exit,
};
use crate::cluster::{
    decide, event_response, failback_may_start, next_recovery_backoff, Action, ClusterView,
    EventFacts, EventResponse, NodeView,
};
use crate::docker::ContainerStatus;
use crate::metrics::{ROLES, SLOT_STATUSES};
use crate::pgpool::control::PoolStatus;
use crate::postgres::Session;
use crate::state::{Ctx, NodeState};
use crate::{failover, pgpool, recovery, slots};

/// The probe loop's own connections (see `Ctx::sessions` for why they are separate).
pub struct Probes {
    sessions: Vec<Session>,
    failures: Vec<u32>,
    not_streaming: Vec<u32>,
    /// When each standby was last re-pointed for its slot: at most once per
    /// [`SLOT_REPOINT_EVERY`], so a standby that cannot use its slot is not reloaded every pass.
    slot_repointed: Vec<Option<std::time::Instant>>,
    /// The last problem with the slot guard, so it is logged once, not every pass.
    guard_problem: Option<String>,
}

const SLOT_REPOINT_EVERY: Duration = Duration::from_secs(30);

impl Probes {
    pub fn new(ctx: &Ctx) -> Self {
        let n = ctx.cfg.nodes.len();
        Probes {
            sessions: (0..n).map(|i| Session::new(ctx.endpoint(i))).collect(),
            failures: vec![0; n],
            not_streaming: vec![0; n],
            slot_repointed: vec![None; n],
            guard_problem: None,
        }
    }
}

pub async fn run(ctx: Arc<Ctx>) {
    // A reboot or a crash left nodes stopped: the ones nobody stopped on purpose start first.
    crate::startup::run(&ctx).await;
    let mut probes = Probes::new(&ctx);
    let mut tick = tokio::time::interval(ctx.cfg.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut confirming = false;
    loop {
        if confirming {
            // The primary just failed a probe: confirm (or clear) it without waiting a whole
            // interval, so a hung primary costs PROBE_FAILURES × PROBE_TIMEOUT, not × interval.
            tokio::time::sleep(ctx.cfg.probe_interval / 4).await;
        } else {
            tokio::select! {
                _ = tick.tick() => {}
                _ = ctx.wake.notified() => {}
            }
        }
        let Some(view) = observe(&ctx, &mut probes).await else {
            // The primary changed while we looked: look again before acting.
            confirming = false;
            continue;
        };
        confirming = view
            .primary
            .is_some_and(|p| view.nodes[p].probe_failures > 0 && !view.nodes[p].busy);
        let plan = decide(&view, &ctx.policy());
        for action in plan {
            act(&ctx, action, &view).await;
        }
        ensure_pgpool(&ctx);
        ensure_synchronous(&ctx, &mut probes).await;
        keep_slots(&ctx, &mut probes, &view).await;
        crate::adopt::maybe_spawn(&ctx, &view);
        record(&ctx);
        ctx.with_state(|s| s.last_pass = Some(std::time::Instant::now()));
    }
}

/// Docker, every node and pgpool are asked at once: a pass lasts one probe timeout at most,
/// however many of them hang.
async fn observe(ctx: &Arc<Ctx>, probes: &mut Probes) -> Option<ClusterView> {
    let timeout = ctx.probe_timeout();
    let began = std::time::Instant::now();
    // Read before any probe starts: an event during the probes makes this pass's attach stale.
    let (primary, pgpool_started, generation, down_events) = ctx.with_state(|s| {
        (
            s.view.primary,
            s.pgpool_started,
            s.generation,
            s.down_events.clone(),
        )
    });
    let containers = join_all(ctx.cfg.nodes.iter().map(|n| ctx.docker.find(&n.host)));
    let nodes = join_all(
        probes
            .sessions
            .iter_mut()
            .enumerate()
            .map(|(i, s)| async move {
                let pg = s.probe(timeout).await;
                // The primary's view of its standbys, on the same connection right after its probe.
                let rep = match &pg {
                    Ok(p) if Some(i) == primary && !p.in_recovery => {
                        s.replication(timeout).await.ok()
                    }
                    _ => None,
                };
                (pg, rep)
            }),
    );
    let pool = async {
        if pgpool_started {
            ctx.pgpool.show_pool_nodes(timeout).await.ok()
        } else {
            None
        }
    };
    let (containers, nodes, pool) = tokio::join!(containers, nodes, pool);
    let mut replication = None;
    let mut pg = Vec::with_capacity(nodes.len());
    for (p, rep) in nodes {
        replication = replication.or(rep);
        pg.push(p);
    }
    ctx.with_state(|s| {
        if s.generation != generation {
            return None;
        }
        let mut nodes = Vec::with_capacity(ctx.cfg.nodes.len());
        for (i, (c, p)) in containers.into_iter().zip(pg).enumerate() {
            let name = ctx.node_name(i).to_string();
            let container_id = match &c {
                Ok(Some(c)) => Some(c.id.clone()),
                // Docker unreachable: the container is still the one last seen.
                Err(_) => s.view.nodes.get(i).and_then(|n| n.container_id.clone()),
                Ok(None) => None,
            };
            let container = match c {
                Ok(Some(c)) => {
                    let status = c.status.clone();
                    if let Some(net) = c.network_aliases.clone() {
                        s.known_network.insert(i, net);
                    }
                    s.last_spec.insert(i, *c.raw);
                    Some(status)
                }
                Ok(None) => Some(ContainerStatus::Missing),
                Err(e) => {
                    ctx.metrics
                        .docker_api_errors
                        .with_label_values(&[e.operation()])
                        .inc();
                    None
                }
            };
            let pg = match p {
                Ok(p) => {
                    probes.failures[i] = 0;
                    Some(p)
                }
                Err(e) => {
                    probes.failures[i] += 1;
                    tracing::debug!(node = %name, error = %e, "probe failed");
                    None
                }
            };
            let streaming_from_primary = replication
                .as_ref()
                .and_then(|r| r.get(&name))
                .is_some_and(|r| r.state == "streaming");
            let stray = replication.is_some()
                && Some(i) != primary
                && !streaming_from_primary
                && pg.as_ref().is_some_and(|p| {
                    p.in_recovery && Some(p.system_identifier) == s.view.system_identifier
                });
            probes.not_streaming[i] = if stray {
                probes.not_streaming[i] + 1
            } else {
                0
            };
            nodes.push(NodeView {
                id: i,
                name,
                container,
                pg,
                probe_failures: probes.failures[i],
                pool: pool
                    .as_ref()
                    .and_then(|p| p.iter().find(|n| n.node_id == i))
                    .map(|n| n.status),
                streaming_from_primary,
                busy: s.busy.contains(&i),
                fenced: s.fenced.contains(&i),
                not_streaming_passes: probes.not_streaming[i],
                lag_bytes: replication
                    .as_ref()
                    .and_then(|r| r.get(ctx.node_name(i)))
                    .map(|r| r.replay_lag_bytes),
                container_id,
                stopped_on_purpose: s.stopped.contains_key(&i),
                died: s.died.contains(&i),
                redo: s.resume.get(&i).copied(),
                down_events: down_events.get(&i).copied().unwrap_or_default(),
            });
        }
        if let Some(p) = primary {
            if let Some(pg) = &nodes[p].pg {
                if !pg.in_recovery {
                    s.last_primary_lsn = Some(pg.lsn);
                    s.primary_timeline = Some(pg.timeline);
                }
            }
        }
        s.view.nodes = nodes;
        s.view_probed_at = Some(began);
        s.pgpool_up = pool.is_some();
        s.pool_nodes = pool.unwrap_or_default();
        s.view.replication_seen = replication.is_some();
        s.replication = replication.unwrap_or_default();
        s.view.generation = generation;
        Some(s.view.clone())
    })
}

async fn act(ctx: &Arc<Ctx>, action: Action, view: &ClusterView) {
    let generation = view.generation;
    // A plan made before the primary changed is void: the next pass re-plans.
    if ctx.with_state(|s| s.generation) != generation {
        return;
    }
    match action {
        Action::AdoptPrimary { node } => adopt_primary(ctx, node),
        Action::Failover { old, reason } => {
            let _ = failover::failover(ctx, old, "probe", &reason, failover::Report::Down).await;
        }
        Action::Rebuild { node, reason } => spawn_recovery(ctx, node, true, reason),
        Action::Rejoin { node, reason } => spawn_recovery(ctx, node, false, reason),
        Action::Failback { to } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            let last = ctx.with_state(|s| s.last_failover.as_ref().map(|f| f.at_unix));
            // A switchover or failover holding the lock: look again on a later pass.
            let lock_free = ctx.failover_lock.try_lock().is_ok();
            if failback_may_start(now, last, lock_free) {
                tracing::warn!(to = %ctx.node_name(to), "failback to the preferred primary");
                let c = ctx.clone();
                ctx.spawn("failback", async move {
                    let _ = crate::switchover::switchover(&c, Some(to)).await;
                });
            }
        }
        Action::Fence { node, reason } => {
            // Under the failover lock, so a promotion in flight cannot be mistaken for a rogue.
            let _guard = ctx.failover_lock.lock().await;
            let (now, primary) = ctx.with_state(|s| (s.generation, s.view.primary));
            if now != generation || primary == Some(node) {
                return;
            }
            tracing::error!(node = %ctx.node_name(node), reason, "split brain: fencing the node");
            // Recorded before the kill, so its events are known to be ours (and a crash right
            // after still finds it fenced).
            ctx.with_state(|s| {
                s.fenced.insert(node);
                s.node_state.insert(node, NodeState::Fenced);
            });
            if failover::fence(ctx, node).await.is_err() {
                ctx.with_state(|s| s.fenced.remove(&node));
            }
        }
        Action::Start { node } => start_died(ctx, node).await,
        Action::ResumeFailover { old } => {
            // The remembered primary becomes the one failed over from: failover() acts only on
            // the node it holds to be primary.
            let claimed = ctx.with_state(|s| {
                if s.view.primary.is_some() {
                    return false;
                }
                s.view.primary = Some(old);
                s.generation += 1;
                true
            });
            if claimed {
                tracing::warn!(node = %ctx.node_name(old), "the remembered primary is fenced or gone and no node takes writes: finishing its failover");
                let _ = failover::failover(
                    ctx,
                    old,
                    "restart",
                    "remembered primary fenced or gone at start-up",
                    failover::Report::Down,
                )
                .await;
            }
        }
        Action::Attach { node } => {
            // Docker took the node down after this pass's probes began: attaching it would be
            // a failback of a node that is gone, and pgpool's children would fail to reach it
            // and end their clients' sessions. The next pass looks again.
            let downs = ctx.with_state(|s| s.down_events.get(&node).copied().unwrap_or_default());
            if downs != view.nodes[node].down_events {
                tracing::debug!(node = %ctx.node_name(node), "attach dropped: the node went down since the probes");
                return;
            }
            match ctx.pgpool.attach(node, Duration::from_secs(3)).await {
                Ok(()) => tracing::info!(node = %ctx.node_name(node), "attached to pgpool"),
                Err(e) => tracing::warn!(error = %e, "attach failed; will retry"),
            }
        }
        Action::Detach { node, reason } => {
            tracing::warn!(node = %ctx.node_name(node), reason, "detaching from pgpool");
            if let Err(e) = ctx.pgpool.detach(node, Duration::from_secs(3)).await {
                tracing::warn!(error = %e, "detach failed; will retry");
            }
        }
        Action::ReportForeign { node } => {
            let new = ctx.with_state(|s| {
                s.node_state.insert(node, NodeState::Foreign);
                s.foreign.insert(node)
            });
            if new {
                tracing::error!(
                    node = %ctx.node_name(node),
                    "node holds another cluster's data (user databases, different system identifier); \
                     it is left alone and kept out of pgpool — wipe it yourself to let it join"
                );
            }
        }
    }
}

/// Synchronous mode: keeps the primary's `synchronous_standby_names` at the wanted value.
async fn ensure_synchronous(ctx: &Ctx, probes: &mut Probes) {
    if ctx.cfg.synchronous_standbys == 0 {
        return;
    }
    let Some(primary) = ctx.primary() else { return };
    let want = ctx.synchronous_value(primary);
    let session = &mut probes.sessions[primary];
    match session
        .show("synchronous_standby_names", ctx.probe_timeout())
        .await
    {
        Ok(have) if have == want => {}
        Ok(_) => match session
            .set_synchronous_standbys(&want, ctx.probe_timeout())
            .await
        {
            Ok(()) => tracing::info!(value = %want, "synchronous_standby_names set on the primary"),
            Err(e) => tracing::warn!(error = %e, "cannot set synchronous_standby_names"),
        },
        Err(e) => tracing::debug!(error = %e, "cannot read synchronous_standby_names"),
    }
}

/// Keeps the primary's replication slots in line with the standbys (see [`crate::slots`]).
async fn keep_slots(ctx: &Arc<Ctx>, probes: &mut Probes, view: &ClusterView) {
    let Some(primary) = view.primary else { return };
    // After a promotion this view's primary is the old one: nobody may be re-pointed at it.
    let current = |ctx: &Ctx| ctx.with_state(|s| s.generation) == view.generation;
    let writable = view
        .nodes
        .get(primary)
        .and_then(|n| n.pg.as_ref())
        .is_some_and(|pg| !pg.in_recovery);
    if !writable || !current(ctx) {
        return;
    }
    let session = &mut probes.sessions[primary];
    let kept = match slots::keep(ctx, session, primary).await {
        Ok(k) => k,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the primary's replication slots");
            return;
        }
    };
    if kept.guard_problem != probes.guard_problem {
        if let Some(p) = &kept.guard_problem {
            tracing::warn!(problem = %p, "replication slot guard not in force");
        }
        probes.guard_problem = kept.guard_problem;
    }
    let now = std::time::Instant::now();
    let busy = ctx.with_state(|s| s.busy.clone());
    for node in kept.repoint.into_iter().filter(|n| !busy.contains(n)) {
        let due = probes.slot_repointed[node].is_none_or(|t| now >= t + SLOT_REPOINT_EVERY);
        if !due {
            continue;
        }
        // Under the failover lock, re-checked: a promotion between the check above and the
        // ALTER SYSTEM would otherwise be undone for this standby.
        let Ok(_guard) = ctx.failover_lock.try_lock() else {
            return;
        };
        if !current(ctx) {
            return;
        }
        probes.slot_repointed[node] = Some(now);
        tracing::info!(node = %ctx.node_name(node), "standby does not use its replication slot; re-pointing it");
        failover::repoint(ctx, node, primary).await;
    }
}

/// Runs the recovery ladder for `node` in its own task; `recover` marks the node busy, so a
/// second request while one runs is refused there.
fn spawn_recovery(ctx: &Arc<Ctx>, node: usize, force_rebuild: bool, reason: String) {
    let now = std::time::Instant::now();
    let waiting = ctx.with_state(|s| {
        s.busy.contains(&node) || s.recovery_backoff.get(&node).is_some_and(|(t, _)| now < *t)
    });
    if waiting {
        return;
    }
    let c = ctx.clone();
    ctx.spawn(format!("recover-{}", ctx.node_name(node)), async move {
        let ok = recovery::recover(&c, node, force_rebuild, &reason)
            .await
            .is_ok();
        // A failed automatic recovery is retried with back-off, not on every pass.
        c.with_state(|s| {
            if ok {
                s.recovery_backoff.remove(&node);
            } else {
                let delay = next_recovery_backoff(s.recovery_backoff.get(&node).map(|(_, d)| *d));
                s.recovery_backoff
                    .insert(node, (std::time::Instant::now() + delay, delay));
            }
        });
    });
}

/// Takes `node` as primary.
fn adopt_primary(ctx: &Arc<Ctx>, node: usize) {
    let (remembered, before, now) = ctx.with_state(|s| {
        let before = s.view.system_identifier;
        s.view.primary = Some(node);
        s.view.system_identifier = s.view.nodes[node].pg.as_ref().map(|p| p.system_identifier);
        s.node_state.insert(node, NodeState::Primary);
        s.generation += 1;
        (
            s.view.remembered_primary.take(),
            before,
            s.view.system_identifier,
        )
    });
    if before.is_some() && before != now {
        tracing::warn!(
            remembered = ?before,
            found = ?now,
            "the primary's system identifier is not the one the state file remembers: a new cluster on the same volumes"
        );
    }
    tracing::info!(
        node = %ctx.node_name(node),
        remembered = ?remembered.map(|r| ctx.node_name(r)),
        "primary adopted"
    );
}

/// Once a primary is known (adopted, or elected by a resumed failover), pgpool starts, with only
/// verified nodes up.
fn ensure_pgpool(ctx: &Arc<Ctx>) {
    let start_pgpool = ctx.with_state(|s| {
        s.view.primary.is_some() && !std::mem::replace(&mut s.pgpool_started, true)
    });
    if start_pgpool {
        let c = ctx.clone();
        let nodes_up = Arc::new(move || verified_up(&c));
        let (paths, reaper, restarts, cancel) = (
            ctx.paths.clone(),
            ctx.reaper.clone(),
            ctx.metrics.pgpool_restarts.clone(),
            ctx.cancel.clone(),
        );
        ctx.spawn_graceful(
            "pgpool-supervisor",
            pgpool::supervisor::supervise(paths, reaper, nodes_up, restarts, cancel),
        );
    }
}

/// Starts again a standby whose process exited by itself, with back-off: a node that keeps
/// dying is not started in a tight loop.
async fn start_died(ctx: &Arc<Ctx>, node: usize) {
    let now = std::time::Instant::now();
    let due = ctx.with_state(|s| {
        s.restart_backoff
            .get(&node)
            .is_none_or(|(not_before, _)| now >= *not_before)
    });
    if !due {
        return;
    }
    let name = ctx.node_name(node).to_string();
    let container = match ctx.docker.find(&name).await {
        Ok(Some(c)) => c,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(node = %name, error = %e, "cannot inspect the node to start it");
            return;
        }
    };
    ctx.with_state(|s| {
        let delay = next_restart_backoff(s.restart_backoff.get(&node).map(|(_, d)| *d));
        s.restart_backoff.insert(node, (now + delay, delay));
        s.died.remove(&node);
    });
    tracing::warn!(node = %name, "standby's process exited by itself (no stop through the Docker API): starting it again");
    match ctx.docker.start(&container).await {
        Ok(()) => ctx
            .metrics
            .node_restarts
            .with_label_values(&[&node.to_string(), "died"])
            .inc(),
        Err(e) => {
            tracing::error!(node = %name, error = %e, "cannot start the node; trying again later");
            ctx.with_state(|s| s.died.insert(node));
        }
    }
}

/// Nodes pgpool may start with: the primary and the healthy standbys.
fn verified_up(ctx: &Ctx) -> Vec<bool> {
    ctx.with_state(|s| {
        (0..ctx.cfg.nodes.len())
            .map(|i| s.view.primary == Some(i) || s.view.is_healthy_standby(i).is_ok())
            .collect()
    })
}

/// Publishes the last observation as metrics and node states.
fn record(ctx: &Ctx) {
    let m = &ctx.metrics;
    ctx.with_state(|s| {
        m.up.set(s.pgpool_up as i64);
        let mut primaries = 0;
        for n in &s.view.nodes {
            let id = n.id.to_string();
            let id = id.as_str();
            m.backend_up
                .with_label_values(&[id])
                .set(n.pg.is_some() as i64);
            let role = match &n.pg {
                Some(pg) if !pg.in_recovery => {
                    primaries += 1;
                    "primary"
                }
                Some(_) => "standby",
                None => "unknown",
            };
            for r in ROLES {
                m.backend_role
                    .with_label_values(&[id, r])
                    .set((r == role) as i64);
            }
            m.backend_timeline
                .with_label_values(&[id])
                .set(n.pg.as_ref().map(|p| p.timeline as i64).unwrap_or(0));
            m.backend_connections
                .with_label_values(&[id])
                .set(n.pg.as_ref().map_or(0, |p| p.client_backends.into()));
            m.backend_max_connections
                .with_label_values(&[id])
                .set(n.pg.as_ref().map_or(0, |p| p.max_connections.into()));
            for st in PoolStatus::ALL {
                m.pgpool_backend_status
                    .with_label_values(&[id, st.as_str()])
                    .set((n.pool == Some(st)) as i64);
            }
            let rep = s.replication.get(&n.name);
            m.replication_streaming
                .with_label_values(&[id])
                .set(n.streaming_from_primary as i64);
            m.replication_lag_bytes
                .with_label_values(&[id])
                .set(rep.map(|r| r.replay_lag_bytes as i64).unwrap_or(0));
            m.replication_lag_seconds
                .with_label_values(&[id])
                .set(rep.map(|r| r.replay_lag_seconds).unwrap_or(0.0));
            m.node_foreign
                .with_label_values(&[id])
                .set(s.foreign.contains(&n.id) as i64);
            m.node_stopped_on_purpose
                .with_label_values(&[id])
                .set(s.stopped.contains_key(&n.id) as i64);
            let slot = s.slots.get(&n.id);
            let slot_status = match slot {
                _ if Some(n.id) == s.view.primary => "",
                Some(sl) => sl.wal_status.as_str(),
                None => "missing",
            };
            for st in SLOT_STATUSES {
                m.slot_wal_status
                    .with_label_values(&[id, st])
                    .set((st == slot_status) as i64);
            }
            m.slot_retained_bytes.with_label_values(&[id]).set(
                slot.and_then(|sl| sl.retained_bytes)
                    .filter(|_| Some(n.id) != s.view.primary)
                    .unwrap_or(0) as i64,
            );
            let busy_or_special = matches!(
                s.node_state.get(&n.id),
                Some(NodeState::Rebuilding) | Some(NodeState::Foreign)
            ) && (n.busy || s.foreign.contains(&n.id));
            if !busy_or_special {
                let state = if Some(n.id) == s.view.primary {
                    NodeState::Primary
                } else if n.fenced {
                    NodeState::Fenced
                } else if n.streaming_from_primary {
                    NodeState::Streaming
                } else if n.pg.is_none() {
                    NodeState::Down
                } else {
                    NodeState::Unknown
                };
                s.node_state.insert(n.id, state);
            }
        }
        m.primaries.set(primaries);
        // A node that streams again has stopped dying: its next death starts a fresh back-off.
        let streaming: Vec<usize> = s
            .view
            .nodes
            .iter()
            .filter(|n| n.streaming_from_primary)
            .map(|n| n.id)
            .collect();
        for n in streaming {
            s.restart_backoff.remove(&n);
        }
    });
}

/// Watches Docker events of the cluster and reacts to a node's death at once. Reconnects with
/// `since` after the stream drops and wakes the reconcile loop to re-list (the daemon buffers
/// only a few hundred events).
pub async fn watch_events(ctx: Arc<Ctx>) {
    let mut since: Option<i64> = None;
    let mut seen: std::collections::HashSet<(String, String, i64)> = Default::default();
    loop {
        let mut stream = Box::pin(ctx.docker.events(since));
        ctx.wake.notify_one();
        while let Some(ev) = stream.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(error = %e, "Docker event stream broke; reconnecting");
                    ctx.metrics
                        .docker_api_errors
                        .with_label_values(&["events"])
                        .inc();
                    break;
                }
            };
            since = Some(ev.time_nano);
            if !seen.insert((ev.id.clone(), ev.action.clone(), ev.time_nano)) {
                continue;
            }
            if seen.len() > 4096 {
                seen.clear();
            }
            handle_event(&ctx, &ev).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What an event says about a standby's intended state: a stop through the API is an operator's
/// decision (persisted); a death without one is a crash to undo; a start clears both.
fn note_intent(ctx: &Ctx, ev: &crate::docker::ContainerEvent) {
    if ev.oneoff {
        return;
    }
    let noted = ctx.with_state(|s| {
        let node = s.view.node_of_container(&ev.id).map(|n| n.id)?;
        // The sidecar's own stops (fence, recovery, switchover) are of busy or fenced nodes; a
        // primary's death is a failover's business.
        let ours = s.busy.contains(&node) || s.fenced.contains(&node);
        let primary = s.view.primary == Some(node);
        match ev.action.as_str() {
            "start" => {
                let was = s.stopped.remove(&node).is_some();
                s.died.remove(&node);
                was.then_some((node, "started again: no longer stopped on purpose"))
            }
            "kill" if !ours && !primary && is_stop_signal(ev.signal.as_deref()) => s
                .stopped
                .insert(node, crate::state::unix_now())
                .is_none()
                .then_some((
                    node,
                    "stopped through the Docker API: it stays down until started again",
                )),
            "die" | "oom" if !ours && !primary => {
                match classify_exit(&ev.action, s.stopped.contains_key(&node)) {
                    Exit::OnPurpose => None,
                    Exit::ByItself => {
                        s.stopped.remove(&node);
                        s.died.insert(node);
                        Some((
                            node,
                            "its process exited by itself: it will be started again",
                        ))
                    }
                }
            }
            _ => None,
        }
    });
    if let Some((node, what)) = noted {
        tracing::warn!(node = %ctx.node_name(node), event = %ev.action, "{what}");
    }
}

/// Counts an event that takes a node's own container down (see `State::down_events`).
fn count_down(ctx: &Ctx, ev: &crate::docker::ContainerEvent) {
    if ev.oneoff || !takes_node_down(&ev.action) {
        return;
    }
    ctx.with_state(|s| {
        if let Some(node) = s.view.node_of_container(&ev.id).map(|n| n.id) {
            *s.down_events.entry(node).or_default() += 1;
        }
    });
}

async fn handle_event(ctx: &Arc<Ctx>, ev: &crate::docker::ContainerEvent) {
    count_down(ctx, ev);
    note_intent(ctx, ev);
    let facts = EventFacts {
        container_id: ev.id.clone(),
        oneoff: ev.oneoff,
        action: ev.action.clone(),
        signal: ev.signal.clone(),
    };
    let response = ctx.with_state(|s| event_response(&s.view, &facts));
    match response {
        EventResponse::Ignore => {}
        EventResponse::Look => ctx.wake.notify_one(),
        EventResponse::Failover {
            node,
            reason,
            killed,
        } => {
            let report = if killed {
                failover::Report::Killed
            } else {
                failover::Report::Down
            };
            let _ = failover::failover(ctx, node, "docker", &reason, report).await;
        }
        EventResponse::ConfirmPrimary { node, reason } => {
            // verify: a quick SQL probe decides; a primary that answers is left alone.
            let _ =
                failover::failover(ctx, node, "docker", &reason, failover::Report::Suspected).await;
        }
        EventResponse::StandbyDown { node } => {
            tracing::warn!(
                node = %ctx.node_name(node),
                event = %ev.action,
                "Standby node is down. Failover not triggered!"
            );
            if let Err(e) = ctx.pgpool.detach(node, Duration::from_secs(5)).await {
                tracing::debug!(error = %e, "detach of a dead standby");
            }
            ctx.wake.notify_one();
        }
    }
}
