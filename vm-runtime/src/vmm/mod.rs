//! The VMM process: builds a VM from a [`config::VmConfig`] and owns its
//! lifetime, from the `boot` request to the exit record.

pub mod builder;
pub mod config;
pub mod events;
pub mod report;
pub mod timeline;

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::control::server::{self, ControlShared};
use crate::devices::bus::lock;
use crate::exit_record::{self, ExitReason, ExitRecord, StopMode};
use crate::privileges;
use crate::seccomp::{self, Filters, ThreadKind};
use crate::sigsys;
use builder::{BootRequest, VmHandle, VmmEnvironment};
use events::{GuestEvent, VmmEvent};
use timeline::{BootPhase, BootTimeline};

/// The VMM's command-line options.
#[derive(Debug, Clone)]
pub struct VmmOptions {
    /// Control socket to listen on.
    pub api_sock: Option<PathBuf>,
    /// Boot this config at once instead of waiting for a `boot` request.
    pub config_file: Option<PathBuf>,
    pub exit_record: PathBuf,
    pub console_log: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub seccomp: bool,
    /// Descriptors the parent left open for the config-file boot, in the
    /// order `TapSource::PassedFd` indexes them (a tap opened by hulld in
    /// the pod's network namespace).
    pub inherited_fds: Vec<RawFd>,
}

