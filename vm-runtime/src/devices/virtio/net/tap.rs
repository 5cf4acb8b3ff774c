//! The host tap: opened by name, or handed over by hulld as an fd.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::VNET_HDR_LEN;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const IFNAMSIZ: usize = 16;

/// Why a tap cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name {0:?} is empty or longer than 15 bytes")]
    Name(String),
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] std::io::Error),
    #[error("cannot {what} on the tap")]
    Ioctl {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the passed fd is not a tap opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (flags {0:#x})")]
    WrongFlags(i16),
}

/// `struct ifreq`: 16-byte name, then a union whose first member we use as flags.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

fn ioctl(
    fd: RawFd,
    what: &'static str,
    request: libc::c_ulong,
    arg: *mut libc::c_void,
) -> Result<(), TapError> {
    // SAFETY: every caller passes a tun/tap request with an argument of the
    // type that request reads or writes (an IfReq or a c_int), valid for the call.
    let rc = unsafe { libc::ioctl(fd, request, arg) };
    if rc < 0 {
        return Err(TapError::Ioctl {
            what,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn set_nonblocking(file: &File) -> Result<(), TapError> {
    let fail = || TapError::Ioctl {
        what: "make non-blocking",
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: F_GETFL on an fd we own takes no pointer argument.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(fail());
    }
    // SAFETY: F_SETFL on an fd we own with an integer flag set; no pointers.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(fail());
    }
    Ok(())
}

/// A configured tap device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    pub name: String,
}

impl Tap {
    /// Attaches to (or creates, with CAP_NET_ADMIN) the tap `name`.
    pub fn open_named(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() >= IFNAMSIZ {
            return Err(TapError::Name(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        ioctl(
            file.as_raw_fd(),
            "attach (TUNSETIFF)",
            TUNSETIFF,
            (&mut req as *mut IfReq).cast(),
        )?;
        Self::configure(file, name.to_string())
    }

    /// Uses a tap fd opened by hulld (in the pod's network namespace).
    pub fn from_fd(fd: OwnedFd) -> Result<Self, TapError> {
        let file = File::from(fd);
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        ioctl(
            file.as_raw_fd(),
            "read the flags (TUNGETIFF)",
            TUNGETIFF,
            (&mut req as *mut IfReq).cast(),
        )?;
        let wanted = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if req.flags & wanted != wanted {
            return Err(TapError::WrongFlags(req.flags));
        }
        let end = req.name.iter().position(|b| *b == 0).unwrap_or(IFNAMSIZ);
        let name = String::from_utf8_lossy(&req.name[..end]).into_owned();
        set_nonblocking(&file)?;
        Self::configure(file, name)
    }

    fn configure(file: File, name: String) -> Result<Self, TapError> {
        let mut hdr_len = VNET_HDR_LEN as libc::c_int;
        ioctl(
            file.as_raw_fd(),
            "set the vnet header size",
            TUNSETVNETHDRSZ,
            (&mut hdr_len as *mut libc::c_int).cast(),
        )?;
        // No offloads: the guest gets and sends plain frames.
        ioctl(
            file.as_raw_fd(),
            "turn offloads off",
            TUNSETOFFLOAD,
            std::ptr::null_mut(),
        )?;
        Ok(Self { file, name })
    }

    /// Wraps any message-preserving fd (tests use a datagram socket pair).
    #[cfg(test)]
    pub fn from_file_for_test(file: File) -> Self {
        Self {
            file,
            name: "test".into(),
        }
    }

    /// Reads one frame (with its vnet header); `None` when none is waiting.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        match self.file.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes one frame; false when the tap is full (the frame is dropped).
    pub fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<bool> {
        match self.file.write(frame) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(matches!(Tap::open_named(""), Err(TapError::Name(_))));
        assert!(matches!(
            Tap::open_named("a-very-long-tap-name"),
            Err(TapError::Name(_))
        ));
    }

    #[test]
    fn a_non_tap_fd_is_refused() {
        let f = tempfile::tempfile().unwrap();
        assert!(matches!(
            Tap::from_fd(f.into()),
            Err(TapError::Ioctl { .. })
        ));
    }
}
