//! pgpool's configuration files, rendered from the sidecar's config.
//!
//! Reads: the sidecar config. Changes: nothing by itself — pure functions returning file contents;
//! the supervisor writes them once at start and before every pgpool restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("PGPOOL_CONF_{}: `{key}` is managed by pgpool-sidecar and cannot be overridden", .key.to_uppercase())]
    Reserved { key: String },
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
}

/// Where pgpool's files live inside the image.
#[derive(Debug, Clone)]
pub struct Paths {
    pub conf_dir: PathBuf,
    pub run_dir: PathBuf,
    /// pgpool's `logdir`: it keeps `pgpool_status` there.
    pub status_dir: PathBuf,
    pub sidecar_bin: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            conf_dir: "/etc/pgpool2".into(),
            run_dir: "/var/run/pgpool".into(),
            status_dir: "/var/lib/pgpool".into(),
            sidecar_bin: "/usr/local/bin/pgpool-sidecar".into(),
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
}

/// Keys whose value the sidecar's safety depends on: a pass-through may not change them.
fn reserved(key: &str) -> bool {
    key.starts_with("backend_")
        || matches!(
            key,
            "failover_command"
                | "follow_primary_command"
                | "failback_command"
                | "pool_passwd"
                | "logdir"
                | "pcp_port"
                | "port"
                | "backend_clustering_mode"
                | "auto_failback"
                | "enable_pool_hba"
        )
}

/// A value as pgpool.conf wants it: numbers and booleans bare, everything else single-quoted.
fn quote(value: &str) -> String {
    let bare = value.parse::<f64>().is_ok()
        || matches!(
            value.to_ascii_lowercase().as_str(),
            "on" | "off" | "true" | "false"
        )
        || (value.len() >= 2 && value.starts_with('\'') && value.ends_with('\''));
    if bare {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', "''"))
    }
}

/// pgpool.conf. Passwords are not in it: pgpool reads them from pool_passwd when the
/// `*_password` settings are empty.
pub fn pgpool_conf(cfg: &Config, paths: &Paths) -> Result<String, ConfError> {
    let mut s: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        s.insert(k.to_string(), quote(v));
    };
    set("backend_clustering_mode", "streaming_replication");
    set("listen_addresses", "*");
    set("port", &cfg.pgpool_port.to_string());
    set("unix_socket_directories", &paths.run_dir.to_string_lossy());
    set("pcp_listen_addresses", "localhost");
    set("pcp_port", &cfg.pcp_port.to_string());
    set("pcp_socket_dir", &paths.run_dir.to_string_lossy());
    set(
        "pid_file_name",
        &paths.run_dir.join("pgpool.pid").to_string_lossy(),
    );
    set("logdir", &paths.status_dir.to_string_lossy());
    set("log_destination", "stderr");
    set("logging_collector", "off");
    set("log_line_prefix", "%m: %a pid %p: ");
    set("num_init_children", "32");
    set("max_pool", "2");
    set("enable_pool_hba", "on");
    set("pool_passwd", "pool_passwd");
    set("allow_clear_text_frontend_auth", "off");
    set("load_balance_mode", "on");
    set("statement_level_load_balance", "off");
    set("sr_check_period", "1");
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
    set("search_primary_node_timeout", "10");
    set("auto_failback", "off");
    set("detach_false_primary", "off");
    let hook = |kind: &str, args: &str| {
        format!(
            "{} hook --socket {} {kind} {args}",
            paths.sidecar_bin.display(),
            cfg.hook_socket.display()
        )
    };
    set("failover_command", &hook("failover", "%d %P %m"));
    set("follow_primary_command", &hook("follow-primary", "%d %m"));
    for (i, node) in cfg.nodes.iter().enumerate() {
        set(&format!("backend_hostname{i}"), &node.host);
        set(&format!("backend_port{i}"), &node.port.to_string());
        set(&format!("backend_weight{i}"), "1");
        set(&format!("backend_flag{i}"), "ALLOW_TO_FAILOVER");
        set(&format!("backend_application_name{i}"), &node.host);
    }
    for (k, v) in &cfg.pgpool_conf {
        if reserved(k) {
            return Err(ConfError::Reserved { key: k.clone() });
        }
        s.insert(k.clone(), quote(v));
    }
    let mut out = String::from("# Written by pgpool-sidecar at start; edits are overwritten.\n");
    for (k, v) in s {
        out.push_str(&format!("{k} = {v}\n"));
    }
    Ok(out)
}

