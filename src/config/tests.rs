use super::*;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const SECRET_VARS: &[&str] = &[
    "SUPERUSER_PASSWORD",
    "REPLICATION_PASSWORD",
    "PCP_PASSWORD",
    "API_TOKEN",
];
const SUPER_PW: &str = "super-Secret-pw-1";
const REPL_PW: &str = "repl-Secret-pw-2";
const PCP_PW: &str = "pcp-Secret-pw-3";
const TOKEN: &str = "api-token-0123456789-abcdef";

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The smallest valid environment plus `extra`; a later entry replaces an earlier one, and
/// an empty value for a secret removes it.
fn with(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs = env(&[
        ("PGPOOL_SIDECAR_NODES", "db1,db2,db3"),
        ("PGPOOL_SIDECAR_SUPERUSER_PASSWORD", SUPER_PW),
        ("PGPOOL_SIDECAR_REPLICATION_PASSWORD", REPL_PW),
        ("PGPOOL_SIDECAR_PCP_PASSWORD", PCP_PW),
    ]);
    pairs.extend(env(extra));
    pairs
}

fn without(name: &str) -> Vec<(String, String)> {
    with(&[]).into_iter().filter(|(k, _)| k != name).collect()
}

fn ok(vars: Vec<(String, String)>) -> Config {
    match load(&vars) {
        Ok(c) => c,
        Err(e) => panic!("expected valid config, got:\n{e}"),
    }
}

fn problems(vars: Vec<(String, String)>) -> Vec<Problem> {
    match load(&vars) {
        Ok(c) => panic!("expected problems, got {c:?}"),
        Err(e) => e.problems,
    }
}

/// Asserts exactly one problem, on `var`, whose message contains `needle`.
fn assert_one(vars: Vec<(String, String)>, var: &str, needle: &str) {
    let p = problems(vars);
    assert_eq!(p.len(), 1, "expected one problem, got {p:#?}");
    assert_eq!(p[0].var, var);
    assert!(
        p[0].message.contains(needle),
        "{:?} does not contain {needle:?}",
        p[0].message
    );
}

/// A path under the temp dir, unique per test and process.
fn temp_path(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "pgpool-sidecar-config-test-{}-{n}-{tag}",
        std::process::id()
    ))
}

