//! The decision layer: plain data in, a plan out, no I/O.
//!
//! Reads: a [`ClusterView`] the reconcile loop assembled from probes, Docker and pgpool.
//! Changes: nothing. Every safety rule of the sidecar lives here so it is unit-tested on
//! hand-built views: which node is primary, when a failover is due, which standby may be
//! promoted, which node may be wiped and rebuilt, which may be attached to pgpool.

pub mod adopt;
pub mod restart;
mod view;

pub use view::*;

/// Only slots with this prefix are ours to create and drop; anyone else's are left alone.
pub const SLOT_PREFIX: &str = "sidecar_";

/// Longest slot name PostgreSQL accepts (NAMEDATALEN - 1).
const MAX_SLOT_NAME: usize = 63;

/// The slot of the node named `node` (its compose service name, e.g. `pg-1` → `sidecar_pg_1`):
/// slot names allow only lower-case letters, digits and underscores.
pub fn slot_name(node: &str) -> String {
    let mut s = String::from(SLOT_PREFIX);
    s.extend(node.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '_'
        }
    }));
    s.truncate(MAX_SLOT_NAME);
    s
}

/// Settings the rules depend on.
#[derive(Debug, Clone)]
pub struct Policy {
    pub probe_failures: u32,
    /// Bring fenced old primaries, removed containers and stray standbys back by themselves.
    pub auto_rejoin: bool,
    pub max_lag_on_failover: u64,
    pub priorities: Vec<i32>,
    /// The node that should be primary, and whether to switch back to it by itself.
    pub preferred_primary: Option<usize>,
    pub auto_failback: bool,
}

/// A standby this close to the primary may take over in a planned switchover without a wait.
pub const CAUGHT_UP_BYTES: u64 = 1 << 20;

/// What the sidecar should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Take `node` as the primary (start-up: no primary known yet).
    AdoptPrimary { node: usize },
    /// The primary is gone or hung: fence it and promote the best standby.
    Failover { old: usize, reason: String },
    /// Wipe and re-clone the node from the primary (fresh initdb or former member only).
    Rebuild { node: usize, reason: String },
    /// Bring the node back through the recovery ladder (attach → rewind → rebuild).
    Rejoin { node: usize, reason: String },
    /// A second writable node with our system identifier: kill it before anyone writes to it.
    Fence { node: usize, reason: String },
    /// Healthy standby of the primary that pgpool does not use: attach it.
    Attach { node: usize },
    /// pgpool routes to a node it must not use.
    Detach { node: usize, reason: String },
    /// The node holds another cluster's data: never touch it, tell the operator.
    ReportForeign { node: usize },
    /// The preferred primary is a healthy, caught-up standby: switch over back to it.
    Failback { to: usize },
    /// A standby whose process exited by itself: start its container again (with back-off).
    Start { node: usize },
    /// Start-up found the remembered primary fenced or gone and no writable node: the failover
    /// it was in (or that its death calls for) is finished from it.
    ResumeFailover { old: usize },
}

/// Passes a reachable standby may go without streaming from the primary (it may be catching up
/// or reconnecting) before it is taken out of pgpool and through the recovery ladder.
pub const STRAY_PASSES: u32 = 5;

/// Why no standby may be promoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoCandidate {
    #[error("no standby of this cluster is reachable")]
    NoStandby,
    #[error("best standby {node} lags {lag} bytes behind the old primary (limit {limit})")]
    TooFarBehind { node: usize, lag: u64, limit: u64 },
}

impl NodeView {
    fn is_member(&self, sysid: Option<u64>) -> bool {
        match (&self.pg, sysid) {
            (Some(pg), Some(id)) => pg.system_identifier == id,
            _ => false,
        }
    }

    /// The container cannot serve: stopped or gone; or frozen by `docker pause` and a probe
    /// has failed since (a pause is confirmed by the probes before anything is done).
    fn container_gone(&self) -> bool {
        match self.container {
            Some(ContainerStatus::Exited)
            | Some(ContainerStatus::Dead)
            | Some(ContainerStatus::Missing)
            | Some(ContainerStatus::Created) => true,
            Some(ContainerStatus::Paused) => self.probe_failures > 0,
            _ => false,
        }
    }
}

impl ClusterView {
    /// The node whose own container (as last inspected) has this id.
    pub fn node_of_container(&self, container_id: &str) -> Option<&NodeView> {
        self.nodes
            .iter()
            .find(|n| n.container_id.as_deref() == Some(container_id))
    }

    /// The one definition of a healthy standby: a member of this cluster, in recovery, streaming
    /// from the primary on the primary's timeline, and neither fenced nor busy. Only such a node
    /// may be attached to pgpool, started with pgpool, or chosen as a switchover target.
    pub fn is_healthy_standby(&self, node: usize) -> Result<(), &'static str> {
        let primary = self.primary.ok_or("no primary is known")?;
        let n = self.nodes.get(node).ok_or("unknown node")?;
        if node == primary {
            return Err("it is the primary");
        }
        if n.busy {
            return Err("a recovery is running on it");
        }
        if n.fenced {
            return Err("it is fenced");
        }
        let pg = n.pg.as_ref().ok_or("it does not answer")?;
        if !n.is_member(self.system_identifier) {
            return Err("it is not a member of this cluster");
        }
        if !pg.in_recovery {
            return Err("it is not in recovery");
        }
        // The primary's pg_stat_replication is the witness; before the primary is adopted
        // there is none yet, and the standby's own walreceiver is asked.
        let pname = self.nodes[primary].name.as_str();
        let own_word =
            !self.replication_seen && pg.streaming && pg.upstream_host.as_deref() == Some(pname);
        if !n.streaming_from_primary && !own_word {
            return Err("it does not stream from the primary");
        }
        let primary_tl = self.nodes[primary].pg.as_ref().map(|p| p.timeline);
        if primary_tl.is_some_and(|tl| tl != pg.timeline) {
            return Err("it is on another timeline than the primary");
        }
        Ok(())
    }
}

/// The standbys to re-point at `new_primary` (after a failover or switchover, or when pgpool
/// asks one to follow): answering members of this cluster in recovery, other than `exclude`
/// (the old primary). Never a foreign node (another cluster's server), a busy one (a job owns
/// its data) or a fenced one (it must stay away until recovery takes it back).
pub fn followers(view: &ClusterView, new_primary: usize, exclude: &[usize]) -> Vec<usize> {
    view.nodes
        .iter()
        .filter(|n| n.id != new_primary && !exclude.contains(&n.id))
        .filter(|n| !n.busy && !n.fenced)
        .filter(|n| n.is_member(view.system_identifier))
        .filter(|n| n.pg.as_ref().is_some_and(|p| p.in_recovery))
        .map(|n| n.id)
        .collect()
}

