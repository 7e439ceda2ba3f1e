//! Adopting a plain official-image primary (only `POSTGRES_PASSWORD` set), so that standbys can
//! stream from it and a failed primary can later be rewound: the replication role, a pg_hba.conf
//! rule for replication from the cluster network, and `wal_log_hints`.
//!
//! Reads: the primary's settings (`hba_file`, `data_directory`, `ssl`, `wal_log_hints`,
//! `data_checksums`, recovery state, system identifier), the replication role (`pg_roles`,
//! `pg_authid`, its privileges on pg_rewind's functions), `pg_hba_file_rules`, and the Docker
//! inspect of the primary's container (the subnets of its networks).
//! Changes, only on the current primary of this cluster (the rules of
//! [`crate::cluster::adopt`]) and only what is missing: creates the replication role (its
//! password as a SCRAM verifier computed here) or adds REPLICATION / LOGIN to it, grants it
//! EXECUTE on pg_rewind's functions, appends `host replication` lines to a pg_hba.conf inside the
//! data directory by `docker exec` and reloads, sets `wal_log_hints = on` with ALTER SYSTEM (in
//! force at the next restart). Records `/status`'s `adoption` and `adoption_changes_total`.
//! How often: looked at on every reconcile pass, but a primary is checked again only every
//! [`ADOPT_RECHECK`] once a check ran to its end (at once for a new primary or generation, after
//! [`ADOPT_RETRY`] when one failed); and whenever the recovery ladder asks, before it brings a
//! node back. Checks are single-flight, on a connection of their own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::adopt::{
    adopt_due, confirm_primary, hba_file_inside, hba_line, hba_verdict, may_adopt, role_plan,
    sticky, wal_hints, Adoption, Checked, HbaVerdict, NotAdoptable, RoleStep, ServerFacts,
    WalHints, ADOPT_RECHECK, ADOPT_RETRY, HBA_COMMENT, REWIND_FUNCTIONS,
};
use crate::cluster::ClusterView;
use crate::config::Secret;
use crate::docker::{ContainerInfo, DockerError};
use crate::postgres::{PgError, Session};
use crate::state::Ctx;

#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("not adopting the node: {0}")]
    NotAdoptable(#[from] NotAdoptable),
    #[error("the primary's container is gone")]
    NoContainer,
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error(transparent)]
    Docker(#[from] DockerError),
}

/// The last check, and the problems already logged (each is logged once, not every minute).
#[derive(Debug, Default)]
pub struct Memo {
    last: Option<Checked>,
    logged: Vec<String>,
}

/// The whole `docker exec` call.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// The `timeout` the command runs under inside the container: it ends before the call gives up,
/// so no append is left running behind a call that reported failure.
const EXEC_INNER_SECONDS: u64 = 20;

/// Appends the lines given after the file and the comment to the file, each unless it is
/// there already (an exact line), the comment before them once. Values arrive as positional
/// arguments, never spliced into the script.
const HBA_APPEND_SCRIPT: &str = r#"set -eu
file=$1
comment=$2
shift 2
if [ ! -f "$file" ]; then echo "no such file: $file" >&2; exit 3; fi
missing=
for line in "$@"; do
  grep -qxF -- "$line" "$file" || missing=yes
done
if [ -z "$missing" ]; then echo "already present"; exit 0; fi
# A last line without its newline would run into the first appended one.
if [ -s "$file" ] && [ -n "$(tail -c 1 "$file")" ]; then echo >> "$file"; fi
grep -qxF -- "$comment" "$file" || printf '%s\n' "$comment" >> "$file"
for line in "$@"; do
  if ! grep -qxF -- "$line" "$file"; then
    printf '%s\n' "$line" >> "$file"
    echo "appended: $line"
  fi
done
"#;

