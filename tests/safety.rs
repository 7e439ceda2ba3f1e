//! Safety end to end, on real containers: nothing ordinary may make the sidecar hurt the
//! database — a one-off container of a node's service, a switchover whose promotion fails, a
//! foreign node during a failover, a sidecar crash in the middle of a rebuild, passwords in logs.

mod common;

use std::time::{Duration, Instant};

use common::*;

const ALL: [&str; 3] = ["pg-0", "pg-1", "pg-2"];

async fn ready(c: Cluster) -> Cluster {
    let c = c.up().await;
    c.wait_pool("pg-0", &ALL, Duration::from_secs(120)).await;
    c.create_acked_table().await;
    c
}

async fn metrics(c: &Cluster) -> String {
    c.http("/metrics").await.1
}

/// Sum of every series of `name` (all label sets).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The nodes that accept a write when asked directly (not through pgpool).
async fn writable_nodes(c: &Cluster) -> Vec<String> {
    let mut out = vec![];
    for n in ALL {
        if c.inspect(n, "{{.State.Running}}") != "true" {
            continue;
        }
        if let Some(client) = c.node(n).await {
            if let Ok(rows) = query(&client, "SELECT pg_is_in_recovery()").await {
                if rows[0][0].as_deref() == Some("f") {
                    out.push(n.to_string());
                }
            }
        }
    }
    out
}

