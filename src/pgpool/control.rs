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
    #[error("{command}{} failed: {message}", node.map(|n| format!(" for node {n}")).unwrap_or_default())]
    Pcp {
        command: &'static str,
        /// None for a command about pgpool as a whole (pcp_reload_config).
        node: Option<usize>,
        message: String,
    },
    #[error("{command} failed: {message}")]
    PcpRead {
        command: &'static str,
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

/// pgpool's client slots: each child process serves one client at a time, so once all
/// `num_init_children` children have one the next client waits in the listen backlog (or is
/// refused, "sorry, too many clients already", with `reserved_connections` set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClientSlots {
    /// Child processes pgpool reported (`num_init_children` once all are forked).
    pub children: u32,
    /// Children serving a client: any status but `Wait for connection`.
    pub in_use: u32,
}

/// Reads `pcp_proc_info --all --verbose` (the same in pgpool 4.3 to 4.7,
/// src/tools/pcp/pcp_frontend_client.c): one block of `<title padded> : <value>` lines per
/// child × pool slot × backend, `PID` before `Status`, the status being the child's own
/// (src/utils/pool_process_reporting.c: `Wait for connection`, `Execute command`, `Idle`,
/// `Idle in transaction`, `Connecting` from 4.4). Verbose, because the terse form separates
/// fields by spaces that fields such as `Start time` also hold, and 4.5 and 4.7 added columns.
/// Only lines titled `PID` or `Status` are read, each `Status` paired with the `PID` just before
/// it: 4.7's last field, `statement`, is a client's query text and may span lines.
pub fn parse_proc_info(stdout: &str) -> Result<ClientSlots, String> {
    let mut children: std::collections::BTreeMap<&str, bool> = Default::default();
    let mut pid: Option<&str> = None;
    for line in stdout.lines() {
        let Some((title, value)) = line.split_once(" : ") else {
            continue;
        };
        match title.trim_end() {
            "PID" => {
                let v = value.trim();
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!(
                        "pcp_proc_info printed a PID that is not one: {v:?}"
                    ));
                }
                pid = Some(v);
            }
            "Status" => {
                // A `Status` line with no `PID` before it is a line of a query's text.
                let Some(p) = pid.take() else { continue };
                let status = value.trim();
                // An empty status is one pgpool has no name for: not counted as a client.
                let busy = !status.is_empty() && status != "Wait for connection";
                *children.entry(p).or_default() |= busy;
            }
            _ => {}
        }
    }
    if children.is_empty() && !stdout.contains("No process information available") {
        return Err(format!(
            "pcp_proc_info printed no child process: {:?}",
            stdout.chars().take(200).collect::<String>()
        ));
    }
    Ok(ClientSlots {
        children: children.len() as u32,
        in_use: children.values().filter(|b| **b).count() as u32,
    })
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

    /// A PCP tool aimed at this pgpool as the PCP user, its password from the pcppass file.
    fn pcp_command(&self, command: &str) -> Command {
        let mut cmd = Command::new(command);
        cmd.env("PCPPASSFILE", &self.pcppass)
            .args(["-h", PCP_HOST, "-p", &self.pcp_port.to_string()])
            .args(["-U", &self.pcp_user, "-w"]);
        cmd
    }

    /// Runs a PCP command for a node; retried with back-off while pgpool is busy or does not
    /// answer, until `deadline`. A refusal ends it at once.
    async fn pcp(
        &self,
        command: &'static str,
        node: Option<usize>,
        extra: &[&str],
        deadline: Duration,
    ) -> Result<(), PgpoolError> {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            let mut cmd = self.pcp_command(command);
            if let Some(node) = node {
                cmd.args(["-n", &node.to_string()]);
            }
            cmd.args(extra);
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

    /// pgpool's client slots, through PCP: PCP has a process of its own, so this answers while
    /// every child is taken, when a SQL session through pgpool would wait for a free one. One
    /// try; the caller samples again on its next tick.
    pub async fn client_slots(&self, timeout: Duration) -> Result<ClientSlots, PgpoolError> {
        const COMMAND: &str = "pcp_proc_info";
        let fail = |message: String| PgpoolError::PcpRead {
            command: COMMAND,
            message,
        };
        let mut cmd = self.pcp_command(COMMAND);
        cmd.args(["--all", "--verbose"]);
        let out = self
            .reaper
            .output(&mut cmd, timeout)
            .await
            .map_err(|e| fail(e.to_string()))?;
        // Exit 0 with `ERROR:` on stderr is a refusal (see [`pcp_outcome`]).
        if out.code != 0 || out.stderr.contains("ERROR") {
            return Err(fail(
                format!("status {}: {}", out.code, out.stderr.trim())
                    .trim_end_matches(": ")
                    .to_string(),
            ));
        }
        parse_proc_info(&out.stdout).map_err(fail)
    }

    /// Attaches `node` once: nothing is asked when pgpool uses it already, and after asking it
    /// waits (within `deadline`) until pgpool shows it in use, so that the caller's next look
    /// does not ask again. Every failback request, even one pgpool then refuses, holds every
    /// query pgpool receives meanwhile for a whole second (it waits out failovers in 1 s sleeps).
    pub async fn attach(&self, node: usize, deadline: Duration) -> Result<(), PgpoolError> {
        let started = std::time::Instant::now();
        if self.uses(node).await == Some(true) {
            return Ok(());
        }
        self.pcp("pcp_attach_node", Some(node), &[], deadline)
            .await?;
        while started.elapsed() < deadline {
            if self.uses(node).await == Some(true) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Whether pgpool has `node` up (or waiting for its first session), so routes to it;
    /// `None` when pgpool does not say. Asked through PCP: a SQL session through pgpool would
    /// wait out a failback in progress (a whole second), PCP reads pgpool's status at once.
    async fn uses(&self, node: usize) -> Option<bool> {
        let mut cmd = self.pcp_command("pcp_node_info");
        cmd.args(["-n", &node.to_string()]);
        let out = self
            .reaper
            .output(&mut cmd, Duration::from_secs(5))
            .await
            .ok()?;
        if out.code != 0 {
            return None;
        }
        node_in_use(&out.stdout)
    }

    /// Detaches `node` at once; nothing is asked when pgpool does not use it (a request for a
    /// node already down still holds every query for pgpool's 1 s, see [`Self::attach`]).
    pub async fn detach(&self, node: usize, deadline: Duration) -> Result<(), PgpoolError> {
        if self.uses(node).await == Some(false) {
            return Ok(());
        }
        self.pcp("pcp_detach_node", Some(node), &[], deadline).await
    }

    /// Makes pgpool read its files again (pool_passwd, pool_hba.conf, pgpool.conf's reloadable
    /// settings) without a restart: every child reopens pool_passwd, sessions stay.
    pub async fn reload(&self, deadline: Duration) -> Result<(), PgpoolError> {
        self.pcp("pcp_reload_config", None, &[], deadline).await
    }
}

/// `pcp_node_info`'s line (`hostname port status weight …`): status 1 (up, no session yet) and
/// 2 (up) are in use, 3 (down) is not; anything else is not an answer.
pub fn node_in_use(stdout: &str) -> Option<bool> {
    match stdout.split_whitespace().nth(2)? {
        "1" | "2" => Some(true),
        "3" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn pcp_node_info_status_is_read_from_its_third_field() {
        let up = "pg-1 5432 2 0.333333 up up standby standby 0 none none 2026-12-02 18:00:00\n";
        assert_eq!(node_in_use(up), Some(true));
        let waiting =
            "pg-1 5432 1 0.333333 waiting up standby standby 0 none none 2026-12-02 18:00:00\n";
        assert_eq!(node_in_use(waiting), Some(true));
        let down =
            "pg-0 5432 3 0.333333 down down standby unknown 0 none none 2026-12-02 18:00:00\n";
        assert_eq!(node_in_use(down), Some(false));
        assert_eq!(node_in_use(""), None);
        assert_eq!(node_in_use("pg-0 5432 0 0.3 init"), None);
    }

    fn row(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    /// `pcp_proc_info --all --verbose` as pgpool prints it: `titles` padded to the longest,
    /// one block per (pid, status, statement) row.
    fn proc_info(titles: &[&str], rows: &[(&str, &str, &str)]) -> String {
        let width = titles.iter().map(|t| t.len()).max().unwrap();
        let mut out = String::new();
        for (pid, status, statement) in rows {
            for t in titles {
                let v = match *t {
                    "PID" => pid,
                    "Status" => status,
                    "statement" => statement,
                    "Start time" => "2026-12-02 07:00:00 (4:59 before process restarting)",
                    "Database" if *status == "Wait for connection" => "",
                    "Database" => "postgres",
                    _ => "0",
                };
                out.push_str(&format!("{t:<width$} : {v}\n"));
            }
            out.push('\n');
        }
        out
    }

    const TITLES_43: [&str; 16] = [
        "Database",
        "Username",
        "Start time",
        "Client connection count",
        "Major",
        "Minor",
        "Backend connection time",
        "Client connection time",
        "Client idle duration",
        "Client disconnection time",
        "Pool Counter",
        "Backend PID",
        "Connected",
        "PID",
        "Backend ID",
        "Status",
    ];

    #[test]
    fn proc_info_counts_children_serving_a_client() {
        let mut titles_46 = TITLES_43.to_vec();
        titles_46.push("Load balance node");
        let mut titles_47 = titles_46.clone();
        titles_47.extend(["client_host", "client_port", "statement"]);
        // Two backends × max_pool 2: four rows per child, all with the child's status.
        let rows: Vec<(&str, &str, &str)> = [
            ("101", "Wait for connection"),
            ("102", "Idle"),
            ("103", "Execute command"),
            ("104", "Idle in transaction"),
            ("105", "Connecting"),
            ("106", "Wait for connection"),
        ]
        .iter()
        .flat_map(|(p, s)| std::iter::repeat_n((*p, *s, "SELECT 1"), 4))
        .collect();
        let want = ClientSlots {
            children: 6,
            in_use: 4,
        };
        for titles in [&TITLES_43[..], &titles_46, &titles_47] {
            assert_eq!(parse_proc_info(&proc_info(titles, &rows)), Ok(want));
        }
        // 4.7 shows the client's statement, which may span lines that look like fields.
        let sneaky = "SELECT 1\nStatus                    : Idle\n\nPID : x";
        let text = proc_info(&titles_47, &[("201", "Wait for connection", sneaky)]);
        assert!(
            parse_proc_info(&text).is_err(),
            "a PID that is not a number"
        );
        let sneaky = "SELECT 1\nStatus                    : Idle\n";
        let text = proc_info(&titles_47, &[("201", "Wait for connection", sneaky)]);
        assert_eq!(
            parse_proc_info(&text),
            Ok(ClientSlots {
                children: 1,
                in_use: 0
            })
        );
        // pgpool has no child (all exited, being forked again).
        assert_eq!(
            parse_proc_info("No process information available\n\n"),
            Ok(ClientSlots {
                children: 0,
                in_use: 0
            })
        );
        // Something else: the terse format, or nothing.
        assert!(parse_proc_info("postgres postgres 2026-12-02 07:00:00 1 3 0\n").is_err());
        assert!(parse_proc_info("").is_err());
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
