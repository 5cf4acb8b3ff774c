//! Netlink for the guest network: messages built and parsed with
//! `netlink-packet-route`, sent over a blocking `NETLINK_ROUTE` socket from
//! `netlink-sys` (both already linked by libcontainer). Blocking is fine:
//! each request is one round trip to the kernel, and the agent's single
//! runtime thread already runs `SetupSandbox` synchronously.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkBuffer, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_ROUTE;

use super::{Cidr, Link, Mac, NetworkError, RouteSpec, Step};

/// Receive buffer: far more than one datagram of a link dump holds.
const RECV_BUFFER: usize = 64 * 1024;

/// Makes the changes [`Plan::resolve`] listed.
pub fn apply(netlink: &mut Netlink, steps: &[Step]) -> Result<(), NetworkError> {
    for step in steps {
        let (message, flags, exists_ok) = request_for(step);
        match netlink.request(message, flags) {
            Ok(()) => {}
            Err(err) if exists_ok && err.raw_os_error() == Some(libc::EEXIST) => {
                tracing::debug!(?step, "already configured");
            }
            Err(source) => {
                return Err(NetworkError::Netlink {
                    action: describe(step),
                    source,
                });
            }
        }
    }
    if steps.len() > 1 {
        tracing::info!(changes = steps.len(), "guest network configured");
    }
    Ok(())
}

pub(super) fn describe(step: &Step) -> String {
    match step {
        Step::Up { name, .. } => format!("bring {name} up"),
        Step::Down { name, .. } => format!("bring {name} down to rename it"),
        Step::Rename { from, to, .. } => format!("rename {from} to {to}"),
        Step::Mtu { name, mtu, .. } => format!("set the MTU of {name} to {mtu}"),
        Step::Address { name, cidr, .. } => format!("add address {cidr} to {name}"),
        Step::Route { route, .. } => {
            let mut text = format!("add route {}", route.destination);
            if let Some(gateway) = route.gateway {
                text.push_str(&format!(" via {gateway}"));
            }
            if let Some(device) = &route.device {
                text.push_str(&format!(" dev {device}"));
            }
            text
        }
    }
}

pub(super) fn set_link(
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

/// The netlink message for a step, its extra `NLM_F_*` flags, and whether
/// `EEXIST` means the step was done before.
pub fn request_for(step: &Step) -> (RouteNetlinkMessage, u16, bool) {
    match step {
        Step::Up { index, .. } => (
            set_link(*index, LinkFlags::Up, LinkFlags::Up, Vec::new()),
            0,
            false,
        ),
        Step::Down { index, .. } => (
            set_link(*index, LinkFlags::empty(), LinkFlags::Up, Vec::new()),
            0,
            false,
        ),
        Step::Rename { index, to, .. } => (
            set_link(
                *index,
                LinkFlags::empty(),
                LinkFlags::empty(),
                vec![LinkAttribute::IfName(to.clone())],
            ),
            0,
            false,
        ),
        Step::Mtu { index, mtu, .. } => (
            set_link(
                *index,
                LinkFlags::empty(),
                LinkFlags::empty(),
                vec![LinkAttribute::Mtu(*mtu)],
            ),
            0,
            false,
        ),
        Step::Address { index, cidr, .. } => (
            address_message(*index, *cidr),
            NLM_F_CREATE | NLM_F_EXCL,
            true,
        ),
        Step::Route { route, oif } => (route_message(route, *oif), NLM_F_CREATE | NLM_F_EXCL, true),
    }
}

pub(super) fn address_message(index: u32, cidr: Cidr) -> RouteNetlinkMessage {
    let mut message = AddressMessage::default();
    message.header.family = cidr.family();
    message.header.prefix_len = cidr.prefix;
    message.header.scope = AddressScope::Universe;
    message.header.index = index;
    match cidr.addr {
        IpAddr::V4(addr) => {
            // What `ip address add` sends: IFA_LOCAL is the address, and
            // IFA_ADDRESS the same on a non-point-to-point link.
            message.attributes.push(AddressAttribute::Local(cidr.addr));
            message
                .attributes
                .push(AddressAttribute::Address(cidr.addr));
            if cidr.prefix < 31 {
                let host = u32::MAX >> cidr.prefix;
                message
                    .attributes
                    .push(AddressAttribute::Broadcast(Ipv4Addr::from(
                        u32::from(addr) | host,
                    )));
            }
        }
        IpAddr::V6(_) => {
            // No duplicate address detection: the address is usable at
            // once instead of after ~1 s of tentative state, and the pod's
            // link is point-to-point with its CNI interface anyway.
            message.header.flags = AddressHeaderFlags::Nodad;
            message
                .attributes
                .push(AddressAttribute::Address(cidr.addr));
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
    }
    RouteNetlinkMessage::NewAddress(message)
}

pub(super) fn route_message(route: &RouteSpec, oif: Option<u32>) -> RouteNetlinkMessage {
    let mut message = RouteMessage::default();
    message.header.address_family = route.destination.family();
    message.header.destination_prefix_length = route.destination.prefix;
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    // What `ip route add` uses.
    message.header.protocol = RouteProtocol::Boot;
    message.header.scope = if route.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    message.header.kind = RouteType::Unicast;
    if route.destination.prefix > 0 {
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                route.destination.addr,
            )));
    }
    if let Some(gateway) = route.gateway {
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
    }
    if let Some(oif) = oif {
        message.attributes.push(RouteAttribute::Oif(oif));
    }
    RouteNetlinkMessage::NewRoute(message)
}

