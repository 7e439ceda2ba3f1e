//! TLS for pgpool's clients: which certificate pgpool serves, and the copies of it pgpool reads.
//!
//! Reads: the operator's PEM files (`PGPOOL_SIDECAR_TLS_CERT_FILE`, `_KEY_FILE`, `_CA_FILE`),
//! or, without them, the self-signed certificate kept in `tls/` beside the state file.
//! Changes: on the first start without operator files, generates that certificate (the key mode
//! 0600); copies the certificate and key pgpool serves (and the CA) into pgpool's conf dir,
//! owned by pgpool's user, the key 0600. How often: once per sidecar start, before pgpool's
//! config is written; a new certificate needs a restart of the sidecar's container.
//!
//! The generated certificate is kept on the state volume so that clients that pinned it (or
//! accepted it once) see the same one after a restart or an image upgrade.
//!
//! pgpool's `ssl = on` also makes it ask every backend for TLS (and use it when offered), and
//! its `ssl_ca_cert` serves two purposes: the CA for client certificates and the CA it checks
//! the backends' certificates against (src/utils/pool_ssl.c). With `TLS_CA_FILE` set, the nodes'
//! certificates must be signed by that CA too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::pgpool::conf::{self, ConfError, Paths};

/// Names pgpool's copies get in its conf dir.
pub const CERT_NAME: &str = "server.crt";
pub const KEY_NAME: &str = "server.key";
pub const CA_NAME: &str = "root.crt";
/// Names the certificate covers when the sidecar makes its own: the compose service name and
/// loopback; `sslmode=require` checks none of them, `verify-full` needs the operator's files.
const GENERATED_NAMES: &[&str] = &["pgpool", "localhost"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Never shows the contents: the file may be the key.
    #[error("{var}: cannot read {path}: {message}")]
    Unreadable {
        var: &'static str,
        path: String,
        message: String,
    },
    #[error("{var}: {path} holds no PEM {what}")]
    NotPem {
        var: &'static str,
        path: String,
        what: &'static str,
    },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error(transparent)]
    Write(#[from] ConfError),
}

/// Where the certificate pgpool serves comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The operator's files (the config check made sure cert and key come together).
    Operator {
        cert: PathBuf,
        key: PathBuf,
        ca: Option<PathBuf>,
    },
    /// The sidecar's own, kept in `dir` (made there on the first start).
    Generated { dir: PathBuf, ca: Option<PathBuf> },
}

impl Source {
    /// For `/status`: which kind, without any file content.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Operator { .. } => "operator",
            Source::Generated { .. } => "self-signed",
        }
    }
}

/// What to serve under `cfg`: the operator's files when given, else the generated pair.
pub fn source(cfg: &Config) -> Source {
    match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(key)) => Source::Operator {
            cert: cert.clone(),
            key: key.clone(),
            ca: cfg.tls_ca_file.clone(),
        },
        _ => Source::Generated {
            dir: generated_dir(&cfg.state_path),
            ca: cfg.tls_ca_file.clone(),
        },
    }
}

/// `tls/` in the state file's directory: the sidecar's volume.
pub fn generated_dir(state_path: &Path) -> PathBuf {
    state_path
        .parent()
        .unwrap_or_else(|| Path::new("/"))
        .join("tls")
}

/// Parser of the `TLS_*_FILE` settings.
pub fn file_path(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if !path.is_absolute() || path.file_name().is_none() {
        return Err(format!("{s:?} must be an absolute path to a file"));
    }
    Ok(path)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pem {
    Certificate,
    Key,
}

/// Whether `text` has a PEM block of `kind`. Only the armour is looked at: a damaged body is
/// left for pgpool (OpenSSL) to report, which names the file.
fn has_pem(text: &str, kind: Pem) -> bool {
    text.lines().any(|l| {
        let l = l.trim();
        match kind {
            Pem::Certificate => l == "-----BEGIN CERTIFICATE-----",
            Pem::Key => l.starts_with("-----BEGIN ") && l.ends_with("PRIVATE KEY-----"),
        }
    })
}

fn what(kind: Pem) -> &'static str {
    match kind {
        Pem::Certificate => "certificate (-----BEGIN CERTIFICATE-----)",
        Pem::Key => "private key (-----BEGIN … PRIVATE KEY-----)",
    }
}

