//! The host side of the vsock device: the unix listener for host-initiated
//! connections, one [`Connection`] per stream, and the queue of packets owed
//! to the guest.

use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use event_manager::{EventOps, EventSet, Events};

use super::connection::{ConnState, Connection, HostRead};
use super::metrics::VsockMetrics;
use super::packet::{
    Header, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::{FIRST_HOST_PORT, HOST_CID};

/// Longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 32;
/// Host connections waiting for their CONNECT line, at most.
const MAX_PENDING_ACCEPTS: usize = 64;
/// Connections per device, at most.
const MAX_CONNECTIONS: usize = 1024;

/// (host port, guest port).
type Key = (u32, u32);

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Parses `CONNECT <port>`.
pub fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line)
        .ok()?
        .trim_end_matches(['\r', '\n']);
    let port = text.strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

/// The multiplexer.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    accepting: HashMap<RawFd, UnixStream>,
    /// Connections with something to send, in arrival order (no duplicates).
    rxq: VecDeque<Key>,
    /// Resets for packets that belong to no connection.
    orphan_resets: VecDeque<Header>,
    next_port: u32,
    metrics: Arc<VsockMetrics>,
}

impl Muxer {
    /// Listens on `uds_path` (replacing a stale socket file there).
    pub fn new(
        guest_cid: u64,
        uds_path: &Path,
        metrics: Arc<VsockMetrics>,
    ) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(uds_path);
        let listener = UnixListener::bind(uds_path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            accepting: HashMap::new(),
            rxq: VecDeque::new(),
            orphan_resets: VecDeque::new(),
            next_port: FIRST_HOST_PORT,
            metrics,
        })
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    pub fn init(&mut self, ops: &mut EventOps) {
        if let Err(error) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            tracing::error!(?error, "cannot watch the vsock listener");
        }
    }

    /// Whether any packet is owed to the guest.
    pub fn has_rx(&self) -> bool {
        !self.orphan_resets.is_empty() || !self.rxq.is_empty()
    }

    fn enqueue(&mut self, key: Key) {
        if !self.rxq.contains(&key) {
            self.rxq.push_back(key);
        }
    }

    fn reset_for(&self, header: &Header) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: header.dst_port,
            dst_port: header.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Default::default()
        }
    }

    fn orphan_reset(&mut self, header: &Header) {
        if header.op != OP_RST {
            count(&self.metrics.resets_sent);
            let rst = self.reset_for(header);
            self.orphan_resets.push_back(rst);
        }
    }

    fn set_interest(ops: &mut EventOps, conn: &mut Connection) {
        let want = conn.wanted_interest();
        if want == conn.interest {
            return;
        }
        let result = if conn.interest.is_empty() {
            ops.add(Events::new(&conn.stream, want))
        } else if want.is_empty() {
            ops.remove(Events::new(&conn.stream, conn.interest))
        } else {
            ops.modify(Events::new(&conn.stream, want))
        };
        match result {
            Ok(()) => conn.interest = want,
            Err(error) => tracing::warn!(?error, "cannot change vsock socket interest"),
        }
    }

    fn add_connection(&mut self, conn: Connection, ops: &mut EventOps) {
        let key = (conn.local_port, conn.peer_port);
        self.by_fd.insert(conn.stream.as_raw_fd(), key);
        let conn = self.conns.entry(key).or_insert(conn);
        Self::set_interest(ops, conn);
        self.metrics
            .active_connections
            .store(self.conns.len() as u64, Ordering::Relaxed);
    }

    fn remove_connection(&mut self, key: Key, ops: &mut EventOps) {
        if let Some(conn) = self.conns.remove(&key) {
            if !conn.interest.is_empty() {
                let _ = ops.remove(Events::new(&conn.stream, conn.interest));
            }
            self.by_fd.remove(&conn.stream.as_raw_fd());
        }
        self.rxq.retain(|k| *k != key);
        self.metrics
            .active_connections
            .store(self.conns.len() as u64, Ordering::Relaxed);
    }

    /// Ends a connection with an RST to the guest.
    fn reset_connection(&mut self, key: Key, ops: &mut EventOps) {
        if let Some(conn) = self.conns.get(&key) {
            let rst = Header {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: conn.local_port,
                dst_port: conn.peer_port,
                type_: TYPE_STREAM,
                op: OP_RST,
                ..Default::default()
            };
            count(&self.metrics.resets_sent);
            self.orphan_resets.push_back(rst);
        }
        self.remove_connection(key, ops);
    }

    /// Handles one packet from the guest's tx queue.
    pub fn handle_guest_packet(&mut self, header: Header, payload: Vec<u8>, ops: &mut EventOps) {
        count(&self.metrics.tx_packets);
        tracing::trace!(
            op = header.op,
            src_port = header.src_port,
            dst_port = header.dst_port,
            len = header.len,
            flags = header.flags,
            buf_alloc = header.buf_alloc,
            fwd_cnt = header.fwd_cnt,
            "vsock packet from the guest"
        );
        if header.type_ != TYPE_STREAM
            || header.src_cid != self.guest_cid
            || header.dst_cid != HOST_CID
        {
            count(&self.metrics.malformed_packets);
            self.orphan_reset(&header);
            return;
        }
        let key = (header.dst_port, header.src_port);
        if header.op == OP_REQUEST {
            self.guest_connect(&header, ops);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            self.orphan_reset(&header);
            return;
        };
        conn.update_peer_credit(&header);
        match (header.op, conn.state) {
            (OP_RST, _) => self.remove_connection(key, ops),
            (OP_RESPONSE, ConnState::LocalInit) => {
                conn.state = ConnState::Established;
                let ok = format!("OK {}\n", conn.local_port);
                match conn.write_handshake(ok.as_bytes()) {
                    Ok(()) => Self::set_interest(ops, conn),
                    Err(_) => self.reset_connection(key, ops),
                }
            }
            (OP_RW, ConnState::Established | ConnState::Closing) => {
                self.metrics
                    .tx_bytes
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
                match conn.send_to_host(&payload) {
                    Ok(()) => {
                        if conn.needs_credit_update() {
                            conn.pending_ops.push_back((OP_CREDIT_UPDATE, 0));
                            self.enqueue(key);
                        }
                        let conn = self.conns.get_mut(&key).expect("present");
                        Self::set_interest(ops, conn);
                    }
                    Err(error) => {
                        tracing::debug!(%error, "vsock connection ends");
                        count(&self.metrics.malformed_packets);
                        self.reset_connection(key, ops);
                    }
                }
            }
            (OP_CREDIT_UPDATE, _) => {
                if conn.host_readable && conn.peer_credit() > 0 {
                    self.enqueue(key);
                }
            }
            (OP_CREDIT_REQUEST, _) => {
                conn.pending_ops.push_back((OP_CREDIT_UPDATE, 0));
                self.enqueue(key);
            }
            (OP_SHUTDOWN, _) => {
                if header.flags & SHUTDOWN_SEND != 0 {
                    conn.peer_done_sending = true;
                    let _ = conn.flush_to_host();
                }
                if header.flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == SHUTDOWN_SEND | SHUTDOWN_RCV {
                    self.reset_connection(key, ops);
                }
            }
            _ => {
                count(&self.metrics.malformed_packets);
                self.reset_connection(key, ops);
            }
        }
    }

    /// A guest connection to host port `dst_port`: joined to `<uds>_<port>`.
    fn guest_connect(&mut self, header: &Header, ops: &mut EventOps) {
        let key = (header.dst_port, header.src_port);
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNECTIONS {
            count(&self.metrics.malformed_packets);
            self.orphan_reset(header);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", header.dst_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(port = header.dst_port, %error, "guest connection refused");
                count(&self.metrics.refused_connections);
                self.orphan_reset(header);
                return;
            }
        };
        count(&self.metrics.guest_connections);
        let mut conn = Connection::new(
            stream,
            ConnState::Established,
            header.dst_port,
            header.src_port,
        );
        conn.update_peer_credit(header);
        conn.pending_ops.push_back((OP_RESPONSE, 0));
        self.add_connection(conn, ops);
        self.enqueue(key);
    }

    /// Accepts host connections waiting on the listener.
    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.accepting.len() >= MAX_PENDING_ACCEPTS
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue;
                    }
                    if ops.add(Events::new(&stream, EventSet::IN)).is_ok() {
                        self.accepting.insert(stream.as_raw_fd(), stream);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(error) => {
                    tracing::warn!(%error, "vsock accept failed");
                    return;
                }
            }
        }
    }

    /// Reads the CONNECT line of an accepted host connection.
    fn read_connect_line(&mut self, fd: RawFd, ops: &mut EventOps) {
        let Some(stream) = self.accepting.get(&fd) else {
            return;
        };
        let mut peek = [0u8; MAX_CONNECT_LINE];
        // SAFETY: `peek` is valid for writes of its length; MSG_PEEK leaves
        // the bytes in the socket; `fd` is the open socket we hold.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                peek.as_mut_ptr().cast(),
                peek.len(),
                libc::MSG_PEEK,
            )
        };
        let wait = n < 0 && std::io::Error::last_os_error().kind() == ErrorKind::WouldBlock;
        if wait {
            return;
        }
        let n = n.max(0) as usize;
        let newline = peek[..n].iter().position(|b| *b == b'\n');
        if newline.is_none() && n > 0 && n < MAX_CONNECT_LINE {
            return; // the rest of the line is still coming
        }
        let stream = self.accepting.remove(&fd).expect("present");
        let _ = ops.remove(Events::new(&stream, EventSet::IN));
        let port = newline.and_then(|end| {
            let mut line = vec![0u8; end + 1];
            std::io::Read::read_exact(&mut &stream, &mut line).ok()?;
            parse_connect_line(&line)
        });
        let Some(port) = port else {
            tracing::debug!("vsock host connection without a valid CONNECT line");
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            return;
        }
        let local_port = self.allocate_port(port);
        count(&self.metrics.host_connections);
        let mut conn = Connection::new(stream, ConnState::LocalInit, local_port, port);
        conn.pending_ops.push_back((OP_REQUEST, 0));
        self.add_connection(conn, ops);
        self.enqueue((local_port, port));
    }

    fn allocate_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.conns.contains_key(&(port, peer_port)) {
                return port;
            }
        }
    }

    /// Handles readiness of the listener or a host stream.
    pub fn handle_host_event(&mut self, fd: RawFd, events: EventSet, ops: &mut EventOps) {
        tracing::trace!(fd, ?events, "vsock host socket event");
        if fd == self.listener.as_raw_fd() {
            self.accept(ops);
            return;
        }
        if self.accepting.contains_key(&fd) {
            self.read_connect_line(fd, ops);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        let conn = self.conns.get_mut(&key).expect("by_fd and conns agree");
        if events.contains(EventSet::OUT) && conn.flush_to_host().is_err() {
            self.reset_connection(key, ops);
            return;
        }
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            conn.host_readable = true;
        }
        if conn.needs_credit_update() {
            conn.pending_ops.push_back((OP_CREDIT_UPDATE, 0));
        }
        let ready = !conn.pending_ops.is_empty() || conn.host_readable;
        Self::set_interest(ops, conn);
        if ready {
            self.enqueue(key);
        }
    }

    /// The next packet for the guest, with at most `room` bytes of payload.
    pub fn next_rx(&mut self, room: usize, ops: &mut EventOps) -> Option<(Header, Vec<u8>)> {
        if let Some(rst) = self.orphan_resets.pop_front() {
            return Some((rst, Vec::new()));
        }
        while let Some(key) = self.rxq.pop_front() {
            let guest_cid = self.guest_cid;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            if let Some((op, flags)) = conn.pending_ops.pop_front() {
                let header = conn.header(guest_cid, op, 0, flags);
                if !conn.pending_ops.is_empty() || conn.host_readable {
                    self.rxq.push_front(key);
                }
                return Some((header, Vec::new()));
            }
            if !conn.host_readable || conn.state != ConnState::Established {
                continue;
            }
            match conn.read_from_host(room) {
                Ok(HostRead::Data(data)) => {
                    let header = conn.header(guest_cid, OP_RW, data.len() as u32, 0);
                    self.rxq.push_back(key);
                    count(&self.metrics.rx_packets);
                    self.metrics
                        .rx_bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    return Some((header, data));
                }
                Ok(HostRead::WouldBlock) => {
                    if conn.peer_credit() == 0 {
                        // Wait for the guest's credit; ask once.
                        if conn.should_request_credit() {
                            let header = conn.header(guest_cid, OP_CREDIT_REQUEST, 0, 0);
                            return Some((header, Vec::new()));
                        }
                    } else {
                        conn.host_readable = false;
                        Self::set_interest(ops, conn);
                    }
                }
                Ok(HostRead::Eof) | Err(_) => {
                    conn.state = ConnState::Closing;
                    conn.host_readable = false;
                    let header =
                        conn.header(guest_cid, OP_SHUTDOWN, 0, SHUTDOWN_RCV | SHUTDOWN_SEND);
                    Self::set_interest(ops, conn);
                    return Some((header, Vec::new()));
                }
            }
        }
        None
    }

    /// Drops every connection (the driver reset the device).
    pub fn reset(&mut self, ops: &mut EventOps) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove_connection(key, ops);
        }
        for (_, stream) in self.accepting.drain() {
            let _ = ops.remove(Events::new(&stream, EventSet::IN));
        }
        self.orphan_resets.clear();
    }
}

fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 1024\n"), Some(1024));
        assert_eq!(parse_connect_line(b"CONNECT 52\r\n"), Some(52));
        assert_eq!(parse_connect_line(b"CONNECT\n"), None);
        assert_eq!(parse_connect_line(b"CONNECT -1\n"), None);
        assert_eq!(parse_connect_line(b"CONNECT 99999999999\n"), None);
        assert_eq!(parse_connect_line(b"connect 5\n"), None);
        assert_eq!(parse_connect_line(&[0xff, 0xfe, b'\n']), None);
    }
}
