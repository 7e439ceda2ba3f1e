//! SQL probes and actions on the PostgreSQL nodes.
//!
//! Reads: role, timeline, LSNs, system identifier, user databases, replication state of each node.
//! Changes: promotes a standby, re-points a standby's `primary_conninfo`, sets
//! `synchronous_standby_names` on the primary. Probes run once per probe interval for every node;
//! actions run on demand. Every call has a timeout; a connection that timed out is dropped, so a
//! hung server never blocks the next probe.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::config::Secret;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("node {node} unreachable: {message}")]
    Unreachable { node: String, message: String },
    #[error("node {node} did not answer within {millis} ms")]
    TimedOut { node: String, millis: u128 },
    #[error("query on node {node} failed: {message}")]
    Query {
        node: String,
        message: String,
        /// SQLSTATE, when the server sent one.
        code: Option<String>,
    },
    #[error("connection to node {node} broke: {message}")]
    Connection { node: String, message: String },
    #[error("node {node} returned an unexpected answer: {message}")]
    Unexpected { node: String, message: String },
    #[error("promotion of node {0} did not complete")]
    PromoteFailed(String),
}

/// Where and as whom to connect to one node.
#[derive(Clone)]
pub struct Endpoint {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
}

impl Endpoint {
    fn config(&self, timeout: Duration) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .password(self.password.expose())
            .dbname("postgres")
            .application_name("pgpool-sidecar")
            .connect_timeout(timeout);
        c
    }
}

/// What one probe saw of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct PgState {
    pub in_recovery: bool,
    pub system_identifier: u64,
    pub timeline: u32,
    /// Primary: current WAL insert position. Standby: the higher of received and replayed.
    pub lsn: u64,
    pub receive_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    /// Standby: whether its WAL receiver is streaming, and from which host.
    pub streaming: bool,
    pub upstream_host: Option<String>,
    /// Databases other than postgres/template0/template1: a cluster with any is somebody's data.
    pub user_databases: Vec<String>,
    pub wal_receiver_paused: bool,
}

/// One row of the primary's `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaStat {
    pub application_name: String,
    pub state: String,
    pub replay_lag_bytes: u64,
    pub replay_lag_seconds: f64,
    pub sync_state: String,
}

/// One of the sidecar's replication slots, as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slot {
    pub name: String,
    /// A standby is streaming through it right now.
    pub active: bool,
    /// `reserved`, `extended`, `unreserved` or `lost` (the guard removed WAL it needed).
    pub wal_status: String,
    /// WAL the slot holds back on the primary (none on a standby).
    pub retained_bytes: Option<u64>,
}

/// A cached connection per node; dropped on any error so the next call reconnects.
pub struct Session {
    endpoint: Endpoint,
    client: Option<Client>,
}

/// Parses `X/Y` (hex) as PostgreSQL prints an LSN.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Quotes a value for a libpq connection string.
pub fn conninfo_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// "duplicate_object": the slot exists already.
const SQLSTATE_DUPLICATE_OBJECT: &str = "42710";

