//! Reaping children and orphans (PID 1's duty) and routing exit statuses to
//! whoever waits for a container or exec'd process.
//!
//! The agent runs on a single-threaded runtime and calls libcontainer
//! synchronously on that thread. libcontainer waits for its own
//! intermediate processes with `waitpid(pid)`; because the reaper below only
//! runs between those calls, it can never steal a status libcontainer
//! expects. Container and exec processes are registered with [`Reaper::watch`]
//! before control returns to the runtime, so their exits are never missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessExit {
    Exited(i32),
    Signaled(i32),
}

impl ProcessExit {
    /// The exit code as containerd reports it: 128 + signal when signalled.
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Exited(code) => code,
            Self::Signaled(signal) => 128 + signal,
        }
    }

    /// The signal that ended the process, 0 if none.
    pub fn signal(self) -> u32 {
        match self {
            Self::Exited(_) => 0,
            Self::Signaled(signal) => u32::try_from(signal).unwrap_or(0),
        }
    }
}

/// Routes exit statuses by pid.
#[derive(Default)]
pub struct Reaper {
    watchers: Mutex<HashMap<i32, oneshot::Sender<ProcessExit>>>,
}

impl Reaper {
    /// Asks to be told when `pid` (a child of the agent) exits. Must be
    /// called before the runtime gets a chance to reap it (see the module
    /// docs).
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<ProcessExit> {
        let (tx, rx) = oneshot::channel();
        self.watchers
            .lock()
            .expect("reaper lock poisoned")
            .insert(pid, tx);
        rx
    }

    /// Reaps every child that has exited, without blocking.
    pub fn reap_all(&self) {
        loop {
            let exit = match waitpid(
                Pid::from_raw(-1),
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
            ) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ProcessExit::Exited(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    (pid, ProcessExit::Signaled(signal as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => return,
                Ok(_) => continue,
                Err(nix::Error::EINTR) => continue,
                Err(err) => {
                    tracing::warn!(error = %err, "waitpid failed");
                    return;
                }
            };
            let (pid, exit) = exit;
            let watcher = self
                .watchers
                .lock()
                .expect("reaper lock poisoned")
                .remove(&pid.as_raw());
            match watcher {
                Some(tx) => {
                    tracing::debug!(pid = pid.as_raw(), ?exit, "process exited");
                    let _ = tx.send(exit);
                }
                None => tracing::debug!(pid = pid.as_raw(), ?exit, "reaped an orphan"),
            }
        }
    }

    /// Reaps on every SIGCHLD, forever.
    pub async fn run(self: Arc<Self>) -> std::io::Result<()> {
        let mut sigchld = signal(SignalKind::child())?;
        loop {
            self.reap_all();
            sigchld.recv().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_containerd() {
        assert_eq!(ProcessExit::Exited(3).exit_code(), 3);
        assert_eq!(ProcessExit::Exited(3).signal(), 0);
        assert_eq!(ProcessExit::Signaled(15).exit_code(), 143);
        assert_eq!(ProcessExit::Signaled(9).signal(), 9);
    }

    #[tokio::test(flavor = "current_thread")]
    #[allow(
        clippy::zombie_processes,
        reason = "the reaper under test waits for it"
    )]
    async fn routes_a_childs_exit_status_by_pid() {
        let reaper = Reaper::default();
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 7"])
            .spawn()
            .expect("/bin/sh is needed for this test");
        let rx = reaper.watch(child.id() as i32);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut rx = rx;
        loop {
            reaper.reap_all();
            match rx.try_recv() {
                Ok(exit) => {
                    assert_eq!(exit, ProcessExit::Exited(7));
                    break;
                }
                Err(oneshot::error::TryRecvError::Empty)
                    if std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(e) => panic!("no exit status routed: {e:?}"),
            }
        }
    }
}
