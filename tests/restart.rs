//! Restarts of every part, end to end: the sidecar SIGKILLed in the middle of a failover, a
//! promotion, a switchover, a rewind and a rebuild; a host reboot (every container stopped, only
//! the pgpool container started again, as `restart: unless-stopped` does at boot), with its state
//! file intact and corrupt; a standby whose process dies by itself; a standby an operator
//! stopped, across a restart of the sidecar; every node's process killed at once. Each ends with the cluster whole: one primary, every
//! node streaming from it and attached in pgpool, every acknowledged row present.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const ALL: [&str; 3] = ["pg-0", "pg-1", "pg-2"];

async fn ready(name: &str, extra: &[(&str, &str)]) -> Cluster {
    let mut c = Cluster::new(name);
    for (k, v) in extra {
        c = c.env(k, v);
    }
    let c = c.up().await;
    c.wait_pool("pg-0", &ALL, Duration::from_secs(120)).await;
    c.create_acked_table().await;
    c
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The host PID of a service's main process (the sidecar for `pgpool`, postgres for a node).
fn main_pid(c: &Cluster, service: &str) -> String {
    let pid = c.inspect(service, "{{.State.Pid}}");
    assert!(
        !pid.is_empty() && pid != "0",
        "{service} has no running process"
    );
    pid
}

/// SIGKILL from the host, by PID: no Docker API call, so Docker sees the process die by itself
/// (and applies the container's restart policy).
fn kill_by_pid(pid: &str) {
    let (code, _, err) = sh(Command::new("kill").args(["-9", pid]));
    assert_eq!(code, 0, "kill -9 {pid}: {err}");
}

fn restart_count(c: &Cluster) -> u64 {
    c.inspect("pgpool", "{{.RestartCount}}")
        .parse()
        .expect("RestartCount")
}

/// Follows the sidecar's log from now on and SIGKILLs its process the moment a line contains
/// `pattern`. The thread ends with the line it acted on (or None when the log ended first).
fn kill_sidecar_on_log(
    c: &Cluster,
    pattern: &'static str,
) -> std::thread::JoinHandle<Option<String>> {
    let container = c.container("pgpool");
    let pid = main_pid(c, "pgpool");
    let since = format!("{:.6}", unix_now());
    std::thread::spawn(move || {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec docker logs -f --since {since} {container} 2>&1"
            ))
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker logs");
        let out = child.stdout.take().expect("stdout");
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line.contains(pattern) {
                kill_by_pid(&pid);
                let _ = child.kill();
                let _ = child.wait();
                return Some(line);
            }
        }
        let _ = child.wait();
        None
    })
}

/// Waits for the thread of [`kill_sidecar_on_log`] and for Docker to have restarted the sidecar.
async fn killed_and_restarted(
    c: &Cluster,
    t: std::thread::JoinHandle<Option<String>>,
    before: u64,
) {
    wait_for(
        "the sidecar log line to kill at",
        Duration::from_secs(60),
        || async { t.is_finished().then_some(()) },
    )
    .await;
    let line = t.join().expect("log follower");
    let line = line.expect("the sidecar's log ended before the line to kill at");
    c.figure(&format!("sidecar SIGKILLed at: {line}"));
    wait_restarted(c, before).await;
}

/// Waits until Docker has restarted the sidecar's container since `before` restarts.
async fn wait_restarted(c: &Cluster, before: u64) {
    wait_for(
        "Docker restarts the sidecar",
        Duration::from_secs(30),
        || async { (restart_count(c) > before).then_some(()) },
    )
    .await;
}

/// Polls until the cluster is whole: pgpool shows exactly one primary and every node up, that
/// node is the only writable one, and every other node streams from it. Returns the primary.
async fn wait_whole(c: &Cluster, limit: Duration) -> String {
    wait_for(
        "the cluster whole: one primary, every node streaming from it and attached",
        limit,
        || async {
            let pool = c.pgpool().await?;
            let nodes = pool_nodes(&pool).await;
            let primaries: Vec<&(String, String, String)> = nodes
                .iter()
                .filter(|(_, s, r)| s == "up" && r == "primary")
                .collect();
            if primaries.len() != 1 || nodes.iter().filter(|(_, s, _)| s == "up").count() != 3 {
                return None;
            }
            let p = format!("pg-{}", primaries[0].0);
            for n in ALL {
                let writable = c.value_on(n, "SELECT NOT pg_is_in_recovery()").await? == "t";
                if writable != (n == p) {
                    return None;
                }
                if n != p && !c.streams_from(&p, n).await {
                    return None;
                }
            }
            Some(p)
        },
    )
    .await
}

