//! The agent's only unsafe code: syscalls nix does not wrap safely.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

/// Receives one descriptor passed with SCM_RIGHTS on a unix stream socket,
/// without waiting (the sender must already have sent it).
pub fn receive_fd(socket: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let mut name = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    let mut received = None;
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: the kernel has just installed `fd` in this
                // process's table for this message (SCM_RIGHTS); nothing
                // else refers to it, so wrapping it makes it closed exactly
                // once. Extra descriptors are wrapped too, and so closed.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                received.get_or_insert(owned);
            }
        }
    }
    received.ok_or_else(|| std::io::Error::other("no descriptor came with the message"))
}

/// Registers an owned descriptor with the tokio reactor.
pub fn register_async(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor
    // stays open, and refers to the same open file description, until the
    // AsyncFd is dropped; `OwnedFd::as_raw_fd` always returns that same
    // number. These are the invariants `register` requires.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(std::io::Error::from)
}

/// Sets a terminal's window size (`TIOCSWINSZ`).
pub fn set_window_size(tty: BorrowedFd<'_>, rows: u16, columns: u16) -> nix::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `tty` is a live descriptor for the duration of the call (the
    // borrow guarantees it), and TIOCSWINSZ reads exactly one `winsize` from
    // the pointer, which points to an initialized local that outlives the
    // call. The return value is checked.
    let ret = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if ret < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn sets_the_size_of_a_pty() {
        let pty = nix::pty::openpty(None, None).expect("openpty needs /dev/ptmx");
        set_window_size(pty.master.as_fd(), 40, 132).unwrap();
        let size = nix::sys::termios::tcgetattr(pty.slave.as_fd()).map(|_| ());
        assert!(size.is_ok());
        let mut read_back = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: the slave fd is live; TIOCGWINSZ writes one `winsize` into
        // the initialized local it points to.
        let ret = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut read_back) };
        assert_eq!(ret, 0);
        assert_eq!((read_back.ws_row, read_back.ws_col), (40, 132));
    }

    #[test]
    fn receives_a_passed_descriptor() {
        use std::io::{IoSlice, Read, Write};
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        let (read, write) = nix::unistd::pipe().unwrap();
        let fds = [write.as_raw_fd()];
        nix::sys::socket::sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(b"/dev/ptmx")],
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(write);
        let received = receive_fd(b.as_fd()).unwrap();
        std::fs::File::from(received).write_all(b"x").unwrap();
        let mut got = [0u8; 1];
        std::fs::File::from(read).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
        assert!(receive_fd(b.as_fd()).is_err(), "nothing more was sent");
    }

    #[test]
    fn fails_on_a_non_terminal() {
        let (read, _write) = nix::unistd::pipe().unwrap();
        assert_eq!(set_window_size(read.as_fd(), 1, 1), Err(nix::Error::ENOTTY));
    }
}
