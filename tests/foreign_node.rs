//! Safety rule: a node holding another cluster with a user database is never wiped; it is
//! reported (log, metric, /status) and kept out of pgpool, while the other nodes are provisioned.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn foreign_node_with_user_database_is_reported_not_wiped() {
    let c = Cluster::new("foreign")
        .file("tests/compose/foreign-node.yml")
        .up()
        .await;
    let pg2 = c.node("pg-2").await.expect("pg-2 reachable directly");
    let before = query(
        &pg2,
        "SELECT system_identifier::text FROM pg_control_system()",
    )
    .await
    .unwrap()[0][0]
        .clone();
    query(&pg2, "CREATE TABLE IF NOT EXISTS precious (v text)")
        .await
        .ok();

    // pg-1 is provisioned as usual; pg-2 is reported as foreign.
    let status = wait_for(
        "pg-1 streaming and pg-2 reported",
        Duration::from_secs(120),
        || {
            let c = &c;
            async move {
                let s = c.status().await;
                (s["nodes"][1]["state"] == "streaming" && s["nodes"][2]["foreign"] == true)
                    .then_some(s)
            }
        },
    )
    .await;
    assert_eq!(status["nodes"][2]["state"], "foreign");
    let (_, metrics) = c.http("/metrics").await;
    assert_eq!(
        metric(&metrics, "pgpool_sidecar_node_foreign_data{node=\"2\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "pgpool_sidecar_node_foreign_data{node=\"1\"}"),
        Some(0.0)
    );
    let logs = c.logs("pgpool");
    assert!(logs.contains("another cluster's data"), "{logs}");

    // Still the same cluster on pg-2, database intact, still running, not in recovery.
    let pg2 = c.node("pg-2").await.expect("pg-2 still reachable");
    let after = query(
        &pg2,
        "SELECT system_identifier::text FROM pg_control_system()",
    )
    .await
    .unwrap()[0][0]
        .clone();
    assert_eq!(before, after, "pg-2 was rebuilt");
    let dbs = query(
        &pg2,
        "SELECT datname FROM pg_database WHERE datname = 'shop'",
    )
    .await
    .unwrap();
    assert_eq!(dbs.len(), 1);
    let rec = query(&pg2, "SELECT pg_is_in_recovery()").await.unwrap();
    assert_eq!(rec[0][0].as_deref(), Some("f"));
    // Adoption touched only this cluster's primary: pg-0 got the replication role, the foreign
    // node got no role, no pg_hba line and no ALTER SYSTEM.
    let role = "SELECT count(*)::text FROM pg_roles WHERE rolname = 'replicator'";
    let pg0 = c.node("pg-0").await.expect("pg-0 reachable");
    assert_eq!(query(&pg0, role).await.unwrap()[0][0].as_deref(), Some("1"));
    assert_eq!(query(&pg2, role).await.unwrap()[0][0].as_deref(), Some("0"));
    let untouched = query(
        &pg2,
        "SELECT (SELECT count(*) FROM pg_hba_file_rules WHERE 'replicator' = ANY(user_name))::text, \
         (SELECT count(*) FROM pg_file_settings WHERE sourcefile LIKE '%postgresql.auto.conf')::text",
    )
    .await
    .unwrap();
    assert_eq!(
        untouched[0][0].as_deref(),
        Some("0"),
        "pg_hba.conf of pg-2 changed"
    );
    assert_eq!(
        untouched[0][1].as_deref(),
        Some("0"),
        "ALTER SYSTEM on pg-2"
    );

    // pgpool does not route to it.
    let pool = c.pgpool().await.unwrap();
    let nodes = pool_nodes(&pool).await;
    assert_eq!(nodes[2].1, "down", "{nodes:?}");
    assert_eq!(nodes[0].2, "primary");
}