/// `/status`, or None while the sidecar does not answer (it is being restarted).
async fn try_status(c: &Cluster) -> Option<serde_json::Value> {
    let url = format!("http://127.0.0.1:{}/status", c.http_port);
    reqwest::get(url).await.ok()?.json().await.ok()
}

async fn status_resumed(c: &Cluster) -> String {
    try_status(c)
        .await
        .map(|s| s["resumed"].to_string())
        .unwrap_or_default()
}

async fn assert_no_loss(c: &Cluster, primary: &str, acked: &[(i64, Instant)]) {
    let node = c.node(primary).await.expect("primary");
    let lost = lost_on(&node, acked).await;
    assert!(
        lost.is_empty(),
        "{} acknowledged commits lost: {lost:?}",
        lost.len()
    );
}

#[tokio::test]
async fn sidecar_killed_mid_failover_promotion_and_switchover_resumes_without_losing_a_commit() {
    let c = Arc::new(ready("killmid", &[("SIDECAR_SYNCHRONOUS_STANDBYS", "1")]).await);
    let writer = Writer::start(c.clone());
    writer.wait_acked(20, Duration::from_secs(30)).await;

    // 1. Just after the fence of the killed primary, before any promotion.
    let before = restart_count(&c);
    let t = kill_sidecar_on_log(&c, "fenced: Docker reported it killed");
    let fault = Instant::now();
    c.docker(&["kill", &c.container("pg-0")]);
    killed_and_restarted(&c, t, before).await;
    let p1 = wait_whole(&c, Duration::from_secs(60)).await;
    c.figure(&format!(
        "killed after the fence: whole in {:.1} s with {p1} primary; resumed: {}",
        fault.elapsed().as_secs_f64(),
        status_resumed(&c).await
    ));
    assert_ne!(p1, "pg-0", "the fenced old primary came back as primary");
    let n = writer.count();
    writer.wait_acked(n + 20, Duration::from_secs(30)).await;

    // 2. Just after the promotion, before the other standby is re-pointed.
    let before = restart_count(&c);
    let t = kill_sidecar_on_log(&c, "promoted: the new primary takes writes");
    let fault = Instant::now();
    c.docker(&["kill", &c.container(&p1)]);
    killed_and_restarted(&c, t, before).await;
    let p2 = wait_whole(&c, Duration::from_secs(60)).await;
    c.figure(&format!(
        "killed after the promotion: whole in {:.1} s with {p2} primary; resumed: {}",
        fault.elapsed().as_secs_f64(),
        status_resumed(&c).await
    ));
    assert_ne!(p2, p1);
    let n = writer.count();
    writer.wait_acked(n + 20, Duration::from_secs(30)).await;

    // 3. During a switchover, once the old primary has stopped.
    let before = restart_count(&c);
    let old = c.container(&p2);
    let pid = main_pid(&c, "pgpool");
    let request = c.post_in_background("/switchover");
    let fault = Instant::now();
    wait_for(
        "the old primary stopped by the switchover",
        Duration::from_secs(30),
        || async {
            let (_, running, _) = c.docker(&["inspect", "-f", "{{.State.Running}}", &old]);
            (running.trim() == "false").then_some(())
        },
    )
    .await;
    kill_by_pid(&pid);
    let _ = request.await;
    wait_restarted(&c, before).await;
    let p3 = wait_whole(&c, Duration::from_secs(60)).await;
    c.figure(&format!(
        "killed during the switchover from {p2}: whole in {:.1} s with {p3} primary; resumed: {}",
        fault.elapsed().as_secs_f64(),
        status_resumed(&c).await
    ));
    let n = writer.count();
    writer.wait_acked(n + 20, Duration::from_secs(30)).await;

    let acked = writer.stop().await;
    assert_no_loss(&c, &p3, &acked).await;
    c.figure(&format!("{} acknowledged commits, none lost", acked.len()));
}

