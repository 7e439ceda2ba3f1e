//! Start-up is a recovery: what the last run of the sidecar knew comes back from the state file,
//! operations it left half done are finished or undone, and stopped nodes nobody stopped on
//! purpose are started again — the primary first — so a host reboot or a crash of the sidecar
//! ends in a whole cluster without a human.
//!
//! Reads: the state file (once), every node's container, the data directory of each stopped node
//! offline (`pg_controldata` in a job container). Changes: the in-memory state (fenced nodes,
//! operator stops, the remembered primary, recoveries to redo); starts node containers. Runs
//! once, before the reconcile loop's first pass; the rules are in
//! [`crate::cluster::restart`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::cluster::restart::{
    resume, startup_plan, Offline, Operation, Persisted, Resume, StartFacts,
};
use crate::cluster::Redo;
use crate::docker::ContainerStatus;
use crate::journal::Loaded;
use crate::state::{Ctx, NodeState, ResumedRecord};

/// How long the primary started first may take to answer before the others start anyway (a
/// long crash recovery); the reconcile loop then decides on what it sees.
const PRIMARY_START_WAIT: Duration = Duration::from_secs(60);

/// Reads the state file into the state. Before anything else touches the state: the first
/// change is written over the file.
pub fn load(ctx: &Ctx) {
    let path = ctx.journal.path().display().to_string();
    match ctx.journal.load() {
        Loaded::Missing => {
            tracing::info!(
                path,
                "no state file: a first start (or its volume is new); going by what the nodes show"
            );
            ctx.with_state(|s| s.state_file = "missing".into());
        }
        Loaded::Unreadable(e) => {
            tracing::error!(path, error = %e, "cannot read the state file; going by what the nodes show");
            ctx.with_state(|s| s.state_file = format!("unreadable: {e}"));
        }
        Loaded::Unusable(problem) => {
            tracing::error!(
                path,
                problem = %problem,
                "the state file is unusable and is not trusted in any part (kept as .bad beside it); going by what the nodes show"
            );
            ctx.with_state(|s| s.state_file = format!("unusable: {problem}"));
        }
        Loaded::Found(p) => apply(ctx, p),
    }
}

fn apply(ctx: &Ctx, p: Persisted) {
    let id = |name: &str| ctx.cfg.nodes.iter().position(|n| n.host == name);
    let unknown: Vec<&String> = p
        .fenced
        .iter()
        .chain(p.stopped.keys())
        .chain(p.operations.keys())
        .chain(p.primary.iter())
        .filter(|n| id(n).is_none())
        .collect();
    if !unknown.is_empty() {
        tracing::warn!(nodes = ?unknown, "the state file names nodes that are not configured; ignoring them");
    }
    tracing::info!(
        primary = ?p.primary,
        timeline = ?p.timeline,
        fenced = ?p.fenced,
        stopped_on_purpose = ?p.stopped.keys().collect::<Vec<_>>(),
        in_flight = p.operations.len(),
        "state file read"
    );
    let resumed: Vec<(usize, ResumedRecord, Resume, Operation)> = p
        .operations
        .iter()
        .filter_map(|(name, op)| {
            let node = id(name)?;
            let r = resume(op);
            Some((
                node,
                ResumedRecord {
                    node: name.clone(),
                    operation: op.kind,
                    step: op.step,
                    resumed_as: r,
                    since_unix: op.since_unix,
                },
                r,
                *op,
            ))
        })
        .collect();
    for (_, rec, r, _) in &resumed {
        tracing::warn!(
            node = %rec.node,
            operation = rec.operation.as_str(),
            step = ?rec.step,
            resumed_as = r.as_str(),
            "found an operation cut short by a restart of the sidecar; resuming it"
        );
        ctx.metrics
            .resumed_operations
            .with_label_values(&[rec.operation.as_str()])
            .inc();
    }
    ctx.with_state(|s| {
        s.state_file = "read".into();
        s.view.system_identifier = p.system_identifier.as_deref().and_then(|v| v.parse().ok());
        s.view.remembered_primary = p.primary.as_deref().and_then(id);
        s.primary_timeline = p.timeline;
        s.fenced = p.fenced.iter().filter_map(|n| id(n)).collect();
        s.stopped = p
            .stopped
            .iter()
            .filter_map(|(n, at)| Some((id(n)?, *at)))
            .collect();
        for (node, rec, r, op) in resumed {
            match r {
                Resume::FinishFailover | Resume::FinishSwitchover => {
                    s.fenced.insert(node);
                    s.operations.remove(&node);
                }
                Resume::UndoSwitchover => {
                    s.fenced.remove(&node);
                    s.operations.remove(&node);
                }
                // Kept until the recovery runs again and records its own steps: a second crash
                // before that still finds it.
                Resume::RedoRecovery => {
                    s.resume.insert(node, Redo::Recovery);
                    s.operations.insert(node, op);
                }
                Resume::RedoRebuild => {
                    s.resume.insert(node, Redo::Rebuild);
                    s.operations.insert(node, op);
                }
            }
            s.resumed.push(rec);
        }
        for n in s.fenced.clone() {
            s.node_state.insert(n, NodeState::Fenced);
        }
    });
}

