//! Start-up and shutdown of the daemon (`pgpool-sidecar run`).
//!
//! Reads: the config, the Docker daemon, SIGTERM/SIGINT. Changes: starts the named background
//! tasks (HTTP, hook socket, reconcile loop, Docker events; the reconcile loop starts the pgpool
//! supervisor once a primary is known) and, on a signal, cancels them and waits for them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::docker::{DockerError, DockerRuntime, Scope};
use crate::metrics::Metrics;
use crate::pgpool::conf::{ConfError, Paths};
use crate::pgpool::control::Pgpool;
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
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("cannot listen for HTTP on {addr}: {message}")]
    Http { addr: String, message: String },
    #[error("cannot install signal handlers: {0}")]
    Signals(String),
}

impl DaemonError {
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Config(_)
            | DaemonError::PgpoolConf(ConfError::Reserved { .. })
            | DaemonError::PgpoolConf(ConfError::Unwritable { .. }) => 64,
            _ => 1,
        }
    }
}

pub async fn run(cfg: Config) -> Result<(), DaemonError> {
    let cfg = Arc::new(cfg);
    let paths = Paths::default();
    // Before anything else: a bad pass-through is a config error, not a runtime one.
    pgpool::supervisor::write_config(&cfg, &paths)?;
    let reaper = Reaper::start().map_err(|e| DaemonError::Signals(e.to_string()))?;

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
        metrics: Metrics::new(cfg.nodes.len()),
        docker: DockerRuntime::new(docker, scope),
        pgpool: Pgpool::new(&cfg, &paths, reaper.clone()),
        reaper,
        paths,
        state: Mutex::new(State::default()),
        sessions: (0..cfg.nodes.len())
            .map(|i| tokio::sync::Mutex::new(Session::new(node_endpoint(&cfg, i))))
            .collect(),
        failover_lock: tokio::sync::Mutex::new(()),
        wake: tokio::sync::Notify::new(),
        cancel: CancellationToken::new(),
        tracker: TaskTracker::new(),
        running: Mutex::new(BTreeSet::new()),
        cfg,
    });

    // A job left by a crashed sidecar would otherwise run on beside the one this sidecar may
    // start on the same volume: none may exist before the first pass.
    remove_jobs(&ctx, "start").await;

    ctx.spawn("http", http::serve(ctx.clone(), listener));
    let hook_path = ctx.cfg.hook_socket.clone();
    let c = ctx.clone();
    ctx.spawn("hook-socket", async move {
        if let Err(e) = hook::serve(c, hook_path).await {
            tracing::error!(error = %e, "hook socket unavailable: pgpool's callbacks will fail");
        }
    });
    ctx.spawn("reconcile", reconcile::run(ctx.clone()));
    ctx.spawn("docker-events", reconcile::watch_events(ctx.clone()));

    wait_for_signal().await?;
    tracing::info!("shutting down");
    ctx.cancel.cancel();
    // Cancelled recovery tasks drop their jobs' futures, not the containers.
    remove_jobs(&ctx, "shutdown").await;
    ctx.tracker.close();
    if tokio::time::timeout(Duration::from_secs(9), ctx.tracker.wait())
        .await
        .is_err()
    {
        let left = ctx.running.lock().expect("running").clone();
        tracing::warn!(tasks = ?left, "tasks did not finish within 9 s");
    }
    tracing::info!("stopped");
    Ok(())
}

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
