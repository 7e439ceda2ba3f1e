//! The table of `PGPOOL_SIDECAR_*` settings, and everything derived from it: the [`Config`]
//! struct, the accepted variable names, reading them in order, `Debug` and
//! [`Config::redacted`].
//!
//! Reads: the sidecar's variables, through the kind functions in `kinds.rs`. Changes: the
//! problem list.
//!
//! Adding a setting is one line in the table (plus its parser in `parse.rs` if none fits).
//! Each line is `field: Type = "NAME", kind(arguments)[, then check];` where kind is one of
//! `kinds.rs`: `value(parse, default)`, `optional(parse)`, `after(parse, default)` (both look at
//! settings above), `required(parse, missing, empty)`, `secret(fits)` and
//! `optional_secret(fits)`; the last two also accept `NAME_FILE`. `then check` runs a check of
//! `cross.rs` once the setting is read.
//!
//! The table's order is the order settings are read and problems reported, and a setting can
//! only look at settings above it, which is why `pcp_password` comes after the ports.
//! `tests.rs` pins the accepted names, because renaming one breaks deployed compose files.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::kinds::{self, Vars};
use super::DEFAULT_STATE_FILE;
use super::{cross, parse, redact, Checker, LogFormat, NodeAddr, Secret, UsersInput};
use super::{DEFAULT_HOOK_SOCKET, DEFAULT_HTTP_PORT, DEFAULT_MAX_SLOT_WAL_KEEP_SIZE};
use super::{DEFAULT_PCP_PORT, DEFAULT_PG_PORT};
use crate::pgpool::conf;

/// The names a setting accepts after the prefix; secrets also take a file.
macro_rules! spellings {
    (secret, $name:literal) => {
        &[$name, concat!($name, "_FILE")]
    };
    (optional_secret, $name:literal) => {
        &[$name, concat!($name, "_FILE")]
    };
    (users, $name:literal) => {
        &[$name, concat!($name, "_FILE")]
    };
    ($kind:ident, $name:literal) => {
        &[$name]
    };
}