/// What a Docker event asks of the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventResponse {
    /// The primary's own container died: fail over now. `killed`: Docker reported the SIGKILL
    /// sent, so nothing in it can take a write any more and fencing only has to keep it from
    /// restarting, not wait for Docker's teardown (a `die` is down already; an `oom` may have
    /// killed only a backend).
    Failover {
        node: usize,
        reason: String,
        killed: bool,
    },
    /// A standby's own container died: take it out of pgpool, never promote anything.
    StandbyDown { node: usize },
    /// The primary's own container was paused or reported unhealthy: fail over only if a quick
    /// SQL probe confirms that it does not answer.
    ConfirmPrimary { node: usize, reason: String },
    /// Something may be wrong (pause, unhealthy, or a container not yet seen): look now, let
    /// the probes confirm before anything is done.
    Look,
    /// Not about a node, or nothing that stops it serving.
    Ignore,
}

/// Maps a Docker event to a response. Only an event of a node's *own* container (its id as last
/// inspected) counts: a `docker-compose run --rm pg-0 …` container carries pg-0's labels, and
/// its exit must not get the real pg-0 killed. Only death (`die`, `oom`, SIGKILL) acts at once;
/// `pause` and `unhealthy` are confirmed by the probe loop first.
pub fn event_response(view: &ClusterView, ev: &EventFacts) -> EventResponse {
    if ev.oneoff {
        return EventResponse::Ignore;
    }
    // Some(true): it died. Some(false): it may hang, the probe decides. None: another signal
    // (a `docker stop` sends SIGINT first): the `die` that follows is what counts.
    let sigkill = ev.action == "kill"
        && matches!(
            ev.signal.as_deref(),
            Some("9") | Some("SIGKILL") | Some("KILL")
        );
    let death = match ev.action.as_str() {
        "die" | "oom" => Some(true),
        "kill" => sigkill.then_some(true),
        "pause" | "health_status: unhealthy" => Some(false),
        _ => return EventResponse::Ignore,
    };
    let Some(node) = view.node_of_container(&ev.container_id) else {
        // A container of the cluster the last pass did not see (just recreated?): look.
        return EventResponse::Look;
    };
    let Some(death) = death.filter(|_| !node.busy && !node.fenced) else {
        return EventResponse::Look;
    };
    if !death {
        return if view.primary == Some(node.id) {
            EventResponse::ConfirmPrimary {
                node: node.id,
                reason: format!("Docker event {}", ev.action),
            }
        } else {
            EventResponse::Look
        };
    }
    if view.primary == Some(node.id) {
        EventResponse::Failover {
            node: node.id,
            reason: format!("Docker event {}", ev.action),
            killed: sigkill,
        }
    } else {
        EventResponse::StandbyDown { node: node.id }
    }
}

/// Rung 1 is tried only on a node whose data may be kept as it is.
pub fn may_attach_as_is(f: &RecoveryFacts) -> bool {
    !f.force_rebuild && !f.fenced && !f.empty
}

/// Why a node's data may not be rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node holds another cluster's data (system identifier {0}); it is never wiped")]
pub struct WipeRefused(pub String);

/// pg_rewind rewinds only a target whose control file says it ran with `wal_log_hints` on or
/// with data checksums (`Data page checksum version` other than 0): otherwise a hint-bit-only
/// change of a page leaves no WAL, and the rewound page could be wrong. A value that could not
/// be read is left to pg_rewind to judge (it refuses with its own message).
pub fn control_file_rewindable(
    wal_log_hints: Option<&str>,
    checksum_version: Option<&str>,
) -> bool {
    !(wal_log_hints == Some("off") && checksum_version == Some("0"))
}

/// A member whose data would be rewound, but whose control file rules pg_rewind out: it is
/// rebuilt instead (and the acting code says why).
pub fn rewind_ruled_out(f: &RecoveryFacts, data: &DataIdentity) -> bool {
    *data == DataIdentity::Member && !f.force_rebuild && !f.empty && !f.rewindable
}

/// The rungs that rewrite the node's data, in order, once rung 1 is out: the safety rule on
/// wiping lives here. Only a fresh initdb, an empty directory or a former member of this
/// cluster may be rewritten; a member is rewound first (cheaper, keeps the common history)
/// unless a rebuild is forced or its control file rules a rewind out. A rewrite cut short by a
/// restart of the sidecar is redone as a rebuild, whatever the half-written directory shows.
pub fn rewrite_rungs(f: &RecoveryFacts, data: &DataIdentity) -> Result<Vec<Rung>, WipeRefused> {
    if f.rewrite_in_flight {
        return Ok(vec![Rung::Rebuild]);
    }
    match data {
        DataIdentity::Foreign(id) => Err(WipeRefused(id.clone())),
        DataIdentity::Member if !f.force_rebuild && !f.empty && f.rewindable => {
            Ok(vec![Rung::Rewind, Rung::Rebuild])
        }
        DataIdentity::Member | DataIdentity::Empty | DataIdentity::FreshInitdb => {
            Ok(vec![Rung::Rebuild])
        }
    }
}

/// Seconds after a failover before an automatic failback may start: the cluster settles first.
pub const FAILBACK_SETTLE_SECONDS: f64 = 10.0;
/// The first wait after a failed automatic recovery, and the longest.
pub const RECOVERY_BACKOFF_FIRST: std::time::Duration = std::time::Duration::from_secs(5);
pub const RECOVERY_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(300);

/// Whether a failback may start now: not within [`FAILBACK_SETTLE_SECONDS`] of the last
/// failover (unix seconds), and not while an operation holds the failover lock.
pub fn failback_may_start(now_unix: f64, last_failover_unix: Option<f64>, lock_free: bool) -> bool {
    lock_free && last_failover_unix.is_none_or(|at| now_unix - at > FAILBACK_SETTLE_SECONDS)
}

/// The wait before the next automatic recovery of a node whose last one failed after waiting
/// `previous` (None: the first failure): doubling, capped.
pub fn next_recovery_backoff(previous: Option<std::time::Duration>) -> std::time::Duration {
    previous
        .map(|d| (d * 2).min(RECOVERY_BACKOFF_MAX))
        .unwrap_or(RECOVERY_BACKOFF_FIRST)
}

