//! The state file: the single writer's journal of what must survive a restart of the sidecar
//! (see [`crate::cluster::restart::Persisted`]). Not a consensus store: one sidecar writes it.
//!
//! Reads: the file once, at start. Changes: the file, atomically (temporary file, fsync, rename,
//! fsync of the directory), whenever the persisted part of the state changes — checked after
//! every state change, so a fence is on disk before the promotion that follows it. A file that
//! cannot be read is moved aside, reported, and replaced; a directory that cannot be written is
//! reported once and the sidecar runs on what it observes, as before the file existed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::cluster::restart::{parse_state, Persisted, StateFileProblem, STATE_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot write the state file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// What was found at start.
#[derive(Debug, Clone, PartialEq)]
pub enum Loaded {
    /// No file: a first start, or a lost volume. The sidecar goes by what it observes.
    Missing,
    Found(Persisted),
    /// Unusable: reported, kept beside it as `<file>.bad`, and not trusted in any part.
    Unusable(StateFileProblem),
    /// The file exists but cannot be read (permissions, I/O).
    Unreadable(String),
}

pub struct Journal {
    path: PathBuf,
    /// The bytes last written (or read): unchanged state is not written again.
    last: Mutex<Option<Vec<u8>>>,
    /// The last write failed: said once, not on every change.
    failing: Mutex<bool>,
    /// Nothing is written before the file was read: the empty state of a starting daemon must
    /// not overwrite what the last one knew.
    armed: std::sync::atomic::AtomicBool,
}

impl Journal {
    pub fn new(path: PathBuf) -> Self {
        Journal {
            path,
            last: Mutex::new(None),
            failing: Mutex::new(false),
            armed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file; an unusable one is moved aside so the next write starts clean.
    pub fn load(&self) -> Loaded {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
            Err(e) => return Loaded::Unreadable(e.to_string()),
        };
        match parse_state(&bytes) {
            Ok(p) => {
                *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(bytes);
                Loaded::Found(p)
            }
            Err(problem) => {
                let mut bad = self.path.clone().into_os_string();
                bad.push(".bad");
                let _ = std::fs::rename(&self.path, bad);
                Loaded::Unusable(problem)
            }
        }
    }

    /// Writes `state` if it differs from what is on disk. Returns whether it wrote.
    pub fn save(&self, state: &Persisted) -> Result<bool, JournalError> {
        if !self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        let mut state = state.clone();
        state.version = STATE_VERSION;
        let bytes = serde_json::to_vec_pretty(&state).unwrap_or_default();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.as_deref() == Some(bytes.as_slice()) {
            return Ok(false);
        }
        let result = write_atomically(&self.path, &bytes);
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(()) => {
                *last = Some(bytes);
                if std::mem::replace(&mut *failing, false) {
                    tracing::info!(path = %self.path.display(), "state file written again");
                }
                Ok(true)
            }
            Err(source) => {
                let first = !std::mem::replace(&mut *failing, true);
                let e = JournalError::Write {
                    path: self.path.display().to_string(),
                    source,
                };
                if first {
                    tracing::error!(error = %e, "the state will not survive a restart of the sidecar until this is fixed");
                }
                Err(e)
            }
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = path.to_path_buf().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename itself is durable only once the directory is.
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "pgpool-sidecar-journal-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn writes_atomically_only_on_change_and_reads_back() {
        let d = dir("roundtrip");
        let j = Journal::new(d.join("state.json"));
        let p = Persisted {
            primary: Some("pg-1".into()),
            ..Default::default()
        };
        assert!(
            !j.save(&p).unwrap(),
            "nothing is written before the file was read"
        );
        assert_eq!(j.load(), Loaded::Missing);
        assert!(j.save(&p).unwrap());
        assert!(!j.save(&p).unwrap(), "unchanged state is not rewritten");
        assert!(!d.join("state.json.tmp").exists());
        let again = Journal::new(d.join("state.json"));
        match again.load() {
            Loaded::Found(found) => {
                assert_eq!(found.primary.as_deref(), Some("pg-1"));
                assert_eq!(found.version, STATE_VERSION);
            }
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupt_file_is_reported_and_moved_aside() {
        let d = dir("corrupt");
        std::fs::write(d.join("state.json"), b"{\"version\": 1, \"prim").unwrap();
        let j = Journal::new(d.join("state.json"));
        assert!(matches!(
            j.load(),
            Loaded::Unusable(StateFileProblem::Corrupt(_))
        ));
        assert!(d.join("state.json.bad").exists());
        assert!(!d.join("state.json").exists());
        assert!(j.save(&Persisted::default()).unwrap());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_unwritable_directory_is_an_error_naming_the_file() {
        let j = Journal::new(PathBuf::from("/proc/no-such-dir/state.json"));
        assert_eq!(j.load(), Loaded::Missing);
        let e = j.save(&Persisted::default()).unwrap_err();
        assert!(
            e.to_string().contains("/proc/no-such-dir/state.json"),
            "{e}"
        );
    }
}