/// Why the VMM could not start at all.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("give a control socket, a config file, or both")]
    NothingToDo,
    #[error("--pass-fd {fd}: {reason}")]
    InheritedFd { fd: RawFd, reason: String },
    #[error("cannot write the pid file {path}")]
    PidFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on the control socket {path}")]
    Listen {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the config file {path}")]
    ConfigFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}")]
    ConfigParse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("seccomp")]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("cannot start the control thread")]
    ControlThread(#[source] std::io::Error),
    #[error("cannot start the seccomp fault reporter")]
    FaultReporter(#[source] std::io::Error),
    #[error("cannot write the exit record")]
    ExitRecord(#[from] exit_record::ExitRecordError),
}

/// A graceful stop in progress.
struct PendingStop {
    deadline: Instant,
}

/// The end of a VMM run: the record written, and the VM, still mapped.
///
/// vCPU and device threads may still be running when [`run`] returns; the
/// caller ends the process while holding this (dropping it first would
/// unmap guest memory under them).
pub struct VmmExit {
    pub record: ExitRecord,
    _vm: Option<Arc<VmHandle>>,
}

/// Takes ownership of the descriptors the parent passed down, after
/// checking that each is open, not stdio, and named once.
fn take_inherited_fds(fds: &[RawFd]) -> Result<Vec<OwnedFd>, VmmError> {
    let mut owned = Vec::with_capacity(fds.len());
    for (i, &fd) in fds.iter().enumerate() {
        let refuse = |reason: &str| VmmError::InheritedFd {
            fd,
            reason: reason.to_string(),
        };
        if fd <= 2 {
            return Err(refuse("standard input, output and error cannot be passed"));
        }
        if fds[..i].contains(&fd) {
            return Err(refuse("named twice"));
        }
        // SAFETY: F_GETFD only reads the descriptor's flags; an fd that is
        // not open yields EBADF and nothing else happens.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(refuse("not an open file descriptor"));
        }
        // SAFETY: the fd is open (checked above), was inherited from the
        // parent for this purpose, is not stdio, appears once in the list,
        // and nothing else in this process has wrapped it: this OwnedFd is
        // its only owner.
        owned.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(owned)
}

/// Runs the VMM until its VM ends; returns the exit record it wrote.
pub fn run(options: VmmOptions) -> Result<VmmExit, VmmError> {
    if options.api_sock.is_none() && options.config_file.is_none() {
        return Err(VmmError::NothingToDo);
    }
    let passed_fds = take_inherited_fds(&options.inherited_fds)?;
    privileges::drop_bounding_set();
    if let Some(path) = &options.pid_file {
        exit_record::write_atomic(path, format!("{}\n", std::process::id()).as_bytes()).map_err(
            |source| VmmError::PidFile {
                path: path.display().to_string(),
                source,
            },
        )?;
    }
    let timeline = Arc::new(BootTimeline::default());
    let filters = if options.seccomp {
        let filters = Filters::build()?;
        // Before any thread is confined: a refused syscall then ends the
        // VMM with an exit record saying which, not silently.
        sigsys::start_fault_reporter(
            &options.exit_record,
            timeline.clone(),
            Some(filters.get(ThreadKind::Main)),
        )
        .map_err(VmmError::FaultReporter)?;
        Some(Arc::new(filters))
    } else {
        None
    };
    let env = VmmEnvironment {
        console_log: options.console_log.clone(),
        filters: filters.clone(),
    };
    let (events, inbox) = mpsc::channel::<VmmEvent>();
    let shared = Arc::new(ControlShared::default());
    if let Some(path) = &options.api_sock {
        // A stale socket from an earlier VMM at this path would make bind fail.
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|source| VmmError::Listen {
            path: path.display().to_string(),
            source,
        })?;
        server::spawn(listener, events.clone(), shared.clone(), filters.clone())
            .map_err(VmmError::ControlThread)?;
        tracing::info!(path = %path.display(), "control socket listening");
    }
    let mut vm: Option<Arc<VmHandle>> = None;
    if let Some(path) = &options.config_file {
        let text = std::fs::read_to_string(path).map_err(|source| VmmError::ConfigFile {
            path: path.display().to_string(),
            source,
        })?;
        let config = serde_json::from_str(&text).map_err(|source| VmmError::ConfigParse {
            path: path.display().to_string(),
            source,
        })?;
        timeline.mark(BootPhase::BootRequested);
        let request = BootRequest { config, passed_fds };
        match builder::build(request, &env, events.clone(), timeline.clone()) {
            Ok(handle) => {
                *lock(&shared.vm) = Some(handle.clone());
                vm = Some(handle);
                confine_main_thread(filters.as_deref());
            }
            Err(error) => {
                let message = crate::control::api::error_chain(&error);
                tracing::error!(%message, "cannot boot the VM from the config file");
                let record = finish(&options, None, ExitReason::VmmError { message }, &timeline)?;
                return Ok(VmmExit { record, _vm: None });
            }
        }
    }

    let mut pending_stop: Option<PendingStop> = None;
    let reason = loop {
        let event = match &pending_stop {
            Some(stop) => {
                match inbox.recv_timeout(stop.deadline.saturating_duration_since(Instant::now())) {
                    Ok(event) => event,
                    Err(RecvTimeoutError::Timeout) => {
                        break ExitReason::Stopped {
                            mode: StopMode::GracefulTimedOut,
                        };
                    }
                    Err(RecvTimeoutError::Disconnected) => unreachable!("main holds a sender"),
                }
            }
            None => inbox.recv().expect("main holds a sender"),
        };
        match event {
            VmmEvent::Boot(request, reply) => {
                if vm.is_some() {
                    let _ = reply.send(Err("a VM already runs in this VMM".into()));
                    continue;
                }
                timeline.mark(BootPhase::BootRequested);
                match builder::build(*request, &env, events.clone(), timeline.clone()) {
                    Ok(handle) => {
                        vm = Some(handle.clone());
                        let _ = reply.send(Ok(handle));
                        confine_main_thread(filters.as_deref());
                    }
                    Err(error) => {
                        let message = crate::control::api::error_chain(&error);
                        tracing::error!(%message, "boot request failed");
                        let _ = reply.send(Err(message));
                    }
                }
            }
            VmmEvent::Stop(request) => match (&vm, request.mode) {
                (Some(handle), StopMode::Graceful) if pending_stop.is_none() => {
                    tracing::info!(
                        timeout_ms = request.timeout_ms,
                        "asking the guest to shut down"
                    );
                    lock(&handle.i8042).send_ctrl_alt_del();
                    pending_stop = Some(PendingStop {
                        deadline: Instant::now() + Duration::from_millis(request.timeout_ms),
                    });
                }
                (_, StopMode::Graceful) if pending_stop.is_some() => {}
                _ => {
                    break ExitReason::Stopped {
                        mode: StopMode::Forced,
                    };
                }
            },
            VmmEvent::Guest(event) => {
                let panic_line = vm
                    .as_ref()
                    .and_then(|h| lock(&h.console_watch).panic_line.clone());
                let reason = guest_exit_reason(event, panic_line);
                break match (reason, &pending_stop) {
                    (ExitReason::GuestReboot | ExitReason::GuestPoweroff, Some(_)) => {
                        ExitReason::Stopped {
                            mode: StopMode::Graceful,
                        }
                    }
                    (reason, _) => reason,
                };
            }
        }
    };
    shared.stopping.store(true, Ordering::SeqCst);
    let record = finish(&options, vm.as_deref(), reason, &timeline)?;
    Ok(VmmExit { record, _vm: vm })
}

/// What a guest event means, given the panic line the console may have shown.
pub fn guest_exit_reason(event: GuestEvent, panic_line: Option<String>) -> ExitReason {
    match (event, panic_line) {
        (GuestEvent::Failed(message), _) => ExitReason::VmmError { message },
        (GuestEvent::PowerOff, _) => ExitReason::GuestPoweroff,
        (
            GuestEvent::Reset | GuestEvent::TripleFault | GuestEvent::CrashReported,
            Some(message),
        ) => ExitReason::GuestPanic { message },
        (GuestEvent::CrashReported, None) => ExitReason::GuestPanic {
            message: "the guest reported a crash".into(),
        },
        (GuestEvent::Reset, None) => ExitReason::GuestReboot,
        (GuestEvent::TripleFault, None) => ExitReason::TripleFault,
    }
}

fn confine_main_thread(filters: Option<&Filters>) {
    if let Err(error) = privileges::drop_thread_capabilities() {
        tracing::warn!(%error, "main thread keeps its capabilities");
    }
    if let Some(filters) = filters {
        seccomp::apply_or_exit(&filters.get(ThreadKind::Main), ThreadKind::Main);
    }
}

/// Flushes the console, syncs drives, writes the exit record.
fn finish(
    options: &VmmOptions,
    vm: Option<&VmHandle>,
    reason: ExitReason,
    timeline: &BootTimeline,
) -> Result<ExitRecord, VmmError> {
    let panic_line = vm.and_then(|h| lock(&h.console_watch).panic_line.clone());
    if let Some(handle) = vm {
        lock(&handle.console).flush();
        for drive in &handle.drives {
            lock(drive).sync();
        }
    }
    let record = ExitRecord::ending_now(reason, timeline, panic_line);
    record.write(&options.exit_record)?;
    if let Some(path) = &options.api_sock {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!(reason = ?record.reason, "VM ended");
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_on_the_console_turns_resets_into_panics() {
        let line = "Kernel panic - not syncing: sysrq triggered crash".to_string();
        assert_eq!(
            guest_exit_reason(GuestEvent::Reset, Some(line.clone())),
            ExitReason::GuestPanic {
                message: line.clone()
            }
        );
        assert_eq!(
            guest_exit_reason(GuestEvent::TripleFault, Some(line.clone())),
            ExitReason::GuestPanic { message: line }
        );
        assert_eq!(
            guest_exit_reason(GuestEvent::Reset, None),
            ExitReason::GuestReboot
        );
        assert_eq!(
            guest_exit_reason(GuestEvent::TripleFault, None),
            ExitReason::TripleFault
        );
        assert_eq!(
            guest_exit_reason(GuestEvent::PowerOff, None),
            ExitReason::GuestPoweroff
        );
        assert!(matches!(
            guest_exit_reason(GuestEvent::Failed("x".into()), None),
            ExitReason::VmmError { .. }
        ));
    }

    #[test]
    fn inherited_fds_must_be_open_distinct_and_not_stdio() {
        use std::os::fd::IntoRawFd;
        let open = || std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        let (a, b) = (open(), open());
        let owned = take_inherited_fds(&[a, b]).unwrap();
        assert_eq!(owned.len(), 2);
        drop(owned);
        // Far above any descriptor this process has open.
        let err = take_inherited_fds(&[999_999]).unwrap_err().to_string();
        assert!(
            err.contains("--pass-fd 999999") && err.contains("not an open"),
            "{err}"
        );
        let err = take_inherited_fds(&[1]).unwrap_err().to_string();
        assert!(err.contains("standard"), "{err}");
        let c = open();
        let err = take_inherited_fds(&[c, c]).unwrap_err().to_string();
        assert!(err.contains("named twice"), "{err}");
    }
}
