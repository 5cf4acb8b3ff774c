//! Line framing over a unix stream, with file descriptors (SCM_RIGHTS).
//!
//! File descriptors belong to the line they were sent with: send them in
//! the same `sendmsg` as the request line (one line per such `sendmsg`).
//! The kernel delivers them with the first bytes of that message and ends
//! the read there, so the last byte of the read that brought them lies in
//! their line.

use std::io::{IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Longest accepted line (a boot request with many drives fits easily).
pub const MAX_LINE: usize = 1 << 20;
/// Most fds accepted with one message.
pub const MAX_FDS: usize = 16;

/// Why a line could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("socket I/O failed")]
    Io(#[from] std::io::Error),
    #[error("socket message I/O failed")]
    Msg(#[from] nix::Error),
    #[error("line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("line is not UTF-8")]
    NotUtf8,
}

/// One end of a control connection.
pub struct LineStream {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    buf_offset: u64,
    /// Received fds, keyed by the stream offset of a byte of their line.
    pending_fds: Vec<(u64, OwnedFd)>,
}

impl std::os::fd::AsFd for LineStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl LineStream {
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            buf_offset: 0,
            pending_fds: Vec::new(),
        }
    }

    /// The next complete line already received (without its newline) and
    /// the fds that came with it.
    pub fn next_line(&mut self) -> Result<Option<(String, Vec<OwnedFd>)>, WireError> {
        let Some(pos) = self.buf.iter().position(|b| *b == b'\n') else {
            if self.buf.len() > MAX_LINE {
                return Err(WireError::LineTooLong);
            }
            return Ok(None);
        };
        let line: Vec<u8> = self.buf.drain(..=pos).collect();
        let line_end = self.buf_offset + line.len() as u64;
        self.buf_offset = line_end;
        let (fds, later) = std::mem::take(&mut self.pending_fds)
            .into_iter()
            .partition(|(offset, _)| *offset < line_end);
        self.pending_fds = later;
        let text =
            String::from_utf8(line[..line.len() - 1].to_vec()).map_err(|_| WireError::NotUtf8)?;
        let fds = fds.into_iter().map(|(_, fd)| fd).collect();
        Ok(Some((text, fds)))
    }

    /// Receives one chunk; `Ok(None)` if `nonblocking` and nothing is
    /// waiting, `Ok(Some(0))` at end of stream.
    fn receive(&mut self, nonblocking: bool) -> Result<Option<usize>, WireError> {
        let mut chunk = [0u8; 4096];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(&mut chunk)];
        let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
        if nonblocking {
            flags |= MsgFlags::MSG_DONTWAIT;
        }
        let msg = match recvmsg::<()>(self.stream.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
            Ok(msg) => msg,
            Err(nix::Error::EAGAIN) if nonblocking => return Ok(None),
            Err(nix::Error::EINTR) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let n = msg.bytes;
        if n > 0 {
            let last_byte = self.buf_offset + (self.buf.len() + n) as u64 - 1;
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for fd in fds {
                        // SAFETY: the kernel just installed `fd` in this
                        // process for us (SCM_RIGHTS); nothing else owns it.
                        self.pending_fds
                            .push((last_byte, unsafe { OwnedFd::from_raw_fd(fd) }));
                    }
                }
            }
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(Some(n))
    }

    /// Takes in what has arrived without waiting; false once the peer has
    /// closed its end.
    pub fn receive_available(&mut self) -> Result<bool, WireError> {
        Ok(self.receive(true)? != Some(0))
    }

    /// Blocks for the next line (without its newline) and the fds that came
    /// with it; `None` at end of stream.
    pub fn read_line(&mut self) -> Result<Option<(String, Vec<OwnedFd>)>, WireError> {
        loop {
            if let Some(line) = self.next_line()? {
                return Ok(Some(line));
            }
            if self.receive(false)? == Some(0) {
                return Ok(None);
            }
        }
    }

    /// Writes `line` and a newline, with `fds` attached to its first byte.
    pub fn write_line(&mut self, line: &str, fds: &[BorrowedFd<'_>]) -> Result<(), WireError> {
        let mut data = Vec::with_capacity(line.len() + 1);
        data.extend_from_slice(line.as_bytes());
        data.push(b'\n');
        if fds.is_empty() {
            self.stream.write_all(&data)?;
            return Ok(());
        }
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let sent = sendmsg::<()>(
            self.stream.as_raw_fd(),
            &[IoSlice::new(&data)],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )?;
        self.stream.write_all(&data[sent..])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;

    #[test]
    fn lines_and_fds_cross_a_socketpair() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut tx = LineStream::new(a);
        let mut rx = LineStream::new(b);
        let (mut pipe_r, pipe_w) = std::io::pipe().unwrap();
        let w: OwnedFd = pipe_w.into();
        tx.write_line(r#"{"op":"status"}"#, &[]).unwrap();
        tx.write_line("second", &[w.as_fd()]).unwrap();
        drop(w);
        let (l1, f1) = rx.read_line().unwrap().unwrap();
        assert_eq!(l1, r#"{"op":"status"}"#);
        assert!(f1.is_empty());
        let (l2, f2) = rx.read_line().unwrap().unwrap();
        assert_eq!(l2, "second");
        assert_eq!(f2.len(), 1);
        // The received fd is the pipe's write end.
        let mut file = std::fs::File::from(f2.into_iter().next().unwrap());
        file.write_all(b"x").unwrap();
        drop(file);
        let mut got = String::new();
        pipe_r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "x");
        drop(tx);
        assert!(rx.read_line().unwrap().is_none());
    }

    #[test]
    fn overlong_lines_are_refused() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut rx = LineStream::new(b);
        std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..20 {
                if a.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        assert!(matches!(rx.read_line(), Err(WireError::LineTooLong)));
    }
}
