//! Where raw values come from: the environment, and the files named by `*_FILE` secrets.
//!
//! Reads: the process environment (through [`EnvSource`]) and secret files. Changes: nothing.

use std::collections::HashMap;

/// Largest `*_FILE` secret read. Nothing bigger is a password, and a wrong path (a log, a disk
/// image) must not be read into memory whole.
const MAX_SECRET_FILE: u64 = 64 * 1024;

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

/// Reads a `*_FILE` secret: a regular file of at most [`MAX_SECRET_FILE`] bytes of UTF-8.
pub(crate) fn read_secret_file(path: &str) -> Result<String, String> {
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