/// Watches for `window` that nothing moved: the same pg-0 container runs, pgpool's primary is
/// pg-0, and no failover or fencing was counted.
async fn assert_untouched(c: &Cluster, pg0_id: &str, before: &str, window: Duration) {
    let start = Instant::now();
    while start.elapsed() < window {
        assert_eq!(
            c.inspect("pg-0", "{{.Id}} {{.State.Running}}"),
            format!("{pg0_id} true"),
            "the real pg-0 container was stopped or replaced"
        );
        let now = metrics(c).await;
        for m in [
            "pgpool_sidecar_failovers_total",
            "pgpool_sidecar_fencing_actions_total",
        ] {
            assert_eq!(metric_sum(&now, m), metric_sum(before, m), "{m} changed");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(c.pool_primary().await.as_deref(), Some("pg-0"));
}

/// `docker-compose run --rm pg-0 …` makes a container with pg-0's compose labels; its exit used
/// to be taken for the primary's death and got the real primary killed.
#[tokio::test]
async fn one_off_containers_of_node_services_touch_nothing() {
    let c = ready(Cluster::new("oneoff")).await;
    let pg0 = c.inspect("pg-0", "{{.Id}}");
    let before = metrics(&c).await;
    assert_eq!(metric_sum(&before, "pgpool_sidecar_failovers_total"), 0.0);
    for service in ["pg-0", "pg-1"] {
        let (code, out, err) =
            sh(c.compose()
                .args(["run", "--rm", "-T", "--no-deps", service, "true"]));
        assert_eq!(code, 0, "compose run {service}: {out}{err}");
        assert_untouched(&c, &pg0, &before, Duration::from_secs(4)).await;
    }
    // A standby's one-off exit did not take the real standby out of pgpool either.
    c.wait_pool("pg-0", &ALL, Duration::from_secs(5)).await;
    c.write_until_ok(1, Duration::from_secs(5)).await;
    let logs = c.logs("pgpool");
    assert!(
        !logs.contains("Performing failover"),
        "a failover was started"
    );
}

/// A switchover whose promotion fails must leave exactly one writable primary and no busy node.
/// The target's startup process is frozen (SIGSTOP), so it streams and catches up but cannot
/// finish a promotion.
#[tokio::test]
async fn switchover_whose_promotion_fails_leaves_one_primary() {
    let c = ready(Cluster::new("swfail")).await;
    let freeze = r#"for p in /proc/[0-9]*; do
        if tr '\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^postgres: startup'; then kill -STOP ${p#/proc/}; echo frozen; fi
      done"#;
    let pg1 = c.container("pg-1");
    let (code, out, err) = c.docker(&["exec", "-u", "postgres", &pg1, "bash", "-c", freeze]);
    assert!(code == 0 && out.contains("frozen"), "{out}{err}");

    let started = Instant::now();
    let (status, body) = c.post("/switchover?to=pg-1", Some(API_TOKEN)).await;
    eprintln!(
        "switchover answered {status} after {:.1} s: {body}",
        started.elapsed().as_secs_f64()
    );
    assert_ne!(status, 200, "the switchover cannot have succeeded: {body}");

    // Exactly one writable node, pg-0, and pgpool writes to it.
    let primaries = wait_for(
        "exactly one writable primary",
        Duration::from_secs(60),
        || {
            let c = &c;
            async move {
                let w = writable_nodes(c).await;
                (w.len() == 1).then_some(w)
            }
        },
    )
    .await;
    assert_eq!(primaries, vec!["pg-0".to_string()]);
    c.write_until_ok(1, Duration::from_secs(30)).await;
    assert_eq!(c.pool_primary().await.as_deref(), Some("pg-0"));
    // No node is left busy: nothing blocks a later failover.
    let s = c.status().await;
    let busy: Vec<_> = s["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["busy"] == true)
        .collect();
    assert!(busy.is_empty(), "{s}");
    // The frozen target was fenced: it must not finish its promotion later as a second primary.
    assert_eq!(
        c.inspect("pg-1", "{{.HostConfig.RestartPolicy.Name}}"),
        "no"
    );
    let after = metrics(&c).await;
    assert_eq!(
        metric(
            &after,
            "pgpool_sidecar_switchovers_total{result=\"failure\"}"
        ),
        Some(1.0)
    );
}

/// A node holding another cluster's data is never re-pointed by a failover: its
/// `primary_conninfo` stays as it was.
#[tokio::test]
async fn foreign_node_is_not_repointed_by_a_failover() {
    let c = Cluster::new("foreignfo")
        .file("tests/compose/foreign-node.yml")
        .up()
        .await;
    c.wait_pool("pg-0", &["pg-0", "pg-1"], Duration::from_secs(120))
        .await;
    wait_for("pg-2 reported foreign", Duration::from_secs(60), || {
        let c = &c;
        async move { (c.status().await["nodes"][2]["foreign"] == true).then_some(()) }
    })
    .await;
    c.create_acked_table().await;
    let before = primary_conninfo(&c).await;

    let (code, _, err) = c.docker(&["kill", &c.container("pg-0")]);
    assert_eq!(code, 0, "{err}");
    c.write_until_ok(1, Duration::from_secs(30)).await;
    assert_eq!(c.pool_primary().await.as_deref(), Some("pg-1"));
    wait_for("the failover recorded", Duration::from_secs(10), || {
        let c = &c;
        async move {
            let s = c.status().await;
            (s["last_failover"]["result"] == "success").then_some(())
        }
    })
    .await;

    assert_eq!(
        primary_conninfo(&c).await,
        before,
        "the foreign node was re-pointed"
    );
    let pg2 = c.node("pg-2").await.expect("pg-2 answers");
    let auto = query(
        &pg2,
        "SELECT count(*) FROM pg_file_settings WHERE name = 'primary_conninfo'",
    )
    .await
    .expect("pg_file_settings");
    assert_eq!(
        auto[0][0].as_deref(),
        Some("0"),
        "ALTER SYSTEM reached pg-2"
    );
    let rec = query(&pg2, "SELECT pg_is_in_recovery()").await.unwrap();
    assert_eq!(rec[0][0].as_deref(), Some("f"));
}

async fn primary_conninfo(c: &Cluster) -> Option<String> {
    let pg2 = c.node("pg-2").await.expect("pg-2 answers");
    query(&pg2, "SHOW primary_conninfo").await.expect("show")[0][0].clone()
}

/// This cluster's job containers, as (id, running).
fn jobs(c: &Cluster) -> Vec<(String, bool)> {
    let (_, out, _) = sh(std::process::Command::new("docker").args([
        "ps",
        "-a",
        "--filter",
        &format!("label=pgpool-sidecar.cluster={}", c.project),
        "--format",
        "{{.ID}} {{.State}}",
    ]));
    out.lines()
        .filter_map(|l| {
            let (id, state) = l.split_once(' ')?;
            Some((id.to_string(), state == "running"))
        })
        .collect()
}

/// Starts a rebuild of pg-2 over HTTP in the background and waits for its job container.
async fn rebuild_in_flight(c: &Cluster) -> String {
    c.post_in_background("/nodes/pg-2/recover?rebuild=true");
    wait_for("a rebuild job container", Duration::from_secs(30), || {
        let c = &c;
        async move { jobs(c).first().map(|j| j.0.clone()) }
    })
    .await
}

async fn recover_pg2(c: &Cluster) {
    c.wait_pool("pg-0", &["pg-0", "pg-1"], Duration::from_secs(60))
        .await;
    let (status, body) = c
        .post("/nodes/pg-2/recover?rebuild=true", Some(API_TOKEN))
        .await;
    // 409 busy: the restarted sidecar is already running the rebuild again by itself.
    let redoing = status == 409 && body.to_string().contains("busy");
    assert!(status == 200 || redoing, "{status} {body}");
    c.wait_pool("pg-0", &ALL, Duration::from_secs(60)).await;
    assert!(jobs(c).is_empty(), "{:?}", jobs(c));
}

/// A job must not outlive the sidecar that watches it: a stopped sidecar removes its running
/// job, and a crashed one's leftover is removed at the next start before any new job runs.
#[tokio::test]
async fn jobs_do_not_outlive_the_sidecar() {
    let c = ready(Cluster::new("jobs")).await;
    let pgpool = c.container("pgpool");

    // Crash (SIGKILL) in the middle of a rebuild: the job is left behind...
    let job = rebuild_in_flight(&c).await;
    let (code, _, err) = c.docker(&["kill", &pgpool]);
    assert_eq!(code, 0, "{err}");
    assert!(
        jobs(&c).iter().any(|j| j.0 == job),
        "the job vanished with the sidecar"
    );
    // ...and the restarted sidecar removes it before it is ready to run anything.
    let (code, _, err) = c.docker(&["start", &pgpool]);
    assert_eq!(code, 0, "{err}");
    wait_for(
        "the leftover job removed after restart",
        Duration::from_secs(30),
        || {
            let c = &c;
            async move { jobs(c).is_empty().then_some(()) }
        },
    )
    .await;
    recover_pg2(&c).await;

    // A clean stop (SIGTERM) in the middle of a rebuild removes the job on the way out.
    let _job = rebuild_in_flight(&c).await;
    let (code, _, err) = c.docker(&["stop", "-t", "20", &pgpool]);
    assert_eq!(code, 0, "{err}");
    assert!(
        jobs(&c).is_empty(),
        "job left after SIGTERM: {:?}",
        jobs(&c)
    );
    let (code, _, err) = c.docker(&["start", &pgpool]);
    assert_eq!(code, 0, "{err}");
    recover_pg2(&c).await;
}

/// After a failover (standbys re-pointed) and the old primary's rewind and rejoin, no log of any
/// node or of the sidecar holds a password, and `primary_conninfo` holds none either.
#[tokio::test]
async fn no_password_in_any_log_after_failover_and_rejoin() {
    let c = ready(Cluster::new("nopw")).await;
    let (code, _, err) = c.docker(&["kill", &c.container("pg-0")]);
    assert_eq!(code, 0, "{err}");
    c.write_until_ok(1, Duration::from_secs(30)).await;
    let new = c.pool_primary().await.expect("a new primary");
    assert!(new == "pg-1" || new == "pg-2", "{new}");
    // Auto-rejoin rewinds the fenced old primary and attaches it.
    c.wait_pool(&new, &ALL, Duration::from_secs(90)).await;
    for n in ALL.iter().filter(|n| **n != new) {
        let client = c.node(n).await.expect("standby answers");
        let conninfo = query(&client, "SHOW primary_conninfo").await.unwrap()[0][0]
            .clone()
            .unwrap_or_default();
        assert!(conninfo.contains("passfile="), "{n}: {conninfo}");
        assert!(!conninfo.contains("password"), "{n}: {conninfo}");
        assert!(
            conninfo.contains(&format!("host='{new}'")),
            "{n}: {conninfo}"
        );
    }
    for service in ["pg-0", "pg-1", "pg-2", "pgpool"] {
        let logs = c.logs(service);
        for secret in SECRETS {
            assert!(!logs.contains(secret), "a secret in the log of {service}");
        }
    }
}

/// pgpool, and the hooks it runs, must not be root in the container that holds the Docker
/// socket: every pgpool process runs as the unprivileged `pgpool` user, which cannot open the
/// Docker socket but can call the sidecar's hook socket.
#[tokio::test]
async fn pgpool_runs_unprivileged_and_cannot_reach_the_docker_socket() {
    let c = ready(Cluster::new("unpriv")).await;
    let id = c.container("pgpool");
    let creds = r#"for p in /proc/[0-9]*; do
        [ "$(cat $p/comm 2>/dev/null)" = pgpool ] || continue
        awk '/^Uid:|^Gid:|^Groups:/ {printf "%s ", $0} END {print ""}' $p/status
      done"#;
    let (code, out, err) = c.docker(&["exec", &id, "sh", "-c", creds]);
    assert_eq!(code, 0, "{err}");
    let procs: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(procs.len() > 3, "pgpool processes: {out}");
    for p in &procs {
        let f: Vec<&str> = p.split_whitespace().collect();
        // "Uid: real effective saved fs Gid: … Groups: …"
        assert_eq!(f[0], "Uid:", "{p}");
        assert!(
            f[1..5].iter().all(|u| *u == "7432"),
            "pgpool runs as root: {p}"
        );
        assert!(f[6..10].iter().all(|g| *g == "7432"), "{p}");
        assert_eq!(f.get(11), None, "supplementary groups kept: {p}");
    }
    let (_, ls, _) = c.docker(&["exec", &id, "ls", "-ln", "/var/run/docker.sock"]);
    let sock_gid = ls.split_whitespace().nth(3).unwrap_or("").to_string();
    assert_ne!(
        sock_gid, "7432",
        "the Docker socket's group is pgpool's: {ls}"
    );
    // As pgpool's user: the Docker socket refuses, the hook socket answers.
    let hook = |socket: &str| {
        c.docker(&[
            "exec",
            "-u",
            "7432:7432",
            &id,
            "pgpool-sidecar",
            "hook",
            "--socket",
            socket,
            "--timeout",
            "5",
            "failover",
            "1",
            "0",
        ])
    };
    let (code, out, err) = hook("/var/run/docker.sock");
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("ermission denied"), "{out}{err}");
    let (code, out, err) = hook("/run/pgpool-sidecar/hook.sock");
    assert_eq!(code, 0, "the hook socket refused pgpool's user: {out}{err}");
    // What pgpool reads holds secrets: its user only.
    let (_, ls, _) = c.docker(&["exec", &id, "ls", "-ln", "/etc/pgpool2"]);
    for line in ls.lines().filter(|l| l.starts_with('-')) {
        assert!(line.starts_with("-rw-------"), "{line}");
    }
}
