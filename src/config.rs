//! Startup configuration.
//!
//! Reads: environment variables named `PGPOOL_SIDECAR_*` (the sidecar's own settings) and
//! `PGPOOL_CONF_*` (pgpool.conf settings passed through untouched), plus the files named by the
//! `*_FILE` forms of the secret variables.
//! Changes: nothing; it only builds a [`Config`].
//! How often: once, at process start (and for `configcheck`). A change needs a restart, so a
//! failover in progress never sees half of an old and half of a new configuration.
//!
//! All problems are collected before anything is reported, so one failed container start tells
//! the operator everything that is wrong instead of one fix-and-restart cycle per mistake.
//! Secret values never enter an error message, `Debug` output or [`Config::redacted`].
//!
//! Empty non-secret values count as unset and get their default, because compose files commonly
//! pass `VAR: ${VAR:-}`. Surrounding whitespace of non-secret values is ignored; secrets are taken
//! byte for byte.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::pgpool::conf;

/// Prefix of the sidecar's own variables.
pub const ENV_PREFIX: &str = "PGPOOL_SIDECAR_";
/// Prefix of variables copied into pgpool.conf (`PGPOOL_CONF_NUM_INIT_CHILDREN=64`).
pub const PGPOOL_CONF_PREFIX: &str = "PGPOOL_CONF_";
/// Where the daemon listens for pgpool's failover callbacks unless `HOOK_SOCKET` says otherwise.
pub const DEFAULT_HOOK_SOCKET: &str = "/run/pgpool-sidecar/hook.sock";

const REDACTED: &str = "<redacted>";
const DEFAULT_PG_PORT: u16 = 5432;
const DEFAULT_PCP_PORT: u16 = 9898;
const MIN_API_TOKEN_CHARS: usize = 16;
const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest `*_FILE` secret read. Nothing bigger is a password, and a wrong path (a log, a disk
/// image) must not be read into memory whole.
const MAX_SECRET_FILE: u64 = 64 * 1024;
/// PostgreSQL cuts longer role names (NAMEDATALEN - 1), so a longer name would not be the role.
const MAX_ROLE_NAME: usize = 63;
/// A Unix socket path must fit `sun_path` (108 bytes) with its terminating NUL, or bind fails and
/// pgpool's hooks find no daemon.
const MAX_SOCKET_PATH: usize = 107;
/// Enough for a standby to be away through a restart or a short outage under moderate writes,
/// small enough not to fill a modest volume.
pub const DEFAULT_MAX_SLOT_WAL_KEEP_SIZE: u64 = 1 << 30;

/// Every accepted name after [`ENV_PREFIX`], including the `_FILE` forms of the secrets.
/// Anything else is reported, so a typo does not silently fall back to a default.
/// Must list exactly the fields of [`Raw`] (a test checks it).
const KNOWN_VARS: &[&str] = &[
    "NODES",
    "SUPERUSER",
    "SUPERUSER_PASSWORD",
    "SUPERUSER_PASSWORD_FILE",
    "REPLICATION_USER",
    "REPLICATION_PASSWORD",
    "REPLICATION_PASSWORD_FILE",
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
    "REPLICATION_SLOTS",
    "MAX_SLOT_WAL_KEEP_SIZE",
];

/// Where configuration comes from; a trait so tests never touch the process environment.
pub trait EnvSource {
    /// All variables as name/value pairs. If a name repeats, the last value wins.
    fn vars(&self) -> Vec<(String, String)>;
}

/// The real process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn vars(&self) -> Vec<(String, String)> {
        // `std::env::vars` panics on non-UTF-8; an unrelated variable must not stop the sidecar,
        // and a mangled one of ours still shows up (as unknown or invalid) instead of vanishing.
        std::env::vars_os()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect()
    }
}

impl EnvSource for Vec<(String, String)> {
    fn vars(&self) -> Vec<(String, String)> {
        self.clone()
    }
}

