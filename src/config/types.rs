//! The value types settings are read into and other modules use.
//!
//! Reads and changes nothing; pure data with the formatting that keeps secrets out of logs.

use std::fmt;

use super::REDACTED;

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

/// The declared application users as given: the text of `USERS`, or of the file `USERS_FILE`
/// names (read again while the sidecar runs, so a change of it needs no restart).
#[derive(Clone, PartialEq, Eq)]
pub struct UsersInput {
    pub text: Secret,
    pub file: Option<std::path::PathBuf>,
}

impl fmt::Debug for UsersInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsersInput")
            .field("text", &self.text)
            .field("file", &self.file)
            .finish()
    }
}

/// One PostgreSQL node as pgpool and the probes reach it. Its node id is its index in
/// [`Config::nodes`](super::Config::nodes), the same id pgpool uses for `backend_hostnameN`.
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
