//! One vsock stream connection: its host socket, its state, and the
//! credit accounting of both directions.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

use event_manager::EventSet;

use super::packet::{Header, TYPE_STREAM};
use super::{CONN_BUF_ALLOC, HOST_CID};

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST sent to the guest, waiting for its RESPONSE.
    LocalInit,
    /// Data flows both ways.
    Established,
    /// The host side ended; SHUTDOWN sent, waiting for the guest's RST.
    Closing,
}

/// Why a connection must end.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("the guest sent more than the credit it was given")]
    CreditExceeded,
    #[error("host socket I/O failed")]
    Io(#[from] std::io::Error),
}

/// What a read from the host socket gave.
#[derive(Debug, PartialEq, Eq)]
pub enum HostRead {
    Data(Vec<u8>),
    WouldBlock,
    Eof,
}

/// One connection between a guest port and a host unix stream.
#[derive(Debug)]
pub struct Connection {
    pub stream: UnixStream,
    pub state: ConnState,
    /// Port on the host side (CID 2).
    pub local_port: u32,
    /// Port on the guest side.
    pub peer_port: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    rx_cnt: u32,
    /// Bytes of guest data written to the host socket.
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    /// Guest data the host socket has not taken yet (at most CONN_BUF_ALLOC).
    tx_buf: VecDeque<u8>,
    /// Control packets owed to the guest, in order.
    pub pending_ops: VecDeque<(u16, u32)>,
    /// The host socket has (or may have) data or EOF to read.
    pub host_readable: bool,
    /// The guest will send no more: shut the host socket's write side once drained.
    pub peer_done_sending: bool,
    credit_requested: bool,
    /// Events the device currently watches on the stream (empty = not registered).
    pub interest: EventSet,
}

impl Connection {
    pub fn new(stream: UnixStream, state: ConnState, local_port: u32, peer_port: u32) -> Self {
        Self {
            stream,
            state,
            local_port,
            peer_port,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            tx_buf: VecDeque::new(),
            pending_ops: VecDeque::new(),
            host_readable: false,
            peer_done_sending: false,
            credit_requested: false,
            interest: EventSet::empty(),
        }
    }

