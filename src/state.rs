//! The daemon's shared context and its authoritative cluster state.
//!
//! Reads/changes: [`State`] is written by the reconcile loop (observations, once per probe
//! interval), by failover (the primary, fenced nodes) and by recovery (busy nodes); the HTTP API
//! reads it for `/status` and `/readyz`. No globals: everything hangs off [`Ctx`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::restart::{Operation, Persisted, Resume};
use crate::cluster::ClusterView;
use crate::config::Config;
use crate::docker::DockerRuntime;
use crate::metrics::Metrics;
use crate::pgpool::conf::Paths;
use crate::pgpool::control::{Pgpool, PoolNode};
use crate::pgpool::version::PgpoolVersion;
use crate::postgres::{Endpoint, ReplicaStat, Session};
use crate::reaper::Reaper;

/// Seconds since the epoch, as recorded in the state file and `/status`.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Where a node stands, for `/status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Unknown,
    Primary,
    Streaming,
    Down,
    Rebuilding,
    Fenced,
    Foreign,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverRecord {
    pub old_primary: usize,
    pub new_primary: Option<usize>,
    pub trigger: String,
    pub reason: String,
    pub seconds: f64,
    pub result: String,
    pub at_unix: f64,
}

/// An operation found in flight at start-up, and what was done about it.
#[derive(Debug, Clone, Serialize)]
pub struct ResumedRecord {
    pub node: String,
    pub operation: crate::cluster::restart::OpKind,
    pub step: crate::cluster::restart::Step,
    pub resumed_as: Resume,
    pub since_unix: f64,
}

#[derive(Debug, Default)]
pub struct State {
    pub view: ClusterView,
    pub pool_nodes: Vec<PoolNode>,
    pub pgpool_up: bool,
    pub pgpool_started: bool,
    pub replication: HashMap<String, ReplicaStat>,
    pub fenced: BTreeSet<usize>,
    pub busy: BTreeSet<usize>,
    pub foreign: BTreeSet<usize>,
    /// The primary's WAL position at its last good probe: the yardstick for failover lag.
    pub last_primary_lsn: Option<u64>,
    pub last_failover: Option<FailoverRecord>,
    pub last_refusal: Option<String>,
    pub node_state: BTreeMap<usize, NodeState>,
    /// Bumped on every change of primary; an observation that started under an older one is
    /// stale and is thrown away rather than acted on.
    pub generation: u64,
    /// Docker events that took each node down (die, kill, stop, oom, pause), counted: an attach
    /// planned on probes from before one of them is stale, like a plan from an older generation.
    pub down_events: BTreeMap<usize, u64>,
    /// Each node's cluster network and aliases, as last seen connected: what a node fenced by
    /// a disconnect is reconnected to when recovery takes it back.
    pub known_network: BTreeMap<usize, (String, Vec<String>)>,
    /// Automatic recovery back-off per node: not before this instant, and the next delay.
    pub recovery_backoff: BTreeMap<usize, (std::time::Instant, Duration)>,
    /// Last inspect of each node's container: what to recreate it from after `docker rm`.
    pub last_spec: BTreeMap<usize, bollard::models::ContainerInspectResponse>,
    /// Each standby's replication slot on the primary, as last seen.
    pub slots: BTreeMap<usize, crate::postgres::Slot>,
    /// When the reconcile loop last finished a pass: `/healthz` fails when it is too long ago.
    pub last_pass: Option<std::time::Instant>,
    /// When the probes of the view in `view` began: a decision that must not rest on a look
    /// from before some moment (a switchover right after a recovery) waits for a later one.
    pub view_probed_at: Option<std::time::Instant>,
    /// What the last adoption check of the primary found and changed (see [`crate::adopt`]).
    pub adoption: Option<crate::cluster::adopt::Adoption>,
    /// Standbys an operator stopped or killed through the Docker API (unix seconds): they stay
    /// down until started again or recovered. Persisted.
    pub stopped: BTreeMap<usize, f64>,
    /// Standbys whose process exited by itself: started again (with back-off). Not persisted: at
    /// start-up every stopped node nobody stopped on purpose is started anyway.
    pub died: BTreeSet<usize>,
    /// Restart back-off per node that died by itself: not before this instant, and the delay.
    pub restart_backoff: BTreeMap<usize, (std::time::Instant, Duration)>,
    /// The operation in flight per node, with its step. Persisted.
    pub operations: BTreeMap<usize, Operation>,
    /// Recoveries found in flight at start-up, still to be run again.
    pub resume: BTreeMap<usize, crate::cluster::Redo>,
    /// What the start-up found in flight and how it was resumed, for `/status`.
    pub resumed: Vec<ResumedRecord>,
    /// The primary's timeline, as last seen. Persisted.
    pub primary_timeline: Option<u32>,
    /// What became of the state file at start-up, for `/status`.
    pub state_file: String,
    /// The declared application users in force and the roles nobody declared, for `/status`.
    pub users: crate::users::UsersStatus,
    /// Which legs are encrypted, as [`crate::tls_watch`] last saw them.
    pub tls: crate::tls::Legs,
    /// pgpool's client slots as last read through PCP; `None` until read, or when the last
    /// read failed (see [`crate::saturation`]).
    pub pgpool_clients: Option<crate::pgpool::control::ClientSlots>,
}

