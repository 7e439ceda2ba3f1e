//! Plain official-image nodes, end to end: the nodes get only POSTGRES_USER/POSTGRES_PASSWORD and
//! run the official-like image (no replication role, initdb's pg_hba.conf plus `host all all all
//! scram-sha-256`, wal_log_hints off). The sidecar must make the cluster whole by itself, fail
//! over, and bring each failed primary back — rebuilt while it could not be rewound, rewound
//! once its data allows it.

mod common;

use std::time::{Duration, Instant};

use common::*;

const ALL: [&str; 3] = ["pg-0", "pg-1", "pg-2"];

async fn one(c: &Cluster, node: &str, sql: &str) -> Option<String> {
    let client = c.node(node).await?;
    query(&client, sql).await.ok()?.first()?.first()?.clone()
}

async fn recoveries(c: &Cluster, node: &str, method: &str) -> Option<f64> {
    let (_, m) = c.http("/metrics").await;
    let id = node.trim_start_matches("pg-");
    metric(
        &m,
        &format!(
            "pgpool_sidecar_recoveries_total{{method=\"{method}\",node=\"{id}\",result=\"success\"}}"
        ),
    )
}

/// Waits until `node` is a standby streaming from `primary`, up in pgpool, holding `rows` rows.
async fn wait_standby_of(c: &Cluster, primary: &str, node: &str, rows: i64, limit: Duration) {
    wait_for(
        &format!("{node} streaming from {primary}, attached, {rows} rows"),
        limit,
        || async move {
            let sender = one(
                c,
                primary,
                &format!(
                    "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{node}' AND state = 'streaming'"
                ),
            )
            .await?;
            let pool = c.pgpool().await?;
            let id = node.trim_start_matches("pg-");
            let up = pool_nodes(&pool)
                .await
                .iter()
                .any(|(i, s, r)| i == id && s == "up" && r == "standby");
            let n = one(c, node, "SELECT count(*) FROM acked").await?;
            (sender == "1" && up && n == rows.to_string()).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn plain_official_nodes_are_adopted_then_fail_over_and_rejoin() {
    let started = Instant::now();
    let c = Cluster::new("official")
        .with_nodes(NODES_OFFICIAL)
        .up()
        .await;

    // What the nodes were given: the superuser and its password, nothing about replication.
    for node in ALL {
        let env = c.inspect(node, "{{json .Config.Env}}");
        assert!(env.contains("POSTGRES_PASSWORD="), "{node}: {env}");
        assert!(
            !env.contains("REPLICATION"),
            "{node} was told about replication: {env}"
        );
    }

    // Whole: pg-0 primary, both standbys up in pgpool and streaming, within 60 s of `up`.
    c.wait_pool("pg-0", &ALL, Duration::from_secs(60)).await;
    c.create_acked_table().await;
    c.write_until_ok(1, Duration::from_secs(10)).await;
    for node in ["pg-1", "pg-2"] {
        wait_standby_of(&c, "pg-0", node, 1, Duration::from_secs(60)).await;
    }
    let whole = started.elapsed().as_secs_f64();
    eprintln!("official-like cluster whole {whole:.1} s after up");
    assert!(whole < 60.0, "cluster whole only after {whole:.1} s");

    // What the sidecar changed on pg-0, in /status, in metrics and in the database itself.
    let adoption = wait_for(
        "/status to report the adoption of pg-0",
        Duration::from_secs(10),
        || async {
            let a = c.status().await["adoption"].clone();
            (a["node"] == "pg-0").then_some(a)
        },
    )
    .await;
    eprintln!("adoption: {adoption}");
    assert_eq!(adoption["replication_role"], "created", "{adoption}");
    assert_eq!(adoption["hba_rule"], "added", "{adoption}");
    assert_eq!(adoption["wal_log_hints"], "pending_restart", "{adoption}");
    let (_, m) = c.http("/metrics").await;
    for change in ["replication_role", "hba_rule", "wal_log_hints"] {
        assert_eq!(
            metric(
                &m,
                &format!("pgpool_sidecar_adoption_changes_total{{change=\"{change}\"}}")
            ),
            Some(1.0),
            "{change}"
        );
    }
    let role = one(
        &c,
        "pg-0",
        "SELECT rolreplication AND rolcanlogin FROM pg_roles WHERE rolname = 'replicator'",
    )
    .await;
    assert_eq!(role.as_deref(), Some("t"), "replication role on pg-0");
    let rules = one(
        &c,
        "pg-0",
        "SELECT count(*) FROM pg_hba_file_rules WHERE 'replication' = ANY(database) \
         AND 'replicator' = ANY(user_name) AND error IS NULL",
    )
    .await;
    assert_eq!(rules.as_deref(), Some("1"), "one replication rule added");
    let pending = one(
        &c,
        "pg-0",
        "SELECT current_setting('wal_log_hints') || ',' || pending_restart FROM pg_settings WHERE name = 'wal_log_hints'",
    )
    .await;
    assert_eq!(
        pending.as_deref(),
        Some("off,true"),
        "wal_log_hints waits for a restart"
    );
    // The standbys were cloned after the change: they run with it.
    for node in ["pg-1", "pg-2"] {
        let hints = one(&c, node, "SHOW wal_log_hints").await;
        assert_eq!(hints.as_deref(), Some("on"), "{node}");
    }

    // First failover: pg-0 ran without wal_log_hints and checksums, so it cannot be rewound; the
    // ladder rebuilds it and says why.
    c.docker(&["kill", &c.container("pg-0")]);
    let t = Instant::now();
    c.write_until_ok(2, Duration::from_secs(30)).await;
    let first = c.primary_other_than("pg-0").await;
    eprintln!(
        "failover to {first}: write acknowledged after {:.2} s",
        t.elapsed().as_secs_f64()
    );
    for i in 3..=10 {
        c.write_until_ok(i, Duration::from_secs(10)).await;
    }
    let t = Instant::now();
    wait_standby_of(&c, &first, "pg-0", 10, Duration::from_secs(120)).await;
    eprintln!(
        "pg-0 rejoined {:.2} s after the writes",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(recoveries(&c, "pg-0", "rebuild").await, Some(1.0));
    assert_eq!(recoveries(&c, "pg-0", "rewind").await, Some(0.0));
    let logs = c.logs("pgpool");
    assert!(
        logs.lines()
            .any(|l| l.contains("rebuilding instead of rewinding")
                && l.contains("pg-0")
                && l.contains("wal_log_hints")),
        "the log says why pg-0 was rebuilt"
    );
    let hints = one(&c, &first, "SHOW wal_log_hints").await;
    assert_eq!(hints.as_deref(), Some("on"), "new primary {first}");
    let adoption = wait_for(
        "/status to report the new primary's adoption",
        Duration::from_secs(90),
        || async {
            let a = c.status().await["adoption"].clone();
            (a["node"] == first.as_str()).then_some(a)
        },
    )
    .await;
    assert_eq!(adoption["wal_log_hints"], "on", "{adoption}");
    assert_eq!(adoption["replication_role"], "present", "{adoption}");
    assert_eq!(adoption["hba_rule"], "present", "{adoption}");

    // Second failover: the new primary started with wal_log_hints, so it is rewound. (It was
    // rebuilt once already, when it joined as a fresh standby.)
    let rebuilt_before = recoveries(&c, &first, "rebuild").await;
    c.docker(&["kill", &c.container(&first)]);
    c.write_until_ok(11, Duration::from_secs(30)).await;
    let second = c.primary_other_than(&first).await;
    for i in 12..=20 {
        c.write_until_ok(i, Duration::from_secs(10)).await;
    }
    let t = Instant::now();
    wait_standby_of(&c, &second, &first, 20, Duration::from_secs(120)).await;
    eprintln!(
        "{first} rewound and rejoined {:.2} s after the writes",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(recoveries(&c, &first, "rewind").await, Some(1.0));
    assert_eq!(recoveries(&c, &first, "rebuild").await, rebuilt_before);
    let (_, m) = c.http("/metrics").await;
    for change in ["replication_role", "hba_rule", "wal_log_hints"] {
        assert_eq!(
            metric(
                &m,
                &format!("pgpool_sidecar_adoption_changes_total{{change=\"{change}\"}}")
            ),
            Some(1.0),
            "{change} changed again on a node cloned from the adopted one"
        );
    }
}