/// A blocking `NETLINK_ROUTE` socket in the calling thread's network
/// namespace.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl Netlink {
    pub fn open() -> Result<Netlink, NetworkError> {
        let fail = |source| NetworkError::Netlink {
            action: "open a NETLINK_ROUTE socket".to_owned(),
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(fail)?;
        socket.bind_auto().map_err(fail)?;
        Ok(Netlink {
            socket,
            sequence: 0,
            buffer: Vec::with_capacity(RECV_BUFFER),
        })
    }

    pub(super) fn send(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
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

    /// Reads one datagram and returns the messages in it that answer
    /// `sequence` (stale answers to earlier requests are skipped).
    pub(super) fn receive(
        &mut self,
        sequence: u32,
    ) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        self.buffer.clear();
        let received = self.socket.recv(&mut self.buffer, 0)?;
        if received > self.buffer.len() {
            return Err(io::Error::other(format!(
                "a netlink reply of {received} bytes did not fit {} bytes",
                self.buffer.len()
            )));
        }
        let mut messages = Vec::new();
        let mut offset = 0;
        while offset < self.buffer.len() {
            let rest = &self.buffer[offset..];
            let length = NetlinkBuffer::new_checked(rest)
                .map_err(|e| io::Error::other(format!("bad netlink reply: {e}")))?
                .length() as usize;
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..length])
                .map_err(|e| io::Error::other(format!("bad netlink reply: {e}")))?;
            if message.header.sequence_number == sequence {
                messages.push(message);
            }
            offset += length.div_ceil(4) * 4;
        }
        Ok(messages)
    }

    /// Sends one request with `NLM_F_ACK` and waits for the kernel's answer.
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

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NetworkError> {
        self.dump_links().map_err(|source| NetworkError::Netlink {
            action: "list the guest's network links".to_owned(),
            source,
        })
    }

    pub(super) fn dump_links(&mut self) -> io::Result<Vec<Link>> {
        let replies = self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
        Ok(replies
            .iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(message) => Some(link_from(message)),
                _ => None,
            })
            .collect())
    }

    /// Sends a `NLM_F_DUMP` request and collects the replies up to
    /// `NLMSG_DONE`.
    pub(super) fn dump(
        &mut self,
        message: RouteNetlinkMessage,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
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
}

pub(super) fn link_from(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: None,
        up: message.header.flags.contains(LinkFlags::Up),
        mtu: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Address(bytes) => {
                // All zeros (lo) is no address to match.
                link.mac = <[u8; 6]>::try_from(bytes.as_slice())
                    .ok()
                    .filter(|b| *b != [0; 6])
                    .map(Mac);
            }
            LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
            _ => {}
        }
    }
    link
}