/// Everything a task needs; cloned as `Arc<Ctx>`.
pub struct Ctx {
    pub cfg: Arc<Config>,
    pub paths: Paths,
    /// The pgpool-II in this image, asked at start: pgpool.conf was written for it.
    pub pgpool_version: PgpoolVersion,
    pub docker: DockerRuntime,
    pub metrics: Metrics,
    pub reaper: Reaper,
    pub state: Mutex<State>,
    /// The state file: every change of the state's persisted part is written before
    /// [`Ctx::with_state`] returns.
    pub journal: crate::journal::Journal,
    pub pgpool: Pgpool,
    /// Connections for actions (promote, re-point), separate from the probe loop's so a slow
    /// probe never delays a failover.
    pub sessions: Vec<tokio::sync::Mutex<Session>>,
    /// Failover is single-flight: pgpool's hook, Docker events and probes all come here.
    pub failover_lock: tokio::sync::Mutex<()>,
    /// Adoption is single-flight too (the reconcile loop and a recovery that needs the rule may
    /// both ask, and two appends to pg_hba.conf must not race); it holds the last check.
    pub adoption: tokio::sync::Mutex<crate::adopt::Memo>,
    /// Wakes the reconcile loop before its next tick.
    pub wake: Notify,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
    /// Names of running background tasks, to say which did not stop at shutdown.
    pub running: Mutex<BTreeSet<String>>,
}

/// How a tracked task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEnd {
    /// It did its job, or the daemon is stopping.
    Done,
    /// A task meant to run until the daemon stops returned on its own.
    Unexpected,
}

/// Pure, for unit tests.
pub fn classify_end(essential: bool, cancelled: bool) -> TaskEnd {
    if essential && !cancelled {
        TaskEnd::Unexpected
    } else {
        TaskEnd::Done
    }
}

/// Called when a tracked task returns. A daemon whose reconcile loop or event watcher is gone
/// still answers HTTP but fails nothing over: half-alive is worse than dead, because the
/// container is not restarted. So an unexpected end cancels the daemon, which shuts down in
/// order (pgpool is stopped) and exits non-zero (see `daemon::run`). Panics do not come here:
/// the daemon's panic hook ends the process first.
pub fn task_ended(name: &str, essential: bool, cancel: &CancellationToken) -> TaskEnd {
    let end = classify_end(essential, cancel.is_cancelled());
    if end == TaskEnd::Unexpected {
        tracing::error!(
            task = name,
            "a task that should run until shutdown ended; stopping the daemon"
        );
        cancel.cancel();
    }
    end
}

