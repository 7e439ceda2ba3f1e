//! Bad configuration makes the sidecar container exit 64 and name the variable; the hook fails
//! loudly without a daemon. Real image, real `docker run`.

mod common;

use std::process::Command;

use common::sh;

const IMAGE: &str = "pgpool-sidecar:local";

fn base_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("PGPOOL_SIDECAR_NODES", "pg-0,pg-1,pg-2"),
        ("PGPOOL_SIDECAR_SUPERUSER_PASSWORD", "x-super"),
        ("PGPOOL_SIDECAR_REPLICATION_PASSWORD", "x-repl"),
        ("PGPOOL_SIDECAR_PCP_PASSWORD", "x-pcp"),
    ]
}

/// Runs the sidecar image with `env` (minus `remove`), returning (exit code, log).
fn run_container(env: &[(&str, &str)], remove: &[&str]) -> (i32, String) {
    let name = format!("pgst-cfg-{}-{}", std::process::id(), rand_suffix());
    let mut cmd = Command::new("docker");
    cmd.args(["run", "--name", &name]);
    for (k, v) in env.iter().filter(|(k, _)| !remove.contains(k)) {
        cmd.args(["-e", &format!("{k}={v}")]);
    }
    cmd.arg(IMAGE);
    let (code, out, err) = sh(&mut cmd);
    let _ = sh(Command::new("docker").args(["rm", "-f", "-v", &name]));
    (code, format!("{out}{err}"))
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut env = base_env();
    for (k, v) in extra {
        env.retain(|(e, _)| e != k);
        env.push((k, v));
    }
    env
}

#[test]
fn bad_config_exits_64_and_names_the_variable() {
    type Env = Vec<(&'static str, &'static str)>;
    let cases: Vec<(Env, Vec<&str>, &str)> = vec![
        (
            base_env(),
            vec!["PGPOOL_SIDECAR_NODES"],
            "PGPOOL_SIDECAR_NODES",
        ),
        (
            with(&[("PGPOOL_SIDECAR_PROBE_INTERVAL", "fast")]),
            vec![],
            "PGPOOL_SIDECAR_PROBE_INTERVAL",
        ),
        (
            with(&[("PGPOOL_SIDECAR_HTTP_LISTEN", "0.0.0.0:70000")]),
            vec![],
            "PGPOOL_SIDECAR_HTTP_LISTEN",
        ),
        (
            with(&[("PGPOOL_SIDECAR_NODES", "pg-0,pg-1:99999")]),
            vec![],
            "PGPOOL_SIDECAR_NODES",
        ),
        (
            with(&[("PGPOOL_SIDECAR_PCP_PASSWORD_FILE", "/run/secrets/missing")]),
            vec!["PGPOOL_SIDECAR_PCP_PASSWORD"],
            "PGPOOL_SIDECAR_PCP_PASSWORD_FILE",
        ),
        (
            with(&[("PGPOOL_CONF_FAILOVER_COMMAND", "/bin/true")]),
            vec![],
            "PGPOOL_CONF_FAILOVER_COMMAND",
        ),
        (
            with(&[("PGPOOL_CONF_INCLUDE", "/etc/passwd")]),
            vec![],
            "PGPOOL_CONF_INCLUDE",
        ),
        (
            with(&[(
                "PGPOOL_CONF_LOG_LINE_PREFIX",
                "'%m' failover_command = '/bin/true %d'",
            )]),
            vec![],
            "PGPOOL_CONF_LOG_LINE_PREFIX",
        ),
        (
            with(&[("PGPOOL_SIDECAR_HOOK_SOCKET", "/tmp/h.sock;true")]),
            vec![],
            "PGPOOL_SIDECAR_HOOK_SOCKET",
        ),
        (
            with(&[("PGPOOL_SIDECAR_PCP_PASSWORD_FILE", "/dev/zero")]),
            vec!["PGPOOL_SIDECAR_PCP_PASSWORD"],
            "PGPOOL_SIDECAR_PCP_PASSWORD_FILE",
        ),
    ];
    for (env, remove, var) in cases {
        let (code, log) = run_container(&env, &remove);
        assert_eq!(code, 64, "{var}: exit code {code}, log:\n{log}");
        assert!(log.contains(var), "{var} not named in:\n{log}");
        for secret in ["x-super", "x-repl", "x-pcp"] {
            assert!(!log.contains(secret), "secret leaked in:\n{log}");
        }
    }
}

#[test]
fn configcheck_prints_effective_config_without_secrets() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgpool-sidecar"));
    cmd.env_clear().arg("configcheck");
    for (k, v) in base_env() {
        cmd.env(k, v);
    }
    let (code, out, err) = sh(&mut cmd);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["nodes"][0]["host"], "pg-0");
    assert_eq!(v["nodes"][0]["port"], 5432);
    assert!(out.contains("<redacted>"));
    for secret in ["x-super", "x-repl", "x-pcp"] {
        assert!(!out.contains(secret));
    }
}

