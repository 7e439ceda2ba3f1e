//! Connection saturation end to end: a cluster with a small pgpool (num_init_children 4), every
//! client slot taken through pgpool → the sidecar's metrics and `/status` show the pool full,
//! the bundled Prometheus fires its alert; the clients leave → the numbers drop again.

mod common;

use std::time::{Duration, Instant};

use common::*;

const ALL: [&str; 3] = ["pg-0", "pg-1", "pg-2"];

/// pgpool's client slots in this test: small, so a few sessions fill them.
const SLOTS: usize = 4;

const IN_USE: &str = "pgpool_sidecar_pgpool_client_connections";
const MAX: &str = "pgpool_sidecar_pgpool_client_connections_max";
const ALERT: &str = "PgpoolSidecarClientSlotsSaturated";

async fn metric_now(c: &Cluster, series: &str) -> Option<f64> {
    metric(&c.http("/metrics").await.1, series)
}

/// The state ("pending", "firing") of alert `name` in the bundled Prometheus: `Some(None)` when
/// Prometheus answered and the alert is not active, `None` when Prometheus did not answer.
async fn alert_state(c: &Cluster, name: &str) -> Option<Option<String>> {
    let url = format!("http://127.0.0.1:{}/api/v1/alerts", c.prometheus_port);
    let v: serde_json::Value = reqwest::get(url).await.ok()?.json().await.ok()?;
    Some(
        v["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == name)
            .and_then(|a| a["state"].as_str())
            .map(str::to_string),
    )
}

/// pgpool's children as its own tools see them (for a failure's message): processes, the
/// states `pcp_proc_info` gives, and the TCP states of pgpool's port.
fn children(c: &Cluster) -> String {
    let script = r#"ps -o pid,stat,args -u pgpool | grep "pgpool:"
u=$(cut -d: -f3 /etc/pgpool2/pcppass)
PCPPASSFILE=/etc/pgpool2/pcppass pcp_proc_info -h 127.0.0.1 -p 9898 -U "$u" -w -a -v |
  grep -E "^(PID|Status|Client host|Client port|Application name|Client connection time) "
echo "TCP states on :5432 (01 established, 08 close-wait):"
awk 'NR > 1 && $2 ~ /:1538$/ { print $4 }' /proc/net/tcp | sort | uniq -c"#;
    let (_, out, err) = c.docker(&["exec", &c.container("pgpool"), "sh", "-c", script]);
    format!("{out}{err}")
}

#[tokio::test]
async fn full_client_slots_show_in_metrics_status_and_fire_the_alert() {
    let c = Cluster::new("sat")
        .env("PGPOOL_NUM_INIT_CHILDREN", &SLOTS.to_string())
        .profile("monitoring")
        .up()
        .await;
    c.wait_pool("pg-0", &ALL, Duration::from_secs(120)).await;

    // The limit comes from the rendered pgpool.conf: the compose override, not the default 32.
    assert_eq!(metric_now(&c, MAX).await, Some(SLOTS as f64));
    let status = c.status().await;
    assert_eq!(status["pgpool_clients"]["max"], SLOTS);
    // Idle: at most the sidecar's own short SHOW POOL_NODES session holds a child.
    wait_for(
        "client slots read as idle",
        Duration::from_secs(20),
        || async { metric_now(&c, IN_USE).await.filter(|v| *v <= 1.0) },
    )
    .await;
    let max_connections: f64 = {
        let node = c.node("pg-0").await.expect("pg-0 answers");
        query(&node, "SHOW max_connections").await.unwrap()[0][0]
            .as_deref()
            .unwrap()
            .parse()
            .unwrap()
    };
    wait_for(
        "max_connections of every node in the metrics",
        Duration::from_secs(20),
        || async {
            let text = c.http("/metrics").await.1;
            (0..3)
                .all(|i| {
                    metric(
                        &text,
                        &format!("pgpool_sidecar_backend_max_connections{{node=\"{i}\"}}"),
                    ) == Some(max_connections)
                })
                .then_some(())
        },
    )
    .await;

    // Every slot taken by an idle session, as an application's pool would hold them.
    let mut clients = Vec::new();
    for i in 0..SLOTS {
        let client = wait_for(
            &format!("session {i} through pgpool"),
            Duration::from_secs(20),
            || c.pgpool(),
        )
        .await;
        clients.push(client);
    }
    let full = Instant::now();
    wait_for(
        "all client slots in use in the metrics",
        Duration::from_secs(20),
        || async { metric_now(&c, IN_USE).await.filter(|v| *v == SLOTS as f64) },
    )
    .await;
    c.figure(&format!(
        "saturation: client slots full → metric {SLOTS}/{SLOTS} after {:.1} s",
        full.elapsed().as_secs_f64()
    ));
    // One more waits in pgpool's listen backlog (reserved_connections = 0): no refusal, a
    // timeout on the client's side (4 s in `connect_port`).
    let refused = Cluster::connect_port(c.pgpool_port).await.is_none();
    eprintln!("a session beyond num_init_children: connect timed out = {refused}");
    let status = c.status().await;
    assert_eq!(status["pgpool_clients"]["in_use"], SLOTS, "{status}");
    // pgpool opens its sessions to every backend it may balance to: each node has at least one
    // client backend per taken slot.
    let text = c.http("/metrics").await.1;
    for i in 0..3 {
        let n = metric(
            &text,
            &format!("pgpool_sidecar_backend_connections{{node=\"{i}\"}}"),
        );
        assert!(
            n.is_some_and(|n| n >= SLOTS as f64 && n <= max_connections),
            "node {i}: {n:?} connections"
        );
        assert_eq!(status["nodes"][i]["connections"]["max"], max_connections);
    }
    eprintln!(
        "while saturated: pgpool_sidecar_up = {:?} (the sidecar's own SHOW POOL_NODES needs a free child)",
        metric(&text, "pgpool_sidecar_up")
    );

    // `for: 1m` in the rule: pending first, firing a minute later.
    wait_for(
        &format!("{ALERT} firing in Prometheus"),
        Duration::from_secs(150),
        || async {
            alert_state(&c, ALERT)
                .await
                .flatten()
                .filter(|s| s == "firing")
        },
    )
    .await;
    c.figure(&format!(
        "saturation: {ALERT} firing {:.1} s after the slots filled (for: 1m, scrape and evaluation every 5 s)",
        full.elapsed().as_secs_f64()
    ));

    // The clients leave: the slots free up (pgpool keeps their backend connections cached) and
    // the alert resolves.
    drop(clients);
    let left = Instant::now();
    // Once up to 13 s on the 2-core CI machine: the sidecar's own SHOW POOL_NODES sessions,
    // slowed down by the load, held a child at the moments sampled.
    let limit = Duration::from_secs(60);
    while metric_now(&c, IN_USE).await != Some(0.0) {
        assert!(
            left.elapsed() < limit,
            "timed out after {limit:?} waiting for client slots free again: {:?} in use; pgpool's children:\n{}",
            metric_now(&c, IN_USE).await,
            children(&c)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "slots read as free {:.1} s after the clients left",
        left.elapsed().as_secs_f64()
    );
    wait_for("the alert resolved", Duration::from_secs(60), || async {
        alert_state(&c, ALERT)
            .await
            .filter(Option::is_none)
            .map(drop)
    })
    .await;
    wait_for(
        "/status shows free slots",
        Duration::from_secs(10),
        || async { (c.status().await["pgpool_clients"]["in_use"].as_u64()? <= 1).then_some(()) },
    )
    .await;
}