/// The exec command that appends `lines` to pg_hba.conf `file`.
pub fn hba_append_command(file: &str, lines: &[String]) -> Vec<String> {
    let mut cmd: Vec<String> = [
        "timeout",
        &EXEC_INNER_SECONDS.to_string(),
        "sh",
        "-c",
        HBA_APPEND_SCRIPT,
        "sh",
        file,
        HBA_COMMENT,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cmd.extend(lines.iter().cloned());
    cmd
}

fn sql_timeout(ctx: &Ctx) -> Duration {
    ctx.probe_timeout().max(Duration::from_secs(2))
}

/// From the reconcile loop: starts a check of the primary in a task of its own when one is
/// due, so a slow Docker or SQL call never holds up the pass that must notice a failed primary.
pub fn maybe_spawn(ctx: &Arc<Ctx>, view: &ClusterView) {
    let Some(node) = view.primary else { return };
    if may_adopt(view, node, ctx.with_state(|s| s.generation)).is_err() {
        return;
    }
    // Held: a check is running.
    let Ok(memo) = ctx.adoption.try_lock() else {
        return;
    };
    if !adopt_due(
        memo.last.as_ref(),
        node,
        view.generation,
        Instant::now(),
        false,
    ) {
        return;
    }
    drop(memo);
    let (c, view) = (ctx.clone(), view.clone());
    ctx.spawn("adopt", async move {
        let mut memo = c.adoption.lock().await;
        if adopt_due(
            memo.last.as_ref(),
            node,
            view.generation,
            Instant::now(),
            false,
        ) {
            let _ = check_and_record(&c, &view, node, &mut memo).await;
        }
    });
}

/// For the recovery ladder, before it brings a node back: the primary is checked now unless a
/// check of it under this generation ran to its end within [`ADOPT_RECHECK`]. Waits for a check
/// already running.
pub async fn ensure(ctx: &Ctx) -> Result<Adoption, AdoptError> {
    let mut memo = ctx.adoption.lock().await;
    let view = ctx.with_state(|s| s.view.clone());
    let node = view.primary.ok_or(NotAdoptable::NoPrimary)?;
    if !adopt_due(
        memo.last.as_ref(),
        node,
        view.generation,
        Instant::now(),
        true,
    ) {
        if let Some(a) = ctx.with_state(|s| s.adoption.clone()) {
            return Ok(a);
        }
    }
    check_and_record(ctx, &view, node, &mut memo).await
}

async fn check_and_record(
    ctx: &Ctx,
    view: &ClusterView,
    node: usize,
    memo: &mut Memo,
) -> Result<Adoption, AdoptError> {
    let name = ctx.node_name(node).to_string();
    let result = check(ctx, view, node).await;
    memo.last = Some(Checked {
        node,
        generation: view.generation,
        at: Instant::now(),
        settled: result.is_ok(),
    });
    let problems: Vec<String> = match &result {
        Ok(a) => a.problems.clone(),
        // The node is not (or no longer) the one to adopt: nothing is wrong with it.
        Err(AdoptError::NotAdoptable(e)) => {
            tracing::debug!(node = %name, reason = %e, "not adopting the node");
            vec![]
        }
        Err(e) => {
            if let AdoptError::Docker(d) = e {
                ctx.metrics
                    .docker_api_errors
                    .with_label_values(&[d.operation()])
                    .inc();
            }
            vec![format!("the check failed: {e}")]
        }
    };
    let again = if result.is_ok() {
        ADOPT_RECHECK
    } else {
        ADOPT_RETRY
    };
    for p in problems.iter().filter(|p| !memo.logged.contains(p)) {
        tracing::warn!(node = %name, problem = %p, again_in = ?again, "adopting the primary: a problem stays");
    }
    memo.logged = problems;
    let adoption = result?;
    ctx.with_state(|s| {
        let previous = s.adoption.as_ref().filter(|a| a.node == adoption.node);
        let merged = Adoption {
            replication_role: sticky(
                previous.map(|a| a.replication_role.as_str()),
                &adoption.replication_role,
            ),
            hba_rule: sticky(previous.map(|a| a.hba_rule.as_str()), &adoption.hba_rule),
            ..adoption.clone()
        };
        s.adoption = Some(merged.clone());
        Ok(merged)
    })
}

/// One check of the primary `node`, each change preceded by the rule that it is still the
/// node to change.
async fn check(ctx: &Ctx, view: &ClusterView, node: usize) -> Result<Adoption, AdoptError> {
    let still = || may_adopt(view, node, ctx.with_state(|s| s.generation));
    still()?;
    let name = ctx.node_name(node).to_string();
    // A connection of its own: a slow statement here never holds up a probe or a failover,
    // and the session settings of a quiet statement die with it.
    let mut session = Session::new(ctx.endpoint(node));
    let timeout = sql_timeout(ctx);
    let facts = session.server_facts(timeout).await?;
    let container = ctx
        .docker
        .find(&name)
        .await?
        .ok_or(AdoptError::NoContainer)?;
    confirm_primary(view, node, &facts, &container.id)?;
    let mut problems = Vec::new();
    let role = ensure_role(ctx, &mut session, &still, &name, &mut problems).await?;
    let hba = ensure_hba(
        ctx,
        &mut session,
        &still,
        &name,
        &facts,
        &container,
        &mut problems,
    )
    .await?;
    let wal = ensure_wal_log_hints(ctx, &mut session, &still, &name, &facts).await?;
    session.disconnect();
    Ok(Adoption {
        node: name,
        replication_role: role.into(),
        hba_rule: hba,
        wal_log_hints: wal.into(),
        checked_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default(),
        problems,
    })
}

type Still<'a> = dyn Fn() -> Result<(), NotAdoptable> + Send + Sync + 'a;

fn count(ctx: &Ctx, change: &str) {
    ctx.metrics
        .adoption_changes
        .with_label_values(&[change])
        .inc();
}

/// The replication role: created, or given REPLICATION and LOGIN, and pg_rewind's grants.
async fn ensure_role(
    ctx: &Ctx,
    session: &mut Session,
    still: &Still<'_>,
    node: &str,
    problems: &mut Vec<String>,
) -> Result<&'static str, AdoptError> {
    let timeout = sql_timeout(ctx);
    let user = ctx.cfg.replication_user.as_str();
    let is_superuser = user == ctx.cfg.superuser;
    let facts = if is_superuser {
        None
    } else {
        session.role(user, &REWIND_FUNCTIONS, timeout).await?
    };
    if facts
        .as_ref()
        .is_some_and(|f| !f.scram_password && !f.superuser)
    {
        problems.push(format!(
            "role {user:?} has no password stored as a SCRAM-SHA-256 verifier (md5 or none): a \
             scram-sha-256 rule, such as the one the sidecar adds, will not let it in; the \
             sidecar does not change an existing role's password"
        ));
    }
    let plan = role_plan(is_superuser, facts.as_ref());
    let mut status = plan.status();
    match plan.step {
        RoleStep::Create => {
            still()?;
            // Computed here, so the clear password is in no SQL text the server could log.
            let verifier = Secret::new(postgres_protocol::password::scram_sha_256(
                ctx.cfg.replication_password.expose().as_bytes(),
            ));
            if session
                .create_replication_role(user, &verifier, timeout)
                .await?
            {
                tracing::warn!(
                    node,
                    role = user,
                    "created the replication role WITH REPLICATION LOGIN and the configured \
                     password: the primary had no such role, so no standby could stream or be \
                     cloned from it"
                );
            } else {
                status = "present";
            }
        }
        RoleStep::Alter { replication, login } => {
            still()?;
            session
                .alter_role(user, replication, login, timeout)
                .await?;
            tracing::warn!(
                node,
                role = user,
                added_replication = replication,
                added_login = login,
                "gave the replication role what standbys need to stream (its password is left \
                 as it is)"
            );
        }
        RoleStep::Superuser | RoleStep::Keep => {}
    }
    if !plan.grants.is_empty() {
        still()?;
        for function in &plan.grants {
            session.grant_execute(user, function, timeout).await?;
        }
        tracing::info!(
            node,
            role = user,
            functions = ?plan.grants,
            "granted EXECUTE on the functions pg_rewind calls on its source"
        );
    }
    if plan.changes_anything() {
        count(ctx, "replication_role");
    }
    Ok(status)
}

