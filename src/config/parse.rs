//! Turns one variable's text into a typed value, or says why it cannot.
//!
//! Reads and changes nothing: pure functions of the (already trimmed) text. Messages may quote
//! the value, so no secret is ever passed here.

use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::{LogFormat, NodeAddr, DEFAULT_PG_PORT};
use crate::pgpool::conf;

const MIN_API_TOKEN_CHARS: usize = 16;
const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// PostgreSQL cuts longer role names (NAMEDATALEN - 1), so a longer name would not be the role.
const MAX_ROLE_NAME: usize = 63;
/// A Unix socket path must fit `sun_path` (108 bytes) with its terminating NUL, or bind fails and
/// pgpool's hooks find no daemon.
const MAX_SOCKET_PATH: usize = 107;

/// Free text, taken as written.
pub(super) fn text(s: &str) -> Result<String, String> {
    Ok(s.to_owned())
}

pub(super) fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid number {s:?}"));
    }
    s.parse()
        .map_err(|_| format!("number {s:?} is out of range"))
}

/// A port something listens on or connects to; 0 is never meant here.
pub(super) fn port(s: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port {s:?} (use 1-65535)"));
    }
    s.parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("port {s:?} is out of range (use 1-65535)"))
}

pub(super) fn listen(s: &str) -> Result<SocketAddr, String> {
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

pub(super) fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|_| format!("invalid duration {s:?} (use e.g. 500ms, 2s)"))?;
    if d.is_zero() {
        return Err(format!("{s:?} is zero; use a positive duration"));
    }
    Ok(d)
}

pub(super) fn probe_timeout(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    // A longer timeout would leave a hung primary serving errors for minutes.
    if d > MAX_PROBE_TIMEOUT {
        return Err(format!("{s:?} is too long; use at most 60s"));
    }
    Ok(d)
}

pub(super) fn probe_failures(s: &str) -> Result<u32, String> {
    match number::<u32>(s)? {
        0 => Err("must be at least 1".to_owned()),
        n => Ok(n),
    }
}

pub(super) fn boolean(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "invalid boolean {s:?} (use true/false, 1/0, yes/no or on/off)"
        )),
    }
}

pub(super) fn log_format(s: &str) -> Result<LogFormat, String> {
    match s.to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("invalid value {s:?} (allowed: text, json)")),
    }
}

/// Bytes, optionally with a kB/MB/GB unit, 1024-based like PostgreSQL's size settings.
pub(super) fn bytes(s: &str) -> Result<u64, String> {
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
pub(super) fn slot_limit(s: &str) -> Result<Option<u64>, String> {
    if s.trim() == "-1" {
        return Ok(None);
    }
    let bytes = bytes(s)?;
    if bytes < 1 << 20 {
        return Err(format!(
            "{s:?} is below 1MB; use a size such as 1GB, or -1 for no limit"
        ));
    }
    Ok(Some(bytes))
}

pub(super) fn label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        None => Err(format!("{s:?} is not key=value")),
        Some(("", _)) => Err(format!("{s:?} has an empty key (use key=value)")),
        Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
    }
}

/// The answer never holds the token: it is asked of a secret.
pub(super) fn api_token_problem(token: &str) -> Option<String> {
    (token.chars().count() < MIN_API_TOKEN_CHARS)
        .then(|| format!("is too short; use at least {MIN_API_TOKEN_CHARS} characters"))
}

/// The superuser's name goes into pool_passwd, pgpool.conf (`sr_check_user`,
/// `health_check_user`) and, unquoted, into pg_rewind's `--source-server` conninfo (the rewind
/// job in recovery.rs), so it must suit all three.
pub(super) fn superuser(name: &str) -> Result<String, String> {
    role_name(name)?;
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
    Ok(name.to_owned())
}

/// A PostgreSQL role name as the generated files can carry it (postgresql.auto.conf strings take
/// no newline).
pub(super) fn role_name(name: &str) -> Result<String, String> {
    if let Some(problem) = conf::line_field_problem(name) {
        return Err(format!("{name:?} {problem}"));
    }
    if name.len() > MAX_ROLE_NAME {
        return Err(format!(
            "is longer than the {MAX_ROLE_NAME} bytes of a PostgreSQL role name"
        ));
    }
    Ok(name.to_owned())
}

pub(super) fn pcp_user(name: &str) -> Result<String, String> {
    match conf::pcp_user_problem(name) {
        None => Ok(name.to_owned()),
        Some(problem) => Err(format!("{name:?} {problem}")),
    }
}

pub(super) fn state_path(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if !path.is_absolute() || path.file_name().is_none() {
        return Err(format!("{s:?} must be an absolute path to a file"));
    }
    Ok(path)
}

pub(super) fn hook_socket(s: &str) -> Result<PathBuf, String> {
    // pgpool runs the hook from its own working directory; a relative path would point
    // somewhere else there.
    let path = PathBuf::from(s);
    if !path.is_absolute() {
        return Err(format!("{s:?} must be an absolute path"));
    }
    // It is pasted unquoted into failover_command, which pgpool runs
    // with /bin/sh after expanding its own `%` escapes.
    if !conf::shell_safe(s) {
        return Err(format!(
            "{s:?} may contain only letters, digits and /._- (pgpool runs it in a shell command)"
        ));
    }
    if s.len() > MAX_SOCKET_PATH {
        return Err(format!(
            "{s:?} is too long for a Unix socket path (at most {MAX_SOCKET_PATH} bytes)"
        ));
    }
    Ok(path)
}

/// Parses `host[:port]` items; fails with one message per bad item.
pub(super) fn nodes(list: &str) -> Result<Vec<NodeAddr>, Vec<String>> {
    let mut nodes: Vec<NodeAddr> = Vec::new();
    let mut problems = Vec::new();
    for (i, item) in list.split(',').map(str::trim).enumerate() {
        if item.is_empty() {
            problems.push(format!("item {} is empty", i + 1));
            continue;
        }
        match node(item) {
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
        Ok(nodes)
    } else {
        Err(problems)
    }
}

// Docker DNS names are case-insensitive, so `DB1` and `db1` are the same server.
fn same_node(a: &NodeAddr, b: &NodeAddr) -> bool {
    a.port == b.port && a.host.eq_ignore_ascii_case(&b.host)
}

fn node(item: &str) -> Result<NodeAddr, String> {
    let (host, port_text) = if let Some(rest) = item.strip_prefix('[') {
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
    let port = match port_text {
        None => DEFAULT_PG_PORT,
        Some(p) => port(p).map_err(|m| format!("{item:?}: {m}"))?,
    };
    Ok(NodeAddr {
        host: host.to_owned(),
        port,
    })
}

/// Returns the pgpool.conf name for a `PGPOOL_CONF_<NAME>` variable.
pub(super) fn pgpool_conf_name(name: &str, value: &str) -> Result<String, String> {
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