    /// Takes the guest's buffer space from any packet it sent.
    pub fn update_peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = header.fwd_cnt;
        self.credit_requested = false;
    }

    /// Bytes the device may still send to the guest.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// A header from this connection to the guest, carrying our credit.
    pub fn header(&mut self, guest_cid: u64, op: u16, len: u32, flags: u32) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Whether the guest should hear about freed buffer space.
    pub fn needs_credit_update(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CONN_BUF_ALLOC / 4
    }

    /// Whether to ask the guest for credit (once per stall).
    pub fn should_request_credit(&mut self) -> bool {
        if self.peer_credit() == 0 && !self.credit_requested {
            self.credit_requested = true;
            true
        } else {
            false
        }
    }

    /// Writes the hybrid-vsock handshake answer (`OK <port>\n`) to the host
    /// socket. It is not guest data, so it does not count in `fwd_cnt`
    /// (counting it would make the guest believe it owes credit). The socket
    /// is new and empty, so a short write means it is unusable.
    pub fn write_handshake(&mut self, line: &[u8]) -> Result<(), ConnError> {
        match self.stream.write(line) {
            Ok(n) if n == line.len() => Ok(()),
            Ok(_) => Err(ConnError::Io(ErrorKind::WriteZero.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Passes guest data to the host socket, keeping what it cannot take yet.
    pub fn send_to_host(&mut self, data: &[u8]) -> Result<(), ConnError> {
        if self.tx_buf.len() + data.len() > CONN_BUF_ALLOC as usize {
            return Err(ConnError::CreditExceeded);
        }
        let mut written = 0;
        if self.tx_buf.is_empty() {
            written = match self.stream.write(data) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e.into()),
            };
            self.fwd_cnt = self.fwd_cnt.wrapping_add(written as u32);
        }
        self.tx_buf.extend(&data[written..]);
        Ok(())
    }

    /// Writes buffered guest data to the host socket; true when all is written.
    pub fn flush_to_host(&mut self) -> Result<bool, ConnError> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(ConnError::Io(ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        if self.peer_done_sending {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(true)
    }

    /// Whether guest data waits for the host socket.
    pub fn has_tx_backlog(&self) -> bool {
        !self.tx_buf.is_empty()
    }

    /// Reads up to `max` bytes for the guest, within its credit.
    pub fn read_from_host(&mut self, max: usize) -> Result<HostRead, ConnError> {
        let n = max.min(self.peer_credit() as usize);
        if n == 0 {
            return Ok(HostRead::WouldBlock);
        }
        let mut buf = vec![0u8; n];
        match self.stream.read(&mut buf) {
            Ok(0) => Ok(HostRead::Eof),
            Ok(got) => {
                buf.truncate(got);
                self.rx_cnt = self.rx_cnt.wrapping_add(got as u32);
                Ok(HostRead::Data(buf))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(HostRead::WouldBlock),
            Err(e) => Err(e.into()),
        }
    }

    /// The events the device should watch on the stream now.
    pub fn wanted_interest(&self) -> EventSet {
        let mut want = EventSet::empty();
        if !self.host_readable && self.state != ConnState::Closing {
            want |= EventSet::IN;
        }
        if self.has_tx_backlog() {
            want |= EventSet::OUT;
        }
        want
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::packet::OP_RW;

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Connection::new(a, ConnState::Established, 1 << 30, 1000), b)
    }

    fn credit(buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            buf_alloc,
            fwd_cnt,
            ..Default::default()
        }
    }

    #[test]
    fn credit_limits_what_is_read_for_the_guest() {
        let (mut c, mut host) = pair();
        assert_eq!(c.peer_credit(), 0);
        host.write_all(b"0123456789").unwrap();
        assert_eq!(c.read_from_host(100).unwrap(), HostRead::WouldBlock);
        c.update_peer_credit(&credit(4, 0));
        assert_eq!(
            c.read_from_host(100).unwrap(),
            HostRead::Data(b"0123".to_vec())
        );
        assert_eq!(c.peer_credit(), 0);
        assert!(c.should_request_credit());
        assert!(!c.should_request_credit());
        c.update_peer_credit(&credit(4, 4));
        assert_eq!(c.read_from_host(2).unwrap(), HostRead::Data(b"45".to_vec()));
        // A peer that claims to have forwarded more than it got gives no credit.
        c.update_peer_credit(&credit(4, 100));
        assert_eq!(c.peer_credit(), 0);
        drop(host);
        c.update_peer_credit(&credit(100, 6));
        assert_eq!(
            c.read_from_host(100).unwrap(),
            HostRead::Data(b"6789".to_vec())
        );
        assert_eq!(c.read_from_host(100).unwrap(), HostRead::Eof);
    }

    #[test]
    fn guest_data_is_buffered_within_our_credit_only() {
        let (mut c, host) = pair();
        // Fill the host socket until it stops taking data.
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0usize;
        while sent < 4 * 1024 * 1024 {
            c.send_to_host(&chunk).unwrap();
            sent += chunk.len();
            if c.has_tx_backlog() {
                break;
            }
        }
        assert!(c.has_tx_backlog());
        assert!(c.wanted_interest().contains(EventSet::OUT));
        // More than the advertised buffer is a protocol violation.
        let big = vec![0u8; CONN_BUF_ALLOC as usize + 1];
        assert!(matches!(
            c.send_to_host(&big),
            Err(ConnError::CreditExceeded)
        ));
        drop(host);
        assert!(c.flush_to_host().is_err());
    }

    #[test]
    fn the_handshake_line_is_not_guest_data() {
        let (mut c, mut host) = pair();
        c.write_handshake(b"OK 1073741824\n").unwrap();
        assert_eq!(c.header(3, OP_RW, 0, 0).fwd_cnt, 0);
        let mut line = [0u8; 14];
        host.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"OK 1073741824\n");
    }

    #[test]
    fn headers_carry_our_credit_and_updates_are_rate_limited() {
        let (mut c, _host) = pair();
        c.send_to_host(b"x").unwrap();
        let h = c.header(3, OP_RW, 0, 0);
        assert_eq!(h.fwd_cnt, 1);
        assert_eq!(h.buf_alloc, CONN_BUF_ALLOC);
        assert_eq!(
            (h.src_cid, h.dst_cid, h.src_port, h.dst_port),
            (HOST_CID, 3, 1 << 30, 1000)
        );
        assert!(!c.needs_credit_update());
        c.send_to_host(&vec![0u8; (CONN_BUF_ALLOC / 4) as usize])
            .unwrap();
        let _ = c.flush_to_host();
        assert!(c.needs_credit_update());
    }
}
