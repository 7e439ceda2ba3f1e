//! Online recovery: bringing a node back as a streaming standby of the current primary, cheapest
//! way first — restart/re-point and re-attach → `pg_rewind` → rebuild by `pg_basebackup`.
//!
//! Reads: the node's container (or its last known spec, to recreate it), its data directory
//! through one-off job containers (`pg_controldata`), the primary's replication view.
//! Changes: detaches the node from pgpool, stops/starts/recreates its container, rewrites its
//! PGDATA in job containers, re-points it, attaches it once it streams. Runs on demand, one task
//! per node (the node is marked busy meanwhile), from the reconcile loop (fresh nodes, fenced old
//! primaries, returning standbys) or from `recover` / `POST /nodes/{id}/recover`.
//!
//! Safety: data is destroyed (rewind, rebuild) only on a node that is not the primary and whose
//! data is empty or carries this cluster's system identifier, checked right before the job. A job
//! that fails leaves the node stopped and detached — never attached half-built — and the ladder
//! falls to the next rung.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::restart::{OpKind, Operation, Step};
use crate::cluster::{
    control_file_rewindable, may_attach_as_is, rewind_ruled_out, rewrite_rungs, DataIdentity,
    RecoveryFacts,
};
use crate::docker::{ContainerInfo, DockerError};
use crate::pgpool::control::PgpoolError;
use crate::postgres::conf_literal;
use crate::state::{BusyGuard, Ctx, NodeState};

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("no primary to recover from")]
    NoPrimary,
    #[error("node {0} is the primary; refusing to recover it")]
    IsPrimary(String),
    #[error("node {0} is busy with another recovery")]
    Busy(String),
    #[error("node {0} has no container and no known spec to recreate it from")]
    NoContainer(String),
    #[error("node {node} holds another cluster's data (system identifier {found}); refusing to overwrite it")]
    Foreign { node: String, found: String },
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("node {node} did not stream from the primary within {seconds} s")]
    NotStreaming { node: String, seconds: u64 },
    #[error(transparent)]
    Pgpool(#[from] PgpoolError),
    #[error("cannot checkpoint the primary before pg_rewind: {0}")]
    Checkpoint(String),
}

/// How a node came back: the rungs of the pure layer's ladder.
pub use crate::cluster::Rung as Method;

#[derive(Debug, Clone, Serialize)]
pub struct Recovered {
    pub node: String,
    pub method: Method,
    pub seconds: f64,
}

/// Prints what the data directory is: `sysid=<id>` or `sysid=empty`, its shutdown state, and
/// what pg_rewind asks of its target's control file: `wal_log_hints=on|off` and
/// `checksums=<data page checksum version>` (0: none). In the C locale, whose words the `sed`
/// patterns are; a control file that cannot be read prints no `sysid=` (an unknown identity).
const IDENTIFY_SCRIPT: &str = r#"
if [ ! -s "$PGDATA/PG_VERSION" ]; then echo "sysid=empty"; exit 0; fi
control=$(LC_ALL=C pg_controldata -D "$PGDATA" || true)
printf '%s\n' "$control" | sed -n 's/^Database system identifier: *//p' | sed 's/^/sysid=/'
printf '%s\n' "$control" | sed -n 's/^Database cluster state: *//p' | sed 's/^/state=/'
printf '%s\n' "$control" | sed -n 's/^wal_log_hints setting: *//p' | sed 's/^/wal_log_hints=/'
printf '%s\n' "$control" | sed -n 's/^Data page checksum version: *//p' | sed 's/^/checksums=/'
printf '%s\n' "$control" | sed -n "s/^Latest checkpoint's TimeLineID: *//p" | sed 's/^/timeline=/'
printf '%s\n' "$control" | sed -n 's/^Latest checkpoint location: *//p' | sed 's/^/checkpoint=/'
"#;