/// Removes the file when the test ends, also on panic.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, content: &str) -> Self {
        let path = temp_path(tag);
        std::fs::write(&path, content).expect("write temp file");
        TempFile(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The names accepted before the settings table existed; the table must accept exactly these.
const KNOWN_VARS: &[&str] = &[
    "NODES",
    "SUPERUSER",
    "SUPERUSER_PASSWORD",
    "SUPERUSER_PASSWORD_FILE",
    "REPLICATION_USER",
    "REPLICATION_PASSWORD",
    "REPLICATION_PASSWORD_FILE",
    "USERS",
    "USERS_FILE",
    "PCP_USER",
    "PCP_PASSWORD",
    "PCP_PASSWORD_FILE",
    "PCP_PORT",
    "PGPOOL_PORT",
    "HTTP_LISTEN",
    "API_TOKEN",
    "API_TOKEN_FILE",
    "PROBE_INTERVAL",
    "PROBE_TIMEOUT",
    "PROBE_FAILURES",
    "LOG_FORMAT",
    "COMPOSE_PROJECT",
    "CLUSTER_LABEL",
    "MAX_LAG_ON_FAILOVER",
    "SYNCHRONOUS_STANDBYS",
    "PRIORITIES",
    "AUTO_REJOIN",
    "AUTO_FAILBACK",
    "PREFERRED_PRIMARY",
    "HOOK_SOCKET",
    "JOB_TIMEOUT",
    "STATE_PATH",
    "REPLICATION_SLOTS",
    "MAX_SLOT_WAL_KEEP_SIZE",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "TLS_CA_FILE",
];

#[test]
fn known_vars_match_config_fields() {
    let known: BTreeSet<String> = settings::known_names().map(str::to_owned).collect();
    let expected: BTreeSet<String> = KNOWN_VARS.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(known, expected);
    // Each variable without its `_FILE` forms is one field, shown in `redacted()`.
    let fields: BTreeSet<String> = ok(with(&[]))
        .redacted()
        .as_object()
        .expect("object")
        .keys()
        .filter(|k| *k != "pgpool_conf")
        .map(|k| k.to_ascii_uppercase())
        .collect();
    let plain: BTreeSet<String> = known
        .iter()
        // Only a secret's `_FILE` form is a second name; `TLS_CERT_FILE` is a field itself.
        .filter(|k| {
            !SECRET_VARS
                .iter()
                .chain(&["USERS"])
                .any(|s| **k == format!("{s}_FILE"))
        })
        .cloned()
        .collect();
    assert_eq!(fields, plain);
    for secret in SECRET_VARS {
        assert!(known.contains(*secret));
        assert!(known.contains(&format!("{secret}_FILE")));
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let c = ok(with(&[]));
    let hosts: Vec<String> = c.nodes.iter().map(NodeAddr::to_string).collect();
    assert_eq!(hosts, ["db1:5432", "db2:5432", "db3:5432"]);
    assert_eq!(c.superuser, "postgres");
    assert_eq!(c.superuser_password.expose(), SUPER_PW);
    assert_eq!(c.replication_user, "replicator");
    assert_eq!(c.replication_password.expose(), REPL_PW);
    assert_eq!(c.pcp_user, "pcpadmin");
    assert_eq!(c.pcp_password.expose(), PCP_PW);
    assert_eq!(c.pcp_port, 9898);
    assert_eq!(c.pgpool_port, 5432);
    assert_eq!(c.http_listen, "0.0.0.0:9720".parse().unwrap());
    assert_eq!(c.api_token, None);
    assert_eq!(c.probe_interval, Duration::from_secs(1));
    assert_eq!(c.probe_timeout, Duration::from_secs(1));
    assert_eq!(c.probe_failures, 3);
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.compose_project, None);
    assert_eq!(c.cluster_label, None);
    assert_eq!(c.max_lag_on_failover, 16 * 1024 * 1024);
    assert_eq!(c.synchronous_standbys, 0);
    assert_eq!(c.priorities, [0, 0, 0]);
    assert!(c.auto_rejoin);
    assert!(!c.auto_failback);
    assert_eq!(c.preferred_primary, None);
    assert_eq!(
        c.hook_socket,
        PathBuf::from("/run/pgpool-sidecar/hook.sock")
    );
    assert_eq!(c.job_timeout, Duration::from_secs(600));
    assert!(c.pgpool_conf.is_empty());
}

#[test]
fn full_config_is_read() {
    let c = ok(with(&[
        ("PGPOOL_SIDECAR_NODES", " pg-a:5433 , pg-b , [::1]:6000 "),
        ("PGPOOL_SIDECAR_SUPERUSER", "admin"),
        ("PGPOOL_SIDECAR_REPLICATION_USER", "repl"),
        ("PGPOOL_SIDECAR_PCP_USER", "pcp"),
        ("PGPOOL_SIDECAR_PCP_PORT", "9999"),
        ("PGPOOL_SIDECAR_PGPOOL_PORT", "6432"),
        ("PGPOOL_SIDECAR_HTTP_LISTEN", "127.0.0.1:8080"),
        ("PGPOOL_SIDECAR_API_TOKEN", TOKEN),
        ("PGPOOL_SIDECAR_PROBE_INTERVAL", "500ms"),
        ("PGPOOL_SIDECAR_PROBE_TIMEOUT", "2s"),
        ("PGPOOL_SIDECAR_PROBE_FAILURES", "5"),
        ("PGPOOL_SIDECAR_LOG_FORMAT", "JSON"),
        ("PGPOOL_SIDECAR_COMPOSE_PROJECT", "ha"),
        ("PGPOOL_SIDECAR_CLUSTER_LABEL", "com.example.cluster=main=1"),
        ("PGPOOL_SIDECAR_MAX_LAG_ON_FAILOVER", "1 gB"),
        ("PGPOOL_SIDECAR_SYNCHRONOUS_STANDBYS", "2"),
        ("PGPOOL_SIDECAR_PRIORITIES", "pg-b=10, pg-a=-1"),
        ("PGPOOL_SIDECAR_AUTO_REJOIN", "off"),
        ("PGPOOL_SIDECAR_AUTO_FAILBACK", "Yes"),
        ("PGPOOL_SIDECAR_PREFERRED_PRIMARY", "pg-b"),
        ("PGPOOL_SIDECAR_HOOK_SOCKET", "/tmp/hook.sock"),
        ("PGPOOL_SIDECAR_JOB_TIMEOUT", "1h 30m"),
        ("PGPOOL_CONF_NUM_INIT_CHILDREN", "64"),
        ("PGPOOL_CONF_log_min_messages", "debug1"),
    ]));
    assert_eq!(
        c.nodes,
        [
            NodeAddr {
                host: "pg-a".into(),
                port: 5433
            },
            NodeAddr {
                host: "pg-b".into(),
                port: 5432
            },
            NodeAddr {
                host: "::1".into(),
                port: 6000
            },
        ]
    );
    assert_eq!(c.nodes[2].to_string(), "[::1]:6000");
    assert_eq!(c.superuser, "admin");
    assert_eq!(c.replication_user, "repl");
    assert_eq!(c.pcp_user, "pcp");
    assert_eq!(c.pcp_port, 9999);
    assert_eq!(c.pgpool_port, 6432);
    assert_eq!(c.http_listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.api_token.as_ref().map(Secret::expose), Some(TOKEN));
    assert_eq!(c.probe_interval, Duration::from_millis(500));
    assert_eq!(c.probe_timeout, Duration::from_secs(2));
    assert_eq!(c.probe_failures, 5);
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.compose_project.as_deref(), Some("ha"));
    assert_eq!(
        c.cluster_label,
        Some(("com.example.cluster".into(), "main=1".into()))
    );
    assert_eq!(c.max_lag_on_failover, 1 << 30);
    assert_eq!(c.synchronous_standbys, 2);
    assert_eq!(c.priorities, [-1, 10, 0]);
    assert!(!c.auto_rejoin);
    assert!(c.auto_failback);
    assert_eq!(c.preferred_primary, Some(1));
    assert_eq!(c.hook_socket, PathBuf::from("/tmp/hook.sock"));
    assert_eq!(c.job_timeout, Duration::from_secs(5400));
    let conf: Vec<(&str, &str)> = c
        .pgpool_conf
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        conf,
        [("log_min_messages", "debug1"), ("num_init_children", "64")]
    );
}

#[test]
fn hashmap_source_and_last_value_wins() {
    let map: HashMap<String, String> = with(&[]).into_iter().collect();
    assert_eq!(ok_from(&map).nodes.len(), 3);
    let c = ok(with(&[("PGPOOL_SIDECAR_NODES", "only")]));
    assert_eq!(c.nodes.len(), 1);
    assert_eq!(c.priorities, [0]);
}

fn ok_from(source: &dyn EnvSource) -> Config {
    load(source).expect("valid config")
}

#[test]
fn empty_values_mean_default() {
    let c = ok(with(&[
        ("PGPOOL_SIDECAR_PROBE_INTERVAL", ""),
        ("PGPOOL_SIDECAR_LOG_FORMAT", "  "),
        ("PGPOOL_SIDECAR_COMPOSE_PROJECT", ""),
        ("PGPOOL_SIDECAR_API_TOKEN", ""),
    ]));
    assert_eq!(c.probe_interval, Duration::from_secs(1));
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.compose_project, None);
    assert_eq!(c.api_token, None);
}

#[test]
fn nodes_missing() {
    assert_one(
        without("PGPOOL_SIDECAR_NODES"),
        "PGPOOL_SIDECAR_NODES",
        "is required",
    );
    assert_one(
        with(&[("PGPOOL_SIDECAR_NODES", " ")]),
        "PGPOOL_SIDECAR_NODES",
        "is empty",
    );
}

#[test]
fn nodes_empty_item() {
    assert_one(
        with(&[("PGPOOL_SIDECAR_NODES", "db1,,db2")]),
        "PGPOOL_SIDECAR_NODES",
        "item 2 is empty",
    );
    let p = problems(with(&[("PGPOOL_SIDECAR_NODES", ",")]));
    let messages: Vec<&str> = p.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(messages, ["item 1 is empty", "item 2 is empty"]);
}

