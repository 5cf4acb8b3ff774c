//! A blocking `NETLINK_ROUTE` socket for the host side of pod networking:
//! messages built and parsed with `netlink-packet-route`, sent with
//! `netlink-sys`. A netlink socket belongs to the network namespace of the
//! thread that opened it, so callers open one inside
//! [`PodNetns::run_in`](super::netns::PodNetns::run_in) to work on a pod's
//! links. Each request is one short round trip to the kernel; callers run
//! on their own (blocking) thread anyway.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_ROUTE;

/// Receive buffer: far more than one datagram of a dump in a pod's
/// namespace holds (the kernel fills at most ~32 KiB per dump datagram).
const RECV_BUFFER: usize = 64 * 1024;

/// What hull needs to know of one network link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Link-layer address, when it is a 6-byte (Ethernet) one.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// `IFLA_INFO_KIND` ("veth", "tun", ...), when the driver reports one.
    pub kind: Option<String>,
}

/// Summarises a link message of a dump or a get.
pub(crate) fn link_from(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: message.header.flags.contains(LinkFlags::Up),
        kind: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Address(bytes) => link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(info_kind_name(kind));
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn info_kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Tun => "tun".to_owned(),
        InfoKind::Veth => "veth".to_owned(),
        InfoKind::Other(name) => name.clone(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// A `SetLink` request changing the `change` flags to `flags` and setting
/// `attributes` on link `index`.
pub(crate) fn set_link_message(
    index: u32,
    flags: LinkFlags,
    change: LinkFlags,
    attributes: Vec<LinkAttribute>,
) -> RouteNetlinkMessage {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message.header.flags = flags;
    message.header.change_mask = change;
    message.attributes = attributes;
    RouteNetlinkMessage::SetLink(message)
}

/// A blocking `NETLINK_ROUTE` socket in the network namespace of the thread
/// that opened it.
pub(crate) struct Rtnl {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl Rtnl {
    /// Opens and binds a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        Ok(Rtnl {
            socket,
            sequence: 0,
            buffer: Vec::with_capacity(RECV_BUFFER),
        })
    }

    fn send(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut packet = NetlinkMessage::from(message);
        packet.header.flags = NLM_F_REQUEST | flags;
        packet.header.sequence_number = self.sequence;
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        Ok(self.sequence)
    }

    /// Reads one datagram; returns the messages in it that answer
    /// `sequence` (late answers to earlier requests are skipped).
    fn receive(&mut self, sequence: u32) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        self.buffer.clear();
        let received = self.socket.recv(&mut self.buffer, libc::MSG_TRUNC)?;
        if received > self.buffer.len() {
            return Err(io::Error::other(format!(
                "a netlink reply of {received} bytes did not fit {} bytes",
                self.buffer.len()
            )));
        }
        parse_datagram(&self.buffer, sequence)
    }

    /// Sends one request with `NLM_F_ACK` (plus `flags`) and waits for the
    /// kernel's answer; a refusal is the kernel's errno as an `io::Error`.
    pub fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let sequence = self.send(message, NLM_F_ACK | flags)?;
        loop {
            for reply in self.receive(sequence)? {
                if let NetlinkPayload::Error(error) = reply.payload {
                    return match error.code {
                        None => Ok(()),
                        Some(_) => Err(error.to_io()),
                    };
                }
            }
        }
    }

    /// Sends an `NLM_F_DUMP` request and collects the replies up to
    /// `NLMSG_DONE`.
    pub fn dump(&mut self, message: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let sequence = self.send(message, NLM_F_DUMP)?;
        let mut replies = Vec::new();
        loop {
            for reply in self.receive(sequence)? {
                match reply.payload {
                    NetlinkPayload::InnerMessage(message) => replies.push(message),
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(error) if error.code.is_some() => {
                        return Err(error.to_io());
                    }
                    _ => {}
                }
            }
        }
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let replies = self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
        Ok(replies
            .iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(message) => Some(link_from(message)),
                _ => None,
            })
            .collect())
    }

    /// The link named `name`, if there is one.
    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|link| link.name == name))
    }

    /// Sets link `index` up or down.
    pub fn set_up(&mut self, index: u32, up: bool) -> io::Result<()> {
        let flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        self.request(set_link_message(index, flags, LinkFlags::Up, Vec::new()), 0)
    }

    /// Deletes link `index`.
    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(message), 0)
    }
}

/// Splits one netlink datagram into its messages, keeping those that answer
/// `sequence`.
fn parse_datagram(
    mut bytes: &[u8],
    sequence: u32,
) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
    let bad = |e: &dyn std::fmt::Display| io::Error::other(format!("bad netlink reply: {e}"));
    let mut messages = Vec::new();
    while !bytes.is_empty() {
        let length = NetlinkBuffer::new_checked(bytes)
            .map_err(|e| bad(&e))?
            .length() as usize;
        let message = bytes
            .get(..length)
            .ok_or_else(|| bad(&"a message runs past the datagram"))?;
        let message =
            NetlinkMessage::<RouteNetlinkMessage>::deserialize(message).map_err(|e| bad(&e))?;
        if message.header.sequence_number == sequence {
            messages.push(message);
        }
        // Messages are 4-byte aligned; the last one may end unpadded.
        bytes = bytes.get(length.div_ceil(4) * 4..).unwrap_or_default();
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::LinkHeader;

    fn serialize(message: RouteNetlinkMessage, sequence: u32) -> Vec<u8> {
        let mut packet = NetlinkMessage::from(message);
        packet.header.sequence_number = sequence;
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        bytes
    }

    fn link_message(index: u32, name: &str) -> LinkMessage {
        let mut message = LinkMessage::default();
        message.header = LinkHeader {
            index,
            flags: LinkFlags::Up,
            ..LinkHeader::default()
        };
        message.attributes = vec![
            LinkAttribute::IfName(name.to_owned()),
            LinkAttribute::Mtu(1400),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        message
    }

    #[test]
    fn a_link_message_is_summarised() {
        let link = link_from(&link_message(7, "eth0"));
        assert_eq!(
            link,
            Link {
                index: 7,
                name: "eth0".into(),
                mac: Some([2, 0, 0, 0, 0, 1]),
                mtu: Some(1400),
                up: true,
                kind: Some("veth".into()),
            }
        );
    }

    #[test]
    fn a_datagram_keeps_only_the_answers_to_the_request() {
        let mut bytes = serialize(RouteNetlinkMessage::NewLink(link_message(1, "lo")), 5);
        bytes.extend(serialize(
            RouteNetlinkMessage::NewLink(link_message(2, "eth0")),
            4,
        ));
        bytes.extend(serialize(
            RouteNetlinkMessage::NewLink(link_message(3, "tap0")),
            5,
        ));
        let messages = parse_datagram(&bytes, 5).unwrap();
        let names: Vec<String> = messages
            .into_iter()
            .filter_map(|m| match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    Some(link_from(&l).name)
                }
                _ => None,
            })
            .collect();
        assert_eq!(names, ["lo", "tap0"]);
    }

    #[test]
    fn a_truncated_datagram_is_an_error_not_a_panic() {
        let bytes = serialize(RouteNetlinkMessage::NewLink(link_message(1, "lo")), 1);
        for cut in [3, 16, bytes.len() - 1] {
            assert!(parse_datagram(&bytes[..cut], 1).is_err(), "cut at {cut}");
        }
    }
}
