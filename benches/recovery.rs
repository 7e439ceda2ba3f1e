//! Recovery benchmark: prints figures, asserts nothing.
//!
//! At two database sizes (pgbench scale 7 ≈ 100 MB and scale 70 ≈ 1 GB), N rounds each of:
//! rejoining a former primary by pg_rewind (kill the primary, let the sidecar fail over, then
//! `POST /nodes/{old}/recover`), rebuilding a standby (`?rebuild=true`), and a planned switchover
//! (write-unavailability as the sidecar measures it). Prints min / median / max of each.
//!
//! Run: `cargo bench --bench recovery -- [rounds] [7] [70]`. Needs the images.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;

fn summary(label: &str, v: Vec<f64>) -> String {
    let rounds = v.len();
    match spread(v) {
        None => format!("{label}: no successful round"),
        Some((min, median, max)) => format!(
            "{label}: min {min:.2} s  median {median:.2} s  max {max:.2} s  ({rounds} rounds)"
        ),
    }
}

async fn primary(c: &Cluster) -> String {
    c.pool_primary().await.expect("pgpool has a primary")
}

async fn run_size(scale: u32, rounds: usize) -> Vec<String> {
    let c = Cluster::new(&format!("benchrec{scale}"))
        .env("SIDECAR_AUTO_REJOIN", "false")
        .up()
        .await;
    c.wait_pool("pg-0", &["pg-0", "pg-1", "pg-2"], Duration::from_secs(120))
        .await;
    let (code, _, err) = c.docker(&[
        "exec",
        &c.container("pg-0"),
        "pgbench",
        "-i",
        "-q",
        "-s",
        &scale.to_string(),
        "-U",
        "postgres",
        "postgres",
    ]);
    assert_eq!(code, 0, "{err}");
    let size = {
        let p = c.node("pg-0").await.unwrap();
        query(&p, "SELECT pg_size_pretty(pg_database_size('postgres'))")
            .await
            .unwrap()[0][0]
            .clone()
            .unwrap_or_default()
    };
    c.create_acked_table().await;
    let all = ["pg-0", "pg-1", "pg-2"];
    let (mut rewind, mut rebuild, mut switch) = (vec![], vec![], vec![]);
    for n in 0..rounds {
        // A former primary: kill, fail over, write on the new primary, rewind the old one.
        let old = primary(&c).await;
        c.wait_pool(&old, &all, Duration::from_secs(120)).await;
        c.docker(&["kill", &c.container(&old)]);
        c.write_until_ok(n as i64 * 10 + 1, Duration::from_secs(30))
            .await;
        let (status, body) = c
            .post(&format!("/nodes/{old}/recover"), Some(API_TOKEN))
            .await;
        eprintln!("scale {scale} round {n}: recover {old}: {status} {body}");
        if status == 200 && body["method"] == "rewind" {
            rewind.push(body["seconds"].as_f64().unwrap_or(0.0));
        }
        // A rebuild of a standby.
        let p = primary(&c).await;
        c.wait_pool(&p, &all, Duration::from_secs(120)).await;
        let standby = all.iter().find(|s| **s != p).unwrap();
        let (status, body) = c
            .post(
                &format!("/nodes/{standby}/recover?rebuild=true"),
                Some(API_TOKEN),
            )
            .await;
        eprintln!("scale {scale} round {n}: rebuild {standby}: {status} {body}");
        if status == 200 {
            rebuild.push(body["seconds"].as_f64().unwrap_or(0.0));
        }
        // A planned switchover.
        c.wait_pool(&p, &all, Duration::from_secs(120)).await;
        let (status, body) = c.post("/switchover", Some(API_TOKEN)).await;
        eprintln!("scale {scale} round {n}: switchover: {status} {body}");
        if status == 200 {
            switch.push(body["write_unavailable_seconds"].as_f64().unwrap_or(0.0));
        }
    }
    vec![
        summary(
            &format!("scale {scale} ({size}) / rewind of a former primary"),
            rewind,
        ),
        summary(
            &format!("scale {scale} ({size}) / rebuild of a standby"),
            rebuild,
        ),
        summary(
            &format!("scale {scale} ({size}) / switchover write unavailability"),
            switch,
        ),
    ]
}

#[tokio::main]
async fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = args.first().copied().unwrap_or(3) as usize;
    let mut scales: Vec<u32> = args.iter().skip(1).copied().collect();
    if scales.is_empty() {
        scales = vec![7, 70];
    }
    let mut report = vec![];
    for s in scales {
        report.extend(run_size(s, rounds).await);
    }
    println!("\n== recovery benchmark ==");
    for line in report {
        println!("{line}");
    }
}
