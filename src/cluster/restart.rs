//! The rules of a restart: what the sidecar remembers across its own restarts (fenced nodes,
//! nodes an operator stopped, the primary, operations in flight), which stopped nodes it starts
//! when it comes up, what it does with an operation it finds half done, and which node deaths it
//! answers by starting the node again.
//!
//! Reads: plain values (the remembered state, offline control data, Docker events).
//! Changes: nothing. The acting code (`crate::startup`, `crate::journal`, the event watcher)
//! asks these functions and obeys.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The state file's format version; a file of another version is not guessed at.
pub const STATE_VERSION: u32 = 1;

/// An operation that rewrites or moves a node, recorded before it starts and removed when it
/// ends: one found in the state file at start-up was cut short by a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Failover,
    Switchover,
    Rejoin,
    Rewind,
    Rebuild,
}

impl OpKind {
    pub const ALL: [OpKind; 5] = [
        OpKind::Failover,
        OpKind::Switchover,
        OpKind::Rejoin,
        OpKind::Rewind,
        OpKind::Rebuild,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            OpKind::Failover => "failover",
            OpKind::Switchover => "switchover",
            OpKind::Rejoin => "rejoin",
            OpKind::Rewind => "rewind",
            OpKind::Rebuild => "rebuild",
        }
    }
}

/// Where an operation stood when it was last recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Failover: the old primary is being killed.
    Fencing,
    /// Failover or switchover: a standby is being promoted.
    Promoting,
    /// Switchover: the old primary is being stopped cleanly (it still has every commit).
    Stopping,
    /// Switchover: the old primary is being turned into a standby of the new one.
    Demoting,
    /// A recovery job (rewind, rebuild) owns the node's data directory.
    Job,
    /// The node is being started, re-pointed or attached.
    Attaching,
}

/// One operation in flight on a node.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub kind: OpKind,
    pub step: Step,
    pub since_unix: f64,
}

/// The persisted part of the sidecar's knowledge, by node name (names outlive node order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Persisted {
    pub version: u32,
    /// The cluster's system identifier, as a string (JSON numbers lose u64 precision elsewhere).
    pub system_identifier: Option<String>,
    pub primary: Option<String>,
    pub timeline: Option<u32>,
    /// Old primaries that must not run as they are: only the recovery ladder brings them back.
    pub fenced: BTreeSet<String>,
    /// Standbys an operator stopped or killed through the Docker API, and when (unix seconds).
    pub stopped: BTreeMap<String, f64>,
    pub operations: BTreeMap<String, Operation>,
}

/// What a node's persisted intent is, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    /// Runs, and is started again if it stops by itself.
    Run,
    /// Stopped on purpose by an operator: stays down until started or recovered.
    Stopped,
    /// A fenced old primary: stays down until the recovery ladder takes it back.
    Fenced,
}

pub fn intent(fenced: bool, stopped: bool) -> Intent {
    if fenced {
        Intent::Fenced
    } else if stopped {
        Intent::Stopped
    } else {
        Intent::Run
    }
}

/// What to do now about an operation found in the state file at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resume {
    /// The old primary stays fenced; the failover is finished (a standby promoted if none is
    /// yet) and the old primary rejoins through the ladder.
    FinishFailover,
    /// A switchover cut short before the promotion: undone, the old primary (stopped cleanly,
    /// with every commit) is started again as the primary.
    UndoSwitchover,
    /// A switchover cut short at or after the promotion: finished, the old primary is fenced
    /// and rejoins through the ladder.
    FinishSwitchover,
    /// A recovery of the node before any rung rewrote its data: run the ladder again.
    RedoRecovery,
    /// A rebuild or a rewind: a rebuild from the start (a half-copied or half-rewound data
    /// directory is worthless).
    RedoRebuild,
}

