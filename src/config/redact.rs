//! How each setting appears in [`Config::redacted`](super::Config::redacted) and `Debug`.
//!
//! Reads and changes nothing. The JSON form is chosen by type, so a new [`Secret`] setting is
//! redacted without anyone remembering to; pass-through pgpool settings are untyped and are
//! matched by name instead.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{LogFormat, NodeAddr, Secret, UsersInput, REDACTED};

/// The JSON shown for a setting's value.
pub(super) trait Show {
    fn show(&self) -> Value;
}

impl Show for Secret {
    fn show(&self) -> Value {
        REDACTED.into()
    }
}

/// The file's path is shown (it is no secret); the users and passwords are not.
impl Show for UsersInput {
    fn show(&self) -> Value {
        json!({ "text": REDACTED, "file": self.file.as_ref().map(|p| p.display().to_string()) })
    }
}

impl<T: Show> Show for Option<T> {
    fn show(&self) -> Value {
        self.as_ref().map_or(Value::Null, Show::show)
    }
}

macro_rules! show_via_from {
    ($($ty:ty),*) => {
        $(impl Show for $ty {
            fn show(&self) -> Value {
                Value::from(self.clone())
            }
        })*
    };
}

show_via_from!(String, bool, u16, u32, u64, usize, Vec<i32>);

impl Show for Duration {
    fn show(&self) -> Value {
        humantime::format_duration(*self).to_string().into()
    }
}

impl Show for SocketAddr {
    fn show(&self) -> Value {
        self.to_string().into()
    }
}

impl Show for PathBuf {
    fn show(&self) -> Value {
        self.display().to_string().into()
    }
}

impl Show for LogFormat {
    fn show(&self) -> Value {
        self.as_str().into()
    }
}

/// With the node id, which the API and pgpool use to name a node.
impl Show for Vec<NodeAddr> {
    fn show(&self) -> Value {
        let nodes: Vec<Value> = self
            .iter()
            .enumerate()
            .map(|(id, n)| json!({ "id": id, "host": n.host, "port": n.port }))
            .collect();
        nodes.into()
    }
}

/// A container label (`CLUSTER_LABEL`).
impl Show for (String, String) {
    fn show(&self) -> Value {
        json!({ "key": self.0, "value": self.1 })
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

/// The pass-through pgpool settings as JSON, credentials redacted.
pub(super) fn pgpool_conf(conf: &BTreeMap<String, String>) -> Value {
    let shown: Map<String, Value> = conf
        .iter()
        .map(|(k, v)| (k.clone(), shown_conf_value(k, v).into()))
        .collect();
    shown.into()
}

/// `Debug` of the pass-through pgpool settings, credentials redacted.
pub(super) struct RedactedConf<'a>(pub(super) &'a BTreeMap<String, String>);

impl fmt::Debug for RedactedConf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, shown_conf_value(k, v))))
            .finish()
    }
}