#[test]
fn hook_without_daemon_or_with_bad_arguments_fails_loudly() {
    let bin = env!("CARGO_BIN_EXE_pgpool-sidecar");
    let (code, _, err) = sh(Command::new(bin).args([
        "hook",
        "--socket",
        "/nonexistent/pgpool-sidecar.sock",
        "failover",
        "0",
        "0",
    ]));
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach the pgpool-sidecar daemon"),
        "{err}"
    );
    assert!(err.contains("/nonexistent/pgpool-sidecar.sock"), "{err}");

    let (code, _, err) = sh(Command::new(bin).args(["hook", "failover", "zero"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid value 'zero'"), "{err}");
    let (code, _, err) = sh(Command::new(bin).args(["hook", "promote-everything"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unrecognized subcommand"), "{err}");
}

/// Runs `configcheck` with `env`, killing it after `limit` so a hang fails instead of blocking.
fn configcheck(env: &[(&str, &str)], limit: std::time::Duration) -> (i32, String) {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgpool-sidecar"))
        .env_clear()
        .arg("configcheck")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("configcheck starts");
    let started = std::time::Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code().unwrap_or(-1);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("configcheck did not finish within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut log = String::new();
    for pipe in [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn Read>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn Read>),
    ]
    .into_iter()
    .flatten()
    {
        let mut pipe = pipe;
        let _ = pipe.read_to_string(&mut log);
    }
    (code, log)
}

#[test]
fn configcheck_refuses_what_run_refuses() {
    let fifo = std::env::temp_dir().join(format!("pgst-cfg-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let (code, _, err) = sh(Command::new("mkfifo").arg(&fifo));
    assert_eq!(code, 0, "{err}");
    let fifo_path = fifo.to_str().expect("utf-8").to_owned();
    let mut cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            with(&[("PGPOOL_CONF_FAILOVER_COMMAND", "/bin/true")]),
            "PGPOOL_CONF_FAILOVER_COMMAND",
        ),
        (
            with(&[("PGPOOL_CONF_WORK_DIR", "/tmp")]),
            "PGPOOL_CONF_WORK_DIR",
        ),
        (
            with(&[("PGPOOL_CONF_INCLUDE", "/etc/passwd")]),
            "PGPOOL_CONF_INCLUDE",
        ),
        (
            with(&[("PGPOOL_CONF_LOG_LINE_PREFIX", "it's")]),
            "PGPOOL_CONF_LOG_LINE_PREFIX",
        ),
        (
            with(&[("PGPOOL_SIDECAR_HOOK_SOCKET", "/tmp/$(id)")]),
            "PGPOOL_SIDECAR_HOOK_SOCKET",
        ),
        (
            with(&[("PGPOOL_SIDECAR_SUPERUSER", "post:gres")]),
            "PGPOOL_SIDECAR_SUPERUSER",
        ),
    ];
    // A FIFO as a secret file: refused, not waited on.
    let mut with_fifo: Vec<(&str, &str)> = base_env();
    with_fifo.retain(|(k, _)| *k != "PGPOOL_SIDECAR_PCP_PASSWORD");
    with_fifo.push(("PGPOOL_SIDECAR_PCP_PASSWORD_FILE", &fifo_path));
    cases.push((with_fifo, "PGPOOL_SIDECAR_PCP_PASSWORD_FILE"));
    for (env, var) in cases {
        let (code, log) = configcheck(&env, std::time::Duration::from_secs(10));
        assert_eq!(code, 64, "{var}: exit code {code}, log:\n{log}");
        assert!(log.contains(var), "{var} not named in:\n{log}");
        for secret in ["x-super", "x-repl", "x-pcp"] {
            assert!(!log.contains(secret), "secret leaked in:\n{log}");
        }
    }
    let _ = std::fs::remove_file(&fifo);
}

/// The product image ships a supported pgpool-II: 4.6 or newer (4.3 is end of life in 2026-12).
#[test]
fn product_image_ships_pgpool_4_6_or_newer() {
    let out = Command::new("docker")
        .args(["run", "--rm", "--entrypoint", "pgpool", IMAGE, "--version"])
        .output()
        .expect("docker runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgpool --version failed: {text}");
    // "pgpool-II version 4.6.1 (chirikoboshi)"
    let version = text
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .unwrap_or_else(|| panic!("no version in {text:?}"));
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    eprintln!("product image: pgpool-II {version}");
    assert!(
        (major, minor) >= (4, 6),
        "pgpool-II {version} in {IMAGE}: expected 4.6 or newer"
    );
}
