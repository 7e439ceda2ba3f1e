//! Talking to the running pgpool: `SHOW POOL_NODES` over SQL and the PCP tools.
//!
//! Reads: pgpool's node table, once per probe interval. Changes: attaches and detaches backends
//! (`pcp_attach_node` / `pcp_detach_node`) on demand. A PCP call that pgpool refuses because a
//! failover is in progress is retried with back-off until its deadline.

use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::pgpool::conf::Paths;
use crate::postgres::{Endpoint, PgError, Session};
use crate::reaper::Reaper;

#[derive(Debug, thiserror::Error)]
pub enum PgpoolError {
    #[error("pgpool did not answer SHOW POOL_NODES: {0}")]
    NotAnswering(#[from] PgError),
    /// A row without a column pgpool 4.3 shows, or with garbage in it: another pgpool version,
    /// or something else answering on its port.
    #[error("pgpool answered SHOW POOL_NODES with a row lacking a usable {column}")]
    UnexpectedRow { column: &'static str },
    #[error("{command} for node {node} failed: {message}")]
    Pcp {
        command: &'static str,
        node: usize,
        message: String,
    },
}

pub use crate::cluster::PoolStatus;

/// One row of `SHOW POOL_NODES` (pgpool 4.3 columns).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolNode {
    pub node_id: usize,
    pub hostname: String,
    pub port: u16,
    pub status: PoolStatus,
    /// pgpool's idea of the role; `pg_role` is what the backend itself says.
    pub role: String,
    pub pg_role: String,
    pub replication_delay: u64,
    pub replication_state: String,
    pub load_balance_node: bool,
}

impl PoolNode {
    /// Builds a row from a column lookup, so the parser is testable without a server.
    pub fn from_columns<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Self, PgpoolError> {
        let need = |column: &'static str| get(column).ok_or(PgpoolError::UnexpectedRow { column });
        fn parsed<T: std::str::FromStr>(
            column: &'static str,
            value: &str,
        ) -> Result<T, PgpoolError> {
            value
                .parse()
                .map_err(|_| PgpoolError::UnexpectedRow { column })
        }
        Ok(PoolNode {
            node_id: parsed("node_id", need("node_id")?)?,
            hostname: need("hostname")?.to_string(),
            port: parsed("port", need("port")?)?,
            status: PoolStatus::parse(need("status")?)
                .ok_or(PgpoolError::UnexpectedRow { column: "status" })?,
            role: need("role")?.to_string(),
            pg_role: get("pg_role").unwrap_or("unknown").to_string(),
            // Informational only, and its unit changed between pgpool versions: not worth
            // failing the node table over.
            replication_delay: get("replication_delay")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            replication_state: get("replication_state").unwrap_or("").to_string(),
            load_balance_node: get("load_balance_node") == Some("true"),
        })
    }
}

/// pgpool's SQL port and PCP tools, as seen from inside the sidecar's container.
pub struct Pgpool {
    session: tokio::sync::Mutex<Session>,
    reaper: Reaper,
    pcp_port: u16,
    pcp_user: String,
    pcppass: std::path::PathBuf,
}

impl Pgpool {
    pub fn new(cfg: &Config, paths: &Paths, reaper: Reaper) -> Self {
        Pgpool {
            session: tokio::sync::Mutex::new(Session::new(Endpoint {
                name: "pgpool".into(),
                host: "127.0.0.1".into(),
                port: cfg.pgpool_port,
                user: cfg.superuser.clone(),
                password: cfg.superuser_password.clone(),
            })),
            reaper,
            pcp_port: cfg.pcp_port,
            pcp_user: cfg.pcp_user.clone(),
            pcppass: paths.pcppass(),
        }
    }

    pub async fn show_pool_nodes(&self, timeout: Duration) -> Result<Vec<PoolNode>, PgpoolError> {
        let mut session = self.session.lock().await;
        let rows = session.query("SHOW POOL_NODES", timeout).await;
        // pgpool shows a node attached after a session began as `waiting` to that session for
        // as long as it lasts: a fresh session per look reports pgpool's real status table.
        session.disconnect();
        let rows = rows?;
        rows.iter()
            .map(|r| PoolNode::from_columns(|c| r.try_get(c).ok().flatten()))
            .collect()
    }