/// A pg_hba.conf rule that lets the replication user stream from the cluster's networks.
async fn ensure_hba(
    ctx: &Ctx,
    session: &mut Session,
    still: &Still<'_>,
    node: &str,
    facts: &ServerFacts,
    container: &ContainerInfo,
    problems: &mut Vec<String>,
) -> Result<String, AdoptError> {
    let timeout = sql_timeout(ctx);
    let user = ctx.cfg.replication_user.as_str();
    let subnets = &container.subnets;
    let missing = match hba_verdict(&session.hba_rules(timeout).await?, user, subnets, facts.ssl) {
        HbaVerdict::Missing(m) => m,
        HbaVerdict::Covered => return Ok(HbaVerdict::Covered.status()),
        other => {
            let status = other.status();
            problems.push(format!(
                "{status}; standbys cannot stream until it is fixed"
            ));
            return Ok(status);
        }
    };
    let lines: Vec<String> = missing.iter().map(|n| hba_line(user, n)).collect();
    if !hba_file_inside(&facts.hba_file, &facts.data_directory) {
        let status = format!(
            "blocked: hba_file {} is outside the data directory {}, and the sidecar edits only a \
             pg_hba.conf inside it; add {:?} yourself",
            facts.hba_file, facts.data_directory, lines
        );
        problems.push(status.clone());
        return Ok(status);
    }
    still()?;
    let out = ctx
        .docker
        .exec(
            container,
            "postgres",
            hba_append_command(&facts.hba_file, &lines),
            EXEC_TIMEOUT,
        )
        .await?;
    session.reload(timeout).await?;
    if out.contains("appended: ") {
        count(ctx, "hba_rule");
        tracing::warn!(
            node,
            file = %facts.hba_file,
            ?lines,
            "appended to pg_hba.conf and reloaded: no rule let the replication user stream from \
             the cluster network (`host all all all …` does not match replication connections)"
        );
    }
    // What the file says now; an error row means the reload kept the old rules.
    match hba_verdict(&session.hba_rules(timeout).await?, user, subnets, facts.ssl) {
        HbaVerdict::Covered => Ok("added".into()),
        other => {
            let status = other.status();
            problems.push(format!("after appending to {}: {status}", facts.hba_file));
            Ok(status)
        }
    }
}