/// Reads `path` and checks it holds a `kind` block; the error never carries the contents.
fn read_pem(var: &'static str, path: &Path, kind: Pem) -> Result<String, TlsError> {
    let text = std::fs::read_to_string(path).map_err(|e| TlsError::Unreadable {
        var,
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if !has_pem(&text, kind) {
        return Err(TlsError::NotPem {
            var,
            path: path.display().to_string(),
            what: what(kind),
        });
    }
    Ok(text)
}

/// The problems of the TLS settings, as (variable after the prefix, message), for the config
/// check: cert and key both or neither, and each given file readable PEM of its kind.
pub fn file_problems(
    cert: Option<&Path>,
    key: Option<&Path>,
    ca: Option<&Path>,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    match (cert, key) {
        (Some(_), None) => out.push((
            "TLS_KEY_FILE",
            "is not set but PGPOOL_SIDECAR_TLS_CERT_FILE is; set both, or neither for a \
             self-signed certificate"
                .to_owned(),
        )),
        (None, Some(_)) => out.push((
            "TLS_CERT_FILE",
            "is not set but PGPOOL_SIDECAR_TLS_KEY_FILE is; set both, or neither for a \
             self-signed certificate"
                .to_owned(),
        )),
        _ => {}
    }
    for (var, path, kind) in [
        ("TLS_CERT_FILE", cert, Pem::Certificate),
        ("TLS_KEY_FILE", key, Pem::Key),
        ("TLS_CA_FILE", ca, Pem::Certificate),
    ] {
        if let Some(path) = path {
            if let Err(e) = read_pem(var, path, kind) {
                let message = match e {
                    TlsError::Unreadable { path, message, .. } => {
                        format!("cannot read {path}: {message}")
                    }
                    TlsError::NotPem { path, what, .. } => format!("{path} holds no PEM {what}"),
                    other => other.to_string(),
                };
                out.push((var, message));
            }
        }
    }
    out
}

/// A certificate and key in PEM; the key is never shown by `Debug`.
pub struct Pair {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("cert", &self.cert)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A new self-signed certificate for [`GENERATED_NAMES`].
pub fn self_signed() -> Result<Pair, TlsError> {
    let names: Vec<String> = GENERATED_NAMES.iter().map(|n| (*n).to_owned()).collect();
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pgpool-sidecar self-signed");
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok(Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The kept self-signed pair in `dir`, made and kept there first if there is none (or only half
/// of one, from a start that died between the two writes).
fn generated(dir: &Path) -> Result<(Pair, bool), TlsError> {
    let (cert_path, key_path) = (dir.join(CERT_NAME), dir.join(KEY_NAME));
    if cert_path.exists() && key_path.exists() {
        let cert = read_pem("TLS_CERT_FILE", &cert_path, Pem::Certificate)?;
        let key = read_pem("TLS_KEY_FILE", &key_path, Pem::Key)?;
        return Ok((Pair { cert, key }, false));
    }
    let pair = self_signed()?;
    // Only the sidecar (root) reads these; pgpool reads its own copies.
    conf::write_file(&key_path, &pair.key, 0o600, None)?;
    conf::write_file(&cert_path, &pair.cert, 0o644, None)?;
    Ok((pair, true))
}

/// What [`install`] did, for the log and `/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub source: &'static str,
    /// True when this start made the self-signed certificate.
    pub generated: bool,
    pub client_ca: bool,
}

/// Copies the certificate and key pgpool serves (and the CA) into pgpool's conf dir, where
/// [`conf::pgpool_conf`] points `ssl_cert`, `ssl_key` and `ssl_ca_cert`.
pub fn install(cfg: &Config, paths: &Paths) -> Result<Installed, TlsError> {
    let src = source(cfg);
    let (pair, made, ca) = match &src {
        Source::Operator { cert, key, ca } => {
            let cert = read_pem("TLS_CERT_FILE", cert, Pem::Certificate)?;
            let key = read_pem("TLS_KEY_FILE", key, Pem::Key)?;
            (Pair { cert, key }, false, ca)
        }
        Source::Generated { dir, ca } => {
            let (pair, made) = generated(dir)?;
            (pair, made, ca)
        }
    };
    let owner = paths.owner;
    // OpenSSL in pgpool reads them as pgpool's user; the key is for it alone.
    conf::write_file(&paths.tls_key(), &pair.key, 0o600, owner)?;
    // 0600 like everything else pgpool reads there: only its user needs it.
    conf::write_file(&paths.tls_cert(), &pair.cert, 0o600, owner)?;
    if let Some(ca) = ca {
        let text = read_pem("TLS_CA_FILE", ca, Pem::Certificate)?;
        conf::write_file(&paths.tls_ca(), &text, 0o600, owner)?;
    }
    Ok(Installed {
        source: src.kind(),
        generated: made,
        client_ca: ca.is_some(),
    })
}

/// pgpool's sessions on one node, by whether they are encrypted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Sessions {
    pub encrypted: u64,
    pub plain: u64,
}

/// Which legs are encrypted, as last observed (`/status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Legs {
    /// pgpool serves TLS to clients (`ssl = on`, always rendered).
    pub client: bool,
    /// Per node name: pgpool's sessions on that node (none while no client is connected).
    pub pgpool_backend: BTreeMap<String, Sessions>,
    /// Per standby name: whether its stream from the primary is encrypted; a standby that does
    /// not stream is absent.
    pub replication: BTreeMap<String, bool>,
}

/// The replication leg from the primary's walsenders (`application_name`, `ssl`), kept to the
/// cluster's nodes: a standby names itself by its node name in `primary_conninfo`.
pub fn replication_leg(
    walsenders: &[(String, bool)],
    node_names: &[&str],
) -> BTreeMap<String, bool> {
    walsenders
        .iter()
        .filter(|(name, _)| node_names.contains(&name.as_str()))
        .map(|(name, ssl)| (name.clone(), *ssl))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("pgpool-sidecar-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn generated_certificates_live_beside_the_state_file() {
        assert_eq!(
            generated_dir(Path::new("/var/lib/pgpool-sidecar/state.json")),
            Path::new("/var/lib/pgpool-sidecar/tls")
        );
    }

    #[test]
    fn paths_must_be_absolute_files() {
        assert!(file_path("/run/secrets/tls.crt").is_ok());
        assert!(file_path("tls.crt").is_err());
        assert!(file_path("/").is_err());
    }

    #[test]
    fn cert_and_key_come_together() {
        let d = tmp("pair");
        let pair = self_signed().unwrap();
        let (c, k) = (d.join("c.pem"), d.join("k.pem"));
        std::fs::write(&c, &pair.cert).unwrap();
        std::fs::write(&k, &pair.key).unwrap();
        assert!(file_problems(Some(&c), Some(&k), Some(&c)).is_empty());
        assert!(file_problems(None, None, None).is_empty());
        let only_cert = file_problems(Some(&c), None, None);
        assert_eq!(only_cert.len(), 1);
        assert_eq!(only_cert[0].0, "TLS_KEY_FILE");
        let only_key = file_problems(None, Some(&k), None);
        assert_eq!(only_key[0].0, "TLS_CERT_FILE");
    }

    #[test]
    fn wrong_or_missing_files_are_named_without_their_contents() {
        let d = tmp("wrong");
        let pair = self_signed().unwrap();
        let (c, k) = (d.join("c.pem"), d.join("k.pem"));
        std::fs::write(&c, &pair.cert).unwrap();
        std::fs::write(&k, &pair.key).unwrap();
        // Swapped: the key where the certificate belongs and the other way round.
        let p = file_problems(Some(&k), Some(&c), None);
        let vars: Vec<&str> = p.iter().map(|(v, _)| *v).collect();
        assert_eq!(vars, ["TLS_CERT_FILE", "TLS_KEY_FILE"]);
        let body: String = pair.key.lines().nth(1).unwrap().to_owned();
        for (_, m) in &p {
            assert!(!m.contains(&body), "{m}");
        }
        let p = file_problems(None, None, Some(&d.join("missing.pem")));
        assert_eq!(p[0].0, "TLS_CA_FILE");
        assert!(p[0].1.contains("missing.pem"), "{}", p[0].1);
    }

    #[test]
    fn the_generated_certificate_is_made_once_and_kept() {
        let d = tmp("kept").join("tls");
        let (first, made) = generated(&d).unwrap();
        assert!(made);
        let (again, made) = generated(&d).unwrap();
        assert!(!made);
        assert_eq!(first.cert, again.cert);
        assert_eq!(first.key, again.key);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join(KEY_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Half a pair (a start that died between the writes) is replaced, not served.
        std::fs::remove_file(d.join(CERT_NAME)).unwrap();
        let (third, made) = generated(&d).unwrap();
        assert!(made);
        assert_ne!(third.key, first.key);
    }

    #[test]
    fn replication_leg_keeps_the_cluster_s_standbys() {
        let seen = [
            ("pg-1".to_owned(), true),
            ("pg-2".to_owned(), false),
            ("pg_basebackup".to_owned(), false),
        ];
        let leg = replication_leg(&seen, &["pg-0", "pg-1", "pg-2"]);
        let want: BTreeMap<String, bool> =
            [("pg-1".to_owned(), true), ("pg-2".to_owned(), false)].into();
        assert_eq!(leg, want);
    }

    #[test]
    fn debug_hides_the_key() {
        let pair = self_signed().unwrap();
        let shown = format!("{pair:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(has_pem(&pair.cert, Pem::Certificate));
        assert!(has_pem(&pair.key, Pem::Key));
    }
}
