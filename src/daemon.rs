//! Start-up and shutdown of the daemon (`pgpool-sidecar run`).
//!
//! Reads: the config, the Docker daemon, SIGTERM/SIGINT. Changes: starts the named background
//! tasks (HTTP, hook socket, reconcile loop, Docker events; the reconcile loop starts the pgpool
//! supervisor once a primary is known) and, on a signal, cancels them and waits for them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::docker::{DockerError, DockerRuntime, Scope};
use crate::metrics::Metrics;
use crate::pgpool::conf::{ConfError, Paths};
use crate::pgpool::control::Pgpool;
use crate::pgpool::version::{self, PgpoolVersion, VersionError};
use crate::postgres::Session;
use crate::reaper::Reaper;
use crate::state::{node_endpoint, Ctx, State};
use crate::{hook, http, pgpool, reconcile};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Bad configuration discovered at start: exit code 64.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    PgpoolConf(#[from] ConfError),
    /// No usable pgpool in the image: its configuration could not be rendered.
    #[error("cannot tell which pgpool-II this image has: {0}")]
    PgpoolVersion(#[from] VersionError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("cannot listen for HTTP on {addr}: {message}")]
    Http { addr: String, message: String },
    #[error("cannot install signal handlers: {0}")]
    Signals(String),
    #[error("cannot set up the metrics registry: {0}")]
    Metrics(String),
    /// pgpool would run as root beside the Docker socket: refused.
    #[error("pgpool must not run as root in the container that holds the Docker socket: {0}")]
    PgpoolUser(String),
    /// A task that should run until shutdown returned; the log names it.
    #[error(
        "a background task ended while the daemon was running; stopped so the container restarts"
    )]
    TaskEnded,
}

impl DaemonError {
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Config(_)
            | DaemonError::PgpoolConf(ConfError::Reserved { .. })
            | DaemonError::PgpoolConf(ConfError::Unwritable { .. }) => 64,
            DaemonError::TaskEnded => EXIT_SOFTWARE,
            _ => 1,
        }
    }
}

/// Exit status of a daemon that found itself broken (EX_SOFTWARE): a panic, or a task that
/// should run until shutdown ended.
pub const EXIT_SOFTWARE: i32 = 70;

/// Longest panic message logged; the rest is cut.
const PANIC_MESSAGE_MAX: usize = 1000;

/// One mechanism for panics, process-wide: a panic anywhere ends the process with
/// [`EXIT_SOFTWARE`]. Left alone, tokio catches a task's panic and ends only that task, leaving
/// a daemon without its reconcile loop (no failover any more) whose HTTP still answers. A hook
/// covers every task and thread, tracked or not (hyper's connection tasks, the SQL connection
/// drivers), where checking each JoinHandle for `is_panic` would miss the untracked ones and
/// need a task to await them. It runs before unwinding, so no lock is left poisoned for the
/// survivors. As PID 1 of the container the exit takes pgpool with it, and the restart policy
/// brings both back together.
fn install_panic_hook(cfg: &Config) {
    let secrets: Vec<String> = [
        Some(&cfg.superuser_password),
        Some(&cfg.replication_password),
        Some(&cfg.pcp_password),
        cfg.api_token.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|s| s.expose().to_string())
    .filter(|s| !s.is_empty())
    .collect();
    std::panic::set_hook(Box::new(move |info| {
        // The panic may have happened inside the logger, holding its lock: the process must end
        // even if logging below never returns.
        let _ = std::thread::Builder::new().spawn(|| {
            std::thread::sleep(Duration::from_secs(2));
            std::process::exit(EXIT_SOFTWARE);
        });
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        tracing::error!(
            %location,
            panic = %panic_message(info.payload(), &secrets),
            "panic: the daemon exits so that the container restarts it"
        );
        std::process::exit(EXIT_SOFTWARE);
    }));
}

