//! Failover benchmark: prints figures, asserts nothing.
//!
//! For each fault — `docker kill`, `docker pause`, network disconnect of the primary — and for
//! each setup — the sidecar, and pgpool alone (health check every 1 s, a failover_command that
//! promotes `%m`, no follow_primary_command: what the old project gave) — it runs N rounds on a
//! fresh cluster while a client writes through pgpool every 50 ms, and prints min / median / max
//! of the write-unavailability window (fault → first acknowledged write) and of the time until
//! every live standby streams from the new primary.
//!
//! Run: `cargo bench --bench failover -- [rounds] [kill|pause|disconnect ...] [--baseline-only|--sidecar-only]`
//! Needs the images (`docker/build-images.sh`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    Kill,
    Pause,
    Disconnect,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Setup {
    Sidecar,
    PgpoolAlone,
}

struct Round {
    unavailable: Option<f64>,
    standbys_follow: Option<f64>,
}

/// Turns the running stack into the old project's setup: the sidecar stops; a plain pgpool with
/// the sidecar's rendered config, but with `failover_command` promoting `%m` over SQL, no
/// follow_primary_command and a 1 s health check, takes over the same published port.
fn pgpool_alone(c: &Cluster) -> String {
    let id = c.container("pgpool");
    let dir = std::env::temp_dir().join(format!("pgst-baseline-{}", c.project));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (code, _, err) = c.docker(&["cp", &format!("{id}:/etc/pgpool2/."), dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let conf = std::fs::read_to_string(dir.join("pgpool.conf")).unwrap();
    let mut out = String::new();
    for line in conf.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        match key {
            "failover_command" => out.push_str(&format!(
                "failover_command = 'PGPASSWORD={PASSWORD} psql -h %H -U postgres -d postgres -c \"SELECT pg_promote()\"'\n"
            )),
            "follow_primary_command" => out.push_str("follow_primary_command = ''\n"),
            "health_check_period" => out.push_str("health_check_period = 1\n"),
            "health_check_timeout" => out.push_str("health_check_timeout = 1\n"),
            "health_check_max_retries" => out.push_str("health_check_max_retries = 0\n"),
            "search_primary_node_timeout" => out.push_str("search_primary_node_timeout = 30\n"),
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    std::fs::write(dir.join("pgpool.conf"), out).unwrap();
    // The same nodes up as the sidecar had verified.
    std::fs::write(dir.join("pgpool_status"), "up\nup\nup\n").unwrap();
    let (code, _, err) = c.docker(&["stop", "-t", "5", &id]);
    assert_eq!(code, 0, "{err}");
    let name = format!("{}-baseline-pgpool", c.project);
    let (code, out, err) = c.docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &format!("pgpool-sidecar.cluster={}", c.project),
        "--network",
        &format!("{}_default", c.project),
        "-p",
        &format!("127.0.0.1:{}:5432", c.pgpool_port),
        "-v",
        &format!("{}:/etc/pgpool2", dir.display()),
        "--entrypoint",
        "bash",
        "pgpool-sidecar:local",
        "-c",
        "mkdir -p /var/run/pgpool /var/lib/pgpool && cp /etc/pgpool2/pgpool_status /var/lib/pgpool/ && \
         exec pgpool -n -f /etc/pgpool2/pgpool.conf -F /etc/pgpool2/pcp.conf -a /etc/pgpool2/pool_hba.conf",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    name
}

async fn round(setup: Setup, fault: Fault, n: usize) -> Round {
    let c = Cluster::new(&format!("bench{n}")).up().await;
    c.wait_pool("pg-0", &["pg-0", "pg-1", "pg-2"], Duration::from_secs(120))
        .await;
    c.create_acked_table().await;
    let ports: Vec<Option<u16>> = ["pg-1", "pg-2"].iter().map(|n| c.node_port(n)).collect();
    let baseline = (setup == Setup::PgpoolAlone).then(|| pgpool_alone(&c));
    if baseline.is_some() {
        c.write_until_ok(0, Duration::from_secs(60)).await;
    }

    // The client: a write every 50 ms, new connection after any failure.
    // (write started, write acknowledged)
    let acks: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acks, stop, port) = (acks.clone(), stop.clone(), c.pgpool_port);
        tokio::spawn(async move {
            let mut client = None;
            let mut id = 1_000_000i64;
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                if client.is_none() {
                    client = Cluster::connect_port(port).await;
                }
                if let Some(cl) = &client {
                    id += 1;
                    let q = format!("INSERT INTO acked (id) VALUES ({id})");
                    match tokio::time::timeout(Duration::from_secs(1), cl.simple_query(&q)).await {
                        Ok(Ok(_)) => acks.lock().unwrap().push((started, Instant::now())),
                        _ => client = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(50).saturating_sub(started.elapsed()))
                    .await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    let primary = c.container("pg-0");
    let fault_started = Instant::now();
    match fault {
        Fault::Kill => c.docker(&["kill", &primary]),
        Fault::Pause => c.docker(&["pause", &primary]),
        Fault::Disconnect => c.docker(&[
            "network",
            "disconnect",
            &format!("{}_default", c.project),
            &primary,
        ]),
    };
    // The fault is complete when the Docker command returns; only writes started after that
    // can tell whether the cluster took them.
    let fault_at = Instant::now();

    // Until a write is acknowledged after the fault (30 s at most).
    let deadline = fault_at + Duration::from_secs(30);
    let mut unavailable = None;
    while Instant::now() < deadline {
        if let Some((_, t)) = acks.lock().unwrap().iter().find(|(s, _)| *s > fault_at) {
            // Measured from the moment the fault command started: conservative, it includes
            // the Docker CLI's own latency.
            unavailable = Some((*t - fault_started).as_secs_f64());
        }
        if unavailable.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every live standby streaming from the new primary (as the new primary reports it).
    let mut standbys_follow = None;
    while unavailable.is_some() && Instant::now() < deadline {
        let mut streaming = 0;
        let mut primary_found = false;
        for port in ports.iter().flatten() {
            let Some(cl) = Cluster::connect_port(*port).await else {
                continue;
            };
            let Ok(r) = query(&cl, "SELECT pg_is_in_recovery(), (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming')").await else { continue };
            if r[0][0].as_deref() == Some("f") {
                primary_found = true;
                streaming = r[0][1].as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        }
        if primary_found && streaming >= 1 {
            standbys_follow = Some(fault_started.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let _ = writer.await;
    if let Some(name) = baseline {
        c.docker(&["rm", "-f", &name]);
    }
    if fault == Fault::Pause {
        c.docker(&["unpause", &primary]);
    }
    Round {
        unavailable,
        standbys_follow,
    }
}

fn summary(label: &str, mut v: Vec<Option<f64>>, rounds: usize) -> String {
    let failed = v.iter().filter(|x| x.is_none()).count();
    let mut ok: Vec<f64> = v.drain(..).flatten().collect();
    ok.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if ok.is_empty() {
        return format!("{label}: no successful round of {rounds}");
    }
    format!(
        "{label}: min {:.2} s  median {:.2} s  max {:.2} s  ({} of {rounds} rounds; {failed} over 30 s)",
        ok[0],
        ok[ok.len() / 2],
        ok[ok.len() - 1],
        ok.len()
    )
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let rounds: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(10);
    let mut faults: Vec<Fault> = args
        .iter()
        .filter_map(|a| match a.as_str() {
            "kill" => Some(Fault::Kill),
            "pause" => Some(Fault::Pause),
            "disconnect" => Some(Fault::Disconnect),
            _ => None,
        })
        .collect();
    if faults.is_empty() {
        faults = vec![Fault::Kill, Fault::Pause, Fault::Disconnect];
    }
    let mut setups = vec![Setup::Sidecar, Setup::PgpoolAlone];
    if args.iter().any(|a| a == "--baseline-only") {
        setups = vec![Setup::PgpoolAlone];
    }
    if args.iter().any(|a| a == "--sidecar-only") {
        setups = vec![Setup::Sidecar];
    }
    let mut report = vec![];
    for setup in &setups {
        for fault in &faults {
            let mut unavailable = vec![];
            let mut follow = vec![];
            for n in 0..rounds {
                let r = round(*setup, *fault, n).await;
                eprintln!(
                    "{setup:?} {fault:?} round {n}: unavailable {:?} s, standbys follow {:?} s",
                    r.unavailable, r.standbys_follow
                );
                unavailable.push(r.unavailable);
                follow.push(r.standbys_follow);
            }
            report.push(summary(
                &format!("{setup:?} / {fault:?} / write unavailability"),
                unavailable,
                rounds,
            ));
            report.push(summary(
                &format!("{setup:?} / {fault:?} / standbys streaming from new primary"),
                follow,
                rounds,
            ));
        }
    }
    println!("\n== failover benchmark ({rounds} rounds each, writes every 50 ms) ==");
    for line in report {
        println!("{line}");
    }
}