/// The job container of `job` for this cluster, once it runs.
async fn wait_job(c: &Cluster, job: &str) {
    wait_for(
        &format!("a {job} job container"),
        Duration::from_secs(60),
        || async {
            let (_, out, _) = c.docker(&[
                "ps",
                "-q",
                "--filter",
                &format!("label=pgpool-sidecar.cluster={}", c.project),
                "--filter",
                &format!("label=pgpool-sidecar.job={job}"),
            ]);
            (!out.trim().is_empty()).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn sidecar_killed_during_a_rewind_and_a_rebuild_job_ends_whole() {
    let c = Arc::new(ready("killjob", &[]).await);
    for i in 1..=50 {
        c.write_once(i).await.expect("write");
    }

    // 1. The old primary's rewind after a failover.
    let before = restart_count(&c);
    let fault = Instant::now();
    c.docker(&["kill", &c.container("pg-0")]);
    wait_job(&c, "rewind").await;
    kill_by_pid(&main_pid(&c, "pgpool"));
    wait_restarted(&c, before).await;
    let p = wait_whole(&c, Duration::from_secs(60)).await;
    c.figure(&format!(
        "killed during the rewind: whole in {:.1} s with {p} primary; resumed: {}",
        fault.elapsed().as_secs_f64(),
        status_resumed(&c).await
    ));
    assert!(
        status_resumed(&c).await.contains("\"rewind\""),
        "the restarted sidecar does not say it resumed the rewind"
    );
    assert_eq!(
        c.value_on("pg-0", "SELECT count(*) FROM acked")
            .await
            .as_deref(),
        Some("50")
    );

    // 2. A rebuild asked for over the API.
    let standby = ALL.iter().find(|n| **n != p).unwrap().to_string();
    let before = restart_count(&c);
    let request = c.post_in_background(&format!("/nodes/{standby}/recover?rebuild=true"));
    let fault = Instant::now();
    wait_job(&c, "rebuild").await;
    kill_by_pid(&main_pid(&c, "pgpool"));
    let _ = request.await;
    wait_restarted(&c, before).await;
    let p2 = wait_whole(&c, Duration::from_secs(60)).await;
    c.figure(&format!(
        "killed during the rebuild of {standby}: whole in {:.1} s; resumed: {}",
        fault.elapsed().as_secs_f64(),
        status_resumed(&c).await
    ));
    assert_eq!(p2, p, "a rebuild of a standby changed the primary");
    assert!(status_resumed(&c).await.contains("\"rebuild\""));
    assert_eq!(
        c.value_on(&standby, "SELECT count(*) FROM acked")
            .await
            .as_deref(),
        Some("50")
    );
    let m = c.http("/metrics").await.1;
    assert!(
        metric(
            &m,
            "pgpool_sidecar_resumed_operations_total{operation=\"rebuild\"}"
        )
        .is_some_and(|v| v >= 1.0),
        "resumed rebuild not counted"
    );
}

/// Every container of the stack stopped at once, then only the pgpool container started, as a
/// host reboot does with `restart: unless-stopped` for it and `restart: "no"` for the nodes.
async fn reboot(c: &Cluster, between: impl std::future::Future<Output = ()>) -> Instant {
    let mut args = vec!["stop".to_string()];
    args.push(c.container("pgpool"));
    for n in ALL {
        args.push(c.container(n));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = c.docker(&args);
    assert_eq!(code, 0, "docker stop: {err}");
    between.await;
    let booted = Instant::now();
    let (code, _, err) = c.docker(&["start", &c.container("pgpool")]);
    assert_eq!(code, 0, "docker start pgpool: {err}");
    booted
}

#[tokio::test]
async fn a_host_reboot_brings_the_cluster_back_on_its_last_primary_with_or_without_the_state_file()
{
    let c = ready("reboot", &[]).await;
    // A failover first, so the primary is not the first node ("pg-0 first" would be wrong).
    c.docker(&["kill", &c.container("pg-0")]);
    let primary = c.primary_other_than("pg-0").await;
    let p = wait_whole(&c, Duration::from_secs(60)).await;
    assert_eq!(p, primary);
    for i in 1..=100 {
        c.write_until_ok(i, Duration::from_secs(10)).await;
    }

    let booted = reboot(&c, async {}).await;
    let after = wait_whole(&c, Duration::from_secs(60)).await;
    c.figure(&format!(
        "reboot: whole {:.1} s after the pgpool container started, {after} primary",
        booted.elapsed().as_secs_f64()
    ));
    assert_eq!(after, p, "the primary changed across the reboot");
    assert_eq!(c.status().await["state_file"]["at_start"], "read");
    for n in ALL {
        assert_eq!(
            c.value_on(n, "SELECT count(*) FROM acked").await.as_deref(),
            Some("100"),
            "rows on {n}"
        );
    }

    // Again with the state file corrupted while everything is down: observation alone must
    // find the same primary (the most advanced former primary), never pg-0.
    let volume = format!("{}_sidecar_state", c.project);
    let booted = reboot(&c, async {
        let mount = format!("{volume}:/state");
        let (code, _, err) = c.docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            &mount,
            "--entrypoint",
            "sh",
            "pgpool-sidecar:local",
            "-c",
            "printf '{\"version\": 1, \"primary\": \"pg-' > /state/state.json",
        ]);
        assert_eq!(code, 0, "corrupting the state file: {err}");
    })
    .await;
    let after = wait_whole(&c, Duration::from_secs(60)).await;
    c.figure(&format!(
        "reboot with a corrupt state file: whole {:.1} s after the pgpool container started, {after} primary",
        booted.elapsed().as_secs_f64()
    ));
    assert_eq!(after, p, "the primary changed across the reboot");
    let at_start = c.status().await["state_file"]["at_start"].to_string();
    assert!(at_start.contains("unusable"), "{at_start}");
    assert!(c.logs("pgpool").contains("the state file is unusable"));
    for n in ALL {
        assert_eq!(
            c.value_on(n, "SELECT count(*) FROM acked").await.as_deref(),
            Some("100"),
            "rows on {n}"
        );
    }
}

#[tokio::test]
async fn a_standby_that_dies_by_itself_comes_back_and_one_stopped_on_purpose_stays_down() {
    let c = ready("nodedies", &[]).await;
    for i in 1..=30 {
        c.write_once(i).await.expect("write");
    }

    // Its main process SIGKILLed from the host: Docker's policy "no" would leave it down.
    let died = Instant::now();
    kill_by_pid(&main_pid(&c, "pg-2"));
    c.wait_rejoined("pg-0", "pg-2", 30, Duration::from_secs(30))
        .await;
    c.figure(&format!(
        "standby killed by PID: streaming and attached again in {:.1} s",
        died.elapsed().as_secs_f64()
    ));
    let m = c.http("/metrics").await.1;
    assert_eq!(
        metric(
            &m,
            "pgpool_sidecar_node_restarts_total{node=\"2\",reason=\"died\"}"
        ),
        Some(1.0)
    );

    // Stopped by an operator, then the sidecar restarted: it stays down.
    c.docker(&["stop", &c.container("pg-1")]);
    wait_for(
        "pg-1 stopped on purpose",
        Duration::from_secs(15),
        || async {
            let s = try_status(&c).await?;
            (s["nodes"][1]["intent"] == "stopped").then_some(())
        },
    )
    .await;
    let (code, _, err) = sh(c.compose().args(["restart", "pgpool"]));
    assert_eq!(code, 0, "compose restart pgpool: {err}");
    // Ready again, pg-2 seen attached by the new sidecar: it has made its start-up and passes.
    c.wait_pool("pg-0", &["pg-0", "pg-2"], Duration::from_secs(60))
        .await;
    wait_for(
        "the restarted sidecar's view",
        Duration::from_secs(30),
        || async {
            let s = try_status(&c).await?;
            (s["nodes"][2]["streaming"] == true).then_some(s)
        },
    )
    .await;
    let s = c.status().await;
    assert_eq!(s["nodes"][1]["intent"], "stopped", "{}", s["nodes"][1]);
    assert_eq!(
        c.inspect("pg-1", "{{.State.Running}}"),
        "false",
        "the sidecar started a node an operator stopped"
    );
    let m = c.http("/metrics").await.1;
    assert_eq!(
        metric(&m, "pgpool_sidecar_node_stopped_on_purpose{node=\"1\"}"),
        Some(1.0)
    );

    // Started again by the operator: re-attached, no longer stopped on purpose.
    let started = Instant::now();
    c.docker(&["start", &c.container("pg-1")]);
    c.wait_rejoined("pg-0", "pg-1", 30, Duration::from_secs(60))
        .await;
    c.figure(&format!(
        "operator-started standby attached in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    assert_eq!(c.status().await["nodes"][1]["intent"], "run");

    // Every node's process killed at once (an OOM storm, a crash of the runtime): the standbys
    // are started again, the primary is failed over and rewound, nothing acknowledged is lost.
    let pids: Vec<String> = ALL.iter().map(|n| main_pid(&c, n)).collect();
    let all_died = Instant::now();
    for pid in &pids {
        kill_by_pid(pid);
    }
    let p = wait_whole(&c, Duration::from_secs(90)).await;
    c.figure(&format!(
        "every node killed by PID at once: whole in {:.1} s with {p} primary",
        all_died.elapsed().as_secs_f64()
    ));
    for n in ALL {
        assert_eq!(
            c.value_on(n, "SELECT count(*) FROM acked").await.as_deref(),
            Some("30"),
            "rows on {n}"
        );
    }
}