/// What [`IDENTIFY_SCRIPT`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlData {
    /// The system identifier, `empty`, or `unknown`.
    pub sysid: String,
    /// pg_rewind may rewind it (see [`control_file_rewindable`]).
    pub rewindable: bool,
    /// `Database cluster state`, the latest checkpoint's timeline and location.
    pub cluster_state: Option<String>,
    pub timeline: Option<u32>,
    pub checkpoint_lsn: Option<u64>,
}

pub fn parse_control_data(out: &str) -> ControlData {
    let value = |key: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(str::trim)
    };
    ControlData {
        sysid: value("sysid=").unwrap_or("unknown").to_string(),
        rewindable: control_file_rewindable(value("wal_log_hints="), value("checksums=")),
        cluster_state: value("state=").map(str::to_string),
        timeline: value("timeline=").and_then(|t| t.parse().ok()),
        checkpoint_lsn: value("checkpoint=").and_then(crate::postgres::parse_lsn),
    }
}

/// Rewinds PGDATA onto the primary's timeline. A fenced (SIGKILLed) old primary needs crash
/// recovery first, done here in single-user mode.
const REWIND_SCRIPT: &str = r#"
set -euo pipefail
echo "rewinding $PGDATA from $SOURCE_HOST:$SOURCE_PORT"
# The node's container is stopped (checked before this job runs), so a postmaster.pid left by
# the SIGKILL is stale; pg_rewind's single-user crash recovery would otherwise refuse to start.
rm -f "$PGDATA/postmaster.pid"
# pg_rewind needs the node's own WAL back to the last checkpoint both timelines share. Its own
# crash recovery ends with a checkpoint that may recycle exactly that WAL (everything older than
# wal_keep_size, when the node was killed after much WAL without a completed checkpoint), so the
# crash recovery is done here first, keeping every WAL file.
state=$(pg_controldata -D "$PGDATA" | sed -n 's/^Database cluster state: *//p')
case "$state" in
  "shut down"|"shut down in recovery") ;;
  *)
    # A standby stopped mid-recovery: single-user mode refuses standby mode, and finishing its
    # recovery as a crash recovery would write WAL its primary does not have. Only a rebuild
    # is sure to be right (rung 1, restarting it as a standby, came before this).
    if [ -e "$PGDATA/standby.signal" ] || [ -e "$PGDATA/recovery.signal" ]; then
      echo "standby interrupted in recovery (cluster state: $state): not rewindable"
      exit 3
    fi
    echo "crash recovery first (cluster state: $state), keeping all WAL"
    postgres --single -F -D "$PGDATA" -c wal_keep_size=1000000 -c archive_mode=off template1 </dev/null 2>&1
    ;;
esac
# The source is named through libpq's environment, not spliced into a conninfo string, so no
# host or user name can change its meaning.
PGHOST="$SOURCE_HOST" PGPORT="$SOURCE_PORT" PGUSER="$SOURCE_USER" \
  pg_rewind -D "$PGDATA" --source-server="dbname=postgres" 2>&1
(umask 077; printf '%s\n' "$STANDBY_PASSFILE_LINE" > "$PGDATA/sidecar.pgpass")
printf '%s\n' "$STANDBY_CONF" >> "$PGDATA/postgresql.auto.conf"
touch "$PGDATA/standby.signal"
echo "rewind complete"
"#;

/// Turns a cleanly stopped data directory into a standby's.
const STANDBY_SCRIPT: &str = r#"
set -euo pipefail
(umask 077; printf '%s\n' "$STANDBY_PASSFILE_LINE" > "$PGDATA/sidecar.pgpass")
printf '%s\n' "$STANDBY_CONF" >> "$PGDATA/postgresql.auto.conf"
touch "$PGDATA/standby.signal"
echo "standby configuration written"
"#;

