//! pgpool's configuration files, rendered from the sidecar's config.
//!
//! Reads: the sidecar config. Changes: nothing by itself — pure functions returning file contents;
//! the supervisor writes them once at start and before every pgpool restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use crate::config::Config;
use crate::pgpool::version::PgpoolVersion;

#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("PGPOOL_CONF_{}: {}", .key.to_uppercase(), pass_through_refusal(.key))]
    Reserved { key: String },
    /// A value the config check should have refused; the file is not written rather than
    /// written so that pgpool fails to start on it. The value may be a secret: not shown.
    #[error("pgpool.conf: the value of `{key}` cannot be written: {reason}")]
    Unwritable { key: String, reason: &'static str },
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
    /// From `tls::install`; names the variable and file, never the contents.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Where pgpool's files live inside the image.
#[derive(Debug, Clone)]
pub struct Paths {
    pub conf_dir: PathBuf,
    pub run_dir: PathBuf,
    /// pgpool's `logdir` (`work_dir` from 4.7): it keeps `pgpool_status` there.
    pub status_dir: PathBuf,
    pub sidecar_bin: PathBuf,
    /// The unprivileged user pgpool runs as, owner of what pgpool reads and writes. None when
    /// the sidecar itself is not root (then pgpool runs as the sidecar's user).
    pub owner: Option<Owner>,
}

/// A user and group id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            conf_dir: "/etc/pgpool2".into(),
            run_dir: "/var/run/pgpool".into(),
            status_dir: "/var/lib/pgpool".into(),
            sidecar_bin: "/usr/local/bin/pgpool-sidecar".into(),
            owner: None,
        }
    }
}

impl Paths {
    pub fn pgpool_conf(&self) -> PathBuf {
        self.conf_dir.join("pgpool.conf")
    }
    pub fn pcp_conf(&self) -> PathBuf {
        self.conf_dir.join("pcp.conf")
    }
    pub fn pool_hba(&self) -> PathBuf {
        self.conf_dir.join("pool_hba.conf")
    }
    pub fn pool_passwd(&self) -> PathBuf {
        self.conf_dir.join("pool_passwd")
    }
    pub fn pcppass(&self) -> PathBuf {
        self.conf_dir.join("pcppass")
    }
    pub fn status_file(&self) -> PathBuf {
        self.status_dir.join("pgpool_status")
    }
    pub fn tls_cert(&self) -> PathBuf {
        self.conf_dir.join(crate::tls::CERT_NAME)
    }
    pub fn tls_key(&self) -> PathBuf {
        self.conf_dir.join(crate::tls::KEY_NAME)
    }
    pub fn tls_ca(&self) -> PathBuf {
        self.conf_dir.join(crate::tls::CA_NAME)
    }
}

/// Keys whose value the sidecar's safety depends on: a pass-through may not change them. The one
/// list, checked when the configuration is loaded (so `configcheck` sees it) and again here.
///
/// Each is something the sidecar writes and then relies on: the backends and their order (node
/// ids), the hooks that hand failover to the sidecar, the ports and PCP address its own PCP calls
/// and SQL use, the status directory (`logdir`, named `work_dir` since pgpool 4.7) whose
/// `pgpool_status` it writes, a pid file in the container's run directory (one on a volume would
/// outlive a killed pgpool), the check credentials that pgpool finds in pool_passwd (a
/// password here would also sit in this world-readable file), and TLS, whose files the sidecar
/// copies into place (`TLS_*_FILE` choose them).
pub fn reserved(key: &str) -> bool {
    let per_node = |base: &str| {
        key.strip_prefix(base)
            .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit()))
    };
    key.starts_with("backend_")
        || per_node("health_check_user")
        || per_node("health_check_password")
        || matches!(
            key,
            "failover_command"
                | "follow_primary_command"
                | "failback_command"
                | "pool_passwd"
                | "logdir"
                | "work_dir"
                | "pid_file_name"
                | "pcp_port"
                | "pcp_listen_addresses"
                | "port"
                | "auto_failback"
                | "enable_pool_hba"
                | "sr_check_user"
                | "sr_check_password"
                | "ssl"
                | "ssl_cert"
                | "ssl_key"
                | "ssl_ca_cert"
                | "ssl_ca_cert_dir"
        )
}

/// The address pgpool's PCP listens on and our PCP calls (and their pass file) use. Not
/// `localhost`: from 4.4 pgpool binds every address that name resolves to and warns for each it
/// cannot bind (`::1` in a container without IPv6), and from 4.6.2 the PCP client connects to the
/// first address only, without trying the next; 4.3 took IPv4 only on both sides.
pub const PCP_HOST: &str = "127.0.0.1";

/// A setting pgpool renamed: `old` up to the release before `since`, `new` from `since` on.
struct Renamed {
    old: &'static str,
    new: &'static str,
    since: (u32, u32),
}

/// Renames between 4.3 and 4.7 (src/config/pool_config_variables.c and the release notes'
/// migration sections). pgpool takes an unknown name with only an INFO line and otherwise
/// ignores it, and an old name it still reads with a WARNING: the name a version reads is written.
const RENAMED: &[Renamed] = &[
    // 4.4 reads only the new name (a list since then).
    Renamed {
        old: "socket_dir",
        new: "unix_socket_directories",
        since: (4, 4),
    },
    // 4.4 reads the old one with a warning. pgpool matches names case-sensitively, and a
    // pass-through key is lower case: without this, 4.3's `delegate_IP` could not be set.
    Renamed {
        old: "delegate_IP",
        new: "delegate_ip",
        since: (4, 4),
    },
    // 4.7 reads the old one with a warning.
    Renamed {
        old: "logdir",
        new: "work_dir",
        since: (4, 7),
    },
    // Every supported version reads the old one, with a warning.
    Renamed {
        old: "fail_over_on_backend_error",
        new: "failover_on_backend_error",
        since: (4, 0),
    },
];

