//! Application users through pgpool: every declared user is a login role on the primary with
//! its declared password and has a pool_passwd entry; login roles nobody declared are reported.
//!
//! Reads: the declaration (`PGPOOL_SIDECAR_USERS`, or the file `PGPOOL_SIDECAR_USERS_FILE`
//! names, read again every second), the primary's roles (`pg_authid`: when the declaration or
//! the primary changed, after a failure, and every [`REPORT_EVERY`] for the report).
//! Changes: roles of declared users only (CREATE ROLE / ALTER ROLE … LOGIN PASSWORD, with a
//! SCRAM verifier computed here and the statement kept out of the server's log), pool_passwd
//! (atomically, mode 0600) and pgpool's configuration (`pcp_reload_config`: a reload, so open
//! sessions stay). The flow: observe (read, parse) → decide ([`roles::plan`]) → act → record
//! (`/status`, metrics, log lines that name users, never passwords).

pub mod declared;
pub mod roles;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use declared::{AppUser, DeclarationError, Origin, Reserved};
use roles::{Role, RoleChange};
use serde::Serialize;

use crate::config::{Config, Secret, UsersInput};
use crate::postgres::{PgError, Session};
use crate::state::Ctx;

/// How often the users file is read again.
const READ_EVERY: Duration = Duration::from_secs(1);
/// How often the primary's login roles are looked at for the report of undeclared ones.
const REPORT_EVERY: Duration = Duration::from_secs(10);
const SQL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The message names the file (`file <path> ...`), as it does for every `*_FILE` secret.
    #[error("the users {0}")]
    Unreadable(String),
    #[error("{var}: {source}")]
    Declaration {
        var: &'static str,
        source: DeclarationError,
    },
    #[error("cannot apply the declared users on the primary: {0}")]
    Primary(#[from] PgError),
    #[error("cannot write pool_passwd: {0}")]
    PoolPasswd(String),
    #[error("pgpool did not reload: {0}")]
    Reload(String),
}

impl UsersError {
    fn stage(&self) -> &'static str {
        match self {
            UsersError::Unreadable(_) | UsersError::Declaration { .. } => "declaration",
            UsersError::Primary(_) => "roles",
            UsersError::PoolPasswd(_) => "pool_passwd",
            UsersError::Reload(_) => "reload",
        }
    }
}

/// What `/status` shows: names and times, never a password.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UsersStatus {
    /// "variable", "file" or "none".
    pub source: &'static str,
    pub file: Option<String>,
    /// The users in force (in pool_passwd), by name.
    pub declared: Vec<String>,
    /// When the declaration in force was applied (unix seconds).
    pub applied_at: Option<f64>,
    /// Seconds from reading a changed declaration to pgpool's reload with it.
    pub last_apply_seconds: Option<f64>,
    /// Login roles of the primary without a pool_passwd entry (as last looked at).
    pub undeclared_login_roles: Vec<String>,
    pub last_error: Option<String>,
}

fn reserved(cfg: &Config) -> Reserved<'_> {
    Reserved {
        superuser: &cfg.superuser,
        replication_user: &cfg.replication_user,
    }
}

fn var_name(input: &UsersInput) -> &'static str {
    if input.file.is_some() {
        "PGPOOL_SIDECAR_USERS_FILE"
    } else {
        "PGPOOL_SIDECAR_USERS"
    }
}

/// The config check: why the declaration cannot be used, if so (never with a password).
pub fn declaration_problem(
    text: &str,
    from_file: bool,
    superuser: Option<&str>,
    replication_user: Option<&str>,
) -> Option<String> {
    let origin = if from_file {
        Origin::File
    } else {
        Origin::Variable
    };
    let r = Reserved {
        superuser: superuser.unwrap_or_default(),
        replication_user: replication_user.unwrap_or_default(),
    };
    declared::parse(text, origin, &r)
        .err()
        .map(|e| e.to_string())
}

fn parse_input(cfg: &Config, input: &UsersInput, text: &str) -> Result<Vec<AppUser>, UsersError> {
    let origin = if input.file.is_some() {
        Origin::File
    } else {
        Origin::Variable
    };
    declared::parse(text, origin, &reserved(cfg)).map_err(|source| UsersError::Declaration {
        var: var_name(input),
        source,
    })
}

/// The users as the configuration was checked at start (pool_passwd's first contents).
pub fn declared_at_start(cfg: &Config) -> Vec<AppUser> {
    cfg.users
        .as_ref()
        .and_then(|input| parse_input(cfg, input, input.text.expose()).ok())
        .unwrap_or_default()
}