/// Empties PGDATA (it may be a mount point, so its contents, not itself), clones the primary and
/// leaves a standby configuration behind. Values arrive in the environment, never interpolated.
const REBUILD_SCRIPT: &str = r#"
set -euo pipefail
echo "rebuilding $PGDATA from $SOURCE_HOST:$SOURCE_PORT"
# Nothing is deleted unless the source answers: a node cut off from the primary keeps its data.
pg_isready -h "$SOURCE_HOST" -p "$SOURCE_PORT" -t 15
find "$PGDATA" -mindepth 1 -delete
pg_basebackup -h "$SOURCE_HOST" -p "$SOURCE_PORT" -U "$SOURCE_USER" -D "$PGDATA" \
  -X stream -c fast --no-password --progress --verbose 2>&1 | tr '\r' '\n' | grep -v '^$' | tail -n 20
test -s "$PGDATA/PG_VERSION"
(umask 077; printf '%s\n' "$STANDBY_PASSFILE_LINE" > "$PGDATA/sidecar.pgpass")
printf '%s\n' "$STANDBY_CONF" >> "$PGDATA/postgresql.auto.conf"
touch "$PGDATA/standby.signal"
echo "rebuild complete"
"#;

/// Recovers `node`, counting and timing it. `force_rebuild` skips the cheaper rungs.
pub async fn recover(
    ctx: &Arc<Ctx>,
    node: usize,
    force_rebuild: bool,
    reason: &str,
) -> Result<Recovered, RecoveryError> {
    let name = ctx.node_name(node).to_string();
    if ctx.primary() == Some(node) {
        return Err(RecoveryError::IsPrimary(name));
    }
    let Some(busy) = BusyGuard::take(ctx, node) else {
        return Err(RecoveryError::Busy(name));
    };
    // Every promotion bumps it: a change by the end means a failover skipped this node.
    let generation = ctx.with_state(|s| s.generation);
    let started = Instant::now();
    tracing::warn!(node = %name, reason, force_rebuild, "recovering node");
    // Recorded until it succeeds: a crash (or a failure) part-way leaves it for the next start,
    // which runs it again rather than starting half-rewritten data.
    let rewrite_in_flight = ctx.with_state(|s| {
        let in_flight = s.operations.get(&node).is_some_and(|op| {
            matches!(op.kind, OpKind::Rewind | OpKind::Rebuild) && op.step == Step::Job
        });
        s.resume.remove(&node);
        // Asking for a recovery is starting it again on purpose.
        s.stopped.remove(&node);
        s.operations.entry(node).or_insert(Operation {
            kind: if force_rebuild {
                OpKind::Rebuild
            } else {
                OpKind::Rejoin
            },
            step: Step::Attaching,
            since_unix: crate::state::unix_now(),
        });
        in_flight
    });
    let result = ladder(
        ctx,
        node,
        force_rebuild || rewrite_in_flight,
        rewrite_in_flight,
    )
    .await;
    // Half-rewritten data keeps its record until a rebuild succeeds: a later start must not
    // start it as it is.
    let rewritten =
        rewrite_in_flight || matches!(&result, Err((Some(Method::Rewind | Method::Rebuild), _)));
    if result.is_ok() || !rewritten {
        ctx.end(node);
    }
    let seconds = started.elapsed().as_secs_f64();
    let node_label = node.to_string();
    // Counted under the rung that ran last; a failure before any rung started (no primary,
    // no container, a foreign node) counts under none of them.
    let counted = match &result {
        Ok(m) => Some((m.as_str(), "success")),
        Err((m, _)) => m.map(|m| (m.as_str(), "failure")),
    };
    if let Some((method, label)) = counted {
        ctx.metrics
            .recoveries
            .with_label_values(&[&node_label, method, label])
            .inc();
        ctx.metrics
            .recovery_duration
            .with_label_values(&[&node_label, method, label])
            .observe(seconds);
    }
    drop(busy);
    ctx.with_state(|s| {
        if result.is_ok() {
            s.fenced.remove(&node);
            s.foreign.remove(&node);
        }
        s.node_state.insert(
            node,
            if result.is_ok() {
                NodeState::Streaming
            } else {
                NodeState::Down
            },
        );
    });
    if result.is_ok() && ctx.with_state(|s| s.generation) != generation {
        follow_current_primary(ctx, node).await;
    }
    ctx.wake.notify_one();
    match result {
        Ok(method) => {
            tracing::info!(node = %name, method = method.as_str(), seconds, "node recovered: streaming and attached");
            Ok(Recovered {
                node: name,
                method,
                seconds,
            })
        }
        Err((method, e)) => {
            let method = method.map(|m| m.as_str()).unwrap_or("none");
            tracing::error!(node = %name, method, error = %e, "recovery failed; the node stays detached");
            Err(e)
        }
    }
}

