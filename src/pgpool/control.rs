//! Talking to the running pgpool: `SHOW POOL_NODES` over SQL and the PCP tools.
//!
//! Reads: pgpool's node table, once per probe interval. Changes: attaches and detaches backends
//! (`pcp_attach_node` / `pcp_detach_node`) on demand. A PCP call that pgpool refuses because a
//! failover is in progress, or that gets no answer, is retried with back-off until its deadline.

use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::pgpool::conf::{Paths, PCP_HOST};
use crate::postgres::{Endpoint, PgError, Session};
use crate::reaper::{Output, Reaper};

#[derive(Debug, thiserror::Error)]
pub enum PgpoolError {
    #[error("pgpool did not answer SHOW POOL_NODES: {0}")]
    NotAnswering(#[from] PgError),
    /// A row without a column pgpool shows (the same 14 from 4.3 to 4.7), or with garbage in
    /// it: another pgpool version, or something else answering on its port.
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

/// One row of `SHOW POOL_NODES` (its columns are the same in pgpool 4.3, 4.6 and 4.7).
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
            // Informational only, and not always bytes: from 4.4, with `delay_threshold_by_time`
            // set, pgpool shows seconds (`0.000000 second`). Not worth failing the table over.
            replication_delay: get("replication_delay")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            replication_state: get("replication_state").unwrap_or("").to_string(),
            load_balance_node: get("load_balance_node") == Some("true"),
        })
    }
}

/// The PCP tool's success line, `<program> -- Command Successful`, on stdout.
const PCP_SUCCESS: &str = " -- Command Successful";

/// What a PCP tool run came to.
#[derive(Debug, PartialEq, Eq)]
pub enum PcpOutcome {
    /// pgpool did it, or the node already is as asked.
    Done,
    /// pgpool is busy with another node operation: worth asking again.
    Busy(String),
    /// pgpool answered no; asking again would get the same answer.
    Refused(String),
    /// No answer from pgpool: the tool could not connect or log in, or died.
    NoAnswer(String),
}

/// Classifies a run of `command` (pcp_attach_node, pcp_detach_node). The exit status alone does
/// not say: the pcp_* tools (4.3 to 4.7 alike, src/tools/pcp/pcp_frontend_client.c) exit 1 when
/// they cannot connect or log in, but exit 0 when pgpool refuses the command itself, printing
/// `ERROR:  <message>` on stderr. Success is exit 0 with the success line.
pub fn pcp_outcome(command: &str, out: &Output) -> PcpOutcome {
    let succeeded = out
        .stdout
        .lines()
        .any(|l| l.trim_end().ends_with(PCP_SUCCESS));
    let message = format!("{} {}", out.stdout.trim(), out.stderr.trim())
        .trim()
        .to_string();
    if out.code != 0 {
        return PcpOutcome::NoAnswer(if message.is_empty() {
            format!("exited with status {}", out.code)
        } else {
            message
        });
    }
    if succeeded {
        return PcpOutcome::Done;
    }
    if message.is_empty() {
        return PcpOutcome::Refused("exited 0 without reporting success".into());
    }
    // pgpool_internal_comms.c: a detach of a node pgpool has down or unused already.
    if command == "pcp_detach_node" && message.contains("is not valid for failover") {
        return PcpOutcome::Done;
    }
    // pcp_worker.c: "failover is in progress", "failback is in progress", ….
    if message.contains("is in progress") {
        return PcpOutcome::Busy(message);
    }
    PcpOutcome::Refused(message)
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

    /// Runs a PCP command for a node; retried with back-off while pgpool is busy or does not
    /// answer, until `deadline`. A refusal ends it at once.
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
                .args(["-h", PCP_HOST, "-p", &self.pcp_port.to_string()])
                .args(["-U", &self.pcp_user, "-w", "-n", &node.to_string()])
                .args(extra);
            let message = match self.reaper.output(&mut cmd, Duration::from_secs(10)).await {
                Ok(out) => match pcp_outcome(command, &out) {
                    PcpOutcome::Done => return Ok(()),
                    PcpOutcome::Refused(message) => {
                        return Err(PgpoolError::Pcp {
                            command,
                            node,
                            message,
                        })
                    }
                    PcpOutcome::Busy(message) | PcpOutcome::NoAnswer(message) => message,
                },
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
    fn pcp_success_needs_the_success_line_not_only_exit_0() {
        use PcpOutcome::*;
        let out = |code: i32, stdout: &str, stderr: &str| Output {
            code,
            stdout: stdout.into(),
            stderr: stderr.into(),
        };
        let not_valid = "ERROR:  invalid degenerate backend request, node id : 1 status: [3] is \
                         not valid for failover\n";
        let in_progress = "ERROR:  failed to process PCP request at the moment\nDETAIL:  \
                           failover is in progress\n";
        let cases = [
            (
                "pcp_attach_node",
                out(0, "pcp_attach_node -- Command Successful\n", ""),
                Done,
            ),
            (
                "pcp_detach_node",
                out(0, "pcp_detach_node -- Command Successful\n", ""),
                Done,
            ),
            // pgpool refused: exit 0 all the same. Detaching a node pgpool has down is done.
            ("pcp_detach_node", out(0, "", not_valid), Done),
            (
                "pcp_attach_node",
                out(0, "", not_valid),
                Refused(not_valid.trim().into()),
            ),
            (
                "pcp_detach_node",
                out(0, "", "ERROR:  invalid degenerate backend request, node id: 9 is out of range\n"),
                Refused("ERROR:  invalid degenerate backend request, node id: 9 is out of range".into()),
            ),
            (
                "pcp_attach_node",
                out(0, "", in_progress),
                Busy(in_progress.trim().into()),
            ),
            (
                "pcp_attach_node",
                out(0, "", ""),
                Refused("exited 0 without reporting success".into()),
            ),
            // Could not connect or log in.
            (
                "pcp_attach_node",
                out(1, "", "ERROR: connection to host \"127.0.0.1\" failed with error \"Connection refused\"\n"),
                NoAnswer("ERROR: connection to host \"127.0.0.1\" failed with error \"Connection refused\"".into()),
            ),
            ("pcp_detach_node", out(1, "", ""), NoAnswer("exited with status 1".into())),
            // A success line from a run that still failed is not a success.
            (
                "pcp_attach_node",
                out(1, "pcp_attach_node -- Command Successful\n", ""),
                NoAnswer("pcp_attach_node -- Command Successful".into()),
            ),
            ("pcp_attach_node", out(137, "", ""), NoAnswer("exited with status 137".into())),
        ];
        for (command, output, want) in cases {
            assert_eq!(pcp_outcome(command, &output), want, "{command} {output:?}");
        }
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