/// Reads the users file by the config check's rules (a regular file, at most 64 KiB of UTF-8,
/// trailing newlines dropped), so an unchanged file reads as the text checked at start.
async fn read_file(path: &std::path::Path) -> Result<String, UsersError> {
    let p = path.to_string_lossy().into_owned();
    let shown = p.clone();
    let read = tokio::task::spawn_blocking(move || crate::config::read_secret_file(&p));
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(r)) => r.map_err(UsersError::Unreadable),
        Ok(Err(e)) => Err(UsersError::Unreadable(format!("file {shown}: {e}"))),
        Err(_) => Err(UsersError::Unreadable(format!(
            "file {shown} took over 5 s to read"
        ))),
    }
}

/// What the task has applied, to act only on a change.
struct Applied {
    users: Vec<AppUser>,
    /// The primary the roles were made right on.
    primary: Option<usize>,
    pool_passwd: String,
}

/// Runs until the daemon stops. Named `users` in the daemon's task list.
pub async fn run(ctx: Arc<Ctx>) {
    let Some(input) = ctx.cfg.users.clone() else {
        ctx.with_state(|s| s.users.source = "none");
        ctx.metrics.app_users.set(0);
        // Undeclared roles are still worth reporting: they are the ones that cannot log in.
        report_loop(ctx, Vec::new()).await;
        return;
    };
    let mut users_now = declared_at_start(&ctx.cfg);
    ctx.with_state(|s| {
        s.users.source = if input.file.is_some() {
            "file"
        } else {
            "variable"
        };
        s.users.file = input.file.as_ref().map(|p| p.display().to_string());
        s.users.declared = users_now.iter().map(|u| u.name.clone()).collect();
    });
    ctx.metrics.app_users.set(users_now.len() as i64);
    let mut applied = Applied {
        users: Vec::new(),
        primary: None,
        pool_passwd: crate::pgpool::conf::pool_passwd(&ctx.cfg, &users_now),
    };
    // The start's pool_passwd already holds `users_now`; the roles still have to be checked.
    let mut roles_ok = false;
    let mut last_text: Option<Secret> = Some(input.text.clone());
    let mut changed_at = Instant::now();
    let mut session: Option<(usize, Session)> = None;
    let mut last_report = Instant::now() - REPORT_EVERY;
    let mut last_error: Option<String> = None;
    loop {
        // Observe. A file is acted on once two reads a second apart agree, so a file caught
        // half-written (truncated, then written) is not applied.
        if let Some(path) = &input.file {
            match read_file(path).await {
                Ok(text) if last_text.as_ref().map(Secret::expose) != Some(text.as_str()) => {
                    last_text = Some(Secret::new(text));
                    changed_at = Instant::now();
                    sleep(READ_EVERY).await;
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    record_error(&ctx, &e, &mut last_error);
                    sleep(READ_EVERY).await;
                    continue;
                }
            }
        }
        let text = last_text.clone().unwrap_or_else(|| input.text.clone());
        match parse_input(&ctx.cfg, &input, text.expose()) {
            Ok(users) => {
                if users != users_now {
                    tracing::warn!(
                        users = ?users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
                        "the declared users changed; applying them"
                    );
                    users_now = users;
                    roles_ok = false;
                }
            }
            Err(e) => record_error(&ctx, &e, &mut last_error),
        }
        let primary = ctx.primary();
        let need = !roles_ok || applied.primary != primary || applied.users != users_now;
        if need && primary.is_some() {
            match apply(&ctx, &mut session, &users_now, &mut applied).await {
                Ok(()) => {
                    roles_ok = true;
                    let seconds = changed_at.elapsed().as_secs_f64();
                    ctx.with_state(|s| {
                        s.users.declared = users_now.iter().map(|u| u.name.clone()).collect();
                        s.users.applied_at = Some(crate::state::unix_now());
                        s.users.last_apply_seconds = Some(seconds);
                        s.users.last_error = None;
                    });
                    ctx.metrics.app_users.set(users_now.len() as i64);
                    last_error = None;
                    // The report right after, so a declaration that fixed it shows at once.
                    last_report = Instant::now() - REPORT_EVERY;
                }
                Err(e) => {
                    session = None;
                    record_error(&ctx, &e, &mut last_error);
                }
            }
        }
        if last_report.elapsed() >= REPORT_EVERY {
            if let Some(p) = primary {
                if report(&ctx, &mut session, p, &users_now).await.is_ok() {
                    last_report = Instant::now();
                } else {
                    session = None;
                }
            }
        }
        sleep(READ_EVERY).await;
    }
}

async fn sleep(d: Duration) {
    tokio::time::sleep(d).await
}

fn record_error(ctx: &Ctx, e: &UsersError, last: &mut Option<String>) {
    let text = e.to_string();
    ctx.metrics
        .app_user_sync_failures
        .with_label_values(&[e.stage()])
        .inc();
    // Once per distinct problem: a bad file read every second must not flood the log.
    if last.as_deref() != Some(text.as_str()) {
        tracing::error!(error = %text, "declared users not applied; the last good declaration stays in force");
        *last = Some(text.clone());
    }
    ctx.with_state(|s| s.users.last_error = Some(text));
}

