//! Child processes, for a program that is its container's PID 1.
//!
//! Reads: SIGCHLD. Changes: reaps every exited child — our own (pgpool, PCP tools) and orphans
//! re-parented to PID 1 — and hands each exit status to whoever waits for that pid. Runs whenever
//! a child exits.
//!
//! One reaper for everything, because a second `waitpid` user (tokio's own child handling) would
//! race with a PID 1 that must reap orphans with `waitpid(-1)`: whichever wins steals the other's
//! exit status. So every subprocess here is spawned through [`Reaper::spawn`].

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {program}: {message}")]
    Spawn { program: String, message: String },
    #[error("{program} did not finish within {seconds} s and was killed")]
    TimedOut { program: String, seconds: u64 },
    #[error("{program} vanished without an exit status")]
    Lost { program: String },
}

enum Slot {
    Waiting(oneshot::Sender<i32>),
    Exited(i32),
}

/// Shared between the SIGCHLD task and spawners.
#[derive(Clone, Default)]
pub struct Reaper {
    slots: Arc<Mutex<HashMap<i32, Slot>>>,
}

/// Output of a finished command.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A running child whose exit the reaper will report.
pub struct Running {
    pub pid: i32,
    exit: oneshot::Receiver<i32>,
}

impl Running {
    /// Waits for the exit code (128+signal for a signalled child).
    pub async fn wait(self) -> Option<i32> {
        self.exit.await.ok()
    }
}

fn code_of(status: WaitStatus) -> Option<(i32, i32)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), code)),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), 128 + sig as i32)),
        _ => None,
    }
}

impl Reaper {
    /// Starts the SIGCHLD loop. It lives as long as the runtime.
    pub fn start() -> std::io::Result<Self> {
        let reaper = Reaper::default();
        let mut sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                // A SIGCHLD can be coalesced with another; the periodic pass catches both.
                let _ = tokio::time::timeout(Duration::from_secs(1), sig.recv()).await;
            }
        });
        Ok(reaper)
    }

    fn reap_all(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => {
                    if let Some((pid, code)) = code_of(status) {
                        self.deliver(pid, code);
                    }
                }
            }
        }
    }

    fn deliver(&self, pid: i32, code: i32) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        match slots.remove(&pid) {
            Some(Slot::Waiting(tx)) => {
                let _ = tx.send(code);
            }
            // Exited before the spawner registered it, or an orphan nobody waits for. Orphans
            // must not pile up: keep the table small.
            _ => {
                if slots.len() > 1024 {
                    slots.retain(|_, s| matches!(s, Slot::Waiting(_)));
                }
                slots.insert(pid, Slot::Exited(code));
            }
        }
    }

    fn register(&self, pid: i32) -> oneshot::Receiver<i32> {
        let (tx, rx) = oneshot::channel();
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        match slots.remove(&pid) {
            Some(Slot::Exited(code)) => {
                let _ = tx.send(code);
            }
            _ => {
                slots.insert(pid, Slot::Waiting(tx));
            }
        }
        rx
    }

    /// Spawns a long-lived child (pgpool) with inherited stdout/stderr.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Running, ProcessError> {
        let program = cmd.get_program().to_string_lossy().to_string();
        let child = cmd.spawn().map_err(|e| ProcessError::Spawn {
            program,
            message: e.to_string(),
        })?;
        let pid = child.id() as i32;
        // The std handle is dropped without waiting: the reaper owns the exit status.
        drop(child);
        Ok(Running {
            pid,
            exit: self.register(pid),
        })
    }

    /// Runs a short command to completion with a deadline, capturing its output.
    pub async fn output(&self, cmd: &mut Command, limit: Duration) -> Result<Output, ProcessError> {
        let program = cmd.get_program().to_string_lossy().to_string();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| ProcessError::Spawn {
            program: program.clone(),
            message: e.to_string(),
        })?;
        let pid = child.id() as i32;
        let exit = self.register(pid);
        let stdout = child
            .stdout
            .take()
            .map(tokio::process::ChildStdout::from_std);
        let stderr = child
            .stderr
            .take()
            .map(tokio::process::ChildStderr::from_std);
        drop(child);
        let run = async {
            let mut out = String::new();
            let mut err = String::new();
            if let Some(Ok(mut s)) = stdout {
                let _ = s.read_to_string(&mut out).await;
            }
            if let Some(Ok(mut s)) = stderr {
                let _ = s.read_to_string(&mut err).await;
            }
            (exit.await.ok(), out, err)
        };
        match tokio::time::timeout(limit, run).await {
            Err(_) => {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                Err(ProcessError::TimedOut {
                    program,
                    seconds: limit.as_secs(),
                })
            }
            Ok((None, _, _)) => Err(ProcessError::Lost { program }),
            Ok((Some(code), stdout, stderr)) => Ok(Output {
                code,
                stdout,
                stderr,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: two reapers in one process would steal each other's children.
    #[tokio::test]
    async fn captures_output_and_kills_past_deadline() {
        let reaper = Reaper::start().unwrap();
        let out = reaper
            .output(
                Command::new("sh").args(["-c", "echo hi; echo err >&2; exit 3"]),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(out.code, 3);
        assert_eq!(out.stdout.trim(), "hi");
        assert_eq!(out.stderr.trim(), "err");
        let err = reaper
            .output(Command::new("sleep").arg("30"), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, ProcessError::TimedOut { .. }), "{err}");
    }
}