/// Starts the stopped nodes the rules allow, the primary first.
pub async fn run(ctx: &Arc<Ctx>) {
    let started = Instant::now();
    let n = ctx.cfg.nodes.len();
    let found = join_all(ctx.cfg.nodes.iter().map(|node| ctx.docker.find(&node.host))).await;
    let (fenced, stopped, in_flight, remembered, timeline, sysid) = ctx.with_state(|s| {
        (
            s.fenced.clone(),
            s.stopped.clone(),
            s.resume.keys().copied().collect::<Vec<_>>(),
            s.view.remembered_primary,
            s.primary_timeline,
            s.view.system_identifier.map(|id| id.to_string()),
        )
    });
    let mut containers = Vec::with_capacity(n);
    let mut facts = Vec::with_capacity(n);
    for (i, f) in found.into_iter().enumerate() {
        let name = ctx.node_name(i).to_string();
        let c = match f {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(node = %name, error = %e, "cannot inspect the node at start-up");
                None
            }
        };
        let status = c.as_ref().map(|c| c.status.clone());
        let running = status.as_ref().is_some_and(|s| {
            matches!(
                s,
                ContainerStatus::Running | ContainerStatus::Paused | ContainerStatus::Restarting
            )
        });
        if running && stopped.contains_key(&i) {
            tracing::info!(node = %name, "started while the sidecar was away: no longer stopped on purpose");
            ctx.with_state(|s| s.stopped.remove(&i));
        }
        facts.push(StartFacts {
            name,
            stopped: matches!(
                status,
                Some(ContainerStatus::Exited) | Some(ContainerStatus::Created)
            ),
            running,
            fenced: fenced.contains(&i),
            stopped_on_purpose: !running && stopped.contains_key(&i),
            in_flight: in_flight.contains(&i),
            offline: None,
        });
        containers.push(c);
    }
    // Only what may be started is read offline; a job per node, all at once.
    let identified = join_all(facts.iter().enumerate().map(|(i, f)| {
        let container = containers[i].clone();
        let look = f.stopped && !f.fenced && !f.stopped_on_purpose && !f.in_flight;
        async move {
            let c = container.filter(|_| look)?;
            match crate::recovery::identify(ctx, &c).await {
                Ok(cd) => Some(Offline {
                    system_identifier: (cd.sysid != "unknown").then_some(cd.sysid),
                    cluster_state: cd.cluster_state,
                    timeline: cd.timeline,
                    checkpoint_lsn: cd.checkpoint_lsn,
                }),
                Err(e) => {
                    tracing::warn!(node = %c.name, error = %e, "cannot read the stopped node's control data");
                    None
                }
            }
        }
    }))
    .await;
    for (f, o) in facts.iter_mut().zip(identified) {
        f.offline = o;
    }
    let plan = startup_plan(&facts, remembered, timeline, sysid.as_deref());
    for (i, why) in &plan.left_down {
        tracing::warn!(node = %ctx.node_name(*i), why, "stopped node left down at start-up");
    }
    if plan.primary.is_none() && plan.then.is_empty() {
        return;
    }
    if let Some(p) = plan.primary {
        let o = facts[p].offline.clone().unwrap_or_default();
        tracing::warn!(
            node = %ctx.node_name(p),
            remembered = remembered == Some(p),
            timeline = ?o.timeline,
            cluster_state = ?o.cluster_state,
            "starting the primary first: nobody stopped it on purpose"
        );
        if let Some(c) = &containers[p] {
            if start(ctx, p, c).await {
                wait_answers(ctx, p).await;
            }
        }
    }
    let containers = &containers;
    join_all(plan.then.iter().map(|&i| async move {
        tracing::warn!(node = %ctx.node_name(i), "starting the stopped node: nobody stopped it on purpose");
        if let Some(c) = &containers[i] {
            start(ctx, i, c).await;
        }
    }))
    .await;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "start-up: stopped nodes started"
    );
}

async fn start(ctx: &Ctx, node: usize, c: &crate::docker::ContainerInfo) -> bool {
    match ctx.docker.start(c).await {
        Ok(()) => {
            ctx.metrics
                .node_restarts
                .with_label_values(&[&node.to_string(), "startup"])
                .inc();
            true
        }
        Err(e) => {
            ctx.metrics
                .docker_api_errors
                .with_label_values(&[e.operation()])
                .inc();
            tracing::error!(node = %c.name, error = %e, "cannot start the node");
            false
        }
    }
}

/// Polls until the node answers SQL, or [`PRIMARY_START_WAIT`] has passed.
async fn wait_answers(ctx: &Ctx, node: usize) {
    let deadline = Instant::now() + PRIMARY_START_WAIT;
    while Instant::now() < deadline {
        let probe = ctx.sessions[node]
            .lock()
            .await
            .probe(ctx.probe_timeout())
            .await;
        if probe.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::warn!(node = %ctx.node_name(node), "the primary did not answer within 60 s; starting the others anyway");
}