async fn drop_on_cancel<F>(cancel: CancellationToken, fut: F)
where
    F: std::future::Future<Output = ()>,
{
    tokio::select! {
        _ = fut => {}
        _ = cancel.cancelled() => {}
    }
}

/// How the sidecar reaches node `node` over SQL (as the superuser).
pub fn node_endpoint(cfg: &Config, node: usize) -> Endpoint {
    let n = &cfg.nodes[node];
    Endpoint {
        name: n.host.clone(),
        host: n.host.clone(),
        port: n.port,
        user: cfg.superuser.clone(),
        password: cfg.superuser_password.clone(),
    }
}

impl Ctx {
    pub fn endpoint(&self, node: usize) -> Endpoint {
        node_endpoint(&self.cfg, node)
    }

    /// The `primary_conninfo` with which standby `node` follows `primary`.
    pub fn conninfo_for(&self, node: usize, primary: usize) -> String {
        let p = &self.cfg.nodes[primary];
        crate::postgres::primary_conninfo(
            &p.host,
            p.port,
            &self.cfg.replication_user,
            self.node_name(node),
        )
    }

    /// The line of a standby's password file (see [`crate::postgres::PASSFILE`]).
    pub fn passfile_line(&self) -> String {
        crate::postgres::passfile_line(&self.cfg.replication_user, &self.cfg.replication_password)
    }

    pub fn node_name(&self, node: usize) -> &str {
        &self.cfg.nodes[node].host
    }

    pub fn primary(&self) -> Option<usize> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .view
            .primary
    }

    /// Runs `f` on the state; a change of its persisted part is on disk when this returns, so
    /// a fence or a promotion is never acted on before it is recorded.
    pub fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let out = f(&mut s);
        let snapshot = self.persisted(&s);
        if self.journal.save(&snapshot).is_err() {
            self.metrics.state_file_write_failures.inc();
        }
        out
    }

    /// The part of `s` that must survive a restart, by node name.
    pub fn persisted(&self, s: &State) -> Persisted {
        let name = |n: &usize| self.node_name(*n).to_string();
        Persisted {
            version: crate::cluster::restart::STATE_VERSION,
            system_identifier: s.view.system_identifier.map(|id| id.to_string()),
            primary: s
                .view
                .primary
                .or(s.view.remembered_primary)
                .map(|p| name(&p)),
            timeline: s.primary_timeline,
            fenced: s.fenced.iter().map(name).collect(),
            stopped: s
                .stopped
                .iter()
                .filter(|(n, _)| !s.fenced.contains(n))
                .map(|(n, at)| (name(n), *at))
                .collect(),
            operations: s.operations.iter().map(|(n, op)| (name(n), *op)).collect(),
        }
    }

    /// Records that `node` is now in `kind` at `step` (persisted at once).
    pub fn begin(
        &self,
        node: usize,
        kind: crate::cluster::restart::OpKind,
        step: crate::cluster::restart::Step,
    ) {
        let since_unix = unix_now();
        self.with_state(|s| {
            let since_unix = s
                .operations
                .get(&node)
                .filter(|op| op.kind == kind)
                .map_or(since_unix, |op| op.since_unix);
            s.operations.insert(
                node,
                Operation {
                    kind,
                    step,
                    since_unix,
                },
            );
        });
    }

    /// The operation on `node` is over.
    pub fn end(&self, node: usize) {
        self.with_state(|s| s.operations.remove(&node));
    }

    /// Spawns a named, tracked task that does one job (a hook call, a recovery) and is dropped
    /// when the daemon is cancelled.
    pub fn spawn<F>(self: &Arc<Self>, name: impl Into<String>, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.spawn_tracked(name.into(), false, drop_on_cancel(self.cancel.clone(), fut));
    }

    /// Spawns a task that must run until the daemon stops (the reconcile loop, the Docker event
    /// watcher, the listeners); it is dropped when the daemon is cancelled, and its returning
    /// before that stops the daemon with an error (see [`task_ended`]).
    pub fn spawn_essential<F>(self: &Arc<Self>, name: impl Into<String>, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.spawn_tracked(name.into(), true, drop_on_cancel(self.cancel.clone(), fut));
    }

    /// Spawns an essential task that watches `cancel` itself and winds down in its own way (the
    /// pgpool supervisor must stop pgpool before it returns); like [`Ctx::spawn_essential`], its
    /// returning while the daemon runs stops the daemon.
    pub fn spawn_graceful<F>(self: &Arc<Self>, name: impl Into<String>, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.spawn_tracked(name.into(), true, fut);
    }

    fn spawn_tracked<F>(self: &Arc<Self>, name: String, essential: bool, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let ctx = self.clone();
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.clone());
        self.tracker.spawn(async move {
            fut.await;
            ctx.running
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&name);
            task_ended(&name, essential, &ctx.cancel);
        });
    }

    /// `synchronous_standby_names` for `primary`: every other node that is not fenced, so a
    /// commit waits for N standbys that can still stream, never for a fenced old primary.
    pub fn synchronous_value(&self, primary: usize) -> String {
        let fenced = self.with_state(|s| s.fenced.clone());
        let names: Vec<String> = (0..self.cfg.nodes.len())
            .filter(|n| *n != primary && !fenced.contains(n))
            .map(|n| self.node_name(n).to_string())
            .collect();
        crate::postgres::synchronous_standby_names(self.cfg.synchronous_standbys, &names)
    }

    /// The settings the decision rules depend on.
    pub fn policy(&self) -> crate::cluster::Policy {
        crate::cluster::Policy {
            probe_failures: self.cfg.probe_failures,
            auto_rejoin: self.cfg.auto_rejoin,
            max_lag_on_failover: self.cfg.max_lag_on_failover,
            priorities: self.cfg.priorities.clone(),
            preferred_primary: self.cfg.preferred_primary,
            auto_failback: self.cfg.auto_failback,
        }
    }

    pub fn probe_timeout(&self) -> Duration {
        self.cfg.probe_timeout
    }
}

