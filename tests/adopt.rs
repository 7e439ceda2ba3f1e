//! Plain official-image nodes, end to end: the nodes get only POSTGRES_USER/POSTGRES_PASSWORD and
//! run the official-like image (no replication role, initdb's pg_hba.conf plus `host all all all
//! scram-sha-256`, wal_log_hints off). The sidecar must make the cluster whole by itself, fail
//! over, and bring each failed primary back — rebuilt while it could not be rewound, rewound
//! once its data allows it.

mod common;

use std::time::{Duration, Instant};

use common::*;

const ALL: [&str; 3] = ["pg-0", "pg-1", "pg-2"];

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

/// PostgreSQL 17 without data checksums: wal_log_hints is turned on for the next start, so the
/// first primary is rebuilt after its failover and the next one rewound.
#[tokio::test]
async fn plain_official_nodes_are_adopted_then_fail_over_and_rejoin() {
    adopt_fail_over_rejoin(NODES_OFFICIAL).await;
}

/// PostgreSQL 18's layout (PGDATA under /var/lib/postgresql/18/docker, read from the container)
/// and its initdb's data checksums: wal_log_hints is left alone and every primary is rewound.
#[tokio::test]
async fn plain_official_18_nodes_are_adopted_then_fail_over_and_rejoin() {
    adopt_fail_over_rejoin(NODES_OFFICIAL_18).await;
}

async fn adopt_fail_over_rejoin(nodes: Nodes) {
    let checksums = nodes.rewindable_from_init;
    let hints_changes = if checksums { 0.0 } else { 1.0 };
    let started = Instant::now();
    let c = Cluster::new("adopt").with_nodes(nodes).up().await;

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
        c.wait_rejoined("pg-0", node, 1, Duration::from_secs(60))
            .await;
    }
    let whole = started.elapsed().as_secs_f64();
    eprintln!("{}: cluster whole {whole:.1} s after up", nodes.image);
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
    assert_eq!(
        adoption["wal_log_hints"],
        if checksums {
            "checksums"
        } else {
            "pending_restart"
        },
        "{adoption}"
    );
    assert_adoption_changes(&c, hints_changes).await;
    // PGDATA came from the container: the rule went into the data directory of this layout.
    let hba = c
        .value_on("pg-0", "SHOW hba_file")
        .await
        .unwrap_or_default();
    let pgdata = format!("{}/{}", nodes.volume_dir, nodes.data_in_volume);
    assert_eq!(
        hba,
        format!("{}/pg_hba.conf", pgdata.trim_end_matches('/')),
        "hba_file of pg-0"
    );
    let role = c
        .value_on(
            "pg-0",
            "SELECT rolreplication AND rolcanlogin FROM pg_roles WHERE rolname = 'replicator'",
        )
        .await;
    assert_eq!(role.as_deref(), Some("t"), "replication role on pg-0");
    let rules = c
        .value_on(
            "pg-0",
            "SELECT count(*) FROM pg_hba_file_rules WHERE 'replication' = ANY(database) \
         AND 'replicator' = ANY(user_name) AND error IS NULL",
        )
        .await;
    assert_eq!(rules.as_deref(), Some("1"), "one replication rule added");
    let hints = c
        .value_on(
            "pg-0",
            "SELECT current_setting('wal_log_hints') || ',' || pending_restart || ',' \
         || current_setting('data_checksums') FROM pg_settings WHERE name = 'wal_log_hints'",
        )
        .await;
    assert_eq!(
        hints.as_deref(),
        Some(if checksums {
            "off,false,on"
        } else {
            "off,true,off"
        }),
        "wal_log_hints, pending restart, data checksums on pg-0"
    );
    // The standbys were cloned after the change: they run with it (or with checksums).
    for node in ["pg-1", "pg-2"] {
        let hints = c.value_on(node,
            "SELECT current_setting('wal_log_hints') || ',' || current_setting('data_checksums')",
        )
        .await;
        assert_eq!(
            hints.as_deref(),
            Some(if checksums { "off,on" } else { "on,off" }),
            "{node}"
        );
    }

    // First failover. Without checksums pg-0 ran without wal_log_hints, so it cannot be
    // rewound: the ladder rebuilds it and says why. With checksums it is rewound.
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
    c.wait_rejoined(&first, "pg-0", 10, Duration::from_secs(120))
        .await;
    eprintln!(
        "pg-0 rejoined {:.2} s after the writes",
        t.elapsed().as_secs_f64()
    );
    let (method, other) = if checksums {
        ("rewind", "rebuild")
    } else {
        ("rebuild", "rewind")
    };
    assert_eq!(recoveries(&c, "pg-0", method).await, Some(1.0), "{method}");
    assert_eq!(recoveries(&c, "pg-0", other).await, Some(0.0), "{other}");
    let logs = c.logs("pgpool");
    assert_eq!(
        logs.lines()
            .any(|l| l.contains("rebuilding instead of rewinding")
                && l.contains("pg-0")
                && l.contains("wal_log_hints")),
        !checksums,
        "whether the log says why pg-0 was rebuilt"
    );
    let adoption = wait_for(
        "/status to report the new primary's adoption",
        Duration::from_secs(90),
        || async {
            let a = c.status().await["adoption"].clone();
            (a["node"] == first.as_str()).then_some(a)
        },
    )
    .await;
    assert_eq!(
        adoption["wal_log_hints"],
        if checksums { "checksums" } else { "on" },
        "{adoption}"
    );
    assert_eq!(adoption["replication_role"], "present", "{adoption}");
    assert_eq!(adoption["hba_rule"], "present", "{adoption}");

    // Second failover: the new primary started with wal_log_hints (or checksums), so it is
    // rewound. (It was rebuilt once already, when it joined as a fresh standby.)
    let rebuilt_before = recoveries(&c, &first, "rebuild").await;
    c.docker(&["kill", &c.container(&first)]);
    c.write_until_ok(11, Duration::from_secs(30)).await;
    let second = c.primary_other_than(&first).await;
    for i in 12..=20 {
        c.write_until_ok(i, Duration::from_secs(10)).await;
    }
    let t = Instant::now();
    c.wait_rejoined(&second, &first, 20, Duration::from_secs(120))
        .await;
    eprintln!(
        "{first} rewound and rejoined {:.2} s after the writes",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(recoveries(&c, &first, "rewind").await, Some(1.0));
    assert_eq!(recoveries(&c, &first, "rebuild").await, rebuilt_before);
    // Nodes cloned from the adopted one needed no change.
    assert_adoption_changes(&c, hints_changes).await;
}

async fn assert_adoption_changes(c: &Cluster, hints_changes: f64) {
    let (_, m) = c.http("/metrics").await;
    for (change, n) in [
        ("replication_role", 1.0),
        ("hba_rule", 1.0),
        ("wal_log_hints", hints_changes),
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("pgpool_sidecar_adoption_changes_total{{change=\"{change}\"}}")
            ),
            Some(n),
            "adoption_changes_total for {change}"
        );
    }
}