/// pcp.conf: `user:md5(password)`.
pub fn pcp_conf(cfg: &Config) -> String {
    let digest = Md5::digest(cfg.pcp_password.expose().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}:{hex}\n", cfg.pcp_user)
}

/// The PCP password file our own `pcp_*` calls use (PCPPASSFILE).
pub fn pcppass(cfg: &Config) -> String {
    format!(
        "localhost:{}:{}:{}\n",
        cfg.pcp_port,
        cfg.pcp_user,
        cfg.pcp_password.expose()
    )
}

/// pool_passwd with clear-text entries: SCRAM towards the backends needs the password itself.
/// The file is mode 0600 inside the sidecar's container.
pub fn pool_passwd(cfg: &Config) -> String {
    format!(
        "{}:TEXT{}\n",
        cfg.superuser,
        cfg.superuser_password.expose()
    )
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

pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), ConfError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |e: std::io::Error| ConfError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(err)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, EnvSource};

    fn cfg(extra: &[(&str, &str)]) -> Config {
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
        let src: &dyn EnvSource = &env;
        load(src).expect("valid config")
    }

    #[test]
    fn renders_backends_hooks_and_no_passwords() {
        let c = cfg(&[]);
        let text = pgpool_conf(&c, &Paths::default()).unwrap();
        assert!(text.contains("backend_clustering_mode = 'streaming_replication'\n"));
        assert!(text.contains("backend_hostname1 = 'pg-1'\n"));
        assert!(text.contains("backend_port1 = 5433\n"));
        assert!(text.contains("backend_port2 = 5432\n"));
        assert!(text.contains("backend_application_name2 = 'pg-2'\n"));
        assert!(text.contains(
            "failover_command = '/usr/local/bin/pgpool-sidecar hook --socket /run/pgpool-sidecar/hook.sock failover %d %P %m'\n"
        ));
        assert!(text.contains("follow_primary_command = '/usr/local/bin/pgpool-sidecar hook"));
        assert!(text.contains("health_check_period = 1\n"));
        assert!(text.contains("sr_check_period = 1\n"));
        assert!(text.contains("load_balance_mode = on\n"));
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn pass_through_overrides_and_quotes() {
        let c = cfg(&[
            ("PGPOOL_CONF_NUM_INIT_CHILDREN", "64"),
            ("PGPOOL_CONF_LOG_LINE_PREFIX", "it's %p"),
            ("PGPOOL_CONF_LOAD_BALANCE_MODE", "off"),
        ]);
        let text = pgpool_conf(&c, &Paths::default()).unwrap();
        assert!(text.contains("num_init_children = 64\n"));
        assert!(text.contains("log_line_prefix = 'it''s %p'\n"));
        assert!(text.contains("load_balance_mode = off\n"));
        assert_eq!(text.matches("num_init_children").count(), 1);
    }

    #[test]
    fn reserved_keys_are_refused_with_the_variable_name() {
        let c = cfg(&[("PGPOOL_CONF_FAILOVER_COMMAND", "/bin/true")]);
        let err = pgpool_conf(&c, &Paths::default()).unwrap_err();
        assert!(
            err.to_string().contains("PGPOOL_CONF_FAILOVER_COMMAND"),
            "{err}"
        );
        let c = cfg(&[("PGPOOL_CONF_BACKEND_HOSTNAME0", "evil")]);
        assert!(pgpool_conf(&c, &Paths::default()).is_err());
    }

    #[test]
    fn auth_files() {
        let c = cfg(&[]);
        // md5("s3cret-pcp")
        let digest = Md5::digest(b"s3cret-pcp");
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(pcp_conf(&c), format!("pcpadmin:{hex}\n"));
        assert!(!pcp_conf(&c).contains("s3cret"));
        assert_eq!(pcppass(&c), "localhost:9898:pcpadmin:s3cret-pcp\n");
        assert_eq!(pool_passwd(&c), "postgres:TEXTs3cret-super\n");
        assert_eq!(status_file(&[true, false, true]), "up\ndown\nup\n");
    }
}