impl EnvSource for HashMap<String, String> {
    fn vars(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// A value that must not be logged, shown in `/status` or put into metrics.
///
/// Both `Debug` and `Display` print `<redacted>`, so a stray `{:?}` on a struct holding one
/// cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value, e.g. a token in a test.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plain value, for the few places that must send it (a connection, a PCP pass file).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares with a presented credential in time that does not depend on where they differ,
    /// so the API token cannot be guessed byte by byte from response times. Only the length can
    /// be learned.
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// One PostgreSQL node as pgpool and the probes reach it. Its node id is its index in
/// [`Config::nodes`], the same id pgpool uses for `backend_hostnameN`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    /// Name or address as pgpool and the probes reach it (usually the compose service name).
    pub host: String,
    /// PostgreSQL port on that host.
    pub port: u16,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Brackets keep an IPv6 host readable and parseable again.
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// For people reading `docker logs`.
    #[default]
    Text,
    /// For log shippers.
    Json,
}

impl LogFormat {
    /// The name used in `LOG_FORMAT`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The validated configuration.
#[derive(Clone)]
pub struct Config {
    /// The PostgreSQL nodes, in pgpool backend order; the first is the primary at bootstrap, so a
    /// fresh cluster has a defined owner of its data.
    pub nodes: Vec<NodeAddr>,
    /// Role used for probes, promotion and re-pointing standbys, which need superuser rights.
    pub superuser: String,
    /// Password of `superuser`.
    pub superuser_password: Secret,
    /// Role standbys stream with; written into `primary_conninfo` and used by basebackup/rewind.
    pub replication_user: String,
    /// Password of `replication_user`.
    pub replication_password: Secret,
    /// PCP account, needed to attach/detach nodes in pgpool.
    pub pcp_user: String,
    /// Password of `pcp_user`; also written to pgpool's `pcp.conf` as an MD5 hash.
    pub pcp_password: Secret,
    /// Port pgpool's PCP listens on inside this container.
    pub pcp_port: u16,
    /// Port pgpool serves clients on inside this container.
    pub pgpool_port: u16,
    /// Address of the HTTP server (`/status`, `/metrics`, mutating endpoints). Port 0 picks an
    /// ephemeral port, which tests use.
    pub http_listen: SocketAddr,
    /// Bearer token for mutating endpoints; `None` switches them off, because the sidecar holds
    /// the Docker socket and must not be steerable by anyone who can reach the port.
    pub api_token: Option<Secret>,
    /// Time between SQL probes of each node; bounds how fast a hung primary is noticed.
    pub probe_interval: Duration,
    /// How long one probe may take before it counts as failed.
    pub probe_timeout: Duration,
    /// Consecutive failed probes before a node counts as down, so one slow query does not fence
    /// a healthy primary.
    pub probe_failures: u32,
    /// Text for people, JSON for log shippers.
    pub log_format: LogFormat,
    /// Compose project whose containers the sidecar may touch; `None` means the daemon detects
    /// its own project. Limits the blast radius of the Docker socket.
    pub compose_project: Option<String>,
    /// Label (`key`, `value`) a container must carry before the sidecar acts on it, for the same
    /// reason.
    pub cluster_label: Option<(String, String)>,
    /// A standby further behind than this many bytes is not promoted automatically, trading
    /// availability for bounded data loss.
    pub max_lag_on_failover: u64,
    /// How many standbys run synchronously; always fewer than the nodes, so the primary can be
    /// alone.
    pub synchronous_standbys: u32,
    /// Failover preference per node (index = node id); higher wins when standbys are equally
    /// advanced.
    pub priorities: Vec<i32>,
    /// Bring failed or diverged nodes back as standbys without an operator.
    pub auto_rejoin: bool,
    /// Switch back to the preferred node once it has rejoined.
    pub auto_failback: bool,
    /// Node id that should be primary when there is a choice (failback target).
    pub preferred_primary: Option<usize>,
    /// Unix socket where pgpool's failover/follow-primary hooks reach the daemon.
    pub hook_socket: PathBuf,
    /// Longest a rewind/rebuild job container may run before it is given up.
    pub job_timeout: Duration,
    /// Keep one physical replication slot per standby on the primary, so a standby that was
    /// away catches up from the primary's WAL instead of being rebuilt.
    pub replication_slots: bool,
    /// The primary's `max_slot_wal_keep_size` in bytes (`None`: no limit): how much WAL the
    /// slots may hold for absent standbys before the disk is protected and they need a rebuild.
    pub max_slot_wal_keep_size: Option<u64>,
    /// Extra pgpool.conf settings (lowercase name → raw value); the renderer quotes them.
    pub pgpool_conf: BTreeMap<String, String>,
}

// Hand-written rather than derived: pass-through pgpool settings such as `sr_check_password`
// can hold secrets that are plain strings here.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so a new field fails to compile here until someone decides how to show it.
        let Config {
            nodes,
            superuser,
            superuser_password,
            replication_user,
            replication_password,
            pcp_user,
            pcp_password,
            pcp_port,
            pgpool_port,
            http_listen,
            api_token,
            probe_interval,
            probe_timeout,
            probe_failures,
            log_format,
            compose_project,
            cluster_label,
            max_lag_on_failover,
            synchronous_standbys,
            priorities,
            auto_rejoin,
            auto_failback,
            preferred_primary,
            hook_socket,
            job_timeout,
            replication_slots,
            max_slot_wal_keep_size,
            pgpool_conf,
        } = self;
        f.debug_struct("Config")
            .field("nodes", nodes)
            .field("superuser", superuser)
            .field("superuser_password", superuser_password)
            .field("replication_user", replication_user)
            .field("replication_password", replication_password)
            .field("pcp_user", pcp_user)
            .field("pcp_password", pcp_password)
            .field("pcp_port", pcp_port)
            .field("pgpool_port", pgpool_port)
            .field("http_listen", http_listen)
            .field("api_token", api_token)
            .field("probe_interval", probe_interval)
            .field("probe_timeout", probe_timeout)
            .field("probe_failures", probe_failures)
            .field("log_format", log_format)
            .field("compose_project", compose_project)
            .field("cluster_label", cluster_label)
            .field("max_lag_on_failover", max_lag_on_failover)
            .field("synchronous_standbys", synchronous_standbys)
            .field("priorities", priorities)
            .field("auto_rejoin", auto_rejoin)
            .field("auto_failback", auto_failback)
            .field("preferred_primary", preferred_primary)
            .field("hook_socket", hook_socket)
            .field("job_timeout", job_timeout)
            .field("replication_slots", replication_slots)
            .field("max_slot_wal_keep_size", max_slot_wal_keep_size)
            .field("pgpool_conf", &RedactedConf(pgpool_conf))
            .finish()
    }
}

struct RedactedConf<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for RedactedConf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, shown_conf_value(k, v))))
            .finish()
    }
}