/// A panic's message for the log: secrets from the config are blanked (a message may quote a
/// connection string), and it is cut to a bounded length.
pub fn panic_message(payload: &(dyn std::any::Any + Send), secrets: &[String]) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        return "(no message)".into();
    };
    let mut text = secrets
        .iter()
        .fold(text, |t, secret| t.replace(secret.as_str(), "<redacted>"));
    if text.len() > PANIC_MESSAGE_MAX {
        let mut end = PANIC_MESSAGE_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Why the daemon stops.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    Signal,
    /// The daemon was cancelled without a signal: a task ended that should not have.
    TaskEnded,
}

/// Waits for a signal, or for a task's unexpected end (which cancels the daemon).
pub async fn wait_for_stop(
    signal: impl std::future::Future<Output = Result<(), DaemonError>>,
    cancel: &CancellationToken,
) -> Result<Stop, DaemonError> {
    tokio::select! {
        r = signal => r.map(|()| Stop::Signal),
        _ = cancel.cancelled() => Ok(Stop::TaskEnded),
    }
}

pub async fn run(cfg: Config) -> Result<(), DaemonError> {
    install_panic_hook(&cfg);
    let cfg = Arc::new(cfg);
    let paths = Paths {
        owner: pgpool::supervisor::pgpool_owner().map_err(DaemonError::PgpoolUser)?,
        ..Paths::default()
    };
    if let Some(owner) = paths.owner {
        warn_if_docker_socket_open_to(owner);
    }
    let reaper = Reaper::start().map_err(|e| DaemonError::Signals(e.to_string()))?;
    // Setting names differ between pgpool versions: asked once, before anything is rendered.
    let pgpool_version = version::detect(&reaper, version::DETECT_TIMEOUT).await?;
    log_pgpool_version(pgpool_version);
    // Before anything else: a bad pass-through is a config error, not a runtime one.
    pgpool::supervisor::write_config(&cfg, &paths, pgpool_version)?;

    let docker = DockerRuntime::connect().await?;
    let project = match &cfg.compose_project {
        Some(p) => p.clone(),
        None => DockerRuntime::own_project(&docker).await.ok_or_else(|| {
            DaemonError::Config(
                "PGPOOL_SIDECAR_COMPOSE_PROJECT: not set, and this container is not part of a \
                 compose project; set it to the project whose containers the sidecar may manage"
                    .into(),
            )
        })?,
    };
    let scope = Scope {
        project,
        label: cfg.cluster_label.clone(),
    };
    tracing::info!(project = %scope.project, label = ?scope.label, "managing containers in scope");

    let listener = http::bind(cfg.http_listen)
        .await
        .map_err(|e| DaemonError::Http {
            addr: cfg.http_listen.to_string(),
            message: e.to_string(),
        })?;
    let ctx = Arc::new(Ctx {
        metrics: Metrics::new(cfg.nodes.len(), pgpool_version)
            .map_err(|e| DaemonError::Metrics(e.to_string()))?,
        docker: DockerRuntime::new(docker, scope),
        pgpool: Pgpool::new(&cfg, &paths, reaper.clone()),
        reaper,
        paths,
        pgpool_version,
        state: Mutex::new(State::default()),
        journal: crate::journal::Journal::new(cfg.state_path.clone()),
        sessions: (0..cfg.nodes.len())
            .map(|i| tokio::sync::Mutex::new(Session::new(node_endpoint(&cfg, i))))
            .collect(),
        failover_lock: tokio::sync::Mutex::new(()),
        adoption: tokio::sync::Mutex::new(Default::default()),
        wake: tokio::sync::Notify::new(),
        cancel: CancellationToken::new(),
        tracker: TaskTracker::new(),
        running: Mutex::new(BTreeSet::new()),
        cfg,
    });

    // What the last run knew, before anything can change (and write over) the state.
    crate::startup::load(&ctx);
    // A job left by a crashed sidecar would otherwise run on beside the one this sidecar may
    // start on the same volume: none may exist before the first pass.
    remove_jobs(&ctx, "start").await;

    ctx.spawn_essential("http", http::serve(ctx.clone(), listener));
    let hook_path = ctx.cfg.hook_socket.clone();
    let c = ctx.clone();
    // Without the socket pgpool's failover callback fails: ending the daemon
    // makes that visible instead of running half-alive.
    ctx.spawn_essential("hook-socket", async move {
        if let Err(e) = hook::serve(c, hook_path).await {
            tracing::error!(error = %e, "hook socket unavailable: pgpool's callbacks would fail");
        }
    });
    ctx.spawn_essential("reconcile", reconcile::run(ctx.clone()));
    ctx.spawn("users", crate::users::run(ctx.clone()));
    ctx.spawn_essential("docker-events", reconcile::watch_events(ctx.clone()));
    ctx.spawn_essential("tls-watch", crate::tls_watch::run(ctx.clone()));
    ctx.spawn_essential("pgpool-clients", crate::saturation::run(ctx.clone()));

    let stop = wait_for_stop(wait_for_signal(), &ctx.cancel).await?;
    tracing::info!(reason = ?stop, "shutting down");
    ctx.cancel.cancel();
    if stop == Stop::Signal {
        forget_stack_stops(&ctx).await;
    }
    // Cancelled recovery tasks drop their jobs' futures, not the containers.
    remove_jobs(&ctx, "shutdown").await;
    ctx.tracker.close();
    if tokio::time::timeout(Duration::from_secs(9), ctx.tracker.wait())
        .await
        .is_err()
    {
        let left = ctx
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        tracing::warn!(tasks = ?left, "tasks did not finish within 9 s");
    }
    tracing::info!("stopped");
    match stop {
        Stop::Signal => Ok(()),
        Stop::TaskEnded => Err(DaemonError::TaskEnded),
    }
}