#[test]
fn nodes_bad_port() {
    for (list, needle) in [
        ("db1:abc", "invalid port \"abc\""),
        ("db1:", "invalid port \"\""),
        ("db1:0", "out of range"),
        ("db1:65536", "out of range"),
        ("db1:99999999999999999999", "out of range"),
    ] {
        assert_one(
            with(&[("PGPOOL_SIDECAR_NODES", list)]),
            "PGPOOL_SIDECAR_NODES",
            needle,
        );
    }
    assert_eq!(
        ok(with(&[("PGPOOL_SIDECAR_NODES", "db1:65535")])).nodes[0].port,
        65535
    );
}

#[test]
fn nodes_bad_host() {
    for (list, needle) in [
        (":5432", "host is empty"),
        ("db 1", "host may contain only"),
        ("::1", "brackets"),
        ("[::1", "missing ']'"),
        ("[db1]:5432", "not an IPv6 address"),
    ] {
        assert_one(
            with(&[("PGPOOL_SIDECAR_NODES", list)]),
            "PGPOOL_SIDECAR_NODES",
            needle,
        );
    }
}

#[test]
fn nodes_duplicate() {
    assert_one(
        with(&[("PGPOOL_SIDECAR_NODES", "db1,DB1:5432")]),
        "PGPOOL_SIDECAR_NODES",
        "DB1:5432 is listed twice",
    );
    // Same host on another port is a different server.
    assert_eq!(
        ok(with(&[("PGPOOL_SIDECAR_NODES", "db1,db1:5433")]))
            .nodes
            .len(),
        2
    );
}

#[test]
fn plain_ports() {
    for var in ["PGPOOL_SIDECAR_PCP_PORT", "PGPOOL_SIDECAR_PGPOOL_PORT"] {
        assert_one(with(&[(var, "70000")]), var, "out of range");
        assert_one(with(&[(var, "0")]), var, "out of range");
        assert_one(with(&[(var, "x1")]), var, "invalid port");
    }
}

#[test]
fn port_clashes() {
    assert_one(
        with(&[("PGPOOL_SIDECAR_PCP_PORT", "5432")]),
        "PGPOOL_SIDECAR_PCP_PORT",
        "same as PGPOOL_SIDECAR_PGPOOL_PORT",
    );
    assert_one(
        with(&[("PGPOOL_SIDECAR_HTTP_LISTEN", ":9898")]),
        "PGPOOL_SIDECAR_HTTP_LISTEN",
        "same as PGPOOL_SIDECAR_PCP_PORT",
    );
}

#[test]
fn http_listen_forms() {
    for (value, expected) in [
        (":8080", "0.0.0.0:8080"),
        ("8080", "0.0.0.0:8080"),
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("0", "0.0.0.0:0"),
        ("[::1]:9000", "[::1]:9000"),
    ] {
        let c = ok(with(&[("PGPOOL_SIDECAR_HTTP_LISTEN", value)]));
        assert_eq!(c.http_listen, expected.parse().unwrap(), "{value}");
    }
}

#[test]
fn http_listen_port_out_of_range() {
    for value in ["0.0.0.0:70000", ":70000", "70000", "[::1]:65536"] {
        assert_one(
            with(&[("PGPOOL_SIDECAR_HTTP_LISTEN", value)]),
            "PGPOOL_SIDECAR_HTTP_LISTEN",
            "out of range",
        );
    }
    for value in ["localhost:80", ":x", "1.2.3:80"] {
        assert_one(
            with(&[("PGPOOL_SIDECAR_HTTP_LISTEN", value)]),
            "PGPOOL_SIDECAR_HTTP_LISTEN",
            "invalid listen address",
        );
    }
}

