//! Online recovery, switchover and failback end to end: the old project's two scenarios (a failed
//! standby, a failed primary) and the ways a node comes back — re-attach, pg_rewind, rebuild —
//! plus recreated containers, an interrupted rebuild, switchover, failback and refusals.

mod common;

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

async fn metrics(c: &Cluster) -> String {
    c.http("/metrics").await.1
}

/// Stops a standby's container and waits until pgpool has marked it down: pgpool restarts its
/// children while it detaches a node, dropping the connections of that moment.
async fn stop_standby(c: &Cluster, node: &str) {
    c.docker(&["stop", &c.container(node)]);
    let id = node.trim_start_matches("pg-");
    wait_for(
        &format!("pgpool marks {node} down"),
        Duration::from_secs(15),
        || async {
            let pool = c.pgpool().await?;
            pool_nodes(&pool)
                .await
                .iter()
                .any(|(i, s, _)| i == id && s == "down")
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn failed_standby_comes_back_and_is_reattached_with_the_writes_it_missed() {
    let c = ready("stbyback", &[]).await;
    let id = c.container("pg-2");
    stop_standby(&c, "pg-2").await;
    for i in 1..=100 {
        c.write_once(i).await.expect("write while pg-2 is down");
    }
    c.docker(&["start", &id]);
    let t = Instant::now();
    c.wait_rejoined("pg-0", "pg-2", 100, Duration::from_secs(60))
        .await;
    eprintln!(
        "standby back, streaming and attached {:.2} s after its start",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(c.pool_primary().await.as_deref(), Some("pg-0"));
}

/// Cuts both standbys off, commits rows 900001..900010 on pg-0 alone (its un-replicated tail),
/// kills pg-0 and waits for the first write through the new primary, which it returns.
async fn diverge_and_kill_the_primary(c: &Cluster) -> String {
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
            (!c.streams_from("pg-0", "pg-1").await && !c.streams_from("pg-0", "pg-2").await)
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
    c.pool_primary().await.expect("new primary")
}

#[tokio::test]
async fn killed_primary_with_more_wal_since_its_checkpoint_than_wal_keep_size_is_still_rewound() {
    // No slots on the old primary: only wal_keep_size (256MB) would keep its WAL.
    let c = ready(
        "rewindwal",
        &[
            ("SIDECAR_REPLICATION_SLOTS", "false"),
            ("SIDECAR_AUTO_REJOIN", "false"),
        ],
    )
    .await;
    let pg0 = c.node("pg-0").await.unwrap();
    query(&pg0, "CHECKPOINT").await.unwrap();
    query(
        &pg0,
        "CREATE TABLE shared_filler AS SELECT g, repeat(md5(g::text), 30) AS pad \
         FROM generate_series(1, 300000) g",
    )
    .await
    .unwrap();
    let since = c.value_on("pg-0",
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), redo_lsn)::bigint FROM pg_control_checkpoint()",
    )
    .await
    .and_then(|v| v.parse::<i64>().ok())
    .unwrap();
    eprintln!("WAL since the old primary's last checkpoint: {since} bytes");
    assert!(since > 256 << 20, "{since}");
    wait_for(
        "both standbys replay the filler",
        Duration::from_secs(60),
        || async {
            let n = c.value_on("pg-0",
                "SELECT count(*) FROM pg_stat_replication WHERE replay_lsn >= pg_current_wal_lsn()",
            )
            .await?;
            (n == "2").then_some(())
        },
    )
    .await;
    let new = diverge_and_kill_the_primary(&c).await;
    let (status, body) = c.post("/nodes/pg-0/recover", Some(API_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["method"], "rewind", "{body}");
    eprintln!("old primary with {since} bytes of WAL since its checkpoint: {body}");
    c.wait_rejoined(&new, "pg-0", 1, Duration::from_secs(60))
        .await;
    assert_eq!(
        c.value_on("pg-0", "SELECT count(*) FROM shared_filler")
            .await
            .as_deref(),
        Some("300000")
    );
}

#[tokio::test]
async fn failed_primary_is_rewound_into_a_standby_and_loses_only_its_unreplicated_tail() {
    let c = ready("rewind", &[]).await;
    let new = diverge_and_kill_the_primary(&c).await;
    for i in 2..=20 {
        c.write_until_ok(i, Duration::from_secs(10)).await;
    }
    // The old primary comes back by itself (auto-rejoin) as a standby of the new primary.
    let t = Instant::now();
    c.wait_rejoined(&new, "pg-0", 20, Duration::from_secs(120))
        .await;
    eprintln!(
        "old primary rewound and attached {:.2} s after the writes",
        t.elapsed().as_secs_f64()
    );
    let tail = c
        .value_on("pg-0", "SELECT count(*) FROM acked WHERE id > 900000")
        .await;
    assert_eq!(
        tail.as_deref(),
        Some("0"),
        "the un-replicated tail survived"
    );
    let rec = c.value_on("pg-0", "SELECT pg_is_in_recovery()").await;
    assert_eq!(rec.as_deref(), Some("t"));
    // The slots moved with the primary: every standby streams through its slot on the new one,
    // and the old primary no longer keeps the slots it held as primary.
    for standby in ALL.iter().filter(|n| **n != new) {
        let slot = format!("sidecar_{}", standby.replace('-', "_"));
        wait_for(
            &format!("{standby} streams through {slot} on {new}"),
            Duration::from_secs(15),
            || async { slot_on(&c, &new, &slot).await.filter(|s| s.0) },
        )
        .await;
    }
    let stale = c
        .value_on(
            "pg-0",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'sidecar%'",
        )
        .await;
    assert_eq!(
        stale.as_deref(),
        Some("0"),
        "stale slots left on the rewound node"
    );
    let m = metrics(&c).await;
    let logs = c.logs("pgpool");
    // An official-like first primary ran without wal_log_hints and data checksums: pg_rewind
    // cannot work on it, so the ladder rebuilds it straight away and says why.
    let (method, other) = if c.nodes.rewindable_from_init {
        ("rewind", "rebuild")
    } else {
        ("rebuild", "rewind")
    };
    assert_eq!(
        metric(
            &m,
            &format!("pgpool_sidecar_recoveries_total{{method=\"{method}\",node=\"0\",result=\"success\"}}")
        ),
        Some(1.0),
        "{m}"
    );
    for result in ["success", "failure"] {
        assert_eq!(
            metric(
                &m,
                &format!(
                    "pgpool_sidecar_recoveries_total{{method=\"{other}\",node=\"0\",result=\"{result}\"}}"
                )
            ),
            Some(0.0),
            "old primary was recovered by {other}, not {method}: {m}"
        );
    }
    if c.nodes.rewindable_from_init {
        let line = logs
            .lines()
            .find(|l| l.contains("un-replicated tail discarded"))
            .expect("log names the discarded tail");
        assert!(line.contains("from_lsn="), "{line}");
    } else {
        assert!(
            logs.lines()
                .any(|l| l.contains("rebuilding instead of rewinding")
                    && l.contains("wal_log_hints")),
            "the log says why the old primary was rebuilt"
        );
    }
}

#[tokio::test]
async fn impossible_rewind_falls_back_to_rebuild_on_request() {
    let c = ready("norewind", &[("SIDECAR_AUTO_REJOIN", "false")]).await;
    c.docker(&["kill", &c.container("pg-0")]);
    c.write_until_ok(1, Duration::from_secs(30)).await;
    let new = c.pool_primary().await.unwrap();
    // Take away the WAL pg_rewind (and crash recovery) would need.
    let wal = format!("/volume/{}/pg_wal", c.nodes.data_in_volume);
    let (code, _, err) = c.docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{}_pg0data:/volume", c.project),
        "--entrypoint",
        "bash",
        c.nodes.image,
        "-c",
        &format!("test -d {wal} && rm -f {wal}/0000*"),
    ]);
    assert_eq!(code, 0, "{err}");
    let (status, body) = c.post("/nodes/pg-0/recover", Some(API_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["method"], "rebuild", "{body}");
    eprintln!("recover after impossible rewind: {body}");
    c.wait_rejoined(&new, "pg-0", 1, Duration::from_secs(60))
        .await;
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
    c.wait_rejoined("pg-0", "pg-2", 0, Duration::from_secs(60))
        .await;
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
    c.wait_rejoined("pg-0", "pg-2", 10, Duration::from_secs(90))
        .await;
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
    c.wait_rejoined("pg-0", "pg-1", 10, Duration::from_secs(120))
        .await;
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
    let writer = Writer::start(c.clone());
    writer.wait_acked(20, Duration::from_secs(10)).await;
    let (status, body) = c.post("/switchover?to=pg-1", Some(API_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["new_primary"], "pg-1");
    // Writes go on through pgpool to the new primary.
    let after = writer.count() + 20;
    writer.wait_acked(after, Duration::from_secs(15)).await;
    let acked = writer.stop().await;
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
    let lost = lost_on(&p, &acked).await;
    assert!(lost.is_empty(), "acknowledged ids lost: {lost:?}");
    let total = c
        .value_on("pg-1", "SELECT count(*) FROM acked")
        .await
        .and_then(|n| n.parse::<i64>().ok())
        .expect("row count on the new primary");

    c.wait_rejoined("pg-1", "pg-0", total, Duration::from_secs(60))
        .await;
    c.wait_rejoined("pg-1", "pg-2", total, Duration::from_secs(60))
        .await;
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
    c.primary_other_than("pg-0").await;
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
        c.wait_rejoined("pg-0", s, 2, Duration::from_secs(60)).await;
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
    assert_eq!(
        metric(
            &m,
            "pgpool_sidecar_recoveries_total{method=\"attach\",node=\"0\",result=\"success\"}"
        ),
        Some(0.0)
    );

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

/// One row of the primary's `pg_replication_slots` for `slot`: (active, wal_status,
/// retained bytes), or None when there is no such slot.
async fn slot_on(c: &Cluster, node: &str, slot: &str) -> Option<(bool, String, i64)> {
    let client = c.node(node).await?;
    let q = format!(
        "SELECT active, coalesce(wal_status, ''), \
           coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), -1)::bigint \
         FROM pg_replication_slots WHERE slot_name = '{slot}'"
    );
    let rows = query(&client, &q).await.ok()?;
    let r = rows.first()?;
    Some((
        r[0].as_deref() == Some("t"),
        r[1].clone().unwrap_or_default(),
        r[2].as_deref()?.parse().ok()?,
    ))
}

/// Stops `standby`, then makes the primary write `mb` MB of WAL and checkpoint with
/// `wal_keep_size = 0`, so only a replication slot can still hold what the standby missed.
async fn away_while_primary_writes(c: &Cluster, standby: &str, mb: i64) {
    let pg0 = c.node("pg-0").await.unwrap();
    query(&pg0, "ALTER SYSTEM SET wal_keep_size = 0")
        .await
        .unwrap();
    query(&pg0, "SELECT pg_reload_conf()").await.unwrap();
    stop_standby(c, standby).await;
    // Straight to the primary: pgpool may still be restarting its children after the detach,
    // and what is under test here is the WAL, not the pooler.
    query(
        &pg0,
        "INSERT INTO acked SELECT g FROM generate_series(1, 50) g",
    )
    .await
    .unwrap();
    // About 1.1 kB of WAL per row.
    let rows = mb * 1000;
    query(
        &pg0,
        &format!(
            "CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 30) AS pad \
             FROM generate_series(1, {rows}) g"
        ),
    )
    .await
    .unwrap();
    for _ in 0..3 {
        query(&pg0, "SELECT pg_switch_wal()").await.unwrap();
        query(&pg0, "CHECKPOINT").await.unwrap();
    }
}

/// Recovers pg-2 after [`away_while_primary_writes`]: by `method`, ending streaming, attached
/// and holding everything written meanwhile.
async fn recover_returning_standby(c: &Cluster, method: &str, what: &str) {
    let t = Instant::now();
    let (status, body) = c.post("/nodes/pg-2/recover", Some(API_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["method"], method, "{body}");
    c.wait_rejoined("pg-0", "pg-2", 50, Duration::from_secs(60))
        .await;
    eprintln!(
        "standby away for 100 MB of WAL, {what}: streaming and attached in {:.2} s: {body}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        c.value_on("pg-2", "SELECT count(*) FROM filler")
            .await
            .as_deref(),
        Some("100000")
    );
}

#[tokio::test]
async fn standby_away_catches_up_through_its_slot_and_stray_slots_are_dropped() {
    let c = ready("slotkeep", &[("SIDECAR_AUTO_REJOIN", "false")]).await;
    wait_for(
        "pg-2 streams through its slot",
        Duration::from_secs(30),
        || async { slot_on(&c, "pg-0", "sidecar_pg_2").await.filter(|s| s.0) },
    )
    .await;
    // The sidecar's own slots only: an operator's slot stays, a slot of no configured node goes.
    let pg0 = c.node("pg-0").await.unwrap();
    query(
        &pg0,
        "SELECT pg_create_physical_replication_slot('operator_slot'), \
                pg_create_physical_replication_slot('sidecar_pg_9')",
    )
    .await
    .unwrap();
    wait_for(
        "the sidecar drops the slot of a node it does not have",
        Duration::from_secs(15),
        || async {
            slot_on(&c, "pg-0", "sidecar_pg_9")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(slot_on(&c, "pg-0", "operator_slot").await.is_some());
    query(&pg0, "SELECT pg_drop_replication_slot('operator_slot')")
        .await
        .unwrap();

    away_while_primary_writes(&c, "pg-2", 100).await;
    let (active, wal_status, retained) = slot_on(&c, "pg-0", "sidecar_pg_2").await.unwrap();
    eprintln!("slot of the absent standby: active={active} wal_status={wal_status} retained={retained} bytes");
    assert!(!active);
    assert_ne!(wal_status, "lost");
    // The checkpoints above would have removed this WAL without the slot.
    let held = query(
        &pg0,
        "SELECT (SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'sidecar_pg_2') \
                  < (SELECT redo_lsn FROM pg_control_checkpoint()) - 64 * 1024 * 1024, \
                EXISTS (SELECT FROM pg_ls_waldir() WHERE name = \
                  (SELECT pg_walfile_name(restart_lsn) FROM pg_replication_slots \
                   WHERE slot_name = 'sidecar_pg_2'))",
    )
    .await
    .unwrap();
    assert_eq!(
        held[0],
        vec![Some("t".to_string()), Some("t".to_string())],
        "the slot must hold WAL from before the last checkpoint's redo point"
    );
    let m = wait_for(
        "the retained WAL in the metrics",
        Duration::from_secs(10),
        || async {
            let m = metrics(&c).await;
            let v = metric(
                &m,
                "pgpool_sidecar_replication_slot_retained_bytes{node=\"2\"}",
            )?;
            (v >= (64 << 20) as f64).then_some(m)
        },
    )
    .await;
    assert_eq!(
        metric(
            &m,
            "pgpool_sidecar_replication_slot_wal_status{node=\"2\",status=\"lost\"}"
        ),
        Some(0.0)
    );

    recover_returning_standby(&c, "attach", "back through its slot").await;
    wait_for(
        "pg-2 streams through its slot again",
        Duration::from_secs(15),
        || async { slot_on(&c, "pg-0", "sidecar_pg_2").await.filter(|s| s.0) },
    )
    .await;
}

#[tokio::test]
async fn standby_away_past_the_slot_guard_is_rebuilt() {
    // With the monitoring profile: a real Prometheus scrapes the lost slot and raises the alert.
    let c = Cluster::new("slotguard")
        .env("SIDECAR_AUTO_REJOIN", "false")
        .env("SIDECAR_MAX_SLOT_WAL_KEEP_SIZE", "32MB")
        .profile("monitoring")
        .up()
        .await;
    c.wait_pool("pg-0", &ALL, Duration::from_secs(120)).await;
    c.create_acked_table().await;
    wait_for(
        "pg-2 streams through its slot",
        Duration::from_secs(30),
        || async { slot_on(&c, "pg-0", "sidecar_pg_2").await.filter(|s| s.0) },
    )
    .await;
    let guard = wait_for(
        "the sidecar sets the guard on the primary",
        Duration::from_secs(10),
        || async {
            c.value_on("pg-0", "SHOW max_slot_wal_keep_size")
                .await
                .filter(|v| v == "32MB")
        },
    )
    .await;
    eprintln!("max_slot_wal_keep_size on the primary: {guard}");

    away_while_primary_writes(&c, "pg-2", 100).await;
    wait_for(
        "the guard invalidates pg-2's slot",
        Duration::from_secs(20),
        || async {
            slot_on(&c, "pg-0", "sidecar_pg_2")
                .await
                .filter(|s| s.1 == "lost")
        },
    )
    .await;
    wait_for(
        "the lost slot in the metrics",
        Duration::from_secs(10),
        || async {
            let m = metrics(&c).await;
            (metric(
                &m,
                "pgpool_sidecar_replication_slot_wal_status{node=\"2\",status=\"lost\"}",
            ) == Some(1.0))
            .then_some(())
        },
    )
    .await;

    let scraped = wait_for(
        "Prometheus scrapes the lost slot",
        Duration::from_secs(60),
        || async {
            c.prom_query("pgpool_sidecar_replication_slot_wal_status{node=\"2\",status=\"lost\"}")
                .await
                .filter(|v| v == "1")
        },
    )
    .await;
    let alert = wait_for("the slot-lost alert", Duration::from_secs(60), || async {
        c.prom_query("ALERTS{alertname=\"PgpoolSidecarReplicationSlotLost\",node=\"2\"}")
            .await
    })
    .await;
    eprintln!("Prometheus: lost slot scraped ({scraped}), alert active ({alert})");
    recover_returning_standby(&c, "rebuild", "past the slot guard, rebuilt").await;
    assert!(c
        .logs("pgpool")
        .contains("max_slot_wal_keep_size was exceeded"));
    // A fresh slot, in use and holding WAL again.
    wait_for(
        "pg-2 streams through a fresh slot",
        Duration::from_secs(15),
        || async {
            slot_on(&c, "pg-0", "sidecar_pg_2")
                .await
                .filter(|s| s.0 && s.1 != "lost")
        },
    )
    .await;
}
