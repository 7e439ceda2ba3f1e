//! Runs pgpool as a child and keeps it running.
//!
//! Reads: the sidecar's verified node states (which backends pgpool may start with). Changes:
//! writes pgpool's config files, starts pgpool, restarts it with back-off when it dies, and stops
//! it (SIGINT: fast shutdown, then SIGKILL) when the sidecar shuts down.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pgpool::conf::{self, ConfError, Owner, Paths};
use crate::pgpool::version::PgpoolVersion;
use crate::reaper::Reaper;

/// The user pgpool runs as. The sidecar holds the Docker socket, which is root on the host:
/// pgpool, and everything pgpool executes (its hooks), must not. The image creates it.
pub const PGPOOL_USER: &str = "pgpool";

/// Who pgpool runs as: [`PGPOOL_USER`] when the sidecar is root, else the sidecar's own user.
pub fn pgpool_owner() -> Result<Option<Owner>, String> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name(PGPOOL_USER) {
        Ok(Some(u)) if !u.uid.is_root() => Ok(Some(Owner {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        })),
        Ok(Some(_)) => Err(format!("user {PGPOOL_USER} is root")),
        Ok(None) => Err(format!("no user {PGPOOL_USER} in this container")),
        Err(e) => Err(format!("cannot look up user {PGPOOL_USER}: {e}")),
    }
}

/// Writes every file pgpool reads, pgpool.conf in the names `version` reads. Secrets go to 0600
/// files only; what pgpool reads belongs to its user, the PCP pass file (the sidecar's own PCP
/// client) to root.
pub fn write_config(cfg: &Config, paths: &Paths, version: PgpoolVersion) -> Result<(), ConfError> {
    let owner = paths.owner;
    let tls = crate::tls::install(cfg, paths).map_err(|e| match e {
        crate::tls::TlsError::Write(e) => e,
        other => ConfError::Tls(other.to_string()),
    })?;
    tracing::info!(
        source = tls.source,
        generated = tls.generated,
        client_ca = tls.client_ca,
        "pgpool serves TLS"
    );
    if tls.client_ca {
        // pgpool checks the backends against the same CA (pool_ssl.c): seen here, nodes with
        // the image's self-signed certificates then refuse every pgpool connection.
        tracing::warn!(
            "PGPOOL_SIDECAR_TLS_CA_FILE is set: pgpool also verifies the nodes' certificates \
             against it, so they must be signed by that CA or pgpool cannot connect to them"
        );
    }
    // pgpool.conf may carry pass-through secrets (recovery_password, wd_authkey, …).
    conf::write_file(
        &paths.pgpool_conf(),
        &conf::pgpool_conf(cfg, paths, version)?,
        0o600,
        owner,
    )?;
    conf::write_file(&paths.pcp_conf(), &conf::pcp_conf(cfg), 0o600, owner)?;
    conf::write_file(&paths.pool_hba(), &conf::pool_hba(), 0o600, owner)?;
    // The declared users are in it from the first start; the users task keeps it current.
    let users = crate::users::declared_at_start(cfg);
    conf::write_file(
        &paths.pool_passwd(),
        &conf::pool_passwd(cfg, &users),
        0o600,
        owner,
    )?;
    conf::write_file(&paths.pcppass(), &conf::pcppass(cfg), 0o600, None)?;
    conf::owned_dir(&paths.run_dir, owner)?;
    conf::owned_dir(&paths.status_dir, owner)?;
    Ok(())
}

/// Supervises pgpool until `cancel` fires. `nodes_up` gives, before each start, which backends
/// the sidecar has verified; they become pgpool's status file.
pub async fn supervise(
    paths: Paths,
    reaper: Reaper,
    nodes_up: Arc<dyn Fn() -> Vec<bool> + Send + Sync>,
    restarts: prometheus::IntCounter,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let up = nodes_up();
        if let Err(e) = conf::write_file(
            &paths.status_file(),
            &conf::status_file(&up),
            0o600,
            paths.owner,
        ) {
            tracing::error!(error = %e, "cannot write pgpool_status");
        }
        let mut cmd = Command::new("pgpool");
        cmd.args(["-n", "-f"])
            .arg(paths.pgpool_conf())
            .arg("-F")
            .arg(paths.pcp_conf())
            .arg("-a")
            .arg(paths.pool_hba());
        if let Some(o) = paths.owner {
            // std drops the supplementary groups too (setgroups) before it changes user.
            use std::os::unix::process::CommandExt;
            cmd.uid(o.uid).gid(o.gid).env("HOME", &paths.status_dir);
        }
        let started = tokio::time::Instant::now();
        let child = match reaper.spawn(&mut cmd) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot start pgpool");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let pid = child.pid;
        tracing::info!(pid, status = ?up, "pgpool started");
        let exit = child.wait();
        tokio::pin!(exit);
        tokio::select! {
            code = &mut exit => {
                restarts.inc();
                tracing::error!(?code, "pgpool exited; restarting after {:?}", backoff);
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_millis(500);
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            _ = cancel.cancelled() => {
                tracing::info!(pid, "stopping pgpool");
                let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
                if tokio::time::timeout(Duration::from_secs(8), &mut exit).await.is_err() {
                    tracing::warn!(pid, "pgpool did not stop in 8 s; killing it");
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    let _ = tokio::time::timeout(Duration::from_secs(2), &mut exit).await;
                }
                tracing::info!("pgpool stopped");
                return;
            }
        }
    }
}