#[test]
fn malformed_duration() {
    for var in [
        "PGPOOL_SIDECAR_PROBE_INTERVAL",
        "PGPOOL_SIDECAR_PROBE_TIMEOUT",
        "PGPOOL_SIDECAR_JOB_TIMEOUT",
    ] {
        assert_one(
            with(&[(var, "abc")]),
            var,
            "invalid duration \"abc\" (use e.g. 500ms, 2s)",
        );
        assert_one(with(&[(var, "5")]), var, "invalid duration");
    }
    let text = load(&with(&[("PGPOOL_SIDECAR_PROBE_INTERVAL", "abc")]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        text,
        "PGPOOL_SIDECAR_PROBE_INTERVAL: invalid duration \"abc\" (use e.g. 500ms, 2s)"
    );
}

#[test]
fn zero_duration() {
    for var in [
        "PGPOOL_SIDECAR_PROBE_INTERVAL",
        "PGPOOL_SIDECAR_PROBE_TIMEOUT",
        "PGPOOL_SIDECAR_JOB_TIMEOUT",
    ] {
        assert_one(with(&[(var, "0s")]), var, "is zero");
    }
}

#[test]
fn probe_timeout_at_most_a_minute() {
    assert_eq!(
        ok(with(&[("PGPOOL_SIDECAR_PROBE_TIMEOUT", "60s")])).probe_timeout,
        Duration::from_secs(60)
    );
    assert_one(
        with(&[("PGPOOL_SIDECAR_PROBE_TIMEOUT", "61s")]),
        "PGPOOL_SIDECAR_PROBE_TIMEOUT",
        "at most 60s",
    );
}

#[test]
fn probe_failures_at_least_one() {
    assert_one(
        with(&[("PGPOOL_SIDECAR_PROBE_FAILURES", "0")]),
        "PGPOOL_SIDECAR_PROBE_FAILURES",
        "at least 1",
    );
    assert_one(
        with(&[("PGPOOL_SIDECAR_PROBE_FAILURES", "-1")]),
        "PGPOOL_SIDECAR_PROBE_FAILURES",
        "invalid number",
    );
}

#[test]
fn secret_missing_or_empty() {
    assert_one(
        without("PGPOOL_SIDECAR_PCP_PASSWORD"),
        "PGPOOL_SIDECAR_PCP_PASSWORD",
        "is required",
    );
    assert_one(
        with(&[("PGPOOL_SIDECAR_SUPERUSER_PASSWORD", "")]),
        "PGPOOL_SIDECAR_SUPERUSER_PASSWORD",
        "is empty",
    );
    let file = TempFile::new("empty", "\n");
    let mut vars = without("PGPOOL_SIDECAR_REPLICATION_PASSWORD");
    vars.extend(env(&[(
        "PGPOOL_SIDECAR_REPLICATION_PASSWORD_FILE",
        file.path(),
    )]));
    assert_one(
        vars,
        "PGPOOL_SIDECAR_REPLICATION_PASSWORD_FILE",
        &format!("file {} is empty", file.path()),
    );
}

#[test]
fn secret_file_unreadable() {
    let missing = temp_path("no-such-dir").join("secret");
    let missing = missing.to_str().unwrap();
    let mut vars = without("PGPOOL_SIDECAR_PCP_PASSWORD");
    vars.extend(env(&[("PGPOOL_SIDECAR_PCP_PASSWORD_FILE", missing)]));
    assert_one(
        vars,
        "PGPOOL_SIDECAR_PCP_PASSWORD_FILE",
        &format!("file {missing} cannot be read: "),
    );
}

#[test]
fn secret_file_trailing_newlines_removed_like_the_postgres_image() {
    let file = TempFile::new("pw", "from-file-pw\n");
    let crlf = TempFile::new("crlf", "crlf-pw\r\n");
    let many = TempFile::new("many", "two-newlines\n\n");
    let token = TempFile::new("token", &format!("{TOKEN}\n"));
    let vars: Vec<(String, String)> = with(&[])
        .into_iter()
        .filter(|(k, _)| !k.ends_with("PASSWORD"))
        .chain(env(&[
            ("PGPOOL_SIDECAR_SUPERUSER_PASSWORD_FILE", file.path()),
            ("PGPOOL_SIDECAR_REPLICATION_PASSWORD_FILE", crlf.path()),
            ("PGPOOL_SIDECAR_PCP_PASSWORD_FILE", many.path()),
            ("PGPOOL_SIDECAR_API_TOKEN_FILE", token.path()),
        ]))
        .collect();
    let c = ok(vars);
    assert_eq!(c.superuser_password.expose(), "from-file-pw");
    // `$(< file)` keeps a carriage return, so the node got this password too.
    assert_eq!(c.replication_password.expose(), "crlf-pw\r");
    assert_eq!(c.pcp_password.expose(), "two-newlines");
    assert_eq!(c.api_token.as_ref().map(Secret::expose), Some(TOKEN));
}

/// Runs `load` on another thread; a hang fails the test after `limit` instead of the run.
/// `unblock` is called on timeout so the stuck thread can end.
fn load_within(
    vars: Vec<(String, String)>,
    limit: Duration,
    unblock: impl FnOnce(),
) -> Result<Config, ConfigError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(load(&vars));
    });
    match rx.recv_timeout(limit) {
        Ok(result) => result,
        Err(_) => {
            unblock();
            panic!("load did not return within {limit:?}");
        }
    }
}

fn one_problem(result: Result<Config, ConfigError>, var: &str, needle: &str) {
    let p = match result {
        Ok(c) => panic!("expected a problem, got {c:?}"),
        Err(e) => e.problems,
    };
    assert_eq!(p.len(), 1, "expected one problem, got {p:#?}");
    assert_eq!(p[0].var, var);
    assert!(
        p[0].message.contains(needle),
        "{:?} lacks {needle:?}",
        p[0].message
    );
}