impl Resume {
    pub fn as_str(&self) -> &'static str {
        match self {
            Resume::FinishFailover => "finish the failover",
            Resume::UndoSwitchover => "undo the switchover: the old primary is started again",
            Resume::FinishSwitchover => "finish the switchover: the old primary rejoins",
            Resume::RedoRecovery => "run the recovery ladder again",
            Resume::RedoRebuild => "rebuild the node again",
        }
    }

    /// The node must not run as it is (only the ladder may bring it back).
    pub fn fences(&self) -> bool {
        matches!(self, Resume::FinishFailover | Resume::FinishSwitchover)
    }
}

/// How an operation found in flight is finished or undone. A switchover is undone only while
/// the old primary was being stopped: before the target's promotion starts the old primary
/// still holds every commit and nothing else may be primary, so starting it again loses nothing.
pub fn resume(op: &Operation) -> Resume {
    match (op.kind, op.step) {
        (OpKind::Failover, _) => Resume::FinishFailover,
        (OpKind::Switchover, Step::Stopping) => Resume::UndoSwitchover,
        (OpKind::Switchover, _) => Resume::FinishSwitchover,
        // pg_rewind cut short leaves a data directory that cannot be trusted (its own manual
        // says to take a fresh backup): a rebuild, never a start as it is.
        (OpKind::Rebuild | OpKind::Rewind, _) => Resume::RedoRebuild,
        (OpKind::Rejoin, _) => Resume::RedoRecovery,
    }
}

/// A node's data as read offline (`pg_controldata`) while its container is stopped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Offline {
    /// `Some("empty")` for an empty data directory; None when it could not be read.
    pub system_identifier: Option<String>,
    /// `Database cluster state`: `shut down`, `in production` (a primary), `shut down in
    /// recovery`, `in archive recovery` (a standby), ...
    pub cluster_state: Option<String>,
    pub timeline: Option<u32>,
    /// The latest checkpoint's location.
    pub checkpoint_lsn: Option<u64>,
}

impl Offline {
    /// It last ran as a primary (a standby's states all say "recovery").
    pub fn was_primary(&self) -> bool {
        matches!(
            self.cluster_state.as_deref(),
            Some("shut down") | Some("in production") | Some("shutting down")
        )
    }
}

/// One node at start-up, as the start-up plan needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartFacts {
    pub name: String,
    /// The container exists and is not running (exited, created): it may be started.
    pub stopped: bool,
    /// Its container is running.
    pub running: bool,
    pub fenced: bool,
    pub stopped_on_purpose: bool,
    /// An operation was in flight on it: the resumed operation decides, not the start-up.
    pub in_flight: bool,
    /// Read only for stopped nodes.
    pub offline: Option<Offline>,
}

/// What the start-up does before the first reconcile pass.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartPlan {
    /// Started first, and waited for: the node that will be the primary.
    pub primary: Option<usize>,
    /// Started next (standbys, or nodes of unknown role).
    pub then: Vec<usize>,
    /// Stopped nodes left down, and why.
    pub left_down: Vec<(usize, &'static str)>,
}

