//! What applications' sessions through pgpool live through: a primary failover costs a writing
//! session exactly one disconnect, and the old primary's rejoin (rewind, restart, attach) costs
//! a session reading from a standby none.

mod common;

use std::time::{Duration, Instant};

use common::felt::{figures, Felt, Work, STEADY};
use common::*;

#[tokio::test]
async fn a_failover_costs_one_disconnect_and_the_rejoin_none() {
    let c = Cluster::new("sessions").up().await;
    c.wait_pool("pg-0", &["pg-0", "pg-1", "pg-2"], Duration::from_secs(120))
        .await;
    c.create_acked_table().await;
    let writer = Felt::start(c.pgpool_port, Work::Write, 0);
    writer
        .wait_steady(Instant::now(), STEADY, Duration::from_secs(30))
        .await;

    let old = c.pool_primary().await.expect("a primary");
    // pgpool's requests to put a node back, per node id: each holds every query pgpool
    // receives while it runs for a whole second, so only the old primary's rejoin may make one.
    let failbacks = |node: &str| {
        let id = node.trim_start_matches("pg-");
        c.logs("pgpool")
            .matches(&format!("received failback request for node_id: {id} "))
            .count()
    };
    let nodes = ["pg-0", "pg-1", "pg-2"];
    let before: Vec<usize> = nodes.iter().map(|n| failbacks(n)).collect();
    let fault = Instant::now();
    c.docker(&["kill", &c.container(&old)]);
    // The writer is back for good once writes stay successful 1.5 s.
    writer
        .wait_steady(fault, STEADY, Duration::from_secs(60))
        .await;
    let new = c.primary_other_than(&old).await;

    // A session that pgpool load-balances to the surviving standby, opened before the old
    // primary is back.
    let reader = Felt::start(c.pgpool_port, Work::StandbyRead, 0);
    let reading = reader
        .wait_steady(
            Instant::now(),
            Duration::from_millis(500),
            Duration::from_secs(30),
        )
        .await;
    let rejoining = c
        .value_on(
            &new,
            &format!("SELECT count(*) FROM pg_stat_replication WHERE application_name = '{old}'"),
        )
        .await;
    assert_eq!(
        rejoining.as_deref(),
        Some("0"),
        "{old} rejoined before the reader's session was open: the test would prove nothing"
    );
    wait_for(
        "the cluster whole again (old primary rewound, streaming, attached)",
        Duration::from_secs(120),
        || c.whole(),
    )
    .await;
    let healed = Instant::now();
    // Every attempt up to a little after the heal is recorded.
    wait_for(
        "attempts after the heal",
        Duration::from_secs(10),
        || async {
            let t = healed + STEADY;
            let done = |f: &Felt| f.attempts().iter().any(|a| a.start > t);
            (done(&writer) && done(&reader)).then_some(())
        },
    )
    .await;
    let until = healed + STEADY;
    let made: Vec<(String, usize)> = nodes
        .iter()
        .zip(&before)
        .map(|(n, b)| (n.to_string(), failbacks(n) - b))
        .collect();
    for (n, count) in &made {
        let expected = usize::from(*n == old);
        assert_eq!(
            *count, expected,
            "pgpool got {count} failback request(s) for {n} between the kill of {old} and the heal (expected {expected}): {made:?}"
        );
    }
    let w = writer.stop().await;
    let r = reader.stop().await;

    let fw = figures(&w, fault, until);
    c.figure(&format!(
        "sessions: primary {old} killed: writer window {:.2} s, longest gap {:.2} s, {} disconnect(s), {} failed statement(s)",
        fw.window.unwrap_or(f64::NAN),
        fw.longest_gap,
        fw.disconnects,
        w.iter().filter(|a| a.start >= fault && !a.ok).count()
    ));
    assert_eq!(
        fw.disconnects,
        1,
        "the writing session was lost {} times between the kill and the heal: {:?}",
        fw.disconnects,
        w.iter()
            .filter(|a| a.start >= fault && !a.ok)
            .map(|a| ((a.start - fault).as_millis(), a.error.clone()))
            .collect::<Vec<_>>()
    );
    assert_eq!(fw.bursts, 1, "writes failed in more than one outage");

    let fr = figures(&r, reading, until);
    let failed: Vec<_> = r
        .iter()
        .filter(|a| a.start >= reading && !a.ok)
        .map(|a| ((a.start - reading).as_millis(), a.error.clone()))
        .collect();
    c.figure(&format!(
        "sessions: reader on a standby through {old}'s rejoin: {} failed statement(s), longest gap {:.2} s",
        failed.len(),
        fr.longest_gap
    ));
    assert!(
        failed.is_empty(),
        "the standby reader's session failed while {old} rejoined: {failed:?}"
    );
    assert!(
        r.iter()
            .filter(|a| a.start >= reading)
            .all(|a| a.established),
        "the reader needed a new session"
    );
}

/// pgpool ends every child's session when the primary fails, whatever the primary's node id:
/// each session holds a connection to it. Stock pgpool 4.6 does so only when the primary is
/// also the lowest node id up, and otherwise logs "Do not restart children because we are
/// switching over node id …", keeping children whose sessions then fail late or wait out the
/// failover (docker/pgpool/patches/0001-…).
#[tokio::test]
async fn a_failed_primary_that_is_not_node_0_restarts_every_pgpool_child() {
    let c = Cluster::new("sessions-n1").up().await;
    c.wait_pool("pg-0", &["pg-0", "pg-1", "pg-2"], Duration::from_secs(120))
        .await;
    // The switchover only sets the scene; the sidecar refuses one (409) until pg-1 streams
    // and is attached, so it is asked again until then.
    wait_for(
        "a switchover to pg-1 accepted",
        Duration::from_secs(60),
        || async {
            let (status, body) = c.post("/switchover?to=pg-1", Some(API_TOKEN)).await;
            if status != 200 {
                eprintln!("switchover to pg-1: {status} {body}");
            }
            (status == 200).then_some(())
        },
    )
    .await;
    wait_for(
        "pg-1 primary and the cluster whole",
        Duration::from_secs(120),
        || async { c.whole().await.filter(|p| p == "pg-1") },
    )
    .await;
    c.docker(&["kill", &c.container("pg-1")]);
    let new = c.primary_other_than("pg-1").await;
    let degeneration = "=== Starting degeneration. shutdown host pg-1(5432) ===";
    let after_kill = wait_for(
        "pgpool's failover of pg-1 in its log",
        Duration::from_secs(30),
        || async {
            let logs = c.logs("pgpool");
            let (_, rest) = logs.rsplit_once(degeneration)?;
            rest.contains("execute command:").then(|| rest.to_string())
        },
    )
    .await;
    // Between the degeneration and the failover command: pgpool's decision about its children.
    let decision = after_kill
        .split("execute command:")
        .next()
        .unwrap_or_default();
    assert!(
        decision.contains("Restart all children"),
        "pgpool did not restart every child when primary pg-1 failed (new primary {new}): {decision}"
    );
    assert!(
        !decision.contains("Do not restart children"),
        "pgpool kept children when primary pg-1 failed: {decision}"
    );
}