/// pgpool settings whose value is a credential; matched by name because pass-through values are
/// not typed.
fn is_sensitive_conf(name: &str) -> bool {
    ["password", "passphrase", "authkey", "auth_key", "secret"]
        .iter()
        .any(|word| name.contains(word))
}

fn shown_conf_value<'a>(name: &str, value: &'a str) -> &'a str {
    if is_sensitive_conf(name) {
        REDACTED
    } else {
        value
    }
}

impl Config {
    /// The effective configuration as JSON with every secret replaced by `<redacted>`, for
    /// `configcheck` and `/status`.
    pub fn redacted(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};

        let Config {
            nodes,
            superuser,
            superuser_password: _,
            replication_user,
            replication_password: _,
            pcp_user,
            pcp_password: _,
            pcp_port,
            pgpool_port,
            http_listen,
            api_token,
            probe_interval,
            probe_timeout,
            probe_failures,
            log_format,
            compose_project,
            cluster_label,
            max_lag_on_failover,
            synchronous_standbys,
            priorities,
            auto_rejoin,
            auto_failback,
            preferred_primary,
            hook_socket,
            job_timeout,
            replication_slots,
            max_slot_wal_keep_size,
            pgpool_conf,
        } = self;
        let duration = |d: &Duration| Value::from(humantime::format_duration(*d).to_string());

        let mut m = Map::new();
        let nodes: Vec<Value> = nodes
            .iter()
            .enumerate()
            .map(|(id, n)| json!({ "id": id, "host": n.host, "port": n.port }))
            .collect();
        m.insert("nodes".into(), nodes.into());
        m.insert("superuser".into(), superuser.as_str().into());
        m.insert("superuser_password".into(), REDACTED.into());
        m.insert("replication_user".into(), replication_user.as_str().into());
        m.insert("replication_password".into(), REDACTED.into());
        m.insert("pcp_user".into(), pcp_user.as_str().into());
        m.insert("pcp_password".into(), REDACTED.into());
        m.insert("pcp_port".into(), (*pcp_port).into());
        m.insert("pgpool_port".into(), (*pgpool_port).into());
        m.insert("http_listen".into(), http_listen.to_string().into());
        m.insert(
            "api_token".into(),
            api_token.as_ref().map(|_| REDACTED).into(),
        );
        m.insert("probe_interval".into(), duration(probe_interval));
        m.insert("probe_timeout".into(), duration(probe_timeout));
        m.insert("probe_failures".into(), (*probe_failures).into());
        m.insert("log_format".into(), log_format.as_str().into());
        m.insert("compose_project".into(), compose_project.clone().into());
        m.insert(
            "cluster_label".into(),
            cluster_label
                .as_ref()
                .map(|(k, v)| json!({ "key": k, "value": v }))
                .into(),
        );
        m.insert("max_lag_on_failover".into(), (*max_lag_on_failover).into());
        m.insert(
            "synchronous_standbys".into(),
            (*synchronous_standbys).into(),
        );
        m.insert("priorities".into(), priorities.clone().into());
        m.insert("auto_rejoin".into(), (*auto_rejoin).into());
        m.insert("auto_failback".into(), (*auto_failback).into());
        m.insert("preferred_primary".into(), (*preferred_primary).into());
        m.insert(
            "hook_socket".into(),
            hook_socket.display().to_string().into(),
        );
        m.insert("job_timeout".into(), duration(job_timeout));
        m.insert("replication_slots".into(), (*replication_slots).into());
        m.insert(
            "max_slot_wal_keep_size".into(),
            (*max_slot_wal_keep_size).into(),
        );
        let conf: Map<String, Value> = pgpool_conf
            .iter()
            .map(|(k, v)| (k.clone(), shown_conf_value(k, v).into()))
            .collect();
        m.insert("pgpool_conf".into(), conf.into());
        Value::Object(m)
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Full variable name, e.g. `PGPOOL_SIDECAR_NODES`, so the operator knows what to fix.
    pub var: String,
    /// Why it is wrong; never contains a secret value.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.message)
    }
}

/// The configuration cannot be used; lists every problem found, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_problems(.problems))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

fn render_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// What envy fills in. Every field is a string so envy never rejects a value; validation
/// happens below, where all problems can be collected and secrets kept out of messages.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct Raw {
    nodes: Option<String>,
    superuser: Option<String>,
    superuser_password: Option<String>,
    superuser_password_file: Option<String>,
    replication_user: Option<String>,
    replication_password: Option<String>,
    replication_password_file: Option<String>,
    pcp_user: Option<String>,
    pcp_password: Option<String>,
    pcp_password_file: Option<String>,
    pcp_port: Option<String>,
    pgpool_port: Option<String>,
    http_listen: Option<String>,
    api_token: Option<String>,
    api_token_file: Option<String>,
    probe_interval: Option<String>,
    probe_timeout: Option<String>,
    probe_failures: Option<String>,
    log_format: Option<String>,
    compose_project: Option<String>,
    cluster_label: Option<String>,
    max_lag_on_failover: Option<String>,
    synchronous_standbys: Option<String>,
    priorities: Option<String>,
    auto_rejoin: Option<String>,
    auto_failback: Option<String>,
    preferred_primary: Option<String>,
    hook_socket: Option<String>,
    job_timeout: Option<String>,
    replication_slots: Option<String>,
    max_slot_wal_keep_size: Option<String>,
}