/// The name `version` reads for the setting called `key` (either of its names, in any case for
/// the old one, since pass-through keys are lowercased); any other key as it is.
pub fn setting_name(key: &str, version: PgpoolVersion) -> &str {
    match RENAMED
        .iter()
        .find(|r| key == r.new || key.eq_ignore_ascii_case(r.old))
    {
        Some(r) if version.at_least(r.since.0, r.since.1) => r.new,
        Some(r) => r.old,
        None => key,
    }
}

/// pgpool reads `include` as a directive to read another file, which could set anything.
const INCLUDE: &str = "include";

fn pass_through_refusal(key: &str) -> &'static str {
    if key == INCLUDE {
        "`include` would make pgpool read settings from another file; pass the settings one by one"
    } else {
        "the setting is managed by pgpool-sidecar and cannot be overridden"
    }
}

/// Why a `PGPOOL_CONF_<NAME>` key (already lowercased) may not be passed through, if it may not.
pub fn pass_through_key_problem(key: &str) -> Option<&'static str> {
    (key == INCLUDE || reserved(key)).then(|| pass_through_refusal(key))
}

/// Why pgpool's config lexer would not read `value` back unchanged as a quoted string, if so.
///
/// Inside quotes the lexer takes any byte but a quote or a newline, or a backslash followed by
/// any byte but a newline, and keeps the text as it stands: nothing is unescaped (only the
/// pattern-list settings turn `\'` into `'` later, themselves). So a quote can appear only right
/// after a backslash, and `''` is not a quote but the end of one string and the start of
/// another. A NUL would cut the value short where pgpool copies it as a C string. A carriage
/// return would be read, but is refused with the newline as almost surely a CRLF accident.
pub fn conf_string_problem(value: &str) -> Option<&'static str> {
    if value.contains('\n') || value.contains('\r') {
        return Some("contains a newline, which pgpool.conf cannot hold in a value");
    }
    if value.contains('\0') {
        return Some("contains a NUL byte, which pgpool.conf cannot hold");
    }
    let bytes = value.as_bytes();
    let lone_quote = bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\'' && (i == 0 || bytes[i - 1] != b'\\'));
    if lone_quote {
        return Some(
            "contains a ' not preceded by \\; pgpool.conf has no way to write one \
             (pgpool reads '' as two strings, and keeps \\' as both characters)",
        );
    }
    None
}

/// A value as pgpool.conf wants it: whole numbers and booleans bare, everything else
/// single-quoted exactly as it is. pgpool strips the quotes before it converts a value, so
/// quoting is always right; bare is kept for the simplest forms only, each of which the lexer
/// reads as one token (`1e5` bare, for one, would be read as `1e` and then a syntax error).
fn quote(key: &str, value: &str) -> Result<String, ConfError> {
    let digits = value.strip_prefix('-').unwrap_or(value);
    let bare = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        || matches!(
            value.to_ascii_lowercase().as_str(),
            "on" | "off" | "true" | "false"
        );
    if bare {
        return Ok(value.to_string());
    }
    match conf_string_problem(value) {
        None => Ok(format!("'{value}'")),
        Some(reason) => Err(ConfError::Unwritable {
            key: key.to_string(),
            reason,
        }),
    }
}

/// Whether `s` can go into a `/bin/sh` command line unquoted, as pgpool runs the hooks: letters,
/// digits and `/._-` only. That also keeps out `%`, which pgpool expands in these commands.
pub fn shell_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'))
}

/// pgpool's child processes, hence clients served at once, unless
/// `PGPOOL_CONF_NUM_INIT_CHILDREN` says otherwise.
pub const DEFAULT_NUM_INIT_CHILDREN: u32 = 32;

/// The `num_init_children` pgpool.conf is written with; `None` for a pass-through value that is
/// not a plain number (pgpool refuses it and does not start).
pub fn num_init_children(cfg: &Config) -> Option<u32> {
    match cfg.pgpool_conf.get("num_init_children") {
        None => Some(DEFAULT_NUM_INIT_CHILDREN),
        Some(v) => v.trim().parse().ok(),
    }
}

