//! Online recovery, switchover and failback end to end: the old project's two scenarios (a failed
//! standby, a failed primary) and the ways a node comes back — re-attach, pg_rewind, rebuild —
//! plus recreated containers, an interrupted rebuild, switchover, failback and refusals.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
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

async fn count_on(c: &Cluster, node: &str, sql: &str) -> Option<String> {
    let client = c.node(node).await?;
    query(&client, sql).await.ok()?.first()?.first()?.clone()
}

async fn streams_from(c: &Cluster, primary: &str, standby: &str) -> bool {
    let q = format!("SELECT state FROM pg_stat_replication WHERE application_name = '{standby}'");
    count_on(c, primary, &q).await.as_deref() == Some("streaming")
}

async fn metrics(c: &Cluster) -> String {
    c.http("/metrics").await.1
}

/// Waits until `node` streams from `primary`, pgpool has it up, and it holds `rows` rows.
async fn wait_rejoined(c: &Cluster, primary: &str, node: &str, rows: i64, limit: Duration) {
    wait_for(
        &format!("{node} streaming, attached, {rows} rows"),
        limit,
        || async move {
            if !streams_from(c, primary, node).await {
                return None;
            }
            let pool = c.pgpool().await?;
            let id = node.trim_start_matches("pg-");
            let up = pool_nodes(&pool)
                .await
                .iter()
                .any(|(i, s, _)| i == id && s == "up");
            let n = count_on(c, node, "SELECT count(*) FROM acked").await?;
            (up && n == rows.to_string()).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn failed_standby_comes_back_and_is_reattached_with_the_writes_it_missed() {
    let c = ready("stbyback", &[]).await;
    let id = c.container("pg-2");
    c.docker(&["stop", &id]);
    wait_for(
        "pgpool marks pg-2 down",
        Duration::from_secs(15),
        || async {
            let pool = c.pgpool().await?;
            (pool_nodes(&pool).await.get(2)?.1 == "down").then_some(())
        },
    )
    .await;
    for i in 1..=100 {
        c.write_once(i).await.expect("write while pg-2 is down");
    }
    c.docker(&["start", &id]);
    let t = Instant::now();
    wait_rejoined(&c, "pg-0", "pg-2", 100, Duration::from_secs(60)).await;
    eprintln!(
        "standby back, streaming and attached {:.2} s after its start",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(c.pool_primary().await.as_deref(), Some("pg-0"));
}

#[tokio::test]
async fn failed_primary_is_rewound_into_a_standby_and_loses_only_its_unreplicated_tail() {
    let c = ready("rewind", &[]).await;
    // Both standbys stop receiving, then rows are committed on the primary alone: its tail.
    for s in ["pg-1", "pg-2"] {
        let cl = c.node(s).await.unwrap();
        query(&cl, "ALTER SYSTEM SET primary_conninfo = ''")
            .await
            .unwrap();
        query(&cl, "SELECT pg_reload_conf()").await.unwrap();
    }
    wait_for(
        "standbys stop streaming",
        Duration::from_secs(10),
        || async {
            (!streams_from(&c, "pg-0", "pg-1").await && !streams_from(&c, "pg-0", "pg-2").await)
                .then_some(())
        },
    )
    .await;
    let pg0 = c.node("pg-0").await.unwrap();
    query(
        &pg0,
        "INSERT INTO acked SELECT g FROM generate_series(900001, 900010) g",
    )
    .await
    .unwrap();
    c.docker(&["kill", &c.container("pg-0")]);
    c.write_until_ok(1, Duration::from_secs(30)).await;
    let new = c.pool_primary().await.expect("new primary");
    for i in 2..=20 {
        c.write_until_ok(i, Duration::from_secs(10)).await;
    }
    // The old primary comes back by itself (auto-rejoin) as a standby of the new primary.
    let t = Instant::now();
    wait_rejoined(&c, &new, "pg-0", 20, Duration::from_secs(120)).await;
    eprintln!(
        "old primary rewound and attached {:.2} s after the writes",
        t.elapsed().as_secs_f64()
    );
    let tail = count_on(&c, "pg-0", "SELECT count(*) FROM acked WHERE id > 900000").await;
    assert_eq!(
        tail.as_deref(),
        Some("0"),
        "the un-replicated tail survived"
    );
    let rec = count_on(&c, "pg-0", "SELECT pg_is_in_recovery()").await;
    assert_eq!(rec.as_deref(), Some("t"));
    let m = metrics(&c).await;
    assert_eq!(
        metric(
            &m,
            "pgpool_sidecar_recoveries_total{method=\"rewind\",node=\"0\",result=\"success\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        !m.contains("method=\"rebuild\",node=\"0\""),
        "old primary was rebuilt, not rewound"
    );
    let logs = c.logs("pgpool");
    let line = logs
        .lines()
        .find(|l| l.contains("un-replicated tail discarded"))
        .expect("log names the discarded tail");
    assert!(line.contains("from_lsn="), "{line}");
}

#[tokio::test]
async fn impossible_rewind_falls_back_to_rebuild_on_request() {
    let c = ready("norewind", &[("SIDECAR_AUTO_REJOIN", "false")]).await;
    c.docker(&["kill", &c.container("pg-0")]);
    c.write_until_ok(1, Duration::from_secs(30)).await;
    let new = c.pool_primary().await.unwrap();
    // Take away the WAL pg_rewind (and crash recovery) would need.
    let (code, _, err) = c.docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{}_pg0data:/data", c.project),
        "--entrypoint",
        "bash",
        "pgpool-sidecar-postgres:15",
        "-c",
        "rm -f /data/pg_wal/0000*",
    ]);
    assert_eq!(code, 0, "{err}");
    let (status, body) = c.post("/nodes/pg-0/recover", Some(API_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["method"], "rebuild", "{body}");
    eprintln!("recover after impossible rewind: {body}");
    wait_rejoined(&c, &new, "pg-0", 1, Duration::from_secs(60)).await;
    let m = metrics(&c).await;
    assert_eq!(
        metric(
            &m,
            "pgpool_sidecar_recoveries_total{method=\"rebuild\",node=\"0\",result=\"success\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn job_killed_mid_rebuild_leaves_node_detached_and_next_attempt_succeeds() {
    let c = ready("jobkill", &[]).await;
    let pool = c.pgpool().await.unwrap();
    query(
        &pool,
        "CREATE TABLE big AS SELECT g, repeat('x', 2000) AS pad FROM generate_series(1, 150000) g",
    )
    .await
    .unwrap();
    let killer = {
        let project = c.project.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                let (_, ids, _) = sh(std::process::Command::new("docker").args([
                    "ps",
                    "-q",
                    "--filter",
                    &format!("label=pgpool-sidecar.cluster={project}"),
                    "--filter",
                    "label=pgpool-sidecar.job=rebuild",
                ]));
                if let Some(id) = ids.split_whitespace().next() {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    sh(std::process::Command::new("docker").args(["kill", id]));
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        })
    };
    let (status, body) = c
        .post("/nodes/pg-2/recover?rebuild=true", Some(API_TOKEN))
        .await;
    assert!(killer.await.unwrap(), "the rebuild job was never seen");
    assert_eq!(status, 500, "a killed job must fail the recovery: {body}");
    // Not attached, not running half-built.
    let nodes = wait_for("pgpool node table", Duration::from_secs(10), || async {
        let pool = c.pgpool().await?;
        let n = pool_nodes(&pool).await;
        (n.len() == 3).then_some(n)
    })
    .await;
    assert_eq!(nodes[2].1, "down", "{nodes:?}");
    assert_eq!(c.inspect("pg-2", "{{.State.Running}}"), "false");
    let (status, body) = c
        .post("/nodes/pg-2/recover?rebuild=true", Some(API_TOKEN))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["method"], "rebuild");
    wait_rejoined(&c, "pg-0", "pg-2", 0, Duration::from_secs(60)).await;
    let m = metrics(&c).await;
    assert_eq!(
        metric(
            &m,
            "pgpool_sidecar_recoveries_total{method=\"rebuild\",node=\"2\",result=\"failure\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn removed_container_and_removed_volume_come_back_as_the_same_service() {
    let c = ready("recreate", &[]).await;
    for i in 1..=10 {
        c.write_once(i).await.unwrap();
    }
    let old = c.container("pg-2");
    c.docker(&["rm", "-f", &old]);
    wait_rejoined(&c, "pg-0", "pg-2", 10, Duration::from_secs(90)).await;
    let new = c.container_any("pg-2");
    assert!(!new.is_empty() && new != old, "pg-2 was not recreated");
    assert_eq!(
        c.inspect(
            "pg-2",
            "{{index .Config.Labels \"com.docker.compose.service\"}}"
        ),
        "pg-2"
    );

    // Same for a node whose volume is gone too: rebuilt from the primary.
    let old = c.container("pg-1");
    c.docker(&["rm", "-f", &old]);
    let (code, _, err) = c.docker(&["volume", "rm", &format!("{}_pg1data", c.project)]);
    assert_eq!(code, 0, "{err}");
    wait_rejoined(&c, "pg-0", "pg-1", 10, Duration::from_secs(120)).await;
    let m = metrics(&c).await;
    assert!(
        metric(
            &m,
            "pgpool_sidecar_recoveries_total{method=\"rebuild\",node=\"1\",result=\"success\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn switchover_loses_no_acknowledged_commit() {
    let c = Arc::new(ready("switch", &[]).await);
    let acked = Arc::new(Mutex::new(Vec::<(i64, Instant)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicI64::new(1));
    let writer = {
        let (c, acked, stop, next) = (c.clone(), acked.clone(), stop.clone(), next.clone());
        tokio::spawn(async move {
            let mut client = None;
            while !stop.load(Ordering::SeqCst) {
                if client.is_none() {
                    client = c.pgpool().await;
                }
                if let Some(cl) = &client {
                    let id = next.fetch_add(1, Ordering::SeqCst);
                    let q = format!("INSERT INTO acked (id) VALUES ({id})");
                    match tokio::time::timeout(Duration::from_secs(2), cl.simple_query(&q)).await {
                        Ok(Ok(_)) => acked.lock().unwrap().push((id, Instant::now())),
                        _ => client = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = c.post("/switchover?to=pg-1", Some(API_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["new_primary"], "pg-1");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    let gap = acked
        .windows(2)
        .map(|w| (w[1].1 - w[0].1).as_secs_f64())
        .fold(0.0, f64::max);
    eprintln!(
        "switchover: {} acknowledged writes; longest gap between acknowledgements {gap:.2} s; sidecar reports {:.2} s without writes",
        acked.len(),
        body["write_unavailable_seconds"].as_f64().unwrap_or(-1.0)
    );
    assert_eq!(c.pool_primary().await.as_deref(), Some("pg-1"));
    let p = c.node("pg-1").await.unwrap();
    let rows = query(&p, "SELECT id FROM acked").await.unwrap();
    let present: std::collections::HashSet<i64> = rows
        .iter()
        .filter_map(|r| r[0].as_deref()?.parse().ok())
        .collect();
    let lost: Vec<i64> = acked
        .iter()
        .map(|a| a.0)
        .filter(|id| !present.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged ids lost: {lost:?}");
    let total = present.len() as i64;
    wait_rejoined(&c, "pg-1", "pg-0", total, Duration::from_secs(60)).await;
    wait_rejoined(&c, "pg-1", "pg-2", total, Duration::from_secs(60)).await;
    let m = metrics(&c).await;
    assert_eq!(
        metric(&m, "pgpool_sidecar_switchovers_total{result=\"success\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn failback_restores_the_preferred_primary() {
    let c = ready(
        "failback",
        &[
            ("SIDECAR_PREFERRED_PRIMARY", "pg-0"),
            ("SIDECAR_AUTO_FAILBACK", "true"),
        ],
    )
    .await;
    c.docker(&["kill", &c.container("pg-0")]);
    c.write_until_ok(1, Duration::from_secs(30)).await;
    assert_ne!(c.pool_primary().await.as_deref(), Some("pg-0"));
    // Rejoined by rewind, then switched back to as soon as it is caught up.
    wait_for("pg-0 primary again", Duration::from_secs(120), || async {
        (c.pool_primary().await.as_deref() == Some("pg-0")).then_some(())
    })
    .await;
    c.write_until_ok(2, Duration::from_secs(30)).await;
    // The switchover is counted once the old primary is back too.
    wait_for("switchover counted", Duration::from_secs(60), || async {
        let m = metrics(&c).await;
        (metric(&m, "pgpool_sidecar_switchovers_total{result=\"success\"}") == Some(1.0))
            .then_some(())
    })
    .await;
    for s in ["pg-1", "pg-2"] {
        wait_rejoined(&c, "pg-0", s, 2, Duration::from_secs(60)).await;
    }
}

#[tokio::test]
async fn refusals_are_clear_and_change_nothing() {
    let c = ready("refuse", &[]).await;
    let (s, b) = c.post("/nodes/pg-0/recover", Some(API_TOKEN)).await;
    assert_eq!(s, 409, "{b}");
    assert!(
        b["error"].as_str().unwrap().contains("is the primary"),
        "{b}"
    );
    let (s, b) = c.post("/nodes/pg-9/recover", Some(API_TOKEN)).await;
    assert_eq!(s, 404, "{b}");
    assert!(b["error"].as_str().unwrap().contains("unknown node"), "{b}");
    for path in ["/nodes/pg-1/recover", "/switchover"] {
        let (s, b) = c.post(path, None).await;
        assert_eq!(s, 401, "{path}: {b}");
        assert!(
            b["error"].as_str().unwrap().contains("Authorization"),
            "{b}"
        );
        let (s, _) = c.post(path, Some("wrong-token-0123456789")).await;
        assert_eq!(s, 401);
    }
    let (s, b) = c.post("/switchover?to=pg-0", Some(API_TOKEN)).await;
    assert_eq!(s, 409, "{b}");
    // The CLI inside the container says the same and exits non-zero.
    let (code, _, err) = c.docker(&[
        "exec",
        &c.container("pgpool"),
        "pgpool-sidecar",
        "recover",
        "pg-0",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("is the primary"), "{err}");
    // Nothing moved.
    assert_eq!(c.pool_primary().await.as_deref(), Some("pg-0"));
    let m = metrics(&c).await;
    assert_eq!(
        metric(&m, "pgpool_sidecar_switchovers_total{result=\"success\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, "pgpool_sidecar_failovers_total{result=\"success\"}"),
        Some(0.0)
    );
    assert!(!m.contains("pgpool_sidecar_recoveries_total{method=\"attach\",node=\"0\""));

    // Without a configured token the mutating endpoints are off altogether.
    let c2 = Cluster::new("notoken")
        .env("SIDECAR_API_TOKEN", "")
        .up()
        .await;
    let (s, b) = c2.post("/switchover", Some(API_TOKEN)).await;
    assert_eq!(s, 403, "{b}");
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("PGPOOL_SIDECAR_API_TOKEN"),
        "{b}"
    );
}