/// Reads and validates the configuration, reporting every problem at once.
pub fn load(env: &dyn EnvSource) -> Result<Config, ConfigError> {
    // Last value wins, and a sorted map keeps the order of reported problems stable.
    let vars: BTreeMap<String, String> = env.vars().into_iter().collect();

    let mut ck = Checker::default();
    let mut unknown = Vec::new();
    let mut ours = Vec::new();
    let mut pgpool_conf = BTreeMap::new();
    let mut conf_problems = Vec::new();
    for (key, value) in &vars {
        if let Some(name) = key.strip_prefix(ENV_PREFIX) {
            // Only exact names reach envy: it lowercases keys, so `..._nodes` would otherwise
            // collide with `..._NODES`, and a name envy does not know would vanish silently.
            if KNOWN_VARS.contains(&name) {
                ours.push((key.clone(), value.clone()));
            } else {
                unknown.push(Problem {
                    var: key.clone(),
                    message: unknown_message(name),
                });
            }
        } else if let Some(name) = key.strip_prefix(PGPOOL_CONF_PREFIX) {
            match check_pgpool_conf(name, value) {
                Ok(name) => {
                    pgpool_conf.insert(name, value.clone());
                }
                Err(message) => conf_problems.push(Problem {
                    var: key.clone(),
                    message,
                }),
            }
        }
    }

    let raw: Raw = match envy::prefixed(ENV_PREFIX).from_iter(ours) {
        Ok(raw) => raw,
        Err(e) => {
            // Cannot happen with all-string fields and de-duplicated names; reported rather than
            // unwrapped so the sidecar still exits 64 with a message.
            ck.problems.push(Problem {
                var: format!("{ENV_PREFIX}*"),
                message: format!("cannot be read: {e}"),
            });
            Raw::default()
        }
    };

    let config = ck.build(raw, pgpool_conf);
    ck.problems.extend(unknown);
    ck.problems.extend(conf_problems);
    if ck.problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError {
            problems: ck.problems,
        })
    }
}

/// Collects problems while validating; every check returns a usable placeholder on failure so
/// the remaining variables are still checked.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

/// Where a secret came from, so messages can name the variable the operator has to fix.
enum SecretInput {
    Absent,
    /// Already reported (conflict or unreadable file).
    Failed,
    Given {
        value: String,
        /// The variable it was read from (`X` or `X_FILE`) and, for a file, its path.
        var: String,
        path: Option<String>,
    },
}

