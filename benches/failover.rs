//! Failover benchmark: prints figures, asserts nothing.
//!
//! What a client feels (tests/common/felt.rs): one session writing through pgpool every 50 ms,
//! a new session only after a failure. For each fault of the primary — `docker kill`, the same
//! in synchronous mode (`PGPOOL_SIDECAR_SYNCHRONOUS_STANDBYS=1`), `docker pause`, network disconnect — N
//! rounds, each on the primary of the moment: the sidecar's cluster is not rebuilt between
//! rounds, so every node takes its turn as primary. Per round, from the fault until the cluster
//! is whole again (three nodes up in pgpool, two standbys streaming from the primary):
//! - window: fault → the first acknowledged write after which writes stayed successful 1.5 s;
//! - longest gap between two acknowledged writes (writes held rather than failed show here);
//! - disconnects: established sessions lost (the target is exactly one per failover).
//!
//! Paused or disconnected primaries get their fault undone once writes are steady, so the
//! rejoin is in the round too. Synchronous rounds also count acknowledged writes lost.
//!
//! pgpool alone (the old project's setup: health check every 1 s, a failover_command that
//! promotes `%m`, no follow_primary_command) is the baseline, with the same client; it cannot
//! heal, so each of its rounds is a fresh cluster and ends 5 s after the window.
//!
//! Prints min / median / max per fault, and per node that was primary.
//!
//! Run: `cargo bench --bench failover -- [rounds] [kill|sync|pause|disconnect ...]
//! [--baseline-only|--sidecar-only]`. Needs the images (`docker/build-images.sh`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::felt::{figures, Felt, Figures, Work, STEADY};
use common::*;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    Kill,
    SyncKill,
    Pause,
    Disconnect,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Setup {
    Sidecar,
    PgpoolAlone,
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

/// Polls `f` every 100 ms until it gives a value or `limit` passes.
async fn poll<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn apply(c: &Cluster, fault: Fault, container: &str) {
    let network = format!("{}_default", c.project);
    let (code, _, err) = match fault {
        Fault::Kill | Fault::SyncKill => c.docker(&["kill", container]),
        Fault::Pause => c.docker(&["pause", container]),
        Fault::Disconnect => c.docker(&["network", "disconnect", &network, container]),
    };
    if code != 0 {
        eprintln!("fault {fault:?} on {container}: {err}");
    }
}

/// Undoes a pause or a disconnect (the sidecar may have killed the container meanwhile).
fn undo(c: &Cluster, fault: Fault, container: &str) {
    let network = format!("{}_default", c.project);
    match fault {
        Fault::Pause => {
            c.docker(&["unpause", container]);
        }
        Fault::Disconnect => {
            c.docker(&["network", "connect", &network, container]);
        }
        Fault::Kill | Fault::SyncKill => {}
    }
}

/// Waits until the client has attempts started after `t` (so figures up to `t` are complete).
async fn recorded_past(felt: &Felt, t: Instant) {
    poll(Duration::from_secs(30), || async {
        felt.attempts().iter().any(|a| a.start > t).then_some(())
    })
    .await;
}

struct Round {
    primary: String,
    figures: Figures,
    lost: Option<usize>,
}

async fn new_cluster(setup: Setup, fault: Fault, n: usize) -> Cluster {
    let mut c = Cluster::new(&format!("bench{n}"));
    if fault == Fault::SyncKill {
        c = c.env("SIDECAR_SYNCHRONOUS_STANDBYS", "1");
    }
    let c = c.up().await;
    c.wait_pool("pg-0", &["pg-0", "pg-1", "pg-2"], Duration::from_secs(120))
        .await;
    c.create_acked_table().await;
    if fault == Fault::SyncKill {
        // The rounds prove nothing about synchronous commits unless the primary asks for them.
        let primary = c.node("pg-0").await.expect("pg-0");
        wait_for(
            "synchronous_standby_names set on pg-0",
            Duration::from_secs(60),
            || async {
                let v = common::query(&primary, "SHOW synchronous_standby_names")
                    .await
                    .ok()?;
                let v = v.first()?.first()?.clone()?;
                v.starts_with("ANY 1").then_some(())
            },
        )
        .await;
    }
    if setup == Setup::PgpoolAlone {
        let _ = pgpool_alone(&c);
        c.write_until_ok(0, Duration::from_secs(60)).await;
    }
    c
}

/// Rounds of the sidecar on one cluster (a new one only when it did not heal).
async fn sidecar_rounds(fault: Fault, rounds: usize) -> Vec<Round> {
    let mut out = vec![];
    let mut cluster: Option<(Cluster, Felt)> = None;
    let mut lost_before: std::collections::HashSet<i64> = Default::default();
    let mut built = 0;
    while out.len() < rounds && built < rounds + 3 {
        let (c, felt) = match cluster.take() {
            Some(x) => x,
            None => {
                built += 1;
                lost_before.clear();
                let c = new_cluster(Setup::Sidecar, fault, built).await;
                let felt = Felt::start(c.pgpool_port, Work::Write, 1_000_000);
                (c, felt)
            }
        };
        let Some(mut primary) = poll(Duration::from_secs(120), || c.whole()).await else {
            eprintln!("{fault:?}: the cluster did not heal; a new one");
            c.dump_logs();
            continue;
        };
        // Every node takes its turn as primary: a failover promotes the lowest id among equally
        // advanced standbys, so without this pg-2 never would. A planned switchover (not a
        // measured round) makes the node with the fewest rounds the primary first.
        let turn = next_turn(&out);
        if turn != primary {
            let (status, body) = c
                .post(&format!("/switchover?to={turn}"), Some(common::API_TOKEN))
                .await;
            match poll(Duration::from_secs(120), || async {
                c.whole().await.filter(|p| *p == turn)
            })
            .await
            {
                Some(p) => primary = p,
                None => {
                    eprintln!("{fault:?}: switchover to {turn} ({status} {body}) did not end whole; a new cluster");
                    c.dump_logs();
                    continue;
                }
            }
        }
        if poll(Duration::from_secs(30), || async {
            common::felt::steady_from(&felt.attempts(), Instant::now() - STEADY * 2, STEADY)
        })
        .await
        .is_none()
        {
            eprintln!("{fault:?}: writes not steady before the fault; a new cluster");
            continue;
        }
        let container = c.container(&primary);
        let wall = chrono_now();
        let fault_at = Instant::now();
        apply(&c, fault, &container).await;
        let steady = poll(Duration::from_secs(60), || async {
            common::felt::steady_from(&felt.attempts(), fault_at, STEADY)
        })
        .await;
        undo(&c, fault, &container);
        let healed = poll(Duration::from_secs(120), || async {
            c.whole().await.map(|_| Instant::now())
        })
        .await;
        let until = healed
            .unwrap_or_else(Instant::now)
            .max(steady.unwrap_or(fault_at))
            + STEADY;
        recorded_past(&felt, until).await;
        let figures = figures(&felt.attempts(), fault_at, until);
        trace(&felt.attempts(), fault_at, until);
        let lost = if fault == Fault::SyncKill {
            let acked: Vec<(i64, Instant)> = felt
                .attempts()
                .iter()
                .filter_map(|a| Some((a.id?, a.end)))
                .collect();
            match c.pool_primary().await {
                Some(p) => match c.node(&p).await {
                    Some(cl) => {
                        // Each lost write counts in the round that lost it, not in every later one.
                        let now: Vec<i64> = lost_on(&cl, &acked)
                            .await
                            .into_iter()
                            .filter(|id| !lost_before.contains(id))
                            .collect();
                        if !now.is_empty() {
                            eprintln!("  acknowledged writes missing on {p}: {now:?}");
                        }
                        lost_before.extend(&now);
                        Some(now.len())
                    }
                    None => None,
                },
                None => None,
            }
        } else {
            None
        };
        eprintln!(
            "sidecar {fault:?} round {} at {wall}: primary {primary}: {figures:?} lost {lost:?}{}",
            out.len(),
            if healed.is_none() {
                " (not whole again within 120 s)"
            } else {
                ""
            }
        );
        out.push(Round {
            primary,
            figures,
            lost,
        });
        if healed.is_some() && out.len() < rounds {
            cluster = Some((c, felt));
        } else {
            c.dump_logs();
        }
    }
    out
}

/// The node that has been primary in the fewest rounds so far (the lowest id among those).
fn next_turn(rounds: &[Round]) -> String {
    ["pg-0", "pg-1", "pg-2"]
        .into_iter()
        .min_by_key(|n| rounds.iter().filter(|r| r.primary == *n).count())
        .unwrap_or("pg-0")
        .to_string()
}

/// With BENCH_TRACE set: every failed or slow (over 200 ms) statement of the round, in ms
/// from the fault.
fn trace(attempts: &[common::felt::Attempt], fault: Instant, until: Instant) {
    if std::env::var_os("BENCH_TRACE").is_none() {
        return;
    }
    for a in attempts
        .iter()
        .filter(|a| a.start >= fault && a.start <= until)
    {
        let took = a.end - a.start;
        if !a.ok || took > Duration::from_millis(200) {
            eprintln!(
                "  +{} ms took {} ms {}{}",
                (a.start - fault).as_millis(),
                took.as_millis(),
                if a.established {
                    "on its session: "
                } else {
                    "new session: "
                },
                a.error.as_deref().unwrap_or("ok")
            );
        }
    }
}

/// Wall-clock time of day (UTC) to find a round in the saved logs.
fn chrono_now() -> String {
    let (_, out, _) = sh(std::process::Command::new("date").args(["-u", "+%H:%M:%S.%3N"]));
    out.trim().to_string()
}

/// Rounds of pgpool alone, a fresh cluster each (it never heals).
async fn baseline_rounds(fault: Fault, rounds: usize) -> Vec<Round> {
    let mut out = vec![];
    for n in 0..rounds {
        let c = new_cluster(Setup::PgpoolAlone, fault, n).await;
        let felt = Felt::start(c.pgpool_port, Work::Write, 1_000_000);
        let _ = poll(Duration::from_secs(30), || async {
            common::felt::steady_from(&felt.attempts(), Instant::now() - STEADY * 2, STEADY)
        })
        .await;
        let container = c.container("pg-0");
        let fault_at = Instant::now();
        apply(&c, fault, &container).await;
        let steady = poll(Duration::from_secs(60), || async {
            common::felt::steady_from(&felt.attempts(), fault_at, STEADY)
        })
        .await;
        let until = steady.unwrap_or_else(Instant::now) + Duration::from_secs(5);
        recorded_past(&felt, until).await;
        let figures = figures(&felt.attempts(), fault_at, until);
        eprintln!("pgpool alone {fault:?} round {n}: {figures:?}");
        felt.stop().await;
        undo(&c, fault, &container);
        c.docker(&["rm", "-f", &format!("{}-baseline-pgpool", c.project)]);
        out.push(Round {
            primary: "pg-0".into(),
            figures,
            lost: None,
        });
    }
    out
}

fn line(label: &str, rounds: &[&Round]) -> String {
    let windows: Vec<f64> = rounds.iter().filter_map(|r| r.figures.window).collect();
    let never = rounds.len() - windows.len();
    let gaps: Vec<f64> = rounds.iter().map(|r| r.figures.longest_gap).collect();
    let disconnects: Vec<f64> = rounds
        .iter()
        .map(|r| r.figures.disconnects as f64)
        .collect();
    let fmt = |v: Vec<f64>, digits: usize| match spread(v) {
        Some((a, m, b)) => format!("{a:.digits$} / {m:.digits$} / {b:.digits$}"),
        None => "none".into(),
    };
    let mut s = format!(
        "{label}: window {} s; longest gap {} s; disconnects {} ({} rounds{})",
        fmt(windows, 2),
        fmt(gaps, 2),
        fmt(disconnects, 0),
        rounds.len(),
        if never > 0 {
            format!(", {never} never steady")
        } else {
            String::new()
        }
    );
    let lost: Vec<usize> = rounds.iter().filter_map(|r| r.lost).collect();
    if !lost.is_empty() {
        s.push_str(&format!(
            "; acknowledged writes lost {}",
            lost.iter().sum::<usize>()
        ));
    }
    s
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
            "sync" => Some(Fault::SyncKill),
            "pause" => Some(Fault::Pause),
            "disconnect" => Some(Fault::Disconnect),
            _ => None,
        })
        .collect();
    if faults.is_empty() {
        faults = vec![
            Fault::Kill,
            Fault::SyncKill,
            Fault::Pause,
            Fault::Disconnect,
        ];
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
            if *setup == Setup::PgpoolAlone && *fault == Fault::SyncKill {
                continue;
            }
            let rs = match setup {
                Setup::Sidecar => sidecar_rounds(*fault, rounds).await,
                Setup::PgpoolAlone => baseline_rounds(*fault, rounds).await,
            };
            report.push(line(
                &format!("{setup:?} / {fault:?}"),
                &rs.iter().collect::<Vec<_>>(),
            ));
            let mut by_primary: BTreeMap<&str, Vec<&Round>> = BTreeMap::new();
            for r in &rs {
                by_primary.entry(&r.primary).or_default().push(r);
            }
            if *setup == Setup::Sidecar {
                for (p, v) in by_primary {
                    report.push(line(&format!("  {p} as primary"), &v));
                }
            }
        }
    }
    println!("\n== failover benchmark (writes every 50 ms, one session; min / median / max) ==");
    for line in report {
        println!("{line}");
    }
}