/// Which stopped nodes to start, and which first. A node that is fenced, was stopped on purpose,
/// has an operation in flight, or holds another cluster's data stays down. The primary is the
/// remembered one when its data agrees (it last ran as a primary of this cluster, on the
/// remembered timeline or later, and no node is on a later timeline); else the most advanced former primary of this cluster (latest timeline,
/// then latest checkpoint). No stopped node is started as primary while a running node may be
/// one: the reconcile loop judges running nodes by their answers.
pub fn startup_plan(
    nodes: &[StartFacts],
    remembered_primary: Option<usize>,
    remembered_timeline: Option<u32>,
    system_identifier: Option<&str>,
) -> StartPlan {
    let mut plan = StartPlan::default();
    let member = |o: &Offline| match (system_identifier, o.system_identifier.as_deref()) {
        (_, Some("empty")) | (_, None) => false,
        (Some(id), Some(found)) => id == found,
        // Nothing remembered: every readable cluster is a candidate (only one may become
        // primary; the loop fences or reports the rest).
        (None, Some(_)) => true,
    };
    let mut startable = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if !n.stopped {
            continue;
        }
        let why = if n.fenced {
            Some("fenced old primary: only the recovery ladder brings it back")
        } else if n.stopped_on_purpose {
            Some("stopped on purpose by an operator")
        } else if n.in_flight {
            Some("an operation was in flight on it: it is resumed instead")
        } else if n
            .offline
            .as_ref()
            .and_then(|o| o.system_identifier.as_deref())
            .is_some_and(|id| id != "empty" && system_identifier.is_some_and(|c| c != id))
        {
            Some("holds another cluster's data")
        } else {
            None
        };
        match why {
            Some(why) => plan.left_down.push((i, why)),
            None => startable.push(i),
        }
    }
    let timeline = |i: usize| nodes[i].offline.as_ref().and_then(|o| o.timeline);
    let newest = nodes
        .iter()
        .filter(|n| !n.fenced)
        .filter_map(|n| n.offline.as_ref()?.timeline)
        .max();
    let former_primary = |i: usize| {
        nodes[i]
            .offline
            .as_ref()
            .is_some_and(|o| o.was_primary() && member(o))
    };
    let any_running = nodes.iter().any(|n| n.running && !n.fenced);
    let remembered_agrees = remembered_primary.filter(|&p| {
        let at_least =
            |floor: Option<u32>| floor.is_none_or(|tl| timeline(p).is_some_and(|t| t >= tl));
        startable.contains(&p)
            && former_primary(p)
            && at_least(newest)
            && at_least(remembered_timeline)
    });
    let primary = remembered_agrees.or_else(|| {
        if any_running {
            return None;
        }
        startable
            .iter()
            .copied()
            .filter(|&i| former_primary(i))
            .max_by_key(|&i| {
                let o = nodes[i].offline.as_ref();
                (
                    o.and_then(|o| o.timeline),
                    o.and_then(|o| o.checkpoint_lsn),
                    std::cmp::Reverse(i),
                )
            })
    });
    // A remembered primary that is running is the loop's to judge; a stopped node must not be
    // started as a second primary beside it. Other stopped former primaries start all the same:
    // the loop fences a second writable node before anything is routed to it.
    plan.primary = primary;
    plan.then = startable
        .into_iter()
        .filter(|&i| Some(i) != primary)
        .collect();
    plan
}

/// How a node's container ended, from the events the sidecar saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Stopped or killed through the Docker API: an operator's decision.
    OnPurpose,
    /// Its process ended without a request (crash, OOM, SIGKILL by PID): start it again.
    ByItself,
}

/// Signals a stop through the API sends (`docker stop` sends the image's stop signal, then
/// SIGKILL; `docker kill` SIGKILL by default). Others (`docker kill -s HUP`) stop nothing.
pub fn is_stop_signal(signal: Option<&str>) -> bool {
    let s = signal.unwrap_or("").trim_start_matches("SIG");
    matches!(s, "TERM" | "INT" | "QUIT" | "KILL" | "15" | "2" | "3" | "9")
}

/// A Docker event that takes a node down, or may: a plan made on probes from before it (an
/// attach to pgpool) is stale. Any `kill` counts, a harmless signal only delays an attach by a
/// pass; a `start` or `restart` brings nothing down.
pub fn takes_node_down(action: &str) -> bool {
    matches!(action, "die" | "kill" | "stop" | "oom" | "pause")
}

/// A `die` (or `oom`) of a node's own container: on purpose if a stop request through the API
/// came before it, else by itself. An `oom` is never on purpose.
pub fn classify_exit(action: &str, stop_requested: bool) -> Exit {
    if action == "oom" || !stop_requested {
        Exit::ByItself
    } else {
        Exit::OnPurpose
    }
}

/// Stops recorded this close before the sidecar's own orderly shutdown, while every node goes
/// down with it, are not an operator's choice but the whole stack going down (a host reboot,
/// `docker-compose stop`): they are forgotten, so the stack comes back whole. A node stopped
/// while the others keep running (then `docker-compose restart pgpool`) stays stopped.
pub const STACK_STOP_WINDOW: Duration = Duration::from_secs(15);