impl Checker {
    fn problem(&mut self, name: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            var: format!("{ENV_PREFIX}{name}"),
            message: message.into(),
        });
    }

    /// Parses an optional value; `None` when unset, empty or invalid (the last is recorded).
    fn opt<T>(
        &mut self,
        name: &str,
        raw: Option<String>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let raw = raw?;
        let value = raw.trim();
        if value.is_empty() {
            return None;
        }
        match parse(value) {
            Ok(v) => Some(v),
            Err(message) => {
                self.problem(name, message);
                None
            }
        }
    }

    fn secret_input(
        &mut self,
        name: &str,
        direct: Option<String>,
        file: Option<String>,
    ) -> SecretInput {
        // An empty variable counts as unset so `X: ${X:-}` in compose does not clash with X_FILE.
        let direct = direct.filter(|v| !v.is_empty());
        let file = file.map(|f| f.trim().to_owned()).filter(|f| !f.is_empty());
        let file_var = format!("{name}_FILE");
        match (direct, file) {
            (Some(_), Some(_)) => {
                self.problem(
                    name,
                    format!("is set together with {ENV_PREFIX}{file_var}; set only one"),
                );
                SecretInput::Failed
            }
            (Some(value), None) => SecretInput::Given {
                value,
                var: name.to_owned(),
                path: None,
            },
            (None, Some(path)) => match read_secret_file(&path) {
                Ok(value) => SecretInput::Given {
                    value,
                    var: file_var,
                    path: Some(path),
                },
                Err(message) => {
                    self.problem(&file_var, message);
                    SecretInput::Failed
                }
            },
            (None, None) => SecretInput::Absent,
        }
    }

    /// The secret and the variable it came from (`name` or `name_FILE`), for later checks.
    /// `fits` is asked only of a value that was read; its answer must not contain the value.
    fn required_secret(
        &mut self,
        name: &str,
        direct: Option<String>,
        file: Option<String>,
        fits: impl FnOnce(&str) -> Option<String>,
    ) -> Secret {
        let was_set_empty = direct.as_deref() == Some("");
        match self.secret_input(name, direct, file) {
            SecretInput::Given { value, var, path } => {
                if value.is_empty() {
                    match path {
                        Some(path) => self.problem(&var, format!("file {path} is empty")),
                        None => self.problem(&var, "is empty"),
                    }
                } else if let Some(message) = fits(&value) {
                    self.problem(&var, message);
                }
                Secret(value)
            }
            SecretInput::Absent if was_set_empty => {
                self.problem(name, "is empty");
                Secret(String::new())
            }
            SecretInput::Absent => {
                self.problem(
                    name,
                    format!("is required (set it or {ENV_PREFIX}{name}_FILE)"),
                );
                Secret(String::new())
            }
            SecretInput::Failed => Secret(String::new()),
        }
    }

    fn build(&mut self, raw: Raw, pgpool_conf: BTreeMap<String, String>) -> Config {
        let nodes = match raw.nodes.as_deref().map(str::trim) {
            None => {
                self.problem("NODES", "is required (e.g. db1:5432,db2:5432)");
                None
            }
            Some("") => {
                self.problem("NODES", "is empty; list at least one host[:port]");
                None
            }
            Some(list) => {
                let (nodes, problems) = parse_nodes(list);
                for message in problems {
                    self.problem("NODES", message);
                }
                nodes
            }
        };
        // Checks that refer to nodes are skipped when NODES itself is wrong; that is already
        // reported and further messages would only be noise.
        let node_list = nodes.as_deref();

        let superuser = self
            .opt("SUPERUSER", raw.superuser, |s| {
                check_superuser(s).map(str::to_owned)
            })
            .unwrap_or_else(|| "postgres".to_owned());
        let superuser_password = self.required_secret(
            "SUPERUSER_PASSWORD",
            raw.superuser_password,
            raw.superuser_password_file,
            |v| conf::pool_passwd_password_problem(v).map(str::to_owned),
        );
        let replication_user = self
            .opt("REPLICATION_USER", raw.replication_user, |s| {
                check_role_name(s).map(str::to_owned)
            })
            .unwrap_or_else(|| "replicator".to_owned());
        // It goes into primary_conninfo in postgresql.auto.conf, whose strings (and ALTER
        // SYSTEM) take no newline.
        let replication_password = self.required_secret(
            "REPLICATION_PASSWORD",
            raw.replication_password,
            raw.replication_password_file,
            |v| conf::line_field_problem(v).map(str::to_owned),
        );
        let pcp_user = self
            .opt("PCP_USER", raw.pcp_user, |s| {
                match conf::pcp_user_problem(s) {
                    None => Ok(s.to_owned()),
                    Some(problem) => Err(format!("{s:?} {problem}")),
                }
            })
            .unwrap_or_else(|| "pcpadmin".to_owned());

        let pcp_port = self.opt("PCP_PORT", raw.pcp_port, parse_port);
        let pgpool_port = self.opt("PGPOOL_PORT", raw.pgpool_port, parse_port);
        let pcp_password = self.required_secret(
            "PCP_PASSWORD",
            raw.pcp_password,
            raw.pcp_password_file,
            |v| {
                conf::pcp_password_problem(pcp_port.unwrap_or(DEFAULT_PCP_PORT), &pcp_user, v)
                    .map(str::to_owned)
            },
        );
        let http_listen = self.opt("HTTP_LISTEN", raw.http_listen, parse_listen);
        self.check_port_clashes(pcp_port, pgpool_port, http_listen);
        let pcp_port = pcp_port.unwrap_or(DEFAULT_PCP_PORT);
        let pgpool_port = pgpool_port.unwrap_or(DEFAULT_PG_PORT);
        let http_listen = http_listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9720)));

        let api_token = match self.secret_input("API_TOKEN", raw.api_token, raw.api_token_file) {
            // Empty means "no token": mutating endpoints stay off, the safe side.
            SecretInput::Given { value, .. } if value.is_empty() => None,
            SecretInput::Given { value, var, .. } => {
                if value.chars().count() < MIN_API_TOKEN_CHARS {
                    self.problem(
                        &var,
                        format!("is too short; use at least {MIN_API_TOKEN_CHARS} characters"),
                    );
                }
                Some(Secret(value))
            }
            SecretInput::Absent | SecretInput::Failed => None,
        };

        let probe_interval = self
            .opt("PROBE_INTERVAL", raw.probe_interval, parse_duration)
            .unwrap_or(Duration::from_secs(1));
        let probe_timeout = self
            .opt("PROBE_TIMEOUT", raw.probe_timeout, |s| {
                let d = parse_duration(s)?;
                // A longer timeout would leave a hung primary serving errors for minutes.
                if d > MAX_PROBE_TIMEOUT {
                    return Err(format!("{s:?} is too long; use at most 60s"));
                }
                Ok(d)
            })
            .unwrap_or(Duration::from_secs(1));
        let probe_failures = self
            .opt(
                "PROBE_FAILURES",
                raw.probe_failures,
                |s| match parse_number::<u32>(s)? {
                    0 => Err("must be at least 1".to_owned()),
                    n => Ok(n),
                },
            )
            .unwrap_or(3);

        let log_format = self
            .opt("LOG_FORMAT", raw.log_format, |s| {
                match s.to_ascii_lowercase().as_str() {
                    "text" => Ok(LogFormat::Text),
                    "json" => Ok(LogFormat::Json),
                    _ => Err(format!("invalid value {s:?} (allowed: text, json)")),
                }
            })
            .unwrap_or_default();

        let compose_project =
            self.opt("COMPOSE_PROJECT", raw.compose_project, |s| Ok(s.to_owned()));
        let cluster_label = self.opt("CLUSTER_LABEL", raw.cluster_label, parse_label);

        let max_lag_on_failover = self
            .opt("MAX_LAG_ON_FAILOVER", raw.max_lag_on_failover, parse_bytes)
            .unwrap_or(16 * 1024 * 1024);

        let synchronous_standbys = self
            .opt("SYNCHRONOUS_STANDBYS", raw.synchronous_standbys, |s| {
                let n = parse_number::<u32>(s)?;
                match node_list {
                    Some(nodes) if n as usize >= nodes.len() => Err(format!(
                        "is {n} but must be less than the number of nodes ({})",
                        nodes.len()
                    )),
                    _ => Ok(n),
                }
            })
            .unwrap_or(0);

        let priorities = match raw.priorities.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(list) => {
                let (priorities, problems) = parse_priorities(list, node_list);
                for message in problems {
                    self.problem("PRIORITIES", message);
                }
                priorities
            }
        };
        let priorities = priorities.unwrap_or_else(|| vec![0; node_list.map_or(0, <[_]>::len)]);

        let auto_rejoin = self
            .opt("AUTO_REJOIN", raw.auto_rejoin, parse_bool)
            .unwrap_or(true);
        let auto_failback = self
            .opt("AUTO_FAILBACK", raw.auto_failback, parse_bool)
            .unwrap_or(false);
        let preferred_primary = match node_list {
            Some(nodes) => self.opt("PREFERRED_PRIMARY", raw.preferred_primary, |s| {
                resolve_node(nodes, s)
            }),
            None => None,
        };

        let hook_socket = self
            .opt("HOOK_SOCKET", raw.hook_socket, |s| {
                // pgpool runs the hook from its own working directory; a relative path would
                // point somewhere else there.
                let path = PathBuf::from(s);
                if !path.is_absolute() {
                    return Err(format!("{s:?} must be an absolute path"));
                }
                // It is pasted unquoted into failover_command and follow_primary_command,
                // which pgpool runs with /bin/sh after expanding its own `%` escapes.
                if !conf::shell_safe(s) {
                    return Err(format!(
                        "{s:?} may contain only letters, digits and /._- (pgpool runs it in a \
                         shell command)"
                    ));
                }
                if s.len() > MAX_SOCKET_PATH {
                    return Err(format!(
                        "{s:?} is too long for a Unix socket path (at most {MAX_SOCKET_PATH} bytes)"
                    ));
                }
                Ok(path)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_HOOK_SOCKET));
        let job_timeout = self
            .opt("JOB_TIMEOUT", raw.job_timeout, parse_duration)
            .unwrap_or(Duration::from_secs(600));
        let replication_slots = self
            .opt("REPLICATION_SLOTS", raw.replication_slots, parse_bool)
            .unwrap_or(true);
        if let (true, Some(nodes)) = (replication_slots, node_list) {
            // Two standbys sharing a slot would take turns failing to stream.
            let mut seen = BTreeMap::new();
            for n in nodes {
                let slot = crate::slots::slot_name(&n.host);
                // (Equal hosts are reported, or allowed with distinct ports, elsewhere.)
                let clash = seen
                    .insert(slot.clone(), n.host.clone())
                    .filter(|other| *other != n.host);
                if let Some(other) = clash {
                    self.problem(
                        "NODES",
                        format!(
                            "hosts {other:?} and {:?} would share the replication slot {slot:?}; \
                             rename one, or set PGPOOL_SIDECAR_REPLICATION_SLOTS=false",
                            n.host
                        ),
                    );
                }
            }
        }
        let max_slot_wal_keep_size = self
            .opt(
                "MAX_SLOT_WAL_KEEP_SIZE",
                raw.max_slot_wal_keep_size,
                parse_slot_limit,
            )
            .unwrap_or(Some(DEFAULT_MAX_SLOT_WAL_KEEP_SIZE));

        Config {
            nodes: nodes.unwrap_or_default(),
            superuser,
            superuser_password,
            replication_user,
            replication_password,
            pcp_user,
            pcp_password,
            pcp_port,
            pgpool_port,
            http_listen,
            api_token,
            probe_interval,
            probe_timeout,
            probe_failures,
            log_format,
            compose_project,
            cluster_label,
            max_lag_on_failover,
            synchronous_standbys,
            priorities,
            auto_rejoin,
            auto_failback,
            preferred_primary,
            hook_socket,
            job_timeout,
            replication_slots,
            max_slot_wal_keep_size,
            pgpool_conf,
        }
    }

    /// pgpool, PCP and the HTTP server share this container's network namespace, so equal ports
    /// would fail at bind time, after pgpool has half started.
    fn check_port_clashes(
        &mut self,
        pcp: Option<u16>,
        pgpool: Option<u16>,
        http: Option<SocketAddr>,
    ) {
        let pcp = pcp.unwrap_or(DEFAULT_PCP_PORT);
        let pgpool = pgpool.unwrap_or(DEFAULT_PG_PORT);
        if pcp == pgpool {
            self.problem(
                "PCP_PORT",
                format!("is {pcp}, the same as {ENV_PREFIX}PGPOOL_PORT"),
            );
        }
        let http = http.map_or(9720, |a| a.port());
        for (other, port) in [("PCP_PORT", pcp), ("PGPOOL_PORT", pgpool)] {
            if http == port {
                self.problem(
                    "HTTP_LISTEN",
                    format!("uses port {http}, the same as {ENV_PREFIX}{other}"),
                );
            }
        }
    }
}