/// pgpool.conf for pgpool-II `version`, with each setting under the name that version reads
/// ([`setting_name`]; a pass-through key too, so an old name keeps working). Passwords are not
/// in it: pgpool reads them from pool_passwd when the `*_password` settings are empty.
pub fn pgpool_conf(
    cfg: &Config,
    paths: &Paths,
    version: PgpoolVersion,
) -> Result<String, ConfError> {
    let mut s: BTreeMap<String, String> = BTreeMap::new();
    let mut failed: Option<ConfError> = None;
    let mut set = |k: &str, v: &str| match quote(k, v) {
        Ok(q) => {
            s.insert(setting_name(k, version).to_string(), q);
        }
        Err(e) => {
            failed.get_or_insert(e);
        }
    };
    set("backend_clustering_mode", "streaming_replication");
    set("listen_addresses", "*");
    set("port", &cfg.pgpool_port.to_string());
    // `socket_dir` in 4.3. The default (/var/run/postgresql) is not writable by pgpool's user.
    set("unix_socket_directories", &paths.run_dir.to_string_lossy());
    set("pcp_listen_addresses", PCP_HOST);
    set("pcp_port", &cfg.pcp_port.to_string());
    set("pcp_socket_dir", &paths.run_dir.to_string_lossy());
    set(
        "pid_file_name",
        &paths.run_dir.join("pgpool.pid").to_string_lossy(),
    );
    // `work_dir` from 4.7.
    set("logdir", &paths.status_dir.to_string_lossy());
    set("log_destination", "stderr");
    set("logging_collector", "off");
    set("log_line_prefix", "%m: %a pid %p: ");
    set("num_init_children", &DEFAULT_NUM_INIT_CHILDREN.to_string());
    set("max_pool", "2");
    set("enable_pool_hba", "on");
    set("pool_passwd", "pool_passwd");
    set("allow_clear_text_frontend_auth", "off");
    // Served to clients that ask, and asked of every backend (used when it offers TLS); the
    // files are the ones `tls::install` copied.
    set("ssl", "on");
    set("ssl_cert", &paths.tls_cert().to_string_lossy());
    set("ssl_key", &paths.tls_key().to_string_lossy());
    if cfg.tls_ca_file.is_some() {
        set("ssl_ca_cert", &paths.tls_ca().to_string_lossy());
    }
    set("load_balance_mode", "on");
    set("statement_level_load_balance", "off");
    // Off: pgpool 4.6's streaming-replication check holds the lock that failover's primary
    // search waits for, and its reads have no timeout — a primary cut off from the network while
    // it answered a check stalled the whole failover (seen in CI: pgpool never found the new
    // primary). The sidecar measures lag and streaming itself; pgpool's `replication_delay` is
    // informational here. Who sets `delay_threshold` must turn it back on (README).
    set("sr_check_period", "0");
    set("sr_check_user", &cfg.superuser);
    set("sr_check_password", "");
    set("sr_check_database", "postgres");
    set("health_check_period", "1");
    set("health_check_timeout", "2");
    set("health_check_user", &cfg.superuser);
    set("health_check_password", "");
    set("health_check_database", "postgres");
    set("health_check_max_retries", "2");
    set("health_check_retry_delay", "1");
    set("connect_timeout", "2000");
    set("failover_on_backend_error", "on");
    // A primary shut down cleanly (docker stop, pg_ctl stop: its sessions get 57P01) fails over
    // at once instead of at the next failed health check. On by default up to 4.3.8, 4.4.5 and
    // 4.5.0, where the failover timings were measured (4.3.5); off from 4.3.9, 4.4.6, 4.5.1 and
    // in every 4.6 and 4.7.
    set("failover_on_backend_shutdown", "on");
    set("search_primary_node_timeout", "10");
    set("auto_failback", "off");
    set("detach_false_primary", "off");
    // pgpool hands these to /bin/sh: anything but plain path characters could run something.
    for (key, path) in [
        ("failover_command", &paths.sidecar_bin),
        ("failover_command", &cfg.hook_socket),
    ] {
        if !path.to_str().is_some_and(shell_safe) {
            return Err(ConfError::Unwritable {
                key: key.to_string(),
                reason: "a path in the hook command has characters other than letters, digits \
                         and /._-",
            });
        }
    }
    let hook = |kind: &str, args: &str| {
        format!(
            "{} hook --socket {} {kind} {args}",
            paths.sidecar_bin.display(),
            cfg.hook_socket.display()
        )
    };
    set("failover_command", &hook("failover", "%d %P %m"));
    // Empty: with a command pgpool marks every other standby down after a primary failover and
    // each must be attached again, a failback that stalls every query for pgpool's 1 s wait
    // (it sleeps in whole seconds while a failover or failback runs). The sidecar re-points
    // the standbys inside failover_command, before pgpool looks for the new primary, so they
    // stay attached and their sessions live.
    set("follow_primary_command", "");
    for (i, node) in cfg.nodes.iter().enumerate() {
        set(&format!("backend_hostname{i}"), &node.host);
        set(&format!("backend_port{i}"), &node.port.to_string());
        set(&format!("backend_weight{i}"), "1");
        set(&format!("backend_flag{i}"), "ALLOW_TO_FAILOVER");
        set(&format!("backend_application_name{i}"), &node.host);
    }
    for (k, v) in &cfg.pgpool_conf {
        if pass_through_key_problem(k).is_some() {
            return Err(ConfError::Reserved { key: k.clone() });
        }
        set(k, v);
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let mut out = String::from("# Written by pgpool-sidecar at start; edits are overwritten.\n");
    for (k, v) in s {
        out.push_str(&format!("{k} = {v}\n"));
    }
    Ok(out)
}

/// pool_passwd and pcp.conf keep at most this many bytes of a user name (pgpool's
/// MAX_USER_NAME_LEN and MAX_USER_PASSWD_LEN), and pool_passwd as many of a clear-text password
/// (after its `TEXT` prefix); more is cut off or refused, and the login fails.
pub const MAX_AUTH_FILE_FIELD: usize = 128;
/// The PCP client refuses a user name of this length or more.
const MAX_PCP_USER: usize = MAX_AUTH_FILE_FIELD - 1;
/// The PCP client reads its pass file in lines of at most this many bytes, newline included
/// (NAMEDATALEN * 5 less the terminating NUL); a longer line is read as two.
const MAX_PCPPASS_LINE: usize = 319;

/// Why a value cannot be a field of a line-based file (every file written here), if so.
pub fn line_field_problem(value: &str) -> Option<&'static str> {
    if value.contains('\n') {
        Some("contains a newline, which would split its line in pgpool's files")
    } else if value.contains('\0') {
        Some("contains a NUL byte, which pgpool would read as the end")
    } else {
        None
    }
}

/// Why `user` cannot be a user name in pool_passwd (`user:password`, no escapes), if so.
pub fn pool_passwd_user_problem(user: &str) -> Option<&'static str> {
    line_field_problem(user).or(if user.contains(':') {
        Some("contains ':', which ends the user name in pgpool's pool_passwd")
    } else if user.len() > MAX_AUTH_FILE_FIELD {
        Some("is longer than the 128 bytes pgpool's pool_passwd holds")
    } else {
        None
    })
}

