//! Test harness: a real compose cluster per test, under its own project name and host ports,
//! removed with its volumes and job containers when the test ends — also when it panics.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub mod felt;

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Distinct, recognisable secrets, so a test can check that none leaks.
pub const PASSWORD: &str = "sUper-s3cret-pw";
pub const REPLICATION_PASSWORD: &str = "rEpl-s3cret-pw";
pub const PCP_PASSWORD: &str = "pCp-s3cret-pw";
pub const API_TOKEN: &str = "tOken-s3cret-0123456789";
pub const SECRETS: [&str; 4] = [PASSWORD, REPLICATION_PASSWORD, PCP_PASSWORD, API_TOKEN];

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A port free on 127.0.0.1 below the ephemeral range (32768 and up on Linux), where Docker
/// also picks the nodes' random host ports: a port chosen there could be handed to a node
/// between this check and `compose up`. Spread by process id and a counter so parallel test
/// binaries rarely try the same ones.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 1000) * 12;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (20_000 + (base - 20_000 + n) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000 on 127.0.0.1");
}

/// Runs a command, returning (exit code, stdout, stderr).
pub fn sh(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("command runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Polls `f` until it returns Some or the deadline passes; panics with `what` on timeout.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Which node image the e2e tests run on: `PGPOOL_SIDECAR_TEST_NODES` = `17` (the default),
/// `15`, `18`, `official` (the official-like image, PostgreSQL 17, `FLAVOR=official`) or
/// `official18` (the same for PostgreSQL 18). The
/// version matrix of tests/run-all.sh sets it; every image comes from docker/build-images.sh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nodes {
    /// Short name, part of each cluster's compose project name (and so of its log file).
    pub tag: &'static str,
    pub image: &'static str,
    /// Where the node's named volume is mounted (compose's PG_VOLUME_DIR).
    pub volume_dir: &'static str,
    /// PGDATA relative to the volume's root ("" when the volume is PGDATA itself).
    pub data_in_volume: &'static str,
    /// The PostgreSQL major version the image runs.
    pub major: u32,
    /// A node's first start already has wal_log_hints or data checksums: false only for the
    /// official-like image before 18, whose first primary the sidecar can fix only for its next
    /// start — so that primary is rebuilt, not rewound, after its first failover.
    pub rewindable_from_init: bool,
}

pub const NODES_17: Nodes = Nodes {
    tag: "pg17",
    image: "pgpool-sidecar-postgres:17",
    volume_dir: "/var/lib/postgresql/data",
    data_in_volume: "",
    major: 17,
    rewindable_from_init: true,
};

pub const NODES_OFFICIAL: Nodes = Nodes {
    tag: "off17",
    image: "pgpool-sidecar-postgres-official:17",
    rewindable_from_init: false,
    ..NODES_17
};

pub const NODES_18: Nodes = Nodes {
    tag: "pg18",
    image: "pgpool-sidecar-postgres:18",
    volume_dir: "/var/lib/postgresql",
    data_in_volume: "18/docker",
    major: 18,
    rewindable_from_init: true,
};

/// The official-like image of PostgreSQL 18: the 18 layout, data checksums on by initdb.
pub const NODES_OFFICIAL_18: Nodes = Nodes {
    tag: "off18",
    image: "pgpool-sidecar-postgres-official:18",
    ..NODES_18
};

pub fn nodes() -> Nodes {
    match std::env::var("PGPOOL_SIDECAR_TEST_NODES").as_deref() {
        Err(_) | Ok("") | Ok("17") => NODES_17,
        Ok("15") => Nodes {
            tag: "pg15",
            image: "pgpool-sidecar-postgres:15",
            major: 15,
            ..NODES_17
        },
        Ok("18") => NODES_18,
        Ok("official") => NODES_OFFICIAL,
        Ok("official18") => NODES_OFFICIAL_18,
        Ok(other) => {
            panic!("PGPOOL_SIDECAR_TEST_NODES={other}: expected 15, 17, 18, official or official18")
        }
    }
}

/// `PGPOOL_SIDECAR_TEST_COMPOSE=v2` runs Compose v2 (`docker compose`, the plugin that
/// docker/compose-v2.sh puts under target/docker-cli) instead of v1's `docker-compose`.
pub fn compose_v2() -> bool {
    match std::env::var("PGPOOL_SIDECAR_TEST_COMPOSE").as_deref() {
        Err(_) | Ok("") | Ok("v1") => false,
        Ok("v2") => true,
        Ok(other) => panic!("PGPOOL_SIDECAR_TEST_COMPOSE={other}: expected v1 or v2"),
    }
}

pub struct Cluster {
    pub project: String,
    pub pgpool_port: u16,
    pub http_port: u16,
    pub prometheus_port: u16,
    pub nodes: Nodes,
    name: String,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
    profiles: Vec<String>,
}

impl Cluster {
    fn project_name(name: &str, nodes: &Nodes) -> String {
        format!(
            "pgst{}{}{}{}",
            name.replace(|c: char| !c.is_ascii_alphanumeric(), ""),
            nodes.tag,
            if compose_v2() { "v2" } else { "" },
            std::process::id()
        )
    }

    pub fn new(name: &str) -> Self {
        Cluster {
            project: Self::project_name(name, &nodes()),
            name: name.to_string(),
            pgpool_port: free_port(),
            http_port: free_port(),
            prometheus_port: free_port(),
            nodes: nodes(),
            files: vec![repo().join("compose/docker-compose.yml")],
            env: vec![
                ("POSTGRES_PASSWORD".into(), PASSWORD.into()),
                ("REPLICATION_PASSWORD".into(), REPLICATION_PASSWORD.into()),
                ("PCP_PASSWORD".into(), PCP_PASSWORD.into()),
                ("SIDECAR_API_TOKEN".into(), API_TOKEN.into()),
            ],
            profiles: vec![],
        }
    }

    pub fn file(mut self, path: &str) -> Self {
        self.files.push(repo().join(path));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Runs this cluster on `nodes` whatever the matrix says (tests of one image's behaviour).
    pub fn with_nodes(mut self, nodes: Nodes) -> Self {
        self.nodes = nodes;
        self.project = Self::project_name(&self.name, &nodes);
        self
    }

    pub fn profile(mut self, p: &str) -> Self {
        self.profiles.push(p.into());
        self
    }

    pub fn compose(&self) -> Command {
        let mut c = if compose_v2() {
            let mut c = Command::new("docker");
            c.env("DOCKER_CONFIG", repo().join("target/docker-cli"))
                .arg("compose");
            c
        } else {
            Command::new("docker-compose")
        };
        c.arg("-p").arg(&self.project);
        c.env("PG_IMAGE", self.nodes.image)
            .env("PG_VOLUME_DIR", self.nodes.volume_dir);
        for f in &self.files {
            c.arg("-f").arg(f);
        }
        for p in &self.profiles {
            c.arg("--profile").arg(p);
        }
        c.env("PGPOOL_PORT", self.pgpool_port.to_string())
            .env("SIDECAR_HTTP_PORT", self.http_port.to_string())
            .env("PROMETHEUS_PORT", self.prometheus_port.to_string());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Starts the stack and waits until the sidecar reports ready (pgpool answers, primary known)
    /// and every standby of `expect_standbys` is attached.
    pub async fn up(self) -> Self {
        let (code, out, err) = sh(self.compose().args(["up", "-d", "--no-build"]));
        assert_eq!(code, 0, "compose up failed:\n{out}\n{err}");
        let url = format!("http://127.0.0.1:{}/readyz", self.http_port);
        let started = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(120) {
                self.dump_logs();
                panic!("cluster {} not ready within 120 s", self.project);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!(
            "[{}] ready in {:.1} s",
            self.project,
            started.elapsed().as_secs_f64()
        );
        self
    }

    /// Full logs go to target/e2e-logs/<project>.log; the sidecar's last lines to stderr.
    pub fn dump_logs(&self) {
        self.save_logs(true)
    }

    fn save_logs(&self, print: bool) {
        let (_, out, err) = sh(self.compose().args(["logs", "--no-color", "--timestamps"]));
        let dir = repo().join("target/e2e-logs");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{}.log", self.project));
        let _ = std::fs::write(&path, format!("{out}\n{err}"));
        if !print {
            return;
        }
        // The sidecar's and pgpool's lines without PCP's per-call chatter, and the nodes'
        // errors (why a standby does not stream, say), in time order: Compose prints each
        // container's lines as a block, with the Docker timestamp after the `|`.
        let mut sidecar: Vec<&str> = out
            .lines()
            .filter(|l| {
                // Compose v1 prefixes `pgpool_1`, v2 `pgpool-1`.
                let pgpool = l.starts_with("pgpool_1") || l.starts_with("pgpool-1");
                let noise = [
                    "child pid",
                    "fork a new",
                    "pcp worker",
                    "PCP process with pid",
                ];
                let node_error = l.starts_with("pg-")
                    && ["FATAL", "ERROR", "PANIC"].iter().any(|w| l.contains(w));
                (pgpool && !noise.iter().any(|n| l.contains(n))) || node_error
            })
            .collect();
        sidecar.sort_by_key(|l| l.split_once("| ").map(|(_, rest)| rest).unwrap_or(l));
        let tail = &sidecar[sidecar.len().saturating_sub(80)..];
        eprintln!(
            "---- sidecar log tail of {} (full logs: {}) ----\n{}",
            self.project,
            path.display(),
            tail.join("\n")
        );
    }

    /// A figure the test measured: printed, and kept in target/e2e-logs/figures.txt, which
    /// tests/summary.sh prints at the end of a run (passing tests' output is not shown).
    pub fn figure(&self, text: &str) {
        use std::io::Write;
        eprintln!("{text}");
        let dir = repo().join("target/e2e-logs");
        let _ = std::fs::create_dir_all(&dir);
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("figures.txt"))
        {
            let _ = writeln!(f, "{}: {text}", self.project);
        }
    }

    pub fn container(&self, service: &str) -> String {
        let (_, out, _) = sh(self.compose().args(["ps", "-q", service]));
        out.trim().to_string()
    }

    /// Container id of a service even when it is stopped.
    pub fn container_any(&self, service: &str) -> String {
        let (_, out, _) = sh(Command::new("docker").args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ]));
        out.lines().next().unwrap_or("").trim().to_string()
    }

    pub fn inspect(&self, service: &str, format: &str) -> String {
        let (_, out, _) = sh(Command::new("docker").args([
            "inspect",
            "-f",
            format,
            &self.container_any(service),
        ]));
        out.trim().to_string()
    }

    pub fn node_port(&self, service: &str) -> Option<u16> {
        let (_, out, _) = sh(self.compose().args(["port", service, "5432"]));
        out.trim().rsplit(':').next()?.parse().ok()
    }

    pub async fn connect_port(port: u16) -> Option<Client> {
        let cfg = format!(
            "host=127.0.0.1 port={port} user=postgres password={PASSWORD} dbname=postgres connect_timeout=3"
        );
        let (client, conn) =
            tokio::time::timeout(Duration::from_secs(4), tokio_postgres::connect(&cfg, NoTls))
                .await
                .ok()?
                .ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Some(client)
    }

    pub async fn pgpool(&self) -> Option<Client> {
        Self::connect_port(self.pgpool_port).await
    }

    pub async fn node(&self, service: &str) -> Option<Client> {
        Self::connect_port(self.node_port(service)?).await
    }

    pub async fn http(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://127.0.0.1:{}{path}", self.http_port))
            .await
            .expect("sidecar HTTP answers");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// A mutating API call (with the API token) left running: its answer may be lost with a
    /// sidecar the test kills meanwhile.
    pub fn post_in_background(&self, path: &str) -> tokio::task::JoinHandle<()> {
        let url = format!("http://127.0.0.1:{}{path}", self.http_port);
        tokio::spawn(async move {
            let _ = reqwest::Client::new()
                .post(url)
                .bearer_auth(API_TOKEN)
                .send()
                .await;
        })
    }

    /// POST to the sidecar's API with `token` (None: no Authorization header).
    pub async fn post(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let client = reqwest::Client::new();
        let mut req = client.post(format!("http://127.0.0.1:{}{path}", self.http_port));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("sidecar HTTP answers");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    pub async fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.http("/status").await.1).expect("status is JSON")
    }

    pub fn logs(&self, service: &str) -> String {
        let (_, out, err) = sh(Command::new("docker").args(["logs", &self.container_any(service)]));
        format!("{out}{err}")
    }
}

/// The value of one metric series in Prometheus text format, e.g. `name{node="1"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Rows of a simple query as vectors of optional strings.
pub async fn query(
    c: &Client,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    let msgs = c.simple_query(sql).await?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}

/// SHOW POOL_NODES through pgpool as (node_id, status, role) rows; empty when pgpool dropped
/// the session (it restarts its children around a failover), so callers poll.
pub async fn pool_nodes(c: &Client) -> Vec<(String, String, String)> {
    let Ok(msgs) = c.simple_query("SHOW POOL_NODES").await else {
        return vec![];
    };
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get("node_id").unwrap_or("").to_string(),
                r.get("status").unwrap_or("").to_string(),
                r.get("role").unwrap_or("").to_string(),
            )),
            _ => None,
        })
        .collect()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.save_logs(std::thread::panicking());
        let _ = sh(self
            .compose()
            .args(["down", "-v", "--remove-orphans", "-t", "2"]));
        // Job containers carry our label, not compose's service label.
        let (_, ids, _) = sh(Command::new("docker").args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=pgpool-sidecar.cluster={}", self.project),
        ]));
        for id in ids.split_whitespace() {
            let _ = sh(Command::new("docker").args(["rm", "-f", id]));
        }
        let _ = sh(self
            .compose()
            .args(["down", "-v", "--remove-orphans", "-t", "0"]));
    }
}

