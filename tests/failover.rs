//! Automatic failover end to end, on real containers: kill, pause and partition of the primary,
//! a lagging standby, a dead standby, synchronous mode, two failovers in a row.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const ALL: [&str; 3] = ["pg-0", "pg-1", "pg-2"];

async fn ready_cluster(name: &str, extra: &[(&str, &str)]) -> Cluster {
    let mut c = Cluster::new(name);
    for (k, v) in extra {
        c = c.env(k, v);
    }
    let c = c.up().await;
    c.wait_pool("pg-0", &ALL, Duration::from_secs(120)).await;
    c.create_acked_table().await;
    c
}

/// The node streaming from `primary` according to the primary itself.
async fn metrics(c: &Cluster) -> String {
    c.http("/metrics").await.1
}

/// Old primary must not accept a write from anyone: Docker will not restart it by itself
/// (restart policy `no`), and it is either down or — once auto-rejoin took it back — a read-only
/// standby. Checked directly on its own port, not through pgpool.
async fn assert_fenced(c: &Cluster, node: &str, old_port: Option<u16>) {
    assert_eq!(c.inspect(node, "{{.HostConfig.RestartPolicy.Name}}"), "no");
    let running = c.inspect(node, "{{.State.Running}}") == "true";
    // Its published port may have changed if it was started again.
    let ports = [old_port, if running { c.node_port(node) } else { None }];
    for port in ports.into_iter().flatten() {
        if let Some(client) = Cluster::connect_port(port).await {
            let r = query(&client, "CREATE TABLE fenced_write (x int)").await;
            assert!(r.is_err(), "old primary {node} accepted a write directly");
            let rec = query(&client, "SELECT pg_is_in_recovery()").await.unwrap();
            assert_eq!(
                rec[0][0].as_deref(),
                Some("t"),
                "{node} answers but is not a standby"
            );
        }
    }
}