/// The prefix that marks a clear-text password in pool_passwd.
const TEXT_PREFIX: &str = "TEXT";

/// Why `password` cannot be a clear-text password in pool_passwd, if so. Never shows it.
/// pgpool reads the password field as one token of at most 128 characters, its `TEXT` prefix
/// included (src/auth/pool_passwd.c, getNextToken).
pub fn pool_passwd_password_problem(password: &str) -> Option<&'static str> {
    line_field_problem(password).or((password.len() > MAX_AUTH_FILE_FIELD - TEXT_PREFIX.len())
        .then_some("is longer than the 124 bytes pgpool's pool_passwd holds"))
}

/// Why `user` cannot be the PCP user (pcp.conf `user:md5`, no escapes; the pass file escapes), if
/// so.
pub fn pcp_user_problem(user: &str) -> Option<&'static str> {
    line_field_problem(user).or(if user.contains(':') {
        Some("contains ':', which ends the user name in pgpool's pcp.conf")
    } else if user.starts_with('#') {
        Some("starts with '#', which makes its pcp.conf line a comment")
    } else if user.len() > MAX_PCP_USER {
        Some("is longer than the 127 bytes pgpool's PCP accepts")
    } else {
        None
    })
}

/// Why `password` cannot go into the PCP pass file next to `user` and `port`, if so. Never
/// shows it.
pub fn pcp_password_problem(port: u16, user: &str, password: &str) -> Option<&'static str> {
    line_field_problem(password).or(
        (pcppass_line(port, user, password).len() > MAX_PCPPASS_LINE).then_some(
            "is too long for the PCP client's pass file (319 bytes a line, ':' and '\\' \
                 count twice)",
        ),
    )
}

