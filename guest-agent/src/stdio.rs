//! A process's stdio inside the guest: pipes or a terminal, read and written
//! without blocking the agent's single thread.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::unix::AsyncFd;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::output::HeldOutput;

/// Setting up stdio failed.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("cannot create a pipe for the process's stdio")]
    Pipe(#[source] nix::Error),
    #[error("cannot open /dev/null for the process's stdin")]
    DevNull(#[source] io::Error),
    #[error("cannot make a stdio descriptor non-blocking")]
    NonBlocking(#[source] io::Error),
    #[error("another reader is attached to this process's output")]
    ReaderAttached,
    #[error("the process has no stdin (it was created without stdin)")]
    NoStdin,
    #[error("the process's stdin is closed")]
    StdinClosed,
    #[error("writing to the process's stdin failed")]
    Write(#[source] io::Error),
    #[error("the process has no terminal")]
    NoTerminal,
    #[error("cannot set the terminal size")]
    Resize(#[source] nix::Error),
    #[error("{stream} offset {offset} is beyond the {end} bytes the process has written")]
    OffsetBeyondOutput {
        stream: &'static str,
        offset: u64,
        end: u64,
    },
}

/// One end of a pipe or terminal, registered with the runtime.
pub struct AsyncFile {
    fd: AsyncFd<OwnedFd>,
}

impl AsyncFile {
    pub fn new(fd: OwnedFd) -> Result<Self, StdioError> {
        let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(|e| StdioError::NonBlocking(e.into()))?;
        fcntl(
            &fd,
            FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(|e| StdioError::NonBlocking(e.into()))?;
        Ok(Self {
            fd: crate::sys::register_async(fd).map_err(StdioError::NonBlocking)?,
        })
    }

    /// Reads what is available; `Ok(0)` at end of file. A terminal master
    /// reports EIO once every slave is closed: that is end of file too.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// The output side of a process: one reader at a time.
pub struct Output {
    /// The terminal master, or the read end of the stdout pipe.
    pub(crate) stdout: Option<AsyncFile>,
    /// The read end of the stderr pipe (none with a terminal).
    pub(crate) stderr: Option<AsyncFile>,
}

/// The agent's ends of one process's stdio.
pub struct ProcessStdio {
    stdin: Mutex<Option<AsyncFile>>,
    has_stdin: bool,
    output: Arc<Mutex<Output>>,
    /// Output read and not yet acknowledged by its reader.
    held: Arc<HeldOutput>,
    /// A duplicate of the terminal master, for resizing.
    terminal: Option<OwnedFd>,
}

/// The process's ends, handed to libcontainer (pipes only; with a terminal
/// libcontainer connects the process to the terminal itself).
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), StdioError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(StdioError::Pipe)
}

impl ProcessStdio {
    /// Pipes for stdout and stderr, and for stdin when `stdin` (else the
    /// process reads /dev/null).
    pub fn pipes(stdin: bool) -> Result<(Self, ChildStdio), StdioError> {
        let (stdout_read, stdout_write) = pipe()?;
        let (stderr_read, stderr_write) = pipe()?;
        let (agent_stdin, child_stdin) = if stdin {
            let (read, write) = pipe()?;
            (Some(AsyncFile::new(write)?), read)
        } else {
            let null = std::fs::File::open("/dev/null").map_err(StdioError::DevNull)?;
            (None, OwnedFd::from(null))
        };
        let stdio = Self {
            stdin: Mutex::new(agent_stdin),
            has_stdin: stdin,
            output: Arc::new(Mutex::new(Output {
                stdout: Some(AsyncFile::new(stdout_read)?),
                stderr: Some(AsyncFile::new(stderr_read)?),
            })),
            held: Arc::default(),
            terminal: None,
        };
        Ok((
            stdio,
            ChildStdio {
                stdin: child_stdin,
                stdout: stdout_write,
                stderr: stderr_write,
            },
        ))
    }

    /// A terminal: `master` carries output and, when `stdin`, input.
    pub fn terminal(master: OwnedFd, stdin: bool) -> Result<Self, StdioError> {
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(StdioError::NonBlocking);
        let resize = dup(&master)?;
        let input = if stdin {
            Some(AsyncFile::new(dup(&master)?)?)
        } else {
            None
        };
        Ok(Self {
            stdin: Mutex::new(input),
            has_stdin: stdin,
            output: Arc::new(Mutex::new(Output {
                stdout: Some(AsyncFile::new(master)?),
                stderr: None,
            })),
            held: Arc::default(),
            terminal: Some(resize),
        })
    }

    /// Writes to the process's stdin.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), StdioError> {
        if !self.has_stdin {
            return Err(StdioError::NoStdin);
        }
        let stdin = self.stdin.lock().await;
        let file = stdin.as_ref().ok_or(StdioError::StdinClosed)?;
        file.write_all(data).await.map_err(StdioError::Write)
    }

    /// Closes the process's stdin. With a terminal, sends EOF (^D) instead:
    /// closing our end of the master would not reach the process.
    pub async fn close_stdin(&self) -> Result<(), StdioError> {
        if !self.has_stdin {
            return Err(StdioError::NoStdin);
        }
        let mut stdin = self.stdin.lock().await;
        if let Some(file) = stdin.as_ref()
            && self.terminal.is_some()
        {
            file.write_all(&[4]).await.map_err(StdioError::Write)?;
        }
        *stdin = None;
        Ok(())
    }

    /// Sets the terminal's size.
    pub fn resize(&self, rows: u16, columns: u16) -> Result<(), StdioError> {
        let terminal = self.terminal.as_ref().ok_or(StdioError::NoTerminal)?;
        crate::sys::set_window_size(terminal.as_fd(), rows, columns).map_err(StdioError::Resize)
    }

    /// Takes the output for one reader; fails if another reader has it.
    pub fn attach_output(&self) -> Result<OwnedMutexGuard<Output>, StdioError> {
        self.output
            .clone()
            .try_lock_owned()
            .map_err(|_| StdioError::ReaderAttached)
    }

    /// The output read and held for the reader (see [`crate::output`]).
    pub fn held_output(&self) -> Arc<HeldOutput> {
        Arc::clone(&self.held)
    }

    /// The raw descriptor numbers, for logs.
    pub fn describe(&self) -> String {
        match &self.terminal {
            Some(t) => format!("terminal(fd {})", t.as_raw_fd()),
            None => "pipes".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use hull_proto::limits::MAX_STDIO_CHUNK_BYTES;
    use hull_proto::v1;
    use tokio::sync::mpsc;

    use super::*;

    async fn collect(stdio: &ProcessStdio) -> (Vec<u8>, Vec<u8>) {
        let output = stdio.attach_output().unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(crate::output::pump(
            output,
            stdio.held_output(),
            [0, 0],
            false,
            tx,
        ));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk.unwrap();
            assert!(chunk.data.len() <= MAX_STDIO_CHUNK_BYTES);
            match v1::OutputStream::try_from(chunk.stream).unwrap() {
                v1::OutputStream::Stderr => err.extend(chunk.data),
                _ => out.extend(chunk.data),
            }
        }
        (out, err)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pipes_carry_stdout_and_stderr_separately_in_bounded_chunks() {
        let (stdio, child) = ProcessStdio::pipes(false).unwrap();
        let big = vec![b'x'; 3 * MAX_STDIO_CHUNK_BYTES + 5];
        let writer = {
            let big = big.clone();
            std::thread::spawn(move || {
                let mut out = std::fs::File::from(child.stdout);
                let mut err = std::fs::File::from(child.stderr);
                use std::io::Write;
                out.write_all(&big).unwrap();
                err.write_all(b"oops").unwrap();
            })
        };
        let (out, err) = collect(&stdio).await;
        writer.join().unwrap();
        assert_eq!(out, big);
        assert_eq!(err, b"oops");
        assert!(matches!(
            stdio.write_stdin(b"x").await,
            Err(StdioError::NoStdin)
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn only_one_reader_at_a_time() {
        let (stdio, _child) = ProcessStdio::pipes(false).unwrap();
        let first = stdio.attach_output().unwrap();
        assert!(matches!(
            stdio.attach_output(),
            Err(StdioError::ReaderAttached)
        ));
        drop(first);
        assert!(stdio.attach_output().is_ok());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stdin_reaches_the_pipe_and_close_gives_eof() {
        let (stdio, child) = ProcessStdio::pipes(true).unwrap();
        stdio.write_stdin(b"hello").await.unwrap();
        stdio.close_stdin().await.unwrap();
        let mut got = String::new();
        use std::io::Read;
        std::fs::File::from(child.stdin)
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, "hello");
        assert!(matches!(
            stdio.write_stdin(b"x").await,
            Err(StdioError::StdinClosed)
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn terminal_output_ends_when_the_slave_closes() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let stdio = ProcessStdio::terminal(pty.master, true).unwrap();
        stdio.resize(24, 80).unwrap();
        {
            use std::io::Write;
            let mut slave = std::fs::File::from(pty.slave);
            slave.write_all(b"hi\n").unwrap();
        }
        let (out, err) = collect(&stdio).await;
        assert_eq!(out, b"hi\r\n", "the terminal translates newlines");
        assert!(err.is_empty());
    }
}