fn unknown_message(name: &str) -> String {
    let closest = KNOWN_VARS
        .iter()
        .map(|known| (edit_distance(name, known), known))
        .min();
    match closest {
        Some((distance, known)) if distance <= 3 => {
            format!("unknown variable (did you mean {ENV_PREFIX}{known}?)")
        }
        _ => "unknown variable".to_owned(),
    }
}

/// Levenshtein distance; enough to suggest the intended name for a typo.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur.push(substitute.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Returns the pgpool.conf name for a `PGPOOL_CONF_<NAME>` variable.
fn check_pgpool_conf(name: &str, value: &str) -> Result<String, String> {
    let lower = name.to_ascii_lowercase();
    if lower.is_empty() {
        return Err("names no pgpool setting".to_owned());
    }
    // pgpool's lexer reads a key only from a letter or `_` on; `1abc` would be a number.
    let starts_right = lower
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    if !starts_right
        || !lower
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "{lower:?} is not a pgpool setting name (letters, digits and _, not a digit first)"
        ));
    }
    if let Some(problem) = conf::pass_through_key_problem(&lower) {
        return Err(problem.to_owned());
    }
    // The value is not shown: pass-through settings can be passwords.
    if let Some(problem) = conf::conf_string_problem(value) {
        return Err(format!("value {problem}"));
    }
    Ok(lower)
}

