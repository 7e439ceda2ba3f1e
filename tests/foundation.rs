//! The foundation end to end: a real compose cluster (pgpool + sidecar, three PostgreSQL nodes,
//! Prometheus), built from local images.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[tokio::test]
async fn cluster_comes_up_replicates_exports_metrics_and_stops_cleanly() {
    let c = Cluster::new("found").profile("monitoring").up().await;

    // pgpool lists three nodes: 0 primary, 1 and 2 standby, all up (standbys provisioned).
    // A fresh session each poll: a session sees a node attached after it began as `waiting`.
    let nodes = wait_for(
        "all three nodes up in pgpool",
        Duration::from_secs(120),
        || {
            let c = &c;
            async move {
                let pool = c.pgpool().await?;
                let n = pool_nodes(&pool).await;
                (n.len() == 3 && n.iter().all(|(_, s, _)| s == "up")).then_some(n)
            }
        },
    )
    .await;
    assert_eq!(nodes[0], ("0".into(), "up".into(), "primary".into()));
    assert_eq!(nodes[1], ("1".into(), "up".into(), "standby".into()));
    assert_eq!(nodes[2], ("2".into(), "up".into(), "standby".into()));

    let pool = c.pgpool().await.expect("pgpool accepts connections");
    // Every node runs the PostgreSQL major the matrix asked for (a misconfigured matrix would
    // otherwise test the default image three times).
    for node in ["pg-0", "pg-1", "pg-2"] {
        let client = c.node(node).await.expect("node reachable directly");
        let v = query(&client, "SHOW server_version_num").await.unwrap();
        let major = v[0][0]
            .as_deref()
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap()
            / 10_000;
        assert_eq!(major, c.nodes.major, "{node} runs PostgreSQL {major}");
    }
    eprintln!(
        "nodes: {} (PostgreSQL {}), compose {}",
        c.nodes.image,
        c.nodes.major,
        if compose_v2() { "v2" } else { "v1" }
    );
    // A row written through pgpool is readable on each standby directly within 5 s.
    query(
        &pool,
        "CREATE TABLE IF NOT EXISTS t (id int primary key, v text)",
    )
    .await
    .unwrap();
    query(&pool, "INSERT INTO t VALUES (1, 'through pgpool')")
        .await
        .unwrap();
    let written = Instant::now();
    for node in ["pg-1", "pg-2"] {
        let client = c.node(node).await.expect("standby reachable directly");
        let in_recovery = query(&client, "SELECT pg_is_in_recovery()").await.unwrap();
        assert_eq!(
            in_recovery[0][0].as_deref(),
            Some("t"),
            "{node} is a standby"
        );
        wait_for("row on standby", Duration::from_secs(5), || {
            let client = &client;
            async move {
                let rows = query(client, "SELECT v FROM t WHERE id = 1").await.ok()?;
                (rows.first()?.first()?.as_deref() == Some("through pgpool")).then_some(())
            }
        })
        .await;
        eprintln!(
            "{node}: row visible {:.3} s after commit",
            written.elapsed().as_secs_f64()
        );
    }

    // /metrics: valid exposition format, and the values say what the cluster is.
    let (code, text) = c.http("/metrics").await;
    assert_eq!(code, 200);
    let metrics = wait_for(
        "metrics to show the streaming cluster",
        Duration::from_secs(10),
        || {
            let c = &c;
            async move {
                let (_, t) = c.http("/metrics").await;
                (metric(&t, "pgpool_sidecar_replication_streaming{node=\"1\"}") == Some(1.0)
                    && metric(&t, "pgpool_sidecar_replication_streaming{node=\"2\"}") == Some(1.0))
                .then_some(t)
            }
        },
    )
    .await;
    for n in 0..3 {
        assert_eq!(
            metric(
                &metrics,
                &format!("pgpool_sidecar_backend_up{{node=\"{n}\"}}")
            ),
            Some(1.0)
        );
    }
    assert_eq!(metric(&metrics, "pgpool_sidecar_primaries"), Some(1.0));
    assert_eq!(metric(&metrics, "pgpool_sidecar_up"), Some(1.0));
    assert_eq!(
        metric(
            &metrics,
            "pgpool_sidecar_backend_role{node=\"0\",role=\"primary\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "pgpool_sidecar_pgpool_backend_status{node=\"2\",status=\"up\"}"
        ),
        Some(1.0)
    );
    assert!(metrics.contains("process_resident_memory_bytes"));
    assert!(!text.is_empty());
    let mut promtool = Command::new("docker")
        .args([
            "run",
            "--rm",
            "-i",
            "--entrypoint",
            "promtool",
            "pgpool-sidecar-prometheus:local",
            "check",
            "metrics",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // /status is JSON with the roles and no secret.
    let (_, status_text) = c.http("/status").await;
    let status: serde_json::Value = serde_json::from_str(&status_text).unwrap();
    assert_eq!(status["primary"], "pg-0");
    assert_eq!(status["nodes"][1]["state"], "streaming");
    assert_eq!(status["nodes"][2]["state"], "streaming");
    assert!(status_text.contains("<redacted>"));
    let sidecar_logs = c.logs("pgpool");
    for secret in SECRETS {
        assert!(!status_text.contains(secret), "secret in /status");
        assert!(!metrics.contains(secret), "secret in /metrics");
        assert!(
            !sidecar_logs.contains(secret),
            "secret in the sidecar's log"
        );
    }
    let (ready, _) = c.http("/readyz").await;
    assert_eq!(ready, 200);
    let (healthy, _) = c.http("/healthz").await;
    assert_eq!(healthy, 200);

    // A real Prometheus scrapes the sidecar.
    let prom = format!("http://127.0.0.1:{}", c.prometheus_port);
    wait_for("Prometheus target up", Duration::from_secs(60), || {
        let prom = prom.clone();
        async move {
            let v: serde_json::Value = reqwest::get(format!("{prom}/api/v1/targets"))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let targets = v["data"]["activeTargets"].as_array()?;
            targets
                .iter()
                .any(|t| t["health"] == "up" && t["labels"]["job"] == "pgpool-sidecar")
                .then_some(())
        }
    })
    .await;
    // The scraped gauge, and the design's name through the image's recording rule. Polled until
    // it shows one primary: a scrape taken before the fresh nodes of a plain official-image
    // cluster were rebuilt into standbys rightly counted each of them as a primary too.
    for series in ["pgpool_sidecar_primaries", "pgpool_sidecar_primary_count"] {
        wait_for(
            &format!("{series} = 1 in Prometheus"),
            Duration::from_secs(30),
            || async { c.prom_query(series).await.filter(|v| v == "1") },
        )
        .await;
    }

    // Idle memory of the sidecar process (PID 1 of its container), as a figure for the notes.
    let rss = metric(&metrics, "process_resident_memory_bytes").unwrap_or(0.0);
    eprintln!("sidecar RSS while idle: {:.1} MiB", rss / 1048576.0);

    // SIGTERM: pgpool stops and the sidecar exits 0 within 10 s.
    let id = c.container("pgpool");
    let started = Instant::now();
    let (code, _, err) = sh(Command::new("docker").args(["kill", "-s", "TERM", &id]));
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = sh(Command::new("docker").args(["wait", &id]));
    assert_eq!(code, 0);
    let secs = started.elapsed().as_secs_f64();
    eprintln!("SIGTERM to exit: {secs:.2} s");
    assert_eq!(out.trim(), "0", "sidecar exit code after SIGTERM");
    assert!(secs < 10.0, "took {secs} s");
    let logs = c.logs("pgpool");
    assert!(logs.contains("pgpool stopped"), "{logs}");
}
