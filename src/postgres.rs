//! SQL probes and actions on the PostgreSQL nodes.
//!
//! Reads: role, timeline, LSNs, system identifier, user databases, replication state of each node.
//! Changes: promotes a standby, re-points a standby's `primary_conninfo`, sets
//! `synchronous_standby_names` on the primary; adopting a plain primary, creates or alters the
//! replication role, grants it pg_rewind's functions, reloads, sets `wal_log_hints`. Probes run
//! once per probe interval for every node; actions run on demand. Every call has a timeout; a
//! connection that timed out is dropped, so a hung server never blocks the next probe.

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

pub use crate::cluster::adopt::{HbaRule, RoleFacts, ServerFacts};
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
    /// The cached connection runs with [`QUIET`]: a statement holding a secret may go on it.
    quiet: bool,
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
pub const PROBE_COLUMNS: [&str; 12] = [
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
    "client_backends",
    "max_connections",
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

/// The columns of the adoption's server query, by name.
pub const SERVER_FACT_COLUMNS: [&str; 8] = [
    "in_recovery",
    "system_identifier",
    "hba_file",
    "data_directory",
    "ssl",
    "wal_log_hints",
    "data_checksums",
    "wal_log_hints_pending",
];

/// The columns of the replication role query, by name.
pub const ROLE_COLUMNS: [&str; 5] = [
    "can_login",
    "replication",
    "superuser",
    "scram_password",
    "missing_grants",
];

/// The columns of the `pg_hba_file_rules` query, by name.
pub const HBA_COLUMNS: [&str; 8] = [
    "line_number",
    "type",
    "database",
    "user_name",
    "address",
    "netmask",
    "auth_method",
    "error",
];

/// Session settings that keep the server from logging the text of the statements that follow
/// (on error, when slow, when sampled): used before a statement that holds a secret. PostgreSQL
/// logs `log_statement = ddl` statements before running them, so these go first, in a query of
/// their own: one string, so that all of them are in force on the one connection it ran on.
const QUIET: &str = "SET log_min_error_statement = panic; SET log_statement = 'none'; \
    SET log_min_duration_statement = -1; SET log_min_duration_sample = -1; \
    SET log_transaction_sample_rate = 0";

/// Put before a statement that commits a catalog change on a primary that may not have its
/// synchronous standby yet (synchronous mode, a cluster still being built): without it the
/// commit waits for a standby that can only join once the change is there. The change still
/// reaches the standbys by streaming. Only for the implicit transaction of the same query.
const COMMIT_LOCALLY: &str = "SET LOCAL synchronous_commit = local; ";

/// Undoes [`QUIET`] for the rest of a session.
const UNQUIET: &str = "RESET log_min_error_statement; RESET log_statement; \
    RESET log_min_duration_statement; RESET log_min_duration_sample; \
    RESET log_transaction_sample_rate";

/// What a role statement expects of the role it names.
#[derive(Clone, Copy)]
enum RoleIs {
    /// Absent: create it; one created meanwhile is left as it is.
    Absent,
    /// Absent: create it; one created meanwhile is altered.
    AbsentElseAlter,
    /// There: alter it.
    Present,
}

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

    /// A boolean setting as `current_setting` prints it.
    fn on_off(&self, column: &'static str) -> Result<bool, PgError> {
        match self.text(column)? {
            "on" => Ok(true),
            "off" => Ok(false),
            _ => Err(self.bad(column)),
        }
    }

    /// A text array sent as JSON (`array_to_json(…)::text`); NULL is empty.
    fn json_list(&self, column: &'static str) -> Result<Vec<String>, PgError> {
        self.nullable(column)
            .map(|v| serde_json::from_str::<Vec<String>>(v).map_err(|_| self.bad(column)))
            .transpose()
            .map(Option::unwrap_or_default)
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
        client_backends: f
            .parsed("client_backends")?
            .ok_or_else(|| f.bad("client_backends"))?,
        max_connections: f
            .parsed("max_connections")?
            .ok_or_else(|| f.bad("max_connections"))?,
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

/// The adoption's server row (see [`SERVER_FACT_COLUMNS`]).
pub fn parse_server_facts<'r>(
    node: &str,
    get: impl Fn(&str) -> Option<&'r str>,
) -> Result<ServerFacts, PgError> {
    let f = Fields {
        node,
        query: "server facts",
        get,
    };
    Ok(ServerFacts {
        in_recovery: f.flag("in_recovery")?,
        system_identifier: f
            .parsed("system_identifier")?
            .ok_or_else(|| f.bad("system_identifier"))?,
        hba_file: f.text("hba_file")?.to_string(),
        data_directory: f.text("data_directory")?.to_string(),
        ssl: f.on_off("ssl")?,
        wal_log_hints: f.on_off("wal_log_hints")?,
        data_checksums: f.on_off("data_checksums")?,
        wal_log_hints_pending: f.flag("wal_log_hints_pending")?,
    })
}

/// The replication role's row (see [`ROLE_COLUMNS`]).
pub fn parse_role<'r>(
    node: &str,
    get: impl Fn(&str) -> Option<&'r str>,
) -> Result<RoleFacts, PgError> {
    let f = Fields {
        node,
        query: "replication role",
        get,
    };
    Ok(RoleFacts {
        can_login: f.flag("can_login")?,
        replication: f.flag("replication")?,
        superuser: f.flag("superuser")?,
        scram_password: f.flag("scram_password")?,
        missing_grants: f.json_list("missing_grants")?,
    })
}