/// The escape of the PCP pass file (as in libpq's .pgpass) and of pool_passwd (pgpool reads its
/// fields with `getNextToken`, for which a backslash makes the next character plain): a
/// backslash before `:` and `\`.
fn pcppass_escape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    for c in field.chars() {
        if matches!(c, ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn pcppass_line(port: u16, user: &str, password: &str) -> String {
    format!(
        "{PCP_HOST}:{port}:{}:{}\n",
        pcppass_escape(user),
        pcppass_escape(password)
    )
}

/// pcp.conf: `user:md5(password)`. The user name has no escape here; config.rs refuses one this
/// file cannot hold ([`pcp_user_problem`]).
pub fn pcp_conf(cfg: &Config) -> String {
    let digest = Md5::digest(cfg.pcp_password.expose().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}:{hex}\n", cfg.pcp_user)
}

/// The PCP password file our own `pcp_*` calls use (PCPPASSFILE).
pub fn pcppass(cfg: &Config) -> String {
    pcppass_line(cfg.pcp_port, &cfg.pcp_user, cfg.pcp_password.expose())
}

/// pool_passwd with clear-text entries: SCRAM towards the backends needs the password itself.
/// The file is mode 0600 inside the sidecar's container. It has no escapes: config.rs refuses
/// what it cannot hold ([`pool_passwd_user_problem`], [`pool_passwd_password_problem`]).
/// The superuser comes first; the declared application users follow in their order. Each line
/// is `user:TEXTpassword` with `:` and `\` escaped: unescaped, a `:` in a password would end it
/// there (the rest is read as a user to map to).
pub fn pool_passwd(cfg: &Config, users: &[crate::users::AppUser]) -> String {
    let line = |user: &str, password: &str| {
        format!(
            "{}:{TEXT_PREFIX}{}\n",
            pcppass_escape(user),
            pcppass_escape(password)
        )
    };
    let mut out = line(&cfg.superuser, cfg.superuser_password.expose());
    for u in users {
        out.push_str(&line(&u.name, u.password.expose()));
    }
    out
}

pub fn pool_hba() -> String {
    "# Written by pgpool-sidecar.\n\
     host all all 0.0.0.0/0 scram-sha-256\n\
     host all all ::/0 scram-sha-256\n"
        .to_string()
}

/// `pgpool_status`: one line per node, `up` or `down`. pgpool reads it at start (without -D),
/// so it starts with exactly the nodes the sidecar has verified, instead of trusting a stale file
/// or attaching every reachable node.
pub fn status_file(up: &[bool]) -> String {
    up.iter()
        .map(|u| if *u { "up\n" } else { "down\n" })
        .collect()
}

pub fn write_file(
    path: &Path,
    contents: &str,
    mode: u32,
    owner: Option<Owner>,
) -> Result<(), ConfError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| ConfError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    // Created with its final mode: a secret is never readable by others, not even briefly.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    if let Some(o) = owner {
        std::os::unix::fs::chown(&tmp, Some(o.uid), Some(o.gid)).map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

/// Creates `dir` (mode 0700) owned by `owner`: pgpool writes its sockets, pid file and status
/// file there.
pub fn owned_dir(dir: &Path, owner: Option<Owner>) -> Result<(), ConfError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |e: std::io::Error| ConfError::Write {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    if let Some(o) = owner {
        std::os::unix::fs::chown(dir, Some(o.uid), Some(o.gid)).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, EnvSource};

    const V43: PgpoolVersion = PgpoolVersion::new(4, 3, 5);
    const V44: PgpoolVersion = PgpoolVersion::new(4, 4, 17);
    const V46: PgpoolVersion = PgpoolVersion::new(4, 6, 1);
    const V47: PgpoolVersion = PgpoolVersion::new(4, 7, 3);

    fn base_env(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("PGPOOL_SIDECAR_NODES".into(), "pg-0,pg-1:5433,pg-2".into()),
            (
                "PGPOOL_SIDECAR_SUPERUSER_PASSWORD".into(),
                "s3cret-super".into(),
            ),
            (
                "PGPOOL_SIDECAR_REPLICATION_PASSWORD".into(),
                "s3cret-repl".into(),
            ),
            ("PGPOOL_SIDECAR_PCP_PASSWORD".into(), "s3cret-pcp".into()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    fn cfg(extra: &[(&str, &str)]) -> Config {
        let env = base_env(extra);
        let src: &dyn EnvSource = &env;
        load(src).expect("valid config")
    }

    #[test]
    fn renders_backends_hooks_and_no_passwords() {
        let c = cfg(&[]);
        let text = pgpool_conf(&c, &Paths::default(), V46).unwrap();
        assert!(text.contains("backend_clustering_mode = 'streaming_replication'\n"));
        assert!(text.contains("backend_hostname1 = 'pg-1'\n"));
        assert!(text.contains("backend_port1 = 5433\n"));
        assert!(text.contains("backend_port2 = 5432\n"));
        assert!(text.contains("backend_application_name2 = 'pg-2'\n"));
        assert!(text.contains(
            "failover_command = '/usr/local/bin/pgpool-sidecar hook --socket /run/pgpool-sidecar/hook.sock failover %d %P %m'\n"
        ));
        assert!(text.contains("follow_primary_command = ''\n"), "{text}");
        assert!(text.contains("health_check_period = 1\n"));
        assert!(text.contains("sr_check_period = 0\n"));
        assert!(text.contains("load_balance_mode = on\n"));
        assert!(!text.contains("s3cret"), "{text}");
    }

    /// The settings of `text` as pgpool reads them, by name; fails on a name set twice.
    fn settings(text: &str) -> BTreeMap<String, String> {
        let read = pgpool_reads(text).unwrap_or_else(|e| panic!("{e} in\n{text}"));
        let n = read.len();
        let map: BTreeMap<String, String> = read.into_iter().collect();
        assert_eq!(map.len(), n, "a setting is written twice:\n{text}");
        map
    }

    /// Names a version does not read, or reads only with a warning (src/config/
    /// pool_config_variables.c at V4_3_5, V4_4_17, V4_6_1, V4_7_STABLE).
    fn not_read_cleanly(version: PgpoolVersion) -> &'static [&'static str] {
        if version.at_least(4, 7) {
            &[
                "socket_dir",
                "logdir",
                "delegate_IP",
                "fail_over_on_backend_error",
            ]
        } else if version.at_least(4, 4) {
            &[
                "socket_dir",
                "work_dir",
                "delegate_IP",
                "fail_over_on_backend_error",
            ]
        } else {
            &[
                "unix_socket_directories",
                "work_dir",
                "delegate_ip",
                "fail_over_on_backend_error",
            ]
        }
    }

    #[test]
    fn renders_the_names_each_version_reads() {
        // (version, the socket directory's name, the status directory's name)
        let cases = [
            (V43, "socket_dir", "logdir"),
            (PgpoolVersion::new(4, 3, 0), "socket_dir", "logdir"),
            (V44, "unix_socket_directories", "logdir"),
            (V46, "unix_socket_directories", "logdir"),
            (V47, "unix_socket_directories", "work_dir"),
            (
                PgpoolVersion::new(5, 0, 0),
                "unix_socket_directories",
                "work_dir",
            ),
        ];
        let c = cfg(&[]);
        for (version, socket_dir, status_dir) in cases {
            let text = pgpool_conf(&c, &Paths::default(), version).unwrap();
            let s = settings(&text);
            let get = |k: &str| s.get(k).map(String::as_str);
            assert_eq!(get(socket_dir), Some("/var/run/pgpool"), "{version}");
            assert_eq!(get(status_dir), Some("/var/lib/pgpool"), "{version}");
            assert_eq!(get("pcp_socket_dir"), Some("/var/run/pgpool"), "{version}");
            for name in not_read_cleanly(version) {
                assert_eq!(get(name), None, "{version} does not read {name}:\n{text}");
            }
            // 4.6 has no default for the check users any more; every version gets ours.
            assert_eq!(get("sr_check_user"), Some("postgres"), "{version}");
            assert_eq!(get("health_check_user"), Some("postgres"), "{version}");
            assert_eq!(get("failover_on_backend_shutdown"), Some("on"), "{version}");
            assert_eq!(get("failover_on_backend_error"), Some("on"), "{version}");
            assert_eq!(get("pcp_listen_addresses"), Some(PCP_HOST), "{version}");
            assert_eq!(
                get("backend_clustering_mode"),
                Some("streaming_replication"),
                "{version}"
            );
        }
    }

    #[test]
    fn renamed_settings_take_the_name_the_version_reads() {
        let cases = [
            ("socket_dir", V43, "socket_dir"),
            ("socket_dir", V44, "unix_socket_directories"),
            ("unix_socket_directories", V43, "socket_dir"),
            ("unix_socket_directories", V47, "unix_socket_directories"),
            ("logdir", V46, "logdir"),
            ("logdir", V47, "work_dir"),
            ("work_dir", V46, "logdir"),
            ("work_dir", V47, "work_dir"),
            ("delegate_ip", V43, "delegate_IP"),
            ("delegate_IP", V43, "delegate_IP"),
            ("delegate_ip", V46, "delegate_ip"),
            ("delegate_IP", V46, "delegate_ip"),
            (
                "fail_over_on_backend_error",
                V43,
                "failover_on_backend_error",
            ),
            (
                "failover_on_backend_error",
                V47,
                "failover_on_backend_error",
            ),
            ("pcp_socket_dir", V47, "pcp_socket_dir"),
            ("num_init_children", V43, "num_init_children"),
        ];
        for (key, version, want) in cases {
            assert_eq!(setting_name(key, version), want, "{key} for {version}");
        }
    }

    #[test]
    fn pass_through_of_a_renamed_setting_follows_the_version() {
        let c = cfg(&[
            ("PGPOOL_CONF_SOCKET_DIR", "/tmp/sockets"),
            ("PGPOOL_CONF_DELEGATE_IP", ""),
            ("PGPOOL_CONF_FAIL_OVER_ON_BACKEND_ERROR", "off"),
        ]);
        let cases = [
            (V43, "socket_dir", "delegate_IP"),
            (V46, "unix_socket_directories", "delegate_ip"),
            (V47, "unix_socket_directories", "delegate_ip"),
        ];
        for (version, socket_dir, delegate_ip) in cases {
            let text = pgpool_conf(&c, &Paths::default(), version).unwrap();
            let s = settings(&text);
            let get = |k: &str| s.get(k).map(String::as_str);
            // The operator's value wins over ours, under the name this version reads.
            assert_eq!(get(socket_dir), Some("/tmp/sockets"), "{version}");
            assert_eq!(get(delegate_ip), Some(""), "{version}");
            assert_eq!(get("failover_on_backend_error"), Some("off"), "{version}");
            for name in not_read_cleanly(version) {
                assert_eq!(get(name), None, "{version} does not read {name}:\n{text}");
            }
        }
        let c = cfg(&[("PGPOOL_CONF_UNIX_SOCKET_DIRECTORIES", "/tmp/s")]);
        let s = settings(&pgpool_conf(&c, &Paths::default(), V43).unwrap());
        assert_eq!(s.get("socket_dir").map(String::as_str), Some("/tmp/s"));
        assert!(!s.contains_key("unix_socket_directories"));
    }

    #[test]
    fn both_names_of_the_status_directory_stay_reserved() {
        for key in ["logdir", "work_dir"] {
            assert!(reserved(key), "{key}");
            let var = format!("PGPOOL_CONF_{}", key.to_uppercase());
            let env = base_env(&[(var.as_str(), "/tmp")]);
            let src: &dyn EnvSource = &env;
            assert!(load(src).is_err(), "{key}");
            for version in [V43, V44, V46, V47] {
                let mut c = cfg(&[]);
                c.pgpool_conf.insert(key.into(), "/tmp".into());
                let err = pgpool_conf(&c, &Paths::default(), version).unwrap_err();
                assert!(matches!(err, ConfError::Reserved { .. }), "{key} {version}");
            }
        }
    }

    #[test]
    fn pass_through_overrides_and_quotes() {
        let c = cfg(&[
            ("PGPOOL_CONF_NUM_INIT_CHILDREN", "64"),
            ("PGPOOL_CONF_LOG_LINE_PREFIX", "%m %p "),
            ("PGPOOL_CONF_LOAD_BALANCE_MODE", "off"),
            ("PGPOOL_CONF_DELAY_THRESHOLD", "1e5"),
        ]);
        let text = pgpool_conf(&c, &Paths::default(), V46).unwrap();
        assert!(text.contains("num_init_children = 64\n"));
        assert!(text.contains("log_line_prefix = '%m %p '\n"));
        assert!(text.contains("load_balance_mode = off\n"));
        // Bare, pgpool's lexer would read `1e` and then fail on `5`.
        assert!(text.contains("delay_threshold = '1e5'\n"));
        assert_eq!(text.matches("num_init_children").count(), 1);
        // What the saturation metrics divide by follows the same override.
        assert_eq!(num_init_children(&c), Some(64));
        assert_eq!(
            num_init_children(&cfg(&[])),
            Some(DEFAULT_NUM_INIT_CHILDREN)
        );
        assert!(cfg(&[]).pgpool_conf.is_empty());
    }

    /// A model of pgpool's config lexer and parser (src/config/pool_config.l), written from its
    /// token rules, to check that what we write is what pgpool reads: the settings in order, or
    /// where it would stop with a syntax error.
    fn pgpool_reads(text: &str) -> Result<Vec<(String, String)>, String> {
        #[derive(Clone, Copy, PartialEq, Debug)]
        enum Tok {
            Eol,
            Key,
            Str,
            Unquoted,
            Int,
            Real,
            Equals,
            Error,
        }
        let letter = |b: u8| b.is_ascii_alphabetic() || b == b'_' || b >= 0x80;
        let letter_or_digit = |b: u8| letter(b) || b.is_ascii_digit();
        let run = |s: &[u8], from: usize, f: &dyn Fn(u8) -> bool| {
            s[from..].iter().take_while(|b| f(**b)).count()
        };
        // Longest match of `'([^'\n]|\\.)*'`: which positions the pattern can be in after each byte.
        let string_len = |s: &[u8]| -> usize {
            if s.first() != Some(&b'\'') {
                return 0;
            }
            let (mut inside, mut escaped, mut best) = (true, false, 0);
            for (i, &b) in s.iter().enumerate().skip(1) {
                let (was_in, was_esc) = (inside, escaped);
                inside = (was_in && b != b'\'' && b != b'\n') || (was_esc && b != b'\n');
                escaped = was_in && b == b'\\';
                if was_in && b == b'\'' {
                    best = i + 1;
                }
                if !inside && !escaped {
                    break;
                }
            }
            best
        };
        let int_len = |s: &[u8]| -> usize {
            let sign = usize::from(matches!(s.first(), Some(b'-' | b'+')));
            let hex =
                s[sign..].starts_with(b"0x") && s.get(sign + 2).is_some_and(u8::is_ascii_hexdigit);
            let digits = if hex {
                2 + run(s, sign + 2, &|b| b.is_ascii_hexdigit())
            } else {
                run(s, sign, &|b| b.is_ascii_digit())
            };
            if digits == 0 {
                return 0;
            }
            let n = sign + digits;
            n + run(s, n, &|b| b.is_ascii_alphabetic())
        };
        let real_len = |s: &[u8]| -> usize {
            let sign = usize::from(matches!(s.first(), Some(b'-' | b'+')));
            let mut n = sign + run(s, sign, &|b| b.is_ascii_digit());
            if s.get(n) != Some(&b'.') {
                return 0;
            }
            n += 1;
            n += run(s, n, &|b| b.is_ascii_digit());
            if matches!(s.get(n), Some(b'e' | b'E')) {
                let mut m = n + 1;
                m += usize::from(matches!(s.get(m), Some(b'-' | b'+')));
                let d = run(s, m, &|b| b.is_ascii_digit());
                if d > 0 {
                    n = m + d;
                }
            }
            n
        };
        let bytes = text.as_bytes();
        let mut tokens: Vec<(Tok, &str)> = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let s = &bytes[i..];
            match s[0] {
                b'\n' => {
                    tokens.push((Tok::Eol, "\n"));
                    i += 1;
                    continue;
                }
                b' ' | b'\t' | b'\r' => {
                    i += 1;
                    continue;
                }
                b'#' => {
                    i += run(bytes, i, &|b| b != b'\n');
                    continue;
                }
                _ => {}
            }
            let key = if letter(s[0]) {
                1 + run(s, 1, &letter_or_digit)
            } else {
                0
            };
            let unquoted = if letter(s[0]) {
                1 + run(s, 1, &|b| letter_or_digit(b) || b"-._:/".contains(&b))
            } else {
                0
            };
            // Flex: the longest match wins, the earlier rule on a tie.
            let candidates = [
                (Tok::Key, key),
                (Tok::Str, string_len(s)),
                (Tok::Unquoted, unquoted),
                (Tok::Int, int_len(s)),
                (Tok::Real, real_len(s)),
                (Tok::Equals, usize::from(s[0] == b'=')),
            ];
            let (tok, len) =
                candidates.iter().fold(
                    (Tok::Error, 0),
                    |best, &(t, n)| if n > best.1 { (t, n) } else { best },
                );
            let len = len.max(1);
            tokens.push((tok, &text[i..i + len]));
            i += len;
        }
        let mut out = Vec::new();
        let mut it = tokens.into_iter().peekable();
        while let Some((tok, t)) = it.next() {
            match tok {
                Tok::Eol => continue,
                Tok::Key => {}
                _ => return Err(format!("syntax error at {t:?}")),
            }
            let mut value = it.next().ok_or("key without value")?;
            if value.0 == Tok::Equals {
                value = it.next().ok_or("key without value")?;
            }
            let v = match value {
                (Tok::Str, v) => v[1..v.len() - 1].to_string(),
                (Tok::Eol | Tok::Error, v) => return Err(format!("bad value {v:?}")),
                (_, v) => v.to_string(),
            };
            out.push((t.to_string(), v));
        }
        Ok(out)
    }

    #[test]
    fn the_model_lexer_reads_like_pgpool() {
        let read = pgpool_reads("a = 'x' b = 'y'\nc 5\nd = 'p\\'q'\ne = 1kB\n").unwrap();
        let read: Vec<(&str, &str)> = read.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            read,
            [
                ("a", "x"),
                ("b", "y"),
                ("c", "5"),
                ("d", "p\\'q"),
                ("e", "1kB")
            ]
        );
        assert!(pgpool_reads("a = 'it''s'\n").is_err());
        // `1e` is a number with a unit, and `5` cannot start a setting.
        assert!(pgpool_reads("e = 1e5\n").is_err());
        assert!(pgpool_reads("a = 'open\n").is_err());
    }

    #[test]
    fn pgpool_reads_every_setting_exactly_as_given() {
        let tricky = [
            "'%m' failover_command = '/x %d'",
            "%m' failover_command = '/x %d",
            "it's %p",
            "'quoted'",
            "ends with a backslash \\",
            "C:\\dir\\",
            "x\\'y",
            "1e5",
            "0x1F",
            "-3",
            "+3",
            ".5",
            "inf",
            "on",
            "# not a comment",
            "a = b",
            "caf\u{e9}",
            "",
        ];
        let paths = Paths::default();
        let expected_hook = pgpool_reads(&pgpool_conf(&cfg(&[]), &paths, V46).unwrap()).unwrap();
        let hook = |r: &[(String, String)]| {
            r.iter()
                .filter(|(k, _)| k.ends_with("_command"))
                .cloned()
                .collect::<Vec<_>>()
        };
        for value in tricky {
            let env = base_env(&[("PGPOOL_CONF_LOG_LINE_PREFIX", value)]);
            let src: &dyn EnvSource = &env;
            let c = match load(src) {
                Ok(c) => c,
                Err(e) => {
                    // Refused instead: then with the variable named.
                    assert_eq!(e.problems.len(), 1, "{value:?}: {e}");
                    assert_eq!(e.problems[0].var, "PGPOOL_CONF_LOG_LINE_PREFIX");
                    continue;
                }
            };
            let text = pgpool_conf(&c, &paths, V46).unwrap();
            let read = pgpool_reads(&text).unwrap_or_else(|e| panic!("{value:?}: {e} in\n{text}"));
            let prefixes: Vec<&str> = read
                .iter()
                .filter(|(k, _)| k == "log_line_prefix")
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(prefixes, [value], "{text}");
            assert_eq!(hook(&read), hook(&expected_hook), "{value:?}");
            let mut keys: Vec<&String> = read.iter().map(|(k, _)| k).collect();
            let n = keys.len();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), n, "a key is set twice for {value:?}");
        }
    }

    #[test]
    fn include_is_refused() {
        let env = base_env(&[("PGPOOL_CONF_INCLUDE", "/tmp/other.conf")]);
        let src: &dyn EnvSource = &env;
        let err = load(src).unwrap_err();
        assert_eq!(err.problems[0].var, "PGPOOL_CONF_INCLUDE");
        // A Config built some other way is refused when rendered, too.
        let mut c = cfg(&[]);
        c.pgpool_conf
            .insert("include".into(), "/tmp/other.conf".into());
        let err = pgpool_conf(&c, &Paths::default(), V46).unwrap_err();
        assert!(err.to_string().contains("PGPOOL_CONF_INCLUDE"), "{err}");
    }

    #[test]
    fn reserved_keys_are_refused_with_the_variable_name() {
        let env = base_env(&[("PGPOOL_CONF_FAILOVER_COMMAND", "/bin/true")]);
        let src: &dyn EnvSource = &env;
        let err = load(src).unwrap_err();
        assert_eq!(err.problems[0].var, "PGPOOL_CONF_FAILOVER_COMMAND");
        for key in ["failover_command", "backend_hostname0", "sr_check_password"] {
            let mut c = cfg(&[]);
            c.pgpool_conf.insert(key.into(), "evil".into());
            let err = pgpool_conf(&c, &Paths::default(), V46).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("PGPOOL_CONF_{}", key.to_uppercase())),
                "{err}"
            );
        }
    }

    #[test]
    fn unreadable_values_are_not_rendered() {
        let mut c = cfg(&[]);
        c.pgpool_conf
            .insert("log_line_prefix".into(), "a' b = 'c".into());
        assert!(pgpool_conf(&c, &Paths::default(), V46).is_err());
        let mut c = cfg(&[]);
        c.superuser = "x'y".into();
        assert!(pgpool_conf(&c, &Paths::default(), V46).is_err());
        let mut c = cfg(&[]);
        c.hook_socket = "/tmp/x;reboot".into();
        assert!(pgpool_conf(&c, &Paths::default(), V46).is_err());
    }

    #[test]
    fn pcppass_escapes_colon_and_backslash() {
        let mut c = cfg(&[("PGPOOL_SIDECAR_PCP_PASSWORD", "p:w\\d")]);
        assert_eq!(pcppass(&c), "127.0.0.1:9898:pcpadmin:p\\:w\\\\d\n");
        c.pcp_user = "pcp\\x".into();
        assert_eq!(pcppass(&c), "127.0.0.1:9898:pcp\\\\x:p\\:w\\\\d\n");
    }

    #[test]
    fn auth_files() {
        let c = cfg(&[]);
        // md5("s3cret-pcp")
        let digest = Md5::digest(b"s3cret-pcp");
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(pcp_conf(&c), format!("pcpadmin:{hex}\n"));
        assert!(!pcp_conf(&c).contains("s3cret"));
        assert_eq!(pcppass(&c), "127.0.0.1:9898:pcpadmin:s3cret-pcp\n");
        assert_eq!(pool_passwd(&c, &[]), "postgres:TEXTs3cret-super\n");
        let app = crate::users::AppUser {
            name: "app".into(),
            password: crate::config::Secret::new("a:b c"),
        };
        assert_eq!(
            pool_passwd(&c, &[app]),
            "postgres:TEXTs3cret-super\napp:TEXTa\\:b c\n"
        );
        assert_eq!(status_file(&[true, false, true]), "up\ndown\nup\n");
    }

    #[test]
    fn tls_is_on_and_its_keys_are_the_sidecar_s() {
        let paths = Paths::default();
        let s = settings(&pgpool_conf(&cfg(&[]), &paths, V46).unwrap());
        let get = |k: &str| s.get(k).map(String::as_str);
        assert_eq!(get("ssl"), Some("on"));
        assert_eq!(get("ssl_cert"), Some("/etc/pgpool2/server.crt"));
        assert_eq!(get("ssl_key"), Some("/etc/pgpool2/server.key"));
        // Without a CA pgpool neither asks clients for certificates nor checks the nodes'.
        assert_eq!(get("ssl_ca_cert"), None);
        let mut c = cfg(&[]);
        c.tls_ca_file = Some("/run/secrets/ca.crt".into());
        let s = settings(&pgpool_conf(&c, &paths, V46).unwrap());
        assert_eq!(
            s.get("ssl_ca_cert").map(String::as_str),
            Some("/etc/pgpool2/root.crt")
        );
        for key in [
            "ssl",
            "ssl_cert",
            "ssl_key",
            "ssl_ca_cert",
            "ssl_ca_cert_dir",
        ] {
            assert!(reserved(key), "{key}");
        }
        assert!(!reserved("ssl_ciphers"));
    }

    #[test]
    fn a_certificate_without_its_key_is_refused_naming_the_variable() {
        let env = base_env(&[("PGPOOL_SIDECAR_TLS_CERT_FILE", "/nonexistent/tls.crt")]);
        let src: &dyn EnvSource = &env;
        let err = load(src).unwrap_err();
        let vars: Vec<&str> = err.problems.iter().map(|p| p.var.as_str()).collect();
        assert!(vars.contains(&"PGPOOL_SIDECAR_TLS_KEY_FILE"), "{err}");
        assert!(vars.contains(&"PGPOOL_SIDECAR_TLS_CERT_FILE"), "{err}");
        assert!(err.to_string().contains("/nonexistent/tls.crt"), "{err}");
    }
}