macro_rules! settings {
    (
        $(#[doc = $struct_doc:literal])*
        pub struct Config {
            $(
                $(#[doc = $doc:literal])*
                $field:ident: $ty:ty = $name:literal,
                    $kind:ident($($arg:expr),* $(,)?) $(, then $check:path)?;
            )*
        }
    ) => {
        $(#[doc = $struct_doc])*
        #[derive(Clone)]
        pub struct Config {
            $(
                $(#[doc = $doc])*
                pub $field: $ty,
            )*
            /// Extra pgpool.conf settings (lowercase name → raw value); the renderer quotes them.
            pub pgpool_conf: BTreeMap<String, String>,
        }

        /// The settings read so far. `None` means invalid and reported; a setting with a
        /// default holds it even when its own value was invalid, so later checks still run.
        #[derive(Default)]
        pub(super) struct Earlier {
            $(pub(super) $field: Option<$ty>,)*
        }

        /// Every accepted name after the prefix, per setting.
        const KNOWN: &[&[&str]] = &[$(spellings!($kind, $name)),*];

        /// Reads every setting in table order, recording all problems.
        pub(super) fn read(ck: &mut Checker, vars: &Vars) -> Earlier {
            let mut earlier = Earlier::default();
            $(
                earlier.$field = kinds::$kind(ck, vars, $name, &earlier, $($arg),*);
                $($check(ck, &earlier);)?
            )*
            earlier
        }

        impl Earlier {
            /// The configuration, or the name of a setting that has no value.
            pub(super) fn finish(
                self,
                pgpool_conf: BTreeMap<String, String>,
            ) -> Result<Config, &'static str> {
                Ok(Config {
                    $($field: self.$field.ok_or($name)?,)*
                    pgpool_conf,
                })
            }
        }

        // Not derived: pass-through pgpool settings such as `sr_check_password` can hold
        // secrets that are plain strings here.
        impl fmt::Debug for Config {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("Config")
                    $(.field(stringify!($field), &self.$field))*
                    .field("pgpool_conf", &redact::RedactedConf(&self.pgpool_conf))
                    .finish()
            }
        }

        impl Config {
            /// The effective configuration as JSON with every secret replaced by `<redacted>`,
            /// for `configcheck` and `/status`.
            pub fn redacted(&self) -> serde_json::Value {
                let mut m = serde_json::Map::new();
                $(m.insert(stringify!($field).to_owned(), redact::Show::show(&self.$field));)*
                m.insert("pgpool_conf".to_owned(), redact::pgpool_conf(&self.pgpool_conf));
                serde_json::Value::Object(m)
            }
        }
    };
}

/// Every accepted name after [`ENV_PREFIX`](super::ENV_PREFIX); anything else is reported, so a
/// typo does not silently fall back to a default.
pub(super) fn known_names() -> impl Iterator<Item = &'static str> {
    KNOWN.iter().flat_map(|names| names.iter().copied())
}

settings! {
    /// The validated configuration.
    pub struct Config {
        /// The PostgreSQL nodes, in pgpool backend order; the first is the primary at bootstrap,
        /// so a fresh cluster has a defined owner of its data.
        nodes: Vec<NodeAddr> = "NODES", required(
            parse::nodes,
            "is required (e.g. db1:5432,db2:5432)",
            "is empty; list at least one host[:port]",
        );
        /// Role used for probes, promotion and re-pointing standbys, which need superuser rights.
        superuser: String = "SUPERUSER", value(parse::superuser, "postgres".to_owned());
        /// Password of `superuser`.
        superuser_password: Secret = "SUPERUSER_PASSWORD",
            secret(|v, _| conf::pool_passwd_password_problem(v).map(str::to_owned));
        /// Role standbys stream with; written into `primary_conninfo` and used by
        /// basebackup/rewind.
        replication_user: String = "REPLICATION_USER",
            value(parse::role_name, "replicator".to_owned());
        /// Password of `replication_user`.
        // It goes into primary_conninfo in postgresql.auto.conf, whose strings (and ALTER
        // SYSTEM) take no newline.
        replication_password: Secret = "REPLICATION_PASSWORD",
            secret(|v, _| conf::line_field_problem(v).map(str::to_owned));
        /// Application users that log in through pgpool: each is made a login role on the
        /// primary with its password and written into pool_passwd. The file form is watched,
        /// so a password is rotated by editing it (format: `users::declared`).
        users: Option<UsersInput> = "USERS", users(|text, from_file, e: &Earlier| {
            crate::users::declaration_problem(
                text,
                from_file,
                e.superuser.as_deref(),
                e.replication_user.as_deref(),
            )
        });
        /// PCP account, needed to attach/detach nodes in pgpool.
        pcp_user: String = "PCP_USER", value(parse::pcp_user, "pcpadmin".to_owned());
        /// Port pgpool's PCP listens on inside this container.
        pcp_port: u16 = "PCP_PORT", value(parse::port, DEFAULT_PCP_PORT);
        /// Port pgpool serves clients on inside this container.
        pgpool_port: u16 = "PGPOOL_PORT", value(parse::port, DEFAULT_PG_PORT);
        /// Password of `pcp_user`; also written to pgpool's `pcp.conf` as an MD5 hash.
        pcp_password: Secret = "PCP_PASSWORD", secret(cross::pcp_password_problem);
        /// Address of the HTTP server (`/status`, `/metrics`, mutating endpoints). Port 0 picks
        /// an ephemeral port, which tests use.
        http_listen: SocketAddr = "HTTP_LISTEN",
            value(parse::listen, SocketAddr::from(([0, 0, 0, 0], DEFAULT_HTTP_PORT))),
            then cross::port_clashes;
        /// Bearer token for mutating endpoints; `None` switches them off, because the sidecar
        /// holds the Docker socket and must not be steerable by anyone who can reach the port.
        api_token: Option<Secret> = "API_TOKEN",
            optional_secret(|v, _| parse::api_token_problem(v));
        /// Time between SQL probes of each node; bounds how fast a hung primary is noticed.
        probe_interval: Duration = "PROBE_INTERVAL",
            value(parse::duration, Duration::from_secs(1));
        /// How long one probe may take before it counts as failed.
        probe_timeout: Duration = "PROBE_TIMEOUT",
            value(parse::probe_timeout, Duration::from_secs(1));
        /// Consecutive failed probes before a node counts as down, so one slow query does not
        /// fence a healthy primary.
        probe_failures: u32 = "PROBE_FAILURES", value(parse::probe_failures, 3);
        /// Text for people, JSON for log shippers.
        log_format: LogFormat = "LOG_FORMAT", value(parse::log_format, LogFormat::Text);
        /// Compose project whose containers the sidecar may touch; `None` means the daemon
        /// detects its own project. Limits the blast radius of the Docker socket.
        compose_project: Option<String> = "COMPOSE_PROJECT", optional(parse::text);
        /// Label (`key`, `value`) a container must carry before the sidecar acts on it, for the
        /// same reason.
        cluster_label: Option<(String, String)> = "CLUSTER_LABEL", optional(parse::label);
        /// A standby further behind than this many bytes is not promoted automatically, trading
        /// availability for bounded data loss.
        max_lag_on_failover: u64 = "MAX_LAG_ON_FAILOVER", value(parse::bytes, 16 * 1024 * 1024);
        /// How many standbys run synchronously; always fewer than the nodes, so the primary can
        /// be alone.
        synchronous_standbys: u32 = "SYNCHRONOUS_STANDBYS",
            after(cross::synchronous_standbys, |_| 0);
        /// Failover preference per node (index = node id); higher wins when standbys are equally
        /// advanced.
        priorities: Vec<i32> = "PRIORITIES", after(cross::priorities, cross::no_priorities);
        /// Bring failed or diverged nodes back as standbys without an operator.
        auto_rejoin: bool = "AUTO_REJOIN", value(parse::boolean, true);
        /// Switch back to the preferred node once it has rejoined.
        auto_failback: bool = "AUTO_FAILBACK", value(parse::boolean, false);
        /// Node id that should be primary when there is a choice (failback target).
        preferred_primary: Option<usize> = "PREFERRED_PRIMARY",
            after(cross::preferred_primary, |_| None);
        /// Unix socket where pgpool's failover hook reaches the daemon.
        hook_socket: PathBuf = "HOOK_SOCKET",
            value(parse::hook_socket, PathBuf::from(DEFAULT_HOOK_SOCKET));
        /// Longest a rewind/rebuild job container may run before it is given up.
        job_timeout: Duration = "JOB_TIMEOUT", value(parse::duration, Duration::from_secs(600));
        /// The state file (fenced nodes, operator stops, the primary, operations in flight) that
        /// lets a restarted sidecar finish what it was doing; on a volume of the pgpool service.
        state_path: PathBuf = "STATE_PATH",
            value(parse::state_path, PathBuf::from(DEFAULT_STATE_FILE));
        /// Keep one physical replication slot per standby on the primary, so a standby that was
        /// away catches up from the primary's WAL instead of being rebuilt.
        replication_slots: bool = "REPLICATION_SLOTS", value(parse::boolean, true),
            then cross::slot_clashes;
        /// The primary's `max_slot_wal_keep_size` in bytes (`None`: no limit): how much WAL the
        /// slots may hold for absent standbys before the disk is protected and they need a
        /// rebuild.
        max_slot_wal_keep_size: Option<u64> = "MAX_SLOT_WAL_KEEP_SIZE",
            value(parse::slot_limit, Some(DEFAULT_MAX_SLOT_WAL_KEEP_SIZE));
        /// PEM certificate (chain) pgpool serves to clients; with `tls_key_file`, or neither,
        /// when pgpool serves a self-signed one it made (see `tls.rs`).
        tls_cert_file: Option<PathBuf> = "TLS_CERT_FILE", optional(crate::tls::file_path);
        /// PEM private key of `tls_cert_file`; copied for pgpool, never shown.
        tls_key_file: Option<PathBuf> = "TLS_KEY_FILE", optional(crate::tls::file_path);
        /// PEM CA that pgpool checks client certificates against (`ssl_ca_cert`); pgpool checks
        /// the nodes' server certificates against it too.
        tls_ca_file: Option<PathBuf> = "TLS_CA_FILE", optional(crate::tls::file_path),
            then cross::tls_files;
    }
}
