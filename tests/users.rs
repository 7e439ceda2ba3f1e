//! Application users through pgpool, end to end (real Docker, PostgreSQL, pgpool, tokio-postgres):
//! declared users log in, write and read from a standby; a wrong password is refused; a password
//! full of awkward characters works; rotating the users file takes effect within seconds without
//! a pgpool restart and keeps open sessions; roles nobody declared are reported; no password
//! shows up in any log, `/status`, metric or process argument list.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio_postgres::{Client, NoTls};

const ALL: [&str; 3] = ["pg-0", "pg-1", "pg-2"];
const APP_OLD: &str = "aPp-old-Pw-91";
const APP_NEW: &str = "aPp-new-Pw-37";
/// Every character the issue names: `:` `'` `"` `\` spaces and non-ASCII.
const ODD: &str = "a:b 'c' \"d\" \\e fünf Ω-pw";
const REPORT_PW: &str = "rEport-pw-55";
const MIGRATOR_PW: &str = "mIgrator-pw-73";

async fn connect_as(port: u16, user: &str, password: &str) -> Result<Client, String> {
    connect_db(port, user, password, "postgres").await
}

async fn connect_db(port: u16, user: &str, password: &str, db: &str) -> Result<Client, String> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname(db)
        .connect_timeout(Duration::from_secs(3));
    let (client, conn) = tokio::time::timeout(Duration::from_secs(5), cfg.connect(NoTls))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| {
            e.as_db_error()
                .map_or(e.to_string(), |d| d.message().to_string())
        })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn users_file(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("app-users");
    // In place (same inode): the container sees a bind-mounted file only that way.
    std::fs::write(&path, text).unwrap();
    path
}

fn pgpool_pid(c: &Cluster) -> String {
    let (code, out, err) = c.docker(&[
        "exec",
        &c.container("pgpool"),
        "cat",
        "/var/run/pgpool/pgpool.pid",
    ]);
    assert_eq!(code, 0, "{err}");
    out.trim().to_string()
}

/// Every process's arguments in every container of the stack.
fn all_process_args(c: &Cluster) -> String {
    let mut out = String::new();
    for service in ["pgpool", "pg-0", "pg-1", "pg-2"] {
        let (_, args, _) = c.docker(&[
            "exec",
            &c.container(service),
            "sh",
            "-c",
            "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done 2>/dev/null",
        ]);
        out.push_str(&args);
    }
    out
}