impl Cluster {
    /// Waits until pgpool shows every node of `up` up (fresh session per poll) and `primary`
    /// as its primary.
    pub async fn wait_pool(&self, primary: &str, up: &[&str], limit: Duration) {
        let id = |n: &str| n.trim_start_matches("pg-").to_string();
        let start = Instant::now();
        let mut last = vec![];
        while start.elapsed() < limit {
            if let Some(pool) = self.pgpool().await {
                last = pool_nodes(&pool).await;
                let ok = last
                    .iter()
                    .any(|(i, s, r)| *i == id(primary) && s == "up" && r == "primary")
                    && up
                        .iter()
                        .all(|u| last.iter().any(|(i, s, _)| *i == id(u) && s == "up"));
                if ok {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "pgpool never showed {primary} primary and {up:?} up within {limit:?}; last: {last:?}"
        );
    }

    /// The first column of the first row of `sql` on `node` (directly, not through pgpool).
    pub async fn value_on(&self, node: &str, sql: &str) -> Option<String> {
        let client = self.node(node).await?;
        query(&client, sql).await.ok()?.first()?.first()?.clone()
    }

    /// Whether `primary` shows `standby` streaming from it.
    pub async fn streams_from(&self, primary: &str, standby: &str) -> bool {
        let q =
            format!("SELECT state FROM pg_stat_replication WHERE application_name = '{standby}'");
        self.value_on(primary, &q).await.as_deref() == Some("streaming")
    }

    /// Waits until `node` streams from `primary`, pgpool has it up as a standby, and its
    /// `acked` table holds `rows` rows.
    pub async fn wait_rejoined(&self, primary: &str, node: &str, rows: i64, limit: Duration) {
        wait_for(
            &format!("{node} streaming from {primary}, attached, {rows} rows"),
            limit,
            || async move {
                if !self.streams_from(primary, node).await {
                    return None;
                }
                let pool = self.pgpool().await?;
                let id = node.trim_start_matches("pg-");
                let up = pool_nodes(&pool)
                    .await
                    .iter()
                    .any(|(i, s, r)| i == id && s == "up" && r == "standby");
                let n = self.value_on(node, "SELECT count(*) FROM acked").await?;
                (up && n == rows.to_string()).then_some(())
            },
        )
        .await;
    }

    /// One INSERT through pgpool on a fresh connection; Ok when acknowledged.
    pub async fn write_once(&self, id: i64) -> Result<(), String> {
        let c = self.pgpool().await.ok_or("no connection")?;
        let q = format!("INSERT INTO acked (id) VALUES ({id})");
        tokio::time::timeout(Duration::from_secs(2), c.simple_query(&q))
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Retries a write through pgpool every 50 ms until one is acknowledged; returns seconds.
    /// A retry that finds the row already there (unique violation) means an earlier attempt
    /// committed but its answer was lost with the connection: that row is written, and
    /// retrying the same id could never succeed.
    pub async fn write_until_ok(&self, id: i64, limit: Duration) -> f64 {
        let start = Instant::now();
        loop {
            match self.write_once(id).await {
                Ok(()) => return start.elapsed().as_secs_f64(),
                Err(e) if e.contains("duplicate key") => {
                    eprintln!("write {id}: committed by an attempt whose answer was lost");
                    return start.elapsed().as_secs_f64();
                }
                Err(_) => {}
            }
            if start.elapsed() > limit {
                panic!("no write acknowledged through pgpool within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn create_acked_table(&self) {
        let pool = self.pgpool().await.expect("pgpool");
        query(
            &pool,
            "CREATE TABLE IF NOT EXISTS acked (id bigint primary key)",
        )
        .await
        .expect("create table");
    }

    pub fn docker(&self, args: &[&str]) -> (i32, String, String) {
        sh(Command::new("docker").args(args))
    }

    /// The node pgpool holds as primary, as `pg-N`, waiting up to 10 s for pgpool to answer
    /// (it restarts its children around a failover).
    pub async fn pool_primary(&self) -> Option<String> {
        let start = Instant::now();
        loop {
            if let Some(p) = self.pool_primary_once().await {
                return Some(p);
            }
            if start.elapsed() > Duration::from_secs(10) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// pgpool has a primary, and it is not `old`: what "failed over" means (a bare "not pg-0"
    /// would also pass with no primary at all).
    pub async fn primary_other_than(&self, old: &str) -> String {
        let p = self
            .pool_primary()
            .await
            .unwrap_or_else(|| panic!("pgpool has no primary after {old} failed"));
        assert_ne!(p, old, "pgpool still routes writes to {old}");
        p
    }

    async fn pool_primary_once(&self) -> Option<String> {
        let pool = self.pgpool().await?;
        pool_nodes(&pool)
            .await
            .into_iter()
            .find(|(_, s, r)| s == "up" && r == "primary")
            .map(|(id, _, _)| format!("pg-{id}"))
    }
}

/// Commits numbered rows into `acked` through pgpool, one after another on one connection
/// (reconnecting after an error), and records when each id was acknowledged: the yardstick for
/// "no acknowledged commit lost" and for write-unavailability windows.
pub struct Writer {
    acked: std::sync::Arc<std::sync::Mutex<Vec<(i64, Instant)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(c: std::sync::Arc<Cluster>) -> Self {
        use std::sync::atomic::Ordering;
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut client = None;
                let mut id = 0;
                while !stop.load(Ordering::SeqCst) {
                    if client.is_none() {
                        client = c.pgpool().await;
                    }
                    let Some(cl) = &client else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    id += 1;
                    let q = format!("INSERT INTO acked (id) VALUES ({id})");
                    match tokio::time::timeout(Duration::from_secs(2), cl.simple_query(&q)).await {
                        Ok(Ok(_)) => acked.lock().unwrap().push((id, Instant::now())),
                        _ => client = None,
                    }
                }
            })
        };
        Writer { acked, stop, task }
    }

    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until at least `n` writes in all have been acknowledged.
    pub async fn wait_acked(&self, n: usize, limit: Duration) {
        wait_for(&format!("{n} acknowledged writes"), limit, || async {
            (self.count() >= n).then_some(())
        })
        .await;
    }

    /// Stops the writer; the acknowledged ids with their acknowledgement times, in order.
    pub async fn stop(self) -> Vec<(i64, Instant)> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.expect("writer task");
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

/// Acknowledged ids missing from the `acked` table on `node`.
pub async fn lost_on(node: &Client, acked: &[(i64, Instant)]) -> Vec<i64> {
    let rows = query(node, "SELECT id FROM acked")
        .await
        .expect("read acked");
    let present: std::collections::HashSet<i64> = rows
        .iter()
        .filter_map(|r| r[0].as_deref()?.parse().ok())
        .collect();
    acked
        .iter()
        .map(|a| a.0)
        .filter(|id| !present.contains(id))
        .collect()
}

impl Cluster {
    /// The primary's service name once the cluster is whole: pgpool has every node up and one
    /// primary, and the primary shows the two others streaming.
    pub async fn whole(&self) -> Option<String> {
        let pool = self.pgpool().await?;
        let rows = pool_nodes(&pool).await;
        if rows.len() != 3 || rows.iter().any(|(_, s, _)| s != "up") {
            return None;
        }
        let (id, _, _) = rows.iter().find(|(_, _, r)| r == "primary")?;
        let primary = format!("pg-{id}");
        let streaming = self
            .value_on(
                &primary,
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            )
            .await?;
        (streaming == "2").then_some(primary)
    }

    /// The first value of an instant PromQL query against the monitoring profile's Prometheus.
    pub async fn prom_query(&self, promql: &str) -> Option<String> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.prometheus_port);
        let v: serde_json::Value = reqwest::Client::new()
            .get(url)
            .query(&[("query", promql)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_string)
    }
}

/// Min, median and max of benchmark figures, or `None` when there are none.
pub fn spread(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    v.sort_by(f64::total_cmp);
    Some((*v.first()?, v[v.len() / 2], *v.last()?))
}