/// Reads a `*_FILE` secret: a regular file of at most [`MAX_SECRET_FILE`] bytes of UTF-8.
fn read_secret_file(path: &str) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    let unreadable = |e: std::io::Error| format!("file {path} cannot be read: {}", e.kind());
    let not_regular = || format!("file {path} is not a regular file");
    // Looked at before it is opened: opening a FIFO waits for a writer (start-up would hang),
    // and a device can act on open or never end (/dev/zero).
    if !std::fs::metadata(path).map_err(unreadable)?.is_file() {
        return Err(not_regular());
    }
    // Opened without waiting and looked at again, in case the path was swapped in between.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(unreadable)?;
    if !file.metadata().map_err(unreadable)?.is_file() {
        return Err(not_regular());
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(format!(
            "file {path} is larger than {} KiB",
            MAX_SECRET_FILE / 1024
        ));
    }
    let mut value =
        String::from_utf8(bytes).map_err(|_| format!("file {path} is not UTF-8 text"))?;
    // Every trailing newline goes, and nothing else (a carriage return stays): the official
    // postgres image reads its `*_FILE` secrets with the shell's `$(< file)`, which does exactly
    // that, so a node and the sidecar given the same secret file agree on the password.
    let kept = value.trim_end_matches('\n').len();
    value.truncate(kept);
    Ok(value)
}

/// The superuser's name goes into pool_passwd, pgpool.conf (`sr_check_user`,
/// `health_check_user`) and, unquoted, into pg_rewind's `--source-server` conninfo (the rewind
/// job in recovery.rs), so it must suit all three.
fn check_superuser(name: &str) -> Result<&str, String> {
    check_role_name(name)?;
    if let Some(problem) = conf::pool_passwd_user_problem(name) {
        return Err(format!("{name:?} {problem}"));
    }
    // An unquoted conninfo value ends at whitespace and gives `\` and a leading `'` meaning.
    if name
        .chars()
        .any(|c| c.is_whitespace() || c == '\\' || c == '\'')
    {
        return Err(format!(
            "{name:?} contains whitespace, ' or \\, which pg_rewind's --source-server cannot \
             take as written by the rewind job"
        ));
    }
    if let Some(problem) = conf::conf_string_problem(name) {
        return Err(format!("{name:?} {problem}"));
    }
    Ok(name)
}

/// A PostgreSQL role name as the generated files can carry it (postgresql.auto.conf strings take
/// no newline).
fn check_role_name(name: &str) -> Result<&str, String> {
    if let Some(problem) = conf::line_field_problem(name) {
        return Err(format!("{name:?} {problem}"));
    }
    if name.len() > MAX_ROLE_NAME {
        return Err(format!(
            "is longer than the {MAX_ROLE_NAME} bytes of a PostgreSQL role name"
        ));
    }
    Ok(name)
}

fn parse_number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid number {s:?}"));
    }
    s.parse()
        .map_err(|_| format!("number {s:?} is out of range"))
}

/// A port something listens on or connects to; 0 is never meant here.
fn parse_port(s: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port {s:?} (use 1-65535)"));
    }
    s.parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("port {s:?} is out of range (use 1-65535)"))
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let port_only = s.strip_prefix(':').unwrap_or(s);
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if all_digits(port_only) {
        let port = port_only
            .parse::<u16>()
            .map_err(|_| format!("port {port_only:?} is out of range (use 0-65535)"))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| match s.rsplit_once(':') {
            Some((_, port)) if all_digits(port) && port.parse::<u16>().is_err() => {
                format!("port {port:?} is out of range (use 0-65535)")
            }
            _ => format!("invalid listen address {s:?} (use ip:port, :port or port)"),
        })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|_| format!("invalid duration {s:?} (use e.g. 500ms, 2s)"))?;
    if d.is_zero() {
        return Err(format!("{s:?} is zero; use a positive duration"));
    }
    Ok(d)
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "invalid boolean {s:?} (use true/false, 1/0, yes/no or on/off)"
        )),
    }
}

/// Bytes, optionally with a kB/MB/GB unit, 1024-based like PostgreSQL's size settings.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {s:?} (use bytes or a number with kB, MB or GB, e.g. 16MB)");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(bad());
    }
    let multiplier: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        _ => return Err(bad()),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// `-1` (no limit, as in PostgreSQL) or a size of at least 1MB; PostgreSQL counts it in MB.
