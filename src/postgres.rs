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
    /// A row without a column the query selects, or with a value of the wrong kind there: a
    /// server (or something posing as one) answering another question than the one asked.
    #[error("node {node} answered the {query} query with a row lacking a usable {column}")]
    UnexpectedRow {
        node: String,
        query: &'static str,
        column: &'static str,
    },
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

pub use crate::cluster::PgState;

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

/// The columns of the probe query, by name.
pub const PROBE_COLUMNS: [&str; 10] = [
    "in_recovery",
    "system_identifier",
    "timeline",
    "current_lsn",
    "receive_lsn",
    "replay_lsn",
    "receiver_status",
    "sender_host",
    "user_databases",
    "replay_paused",
];

/// The columns of the `pg_stat_replication` query, by name.
pub const REPLICATION_COLUMNS: [&str; 5] = [
    "application_name",
    "state",
    "lag_bytes",
    "lag_seconds",
    "sync_state",
];

/// The columns of the `pg_replication_slots` query, by name.
pub const SLOT_COLUMNS: [&str; 4] = ["slot_name", "active", "wal_status", "retained_bytes"];

/// The first of `expected` that the row does not have.
pub fn first_missing(
    expected: &[&'static str],
    has: impl Fn(&str) -> bool,
) -> Option<&'static str> {
    expected.iter().copied().find(|c| !has(c))
}

/// A server row as the parsers below read it: column name → text, `None` for SQL NULL. The row
/// must carry every expected column first, so a short row is an error and never a row of NULLs
/// (a missing `in_recovery` would otherwise read as "primary", a missing `user_databases` as
/// "nobody's data here").
pub fn columns<'r>(
    node: &str,
    query: &'static str,
    row: &'r tokio_postgres::SimpleQueryRow,
    expected: &[&'static str],
) -> Result<impl Fn(&str) -> Option<&'r str> + 'r, PgError> {
    if let Some(column) = first_missing(expected, |c| row.try_get(c).is_ok()) {
        return Err(PgError::UnexpectedRow {
            node: node.to_string(),
            query,
            column,
        });
    }
    Ok(move |c: &str| row.try_get(c).ok().flatten())
}

/// Typed reads of one row; every failure names the query and the column.
struct Fields<'n, G> {
    node: &'n str,
    query: &'static str,
    get: G,
}

impl<'r, G: Fn(&str) -> Option<&'r str>> Fields<'_, G> {
    fn bad(&self, column: &'static str) -> PgError {
        PgError::UnexpectedRow {
            node: self.node.to_string(),
            query: self.query,
            column,
        }
    }

    fn nullable(&self, column: &'static str) -> Option<&'r str> {
        (self.get)(column)
    }

    fn text(&self, column: &'static str) -> Result<&'r str, PgError> {
        self.nullable(column).ok_or_else(|| self.bad(column))
    }

    fn flag(&self, column: &'static str) -> Result<bool, PgError> {
        match self.text(column)? {
            "t" => Ok(true),
            "f" => Ok(false),
            _ => Err(self.bad(column)),
        }
    }

    /// NULL is `None`; text that does not parse is an error, not a default.
    fn parsed<T: std::str::FromStr>(&self, column: &'static str) -> Result<Option<T>, PgError> {
        self.nullable(column)
            .map(|v| v.parse().map_err(|_| self.bad(column)))
            .transpose()
    }

    fn lsn(&self, column: &'static str) -> Result<Option<u64>, PgError> {
        self.nullable(column)
            .map(|v| parse_lsn(v).ok_or_else(|| self.bad(column)))
            .transpose()
    }
}

/// The probe's row (see [`PROBE_COLUMNS`]) as a [`PgState`].
pub fn parse_probe<'r>(
    node: &str,
    get: impl Fn(&str) -> Option<&'r str>,
) -> Result<PgState, PgError> {
    let f = Fields {
        node,
        query: "probe",
        get,
    };
    let in_recovery = f.flag("in_recovery")?;
    let system_identifier = f
        .parsed("system_identifier")?
        .ok_or_else(|| f.bad("system_identifier"))?;
    let timeline = f.parsed("timeline")?.unwrap_or(0);
    let current = f.lsn("current_lsn")?;
    let receive_lsn = f.lsn("receive_lsn")?;
    let replay_lsn = f.lsn("replay_lsn")?;
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
        streaming: f.nullable("receiver_status") == Some("streaming"),
        upstream_host: f.nullable("sender_host").map(str::to_string),
        user_databases: f
            .nullable("user_databases")
            .map(|s| s.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
        wal_receiver_paused: f.flag("replay_paused")?,
    })
}