/// At start-up: which node is the primary. Among reachable writable nodes that are not fenced
/// (a fenced old primary never is, whatever it says), the highest timeline wins (a node promoted
/// by a failover beats an old primary restarted by hand); then the primary the state file names;
/// then the one the standbys follow; then the first configured node. While the first node's
/// container is still starting, only a node with such evidence (the state file, a later
/// timeline, or followers) may be taken: a fresh standby-to-be that merely finished its initdb
/// first must not become the primary.
pub fn initial_primary(view: &ClusterView) -> Option<usize> {
    let followers = |n: &NodeView| {
        view.nodes
            .iter()
            .filter(|s| {
                s.pg.as_ref().is_some_and(|p| {
                    p.in_recovery && p.upstream_host.as_deref() == Some(n.name.as_str())
                })
            })
            .count()
    };
    let remembered = |n: &NodeView| view.remembered_primary == Some(n.id);
    let first_pending = view
        .nodes
        .first()
        .is_some_and(|f| f.pg.is_none() && !f.container_gone());
    view.nodes
        .iter()
        .filter(|n| !n.fenced)
        .filter_map(|n| n.pg.as_ref().filter(|p| !p.in_recovery).map(|p| (n, p)))
        .filter(|(n, p)| !first_pending || remembered(n) || p.timeline > 1 || followers(n) > 0)
        .max_by(|(a, pa), (b, pb)| {
            pa.timeline
                .cmp(&pb.timeline)
                .then(remembered(a).cmp(&remembered(b)))
                .then(followers(a).cmp(&followers(b)))
                .then(b.id.cmp(&a.id))
        })
        .map(|(n, _)| n.id)
}

/// At start-up with no writable node to adopt: whether the remembered primary's failover must be
/// finished now. Only when it is fenced (a failover or switchover was cut short) or its
/// container is gone, and a standby of this cluster answers; a remembered primary that is merely
/// still starting is waited for.
pub fn failover_to_resume(view: &ClusterView) -> Option<usize> {
    let r = view.remembered_primary?;
    let n = view.nodes.get(r)?;
    let standby_answers = view.nodes.iter().any(|s| {
        s.id != r
            && !s.fenced
            && s.is_member(view.system_identifier)
            && s.pg.as_ref().is_some_and(|p| p.in_recovery)
    });
    ((n.fenced || n.container_gone()) && standby_answers).then_some(r)
}

/// Whether a standby's position, seen twice during a failover, is final: it replayed all it
/// received and replays nothing more. Only then does its position say which WAL it has: the
/// received position restarts at a segment boundary whenever its WAL receiver reconnects
/// (as it does at once when the primary dies), and replay may still trail what was flushed,
/// so a standby holding the last acknowledged commit could otherwise look behind another.
pub fn position_settled(before: Option<&PgState>, now: &PgState) -> bool {
    let replay = now.replay_lsn.unwrap_or(0);
    now.in_recovery
        && before.is_some_and(|b| b.in_recovery && b.replay_lsn == now.replay_lsn)
        && replay >= now.receive_lsn.unwrap_or(0)
}

/// The standby to promote when `old` fails: highest WAL position; ties by priority, then the
/// lower node id. Only members of the cluster on the primary's timeline or later count.
pub fn choose_candidate(
    view: &ClusterView,
    policy: &Policy,
    old: usize,
    old_lsn: Option<u64>,
) -> Result<usize, NoCandidate> {
    let prio = |id: usize| policy.priorities.get(id).copied().unwrap_or(0);
    let best = view
        .nodes
        .iter()
        .filter(|n| n.id != old && !n.fenced && !n.busy)
        .filter(|n| n.is_member(view.system_identifier))
        .filter_map(|n| n.pg.as_ref().filter(|p| p.in_recovery).map(|p| (n, p.lsn)))
        .max_by(|(a, la), (b, lb)| {
            la.cmp(lb)
                .then(prio(a.id).cmp(&prio(b.id)))
                .then(b.id.cmp(&a.id))
        })
        .ok_or(NoCandidate::NoStandby)?;
    let (best, lsn) = best;
    if let Some(old_lsn) = old_lsn {
        let lag = old_lsn.saturating_sub(lsn);
        if lag > policy.max_lag_on_failover {
            return Err(NoCandidate::TooFarBehind {
                node: best.id,
                lag,
                limit: policy.max_lag_on_failover,
            });
        }
    }
    Ok(best.id)
}

/// A standby whose process exited by itself, to be started again: never a fenced one, one an
/// operator stopped, or one whose container is gone (that is the ladder's to recreate).
fn restart_due(n: &NodeView) -> bool {
    n.died
        && n.container_gone()
        && n.container != Some(ContainerStatus::Missing)
        && !n.busy
        && !n.fenced
        && !n.stopped_on_purpose
}

/// Whether the primary must be failed over, and why.
pub fn primary_failure(view: &ClusterView, policy: &Policy) -> Option<String> {
    let p = &view.nodes[view.primary?];
    if p.busy {
        return None;
    }
    if p.container_gone() {
        return Some(format!("container is {:?}", p.container.as_ref()?));
    }
    if p.probe_failures >= policy.probe_failures {
        return Some(format!("{} consecutive probes failed", p.probe_failures));
    }
    // A primary that answers is never failed over, even if it says it is in recovery: that is
    // an observation older than a promotion, or an operator at work — not a dead primary.
    None
}

