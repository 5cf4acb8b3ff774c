//! The host tap: opened by name, or handed over by hulld as an fd.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
#[cfg(test)]
use std::sync::{Arc, Mutex};

use super::VNET_HDR_LEN;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `TUN_F_*` flags for [`Tap::set_offloads`].
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
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

/// How [`Tap::set_offloads`] reaches the tap.
#[derive(Debug)]
enum OffloadControl {
    /// `TUNSETOFFLOAD` on the tap fd.
    Ioctl,
    /// Tests: the flags are recorded instead (the test double is no tap).
    #[cfg(test)]
    Record(Arc<Mutex<Vec<u32>>>),
}

/// A configured tap device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    pub name: String,
    offloads: OffloadControl,
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
        let tap = Self {
            file,
            name,
            offloads: OffloadControl::Ioctl,
        };
        // No offloads until a driver says which it can receive (the device
        // sets them when it is activated).
        tap.set_offloads(0)?;
        Ok(tap)
    }

    /// Wraps any message-preserving fd (tests use a datagram socket pair);
    /// offload changes are recorded in `offloads` instead of made.
    #[cfg(test)]
    pub fn from_file_for_test(file: File, offloads: Arc<Mutex<Vec<u32>>>) -> Self {
        Self {
            file,
            name: "test".into(),
            offloads: OffloadControl::Record(offloads),
        }
    }

    /// Sets which offloaded frames the kernel may hand to this tap
    /// (`TUN_F_*` flags): with `TUN_F_CSUM` frames may come with a partial
    /// checksum, with `TUN_F_TSO4`/`TUN_F_TSO6` as one TCP segment of up to
    /// 64 KiB; 0 makes the kernel checksum and segment them first. Frames
    /// written to the tap may be offloaded whatever is set here.
    pub fn set_offloads(&self, flags: u32) -> Result<(), TapError> {
        match &self.offloads {
            OffloadControl::Ioctl => {
                // SAFETY: TUNSETOFFLOAD takes its argument by value (an
                // unsigned long of flags), no pointer; the fd is ours.
                let rc = unsafe {
                    libc::ioctl(
                        self.file.as_raw_fd(),
                        TUNSETOFFLOAD,
                        libc::c_ulong::from(flags),
                    )
                };
                if rc < 0 {
                    return Err(TapError::Ioctl {
                        what: "set the offloads (TUNSETOFFLOAD)",
                        source: std::io::Error::last_os_error(),
                    });
                }
                Ok(())
            }
            #[cfg(test)]
            OffloadControl::Record(log) => {
                log.lock().expect("offload log lock").push(flags);
                Ok(())
            }
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

    /// Writes one frame gathered from `iovecs` (one `writev`, so one frame
    /// for the tap); false when the tap is full (the frame is dropped).
    ///
    /// # Safety
    /// Every iovec must describe memory that is mapped and readable for the
    /// whole call.
    pub unsafe fn write_frame_vectored(&mut self, iovecs: &[libc::iovec]) -> std::io::Result<bool> {
        let count = libc::c_int::try_from(iovecs.len())
            .map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
        // SAFETY: the caller guarantees each iovec is readable memory for the
        // call; `iovecs` itself is a live slice of `count` entries.
        let rc = unsafe { libc::writev(self.file.as_raw_fd(), iovecs.as_ptr(), count) };
        if rc >= 0 {
            return Ok(true);
        }
        let error = std::io::Error::last_os_error();
        if error.kind() == ErrorKind::WouldBlock {
            Ok(false)
        } else {
            Err(error)
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