#[tokio::test]
async fn killed_primary_is_fenced_and_best_standby_takes_over() {
    let c = ready_cluster("kill", &[]).await;
    let old_port = c.node_port("pg-0");
    let fault = Instant::now();
    let (code, _, err) = c.docker(&["kill", &c.container("pg-0")]);
    assert_eq!(code, 0, "{err}");
    let secs = c.write_until_ok(1, Duration::from_secs(30)).await;
    eprintln!("docker kill: writes resumed after {secs:.2} s");

    let new = c.pool_primary().await.expect("pgpool has a primary");
    assert_ne!(new, "pg-0");
    let other = if new == "pg-1" { "pg-2" } else { "pg-1" };
    c.wait_pool(&new, &[&new, other], Duration::from_secs(30))
        .await;
    wait_for(
        "remaining standby streams from the new primary",
        Duration::from_secs(10),
        || {
            let (c, new) = (&c, &new);
            async move { c.streams_from(new, other).await.then_some(()) }
        },
    )
    .await;
    eprintln!(
        "standby streaming from new primary {:.2} s after the fault",
        fault.elapsed().as_secs_f64()
    );
    assert_fenced(&c, "pg-0", old_port).await;

    let m = metrics(&c).await;
    assert!(
        metric(&m, "pgpool_sidecar_failovers_total{result=\"success\"}").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "pgpool_sidecar_fencing_actions_total{action=\"kill\",result=\"success\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(metric(&m, "pgpool_sidecar_last_failover_timestamp_seconds").unwrap_or(0.0) > 0.0);
    let new_id = new.trim_start_matches("pg-");
    wait_for(
        "role metrics follow the new primary",
        Duration::from_secs(5),
        || {
            let (c, new_id) = (&c, new_id);
            async move {
                let m = metrics(c).await;
                (metric(
                    &m,
                    &format!("pgpool_sidecar_backend_role{{node=\"{new_id}\",role=\"primary\"}}"),
                ) == Some(1.0)
                    && metric(&m, "pgpool_sidecar_primaries") == Some(1.0))
                .then_some(())
            }
        },
    )
    .await;
    let status = c.status().await;
    assert_eq!(status["primary"], new.as_str());
    // Fenced, and possibly already being taken back by auto-rejoin — never primary.
    let state = status["nodes"][0]["state"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        ["fenced", "rebuilding", "streaming"].contains(&state.as_str()),
        "{state}"
    );
}

#[tokio::test]
async fn most_advanced_standby_wins() {
    let c = ready_cluster("advanced", &[]).await;
    // Cut pg-1's WAL receiver so it falls behind, then write more.
    let pg1 = c.node("pg-1").await.unwrap();
    query(&pg1, "ALTER SYSTEM SET primary_conninfo = ''")
        .await
        .unwrap();
    query(&pg1, "SELECT pg_reload_conf()").await.unwrap();
    wait_for("pg-1 stops streaming", Duration::from_secs(10), || {
        let c = &c;
        async move { (!c.streams_from("pg-0", "pg-1").await).then_some(()) }
    })
    .await;
    // One statement: the sidecar re-points a standby that stops streaming after a few passes,
    // so the lag must be made and the primary killed well within them.
    let pool = c.pgpool().await.expect("pgpool");
    query(
        &pool,
        "INSERT INTO acked (id) SELECT generate_series(1, 50)",
    )
    .await
    .expect("write");
    wait_for("pg-2 has the rows", Duration::from_secs(10), || {
        let c = &c;
        async move {
            let pg2 = c.node("pg-2").await?;
            let r = query(&pg2, "SELECT count(*) FROM acked").await.ok()?;
            (r[0][0].as_deref() == Some("50")).then_some(())
        }
    })
    .await;
    c.docker(&["kill", &c.container("pg-0")]);
    c.write_until_ok(1000, Duration::from_secs(30)).await;
    assert_eq!(c.pool_primary().await.as_deref(), Some("pg-2"));
    // The lagging standby is re-pointed and catches up from the new primary.
    wait_for(
        "pg-1 streams from pg-2 and has every row",
        Duration::from_secs(30),
        || {
            let c = &c;
            async move {
                if !c.streams_from("pg-2", "pg-1").await {
                    return None;
                }
                let pg1 = c.node("pg-1").await?;
                let r = query(&pg1, "SELECT count(*) FROM acked").await.ok()?;
                (r[0][0].as_deref() == Some("51")).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn killed_standby_never_promotes() {
    let c = ready_cluster("standby", &[]).await;
    c.docker(&["kill", &c.container("pg-2")]);
    wait_for("pgpool marks pg-2 down", Duration::from_secs(10), || {
        let c = &c;
        async move {
            let pool = c.pgpool().await?;
            let nodes = pool_nodes(&pool).await;
            (nodes.get(2)?.1 == "down").then_some(nodes)
        }
    })
    .await;
    c.write_until_ok(1, Duration::from_secs(10)).await;
    assert_eq!(c.pool_primary().await.as_deref(), Some("pg-0"));
    let pg0 = c.node("pg-0").await.unwrap();
    let r = query(&pg0, "SELECT pg_is_in_recovery()").await.unwrap();
    assert_eq!(r[0][0].as_deref(), Some("f"));
    let pg1 = c.node("pg-1").await.unwrap();
    let r = query(&pg1, "SELECT pg_is_in_recovery()").await.unwrap();
    assert_eq!(r[0][0].as_deref(), Some("t"), "pg-1 was promoted");
    let logs = c.logs("pgpool");
    assert!(
        logs.contains("Standby node is down. Failover not triggered!"),
        "{logs}"
    );
    let m = metrics(&c).await;
    assert_eq!(
        metric(&m, "pgpool_sidecar_failovers_total{result=\"success\"}"),
        Some(0.0)
    );
    assert_eq!(metric(&m, "pgpool_sidecar_primaries"), Some(1.0));
}

#[tokio::test]
async fn hung_primary_is_failed_over_and_stays_fenced() {
    let c = ready_cluster("paused", &[]).await;
    let old_port = c.node_port("pg-0");
    c.docker(&["pause", &c.container("pg-0")]);
    let secs = c.write_until_ok(1, Duration::from_secs(30)).await;
    eprintln!("docker pause: writes resumed after {secs:.2} s");
    c.primary_other_than("pg-0").await;
    let id = c.container_any("pg-0");
    c.docker(&["unpause", &id]);
    assert_fenced(&c, "pg-0", old_port).await;
}

#[tokio::test]
async fn partitioned_primary_is_failed_over_and_stays_fenced() {
    let c = ready_cluster("partition", &[]).await;
    let old_port = c.node_port("pg-0");
    let net = format!("{}_default", c.project);
    let id = c.container("pg-0");
    let (code, _, err) = c.docker(&["network", "disconnect", &net, &id]);
    assert_eq!(code, 0, "{err}");
    let secs = c.write_until_ok(1, Duration::from_secs(30)).await;
    eprintln!("network disconnect: writes resumed after {secs:.2} s");
    c.primary_other_than("pg-0").await;
    c.docker(&["network", "connect", &net, &id]);
    assert_fenced(&c, "pg-0", old_port).await;
}

#[tokio::test]
async fn synchronous_mode_loses_no_acknowledged_commit() {
    // Without auto-rejoin the fenced old primary stays out, so the check of
    // synchronous_standby_names below cannot race with its rewind (once it streams again it
    // rightly counts as a synchronous candidate).
    let c = ready_cluster(
        "sync",
        &[
            ("SIDECAR_SYNCHRONOUS_STANDBYS", "1"),
            ("SIDECAR_AUTO_REJOIN", "false"),
        ],
    )
    .await;
    let pg0 = c.node("pg-0").await.unwrap();
    wait_for(
        "synchronous_standby_names set",
        Duration::from_secs(10),
        || {
            let pg0 = &pg0;
            async move {
                let r = query(pg0, "SHOW synchronous_standby_names").await.ok()?;
                r[0][0]
                    .as_deref()
                    .filter(|v| v.starts_with("ANY 1"))
                    .map(str::to_string)
            }
        },
    )
    .await;

    // A writer commits numbered rows through pgpool and records each acknowledged id.
    let c = Arc::new(c);
    let writer = Writer::start(c.clone());
    writer.wait_acked(50, Duration::from_secs(10)).await;
    c.docker(&["kill", &c.container("pg-0")]);
    let before = writer.count();
    writer
        .wait_acked(before + 50, Duration::from_secs(30))
        .await;
    let acked = writer.stop().await;

    let new = c.pool_primary().await.expect("new primary");
    assert_ne!(new, "pg-0");
    let p = c.node(&new).await.unwrap();
    let lost = lost_on(&p, &acked).await;
    eprintln!(
        "sync mode: {} acknowledged, {} lost",
        acked.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged ids lost: {lost:?}");
    let r = query(&p, "SHOW synchronous_standby_names").await.unwrap();
    let value = r[0][0].clone().unwrap_or_default();
    assert!(
        !value.contains("pg-0"),
        "new primary still waits for the fenced node: {value}"
    );
}

#[tokio::test]
async fn two_failovers_in_a_row() {
    // Without auto-rejoin the fenced first primary stays out, so the last standby must win.
    let c = ready_cluster("twice", &[("SIDECAR_AUTO_REJOIN", "false")]).await;
    c.docker(&["kill", &c.container("pg-0")]);
    c.write_until_ok(1, Duration::from_secs(30)).await;
    let first = c.pool_primary().await.expect("first new primary");
    let last = if first == "pg-1" { "pg-2" } else { "pg-1" };
    c.wait_pool(&first, &[&first, last], Duration::from_secs(30))
        .await;
    wait_for(
        "last standby streams from the first new primary",
        Duration::from_secs(15),
        || {
            let (c, first) = (&c, &first);
            async move { c.streams_from(first, last).await.then_some(()) }
        },
    )
    .await;
    c.docker(&["kill", &c.container(&first)]);
    let secs = c.write_until_ok(2, Duration::from_secs(30)).await;
    eprintln!("second failover: writes resumed after {secs:.2} s");
    assert_eq!(c.pool_primary().await.as_deref(), Some(last));
    let p = c.node(last).await.unwrap();
    let rows = query(&p, "SELECT count(*) FROM acked WHERE id IN (1, 2)")
        .await
        .unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("2"));
    let m = metrics(&c).await;
    assert_eq!(
        metric(&m, "pgpool_sidecar_failovers_total{result=\"success\"}"),
        Some(2.0)
    );
}

/// A primary whose processes are all frozen while its container still runs: Docker sees nothing,
/// only the sidecar's SQL probes can tell.
#[tokio::test]
async fn frozen_primary_processes_are_caught_by_the_probes() {
    let c = ready_cluster("frozen", &[]).await;
    let old_port = c.node_port("pg-0");
    let id = c.container("pg-0");
    let (code, out, err) = c.docker(&["top", &id, "-o", "pid"]);
    assert_eq!(code, 0, "{err}");
    let pids: Vec<&str> = out
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    assert!(!pids.is_empty());
    // Short-lived backends (pgpool's health checks) may be gone by now: only the postmaster's
    // stop must succeed; the others are stopped if they still exist.
    let main_pid = c.inspect("pg-0", "{{.State.Pid}}");
    assert!(
        pids.contains(&main_pid.as_str()),
        "{main_pid} not in {pids:?}"
    );
    for pid in &pids {
        let (code, _, err) = sh(std::process::Command::new("kill").args(["-STOP", pid]));
        if *pid == main_pid {
            assert_eq!(code, 0, "cannot stop the postmaster: {err}");
        }
    }
    assert_eq!(c.inspect("pg-0", "{{.State.Status}}"), "running");
    let secs = c.write_until_ok(1, Duration::from_secs(30)).await;
    eprintln!("frozen processes: writes resumed after {secs:.2} s");
    c.primary_other_than("pg-0").await;
    assert_fenced(&c, "pg-0", old_port).await;
    let logs = c.logs("pgpool");
    assert!(
        logs.contains("consecutive probes failed") || logs.contains("pgpool detached the primary"),
        "{logs}"
    );
}