/// The stops to keep when the sidecar shuts down at `now_unix`; `stack_down`: every node that
/// is not fenced is down (or going down) too.
pub fn stops_kept_at_shutdown<K: Ord + Clone>(
    stopped: &BTreeMap<K, f64>,
    now_unix: f64,
    stack_down: bool,
) -> BTreeMap<K, f64> {
    stopped
        .iter()
        .filter(|(_, at)| !stack_down || now_unix - **at > STACK_STOP_WINDOW.as_secs_f64())
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// The first wait before starting again a node that died by itself, and the longest.
pub const RESTART_BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The wait before the next start of a node that keeps dying: doubling, capped.
pub fn next_restart_backoff(previous: Option<Duration>) -> Duration {
    previous
        .map(|d| (d * 2).min(RESTART_BACKOFF_MAX))
        .unwrap_or(RESTART_BACKOFF_FIRST)
}

/// Why a state file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateFileProblem {
    #[error("not valid state JSON: {0}")]
    Corrupt(String),
    #[error("format version {found}, this sidecar reads version {STATE_VERSION}")]
    Version { found: u32 },
}

/// Parses a state file's bytes.
pub fn parse_state(bytes: &[u8]) -> Result<Persisted, StateFileProblem> {
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u32,
    }
    let v: VersionOnly =
        serde_json::from_slice(bytes).map_err(|e| StateFileProblem::Corrupt(e.to_string()))?;
    if v.version != STATE_VERSION {
        return Err(StateFileProblem::Version { found: v.version });
    }
    serde_json::from_slice(bytes).map_err(|e| StateFileProblem::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "7300000000000000001";

    fn stopped(name: &str, state: &str, tl: u32, lsn: u64) -> StartFacts {
        StartFacts {
            name: name.into(),
            stopped: true,
            offline: Some(Offline {
                system_identifier: Some(ID.into()),
                cluster_state: Some(state.into()),
                timeline: Some(tl),
                checkpoint_lsn: Some(lsn),
            }),
            ..Default::default()
        }
    }

    fn running(name: &str) -> StartFacts {
        StartFacts {
            name: name.into(),
            running: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_reboot_starts_the_remembered_primary_first_even_when_it_is_not_node_0() {
        let nodes = [
            stopped("pg-0", "shut down in recovery", 2, 500),
            stopped("pg-1", "shut down", 2, 500),
            stopped("pg-2", "shut down in recovery", 2, 500),
        ];
        let plan = startup_plan(&nodes, Some(1), None, Some(ID));
        assert_eq!(plan.primary, Some(1));
        assert_eq!(plan.then, vec![0, 2]);
        assert!(plan.left_down.is_empty());
    }

    #[test]
    fn without_a_state_the_most_advanced_former_primary_is_started_first() {
        // pg-0 is an old primary on timeline 1 (restarted by hand and stopped again); pg-1 the
        // primary of timeline 2.
        let nodes = [
            stopped("pg-0", "shut down", 1, 900),
            stopped("pg-1", "shut down", 2, 600),
            stopped("pg-2", "shut down in recovery", 2, 600),
        ];
        let plan = startup_plan(&nodes, None, None, None);
        assert_eq!(plan.primary, Some(1));
        // Same timeline: the later checkpoint wins.
        let nodes = [
            stopped("pg-0", "in production", 2, 700),
            stopped("pg-1", "shut down", 2, 600),
        ];
        assert_eq!(startup_plan(&nodes, None, None, Some(ID)).primary, Some(0));
    }

    #[test]
    fn a_remembered_primary_whose_data_disagrees_is_not_taken() {
        // The state says pg-0, but pg-0 last ran as a standby: someone else was promoted after
        // the state was written.
        let nodes = [
            stopped("pg-0", "shut down in recovery", 2, 500),
            stopped("pg-1", "shut down", 3, 800),
        ];
        assert_eq!(
            startup_plan(&nodes, Some(0), None, Some(ID)).primary,
            Some(1)
        );
        // The state's primary on an older timeline than another node.
        let nodes = [
            stopped("pg-0", "shut down", 2, 900),
            stopped("pg-1", "in production", 3, 800),
        ];
        assert_eq!(
            startup_plan(&nodes, Some(0), None, Some(ID)).primary,
            Some(1)
        );
    }

    #[test]
    fn fenced_stopped_on_purpose_in_flight_and_foreign_nodes_stay_down() {
        let mut fenced = stopped("pg-0", "in production", 3, 900);
        fenced.fenced = true;
        let mut on_purpose = stopped("pg-1", "shut down in recovery", 3, 800);
        on_purpose.stopped_on_purpose = true;
        let mut busy = stopped("pg-2", "shut down in recovery", 3, 800);
        busy.in_flight = true;
        let mut foreign = stopped("pg-3", "shut down", 1, 5);
        foreign.offline.as_mut().unwrap().system_identifier = Some("42".into());
        let plan = startup_plan(
            &[fenced, on_purpose, busy, foreign],
            Some(0),
            None,
            Some(ID),
        );
        assert_eq!(plan.primary, None);
        assert!(plan.then.is_empty());
        assert_eq!(
            plan.left_down.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
    }

    #[test]
    fn a_remembered_primary_on_an_older_timeline_than_remembered_is_not_taken() {
        // The state says pg-1 on timeline 3, but its data directory is on timeline 2 (a volume
        // restored from a backup): pg-1 is not trusted as the primary.
        let nodes = [
            stopped("pg-0", "shut down in recovery", 2, 500),
            stopped("pg-1", "shut down", 2, 500),
        ];
        assert_eq!(
            startup_plan(&nodes, Some(1), Some(2), Some(ID)).primary,
            Some(1)
        );
        let plan = startup_plan(&nodes, Some(1), Some(3), Some(ID));
        // The most advanced former primary is still pg-1 by observation alone.
        assert_eq!(plan.primary, Some(1));
        let nodes = [
            stopped("pg-0", "shut down", 3, 400),
            stopped("pg-1", "shut down", 2, 500),
        ];
        assert_eq!(
            startup_plan(&nodes, Some(1), Some(3), Some(ID)).primary,
            Some(0)
        );
    }

    #[test]
    fn events_that_take_a_node_down_make_an_attach_stale() {
        for (action, down) in [
            ("die", true),
            ("kill", true),
            ("stop", true),
            ("oom", true),
            ("pause", true),
            ("start", false),
            ("restart", false),
            ("unpause", false),
            ("create", false),
            ("destroy", false),
        ] {
            assert_eq!(takes_node_down(action), down, "{action}");
        }
    }

    #[test]
    fn a_fenced_node_on_a_later_timeline_does_not_block_the_primary() {
        let mut fenced = stopped("pg-0", "in production", 4, 900);
        fenced.fenced = true;
        let nodes = [fenced, stopped("pg-1", "shut down", 3, 800)];
        assert_eq!(
            startup_plan(&nodes, Some(1), None, Some(ID)).primary,
            Some(1)
        );
    }

    #[test]
    fn a_stopped_node_is_never_started_as_primary_beside_a_running_one() {
        let nodes = [
            running("pg-0"),
            stopped("pg-1", "shut down", 1, 800),
            stopped("pg-2", "shut down in recovery", 1, 800),
        ];
        let plan = startup_plan(&nodes, Some(0), None, Some(ID));
        assert_eq!(plan.primary, None);
        assert_eq!(plan.then, vec![1, 2]);
        // ... unless the state names it and its data agrees (the running ones are standbys).
        let plan = startup_plan(&nodes, Some(1), None, Some(ID));
        assert_eq!(plan.primary, Some(1));
    }

    #[test]
    fn only_standbys_stopped_start_as_standbys() {
        let nodes = [
            stopped("pg-0", "shut down in recovery", 1, 5),
            stopped("pg-1", "shut down in recovery", 1, 5),
        ];
        let plan = startup_plan(&nodes, None, None, Some(ID));
        assert_eq!(plan.primary, None);
        assert_eq!(plan.then, vec![0, 1]);
    }

    #[test]
    fn operations_found_in_flight_are_finished_or_undone() {
        let op = |kind, step| Operation {
            kind,
            step,
            since_unix: 0.0,
        };
        let cases = [
            (OpKind::Failover, Step::Fencing, Resume::FinishFailover),
            (OpKind::Failover, Step::Promoting, Resume::FinishFailover),
            (OpKind::Switchover, Step::Stopping, Resume::UndoSwitchover),
            (
                OpKind::Switchover,
                Step::Promoting,
                Resume::FinishSwitchover,
            ),
            (OpKind::Switchover, Step::Demoting, Resume::FinishSwitchover),
            (OpKind::Rewind, Step::Job, Resume::RedoRebuild),
            (OpKind::Rejoin, Step::Attaching, Resume::RedoRecovery),
            (OpKind::Rebuild, Step::Job, Resume::RedoRebuild),
        ];
        for (kind, step, want) in cases {
            assert_eq!(resume(&op(kind, step)), want, "{kind:?} {step:?}");
        }
        assert!(Resume::FinishSwitchover.fences() && Resume::FinishFailover.fences());
        assert!(!Resume::UndoSwitchover.fences() && !Resume::RedoRebuild.fences());
    }

    #[test]
    fn exits_are_on_purpose_only_after_a_stop_request() {
        assert_eq!(classify_exit("die", true), Exit::OnPurpose);
        assert_eq!(classify_exit("die", false), Exit::ByItself);
        assert_eq!(classify_exit("oom", true), Exit::ByItself);
        for s in ["15", "SIGTERM", "2", "SIGINT", "9", "KILL", "SIGQUIT"] {
            assert!(is_stop_signal(Some(s)), "{s}");
        }
        for s in ["1", "SIGHUP", "SIGUSR1", "10"] {
            assert!(!is_stop_signal(Some(s)), "{s}");
        }
        assert!(!is_stop_signal(None));
    }

    #[test]
    fn stops_just_before_the_sidecars_own_shutdown_are_forgotten() {
        let stopped = BTreeMap::from([("pg-1".to_string(), 1000.0), ("pg-2".to_string(), 90.0)]);
        let kept = stops_kept_at_shutdown(&stopped, 1005.0, true);
        assert_eq!(kept.keys().collect::<Vec<_>>(), vec!["pg-2"]);
        // The other nodes keep running: the operator stopped pg-1 and restarts the sidecar.
        let kept = stops_kept_at_shutdown(&stopped, 1005.0, false);
        assert_eq!(kept, stopped);
    }

    #[test]
    fn restart_backoff_doubles_up_to_a_minute() {
        assert_eq!(next_restart_backoff(None), RESTART_BACKOFF_FIRST);
        assert_eq!(
            next_restart_backoff(Some(Duration::from_secs(8))),
            Duration::from_secs(16)
        );
        assert_eq!(
            next_restart_backoff(Some(Duration::from_secs(50))),
            RESTART_BACKOFF_MAX
        );
    }

    #[test]
    fn state_files_are_versioned_and_corruption_is_named() {
        let p = Persisted {
            version: STATE_VERSION,
            system_identifier: Some(ID.into()),
            primary: Some("pg-1".into()),
            timeline: Some(2),
            fenced: BTreeSet::from(["pg-0".to_string()]),
            stopped: BTreeMap::from([("pg-2".to_string(), 12.5)]),
            operations: BTreeMap::from([(
                "pg-0".to_string(),
                Operation {
                    kind: OpKind::Rewind,
                    step: Step::Job,
                    since_unix: 3.0,
                },
            )]),
        };
        let bytes = serde_json::to_vec(&p).unwrap();
        assert_eq!(parse_state(&bytes), Ok(p));
        assert!(matches!(
            parse_state(b"{\"version\": 1, \"primary\": "),
            Err(StateFileProblem::Corrupt(_))
        ));
        assert!(matches!(
            parse_state(b"\x00\x01garbage"),
            Err(StateFileProblem::Corrupt(_))
        ));
        assert_eq!(
            parse_state(b"{\"version\": 7}"),
            Err(StateFileProblem::Version { found: 7 })
        );
    }
}