/// One row of `pg_hba_file_rules` (see [`HBA_COLUMNS`]); an error row has NULLs but its line
/// and error.
pub fn parse_hba_rule<'r>(
    node: &str,
    get: impl Fn(&str) -> Option<&'r str>,
) -> Result<HbaRule, PgError> {
    let f = Fields {
        node,
        query: "pg_hba_file_rules",
        get,
    };
    Ok(HbaRule {
        line: f.parsed("line_number")?,
        kind: f.nullable("type").map(str::to_string),
        databases: f.json_list("database")?,
        users: f.json_list("user_name")?,
        address: f.nullable("address").map(str::to_string),
        netmask: f.nullable("netmask").map(str::to_string),
        method: f.nullable("auth_method").map(str::to_string),
        error: f.nullable("error").map(str::to_string),
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
            quiet: false,
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
        // A new connection has the server's log settings, whatever the old one had.
        self.quiet = false;
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
        self.run(sql, timeout, true).await
    }

    /// Runs a statement that holds a secret on the connection [`Session::quiet`] just made
    /// quiet: never on a new connection, which would not have those settings, and never retried.
    async fn query_quietly(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<Vec<tokio_postgres::SimpleQueryRow>, PgError> {
        self.run(sql, timeout, false).await
    }

    async fn run(
        &mut self,
        sql: &str,
        timeout: Duration,
        may_connect: bool,
    ) -> Result<Vec<tokio_postgres::SimpleQueryRow>, PgError> {
        let node = self.endpoint.name.clone();
        let started = tokio::time::Instant::now();
        let client = if may_connect {
            self.client(timeout).await?
        } else {
            match self
                .client
                .as_ref()
                .filter(|c| self.quiet && !c.is_closed())
            {
                Some(c) => c,
                None => {
                    return Err(PgError::Connection {
                        node,
                        message: "the connection closed before a statement that must not be logged"
                            .into(),
                    })
                }
            }
        };
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
                AS replay_paused, \
              (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') \
                AS client_backends, \
              current_setting('max_connections') AS max_connections";
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

    /// pgpool's sessions on this node, as (encrypted, plain). pgpool runs in the sidecar's
    /// container, so its sessions come from the address this session comes from; the sidecar's
    /// own sessions (by their application_name) are left out.
    pub async fn pgpool_sessions_tls(&mut self, timeout: Duration) -> Result<(u64, u64), PgError> {
        const SQL: &str =
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
              FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
              WHERE a.backend_type = 'client backend' AND a.client_addr = inet_client_addr() \
              AND a.application_name <> 'pgpool-sidecar' AND a.pid <> pg_backend_pid()";
        let rows = self.query(SQL, timeout).await?;
        let count = |i: usize| {
            rows.first()
                .and_then(|r| r.try_get(i).ok().flatten())
                .and_then(|v: &str| v.parse::<u64>().ok())
        };
        match (count(0), count(1)) {
            (Some(e), Some(p)) => Ok((e, p)),
            _ => Err(self.unexpected("pg_stat_ssl returned no counts")),
        }
    }

    /// The primary's walsenders as (`application_name`, encrypted).
    pub async fn replication_tls(
        &mut self,
        timeout: Duration,
    ) -> Result<Vec<(String, bool)>, PgError> {
        const SQL: &str = "SELECT r.application_name, s.ssl \
              FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)";
        let rows = self.query(SQL, timeout).await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let name: &str = r.try_get(0).ok().flatten()?;
                let ssl: &str = r.try_get(1).ok().flatten()?;
                Some((name.to_owned(), ssl == "t"))
            })
            .collect())
    }

    /// Promotes this standby and waits until it accepts writes. The wait is polled here in
    /// 10 ms steps: `pg_promote(wait => true)` looks only every 100 ms, and a promotion takes
    /// about 30 ms, so its own wait alone would hold every write of a failover 70 ms longer.
    pub async fn promote(&mut self, timeout: Duration) -> Result<(), PgError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let rows = self
            .query("SELECT pg_promote(wait => false)", timeout)
            .await?;
        if rows.first().and_then(|r| r.try_get(0).ok().flatten()) != Some("t") {
            return Err(PgError::PromoteFailed(self.endpoint.name.clone()));
        }
        // A request that reaches the startup process just as its walreceiver has died (about
        // 0.1 s after a kill of the primary) can go unseen until its retry wait ends:
        // `wal_retrieve_retry_interval`, 5 s by default (seen: promote request at +0.13 s,
        // promotion at +5.1 s). Asking again while it is still in recovery wakes it.
        const ASK_AGAIN: Duration = Duration::from_millis(250);
        let mut asked = tokio::time::Instant::now();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(PgError::PromoteFailed(self.endpoint.name.clone()));
            }
            let rows = self.query("SELECT pg_is_in_recovery()", left).await?;
            if rows.first().and_then(|r| r.try_get(0).ok().flatten()) == Some("f") {
                return Ok(());
            }
            if asked.elapsed() >= ASK_AGAIN {
                asked = tokio::time::Instant::now();
                // Finished meanwhile: pg_promote would fail, hence the guard; any failure here
                // is left to the next look.
                let again = self
                    .query(
                        "SELECT CASE WHEN pg_is_in_recovery() THEN pg_promote(wait => false) ELSE true END",
                        left,
                    )
                    .await;
                tracing::debug!(node = %self.endpoint.name, ok = again.is_ok(), "promotion asked again");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
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
        self.quiet(timeout).await?;
        let pgdata = self.show("data_directory", timeout).await?;
        let path = format!("{}/{PASSFILE}", pgdata.trim_end_matches('/'));
        // CSV with delimiter and quote characters no line holds: the line is written as it is
        // (text format would double its backslashes). The server's umask makes it 0600, which
        // libpq insists on.
        if passfile_line.contains(['\x01', '\x02', '\n', '\r']) {
            return Err(self.unexpected("the replication password cannot go into a password file"));
        }
        self.query_quietly(
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

    /// Stops the server from logging this session's statements (see [`QUIET`]).
    async fn quiet(&mut self, timeout: Duration) -> Result<(), PgError> {
        self.query(QUIET, timeout).await?;
        self.quiet = self.client.is_some();
        Ok(())
    }

    pub async fn reload(&mut self, timeout: Duration) -> Result<(), PgError> {
        self.query("SELECT pg_reload_conf()", timeout).await?;
        Ok(())
    }

    /// What the adoption needs to know of the server, in one round trip.
    pub async fn server_facts(&mut self, timeout: Duration) -> Result<ServerFacts, PgError> {
        const SQL: &str = "SELECT pg_is_in_recovery() AS in_recovery, \
              (SELECT system_identifier FROM pg_control_system())::text AS system_identifier, \
              current_setting('hba_file') AS hba_file, \
              current_setting('data_directory') AS data_directory, \
              current_setting('ssl') AS ssl, \
              current_setting('wal_log_hints') AS wal_log_hints, \
              current_setting('data_checksums') AS data_checksums, \
              (SELECT pending_restart FROM pg_settings WHERE name = 'wal_log_hints') \
                AS wal_log_hints_pending";
        let rows = self.query(SQL, timeout).await?;
        let row = rows
            .first()
            .ok_or_else(|| self.unexpected("server facts returned no row"))?;
        let node = self.name();
        let facts = parse_server_facts(
            node,
            columns(node, "server facts", row, &SERVER_FACT_COLUMNS)?,
        );
        facts
    }

    /// The role `user` (None: there is none), with which of `functions` it may not execute.
    pub async fn role(
        &mut self,
        user: &str,
        functions: &[&str],
        timeout: Duration,
    ) -> Result<Option<RoleFacts>, PgError> {
        let list: Vec<String> = functions.iter().map(|f| sql_literal(f)).collect();
        // Only whether the password is a SCRAM verifier leaves the server, never the verifier.
        let sql = format!(
            "SELECT r.rolcanlogin AS can_login, r.rolreplication AS replication, \
               r.rolsuper AS superuser, \
               coalesce(starts_with(a.rolpassword, 'SCRAM-SHA-256$'), false) AS scram_password, \
               array_to_json(ARRAY(SELECT f FROM unnest(ARRAY[{}]::text[]) AS f \
                 WHERE NOT has_function_privilege(r.oid, f, 'EXECUTE')))::text AS missing_grants \
             FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid WHERE r.rolname = {}",
            list.join(", "),
            sql_literal(user)
        );
        let rows = self.query(&sql, timeout).await?;
        let node = self.name();
        rows.first()
            .map(|r| parse_role(node, columns(node, "replication role", r, &ROLE_COLUMNS)?))
            .transpose()
    }

    /// Creates `user` as a replication role whose password is `verifier`, a SCRAM-SHA-256
    /// verifier computed by the caller: the clear password never travels or lands in a log.
    /// The statement is not logged either (see [`QUIET`]). True when this call created it; a
    /// role created meanwhile by someone else is left as it is.
    pub async fn create_replication_role(
        &mut self,
        user: &str,
        verifier: &Secret,
        timeout: Duration,
    ) -> Result<bool, PgError> {
        self.role_with_verifier(user, verifier, "REPLICATION LOGIN", RoleIs::Absent, timeout)
            .await
    }

    /// Every role but the built-in `pg_*` ones: name, whether it may log in, and its stored
    /// password. The stored value is a verifier (or md5 hash), kept as a secret: it is compared
    /// with a declared password here and never shown.
    pub async fn roles_with_passwords(
        &mut self,
        timeout: Duration,
    ) -> Result<Vec<(String, bool, Option<Secret>)>, PgError> {
        let rows = self
            .query(
                "SELECT rolname, rolcanlogin, rolpassword FROM pg_authid \
                 WHERE rolname !~ '^pg_' ORDER BY rolname",
                timeout,
            )
            .await?;
        let node = self.name().to_string();
        rows.iter()
            .map(|r| {
                let get = columns(
                    &node,
                    "roles",
                    r,
                    &["rolname", "rolcanlogin", "rolpassword"],
                )?;
                let name =
                    get("rolname").ok_or_else(|| self.unexpected("a role without a name"))?;
                Ok((
                    name.to_string(),
                    get("rolcanlogin") == Some("t"),
                    get("rolpassword").map(Secret::new),
                ))
            })
            .collect()
    }

    /// Makes `user` a login role whose password is `verifier` (a SCRAM-SHA-256 verifier
    /// computed by the caller): created when `create`, else altered. Neither the clear password
    /// nor the statement reaches the server's log (see [`QUIET`]). A role created meanwhile by
    /// someone else is altered instead.
    pub async fn set_login_password(
        &mut self,
        user: &str,
        verifier: &Secret,
        create: bool,
        timeout: Duration,
    ) -> Result<(), PgError> {
        let role = if create {
            RoleIs::AbsentElseAlter
        } else {
            RoleIs::Present
        };
        self.role_with_verifier(user, verifier, "LOGIN", role, timeout)
            .await
            .map(|_| ())
    }

    /// Creates or alters `user` with `attrs` and the password `verifier`, the session quiet
    /// for the statement. True when this call created the role.
    async fn role_with_verifier(
        &mut self,
        user: &str,
        verifier: &Secret,
        attrs: &str,
        role: RoleIs,
        timeout: Duration,
    ) -> Result<bool, PgError> {
        if !verifier.expose().starts_with("SCRAM-SHA-256$") {
            return Err(self.unexpected("refusing a password that is not a SCRAM verifier"));
        }
        let statement = |verb: &str| {
            format!(
                "{COMMIT_LOCALLY}{verb} ROLE {} WITH {attrs} PASSWORD {}",
                sql_ident(user),
                sql_literal(verifier.expose())
            )
        };
        self.quiet(timeout).await?;
        let result = match role {
            RoleIs::Present => self
                .query_quietly(&statement("ALTER"), timeout)
                .await
                .map(|_| false),
            RoleIs::Absent | RoleIs::AbsentElseAlter => {
                match self.query_quietly(&statement("CREATE"), timeout).await {
                    // Created meanwhile by someone else.
                    Err(PgError::Query { code, .. })
                        if code.as_deref() == Some(SQLSTATE_DUPLICATE_OBJECT) =>
                    {
                        match role {
                            RoleIs::AbsentElseAlter => self
                                .query_quietly(&statement("ALTER"), timeout)
                                .await
                                .map(|_| false),
                            _ => Ok(false),
                        }
                    }
                    other => other.map(|_| true),
                }
            }
        };
        // Back to the server's log settings for whatever this session runs next (after a
        // failure the connection, and its settings with it, are gone already).
        self.quiet = false;
        if let Err(e) = self.query(UNQUIET, timeout).await {
            tracing::debug!(node = %self.name(), error = %e, "cannot reset the session's log settings");
        }
        result
    }

    /// Adds REPLICATION and/or LOGIN to an existing role; its password is left alone.
    pub async fn alter_role(
        &mut self,
        user: &str,
        replication: bool,
        login: bool,
        timeout: Duration,
    ) -> Result<(), PgError> {
        let attrs: Vec<&str> = [(replication, "REPLICATION"), (login, "LOGIN")]
            .into_iter()
            .filter_map(|(want, a)| want.then_some(a))
            .collect();
        if attrs.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "{COMMIT_LOCALLY}ALTER ROLE {} WITH {}",
            sql_ident(user),
            attrs.join(" ")
        );
        self.query(&sql, timeout).await?;
        Ok(())
    }

    /// `GRANT EXECUTE ON FUNCTION function TO user`; `function` is a signature such as
    /// `pg_catalog.pg_stat_file(text, boolean)` (checked, it cannot be quoted).
    pub async fn grant_execute(
        &mut self,
        user: &str,
        function: &str,
        timeout: Duration,
    ) -> Result<(), PgError> {
        let plain = function
            .chars()
            .all(|c| c.is_ascii_lowercase() || "_.(), ".contains(c));
        if !plain {
            return Err(self.unexpected(format!("refusing function name {function:?}")));
        }
        let sql = format!(
            "{COMMIT_LOCALLY}GRANT EXECUTE ON FUNCTION {function} TO {}",
            sql_ident(user)
        );
        self.query(&sql, timeout).await?;
        Ok(())
    }

    /// The rules of the server's pg_hba.conf as the file reads now (not necessarily what was
    /// last loaded), in the order they are matched.
    pub async fn hba_rules(&mut self, timeout: Duration) -> Result<Vec<HbaRule>, PgError> {
        const SQL: &str = "SELECT line_number, type, \
              array_to_json(database)::text AS database, \
              array_to_json(user_name)::text AS user_name, \
              address, netmask, auth_method, error \
            FROM pg_hba_file_rules";
        let rows = self.query(SQL, timeout).await?;
        let node = self.name();
        rows.iter()
            .map(|r| parse_hba_rule(node, columns(node, "pg_hba_file_rules", r, &HBA_COLUMNS)?))
            .collect()
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

    const STANDBY: [(&str, Option<&str>); 12] = [
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
        ("client_backends", Some("7")),
        ("max_connections", Some("100")),
    ];

    #[test]
    fn probe_row_parses() {
        let s = parse_probe("pg-1", lookup(&STANDBY)).unwrap();
        assert!(s.in_recovery && s.streaming && !s.wal_receiver_paused);
        assert_eq!(s.system_identifier, 7300000000000000001);
        assert_eq!((s.timeline, s.lsn), (2, 0x3000100));
        assert_eq!(s.upstream_host.as_deref(), Some("pg-0"));
        assert_eq!(s.user_databases, ["app", "shop"]);
        assert_eq!((s.client_backends, s.max_connections), (7, 100));
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
            ("client_backends", "-1"),
            ("max_connections", "many"),
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
    fn adoption_rows_parse_and_reject_garbage() {
        let server = [
            ("in_recovery", Some("f")),
            ("system_identifier", Some("7300000000000000001")),
            ("hba_file", Some("/var/lib/postgresql/data/pg_hba.conf")),
            ("data_directory", Some("/var/lib/postgresql/data")),
            ("ssl", Some("off")),
            ("wal_log_hints", Some("off")),
            ("data_checksums", Some("on")),
            ("wal_log_hints_pending", Some("t")),
        ];
        let f = parse_server_facts("pg-0", lookup(&server)).unwrap();
        assert!(!f.in_recovery && !f.ssl && !f.wal_log_hints);
        assert!(f.data_checksums && f.wal_log_hints_pending);
        assert_eq!(f.system_identifier, 7300000000000000001);
        assert_eq!(f.hba_file, "/var/lib/postgresql/data/pg_hba.conf");
        for (column, garbage) in [("ssl", "t"), ("in_recovery", "off"), ("hba_file", "")] {
            let mut row = server;
            row.iter_mut().find(|(k, _)| *k == column).unwrap().1 =
                Some(garbage).filter(|g| !g.is_empty());
            let e = parse_server_facts("pg-0", lookup(&row)).unwrap_err();
            assert_eq!(column_of(e), column);
        }

        let role = [
            ("can_login", Some("t")),
            ("replication", Some("f")),
            ("superuser", Some("f")),
            ("scram_password", Some("t")),
            (
                "missing_grants",
                Some(r#"["pg_catalog.pg_stat_file(text, boolean)"]"#),
            ),
        ];
        let r = parse_role("pg-0", lookup(&role)).unwrap();
        assert!(r.can_login && !r.replication && !r.superuser && r.scram_password);
        assert_eq!(r.missing_grants, ["pg_catalog.pg_stat_file(text, boolean)"]);
        let mut bad = role;
        bad[4].1 = Some("{pg_stat_file}");
        assert_eq!(
            column_of(parse_role("pg-0", lookup(&bad)).unwrap_err()),
            "missing_grants"
        );

        let hba = [
            ("line_number", Some("128")),
            ("type", Some("host")),
            ("database", Some(r#"["replication"]"#)),
            ("user_name", Some(r#"["a \"b\"","all"]"#)),
            ("address", Some("172.18.0.0")),
            ("netmask", Some("255.255.0.0")),
            ("auth_method", Some("scram-sha-256")),
            ("error", None),
        ];
        let h = parse_hba_rule("pg-0", lookup(&hba)).unwrap();
        assert_eq!(h.line, Some(128));
        assert_eq!(h.kind.as_deref(), Some("host"));
        assert_eq!(h.databases, ["replication"]);
        assert_eq!(h.users, ["a \"b\"", "all"]);
        assert_eq!(h.netmask.as_deref(), Some("255.255.0.0"));
        // An error row: only its line and error.
        let error_row = [
            ("line_number", Some("130")),
            ("error", Some("invalid IP address \"x\"")),
        ];
        let e = parse_hba_rule("pg-0", lookup(&error_row)).unwrap();
        assert_eq!(e.line, Some(130));
        assert!(e.databases.is_empty() && e.kind.is_none());
        assert_eq!(e.error.as_deref(), Some("invalid IP address \"x\""));
        let mut bad = hba;
        bad[0].1 = Some("one");
        assert_eq!(
            column_of(parse_hba_rule("pg-0", lookup(&bad)).unwrap_err()),
            "line_number"
        );
    }

    #[test]
    fn a_quiet_statement_never_goes_on_a_new_connection() {
        // No connection at all: refused before anything is sent.
        let mut s = Session::new(Endpoint {
            name: "pg-0".into(),
            host: "127.0.0.1".into(),
            port: 1,
            user: "postgres".into(),
            password: Secret::new("pw"),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(s.query_quietly("SELECT 1", Duration::from_millis(100)))
            .unwrap_err();
        assert!(matches!(e, PgError::Connection { .. }), "{e}");
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