/// A failover while the job ran skipped the node (it was busy), and the job may have made sure
/// of streaming before it: the node follows the primary of now. Under the failover lock, like
/// every re-point; the same settings again are a no-op.
async fn follow_current_primary(ctx: &Arc<Ctx>, node: usize) {
    let _guard = ctx.failover_lock.lock().await;
    if let Some(primary) = ctx.primary().filter(|&p| p != node) {
        tracing::warn!(node = %ctx.node_name(node), primary = %ctx.node_name(primary), "the primary changed while the node was recovered: re-pointing it");
        crate::failover::repoint(ctx, node, primary).await;
    }
}

async fn ladder(
    ctx: &Arc<Ctx>,
    node: usize,
    force_rebuild: bool,
    rewrite_in_flight: bool,
) -> Result<Method, (Option<Method>, RecoveryError)> {
    let name = ctx.node_name(node).to_string();
    let primary = ctx.primary().ok_or((None, RecoveryError::NoPrimary))?;
    // The guard gave up WAL this node still needed: streaming cannot bring it back, and a
    // rewind needs that WAL too. Straight to a rebuild.
    let slot_lost = !force_rebuild && crate::slots::lost(ctx, primary, node).await;
    if slot_lost {
        tracing::warn!(
            node = %name,
            slot = %crate::slots::slot_name(&name),
            "replication slot lost: max_slot_wal_keep_size was exceeded while the node was away and the WAL it needs is gone; rebuilding"
        );
    }
    let force_rebuild = force_rebuild || slot_lost;
    // A plain official-image primary lacks the replication role and the pg_hba.conf rule every
    // rung needs (a standby streams, pg_basebackup copies): adopted first, so the first rebuild
    // of a fresh standby does not fail and back off. A failure here is not final: the rungs may
    // work all the same (an operator's own rules), and say why not if they do not.
    if let Err(e) = crate::adopt::ensure(ctx).await {
        tracing::warn!(node = %name, error = %e, "the primary could not be adopted before recovery; going on");
    }
    let mut container = ensure_container(ctx, node).await.map_err(|e| (None, e))?;
    // Fenced by a network disconnect: recovery takes it back onto the cluster network first,
    // or neither it nor its job containers could reach the primary.
    if container.spec.network.is_none() {
        if let Some(net) = ctx.with_state(|s| s.known_network.get(&node).cloned()) {
            tracing::warn!(node = %name, network = %net.0, "reconnecting the fenced node to its network");
            container = ctx
                .docker
                .reconnect(&container, &net.0, net.1)
                .await
                .map_err(|e| (None, e.into()))?;
        }
    }
    let fenced = ctx.with_state(|s| s.fenced.contains(&node));
    ctx.with_state(|s| s.node_state.insert(node, NodeState::Rebuilding));
    // While it still answers: a node of another cluster may be wiped only if it holds no user
    // database (a fresh initdb); once stopped, only its system identifier can be read.
    let fresh_online = if container.status.is_up() {
        let cluster_id = ctx.with_state(|s| s.view.system_identifier);
        let probe = ctx.sessions[node]
            .lock()
            .await
            .probe(ctx.probe_timeout())
            .await;
        probe.is_ok_and(|pg| {
            Some(pg.system_identifier) != cluster_id && pg.user_databases.is_empty()
        })
    } else {
        false
    };

    // A stopped node is looked at offline first: an empty data directory (a recreated container
    // whose volume was lost) goes straight to a rebuild instead of starting into an initdb.
    let empty = !container.status.is_up()
        && identify(ctx, &container)
            .await
            .is_ok_and(|id| id.sysid == "empty");
    let facts = RecoveryFacts {
        force_rebuild,
        fenced,
        empty,
        // Read from the control file once the node is stopped, below; rung 1 needs no rewind.
        rewindable: true,
        rewrite_in_flight,
    };
    if may_attach_as_is(&facts) {
        // Rung 1: it may just be a standby that was away — start it, re-point it, attach it.
        match rejoin_as_is(ctx, node, &container).await {
            Ok(()) => return Ok(Method::Attach),
            Err(e) => {
                tracing::warn!(node = %name, error = %e, "re-attach failed; trying pg_rewind")
            }
        }
    }
    // From here on the node's data is rewritten: it must be out of pgpool and stopped. A failure
    // while getting there counts against the rung it prepares.
    let next = if force_rebuild || empty {
        Method::Rebuild
    } else {
        Method::Rewind
    };
    if let Err(e) = ctx.pgpool.detach(node, Duration::from_secs(5)).await {
        tracing::debug!(node = %name, error = %e, "detach before recovery (already detached?)");
    }
    ctx.docker
        .stop(&container, Duration::from_secs(30))
        .await
        .map_err(|e| (Some(next), e.into()))?;
    let control = identify(ctx, &container)
        .await
        .map_err(|e| (Some(next), e))?;
    let facts = RecoveryFacts {
        rewindable: control.rewindable,
        ..facts
    };
    let identity = control.sysid;
    let cluster_id = ctx.with_state(|s| s.view.system_identifier);
    let data = if identity == "empty" {
        DataIdentity::Empty
    } else if cluster_id.is_some_and(|id| identity == id.to_string()) {
        DataIdentity::Member
    } else if fresh_online {
        DataIdentity::FreshInitdb
    } else {
        DataIdentity::Foreign(identity.clone())
    };
    let rungs = rewrite_rungs(&facts, &data).map_err(|_| {
        (
            None,
            RecoveryError::Foreign {
                node: name.clone(),
                found: identity,
            },
        )
    })?;
    if rewind_ruled_out(&facts, &data) {
        tracing::warn!(
            node = %name,
            "rebuilding instead of rewinding: the node ran without wal_log_hints and data checksums"
        );
    }
    let mut last_error = None;
    for rung in rungs {
        tracing::info!(node = %name, "recovery rung {}: starting its job", rung.as_str());
        // The primary of now, not of the ladder's start: a failover may have happened since.
        let Some(primary) = ctx.primary() else {
            last_error = Some((Some(rung), RecoveryError::NoPrimary));
            break;
        };
        if primary == node {
            return Err((Some(rung), RecoveryError::IsPrimary(name)));
        }
        let result = match rung {
            Method::Rewind => {
                ctx.begin(node, OpKind::Rewind, Step::Job);
                rewind(ctx, node, primary, &container).await
            }
            Method::Rebuild => {
                ctx.begin(node, OpKind::Rebuild, Step::Job);
                rebuild(ctx, node, primary, &container).await
            }
            Method::Attach => rejoin_as_is(ctx, node, &container).await,
        };
        match result {
            Ok(()) => return Ok(rung),
            Err(e) => {
                tracing::warn!(node = %name, rung = rung.as_str(), error = %e, "recovery rung failed");
                // The next rung starts from a stopped node.
                let _ = ctx.docker.stop(&container, Duration::from_secs(10)).await;
                last_error = Some((Some(rung), e));
            }
        }
    }
    Err(last_error.unwrap_or((None, RecoveryError::NoPrimary)))
}