/// Quotes a value for `postgresql.conf` / `postgresql.auto.conf`, where a backslash starts an
/// escape (unlike a standard SQL literal).
pub fn conf_literal(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quotes a SQL string literal.
pub fn sql_literal(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// Quotes an identifier (application names in `synchronous_standby_names`).
pub fn sql_ident(v: &str) -> String {
    format!("\"{}\"", v.replace('"', "\"\""))
}

/// The standby's password file, in its data directory (it survives a container's recreation,
/// like the data): the replication password lives there, never in `primary_conninfo`, which
/// PostgreSQL logs in full on every change ("parameter primary_conninfo changed to …").
pub const PASSFILE: &str = "sidecar.pgpass";

/// The `primary_conninfo` a standby of `primary` uses, without a password: [`with_passfile`]
/// adds where the password is. `application_name` is the node's name so the primary's
/// `pg_stat_replication` and `synchronous_standby_names` can name it.
pub fn primary_conninfo(
    primary_host: &str,
    primary_port: u16,
    user: &str,
    application_name: &str,
) -> String {
    format!(
        "host={} port={} user={} application_name={} connect_timeout=2 keepalives_idle=5 keepalives_interval=2 keepalives_count=3",
        conninfo_quote(primary_host),
        primary_port,
        conninfo_quote(user),
        conninfo_quote(application_name)
    )
}

/// `conninfo` reading its password from the [`PASSFILE`] in data directory `pgdata`.
pub fn with_passfile(conninfo: &str, pgdata: &str) -> String {
    format!(
        "{conninfo} passfile={}",
        conninfo_quote(&format!("{}/{PASSFILE}", pgdata.trim_end_matches('/')))
    )
}

/// The one line of the [`PASSFILE`]: `user`'s password for any primary (the file outlives
/// failovers). `:` and `\` are escaped as libpq's password file wants.
pub fn passfile_line(user: &str, password: &Secret) -> String {
    let esc = |v: &str| v.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:{}:{}", esc(user), esc(password.expose()))
}

fn rows(msgs: Vec<SimpleQueryMessage>) -> Vec<tokio_postgres::SimpleQueryRow> {
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect()
}

impl Session {
    pub fn new(endpoint: Endpoint) -> Self {
        Session {
            endpoint,
            client: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.endpoint.name
    }

    /// Closes the cached connection; the next query opens a new one.
    pub fn disconnect(&mut self) {
        self.client = None;
    }

    async fn client(&mut self, timeout: Duration) -> Result<&Client, PgError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let cfg = self.endpoint.config(timeout);
            let node = self.endpoint.name.clone();
            let (client, conn) = match tokio::time::timeout(timeout, cfg.connect(NoTls)).await {
                Err(_) => {
                    return Err(PgError::TimedOut {
                        node,
                        millis: timeout.as_millis(),
                    })
                }
                Ok(Err(e)) => {
                    return Err(PgError::Unreachable {
                        node,
                        message: e.to_string(),
                    })
                }
                Ok(Ok(v)) => v,
            };
            let task_name = format!("pg-conn-{node}");
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(task = %task_name, error = %e, "connection closed");
                }
            });
            self.client = Some(client);
        }
        Ok(self.client.as_ref().expect("connected above"))
    }

    /// Runs one simple-protocol query with a deadline; drops the connection on failure.
    pub async fn query(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<Vec<tokio_postgres::SimpleQueryRow>, PgError> {
        let had_connection = self.client.is_some();
        match self.query_once(sql, timeout).await {
            // A cached connection may be to a server that restarted since: one fresh try, so a
            // restarted node is not reported down for a pass.
            Err(PgError::Connection { .. }) if had_connection => {
                self.query_once(sql, timeout).await
            }
            other => other,
        }
    }

    async fn query_once(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<Vec<tokio_postgres::SimpleQueryRow>, PgError> {
        let node = self.endpoint.name.clone();
        let started = tokio::time::Instant::now();
        let client = self.client(timeout).await?;
        let left = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(50));
        let result = tokio::time::timeout(left, client.simple_query(sql)).await;
        match result {
            Ok(Ok(msgs)) => Ok(rows(msgs)),
            Ok(Err(e)) => {
                self.client = None;
                Err(PgError::Query {
                    node,
                    message: e
                        .as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_else(|| e.to_string()),
                    code: e.code().map(|c| c.code().to_string()),
                })
            }
            Err(_) => {
                self.client = None;
                Err(PgError::TimedOut {
                    node,
                    millis: timeout.as_millis(),
                })
            }
        }
    }

    fn unexpected(&self, message: impl Into<String>) -> PgError {
        PgError::Unexpected {
            node: self.endpoint.name.clone(),
            message: message.into(),
        }
    }

    /// One probe: role, identity, position and replication state in a single round trip.
    pub async fn probe(&mut self, timeout: Duration) -> Result<PgState, PgError> {
        const SQL: &str = "SELECT pg_is_in_recovery(), \
              (SELECT system_identifier FROM pg_control_system())::text, \
              CASE WHEN pg_is_in_recovery() \
                   THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), \
                                 (SELECT timeline_id FROM pg_control_checkpoint())) \
                   ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
              CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END, \
              pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), \
              (SELECT status FROM pg_stat_wal_receiver), \
              (SELECT sender_host FROM pg_stat_wal_receiver), \
              (SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database \
                 WHERE datname NOT IN ('postgres', 'template0', 'template1')), \
              CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END";
        let rows = self.query(SQL, timeout).await?;
        let row = rows
            .first()
            .ok_or_else(|| self.unexpected("probe returned no row"))?;
        let get = |i: usize| row.get(i).map(str::to_string);
        let in_recovery = get(0).as_deref() == Some("t");
        let system_identifier = get(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.unexpected("no system identifier"))?;
        let timeline = get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
        let current = get(3).as_deref().and_then(parse_lsn);
        let receive_lsn = get(4).as_deref().and_then(parse_lsn);
        let replay_lsn = get(5).as_deref().and_then(parse_lsn);
        let lsn = if in_recovery {
            receive_lsn.unwrap_or(0).max(replay_lsn.unwrap_or(0))
        } else {
            current.unwrap_or(0)
        };
        Ok(PgState {
            in_recovery,
            system_identifier,
            timeline,
            lsn,
            receive_lsn,
            replay_lsn,
            streaming: get(6).as_deref() == Some("streaming"),
            upstream_host: get(7),
            user_databases: get(8)
                .map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            wal_receiver_paused: get(9).as_deref() == Some("t"),
        })
    }

    /// The primary's view of its standbys, keyed by application_name.
    pub async fn replication(
        &mut self,
        timeout: Duration,
    ) -> Result<HashMap<String, ReplicaStat>, PgError> {
        const SQL: &str = "SELECT application_name, state, \
              coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint, \
              coalesce(extract(epoch from replay_lag), 0)::float8, sync_state \
              FROM pg_stat_replication";
        let rows = self.query(SQL, timeout).await?;
        let mut out = HashMap::new();
        for r in rows {
            let name = r.get(0).unwrap_or_default().to_string();
            out.insert(
                name.clone(),
                ReplicaStat {
                    application_name: name,
                    state: r.get(1).unwrap_or_default().to_string(),
                    replay_lag_bytes: r
                        .get(2)
                        .and_then(|s| s.parse::<i64>().ok())
                        .unwrap_or(0)
                        .max(0) as u64,
                    replay_lag_seconds: r.get(3).and_then(|s| s.parse().ok()).unwrap_or(0.0),
                    sync_state: r.get(4).unwrap_or_default().to_string(),
                },
            );
        }
        Ok(out)
    }

    /// Promotes this standby and waits until it accepts writes.
    pub async fn promote(&mut self, timeout: Duration) -> Result<(), PgError> {
        let secs = timeout.as_secs().max(1);
        let rows = self
            .query(
                &format!("SELECT pg_promote(wait => true, wait_seconds => {secs})"),
                timeout + Duration::from_secs(1),
            )
            .await?;
        match rows.first().and_then(|r| r.get(0)) {
            Some("t") => Ok(()),
            _ => Err(PgError::PromoteFailed(self.endpoint.name.clone())),
        }
    }

    /// Points this standby at a new upstream (and its replication slot there, or none);
    /// PostgreSQL 13+ applies both on reload, and `recovery_target_timeline = latest` (the
    /// default) makes it follow the new timeline.
    pub async fn set_upstream(
        &mut self,
        conninfo: &str,
        passfile_line: &str,
        slot: Option<&str>,
        timeout: Duration,
    ) -> Result<(), PgError> {
        // The password file's statement holds the replication password: no log of this session
        // may show a statement, failing or slow.
        for quiet in [
            "SET log_min_error_statement = panic",
            "SET log_statement = 'none'",
            "SET log_min_duration_statement = -1",
        ] {
            self.query(quiet, timeout).await?;
        }
        let pgdata = self.show("data_directory", timeout).await?;
        let path = format!("{}/{PASSFILE}", pgdata.trim_end_matches('/'));
        // CSV with delimiter and quote characters no line holds: the line is written as it is
        // (text format would double its backslashes). The server's umask makes it 0600, which
        // libpq insists on.
        if passfile_line.contains(['\x01', '\x02', '\n', '\r']) {
            return Err(self.unexpected("the replication password cannot go into a password file"));
        }
        self.query(
            &format!(
                "COPY (SELECT {}) TO {} WITH (FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02')",
                sql_literal(passfile_line),
                sql_literal(&path)
            ),
            timeout,
        )
        .await?;
        let conninfo = with_passfile(conninfo, &pgdata);
        self.query(
            &format!(
                "ALTER SYSTEM SET primary_conninfo = {}",
                sql_literal(&conninfo)
            ),
            timeout,
        )
        .await?;
        let slot_sql = match slot {
            Some(name) => format!("ALTER SYSTEM SET primary_slot_name = {}", sql_literal(name)),
            None => "ALTER SYSTEM RESET primary_slot_name".to_string(),
        };
        self.query(&slot_sql, timeout).await?;
        self.query("SELECT pg_reload_conf()", timeout).await?;
        Ok(())
    }

    /// Sets a reloadable server setting with ALTER SYSTEM (it survives restarts and is copied
    /// by pg_basebackup and pg_rewind) and reloads.
    pub async fn set_setting(
        &mut self,
        name: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<(), PgError> {
        // ALTER SYSTEM takes no parameters: the name is checked here, the value quoted.
        if !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return Err(self.unexpected(format!("refusing setting name {name:?}")));
        }
        self.query(
            &format!("ALTER SYSTEM SET {name} = {}", sql_literal(value)),
            timeout,
        )
        .await?;
        self.query("SELECT pg_reload_conf()", timeout).await?;
        Ok(())
    }

    /// Sets `synchronous_standby_names` (empty string: asynchronous) and reloads.
    pub async fn set_synchronous_standbys(
        &mut self,
        value: &str,
        timeout: Duration,
    ) -> Result<(), PgError> {
        self.set_setting("synchronous_standby_names", value, timeout)
            .await
    }

    /// The physical slots whose names start with `prefix`, with how much WAL each holds back.
    pub async fn slots(&mut self, prefix: &str, timeout: Duration) -> Result<Vec<Slot>, PgError> {
        let sql = format!(
            "SELECT slot_name, active, coalesce(wal_status, ''), \
               CASE WHEN pg_is_in_recovery() THEN NULL \
                    ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint END \
             FROM pg_replication_slots \
             WHERE slot_type = 'physical' AND starts_with(slot_name::text, {})",
            sql_literal(prefix)
        );
        let rows = self.query(&sql, timeout).await?;
        Ok(rows
            .iter()
            .map(|r| Slot {
                name: r.get(0).unwrap_or_default().to_string(),
                active: r.get(1) == Some("t"),
                wal_status: r.get(2).unwrap_or_default().to_string(),
                retained_bytes: r
                    .get(3)
                    .and_then(|v| v.parse::<i64>().ok())
                    .map(|v| v.max(0) as u64),
            })
            .collect())
    }

    /// Creates a physical slot that reserves WAL from now on; an existing one is kept. True
    /// when this call created it.
    pub async fn create_slot(&mut self, name: &str, timeout: Duration) -> Result<bool, PgError> {
        let sql = format!(
            "SELECT pg_create_physical_replication_slot({0}, true) \
             WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = {0})",
            sql_literal(name)
        );
        match self.query(&sql, timeout).await {
            // Created meanwhile by another task (failover and the reconcile pass both ensure).
            Err(PgError::Query { code, .. })
                if code.as_deref() == Some(SQLSTATE_DUPLICATE_OBJECT) =>
            {
                Ok(false)
            }
            other => other.map(|rows| !rows.is_empty()),
        }
    }

    /// Drops a slot unless a standby is using it. True when this call dropped it.
    pub async fn drop_slot(&mut self, name: &str, timeout: Duration) -> Result<bool, PgError> {
        let sql = format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = {0} AND NOT active",
            sql_literal(name)
        );
        Ok(!self.query(&sql, timeout).await?.is_empty())
    }

    pub async fn show(&mut self, setting: &str, timeout: Duration) -> Result<String, PgError> {
        let rows = self
            .query(
                &format!("SELECT current_setting({})", sql_literal(setting)),
                timeout,
            )
            .await?;
        rows.first()
            .and_then(|r| r.get(0))
            .map(str::to_string)
            .ok_or_else(|| self.unexpected("no setting value"))
    }
}