fn log_pgpool_version(v: PgpoolVersion) {
    if v.newer_than_known() {
        tracing::warn!(
            pgpool_version = %v,
            known = %PgpoolVersion::NEWEST_KNOWN,
            "pgpool-II is newer than any version pgpool-sidecar was checked against; its configuration is written as for the newest known one"
        );
    } else {
        tracing::info!(pgpool_version = %v, "pgpool-II detected");
    }
}

/// The Docker socket is root on the host: pgpool's user must not reach it. Only a local socket
/// can be checked; a TCP `DOCKER_HOST` is the operator's to protect.
fn warn_if_docker_socket_open_to(owner: crate::pgpool::conf::Owner) {
    use std::os::unix::fs::MetadataExt;
    let path = match std::env::var("DOCKER_HOST") {
        Ok(h) => match h.strip_prefix("unix://") {
            Some(p) => p.to_string(),
            None => return,
        },
        Err(_) => "/var/run/docker.sock".to_string(),
    };
    let Ok(meta) = std::fs::metadata(&path) else {
        return;
    };
    let others = meta.mode() & 0o006 != 0;
    let group = meta.gid() == owner.gid && meta.mode() & 0o060 != 0;
    if others || group || meta.uid() == owner.uid {
        tracing::error!(
            socket = %path,
            uid = owner.uid,
            gid = owner.gid,
            "the Docker socket is reachable by the user pgpool runs as: a pgpool bug would be root on the host; give the socket a group pgpool's user is not in and mode 0660"
        );
    }
}