    /// Runs a PCP command for a node; retried with back-off while pgpool refuses.
    async fn pcp(
        &self,
        command: &'static str,
        node: usize,
        extra: &[&str],
        deadline: Duration,
    ) -> Result<(), PgpoolError> {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            let mut cmd = Command::new(command);
            cmd.env("PCPPASSFILE", &self.pcppass)
                .args(["-h", "localhost", "-p", &self.pcp_port.to_string()])
                .args(["-U", &self.pcp_user, "-w", "-n", &node.to_string()])
                .args(extra);
            let message = match self.reaper.output(&mut cmd, Duration::from_secs(10)).await {
                Ok(out) if out.code == 0 => return Ok(()),
                Ok(out) => format!("{} {}", out.stdout.trim(), out.stderr.trim())
                    .trim()
                    .to_string(),
                Err(e) => e.to_string(),
            };
            if started.elapsed() + delay > deadline {
                return Err(PgpoolError::Pcp {
                    command,
                    node,
                    message,
                });
            }
            tracing::debug!(command, node, %message, "PCP refused; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    pub async fn attach(&self, node: usize, deadline: Duration) -> Result<(), PgpoolError> {
        self.pcp("pcp_attach_node", node, &[], deadline).await
    }

    /// Detaches gracefully (`-g`: waits for sessions to end) only when asked; a failed node is
    /// detached at once.
    pub async fn detach(&self, node: usize, deadline: Duration) -> Result<(), PgpoolError> {
        self.pcp("pcp_detach_node", node, &[], deadline).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn row(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn parses_a_pgpool_43_row() {
        let r = row(&[
            ("node_id", "1"),
            ("hostname", "pg-1"),
            ("port", "5432"),
            ("status", "up"),
            ("pg_status", "up"),
            ("lb_weight", "0.333333"),
            ("role", "standby"),
            ("pg_role", "standby"),
            ("select_cnt", "0"),
            ("load_balance_node", "true"),
            ("replication_delay", "1024"),
            ("replication_state", "streaming"),
            ("replication_sync_state", "async"),
            ("last_status_change", "2026-11-25 19:00:00"),
        ]);
        let n = PoolNode::from_columns(|c| r.get(c).copied()).unwrap();
        assert_eq!(n.node_id, 1);
        assert_eq!(n.hostname, "pg-1");
        assert_eq!(n.status, PoolStatus::Up);
        assert_eq!(n.role, "standby");
        assert_eq!(n.replication_delay, 1024);
        assert_eq!(n.replication_state, "streaming");
        assert!(n.load_balance_node);
    }

    #[test]
    fn parses_every_status_and_rejects_garbage() {
        for s in PoolStatus::ALL {
            let r = row(&[
                ("node_id", "0"),
                ("hostname", "pg-0"),
                ("port", "5432"),
                ("status", s.as_str()),
                ("role", "primary"),
            ]);
            let n = PoolNode::from_columns(|c| r.get(c).copied()).unwrap();
            assert_eq!(n.status, s);
            assert_eq!(n.pg_role, "unknown");
        }
        let r = row(&[
            ("node_id", "x"),
            ("hostname", "pg-0"),
            ("port", "5432"),
            ("status", "up"),
            ("role", "primary"),
        ]);
        assert!(PoolNode::from_columns(|c| r.get(c).copied()).is_err());
        let r = row(&[("node_id", "0"), ("status", "sideways")]);
        assert!(PoolNode::from_columns(|c| r.get(c).copied()).is_err());
    }

    #[test]
    fn short_and_garbage_rows_name_the_column() {
        let column = |r: &HashMap<&str, &str>| match PoolNode::from_columns(|c| r.get(c).copied()) {
            Err(PgpoolError::UnexpectedRow { column }) => column,
            other => panic!("expected UnexpectedRow, got {other:?}"),
        };
        assert_eq!(column(&row(&[])), "node_id");
        assert_eq!(column(&row(&[("node_id", "-1")])), "node_id");
        assert_eq!(column(&row(&[("node_id", "0")])), "hostname");
        let full = [
            ("node_id", "0"),
            ("hostname", "pg-0"),
            ("port", "70000"),
            ("status", "up"),
            ("role", "primary"),
        ];
        assert_eq!(column(&row(&full)), "port");
        let mut short = full;
        short[2].1 = "5432";
        assert_eq!(column(&row(&short[..4])), "role");
        short[3].1 = "sideways";
        assert_eq!(column(&row(&short)), "status");
        assert_eq!(
            PgpoolError::UnexpectedRow { column: "role" }.to_string(),
            "pgpool answered SHOW POOL_NODES with a row lacking a usable role"
        );
    }
}