/// Holds a node busy for as long as it lives: released on every path out of an operation,
/// early returns, errors and a cancelled (dropped) future included, so no node stays busy —
/// and so never failed over or recovered — forever.
pub struct BusyGuard<'a> {
    ctx: &'a Ctx,
    node: usize,
}

impl<'a> BusyGuard<'a> {
    /// None when another operation already holds the node.
    pub fn take(ctx: &'a Ctx, node: usize) -> Option<Self> {
        ctx.with_state(|s| s.busy.insert(node))
            .then_some(BusyGuard { ctx, node })
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.ctx.with_state(|s| s.busy.remove(&self.node));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_essential_task_ending_on_its_own_is_unexpected() {
        assert_eq!(classify_end(true, false), TaskEnd::Unexpected);
        assert_eq!(classify_end(true, true), TaskEnd::Done);
        assert_eq!(classify_end(false, false), TaskEnd::Done);
        assert_eq!(classify_end(false, true), TaskEnd::Done);
    }

    #[test]
    fn an_unexpected_end_stops_the_daemon() {
        let cancel = CancellationToken::new();
        assert_eq!(task_ended("hook-call", false, &cancel), TaskEnd::Done);
        assert!(!cancel.is_cancelled());
        assert_eq!(task_ended("reconcile", true, &cancel), TaskEnd::Unexpected);
        assert!(cancel.is_cancelled());
        // Once stopping, the others' ends are expected.
        assert_eq!(task_ended("docker-events", true, &cancel), TaskEnd::Done);
    }

    #[tokio::test]
    async fn a_task_dropped_on_cancel_ends_when_cancelled() {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(drop_on_cancel(cancel.clone(), std::future::pending()));
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("ended")
            .expect("no panic");
        assert_eq!(task_ended("reconcile", true, &cancel), TaskEnd::Done);
    }
}