/// `wal_log_hints = on` when neither it nor data checksums are, so pg_rewind can rewind this
/// node if it ever fails and comes back diverged.
async fn ensure_wal_log_hints(
    ctx: &Ctx,
    session: &mut Session,
    still: &Still<'_>,
    node: &str,
    facts: &ServerFacts,
) -> Result<&'static str, AdoptError> {
    let hints = wal_hints(facts);
    if hints == WalHints::Set {
        still()?;
        session
            .set_setting("wal_log_hints", "on", sql_timeout(ctx))
            .await?;
        count(ctx, "wal_log_hints");
        tracing::warn!(
            node,
            "set wal_log_hints = on with ALTER SYSTEM: without it or data checksums pg_rewind \
             cannot rewind this node after a failover, and it would be rebuilt instead; it takes \
             effect at the primary's next restart, and standbys cloned from now on start with it"
        );
    }
    Ok(hints.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_append_command_passes_values_as_arguments() {
        let lines = vec![
            "host replication \"re'pl $(x)\" 172.18.0.0/16 scram-sha-256".to_string(),
            "host replication \"re'pl $(x)\" fd00::/64 scram-sha-256".to_string(),
        ];
        let cmd = hba_append_command("/var/lib/postgresql/data/pg_hba.conf", &lines);
        assert_eq!(cmd[..4], ["timeout", "20", "sh", "-c"]);
        assert_eq!(cmd[4], HBA_APPEND_SCRIPT);
        assert_eq!(
            cmd[5..],
            [
                "sh",
                "/var/lib/postgresql/data/pg_hba.conf",
                HBA_COMMENT,
                &lines[0],
                &lines[1]
            ]
        );
        // Nothing of the values is in the script itself.
        assert!(!HBA_APPEND_SCRIPT.contains("replication"));
        assert!(EXEC_INNER_SECONDS < EXEC_TIMEOUT.as_secs());
    }

    /// The script, run by a real `sh` on a scratch file: appends once, is idempotent, ends an
    /// unterminated last line first, and fails on a missing file.
    #[test]
    fn the_append_script_is_idempotent() {
        let dir = std::env::temp_dir().join(format!("adopt-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pg_hba.conf");
        std::fs::write(&file, "host all all all scram-sha-256").unwrap();
        let lines = vec!["host replication \"r\" 172.18.0.0/16 scram-sha-256".to_string()];
        let run = |file: &std::path::Path| {
            let cmd = hba_append_command(file.to_str().unwrap(), &lines);
            std::process::Command::new(&cmd[2])
                .args(&cmd[3..])
                .output()
                .unwrap()
        };
        let first = run(&file);
        assert!(first.status.success(), "{first:?}");
        assert!(String::from_utf8_lossy(&first.stdout).contains("appended: "));
        let second = run(&file);
        assert!(second.status.success());
        assert!(String::from_utf8_lossy(&second.stdout).contains("already present"));
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            text,
            format!(
                "host all all all scram-sha-256\n{HBA_COMMENT}\n{}\n",
                lines[0]
            )
        );
        assert!(!run(&dir.join("missing.conf")).status.success());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