/// One row of the `pg_stat_replication` query (see [`REPLICATION_COLUMNS`]).
pub fn parse_replica<'r>(
    node: &str,
    get: impl Fn(&str) -> Option<&'r str>,
) -> Result<ReplicaStat, PgError> {
    let f = Fields {
        node,
        query: "pg_stat_replication",
        get,
    };
    Ok(ReplicaStat {
        application_name: f.text("application_name")?.to_string(),
        // NULL for a walsender that has not said who it is yet.
        state: f.nullable("state").unwrap_or_default().to_string(),
        replay_lag_bytes: f.parsed::<i64>("lag_bytes")?.unwrap_or(0).max(0) as u64,
        replay_lag_seconds: f.parsed("lag_seconds")?.unwrap_or(0.0),
        sync_state: f.nullable("sync_state").unwrap_or_default().to_string(),
    })
}

/// One row of the `pg_replication_slots` query (see [`SLOT_COLUMNS`]).
pub fn parse_slot<'r>(node: &str, get: impl Fn(&str) -> Option<&'r str>) -> Result<Slot, PgError> {
    let f = Fields {
        node,
        query: "pg_replication_slots",
        get,
    };
    Ok(Slot {
        name: f.text("slot_name")?.to_string(),
        active: f.flag("active")?,
        wal_status: f.text("wal_status")?.to_string(),
        retained_bytes: f.parsed::<i64>("retained_bytes")?.map(|v| v.max(0) as u64),
    })
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
        if let Some(client) = self.client.take().filter(|c| !c.is_closed()) {
            return Ok(self.client.insert(client));
        }
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
        Ok(self.client.insert(client))
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
        const SQL: &str = "SELECT pg_is_in_recovery() AS in_recovery, \
              (SELECT system_identifier FROM pg_control_system())::text AS system_identifier, \
              CASE WHEN pg_is_in_recovery() \
                   THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), \
                                 (SELECT timeline_id FROM pg_control_checkpoint())) \
                   ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int \
              END AS timeline, \
              CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END AS current_lsn, \
              pg_last_wal_receive_lsn() AS receive_lsn, pg_last_wal_replay_lsn() AS replay_lsn, \
              (SELECT status FROM pg_stat_wal_receiver) AS receiver_status, \
              (SELECT sender_host FROM pg_stat_wal_receiver) AS sender_host, \
              (SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database \
                 WHERE datname NOT IN ('postgres', 'template0', 'template1')) AS user_databases, \
              CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END \
                AS replay_paused";
        let rows = self.query(SQL, timeout).await?;
        let row = rows
            .first()
            .ok_or_else(|| self.unexpected("probe returned no row"))?;
        let state = parse_probe(
            self.name(),
            columns(self.name(), "probe", row, &PROBE_COLUMNS)?,
        );
        state
    }

    /// The primary's view of its standbys, keyed by application_name.
    pub async fn replication(
        &mut self,
        timeout: Duration,
    ) -> Result<HashMap<String, ReplicaStat>, PgError> {
        const SQL: &str = "SELECT application_name, state, \
              coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint AS lag_bytes, \
              coalesce(extract(epoch from replay_lag), 0)::float8 AS lag_seconds, sync_state \
              FROM pg_stat_replication";
        let rows = self.query(SQL, timeout).await?;
        let node = self.name();
        rows.iter()
            .map(|r| {
                let stat = parse_replica(
                    node,
                    columns(node, "pg_stat_replication", r, &REPLICATION_COLUMNS)?,
                )?;
                Ok((stat.application_name.clone(), stat))
            })
            .collect()
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
        match rows.first().and_then(|r| r.try_get(0).ok().flatten()) {
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
            "SELECT slot_name, active, coalesce(wal_status, '') AS wal_status, \
               CASE WHEN pg_is_in_recovery() THEN NULL \
                    ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
               END AS retained_bytes \
             FROM pg_replication_slots \
             WHERE slot_type = 'physical' AND starts_with(slot_name::text, {})",
            sql_literal(prefix)
        );
        let rows = self.query(&sql, timeout).await?;
        let node = self.name();
        rows.iter()
            .map(|r| {
                parse_slot(
                    node,
                    columns(node, "pg_replication_slots", r, &SLOT_COLUMNS)?,
                )
            })
            .collect()
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
            .and_then(|r| r.try_get(0).ok().flatten())
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

    fn lookup<'a>(row: &'a [(&'a str, Option<&'a str>)]) -> impl Fn(&str) -> Option<&'a str> {
        move |c| row.iter().find(|(k, _)| *k == c).and_then(|(_, v)| *v)
    }

    fn column_of(e: PgError) -> &'static str {
        match e {
            PgError::UnexpectedRow { column, .. } => column,
            other => panic!("expected UnexpectedRow, got {other}"),
        }
    }

    const STANDBY: [(&str, Option<&str>); 10] = [
        ("in_recovery", Some("t")),
        ("system_identifier", Some("7300000000000000001")),
        ("timeline", Some("2")),
        ("current_lsn", None),
        ("receive_lsn", Some("0/3000100")),
        ("replay_lsn", Some("0/3000060")),
        ("receiver_status", Some("streaming")),
        ("sender_host", Some("pg-0")),
        ("user_databases", Some("app,shop")),
        ("replay_paused", Some("f")),
    ];

    #[test]
    fn probe_row_parses() {
        let s = parse_probe("pg-1", lookup(&STANDBY)).unwrap();
        assert!(s.in_recovery && s.streaming && !s.wal_receiver_paused);
        assert_eq!(s.system_identifier, 7300000000000000001);
        assert_eq!((s.timeline, s.lsn), (2, 0x3000100));
        assert_eq!(s.upstream_host.as_deref(), Some("pg-0"));
        assert_eq!(s.user_databases, ["app", "shop"]);
    }

    #[test]
    fn short_or_garbage_probe_rows_are_errors_not_a_primary() {
        // An empty row must not read as a primary with no data on it.
        assert_eq!(
            column_of(parse_probe("pg-1", |_| None).unwrap_err()),
            "in_recovery"
        );
        for (column, garbage) in [
            ("in_recovery", "yes"),
            ("system_identifier", "-1"),
            ("timeline", "two"),
            ("receive_lsn", "3000100"),
            ("replay_paused", ""),
        ] {
            let mut row = STANDBY;
            row.iter_mut().find(|(k, _)| *k == column).unwrap().1 = Some(garbage);
            let e = parse_probe("pg-1", lookup(&row)).unwrap_err();
            assert_eq!(column_of(e), column);
        }
        let mut row = STANDBY;
        row[1].1 = None;
        assert_eq!(
            column_of(parse_probe("pg-1", lookup(&row)).unwrap_err()),
            "system_identifier"
        );
    }

    #[test]
    fn a_row_missing_a_selected_column_is_named() {
        let have = ["in_recovery", "system_identifier"];
        assert_eq!(
            first_missing(&PROBE_COLUMNS, |c| have.contains(&c)),
            Some("timeline")
        );
        assert_eq!(first_missing(&SLOT_COLUMNS, |_| true), None);
        let e = PgError::UnexpectedRow {
            node: "pg-1".into(),
            query: "probe",
            column: "timeline",
        };
        assert_eq!(
            e.to_string(),
            "node pg-1 answered the probe query with a row lacking a usable timeline"
        );
    }

    #[test]
    fn replication_rows_parse_and_reject_garbage() {
        let row = [
            ("application_name", Some("pg-1")),
            ("state", Some("streaming")),
            ("lag_bytes", Some("-5")),
            ("lag_seconds", Some("0.25")),
            ("sync_state", Some("quorum")),
        ];
        let r = parse_replica("pg-0", lookup(&row)).unwrap();
        assert_eq!(r.application_name, "pg-1");
        assert_eq!((r.replay_lag_bytes, r.replay_lag_seconds), (0, 0.25));
        assert_eq!(r.sync_state, "quorum");
        assert_eq!(
            column_of(parse_replica("pg-0", |_| None).unwrap_err()),
            "application_name"
        );
        let mut bad = row;
        bad[2].1 = Some("lots");
        assert_eq!(
            column_of(parse_replica("pg-0", lookup(&bad)).unwrap_err()),
            "lag_bytes"
        );
    }

    #[test]
    fn slot_rows_parse_and_reject_garbage() {
        let row = [
            ("slot_name", Some("sidecar_pg_1")),
            ("active", Some("t")),
            ("wal_status", Some("reserved")),
            ("retained_bytes", Some("4096")),
        ];
        let s = parse_slot("pg-0", lookup(&row)).unwrap();
        assert_eq!(s.name, "sidecar_pg_1");
        assert!(s.active);
        assert_eq!(s.retained_bytes, Some(4096));
        let mut standby = row;
        standby[3].1 = None;
        assert_eq!(
            parse_slot("pg-0", lookup(&standby)).unwrap().retained_bytes,
            None
        );
        assert_eq!(
            column_of(parse_slot("pg-0", lookup(&row[..1])).unwrap_err()),
            "active"
        );
        let mut bad = row;
        bad[1].1 = Some("maybe");
        assert_eq!(
            column_of(parse_slot("pg-0", lookup(&bad)).unwrap_err()),
            "active"
        );
    }
}