/// The plan for one reconcile pass.
pub fn decide(view: &ClusterView, policy: &Policy) -> Vec<Action> {
    let mut plan = Vec::new();
    let Some(primary) = view.primary else {
        if let Some(node) = initial_primary(view) {
            plan.push(Action::AdoptPrimary { node });
        } else if let Some(old) = failover_to_resume(view) {
            plan.push(Action::ResumeFailover { old });
        }
        return plan;
    };
    if let Some(reason) = primary_failure(view, policy) {
        // Standbys that died with it are started first: the failover needs one to promote.
        for n in view
            .nodes
            .iter()
            .filter(|n| n.id != primary && restart_due(n))
        {
            plan.push(Action::Start { node: n.id });
        }
        plan.push(Action::Failover {
            old: primary,
            reason,
        });
        return plan;
    }
    if view.nodes[primary].pool == Some(PoolStatus::Down) {
        plan.push(Action::Attach { node: primary });
    }
    if let Some(p) = policy
        .preferred_primary
        .filter(|p| policy.auto_failback && *p != primary)
    {
        let n = &view.nodes[p];
        let caught_up = n.lag_bytes.is_some_and(|l| l <= CAUGHT_UP_BYTES);
        let calm = view.nodes.iter().all(|n| !n.busy);
        if n.streaming_from_primary && caught_up && !n.fenced && calm {
            plan.push(Action::Failback { to: p });
        }
    }
    for n in view.nodes.iter().filter(|n| n.id != primary && !n.busy) {
        let serving = n.pool.is_some_and(|s| s.is_serving());
        // Cut short by a restart of the sidecar: finished whatever auto_rejoin says (it was
        // decided before the restart), and before anything else is judged on half-done data.
        if let Some(redo) = n.redo.filter(|_| n.container.is_some()) {
            plan.push(match redo {
                Redo::Rebuild => Action::Rebuild {
                    node: n.id,
                    reason: "rebuild cut short by a restart of the sidecar".into(),
                },
                Redo::Recovery => Action::Rejoin {
                    node: n.id,
                    reason: "recovery cut short by a restart of the sidecar".into(),
                },
            });
            continue;
        }
        // What an `on-failure` restart policy would do, which nodes cannot have: the sidecar
        // owns their lifecycle, so it must never start a fenced one or one an operator stopped.
        if n.died && n.container_gone() && !n.fenced && !n.stopped_on_purpose {
            if restart_due(n) {
                plan.push(Action::Start { node: n.id });
            }
            if serving {
                plan.push(Action::Detach {
                    node: n.id,
                    reason: "standby's process exited".into(),
                });
            }
            continue;
        }
        if policy.auto_rejoin && n.fenced && n.container.is_some() {
            plan.push(Action::Rejoin {
                node: n.id,
                reason: "fenced old primary".into(),
            });
            continue;
        }
        if policy.auto_rejoin && n.container == Some(ContainerStatus::Missing) {
            plan.push(Action::Rejoin {
                node: n.id,
                reason: "container removed".into(),
            });
            continue;
        }
        let Some(pg) = &n.pg else {
            if serving && n.probe_failures >= policy.probe_failures {
                plan.push(Action::Detach {
                    node: n.id,
                    reason: "standby does not answer".into(),
                });
            }
            continue;
        };
        if !n.is_member(view.system_identifier) {
            if pg.user_databases.is_empty() && pg.timeline <= 1 {
                plan.push(Action::Rebuild {
                    node: n.id,
                    reason: "fresh node (no user databases)".into(),
                });
            } else {
                plan.push(Action::ReportForeign { node: n.id });
            }
            if serving {
                plan.push(Action::Detach {
                    node: n.id,
                    reason: "not a member of this cluster".into(),
                });
            }
            continue;
        }
        if !pg.in_recovery {
            if serving {
                plan.push(Action::Detach {
                    node: n.id,
                    reason: "second writable node".into(),
                });
            }
            plan.push(Action::Fence {
                node: n.id,
                reason: "writable node that is not the primary".into(),
            });
            continue;
        }
        if view.is_healthy_standby(n.id).is_ok() && !serving {
            plan.push(Action::Attach { node: n.id });
        }
        if !n.streaming_from_primary && n.not_streaming_passes >= STRAY_PASSES {
            if serving {
                plan.push(Action::Detach {
                    node: n.id,
                    reason: "standby does not stream from the primary".into(),
                });
            }
            if policy.auto_rejoin {
                plan.push(Action::Rejoin {
                    node: n.id,
                    reason: "standby does not stream from the primary".into(),
                });
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSID: u64 = 7_000_000_000_000_000_001;

    fn policy() -> Policy {
        Policy {
            preferred_primary: None,
            auto_failback: false,
            probe_failures: 3,
            auto_rejoin: true,
            max_lag_on_failover: 1 << 20,
            priorities: vec![0, 0, 0],
        }
    }

    fn primary(id: usize, lsn: u64) -> NodeView {
        NodeView {
            id,
            name: format!("pg-{id}"),
            container: Some(ContainerStatus::Running),
            pg: Some(PgState {
                in_recovery: false,
                system_identifier: SYSID,
                timeline: 1,
                lsn,
                ..Default::default()
            }),
            pool: Some(PoolStatus::Up),
            ..Default::default()
        }
    }

    fn standby(id: usize, lsn: u64) -> NodeView {
        NodeView {
            id,
            name: format!("pg-{id}"),
            container: Some(ContainerStatus::Running),
            pg: Some(PgState {
                in_recovery: true,
                system_identifier: SYSID,
                timeline: 1,
                lsn,
                streaming: true,
                upstream_host: Some("pg-0".into()),
                ..Default::default()
            }),
            pool: Some(PoolStatus::Up),
            streaming_from_primary: true,
            ..Default::default()
        }
    }

    fn cluster(nodes: Vec<NodeView>) -> ClusterView {
        ClusterView {
            nodes,
            primary: Some(0),
            system_identifier: Some(SYSID),
            generation: 0,
            replication_seen: true,
            remembered_primary: None,
        }
    }

    #[test]
    fn a_standby_position_is_final_once_replay_stops_at_what_it_received() {
        let st = |receive: Option<u64>, replay: Option<u64>| PgState {
            in_recovery: true,
            receive_lsn: receive,
            replay_lsn: replay,
            ..Default::default()
        };
        let cases = [
            // (before, now, settled)
            (None, st(Some(100), Some(100)), false),
            (
                Some(st(Some(100), Some(90))),
                st(Some(100), Some(100)),
                false,
            ),
            (
                Some(st(Some(100), Some(100))),
                st(Some(100), Some(100)),
                true,
            ),
            // Still replaying what it received.
            (
                Some(st(Some(120), Some(100))),
                st(Some(120), Some(100)),
                false,
            ),
            // The receiver reconnected: received restarts at the segment, below replay.
            (Some(st(Some(0), Some(130))), st(Some(0), Some(130)), true),
            (Some(st(None, Some(130))), st(None, Some(130)), true),
            // Promoted meanwhile (not a standby): never a settled standby position.
            (
                Some(st(Some(100), Some(100))),
                PgState {
                    in_recovery: false,
                    ..st(Some(100), Some(100))
                },
                false,
            ),
        ];
        for (i, (before, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(position_settled(before.as_ref(), &now), want, "case {i}");
        }
    }

    #[test]
    fn healthy_cluster_needs_nothing() {
        let v = cluster(vec![primary(0, 100), standby(1, 100), standby(2, 100)]);
        assert!(decide(&v, &policy()).is_empty());
    }

    #[test]
    fn most_advanced_standby_is_promoted() {
        let v = cluster(vec![primary(0, 100), standby(1, 90), standby(2, 95)]);
        assert_eq!(choose_candidate(&v, &policy(), 0, Some(100)), Ok(2));
    }

    #[test]
    fn ties_go_to_priority_then_lowest_id() {
        let v = cluster(vec![primary(0, 100), standby(1, 95), standby(2, 95)]);
        assert_eq!(choose_candidate(&v, &policy(), 0, None), Ok(1));
        let mut p = policy();
        p.priorities = vec![0, 0, 5];
        assert_eq!(choose_candidate(&v, &p, 0, None), Ok(2));
    }

    #[test]
    fn lagging_standby_is_not_promoted() {
        let v = cluster(vec![primary(0, 10 << 20), standby(1, 1 << 20)]);
        assert_eq!(
            choose_candidate(&v, &policy(), 0, Some(10 << 20)),
            Err(NoCandidate::TooFarBehind {
                node: 1,
                lag: 9 << 20,
                limit: 1 << 20
            })
        );
    }

    #[test]
    fn unreachable_fenced_or_foreign_standbys_are_never_candidates() {
        let mut down = standby(1, 200);
        down.pg = None;
        let mut fenced = standby(2, 300);
        fenced.fenced = true;
        let mut foreign = standby(3, 400);
        foreign.pg.as_mut().unwrap().system_identifier = 42;
        let v = cluster(vec![primary(0, 100), down, fenced, foreign]);
        assert_eq!(
            choose_candidate(&v, &policy(), 0, None),
            Err(NoCandidate::NoStandby)
        );
    }

    #[test]
    fn dead_primary_container_means_failover() {
        let mut p = primary(0, 100);
        p.container = Some(ContainerStatus::Exited);
        p.pg = None;
        let v = cluster(vec![p, standby(1, 100)]);
        assert!(matches!(
            decide(&v, &policy())[..],
            [Action::Failover { old: 0, .. }]
        ));
    }

    #[test]
    fn hung_primary_fails_over_only_after_threshold() {
        let mut p = primary(0, 100);
        p.probe_failures = 2;
        let v = cluster(vec![p.clone(), standby(1, 100)]);
        assert!(decide(&v, &policy()).is_empty());
        p.probe_failures = 3;
        let v = cluster(vec![p, standby(1, 100)]);
        assert!(matches!(
            decide(&v, &policy())[..],
            [Action::Failover { old: 0, .. }]
        ));
    }

    #[test]
    fn standby_failure_never_promotes() {
        let mut s = standby(1, 100);
        s.container = Some(ContainerStatus::Exited);
        s.pg = None;
        s.probe_failures = 10;
        let v = cluster(vec![primary(0, 100), s, standby(2, 100)]);
        let plan = decide(&v, &policy());
        assert_eq!(
            plan,
            vec![Action::Detach {
                node: 1,
                reason: "standby does not answer".into()
            }]
        );
    }

    #[test]
    fn fresh_node_is_rebuilt_foreign_node_is_reported_and_kept_out() {
        let mut fresh = primary(1, 10);
        fresh.pg.as_mut().unwrap().system_identifier = 1;
        fresh.pool = Some(PoolStatus::Down);
        let mut foreign = primary(2, 10);
        foreign.pg.as_mut().unwrap().system_identifier = 2;
        foreign.pg.as_mut().unwrap().user_databases = vec!["shop".into()];
        let v = cluster(vec![primary(0, 100), fresh, foreign]);
        let plan = decide(&v, &policy());
        assert!(plan.contains(&Action::Rebuild {
            node: 1,
            reason: "fresh node (no user databases)".into()
        }));
        assert!(plan.contains(&Action::ReportForeign { node: 2 }));
        assert!(plan.contains(&Action::Detach {
            node: 2,
            reason: "not a member of this cluster".into()
        }));
        assert!(!plan
            .iter()
            .any(|a| matches!(a, Action::Rebuild { node: 2, .. })));
    }

    #[test]
    fn split_brain_second_primary_is_detached_and_fenced() {
        let v = cluster(vec![primary(0, 100), primary(1, 100), standby(2, 100)]);
        let plan = decide(&v, &policy());
        assert!(plan.contains(&Action::Detach {
            node: 1,
            reason: "second writable node".into()
        }));
        assert!(plan
            .iter()
            .any(|a| matches!(a, Action::Fence { node: 1, .. })));
        assert!(!plan.iter().any(|a| matches!(a, Action::Failover { .. })));
    }

    #[test]
    fn only_streaming_standbys_on_the_primary_timeline_are_attached() {
        let mut a = standby(1, 100);
        a.pool = Some(PoolStatus::Down);
        let mut b = standby(2, 100);
        b.pool = Some(PoolStatus::Down);
        b.streaming_from_primary = false;
        let v = cluster(vec![primary(0, 100), a.clone(), b.clone()]);
        assert_eq!(decide(&v, &policy()), vec![Action::Attach { node: 1 }]);
        b.not_streaming_passes = STRAY_PASSES;
        let v = cluster(vec![primary(0, 100), a.clone(), b]);
        assert!(decide(&v, &policy()).contains(&Action::Rejoin {
            node: 2,
            reason: "standby does not stream from the primary".into()
        }));
        a.pg.as_mut().unwrap().timeline = 0;
        let v = cluster(vec![primary(0, 100), a]);
        assert!(decide(&v, &policy()).is_empty());
    }

    #[test]
    fn start_up_picks_highest_timeline_then_followed_then_first() {
        let mut v = cluster(vec![primary(0, 1), primary(1, 1), primary(2, 1)]);
        v.primary = None;
        assert_eq!(initial_primary(&v), Some(0));
        v.nodes[2].pg.as_mut().unwrap().timeline = 2;
        assert_eq!(initial_primary(&v), Some(2));
        v.nodes[2].pg.as_mut().unwrap().timeline = 1;
        let mut s = standby(3, 1);
        s.pg.as_mut().unwrap().upstream_host = Some("pg-1".into());
        v.nodes.push(s);
        assert_eq!(initial_primary(&v), Some(1));
        assert_eq!(
            decide(&v, &policy()),
            vec![Action::AdoptPrimary { node: 1 }]
        );
    }

    fn with_ids(mut v: ClusterView) -> ClusterView {
        for n in v.nodes.iter_mut() {
            n.container_id = Some(format!("c{}", n.id));
        }
        v
    }

    fn event(id: &str, action: &str) -> EventFacts {
        EventFacts {
            container_id: id.into(),
            action: action.into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_nodes_own_container_dying_fails_over() {
        let v = with_ids(cluster(vec![
            primary(0, 100),
            standby(1, 100),
            standby(2, 100),
        ]));
        let table: Vec<(EventFacts, EventResponse)> = vec![
            (
                event("c0", "die"),
                EventResponse::Failover {
                    node: 0,
                    reason: "Docker event die".into(),
                    killed: false,
                },
            ),
            (
                event("c0", "oom"),
                EventResponse::Failover {
                    node: 0,
                    reason: "Docker event oom".into(),
                    killed: false,
                },
            ),
            (
                EventFacts {
                    signal: Some("SIGKILL".into()),
                    ..event("c0", "kill")
                },
                EventResponse::Failover {
                    node: 0,
                    reason: "Docker event kill".into(),
                    killed: true,
                },
            ),
            // Docker's events spell the signal either way; the container is killed either way.
            (
                EventFacts {
                    signal: Some("9".into()),
                    ..event("c0", "kill")
                },
                EventResponse::Failover {
                    node: 0,
                    reason: "Docker event kill".into(),
                    killed: true,
                },
            ),
            // docker stop sends SIGINT first: the die that follows is what counts.
            (
                EventFacts {
                    signal: Some("SIGINT".into()),
                    ..event("c0", "kill")
                },
                EventResponse::Look,
            ),
            // A `docker-compose run --rm pg-0 …` container: same labels, other id.
            (
                EventFacts {
                    oneoff: true,
                    ..event("c0-run", "die")
                },
                EventResponse::Ignore,
            ),
            // Even with a known id, a one-off flag wins.
            (
                EventFacts {
                    oneoff: true,
                    ..event("c0", "die")
                },
                EventResponse::Ignore,
            ),
            // A container of the project the last pass did not see: look, do not act.
            (event("c9", "die"), EventResponse::Look),
            (
                event("c0", "pause"),
                EventResponse::ConfirmPrimary {
                    node: 0,
                    reason: "Docker event pause".into(),
                },
            ),
            (
                event("c0", "health_status: unhealthy"),
                EventResponse::ConfirmPrimary {
                    node: 0,
                    reason: "Docker event health_status: unhealthy".into(),
                },
            ),
            (event("c1", "pause"), EventResponse::Look),
            (event("c0", "start"), EventResponse::Ignore),
            (event("c2", "die"), EventResponse::StandbyDown { node: 2 }),
        ];
        for (ev, want) in table {
            assert_eq!(event_response(&v, &ev), want, "{ev:?}");
        }
    }

    #[test]
    fn events_of_busy_or_fenced_nodes_only_wake_the_loop() {
        let mut v = with_ids(cluster(vec![primary(0, 100), standby(1, 100)]));
        v.nodes[0].busy = true;
        assert_eq!(event_response(&v, &event("c0", "die")), EventResponse::Look);
        v.nodes[0].busy = false;
        v.nodes[1].fenced = true;
        assert_eq!(event_response(&v, &event("c1", "die")), EventResponse::Look);
    }

    #[test]
    fn followers_exclude_foreign_busy_fenced_and_writable_nodes() {
        let mut foreign = standby(3, 100);
        foreign.pg.as_mut().unwrap().system_identifier = 42;
        let mut busy = standby(4, 100);
        busy.busy = true;
        let mut fenced = standby(5, 100);
        fenced.fenced = true;
        let writable = primary(6, 100);
        let mut silent = standby(7, 100);
        silent.pg = None;
        let v = cluster(vec![
            primary(0, 100),
            standby(1, 100),
            standby(2, 100),
            foreign,
            busy,
            fenced,
            writable,
            silent,
        ]);
        assert_eq!(followers(&v, 1, &[0]), vec![2]);
        assert_eq!(followers(&v, 2, &[0]), vec![1]);
        // Without the old primary excluded it is still not a follower: it is writable.
        assert_eq!(followers(&v, 1, &[]), vec![2]);
    }

    #[test]
    fn one_definition_of_a_healthy_standby() {
        let v = cluster(vec![primary(0, 100), standby(1, 100)]);
        assert_eq!(v.is_healthy_standby(1), Ok(()));
        assert!(v.is_healthy_standby(0).is_err());
        assert!(v.is_healthy_standby(9).is_err());
        type Spoil = fn(&mut NodeView);
        let cases: Vec<(&str, Spoil)> = vec![
            ("a recovery is running on it", |n| n.busy = true),
            ("it is fenced", |n| n.fenced = true),
            ("it does not answer", |n| n.pg = None),
            ("it is not a member of this cluster", |n| {
                n.pg.as_mut().unwrap().system_identifier = 1
            }),
            ("it is not in recovery", |n| {
                n.pg.as_mut().unwrap().in_recovery = false
            }),
            ("it does not stream from the primary", |n| {
                n.streaming_from_primary = false;
                n.pg.as_mut().unwrap().streaming = false;
            }),
            ("it is on another timeline than the primary", |n| {
                n.pg.as_mut().unwrap().timeline = 2
            }),
        ];
        for (why, spoil) in cases {
            let mut v = v.clone();
            spoil(&mut v.nodes[1]);
            assert_eq!(v.is_healthy_standby(1), Err(why));
            // The same rule keeps it out of pgpool.
            v.nodes[1].pool = Some(PoolStatus::Down);
            assert!(!decide(&v, &policy()).contains(&Action::Attach { node: 1 }));
        }
        // Before the primary's replication view exists, the standby's own word counts.
        let mut v = v.clone();
        v.nodes[1].streaming_from_primary = false;
        assert!(v.is_healthy_standby(1).is_err());
        v.replication_seen = false;
        assert_eq!(v.is_healthy_standby(1), Ok(()));
        v.nodes[1].pg.as_mut().unwrap().upstream_host = Some("pg-9".into());
        assert!(v.is_healthy_standby(1).is_err());
    }

    #[test]
    fn recovery_ladder_keeps_what_it_may_and_wipes_only_what_it_may() {
        let f = |force_rebuild, fenced, empty| RecoveryFacts {
            force_rebuild,
            fenced,
            empty,
            rewindable: true,
            rewrite_in_flight: false,
        };
        // Rung 1 only for data that may be kept as it is.
        assert!(may_attach_as_is(&f(false, false, false)));
        assert!(!may_attach_as_is(&f(true, false, false)), "forced rebuild");
        assert!(
            !may_attach_as_is(&f(false, true, false)),
            "fenced old primary"
        );
        assert!(
            !may_attach_as_is(&f(false, false, true)),
            "empty data directory"
        );
        use DataIdentity::*;
        let foreign = Foreign("7001".into());
        let table: Vec<(RecoveryFacts, DataIdentity, Result<Vec<Rung>, WipeRefused>)> = vec![
            (
                f(false, true, false),
                Member,
                Ok(vec![Rung::Rewind, Rung::Rebuild]),
            ),
            (
                f(false, false, false),
                Member,
                Ok(vec![Rung::Rewind, Rung::Rebuild]),
            ),
            (f(true, false, false), Member, Ok(vec![Rung::Rebuild])),
            (f(false, false, true), Empty, Ok(vec![Rung::Rebuild])),
            (f(false, false, false), FreshInitdb, Ok(vec![Rung::Rebuild])),
            (
                f(false, false, false),
                foreign.clone(),
                Err(WipeRefused("7001".into())),
            ),
            // Not even an operator's forced rebuild wipes another cluster's data.
            (
                f(true, false, false),
                foreign.clone(),
                Err(WipeRefused("7001".into())),
            ),
            // The sidecar's own rebuild, cut short: its half-copied directory has no readable
            // control file (an unknown identity) and is rebuilt again.
            (
                RecoveryFacts {
                    rewrite_in_flight: true,
                    ..f(true, false, false)
                },
                Foreign("unknown".into()),
                Ok(vec![Rung::Rebuild]),
            ),
            (
                RecoveryFacts {
                    rewrite_in_flight: true,
                    ..f(false, true, false)
                },
                Member,
                Ok(vec![Rung::Rebuild]),
            ),
        ];
        for (facts, data, want) in table {
            assert_eq!(rewrite_rungs(&facts, &data), want, "{facts:?} {data:?}");
        }
    }

    #[test]
    fn a_member_that_ran_without_hints_or_checksums_is_rebuilt_not_rewound() {
        let f = |force_rebuild, empty, rewindable| RecoveryFacts {
            force_rebuild,
            fenced: true,
            empty,
            rewindable,
            rewrite_in_flight: false,
        };
        use DataIdentity::*;
        let table: Vec<(RecoveryFacts, DataIdentity, Vec<Rung>, bool)> = vec![
            (
                f(false, false, true),
                Member,
                vec![Rung::Rewind, Rung::Rebuild],
                false,
            ),
            (f(false, false, false), Member, vec![Rung::Rebuild], true),
            // Not a rewind anyway: nothing is said about hints.
            (f(true, false, false), Member, vec![Rung::Rebuild], false),
            (f(false, true, false), Empty, vec![Rung::Rebuild], false),
            (
                f(false, false, false),
                FreshInitdb,
                vec![Rung::Rebuild],
                false,
            ),
        ];
        for (facts, data, rungs, ruled_out) in table {
            assert_eq!(
                rewrite_rungs(&facts, &data),
                Ok(rungs),
                "{facts:?} {data:?}"
            );
            assert_eq!(
                rewind_ruled_out(&facts, &data),
                ruled_out,
                "{facts:?} {data:?}"
            );
        }
        // Not even an unrewindable foreign node is wiped.
        assert!(rewrite_rungs(&f(false, false, false), &Foreign("1".into())).is_err());
        // pg_controldata's words: only both known off rule it out.
        let table = [
            (Some("on"), Some("0"), true),
            (Some("off"), Some("1"), true),
            (Some("off"), Some("0"), false),
            (None, Some("0"), true),
            (Some("off"), None, true),
            (None, None, true),
        ];
        for (hints, checksums, want) in table {
            assert_eq!(
                control_file_rewindable(hints, checksums),
                want,
                "{hints:?} {checksums:?}"
            );
        }
    }

    #[test]
    fn rejoin_rules_fenced_removed_auto_rejoin_off_and_failback() {
        let mut fenced = standby(1, 100);
        fenced.fenced = true;
        fenced.pg = None;
        fenced.container = Some(ContainerStatus::Exited);
        let mut removed = standby(2, 100);
        removed.pg = None;
        removed.container = Some(ContainerStatus::Missing);
        let v = cluster(vec![primary(0, 100), fenced, removed]);
        let plan = decide(&v, &policy());
        assert!(plan.contains(&Action::Rejoin {
            node: 1,
            reason: "fenced old primary".into()
        }));
        assert!(plan.contains(&Action::Rejoin {
            node: 2,
            reason: "container removed".into()
        }));
        // AUTO_REJOIN=false: nothing comes back by itself.
        let mut off = policy();
        off.auto_rejoin = false;
        assert!(!decide(&v, &off)
            .iter()
            .any(|a| matches!(a, Action::Rejoin { .. } | Action::Rebuild { .. })));
        // A busy node is left to the operation that holds it.
        let mut v2 = v.clone();
        v2.nodes[1].busy = true;
        assert!(!decide(&v2, &policy()).contains(&Action::Rejoin {
            node: 1,
            reason: "fenced old primary".into()
        }));
        // Failback: only to a caught-up healthy standby, only with AUTO_FAILBACK, only calm.
        let mut fb = policy();
        fb.preferred_primary = Some(1);
        fb.auto_failback = true;
        let mut v3 = cluster(vec![primary(0, 100), standby(1, 100), standby(2, 100)]);
        v3.nodes[1].lag_bytes = Some(0);
        assert!(decide(&v3, &fb).contains(&Action::Failback { to: 1 }));
        v3.nodes[1].lag_bytes = Some(CAUGHT_UP_BYTES + 1);
        assert!(!decide(&v3, &fb).contains(&Action::Failback { to: 1 }));
        v3.nodes[1].lag_bytes = Some(0);
        v3.nodes[2].busy = true;
        assert!(!decide(&v3, &fb).contains(&Action::Failback { to: 1 }));
        v3.nodes[2].busy = false;
        fb.auto_failback = false;
        assert!(!decide(&v3, &fb).contains(&Action::Failback { to: 1 }));
    }

    #[test]
    fn failback_settles_and_recovery_backs_off() {
        assert!(failback_may_start(100.0, None, true));
        assert!(!failback_may_start(100.0, None, false), "lock held");
        assert!(!failback_may_start(105.0, Some(100.0), true), "too soon");
        assert!(failback_may_start(111.0, Some(100.0), true));
        let mut d = None;
        let mut seen = vec![];
        for _ in 0..9 {
            let next = next_recovery_backoff(d);
            seen.push(next.as_secs());
            d = Some(next);
        }
        assert_eq!(seen, vec![5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn a_paused_primary_is_failed_over_once_a_probe_confirms() {
        let mut v = cluster(vec![primary(0, 100), standby(1, 100)]);
        v.nodes[0].container = Some(ContainerStatus::Paused);
        assert_eq!(
            primary_failure(&v, &policy()),
            None,
            "paused, probes still fine"
        );
        v.nodes[0].probe_failures = 1;
        assert_eq!(
            primary_failure(&v, &policy()),
            Some("container is Paused".into())
        );
        v.nodes[0].container = Some(ContainerStatus::Exited);
        v.nodes[0].probe_failures = 0;
        assert_eq!(
            primary_failure(&v, &policy()),
            Some("container is Exited".into())
        );
    }

    fn unadopted(nodes: Vec<NodeView>) -> ClusterView {
        ClusterView {
            primary: None,
            ..cluster(nodes)
        }
    }

    fn exited(mut n: NodeView) -> NodeView {
        n.container = Some(ContainerStatus::Exited);
        n.pg = None;
        n.pool = Some(PoolStatus::Down);
        n.streaming_from_primary = false;
        n
    }

    #[test]
    fn after_a_restart_the_remembered_primary_is_adopted_but_never_a_fenced_one() {
        let mut p1 = primary(1, 100);
        p1.pg.as_mut().unwrap().timeline = 2;
        let mut s0 = standby(0, 100);
        s0.pg.as_mut().unwrap().timeline = 2;
        // pg-0 still starting: without the state file only evidence counts; the state's word is
        // evidence.
        let mut v = unadopted(vec![
            NodeView {
                pg: None,
                ..s0.clone()
            },
            p1.clone(),
        ]);
        v.nodes[1].pg.as_mut().unwrap().timeline = 1;
        assert_eq!(initial_primary(&v), None);
        v.remembered_primary = Some(1);
        assert_eq!(
            decide(&v, &policy()),
            vec![Action::AdoptPrimary { node: 1 }]
        );
        // A fenced old primary answering as writable (started by hand) is never adopted.
        let mut old = primary(0, 500);
        old.fenced = true;
        let v = ClusterView {
            remembered_primary: Some(0),
            ..unadopted(vec![old, p1.clone()])
        };
        assert_eq!(initial_primary(&v), Some(1));
        // Equal timelines: the remembered one before the first configured one.
        let v = ClusterView {
            remembered_primary: Some(1),
            ..unadopted(vec![primary(0, 100), primary(1, 100)])
        };
        assert_eq!(initial_primary(&v), Some(1));
    }

    #[test]
    fn a_failover_cut_short_is_finished_once_standbys_answer() {
        let mut old = exited(primary(0, 100));
        old.fenced = true;
        let mut v = ClusterView {
            remembered_primary: Some(0),
            ..unadopted(vec![old, standby(1, 100), standby(2, 90)])
        };
        assert_eq!(
            decide(&v, &policy()),
            vec![Action::ResumeFailover { old: 0 }]
        );
        // The remembered primary's container is merely still starting: wait for it.
        v.nodes[0].fenced = false;
        v.nodes[0].container = Some(ContainerStatus::Running);
        assert!(decide(&v, &policy()).is_empty());
        // Gone (its start failed): fail over from it.
        v.nodes[0].container = Some(ContainerStatus::Exited);
        assert_eq!(
            decide(&v, &policy()),
            vec![Action::ResumeFailover { old: 0 }]
        );
        // No standby answers yet: nothing can be promoted.
        v.nodes[1].pg = None;
        v.nodes[2].pg = None;
        assert!(decide(&v, &policy()).is_empty());
        // Nothing remembered: never a failover from a guess.
        let v = unadopted(vec![exited(primary(0, 1)), standby(1, 1)]);
        assert!(decide(&v, &policy()).is_empty());
    }

    #[test]
    fn a_standby_that_died_by_itself_is_started_again_one_stopped_on_purpose_is_not() {
        let mut dead = exited(standby(2, 100));
        dead.died = true;
        let v = cluster(vec![primary(0, 100), standby(1, 100), dead.clone()]);
        assert_eq!(decide(&v, &policy()), vec![Action::Start { node: 2 }]);
        let mut serving = dead.clone();
        serving.pool = Some(PoolStatus::Up);
        let v = cluster(vec![primary(0, 100), standby(1, 100), serving]);
        assert_eq!(
            decide(&v, &policy()),
            vec![
                Action::Start { node: 2 },
                Action::Detach {
                    node: 2,
                    reason: "standby's process exited".into()
                }
            ]
        );
        let mut on_purpose = dead.clone();
        on_purpose.stopped_on_purpose = true;
        let v = cluster(vec![primary(0, 100), standby(1, 100), on_purpose]);
        assert!(decide(&v, &policy()).is_empty());
        // A fenced node is the ladder's, never started as it is.
        let mut fenced = dead.clone();
        fenced.fenced = true;
        let v = cluster(vec![primary(0, 100), standby(1, 100), fenced]);
        assert_eq!(
            decide(&v, &policy()),
            vec![Action::Rejoin {
                node: 2,
                reason: "fenced old primary".into()
            }]
        );
        // Every node died at once: the standbys are started while the failover waits for one.
        let mut s1 = exited(standby(1, 100));
        s1.died = true;
        let v = cluster(vec![exited(primary(0, 100)), s1, dead.clone()]);
        assert_eq!(
            decide(&v, &policy()),
            vec![
                Action::Start { node: 1 },
                Action::Start { node: 2 },
                Action::Failover {
                    old: 0,
                    reason: "container is Exited".into()
                }
            ]
        );
        // Not dead by itself (stopped, nothing seen): left alone, as before.
        let v = cluster(vec![
            primary(0, 100),
            standby(1, 100),
            exited(standby(2, 100)),
        ]);
        assert!(decide(&v, &policy()).is_empty());
    }

    #[test]
    fn recoveries_cut_short_are_redone_even_without_auto_rejoin() {
        let mut half = exited(standby(2, 100));
        half.redo = Some(Redo::Rebuild);
        let mut rewinding = exited(primary(1, 100));
        rewinding.fenced = true;
        rewinding.redo = Some(Redo::Recovery);
        let v = cluster(vec![primary(0, 100), rewinding, half]);
        let no_rejoin = Policy {
            auto_rejoin: false,
            ..policy()
        };
        assert_eq!(
            decide(&v, &no_rejoin),
            vec![
                Action::Rejoin {
                    node: 1,
                    reason: "recovery cut short by a restart of the sidecar".into()
                },
                Action::Rebuild {
                    node: 2,
                    reason: "rebuild cut short by a restart of the sidecar".into()
                }
            ]
        );
    }
}