#[test]
fn secret_file_fifo_refused_without_hanging() {
    let fifo = temp_path("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success());
    let _cleanup = TempFile(fifo.clone());
    let path = fifo.to_str().expect("utf-8").to_owned();
    let mut vars = without("PGPOOL_SIDECAR_PCP_PASSWORD");
    vars.extend(env(&[("PGPOOL_SIDECAR_PCP_PASSWORD_FILE", &path)]));
    let result = load_within(vars, Duration::from_secs(5), || {
        // A writer lets the reader's open return.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
    });
    one_problem(
        result,
        "PGPOOL_SIDECAR_PCP_PASSWORD_FILE",
        "not a regular file",
    );
}

#[test]
fn secret_file_device_refused_without_reading_it() {
    let mut vars = without("PGPOOL_SIDECAR_SUPERUSER_PASSWORD");
    vars.extend(env(&[(
        "PGPOOL_SIDECAR_SUPERUSER_PASSWORD_FILE",
        "/dev/zero",
    )]));
    let result = load_within(vars, Duration::from_secs(5), || {});
    one_problem(
        result,
        "PGPOOL_SIDECAR_SUPERUSER_PASSWORD_FILE",
        "not a regular file",
    );
}

#[test]
fn secret_file_too_large_or_not_text() {
    let big = TempFile::new("big", &"x".repeat(64 * 1024 + 1));
    let mut vars = without("PGPOOL_SIDECAR_PCP_PASSWORD");
    vars.extend(env(&[("PGPOOL_SIDECAR_PCP_PASSWORD_FILE", big.path())]));
    assert_one(
        vars,
        "PGPOOL_SIDECAR_PCP_PASSWORD_FILE",
        "larger than 64 KiB",
    );

    let nul = TempFile::new("nul", "pw\0more");
    let mut vars = without("PGPOOL_SIDECAR_REPLICATION_PASSWORD");
    vars.extend(env(&[(
        "PGPOOL_SIDECAR_REPLICATION_PASSWORD_FILE",
        nul.path(),
    )]));
    assert_one(vars, "PGPOOL_SIDECAR_REPLICATION_PASSWORD_FILE", "NUL");

    let bin = temp_path("binary");
    std::fs::write(&bin, [0xff_u8, 0xfe, b'x']).expect("write");
    let _cleanup = TempFile(bin.clone());
    let mut vars = without("PGPOOL_SIDECAR_REPLICATION_PASSWORD");
    vars.extend(env(&[(
        "PGPOOL_SIDECAR_REPLICATION_PASSWORD_FILE",
        bin.to_str().expect("utf-8"),
    )]));
    assert_one(vars, "PGPOOL_SIDECAR_REPLICATION_PASSWORD_FILE", "UTF-8");
}

#[test]
fn secret_and_file_both_set() {
    let file = TempFile::new("both", "other-pw");
    assert_one(
        with(&[("PGPOOL_SIDECAR_SUPERUSER_PASSWORD_FILE", file.path())]),
        "PGPOOL_SIDECAR_SUPERUSER_PASSWORD",
        "set only one",
    );
    // An empty variable next to a file is `${X:-}` in compose, not a conflict.
    let c = ok(with(&[
        ("PGPOOL_SIDECAR_SUPERUSER_PASSWORD", ""),
        ("PGPOOL_SIDECAR_SUPERUSER_PASSWORD_FILE", file.path()),
    ]));
    assert_eq!(c.superuser_password.expose(), "other-pw");
}

#[test]
fn api_token_too_short() {
    assert_one(
        with(&[("PGPOOL_SIDECAR_API_TOKEN", "short-token")]),
        "PGPOOL_SIDECAR_API_TOKEN",
        "too short",
    );
    let file = TempFile::new("short", "short\n");
    assert_one(
        with(&[("PGPOOL_SIDECAR_API_TOKEN_FILE", file.path())]),
        "PGPOOL_SIDECAR_API_TOKEN_FILE",
        "too short",
    );
    let c = ok(with(&[("PGPOOL_SIDECAR_API_TOKEN", "0123456789abcdef")]));
    assert!(c.api_token.is_some());
}

#[test]
fn bad_log_format() {
    assert_one(
        with(&[("PGPOOL_SIDECAR_LOG_FORMAT", "xml")]),
        "PGPOOL_SIDECAR_LOG_FORMAT",
        "allowed: text, json",
    );
}

#[test]
fn bad_cluster_label() {
    assert_one(
        with(&[("PGPOOL_SIDECAR_CLUSTER_LABEL", "nolabel")]),
        "PGPOOL_SIDECAR_CLUSTER_LABEL",
        "not key=value",
    );
    assert_one(
        with(&[("PGPOOL_SIDECAR_CLUSTER_LABEL", "=x")]),
        "PGPOOL_SIDECAR_CLUSTER_LABEL",
        "empty key",
    );
    let c = ok(with(&[("PGPOOL_SIDECAR_CLUSTER_LABEL", "k=")]));
    assert_eq!(c.cluster_label, Some(("k".into(), String::new())));
}

#[test]
fn max_lag_sizes() {
    for (value, bytes) in [
        ("0", 0),
        ("1234", 1234),
        ("8kB", 8 << 10),
        ("16MB", 16 << 20),
        ("16mb", 16 << 20),
        ("2 GB", 2 << 30),
    ] {
        let c = ok(with(&[("PGPOOL_SIDECAR_MAX_LAG_ON_FAILOVER", value)]));
        assert_eq!(c.max_lag_on_failover, bytes, "{value}");
    }
}

#[test]
fn slot_settings() {
    let c = ok(with(&[]));
    assert!(c.replication_slots);
    assert_eq!(c.max_slot_wal_keep_size, Some(1 << 30));
    let c = ok(with(&[
        ("PGPOOL_SIDECAR_REPLICATION_SLOTS", "false"),
        ("PGPOOL_SIDECAR_MAX_SLOT_WAL_KEEP_SIZE", "-1"),
    ]));
    assert!(!c.replication_slots);
    assert_eq!(c.max_slot_wal_keep_size, None);
    assert_one(
        with(&[("PGPOOL_SIDECAR_NODES", "pg-1,pg_1")]),
        "PGPOOL_SIDECAR_NODES",
        "share the replication slot \"sidecar_pg_1\"",
    );
    let c = ok(with(&[("PGPOOL_SIDECAR_MAX_SLOT_WAL_KEEP_SIZE", "64MB")]));
    assert_eq!(c.max_slot_wal_keep_size, Some(64 << 20));
    for value in ["0", "512kB", "lots", "-2"] {
        assert_one(
            with(&[("PGPOOL_SIDECAR_MAX_SLOT_WAL_KEEP_SIZE", value)]),
            "PGPOOL_SIDECAR_MAX_SLOT_WAL_KEEP_SIZE",
            "",
        );
    }
}

#[test]
fn bad_max_lag() {
    for value in ["lots", "16TB", "MB", "1.5MB", "-1"] {
        assert_one(
            with(&[("PGPOOL_SIDECAR_MAX_LAG_ON_FAILOVER", value)]),
            "PGPOOL_SIDECAR_MAX_LAG_ON_FAILOVER",
            "invalid size",
        );
    }
    assert_one(
        with(&[(
            "PGPOOL_SIDECAR_MAX_LAG_ON_FAILOVER",
            "18446744073709551615GB",
        )]),
        "PGPOOL_SIDECAR_MAX_LAG_ON_FAILOVER",
        "too large",
    );
}

#[test]
fn synchronous_standbys_too_big() {
    assert_one(
        with(&[("PGPOOL_SIDECAR_SYNCHRONOUS_STANDBYS", "3")]),
        "PGPOOL_SIDECAR_SYNCHRONOUS_STANDBYS",
        "less than the number of nodes (3)",
    );
    assert_one(
        with(&[("PGPOOL_SIDECAR_SYNCHRONOUS_STANDBYS", "x")]),
        "PGPOOL_SIDECAR_SYNCHRONOUS_STANDBYS",
        "invalid number",
    );
}

#[test]
fn priorities_unknown_host() {
    assert_one(
        with(&[("PGPOOL_SIDECAR_PRIORITIES", "db1=1,db9=2")]),
        "PGPOOL_SIDECAR_PRIORITIES",
        "\"db9\" is not in PGPOOL_SIDECAR_NODES (db1:5432, db2:5432, db3:5432)",
    );
}

#[test]
fn priorities_bad_syntax() {
    for (value, needle) in [
        ("db1", "not host=priority"),
        ("db1=high", "not an integer"),
        ("db1=1,,db2=2", "item 2 is empty"),
        ("db1=1,DB1=2", "db1:5432 is given more than once"),
    ] {
        assert_one(
            with(&[("PGPOOL_SIDECAR_PRIORITIES", value)]),
            "PGPOOL_SIDECAR_PRIORITIES",
            needle,
        );
    }
}

#[test]
fn node_reference_by_host_port_when_host_is_shared() {
    let c = ok(with(&[
        ("PGPOOL_SIDECAR_NODES", "db1:5432,db1:5433"),
        ("PGPOOL_SIDECAR_PRIORITIES", "db1:5433=7"),
        ("PGPOOL_SIDECAR_PREFERRED_PRIMARY", "db1:5433"),
    ]));
    assert_eq!(c.priorities, [0, 7]);
    assert_eq!(c.preferred_primary, Some(1));
    assert_one(
        with(&[
            ("PGPOOL_SIDECAR_NODES", "db1:5432,db1:5433"),
            ("PGPOOL_SIDECAR_PREFERRED_PRIMARY", "db1"),
        ]),
        "PGPOOL_SIDECAR_PREFERRED_PRIMARY",
        "matches several nodes",
    );
}

#[test]
fn bools() {
    for (value, expected) in [
        ("true", true),
        ("FALSE", false),
        ("1", true),
        ("0", false),
        ("yes", true),
        ("No", false),
        ("ON", true),
        ("off", false),
    ] {
        let c = ok(with(&[("PGPOOL_SIDECAR_AUTO_FAILBACK", value)]));
        assert_eq!(c.auto_failback, expected, "{value}");
    }
    for var in ["PGPOOL_SIDECAR_AUTO_REJOIN", "PGPOOL_SIDECAR_AUTO_FAILBACK"] {
        assert_one(with(&[(var, "maybe")]), var, "invalid boolean \"maybe\"");
    }
}

#[test]
fn preferred_primary_unknown() {
    assert_one(
        with(&[("PGPOOL_SIDECAR_PREFERRED_PRIMARY", "db7")]),
        "PGPOOL_SIDECAR_PREFERRED_PRIMARY",
        "is not in PGPOOL_SIDECAR_NODES",
    );
    let c = ok(with(&[("PGPOOL_SIDECAR_PREFERRED_PRIMARY", "db3")]));
    assert_eq!(c.preferred_primary, Some(2));
}

#[test]
fn hook_socket_must_be_safe_in_pgpools_shell_command() {
    for value in [
        "/tmp/a b.sock",
        "/tmp/x;reboot",
        "/tmp/$(id).sock",
        "/tmp/`id`",
        "/tmp/%d.sock",
        "/tmp/x'y",
        "/tmp/\u{e9}.sock",
    ] {
        assert_one(
            with(&[("PGPOOL_SIDECAR_HOOK_SOCKET", value)]),
            "PGPOOL_SIDECAR_HOOK_SOCKET",
            "letters, digits",
        );
    }
    // The kernel's limit for a socket path (sun_path) is 108 bytes including the NUL.
    let long = format!("/{}", "a".repeat(107));
    assert_one(
        with(&[("PGPOOL_SIDECAR_HOOK_SOCKET", &long)]),
        "PGPOOL_SIDECAR_HOOK_SOCKET",
        "too long",
    );
    let c = ok(with(&[(
        "PGPOOL_SIDECAR_HOOK_SOCKET",
        "/run/x_y/hook-1.sock",
    )]));
    assert_eq!(c.hook_socket, PathBuf::from("/run/x_y/hook-1.sock"));
}

#[test]
fn reserved_pgpool_conf_keys_refused_at_load() {
    for var in [
        "PGPOOL_CONF_FAILOVER_COMMAND",
        "PGPOOL_CONF_FOLLOW_PRIMARY_COMMAND",
        "PGPOOL_CONF_BACKEND_HOSTNAME0",
        "PGPOOL_CONF_PORT",
        "PGPOOL_CONF_PCP_LISTEN_ADDRESSES",
        "PGPOOL_CONF_PID_FILE_NAME",
        "PGPOOL_CONF_WORK_DIR",
        "PGPOOL_CONF_LOGDIR",
        "PGPOOL_CONF_SR_CHECK_USER",
        "PGPOOL_CONF_SR_CHECK_PASSWORD",
        "PGPOOL_CONF_HEALTH_CHECK_USER",
        "PGPOOL_CONF_HEALTH_CHECK_PASSWORD1",
        "PGPOOL_CONF_POOL_PASSWD",
    ] {
        assert_one(with(&[(var, "x")]), var, "managed by pgpool-sidecar");
    }
    assert_one(
        with(&[("PGPOOL_CONF_INCLUDE", "/etc/other.conf")]),
        "PGPOOL_CONF_INCLUDE",
        "include",
    );
    // Similar names stay free.
    let c = ok(with(&[
        ("PGPOOL_CONF_HEALTH_CHECK_PERIOD", "5"),
        ("PGPOOL_CONF_SR_CHECK_PERIOD", "5"),
        ("PGPOOL_CONF_LISTEN_ADDRESSES", "*"),
    ]));
    assert_eq!(c.pgpool_conf.len(), 3);
}

#[test]
fn pgpool_conf_values_pgpools_lexer_cannot_read_are_refused() {
    for (value, needle) in [
        ("'%m' failover_command = '/x %d'", "'"),
        ("it's", "'"),
        ("a\0b", "NUL"),
    ] {
        assert_one(
            with(&[("PGPOOL_CONF_LOG_LINE_PREFIX", value)]),
            "PGPOOL_CONF_LOG_LINE_PREFIX",
            needle,
        );
    }
    // pgpool's lexer takes a backslash-quote pair inside a string as it stands.
    let c = ok(with(&[(
        "PGPOOL_CONF_PRIMARY_ROUTING_QUERY_PATTERN_LIST",
        "SELECT \\'x\\';",
    )]));
    assert_eq!(c.pgpool_conf.len(), 1);
    // A key must start with a letter or `_`, or pgpool reads a number.
    assert_one(
        with(&[("PGPOOL_CONF_1ABC", "1")]),
        "PGPOOL_CONF_1ABC",
        "not a pgpool setting name",
    );
}

#[test]
fn user_names_that_break_generated_files_are_refused() {
    for (var, value, needle) in [
        // pool_passwd and pcp.conf end the name at the first ':'.
        ("PGPOOL_SIDECAR_SUPERUSER", "a:b", "':'"),
        ("PGPOOL_SIDECAR_PCP_USER", "a:b", "':'"),
        // pg_rewind's --source-server takes the name unquoted.
        ("PGPOOL_SIDECAR_SUPERUSER", "a b", "whitespace"),
        ("PGPOOL_SIDECAR_SUPERUSER", "a\\b", "\\"),
        ("PGPOOL_SIDECAR_SUPERUSER", "a'b", "'"),
        ("PGPOOL_SIDECAR_SUPERUSER", "a\nb", "newline"),
        ("PGPOOL_SIDECAR_REPLICATION_USER", "a\nb", "newline"),
        ("PGPOOL_SIDECAR_PCP_USER", "a\nb", "newline"),
        // pcp.conf skips a line starting with '#'.
        ("PGPOOL_SIDECAR_PCP_USER", "#admin", "'#'"),
    ] {
        assert_one(with(&[(var, value)]), var, needle);
    }
    let long = "u".repeat(64);
    assert_one(
        with(&[("PGPOOL_SIDECAR_REPLICATION_USER", &long)]),
        "PGPOOL_SIDECAR_REPLICATION_USER",
        "63 bytes",
    );
    let long = "u".repeat(128);
    assert_one(
        with(&[("PGPOOL_SIDECAR_PCP_USER", &long)]),
        "PGPOOL_SIDECAR_PCP_USER",
        "127 bytes",
    );
    let c = ok(with(&[
        ("PGPOOL_SIDECAR_SUPERUSER", "Admin-1.x@y"),
        ("PGPOOL_SIDECAR_PCP_USER", "pcp admin\\x"),
    ]));
    assert_eq!(c.superuser, "Admin-1.x@y");
}

#[test]
fn passwords_that_break_generated_files_are_refused_unseen() {
    let long_super = format!("Secret{}", "p".repeat(123));
    let long_pcp = format!("Secret{}", ":".repeat(160));
    for (var, value, needle) in [
        ("PGPOOL_SIDECAR_SUPERUSER_PASSWORD", "Secret\nx", "newline"),
        (
            "PGPOOL_SIDECAR_REPLICATION_PASSWORD",
            "Secret\nx",
            "newline",
        ),
        ("PGPOOL_SIDECAR_PCP_PASSWORD", "Secret\nx", "newline"),
        // pool_passwd holds at most 124 bytes of a clear-text password.
        (
            "PGPOOL_SIDECAR_SUPERUSER_PASSWORD",
            &long_super,
            "124 bytes",
        ),
        // The PCP client reads lines of at most 319 bytes; ':' doubles when escaped.
        ("PGPOOL_SIDECAR_PCP_PASSWORD", &long_pcp, "too long"),
    ] {
        let p = problems(with(&[(var, value)]));
        assert_eq!(p.len(), 1, "{p:#?}");
        assert_eq!(p[0].var, var);
        assert!(
            p[0].message.contains(needle),
            "{:?} lacks {needle:?}",
            p[0].message
        );
        assert!(!p[0].message.contains("Secret"), "{:?}", p[0].message);
    }
    let c = ok(with(&[
        ("PGPOOL_SIDECAR_SUPERUSER_PASSWORD", "a:b\\c'd\r"),
        ("PGPOOL_SIDECAR_PCP_PASSWORD", "a:b\\c"),
    ]));
    assert_eq!(c.pcp_password.expose(), "a:b\\c");
}

#[test]
fn hook_socket_must_be_absolute() {
    assert_one(
        with(&[("PGPOOL_SIDECAR_HOOK_SOCKET", "hook.sock")]),
        "PGPOOL_SIDECAR_HOOK_SOCKET",
        "absolute path",
    );
}

#[test]
fn bad_pgpool_conf() {
    assert_one(
        with(&[("PGPOOL_CONF_NUM-CHILDREN", "3")]),
        "PGPOOL_CONF_NUM-CHILDREN",
        "not a pgpool setting name",
    );
    assert_one(
        with(&[("PGPOOL_CONF_", "3")]),
        "PGPOOL_CONF_",
        "names no pgpool setting",
    );
    assert_one(
        with(&[("PGPOOL_CONF_LOG_LINE_PREFIX", "a\nb")]),
        "PGPOOL_CONF_LOG_LINE_PREFIX",
        "newline",
    );
    assert_one(
        with(&[("PGPOOL_CONF_LOG_LINE_PREFIX", "a\rb")]),
        "PGPOOL_CONF_LOG_LINE_PREFIX",
        "newline",
    );
}

#[test]
fn unknown_variable() {
    assert_one(
        with(&[("PGPOOL_SIDECAR_PROBE_INTERVALL", "1s")]),
        "PGPOOL_SIDECAR_PROBE_INTERVALL",
        "unknown variable (did you mean PGPOOL_SIDECAR_PROBE_INTERVAL?)",
    );
    assert_one(
        with(&[("PGPOOL_SIDECAR_WHATEVER_ELSE_ENTIRELY", "x")]),
        "PGPOOL_SIDECAR_WHATEVER_ELSE_ENTIRELY",
        "unknown variable",
    );
    // Only secrets have a _FILE form.
    assert_one(
        with(&[("PGPOOL_SIDECAR_NODES_FILE", "/x")]),
        "PGPOOL_SIDECAR_NODES_FILE",
        "unknown variable",
    );
    // Names are case-sensitive, as the environment is.
    assert_one(
        with(&[("PGPOOL_SIDECAR_nodes", "db9")]),
        "PGPOOL_SIDECAR_nodes",
        "unknown variable",
    );
    // Other variables are none of our business.
    ok(with(&[("PGPOOL_OTHER", "x"), ("PATH", "/bin")]));
}

#[test]
fn all_problems_are_reported() {
    let vars = env(&[
        ("PGPOOL_SIDECAR_NODES", "db1:0,db1,db1"),
        ("PGPOOL_SIDECAR_PROBE_INTERVAL", "abc"),
        ("PGPOOL_SIDECAR_LOG_FORMAT", "xml"),
        ("PGPOOL_SIDECAR_AUTO_REJOIN", "maybe"),
        ("PGPOOL_SIDECAR_TYPO", "1"),
        ("PGPOOL_CONF_BAD-NAME", "1"),
    ]);
    let p = problems(vars.clone());
    let vars_reported: Vec<&str> = p.iter().map(|p| p.var.as_str()).collect();
    assert_eq!(
        vars_reported,
        [
            "PGPOOL_SIDECAR_NODES",
            "PGPOOL_SIDECAR_NODES",
            "PGPOOL_SIDECAR_SUPERUSER_PASSWORD",
            "PGPOOL_SIDECAR_REPLICATION_PASSWORD",
            "PGPOOL_SIDECAR_PCP_PASSWORD",
            "PGPOOL_SIDECAR_PROBE_INTERVAL",
            "PGPOOL_SIDECAR_LOG_FORMAT",
            "PGPOOL_SIDECAR_AUTO_REJOIN",
            "PGPOOL_SIDECAR_TYPO",
            "PGPOOL_CONF_BAD-NAME",
        ]
    );
    let text = load(&vars).unwrap_err().to_string();
    assert_eq!(text.lines().count(), p.len());
    for (line, problem) in text.lines().zip(&p) {
        assert_eq!(line, format!("{}: {}", problem.var, problem.message));
    }
}

#[test]
fn secrets_never_shown() {
    let c = ok(with(&[
        ("PGPOOL_SIDECAR_API_TOKEN", TOKEN),
        ("PGPOOL_CONF_RECOVERY_PASSWORD", "conf-Secret-pw-4"),
        ("PGPOOL_CONF_WD_AUTHKEY", "conf-Secret-key-5"),
    ]));
    let secrets = [SUPER_PW, REPL_PW, PCP_PW, TOKEN, "conf-Secret"];
    let debug = format!("{c:?}");
    let json = c.redacted().to_string();
    for text in [&debug, &json] {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
        assert!(text.contains(REDACTED));
    }
    assert_eq!(c.redacted()["api_token"], REDACTED);
    assert_eq!(c.redacted()["pgpool_conf"]["recovery_password"], REDACTED);
    assert_eq!(c.pgpool_conf["recovery_password"], "conf-Secret-pw-4");

    // Problems about secrets, or about variables that may hold one, never show the value.
    let file = TempFile::new("both-leak", "file-Secret-pw-6");
    let vars = env(&[
        ("PGPOOL_SIDECAR_NODES", "db1"),
        ("PGPOOL_SIDECAR_SUPERUSER_PASSWORD", SUPER_PW),
        ("PGPOOL_SIDECAR_SUPERUSER_PASSWORD_FILE", file.path()),
        ("PGPOOL_SIDECAR_REPLICATION_PASSWORD", REPL_PW),
        ("PGPOOL_SIDECAR_PCP_PASSWORD", PCP_PW),
        ("PGPOOL_SIDECAR_API_TOKEN", "short-Secret"),
        ("PGPOOL_SIDECAR_PCP_PASWORD", "typo-Secret-pw-7"),
        ("PGPOOL_CONF_WD_LIFECHECK_PASSWORD", "conf-Secret\npw"),
    ]);
    let err = load(&vars).unwrap_err();
    assert_eq!(err.problems.len(), 4, "{err}");
    let text = format!("{err}\n{err:?}");
    for secret in [
        SUPER_PW,
        "file-Secret",
        "short-Secret",
        "typo-Secret",
        "conf-Secret",
    ] {
        assert!(!text.contains(secret), "{secret} leaked in {text}");
    }
}

#[test]
fn secret_formatting_and_matching() {
    let s = Secret::new("hunter2-hunter2");
    assert_eq!(format!("{s}"), REDACTED);
    assert_eq!(format!("{s:?}"), REDACTED);
    assert!(s.matches("hunter2-hunter2"));
    assert!(!s.matches("hunter2-hunter3"));
    assert!(!s.matches("hunter2"));
}

#[test]
fn declared_users_come_from_the_variable_or_the_file_and_bad_ones_name_the_entry() {
    let c = ok(with(&[("PGPOOL_SIDECAR_USERS", "app:pw-1,report:pw-2")]));
    let input = c.users.clone().expect("declared users");
    assert_eq!(input.file, None);
    assert_eq!(input.text.expose(), "app:pw-1,report:pw-2");
    assert!(!format!("{:?}", c.redacted()).contains("pw-1"));
    assert_one(
        with(&[("PGPOOL_SIDECAR_USERS", "app:secret-pw\napp:other-pw")]),
        "PGPOOL_SIDECAR_USERS",
        "line 2: user \"app\" is declared twice",
    );
    assert_one(
        with(&[("PGPOOL_SIDECAR_USERS", "postgres:secret-pw")]),
        "PGPOOL_SIDECAR_USERS",
        "is the superuser",
    );
    let p = problems(with(&[("PGPOOL_SIDECAR_USERS", "app:secret-pw\nbroken")]));
    assert!(!p[0].message.contains("secret-pw"), "{p:?}");

    let dir = std::env::temp_dir().join(format!("users-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("users");
    std::fs::write(&file, "app:a,b:c\n").unwrap();
    let path = file.to_str().unwrap();
    let c = ok(with(&[("PGPOOL_SIDECAR_USERS_FILE", path)]));
    let input = c.users.expect("declared users");
    assert_eq!(input.file.as_deref(), Some(file.as_path()));
    // In the file, commas never separate users: one user whose password is "a,b:c".
    assert_eq!(
        crate::users::declared_at_start(&ok(with(&[("PGPOOL_SIDECAR_USERS_FILE", path)]))).len(),
        1
    );
    std::fs::write(&file, "").unwrap();
    assert!(ok(with(&[("PGPOOL_SIDECAR_USERS_FILE", path)]))
        .users
        .is_some());
    std::fs::write(&file, "no-colon\n").unwrap();
    assert_one(
        with(&[("PGPOOL_SIDECAR_USERS_FILE", path)]),
        "PGPOOL_SIDECAR_USERS_FILE",
        "line 1: has no ':'",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