/// A session on the current primary, opened again when the primary changed.
fn session_for<'a>(
    ctx: &Ctx,
    slot: &'a mut Option<(usize, Session)>,
    primary: usize,
) -> &'a mut Session {
    if slot.as_ref().is_none_or(|(p, _)| *p != primary) {
        *slot = None;
    }
    &mut slot
        .get_or_insert_with(|| (primary, Session::new(ctx.endpoint(primary))))
        .1
}

async fn roles_of(session: &mut Session) -> Result<Vec<Role>, PgError> {
    Ok(session
        .roles_with_passwords(SQL_TIMEOUT)
        .await?
        .into_iter()
        .map(|(name, can_login, stored)| Role {
            name,
            can_login,
            stored,
        })
        .collect())
}

/// Roles first, then pool_passwd and the reload: pgpool hands out the new password only once
/// the primary takes it.
async fn apply(
    ctx: &Ctx,
    session: &mut Option<(usize, Session)>,
    users: &[AppUser],
    applied: &mut Applied,
) -> Result<(), UsersError> {
    let Some(primary) = ctx.primary() else {
        return Ok(());
    };
    let s = session_for(ctx, session, primary);
    let roles = roles_of(s).await?;
    for change in roles::plan(users, &roles) {
        // Planned from these users: every change names one of them.
        let Some(user) = users.iter().find(|u| u.name == change.name()) else {
            continue;
        };
        // Computed here: the clear password is in no SQL text the server could log.
        let verifier = Secret::new(postgres_protocol::password::scram_sha_256(
            user.password.expose().as_bytes(),
        ));
        let create = matches!(change, RoleChange::Create { .. });
        s.set_login_password(&user.name, &verifier, create, SQL_TIMEOUT)
            .await?;
        let label = if create {
            "role_created"
        } else {
            "password_set"
        };
        ctx.metrics
            .app_user_changes
            .with_label_values(&[label])
            .inc();
        match change {
            RoleChange::Create { name } => {
                tracing::warn!(user = %name, primary = %ctx.node_name(primary), "created the declared user as a login role with its password")
            }
            RoleChange::Alter { name, add_login } => {
                tracing::warn!(user = %name, primary = %ctx.node_name(primary), add_login, "set the declared password of an existing role")
            }
        }
    }
    applied.primary = Some(primary);
    let contents = crate::pgpool::conf::pool_passwd(&ctx.cfg, users);
    if contents != applied.pool_passwd {
        crate::pgpool::conf::write_file(
            &ctx.paths.pool_passwd(),
            &contents,
            0o600,
            ctx.paths.owner,
        )
        .map_err(|e| UsersError::PoolPasswd(e.to_string()))?;
        ctx.pgpool
            .reload(Duration::from_secs(10))
            .await
            .map_err(|e| UsersError::Reload(e.to_string()))?;
        applied.pool_passwd = contents;
        ctx.metrics
            .app_user_changes
            .with_label_values(&["pool_passwd"])
            .inc();
        tracing::warn!(
            users = users.len(),
            "pool_passwd rewritten; pgpool reloaded (not restarted)"
        );
    }
    applied.users = users.to_vec();
    Ok(())
}

/// Looks for login roles without a pool_passwd entry; logs each newly seen one once.
async fn report(
    ctx: &Ctx,
    session: &mut Option<(usize, Session)>,
    primary: usize,
    users: &[AppUser],
) -> Result<(), PgError> {
    let s = session_for(ctx, session, primary);
    let roles = roles_of(s).await?;
    let missing = roles::undeclared(&roles, users, &ctx.cfg.superuser, &ctx.cfg.replication_user);
    let before =
        ctx.with_state(|s| std::mem::replace(&mut s.users.undeclared_login_roles, missing.clone()));
    for name in missing.iter().filter(|n| !before.contains(n)) {
        tracing::warn!(
            role = %name,
            "login role without a pool_passwd entry: it cannot log in through pgpool; declare it \
             in PGPOOL_SIDECAR_USERS or the users file as `{name}:<password>` (compose: APP_USERS)"
        );
    }
    ctx.metrics
        .login_roles_without_pool_passwd
        .set(missing.len() as i64);
    Ok(())
}

/// With no declaration: only the report.
async fn report_loop(ctx: Arc<Ctx>, users: Vec<AppUser>) {
    let mut session = None;
    loop {
        if let Some(p) = ctx.primary() {
            if report(&ctx, &mut session, p, &users).await.is_err() {
                session = None;
            }
        }
        sleep(REPORT_EVERY).await;
    }
}