/// The node's container, recreated from its last known spec if it was removed.
async fn ensure_container(ctx: &Ctx, node: usize) -> Result<ContainerInfo, RecoveryError> {
    let name = ctx.node_name(node).to_string();
    if let Some(c) = ctx.docker.find(&name).await? {
        return Ok(c);
    }
    let spec = ctx
        .with_state(|s| s.last_spec.get(&node).cloned())
        .ok_or_else(|| RecoveryError::NoContainer(name.clone()))?;
    tracing::warn!(node = %name, "container is gone; recreating it from its last known spec");
    Ok(ctx.docker.recreate(&spec).await?)
}

/// Rung 1: start (if stopped), re-point at the primary (if elsewhere), wait until it streams,
/// attach. Only for a node that comes back as a standby of this cluster.
async fn rejoin_as_is(
    ctx: &Arc<Ctx>,
    node: usize,
    container: &ContainerInfo,
) -> Result<(), RecoveryError> {
    let name = ctx.node_name(node).to_string();
    if !container.status.is_up() {
        ctx.docker.start(container).await?;
    }
    let cluster_id = ctx.with_state(|s| s.view.system_identifier);
    let deadline = Instant::now() + Duration::from_secs(60);
    let pg = loop {
        let probe = ctx.sessions[node]
            .lock()
            .await
            .probe(ctx.probe_timeout())
            .await;
        if let Ok(pg) = probe {
            break pg;
        }
        if Instant::now() > deadline {
            return Err(RecoveryError::NotStreaming {
                node: name,
                seconds: 60,
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    if !pg.in_recovery || Some(pg.system_identifier) != cluster_id {
        return Err(RecoveryError::NotStreaming {
            node: name,
            seconds: 0,
        });
    }
    let primary = ctx.primary().ok_or(RecoveryError::NoPrimary)?;
    if pg.upstream_host.as_deref() != Some(ctx.node_name(primary)) {
        crate::failover::repoint(ctx, node, primary).await;
    }
    wait_streaming(ctx, node, primary, Duration::from_secs(20)).await?;
    ctx.pgpool.attach(node, Duration::from_secs(30)).await?;
    crate::slots::drop_local(ctx, node).await;
    Ok(())
}

/// The node's control data, read offline in a job container.
pub async fn identify(ctx: &Ctx, container: &ContainerInfo) -> Result<ControlData, RecoveryError> {
    let out = ctx
        .docker
        .run_job(
            container,
            "identify",
            IDENTIFY_SCRIPT,
            vec![],
            Duration::from_secs(60),
        )
        .await?;
    Ok(parse_control_data(&out))
}

/// Lines appended to `postgresql.auto.conf` (the last value of a setting wins there). The slot
/// line is always written: pg_basebackup and pg_rewind copy the source's file, which may name
/// the source's own slot from its time as a standby.
fn standby_conf(
    ctx: &Ctx,
    node: usize,
    primary: usize,
    slot: Option<&str>,
    pgdata: &str,
) -> Vec<String> {
    let conninfo = crate::postgres::with_passfile(&ctx.conninfo_for(node, primary), pgdata);
    vec![
        format!(
            "STANDBY_CONF=primary_conninfo = {}\nprimary_slot_name = {}",
            conf_literal(&conninfo),
            conf_literal(slot.unwrap_or(""))
        ),
        format!("STANDBY_PASSFILE_LINE={}", ctx.passfile_line()),
    ]
}

/// The environment of a job that copies from `primary` as `user` and leaves `node` a standby of
/// it. Values travel in the environment, never spliced into the script.
fn source_env(
    ctx: &Ctx,
    node: usize,
    primary: usize,
    user: (&str, &crate::config::Secret),
    slot: Option<&str>,
    pgdata: &str,
) -> Vec<String> {
    let p = &ctx.cfg.nodes[primary];
    let mut env = vec![
        format!("SOURCE_HOST={}", p.host),
        format!("SOURCE_PORT={}", p.port),
        format!("SOURCE_USER={}", user.0),
        format!("PGPASSWORD={}", user.1.expose()),
    ];
    env.extend(standby_conf(ctx, node, primary, slot, pgdata));
    env
}

/// Runs a job that leaves a standby's data directory behind, then: start, stream, attach.
/// A job that leaves its node a standby of `primary`, and how long the node may take to stream.
struct StandbyJob<'a> {
    name: &'a str,
    script: &'a str,
    env: Vec<String>,
    primary: usize,
    stream_limit: Duration,
}

async fn standby_job(
    ctx: &Arc<Ctx>,
    node: usize,
    container: &ContainerInfo,
    job: StandbyJob<'_>,
) -> Result<String, RecoveryError> {
    let out = ctx
        .docker
        .run_job(
            container,
            job.name,
            job.script,
            job.env,
            ctx.cfg.job_timeout,
        )
        .await?;
    log_job(ctx.node_name(node), job.name, &out);
    ctx.docker.start(container).await?;
    wait_streaming(ctx, node, job.primary, job.stream_limit).await?;
    ctx.pgpool.attach(node, Duration::from_secs(30)).await?;
    crate::slots::drop_local(ctx, node).await;
    Ok(out)
}

fn log_job(node: &str, job: &str, out: &str) {
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        tracing::info!(node, job, "{line}");
    }
}

/// Where pg_rewind found the timelines forked: everything the node wrote after it is gone.
pub fn divergence_point(rewind_output: &str) -> Option<String> {
    let rest = rewind_output
        .split("servers diverged at WAL location ")
        .nth(1)?;
    Some(rest.split_whitespace().next()?.to_string())
}

async fn rewind(
    ctx: &Arc<Ctx>,
    node: usize,
    primary: usize,
    container: &ContainerInfo,
) -> Result<(), RecoveryError> {
    let name = ctx.node_name(node).to_string();
    // pg_rewind reads the source's timeline from its control file, which a fresh promotion
    // updates only at its next checkpoint: without one it sees "same timeline, no rewind
    // required" and the old primary's tail survives.
    ctx.sessions[primary]
        .lock()
        .await
        .query("CHECKPOINT", Duration::from_secs(60))
        .await
        .map_err(|e| RecoveryError::Checkpoint(e.to_string()))?;
    let slot = crate::slots::ensure_for(ctx, primary, node).await;
    // pg_rewind reads the source's catalog: the superuser, not the replication role.
    let env = source_env(
        ctx,
        node,
        primary,
        (&ctx.cfg.superuser, &ctx.cfg.superuser_password),
        slot.as_deref(),
        &container.pgdata,
    );
    let out = standby_job(
        ctx,
        node,
        container,
        StandbyJob {
            name: "rewind",
            script: REWIND_SCRIPT,
            env,
            primary,
            stream_limit: Duration::from_secs(60),
        },
    )
    .await?;
    match divergence_point(&out) {
        Some(lsn) => tracing::warn!(
            node = %name,
            from_lsn = %lsn,
            "un-replicated tail discarded: WAL written on this node after {lsn} is gone"
        ),
        None => tracing::info!(node = %name, "rewind found nothing to discard"),
    }
    Ok(())
}

async fn rebuild(
    ctx: &Arc<Ctx>,
    node: usize,
    primary: usize,
    container: &ContainerInfo,
) -> Result<(), RecoveryError> {
    let name = ctx.node_name(node).to_string();
    tracing::warn!(node = %name, "rebuilding node from the primary (its data is discarded)");
    let slot = crate::slots::reset_for(ctx, primary, node).await;
    let env = source_env(
        ctx,
        node,
        primary,
        (&ctx.cfg.replication_user, &ctx.cfg.replication_password),
        slot.as_deref(),
        &container.pgdata,
    );
    standby_job(
        ctx,
        node,
        container,
        StandbyJob {
            name: "rebuild",
            script: REBUILD_SCRIPT,
            env,
            primary,
            stream_limit: Duration::from_secs(120),
        },
    )
    .await?;
    Ok(())
}

/// After a switchover: the old primary stopped cleanly at a WAL position the new primary has, so
/// it becomes a standby as it is — configuration, start, stream, attach. No data is discarded.
pub async fn demote_cleanly_stopped(
    ctx: &Arc<Ctx>,
    node: usize,
    primary: usize,
    container: &ContainerInfo,
) -> Result<(), RecoveryError> {
    let slot = crate::slots::ensure_for(ctx, primary, node).await;
    let env = standby_conf(ctx, node, primary, slot.as_deref(), &container.pgdata);
    standby_job(
        ctx,
        node,
        container,
        StandbyJob {
            name: "standby",
            script: STANDBY_SCRIPT,
            env,
            primary,
            stream_limit: Duration::from_secs(30),
        },
    )
    .await?;
    let node_label = node.to_string();
    ctx.metrics
        .recoveries
        .with_label_values(&[&node_label, "attach", "success"])
        .inc();
    Ok(())
}

/// Polls the primary until `node` streams from it (only such a node may be attached). `set_up`
/// is the primary the node was pointed at: a failover while the node was being recovered skips
/// it (it is busy), so here it is re-pointed at whichever node is the primary now.
pub async fn wait_streaming(
    ctx: &Ctx,
    node: usize,
    set_up: usize,
    limit: Duration,
) -> Result<(), RecoveryError> {
    let name = ctx.node_name(node).to_string();
    let deadline = Instant::now() + limit;
    let mut follows = set_up;
    while Instant::now() < deadline {
        if let Some(primary) = ctx.primary() {
            if primary != follows && crate::failover::repoint(ctx, node, primary).await {
                tracing::warn!(node = %name, primary = %ctx.node_name(primary), "the primary changed during the recovery: the node follows the new one");
                follows = primary;
            }
            let stats = ctx.sessions[primary]
                .lock()
                .await
                .replication(ctx.probe_timeout())
                .await;
            if let Ok(stats) = stats {
                if primary == follows && stats.get(&name).is_some_and(|r| r.state == "streaming") {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_divergence_point_in_pg_rewind_output() {
        let out = "rewinding /var/lib/postgresql/data from pg-1:5432\n\
                   pg_rewind: servers diverged at WAL location 0/3000108 on timeline 1\n\
                   pg_rewind: rewinding from last common checkpoint at 0/2000060 on timeline 1\n\
                   pg_rewind: Done!";
        assert_eq!(divergence_point(out).as_deref(), Some("0/3000108"));
        assert_eq!(divergence_point("pg_rewind: no rewind required"), None);
    }

    #[test]
    fn control_data_says_whose_data_and_whether_it_can_be_rewound() {
        let official =
            "sysid=7300000000000000001\nstate=shut down\nwal_log_hints=off\nchecksums=0\n";
        assert_eq!(
            parse_control_data(official),
            ControlData {
                sysid: "7300000000000000001".into(),
                rewindable: false,
                cluster_state: Some("shut down".into()),
                timeline: None,
                checkpoint_lsn: None,
            }
        );
        let pg18 =
            "sysid=7300000000000000001\nstate=in production\nwal_log_hints=off\nchecksums=1\n\
                    timeline=3\ncheckpoint=0/5000060\n";
        let pg18 = parse_control_data(pg18);
        assert!(pg18.rewindable);
        assert_eq!(pg18.cluster_state.as_deref(), Some("in production"));
        assert_eq!(
            (pg18.timeline, pg18.checkpoint_lsn),
            (Some(3), Some(0x5000060))
        );
        let hints = "sysid=1\nwal_log_hints=on\nchecksums=0\n";
        assert!(parse_control_data(hints).rewindable);
        assert_eq!(
            parse_control_data("sysid=empty\n"),
            ControlData {
                sysid: "empty".into(),
                rewindable: true,
                cluster_state: None,
                timeline: None,
                checkpoint_lsn: None,
            }
        );
        // An unreadable control file: unknown identity (never wiped), pg_rewind would judge.
        assert_eq!(
            parse_control_data(""),
            ControlData {
                sysid: "unknown".into(),
                rewindable: true,
                cluster_state: None,
                timeline: None,
                checkpoint_lsn: None,
            }
        );
    }
}
