//! The control thread: accepts connections one at a time and answers each
//! request line with one response line.

use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde_json::json;

use super::api::{ControlErrorKind, ControlRequest, ControlResponse, StopKind, error_chain};
use super::wire::{LineStream, WireError};
use crate::devices::bus::lock;
use crate::exit_record::StopMode;
use crate::privileges;
use crate::seccomp::{self, Filters, ThreadKind};
use crate::vmm::builder::{BootRequest, VmHandle};
use crate::vmm::events::{EventSender, StopRequest, VmmEvent};
use crate::vmm::report;

/// Default wait of a graceful stop.
pub const DEFAULT_GRACEFUL_TIMEOUT_MS: u64 = 5000;

/// What the control thread shares with the main thread.
#[derive(Default)]
pub struct ControlShared {
    pub vm: Mutex<Option<Arc<VmHandle>>>,
    pub stopping: AtomicBool,
}

/// Starts the control thread on `listener`.
pub fn spawn(
    listener: UnixListener,
    events: EventSender,
    shared: Arc<ControlShared>,
    filters: Option<Arc<Filters>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("hull-control".into())
        .spawn(move || {
            if let Err(error) = privileges::drop_thread_capabilities() {
                tracing::warn!(%error, "control thread keeps its capabilities");
            }
            if let Some(filters) = &filters {
                seccomp::apply_or_exit(&filters.get(ThreadKind::Control), ThreadKind::Control);
            }
            serve_all(&listener, &events, &shared);
        })
}

/// Most control connections served at once.
const MAX_CONNECTIONS: usize = 16;

/// One thread, many connections: poll the listener and every connection,
/// answer each complete line as it arrives.
fn serve_all(listener: &UnixListener, events: &EventSender, shared: &ControlShared) {
    let mut conns: Vec<LineStream> = Vec::new();
    loop {
        let ready: Vec<bool> = {
            let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            fds.extend(
                conns
                    .iter()
                    .map(|c| PollFd::new(c.as_fd(), PollFlags::POLLIN)),
            );
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => fds.iter().map(|f| f.any().unwrap_or(false)).collect(),
                Err(nix::Error::EINTR) => continue,
                Err(error) => {
                    tracing::error!(%error, "control socket poll failed");
                    return;
                }
            }
        };
        let mut closed = Vec::new();
        for (index, conn) in conns.iter_mut().enumerate() {
            if ready[index + 1] && !serve_available(conn, events, shared) {
                closed.push(index);
            }
        }
        for index in closed.into_iter().rev() {
            conns.remove(index);
        }
        if ready[0] {
            match listener.accept() {
                Ok((stream, _)) if conns.len() < MAX_CONNECTIONS => {
                    conns.push(LineStream::new(stream))
                }
                Ok(_) => tracing::warn!("too many control connections; refusing one"),
                Err(error) => tracing::warn!(%error, "cannot accept a control connection"),
            }
        }
    }
}

/// Answers every complete request on `conn`; false when it should be closed.
fn serve_available(conn: &mut LineStream, events: &EventSender, shared: &ControlShared) -> bool {
    let open = match conn.receive_available() {
        Ok(open) => open,
        Err(error) => {
            tracing::debug!(%error, "control connection failed");
            return false;
        }
    };
    loop {
        let (line, fds) = match conn.next_line() {
            Ok(Some(message)) => message,
            Ok(None) => return open,
            Err(error) => {
                let _ = reply(
                    conn,
                    &ControlResponse::error(ControlErrorKind::InvalidRequest, error.to_string()),
                );
                return false;
            }
        };
        let response = match serde_json::from_str::<ControlRequest>(&line) {
            Ok(ControlRequest::Stop { mode, timeout_ms }) => {
                // Answer first: a forced stop ends the process right after.
                let stop = StopRequest {
                    mode: match mode {
                        StopKind::Graceful => StopMode::Graceful,
                        StopKind::Forced => StopMode::Forced,
                    },
                    timeout_ms: timeout_ms.unwrap_or(DEFAULT_GRACEFUL_TIMEOUT_MS),
                };
                shared.stopping.store(true, Ordering::SeqCst);
                let _ = reply(conn, &ControlResponse::ok(json!({"stopping": true})));
                let _ = events.send(VmmEvent::Stop(stop));
                continue;
            }
            Ok(request) => handle(request, fds, events, shared),
            Err(error) => {
                ControlResponse::error(ControlErrorKind::InvalidRequest, error.to_string())
            }
        };
        if reply(conn, &response).is_err() {
            return false;
        }
    }
}

fn reply(conn: &mut LineStream, response: &ControlResponse) -> Result<(), WireError> {
    let line = serde_json::to_string(response).expect("responses serialize");
    conn.write_line(&line, &[])
}

fn running(shared: &ControlShared) -> Result<Arc<VmHandle>, ControlResponse> {
    lock(&shared.vm).clone().ok_or_else(|| {
        ControlResponse::error(ControlErrorKind::NotBooted, "no VM has been booted yet")
    })
}

fn handle(
    request: ControlRequest,
    fds: Vec<std::os::fd::OwnedFd>,
    events: &EventSender,
    shared: &ControlShared,
) -> ControlResponse {
    match request {
        ControlRequest::Boot { config } => {
            if lock(&shared.vm).is_some() {
                return ControlResponse::error(
                    ControlErrorKind::AlreadyBooted,
                    "a VM already runs in this VMM",
                );
            }
            let (reply_tx, reply_rx) = mpsc::channel();
            let boot = BootRequest {
                config,
                passed_fds: fds,
            };
            if events
                .send(VmmEvent::Boot(Box::new(boot), reply_tx))
                .is_err()
            {
                return ControlResponse::error(ControlErrorKind::BootFailed, "the VMM is exiting");
            }
            match reply_rx.recv() {
                Ok(Ok(vm)) => {
                    let status = report::status(&vm, false);
                    *lock(&shared.vm) = Some(vm);
                    ControlResponse::ok(status)
                }
                Ok(Err(message)) => ControlResponse::error(ControlErrorKind::BootFailed, message),
                Err(_) => {
                    ControlResponse::error(ControlErrorKind::BootFailed, "the VMM is exiting")
                }
            }
        }
        ControlRequest::Status {} => match lock(&shared.vm).clone() {
            Some(vm) => {
                ControlResponse::ok(report::status(&vm, shared.stopping.load(Ordering::SeqCst)))
            }
            None => ControlResponse::ok(report::waiting_status()),
        },
        ControlRequest::Metrics {} => match running(shared) {
            Ok(vm) => ControlResponse::ok(report::metrics(&vm)),
            Err(response) => response,
        },
        ControlRequest::SetDrive { id, path } => {
            let vm = match running(shared) {
                Ok(vm) => vm,
                Err(response) => return response,
            };
            let Some(drive) = vm.drives.iter().find(|d| lock(d).id() == id) else {
                return ControlResponse::error(
                    ControlErrorKind::NotFound,
                    format!("no drive {id:?}"),
                );
            };
            match lock(drive).set_backing(path.as_deref()) {
                Ok(sectors) => {
                    ControlResponse::ok(json!({"id": id, "path": path, "sectors": sectors}))
                }
                Err(error) => {
                    ControlResponse::error(ControlErrorKind::HostError, error_chain(&error))
                }
            }
        }
        ControlRequest::Stop { .. } => unreachable!("stop is answered before dispatch"),
    }
}