/// `ANY n ("a", "b")` over the given standby names; empty when n is 0 or there are none.
pub fn synchronous_standby_names(n: u32, standbys: &[String]) -> String {
    if n == 0 || standbys.is_empty() {
        return String::new();
    }
    let names: Vec<String> = standbys.iter().map(|s| sql_ident(s)).collect();
    format!(
        "ANY {} ({})",
        n.min(standbys.len() as u32),
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn standby_conninfo_has_no_password_and_the_passfile_escapes() {
        let c = primary_conninfo("pg-1", 5432, "repl", "pg-2");
        assert!(!c.contains("password"), "{c}");
        let c = with_passfile(&c, "/var/lib/postgresql/data/");
        assert!(
            c.ends_with(" passfile='/var/lib/postgresql/data/sidecar.pgpass'"),
            "{c}"
        );
        let line = passfile_line("re:pl", &Secret::new("a:b\\c"));
        assert_eq!(line, "*:*:*:re\\:pl:a\\:b\\\\c");
    }

    use super::*;

    #[test]
    fn lsn_round_trips() {
        assert_eq!(parse_lsn("0/3000060"), Some(0x3000060));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert_eq!(format_lsn(0x1_0300_0060), "1/3000060");
        assert_eq!(parse_lsn("garbage"), None);
    }

    #[test]
    fn quoting_escapes_quotes() {
        assert_eq!(conninfo_quote("a'b\\c"), "'a\\'b\\\\c'");
        assert_eq!(sql_literal("it's"), "'it''s'");
        assert_eq!(sql_ident("pg\"1"), "\"pg\"\"1\"");
        assert_eq!(conf_literal("a'b\\c"), "'a''b\\\\c'");
    }

    #[test]
    fn sync_names() {
        let s = vec!["pg-1".to_string(), "pg-2".to_string()];
        assert_eq!(synchronous_standby_names(0, &s), "");
        assert_eq!(
            synchronous_standby_names(1, &s),
            "ANY 1 (\"pg-1\", \"pg-2\")"
        );
        assert_eq!(
            synchronous_standby_names(3, &s),
            "ANY 2 (\"pg-1\", \"pg-2\")"
        );
        assert_eq!(synchronous_standby_names(1, &[]), "");
    }
}