#[tokio::test]
async fn declared_users_log_in_read_from_standbys_and_rotate_without_restart() {
    let dir = tempdir("users");
    let file = users_file(&dir, &format!("# app users\napp:{APP_OLD}\nodd:{ODD}\n"));
    let c = Cluster::new("users")
        .file("compose/users-file.yml")
        .env("APP_USERS_FILE", file.to_str().unwrap())
        .up()
        .await;
    c.wait_pool("pg-0", &ALL, Duration::from_secs(120)).await;

    // The declared user logs in through pgpool once the sidecar made its role; its database
    // is made by the superuser, as an application's set-up would.
    wait_for(
        "app logs in through pgpool",
        Duration::from_secs(30),
        || async { connect_as(c.pgpool_port, "app", APP_OLD).await.ok() },
    )
    .await;
    let admin = c.pgpool().await.unwrap();
    query(&admin, "CREATE DATABASE appdb OWNER app")
        .await
        .unwrap();
    // pgpool opens a session on every backend: the database must have reached the standbys.
    let app = wait_for("app connects to appdb", Duration::from_secs(10), || async {
        connect_db(c.pgpool_port, "app", APP_OLD, "appdb")
            .await
            .ok()
    })
    .await;
    query(&app, "CREATE TABLE app_rows (id int PRIMARY KEY)")
        .await
        .unwrap();
    query(&app, "INSERT INTO app_rows SELECT generate_series(1, 20)")
        .await
        .unwrap();
    // A load-balanced read on a standby: pgpool picks a node per session, so sessions are
    // opened until one reads from a standby, which must see the rows.
    wait_for(
        "app reads its rows from a standby",
        Duration::from_secs(30),
        || async {
            let s = connect_db(c.pgpool_port, "app", APP_OLD, "appdb")
                .await
                .ok()?;
            let r = query(
                &s,
                // pgpool sends a query on a system catalog, or that calls a volatile function
                // (pg_is_in_recovery()), to the primary; current_setting() is stable. A standby
                // is read-only.
                "SELECT current_setting('transaction_read_only'), count(*)::text FROM app_rows",
            )
            .await
            .ok()?;
            (r[0][0].as_deref() == Some("on") && r[0][1].as_deref() == Some("20")).then_some(())
        },
    )
    .await;
    let refused = connect_as(c.pgpool_port, "app", "not-the-password")
        .await
        .err();
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("authentication failed")),
        "a wrong password must be refused: {refused:?}"
    );
    let odd = connect_as(c.pgpool_port, "odd", ODD)
        .await
        .expect("the odd password works");
    assert_eq!(
        query(&odd, "SELECT current_user").await.unwrap()[0][0].as_deref(),
        Some("odd")
    );

    // Rotation: a session opened before the change keeps working, pgpool is not restarted.
    let before = connect_db(c.pgpool_port, "app", APP_OLD, "appdb")
        .await
        .unwrap();
    let pid = pgpool_pid(&c);
    let changed = Instant::now();
    users_file(&dir, &format!("app:{APP_NEW}\nodd:{ODD}\n"));
    let seconds = wait_for(
        "the new password works and the old one fails",
        Duration::from_secs(10),
        || async {
            let new_ok = connect_as(c.pgpool_port, "app", APP_NEW).await.is_ok();
            let old_refused = connect_as(c.pgpool_port, "app", APP_OLD)
                .await
                .is_err_and(|e| e.contains("authentication failed"));
            (new_ok && old_refused).then(|| changed.elapsed().as_secs_f64())
        },
    )
    .await;
    c.figure(&format!(
        "rotation: new password works, old refused after {seconds:.1} s"
    ));
    let r = query(&before, "SELECT count(*) FROM app_rows").await;
    assert_eq!(
        r.expect("the session from before the rotation still works")[0][0].as_deref(),
        Some("20")
    );
    assert_eq!(pgpool_pid(&c), pid, "pgpool was restarted, not reloaded");

    // A role created by SQL, not declared, is reported.
    query(
        &admin,
        &format!("CREATE ROLE migrator LOGIN PASSWORD '{MIGRATOR_PW}'"),
    )
    .await
    .unwrap();
    let status = wait_for(
        "/status lists migrator as undeclared",
        Duration::from_secs(30),
        || async {
            let s = c.status().await;
            let listed = s["users"]["undeclared_login_roles"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == "migrator"));
            listed.then_some(s)
        },
    )
    .await;
    assert_eq!(status["users"]["source"], "file");
    assert_eq!(
        status["users"]["declared"],
        serde_json::json!(["app", "odd"])
    );
    let metrics = c.http("/metrics").await.1;
    assert_eq!(
        metric(&metrics, "pgpool_sidecar_login_roles_without_pool_passwd"),
        Some(1.0)
    );
    assert_eq!(metric(&metrics, "pgpool_sidecar_app_users"), Some(2.0));
    assert!(c
        .logs("pgpool")
        .contains("declare it in PGPOOL_SIDECAR_USERS"));

    // No declared password anywhere: logs (ours, pgpool's, PostgreSQL's), /status, metrics,
    // process arguments.
    let status_text = c.http("/status").await.1;
    let mut logs = String::new();
    for service in ["pgpool", "pg-0", "pg-1", "pg-2"] {
        logs.push_str(&c.logs(service));
    }
    let args = all_process_args(&c);
    assert!(args.contains("pgpool"), "process list read: {args}");
    for secret in [
        APP_OLD,
        APP_NEW,
        ODD,
        PASSWORD,
        REPLICATION_PASSWORD,
        PCP_PASSWORD,
    ] {
        assert!(!logs.contains(secret), "a password in a log");
        assert!(!status_text.contains(secret), "a password in /status");
        assert!(!metrics.contains(secret), "a password in /metrics");
        assert!(
            !args.contains(secret),
            "a password in a process's arguments"
        );
    }
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn users_from_the_variable_with_commas() {
    let c = Cluster::new("usersvar")
        .env("APP_USERS", &format!("app:{APP_OLD},report:{REPORT_PW}"))
        .up()
        .await;
    c.wait_pool("pg-0", &ALL, Duration::from_secs(120)).await;
    for (user, pw) in [("app", APP_OLD), ("report", REPORT_PW)] {
        let s = wait_for(
            "the declared user logs in",
            Duration::from_secs(30),
            || async { connect_as(c.pgpool_port, user, pw).await.ok() },
        )
        .await;
        assert_eq!(
            query(&s, "SELECT current_user").await.unwrap()[0][0].as_deref(),
            Some(user)
        );
    }
    let status = c.status().await;
    assert_eq!(status["users"]["source"], "variable");
    assert_eq!(
        status["users"]["declared"],
        serde_json::json!(["app", "report"])
    );
    let text = c.http("/status").await.1;
    assert!(!text.contains(APP_OLD) && !text.contains(REPORT_PW));
}

/// A directory of this test's own under target/, removed at the end.
fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = repo().join(format!("target/test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