/// Nodes seen stopping just before this orderly shutdown were stopped with the whole stack (a
/// host reboot, `docker-compose stop`) if every other node goes down too, within a few seconds:
/// then they are forgotten, so the stack comes back whole (see
/// [`crate::cluster::restart::stops_kept_at_shutdown`]).
async fn forget_stack_stops(ctx: &Ctx) {
    use crate::cluster::restart::{stops_kept_at_shutdown, STACK_STOP_WINDOW};
    let recent = ctx.with_state(|s| {
        let now = crate::state::unix_now();
        s.stopped
            .values()
            .any(|at| now - at <= STACK_STOP_WINDOW.as_secs_f64())
    });
    if !recent {
        return;
    }
    let deadline = std::time::Instant::now() + STACK_DOWN_WAIT;
    let stack_down = loop {
        let fenced = ctx.with_state(|s| s.fenced.clone());
        let found =
            futures_util::future::join_all(ctx.cfg.nodes.iter().map(|n| ctx.docker.find(&n.host)))
                .await;
        let down = found.iter().enumerate().all(|(i, f)| {
            fenced.contains(&i)
                || matches!(f, Ok(None))
                || matches!(f, Ok(Some(c)) if !c.status.is_up())
        });
        if down || std::time::Instant::now() > deadline {
            break down;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let now = crate::state::unix_now();
    let forgotten: Vec<String> = ctx.with_state(|s| {
        let kept = stops_kept_at_shutdown(&s.stopped, now, stack_down);
        let gone = s.stopped.keys().filter(|n| !kept.contains_key(n));
        let gone = gone.map(|n| ctx.node_name(*n).to_string()).collect();
        s.stopped = kept;
        gone
    });
    if !forgotten.is_empty() {
        tracing::info!(nodes = ?forgotten, "nodes stopped just before this shutdown went down with the whole stack; they will be started again");
    }
}

/// How long a shutdown waits to see whether the whole stack is going down.
const STACK_DOWN_WAIT: Duration = Duration::from_secs(5);

async fn remove_jobs(ctx: &Ctx, when: &str) {
    match ctx.docker.remove_all_jobs().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(count = n, when, "removed leftover job containers"),
        Err(e) => {
            ctx.metrics
                .docker_api_errors
                .with_label_values(&[e.operation()])
                .inc();
            tracing::error!(error = %e, when, "cannot remove leftover job containers");
        }
    }
}

async fn wait_for_signal() -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let err = |e: std::io::Error| DaemonError::Signals(e.to_string());
    let mut term = signal(SignalKind::terminate()).map_err(err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(err)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_hide_secrets_and_are_bounded() {
        let secrets = vec!["hunter2".to_string()];
        let p: Box<dyn std::any::Any + Send> =
            Box::new("connect password=hunter2 failed".to_string());
        assert_eq!(
            panic_message(p.as_ref(), &secrets),
            "connect password=<redacted> failed"
        );
        let p: Box<dyn std::any::Any + Send> = Box::new("index out of bounds");
        assert_eq!(panic_message(p.as_ref(), &secrets), "index out of bounds");
        let p: Box<dyn std::any::Any + Send> = Box::new(42u8);
        assert_eq!(panic_message(p.as_ref(), &secrets), "(no message)");
        let p: Box<dyn std::any::Any + Send> = Box::new("é".repeat(PANIC_MESSAGE_MAX));
        assert!(panic_message(p.as_ref(), &secrets).len() <= PANIC_MESSAGE_MAX + 3);
    }

    #[test]
    fn an_unusable_pgpool_is_a_named_start_up_failure() {
        let cases = [
            (
                VersionError::Unsupported {
                    found: PgpoolVersion::new(4, 2, 19),
                },
                "cannot tell which pgpool-II this image has: pgpool-II 4.2.19 is not supported",
            ),
            (
                VersionError::NotRun("cannot start pgpool: No such file or directory".into()),
                "cannot tell which pgpool-II this image has: cannot run `pgpool --version`",
            ),
            (
                VersionError::Unrecognised {
                    output: "garbage".into(),
                },
                "cannot tell which pgpool-II this image has: `pgpool --version` printed no",
            ),
        ];
        for (e, start) in cases {
            let e = DaemonError::from(e);
            assert!(e.to_string().starts_with(start), "{e}");
            assert_eq!(e.exit_code(), 1, "{e}");
        }
    }

    #[tokio::test]
    async fn a_cancel_without_a_signal_is_a_failure() {
        let cancel = CancellationToken::new();
        let signal = std::future::pending::<Result<(), DaemonError>>();
        crate::state::task_ended("reconcile", true, &cancel);
        let stop = tokio::time::timeout(Duration::from_secs(5), wait_for_stop(signal, &cancel))
            .await
            .expect("the daemon stops")
            .unwrap();
        assert_eq!(stop, Stop::TaskEnded);
        assert_eq!(DaemonError::TaskEnded.exit_code(), EXIT_SOFTWARE);
        let stop = wait_for_stop(async { Ok(()) }, &CancellationToken::new()).await;
        assert_eq!(stop.unwrap(), Stop::Signal);
    }
}
