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
//!
//! Every `PGPOOL_SIDECAR_*` setting is one line of the table in `settings.rs`; the `Config`
//! field, the accepted names, the reading, `Debug` and [`Config::redacted`] all come from it.
//! `parse.rs` turns one value into a typed one, `cross.rs` holds the checks that look at
//! several settings, `kinds.rs` the "unset, empty, secret file" rules shared by all settings.

mod cross;
mod kinds;
mod parse;
mod redact;
mod settings;
mod source;
#[cfg(test)]
mod tests;
mod types;

use std::collections::BTreeMap;
use std::fmt;

pub use settings::Config;
pub(crate) use source::read_secret_file;
pub use source::{EnvSource, ProcessEnv};
pub use types::{LogFormat, NodeAddr, Secret, UsersInput};

/// Prefix of the sidecar's own variables.
pub const ENV_PREFIX: &str = "PGPOOL_SIDECAR_";
/// Prefix of variables copied into pgpool.conf (`PGPOOL_CONF_NUM_INIT_CHILDREN=64`).
pub const PGPOOL_CONF_PREFIX: &str = "PGPOOL_CONF_";
/// Where the daemon listens for pgpool's failover callbacks unless `HOOK_SOCKET` says otherwise.
pub const DEFAULT_HOOK_SOCKET: &str = "/run/pgpool-sidecar/hook.sock";
/// On the pgpool service's named volume in the compose file.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/pgpool-sidecar/state.json";
/// Enough for a standby to be away through a restart or a short outage under moderate writes,
/// small enough not to fill a modest volume.
pub const DEFAULT_MAX_SLOT_WAL_KEEP_SIZE: u64 = 1 << 30;

const REDACTED: &str = "<redacted>";
const DEFAULT_PG_PORT: u16 = 5432;
const DEFAULT_PCP_PORT: u16 = 9898;
const DEFAULT_HTTP_PORT: u16 = 9720;

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

/// Collects problems while validating; every check gives a usable placeholder on failure so
/// the remaining variables are still checked.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    /// Records a problem with the variable `ENV_PREFIX` + `name`.
    fn problem(&mut self, name: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            var: format!("{ENV_PREFIX}{name}"),
            message: message.into(),
        });
    }
}

/// Reads and validates the configuration, reporting every problem at once.
pub fn load(env: &dyn EnvSource) -> Result<Config, ConfigError> {
    // Last value wins, and a sorted map keeps the order of reported problems stable.
    let vars: BTreeMap<String, String> = env.vars().into_iter().collect();

    let mut unknown = Vec::new();
    let mut ours = BTreeMap::new();
    let mut pgpool_conf = BTreeMap::new();
    let mut conf_problems = Vec::new();
    for (key, value) in vars {
        if let Some(name) = key.strip_prefix(ENV_PREFIX) {
            // Exact names only: the environment is case-sensitive, and a name nothing reads
            // would otherwise fall back to a default without a word.
            if settings::known_names().any(|known| known == name) {
                ours.insert(name.to_owned(), value);
            } else {
                let message = unknown_message(name);
                unknown.push(Problem { var: key, message });
            }
        } else if let Some(name) = key.strip_prefix(PGPOOL_CONF_PREFIX) {
            match parse::pgpool_conf_name(name, &value) {
                Ok(name) => {
                    pgpool_conf.insert(name, value);
                }
                Err(message) => conf_problems.push(Problem { var: key, message }),
            }
        }
    }

    let mut ck = Checker::default();
    let read = settings::read(&mut ck, &ours);
    ck.problems.extend(unknown);
    ck.problems.extend(conf_problems);
    if !ck.problems.is_empty() {
        return Err(ConfigError {
            problems: ck.problems,
        });
    }
    read.finish(pgpool_conf).map_err(|name| ConfigError {
        // Every setting without a value has reported why; this only keeps a bug from becoming
        // a panic instead of exit 64.
        problems: vec![Problem {
            var: format!("{ENV_PREFIX}{name}"),
            message: "has no value although no problem was found (a bug)".to_owned(),
        }],
    })
}

fn unknown_message(name: &str) -> String {
    let closest = settings::known_names()
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
