//! systemd's service readiness protocol (`sd_notify`), without libsystemd.
//!
//! Under a `Type=notify` unit, systemd passes `NOTIFY_SOCKET`: a unix
//! datagram socket, named by a path (`/run/systemd/notify`) or, with a
//! leading `@`, an abstract name. Each datagram is newline-separated
//! `KEY=VALUE` lines. hulld sends `READY=1` once its CRI socket is bound and
//! about to be served (so `systemctl start hull` returns when the kubelet can
//! connect), and `STOPPING=1` when it begins a clean shutdown.
//!
//! Without `NOTIFY_SOCKET` (hulld started by hand, or by a test) every call
//! is a no-op. A failure to notify is logged, never fatal: systemd's start
//! timeout tells the operator as well.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("{NOTIFY_SOCKET}={value:?} is neither an absolute path nor an abstract name (@...)")]
    Unsupported { value: String },
    #[error("{NOTIFY_SOCKET}={value:?} is not a valid unix socket address")]
    Address {
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot send {state:?} to {NOTIFY_SOCKET}={value:?}")]
    Send {
        state: String,
        value: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where to send notifications; inactive when systemd asked for none.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    target: Option<Target>,
}

#[derive(Clone, Debug)]
struct Target {
    /// `NOTIFY_SOCKET` as given, for messages.
    value: String,
    addr: SocketAddr,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; inactive if it is unset or empty. An unusable
    /// value is logged and leaves the notifier inactive.
    pub fn from_env() -> Self {
        let Some(value) = std::env::var_os(NOTIFY_SOCKET) else {
            return Self::default();
        };
        match Self::from_value(&value) {
            Ok(notifier) => notifier,
            Err(err) => {
                tracing::warn!(error = %crate::error::error_chain(&err), "systemd notifications disabled");
                Self::default()
            }
        }
    }

    /// From a `NOTIFY_SOCKET` value: `/path` or `@abstract-name`; empty is
    /// inactive.
    pub fn from_value(value: &OsStr) -> Result<Self, NotifyError> {
        let bytes = value.as_bytes();
        let shown = value.to_string_lossy().into_owned();
        let addr = match bytes.first() {
            None => return Ok(Self::default()),
            Some(b'/') => SocketAddr::from_pathname(value),
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
            Some(_) => return Err(NotifyError::Unsupported { value: shown }),
        }
        .map_err(|source| NotifyError::Address {
            value: shown.clone(),
            source,
        })?;
        Ok(Self {
            target: Some(Target { value: shown, addr }),
        })
    }

    /// Whether systemd listens for notifications.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (`KEY=VALUE` lines) as one datagram; nothing when
    /// inactive.
    pub fn send(&self, state: &str) -> Result<(), NotifyError> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let error = |source| NotifyError::Send {
            state: state.to_string(),
            value: target.value.clone(),
            source,
        };
        let socket = UnixDatagram::unbound().map_err(error)?;
        socket
            .send_to_addr(state.as_bytes(), &target.addr)
            .map_err(error)?;
        Ok(())
    }

    /// `READY=1`, with `status` for `systemctl status` and this process as
    /// the service's main process. Logs instead of failing.
    pub fn ready(&self, status: &str) {
        let state = format!(
            "READY=1\nSTATUS={}\nMAINPID={}",
            one_line(status),
            std::process::id()
        );
        self.send_logged(&state);
    }

    /// `STOPPING=1`: a clean shutdown has begun. Logs instead of failing.
    pub fn stopping(&self) {
        self.send_logged("STOPPING=1\nSTATUS=shutting down");
    }

    fn send_logged(&self, state: &str) {
        match self.send(state) {
            Ok(()) if self.is_active() => {
                tracing::debug!(state = %state.replace('\n', " "), "notified systemd");
            }
            Ok(()) => {}
            Err(err) => {
                tracing::warn!(error = %crate::error::error_chain(&err), "cannot notify systemd");
            }
        }
    }
}

/// A `STATUS=` value must not break the line-based message.
fn one_line(text: &str) -> String {
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a notification arrives");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn ready_and_stopping_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::from_value(path.as_os_str()).unwrap();
        assert!(notifier.is_active());

        notifier.ready("serving the CRI on /run/hull/hull.sock\nsecond line");
        let message = receive(&listener);
        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(
            lines,
            [
                "READY=1",
                "STATUS=serving the CRI on /run/hull/hull.sock second line",
                &format!("MAINPID={}", std::process::id()),
            ]
        );

        notifier.stopping();
        assert_eq!(receive(&listener), "STOPPING=1\nSTATUS=shutting down");
    }

    #[test]
    fn an_abstract_name_is_reached_without_a_file() {
        let name = format!("hull-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier::from_value(OsStr::new(&format!("@{name}"))).unwrap();
        notifier.send("READY=1").unwrap();
        assert_eq!(receive(&listener), "READY=1");
    }

    #[test]
    fn unset_or_empty_is_inactive_and_silent() {
        let notifier = Notifier::from_value(OsStr::new("")).unwrap();
        assert!(!notifier.is_active());
        notifier.send("READY=1").unwrap();
        notifier.ready("nothing listens");
        assert!(!Notifier::default().is_active());
    }

    #[test]
    fn a_relative_or_unknown_address_is_refused() {
        for value in ["notify.sock", "vsock:2:1234"] {
            let err = Notifier::from_value(OsStr::new(value)).unwrap_err();
            assert!(matches!(err, NotifyError::Unsupported { .. }), "{value}");
            assert!(err.to_string().contains(value), "{err}");
        }
    }

    #[test]
    fn a_socket_nobody_listens_on_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        let notifier = Notifier::from_value(path.as_os_str()).unwrap();
        let err = notifier.send("READY=1").unwrap_err();
        assert!(matches!(err, NotifyError::Send { .. }));
        assert!(err.to_string().contains("gone"), "{err}");
    }
}
