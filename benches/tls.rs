//! TLS overhead benchmark: prints figures, asserts nothing.
//!
//! One cluster with the default config (pgpool serves TLS, nodes offer it, so pgpool → node is
//! encrypted either way); pgbench (scale 10, select-only, 4 clients, 2 threads) through pgpool
//! from a container on the compose network, alternating `PGSSLMODE=disable` and `require` for
//! the client → pgpool leg, N rounds of 20 s each, then once with a new connection per
//! transaction (`-C`: the handshake's cost). Prints min / median / max tps per mode.
//!
//! Run: `cargo bench --bench tls -- [rounds]`. Needs the images.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::*;

fn summary(label: &str, v: Vec<f64>) -> String {
    let rounds = v.len();
    match spread(v) {
        None => format!("{label}: no successful round"),
        Some((min, median, max)) => format!(
            "{label}: min {min:.0} tps  median {median:.0} tps  max {max:.0} tps  ({rounds} rounds)"
        ),
    }
}

/// pgbench in a throw-away container of the node image on the cluster's network; the password
/// by environment, not in an argument list.
fn pgbench(c: &Cluster, sslmode: &str, args: &[&str]) -> Option<String> {
    let network = format!("{}_default", c.project);
    let mut cmd = Command::new("docker");
    cmd.env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", sslmode)
        .args(["run", "--rm", "--network", &network])
        .args([
            "-e",
            "PGPASSWORD",
            "-e",
            "PGSSLMODE",
            "--entrypoint",
            "pgbench",
        ])
        .arg(c.nodes.image)
        .args(["-h", "pgpool", "-U", "postgres"])
        .args(args)
        .arg("postgres");
    let (code, out, err) = sh(&mut cmd);
    if code != 0 {
        eprintln!("pgbench {sslmode} {args:?} failed: {err}");
        return None;
    }
    Some(out)
}

/// pgbench's `tps = …` figure.
fn tps(out: Option<String>) -> Option<f64> {
    out?.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    let c = Cluster::new("benchtls").up().await;
    c.wait_pool(
        "pg-0",
        &["pg-0", "pg-1", "pg-2"],
        std::time::Duration::from_secs(120),
    )
    .await;
    pgbench(&c, "disable", &["-i", "-q", "-s", "10"]).expect("pgbench -i");
    let select = ["-c", "4", "-j", "2", "-T", "20", "-S"];
    let (mut plain, mut tls) = (Vec::new(), Vec::new());
    for n in 0..rounds {
        // Alternating, so a neighbour's load on a shared machine falls on both modes.
        for (mode, out) in [("disable", &mut plain), ("require", &mut tls)] {
            if let Some(t) = tps(pgbench(&c, mode, &select)) {
                eprintln!("round {n}: sslmode={mode}: {t:.0} tps");
                out.push(t);
            }
        }
    }
    let connect = ["-c", "4", "-j", "2", "-T", "15", "-S", "-C"];
    let plain_c = tps(pgbench(&c, "disable", &connect));
    let tls_c = tps(pgbench(&c, "require", &connect));
    println!("\n== TLS benchmark (client → pgpool; pgpool → nodes TLS in both) ==");
    println!("{}", summary("sslmode=disable", plain));
    println!("{}", summary("sslmode=require", tls));
    println!(
        "new connection per transaction: disable {} tps, require {} tps",
        plain_c.map_or("–".into(), |t| format!("{t:.1}")),
        tls_c.map_or("–".into(), |t| format!("{t:.1}"))
    );
}