fn parse_slot_limit(s: &str) -> Result<Option<u64>, String> {
    if s.trim() == "-1" {
        return Ok(None);
    }
    let bytes = parse_bytes(s)?;
    if bytes < 1 << 20 {
        return Err(format!(
            "{s:?} is below 1MB; use a size such as 1GB, or -1 for no limit"
        ));
    }
    Ok(Some(bytes))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        None => Err(format!("{s:?} is not key=value")),
        Some(("", _)) => Err(format!("{s:?} has an empty key (use key=value)")),
        Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
    }
}

/// Parses `host[:port]` items; returns the nodes only if every item is valid, plus one message
/// per bad item.
fn parse_nodes(list: &str) -> (Option<Vec<NodeAddr>>, Vec<String>) {
    let mut nodes: Vec<NodeAddr> = Vec::new();
    let mut problems = Vec::new();
    for (i, item) in list.split(',').map(str::trim).enumerate() {
        if item.is_empty() {
            problems.push(format!("item {} is empty", i + 1));
            continue;
        }
        match parse_node(item) {
            Ok(node) => {
                if nodes.iter().any(|n| same_node(n, &node)) {
                    problems.push(format!("{node} is listed twice"));
                } else {
                    nodes.push(node);
                }
            }
            Err(message) => problems.push(message),
        }
    }
    if nodes.is_empty() && problems.is_empty() {
        problems.push("lists no node; give at least one host[:port]".to_owned());
    }
    if problems.is_empty() {
        (Some(nodes), problems)
    } else {
        (None, problems)
    }
}

// Docker DNS names are case-insensitive, so `DB1` and `db1` are the same server.
fn same_node(a: &NodeAddr, b: &NodeAddr) -> bool {
    a.port == b.port && a.host.eq_ignore_ascii_case(&b.host)
}

fn parse_node(item: &str) -> Result<NodeAddr, String> {
    let (host, port) = if let Some(rest) = item.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{item:?}: missing ']' after the IPv6 address"))?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{item:?}: {host:?} is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("{item:?}: expected :port after ']'"))?,
            ),
        };
        (host, port)
    } else if item.matches(':').count() > 1 {
        return Err(format!(
            "{item:?}: write IPv6 addresses in brackets, e.g. [::1]:5432"
        ));
    } else {
        match item.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (item, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{item:?}: host is empty"));
    }
    if !host.contains(':')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(format!(
            "{item:?}: host may contain only letters, digits, '.', '-' and '_'"
        ));
    }
    let port = match port {
        None => DEFAULT_PG_PORT,
        Some(p) => parse_port(p).map_err(|m| format!("{item:?}: {m}"))?,
    };
    Ok(NodeAddr {
        host: host.to_owned(),
        port,
    })
}

/// Finds a node by `host` or, when several nodes share a host, by `host:port`.
fn resolve_node(nodes: &[NodeAddr], name: &str) -> Result<usize, String> {
    if let Some(i) = nodes.iter().position(|n| n.to_string() == name) {
        return Ok(i);
    }
    let matching: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.host.eq_ignore_ascii_case(name))
        .map(|(i, _)| i)
        .collect();
    match matching.as_slice() {
        [i] => Ok(*i),
        [] => {
            let known: Vec<String> = nodes.iter().map(NodeAddr::to_string).collect();
            Err(format!(
                "{name:?} is not in {ENV_PREFIX}NODES ({})",
                known.join(", ")
            ))
        }
        _ => Err(format!(
            "{name:?} matches several nodes; write it as host:port"
        )),
    }
}

/// Parses `host=prio,...`; without valid nodes only the syntax is checked.
fn parse_priorities(list: &str, nodes: Option<&[NodeAddr]>) -> (Option<Vec<i32>>, Vec<String>) {
    let mut priorities = vec![0; nodes.map_or(0, <[_]>::len)];
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    for (i, item) in list.split(',').map(str::trim).enumerate() {
        if item.is_empty() {
            problems.push(format!("item {} is empty", i + 1));
            continue;
        }
        let Some((host, prio)) = item.split_once('=') else {
            problems.push(format!("{item:?} is not host=priority"));
            continue;
        };
        let (host, prio) = (host.trim(), prio.trim());
        let prio = match prio.parse::<i32>() {
            Ok(p) => p,
            Err(_) => {
                problems.push(format!("{item:?}: priority {prio:?} is not an integer"));
                continue;
            }
        };
        let Some(nodes) = nodes else { continue };
        match resolve_node(nodes, host) {
            Ok(id) if !seen.insert(id) => {
                problems.push(format!("{} is given more than once", nodes[id]));
            }
            Ok(id) => priorities[id] = prio,
            Err(message) => problems.push(message),
        }
    }
    if problems.is_empty() && nodes.is_some() {
        (Some(priorities), problems)
    } else {
        (None, problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

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

    #[test]
    fn known_vars_match_raw_fields() {
        let value = serde_json::to_value(Raw::default()).expect("serialize");
        let fields: BTreeSet<String> = value
            .as_object()
            .expect("object")
            .keys()
            .map(|k| k.to_ascii_uppercase())
            .collect();
        let known: BTreeSet<String> = KNOWN_VARS.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(fields, known);
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
            // pool_passwd holds at most 128 bytes of a clear-text password.
            (
                "PGPOOL_SIDECAR_SUPERUSER_PASSWORD",
                &long_super,
                "128 bytes",
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
}
