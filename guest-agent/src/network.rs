//! The guest's network from `SetupSandboxRequest.interfaces` and `.routes`:
//! `lo` up, each virtio-net link found by MAC, renamed, its MTU and
//! addresses set and brought up, then the routes added.
//!
//! Three steps, so that nothing changes unless the whole request is good:
//! [`Plan::parse`] checks the request alone (MACs, names, CIDRs, families);
//! [`Plan::resolve`] matches it against the guest's links (read with one
//! `RTM_GETLINK` dump) and yields the [`Step`]s; [`apply`] runs them. Every
//! step is safe to repeat: hulld may send the same request again after it
//! restarts, so an address or route that already exists (`EEXIST`) counts as
//! done.
//!
//! Netlink: messages are built and parsed with `netlink-packet-route` and
//! sent over a blocking `NETLINK_ROUTE` socket from `netlink-sys` (both
//! already linked by libcontainer). Blocking is fine: each request is one
//! round trip to the kernel, and the agent's single runtime thread already
//! runs `SetupSandbox` synchronously.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hull_proto::v1;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkBuffer, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_ROUTE;

/// Linux's `IFNAMSIZ` minus the terminating NUL.
const MAX_IFNAME: usize = 15;
/// The smallest MTU IPv4 allows; the kernel checks the device's own range.
const MIN_MTU: u32 = 68;
/// The loopback device, brought up on every `SetupSandbox`.
const LOOPBACK: &str = "lo";
/// Receive buffer: far more than one datagram of a link dump holds.
const RECV_BUFFER: usize = 64 * 1024;

/// Network setup failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The request is wrong: `field` names the offending field, e.g.
    /// `interfaces[0].addresses[1]`.
    #[error("{field} {value:?}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
    #[error("{field}: no guest network link has MAC address {mac} (links present: {present})")]
    NoSuchMac {
        field: String,
        mac: Mac,
        present: String,
    },
    #[error("cannot {action}")]
    Netlink {
        action: String,
        #[source]
        source: io::Error,
    },
}

fn invalid(field: impl Into<String>, value: &str, reason: impl Into<String>) -> NetworkError {
    NetworkError::Invalid {
        field: field.into(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac([u8; 6]);

impl Mac {
    /// `aa:bb:cc:dd:ee:ff`, either case.
    fn parse(text: &str) -> Option<Mac> {
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next()?;
            if part.len() != 2 || !part.chars().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            *byte = u8::from_str_radix(part, 16).ok()?;
        }
        parts.next().is_none().then_some(Mac(bytes))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// An address with a prefix length, e.g. `10.88.0.5/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    fn parse(text: &str) -> Result<Cidr, &'static str> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or("not in CIDR notation (address/prefix-length)")?;
        let addr: IpAddr = addr.parse().map_err(|_| "not an IPv4 or IPv6 address")?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix.parse::<u8>() {
            Ok(p) if p <= max && (prefix == "0" || !prefix.starts_with('0')) => p,
            _ if addr.is_ipv4() => return Err("prefix length is not a number from 0 to 32"),
            _ => return Err("prefix length is not a number from 0 to 128"),
        };
        Ok(Cidr { addr, prefix })
    }

    fn family(&self) -> AddressFamily {
        family(self.addr)
    }

    /// The address with the bits past the prefix cleared.
    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// What the kernel accepts as an interface name (`dev_valid_name`).
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct InterfaceSpec {
    mac: Mac,
    name: String,
    addresses: Vec<Cidr>,
    mtu: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub destination: Cidr,
    /// `None`: on-link.
    pub gateway: Option<IpAddr>,
    /// `None`: the kernel picks the device from the gateway.
    pub device: Option<String>,
}

/// A request checked on its own, before the guest's links are looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    interfaces: Vec<InterfaceSpec>,
    routes: Vec<RouteSpec>,
}

/// A network link of the guest, as an `RTM_GETLINK` dump reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `None` for links without an Ethernet address (`lo`'s all-zero one
    /// counts as none).
    pub mac: Option<Mac>,
    pub up: bool,
    pub mtu: Option<u32>,
}

/// One change to the guest's network, in the order [`apply`] makes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Set `IFF_UP` on a link (also done when it is already up).
    Up {
        index: u32,
        name: String,
    },
    /// Clear `IFF_UP`: the kernel renames only links that are down.
    Down {
        index: u32,
        name: String,
    },
    Rename {
        index: u32,
        from: String,
        to: String,
    },
    Mtu {
        index: u32,
        name: String,
        mtu: u32,
    },
    /// Add an address; one that exists already is fine.
    Address {
        index: u32,
        name: String,
        cidr: Cidr,
    },
    /// Add a route to the main table; one that exists already is fine.
    Route {
        route: RouteSpec,
        /// The output device's index, when the route names one.
        oif: Option<u32>,
    },
}

impl Plan {
    /// Checks the request's interfaces and routes on their own.
    pub fn parse(interfaces: &[v1::Interface], routes: &[v1::Route]) -> Result<Plan, NetworkError> {
        let mut plan = Plan::default();
        let mut macs = HashSet::new();
        let mut names = HashSet::new();
        for (i, interface) in interfaces.iter().enumerate() {
            let field = |f: &str| format!("interfaces[{i}].{f}");
            let mac = Mac::parse(&interface.mac_address).ok_or_else(|| {
                invalid(
                    field("mac_address"),
                    &interface.mac_address,
                    "not a MAC address (six hex bytes separated by ':')",
                )
            })?;
            if !macs.insert(mac) {
                return Err(invalid(
                    field("mac_address"),
                    &interface.mac_address,
                    "named by two interfaces",
                ));
            }
            if !valid_ifname(&interface.name) {
                return Err(invalid(
                    field("name"),
                    &interface.name,
                    "not an interface name (1 to 15 bytes, no '/', ':' or whitespace)",
                ));
            }
            if interface.name == LOOPBACK || !names.insert(interface.name.as_str()) {
                return Err(invalid(
                    field("name"),
                    &interface.name,
                    "the name is taken (by lo or another interface)",
                ));
            }
            if interface.mtu != 0 && interface.mtu < MIN_MTU {
                return Err(invalid(
                    field("mtu"),
                    &interface.mtu.to_string(),
                    format!("below the minimum of {MIN_MTU} (0 leaves the MTU as it is)"),
                ));
            }
            let addresses = interface
                .addresses
                .iter()
                .enumerate()
                .map(|(j, text)| {
                    Cidr::parse(text).map_err(|reason| {
                        invalid(format!("interfaces[{i}].addresses[{j}]"), text, reason)
                    })
                })
                .collect::<Result<_, _>>()?;
            plan.interfaces.push(InterfaceSpec {
                mac,
                name: interface.name.clone(),
                addresses,
                mtu: interface.mtu,
            });
        }
        for (i, route) in routes.iter().enumerate() {
            let field = |f: &str| format!("routes[{i}].{f}");
            let destination = Cidr::parse(&route.destination)
                .map_err(|reason| invalid(field("destination"), &route.destination, reason))?;
            if destination.network() != destination.addr {
                return Err(invalid(
                    field("destination"),
                    &route.destination,
                    format!(
                        "has bits set past the prefix length (the network is {}/{})",
                        destination.network(),
                        destination.prefix
                    ),
                ));
            }
            let gateway = if route.gateway.is_empty() {
                None
            } else {
                let gateway: IpAddr = route.gateway.parse().map_err(|_| {
                    invalid(
                        field("gateway"),
                        &route.gateway,
                        "not an IPv4 or IPv6 address",
                    )
                })?;
                if gateway.is_ipv4() != destination.addr.is_ipv4() {
                    return Err(invalid(
                        field("gateway"),
                        &route.gateway,
                        format!(
                            "is not of the destination's address family ({})",
                            route.destination
                        ),
                    ));
                }
                Some(gateway)
            };
            let device = if route.device.is_empty() {
                None
            } else if valid_ifname(&route.device) {
                Some(route.device.clone())
            } else {
                return Err(invalid(
                    field("device"),
                    &route.device,
                    "not an interface name",
                ));
            };
            if gateway.is_none() && device.is_none() {
                return Err(invalid(
                    field("device"),
                    "",
                    "an on-link route (no gateway) needs a device",
                ));
            }
            plan.routes.push(RouteSpec {
                destination,
                gateway,
                device,
            });
        }
        Ok(plan)
    }

    /// Matches the plan against the guest's links and lists the changes to
    /// make. Fails, changing nothing, if a MAC matches no link, a new name
    /// belongs to another link, or a route names a device that will not
    /// exist.
    pub fn resolve(&self, links: &[Link]) -> Result<Vec<Step>, NetworkError> {
        let mut steps = Vec::new();
        if let Some(lo) = links.iter().find(|l| l.name == LOOPBACK) {
            steps.push(Step::Up {
                index: lo.index,
                name: lo.name.clone(),
            });
        }
        // The name each link will have once the interfaces are configured.
        let mut final_names: HashMap<u32, &str> =
            links.iter().map(|l| (l.index, l.name.as_str())).collect();
        let mut matched = Vec::new();
        for (i, interface) in self.interfaces.iter().enumerate() {
            let link = links
                .iter()
                .find(|l| l.mac == Some(interface.mac))
                .ok_or_else(|| NetworkError::NoSuchMac {
                    field: format!("interfaces[{i}].mac_address"),
                    mac: interface.mac,
                    present: present_macs(links),
                })?;
            if let Some(other) = links
                .iter()
                .find(|l| l.name == interface.name && l.index != link.index)
            {
                return Err(invalid(
                    format!("interfaces[{i}].name"),
                    &interface.name,
                    format!(
                        "is the name of another guest link ({})",
                        other.mac.map_or("no MAC".to_owned(), |m| m.to_string())
                    ),
                ));
            }
            final_names.insert(link.index, interface.name.as_str());
            matched.push((interface, link));
        }
        for (interface, link) in matched {
            let index = link.index;
            let name = interface.name.clone();
            if link.name != interface.name {
                if link.up {
                    steps.push(Step::Down {
                        index,
                        name: link.name.clone(),
                    });
                }
                steps.push(Step::Rename {
                    index,
                    from: link.name.clone(),
                    to: name.clone(),
                });
            }
            if interface.mtu != 0 && link.mtu != Some(interface.mtu) {
                steps.push(Step::Mtu {
                    index,
                    name: name.clone(),
                    mtu: interface.mtu,
                });
            }
            for cidr in &interface.addresses {
                steps.push(Step::Address {
                    index,
                    name: name.clone(),
                    cidr: *cidr,
                });
            }
            steps.push(Step::Up { index, name });
        }
        for (i, route) in self.routes.iter().enumerate() {
            let oif = match &route.device {
                None => None,
                Some(device) => Some(
                    final_names
                        .iter()
                        .find(|(_, name)| **name == device.as_str())
                        .map(|(index, _)| *index)
                        .ok_or_else(|| {
                            invalid(
                                format!("routes[{i}].device"),
                                device,
                                "is neither an interface of the request nor a guest link",
                            )
                        })?,
                ),
            };
            steps.push(Step::Route {
                route: route.clone(),
                oif,
            });
        }
        Ok(steps)
    }
}

fn present_macs(links: &[Link]) -> String {
    let present: Vec<String> = links
        .iter()
        .filter_map(|l| l.mac.map(|m| format!("{} {m}", l.name)))
        .collect();
    if present.is_empty() {
        "none".to_owned()
    } else {
        present.join(", ")
    }
}

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

fn describe(step: &Step) -> String {
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

fn set_link(
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

fn address_message(index: u32, cidr: Cidr) -> RouteNetlinkMessage {
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

fn route_message(route: &RouteSpec, oif: Option<u32>) -> RouteNetlinkMessage {
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

    /// Reads one datagram and returns the messages in it that answer
    /// `sequence` (stale answers to earlier requests are skipped).
    fn receive(&mut self, sequence: u32) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
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

    fn dump_links(&mut self) -> io::Result<Vec<Link>> {
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
    fn dump(&mut self, message: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
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

fn link_from(message: &LinkMessage) -> Link {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn interface(mac: &str, name: &str, addresses: &[&str], mtu: u32) -> v1::Interface {
        v1::Interface {
            mac_address: mac.into(),
            name: name.into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            mtu,
        }
    }

    fn route(destination: &str, gateway: &str, device: &str) -> v1::Route {
        v1::Route {
            destination: destination.into(),
            gateway: gateway.into(),
            device: device.into(),
        }
    }

    fn field_of(err: NetworkError) -> String {
        match err {
            NetworkError::Invalid { field, .. } | NetworkError::NoSuchMac { field, .. } => field,
            other => panic!("not a request error: {other}"),
        }
    }

    #[test]
    fn parses_macs_in_either_case() {
        let mac = Mac::parse("52:54:00:AB:cd:0f").unwrap();
        assert_eq!(mac, Mac([0x52, 0x54, 0, 0xab, 0xcd, 0x0f]));
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "52-54-00-ab-cd-0f",
            "5:54:00:ab:cd:0f0",
            "+5:54:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
        ] {
            assert_eq!(Mac::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parses_cidrs_of_both_families() {
        let v4 = Cidr::parse("10.88.0.5/16").unwrap();
        assert_eq!(v4.addr, IpAddr::from([10, 88, 0, 5]));
        assert_eq!(v4.prefix, 16);
        assert_eq!(v4.network(), IpAddr::from([10, 88, 0, 0]));
        let v6 = Cidr::parse("fd00:10:88::5/64").unwrap();
        assert_eq!(v6.prefix, 64);
        assert_eq!(v6.network().to_string(), "fd00:10:88::");
        assert_eq!(
            Cidr::parse("0.0.0.0/0").unwrap().network().to_string(),
            "0.0.0.0"
        );
        assert_eq!(Cidr::parse("::/0").unwrap().prefix, 0);
        assert_eq!(Cidr::parse("10.0.0.1/32").unwrap().prefix, 32);
        assert_eq!(Cidr::parse("::1/128").unwrap().prefix, 128);
        for bad in [
            "10.88.0.5",
            "10.88.0.5/33",
            "::1/129",
            "10.88.0.5/",
            "10.88.0.5/-1",
            "10.88.0.5/016",
            "10.88.0/16",
            "eth0/16",
            "/16",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn interface_names_follow_the_kernel() {
        assert!(valid_ifname("eth0"));
        assert!(valid_ifname(&"a".repeat(15)));
        for bad in ["", ".", "..", "a/b", "a:1", "a b", &"a".repeat(16)] {
            assert!(!valid_ifname(bad), "{bad:?}");
        }
    }

    #[test]
    fn refuses_bad_requests_naming_the_field() {
        let good = interface("52:54:00:00:00:01", "eth0", &["10.88.0.5/16"], 1500);
        let cases: Vec<(Vec<v1::Interface>, Vec<v1::Route>, &str)> = vec![
            (
                vec![interface("52:54:00:00:00", "eth0", &[], 0)],
                vec![],
                "interfaces[0].mac_address",
            ),
            (
                vec![good.clone(), interface("52:54:00:00:00:01", "eth1", &[], 0)],
                vec![],
                "interfaces[1].mac_address",
            ),
            (
                vec![interface("52:54:00:00:00:01", "eth 0", &[], 0)],
                vec![],
                "interfaces[0].name",
            ),
            (
                vec![interface("52:54:00:00:00:01", "lo", &[], 0)],
                vec![],
                "interfaces[0].name",
            ),
            (
                vec![good.clone(), interface("52:54:00:00:00:02", "eth0", &[], 0)],
                vec![],
                "interfaces[1].name",
            ),
            (
                vec![interface("52:54:00:00:00:01", "eth0", &[], 67)],
                vec![],
                "interfaces[0].mtu",
            ),
            (
                vec![interface(
                    "52:54:00:00:00:01",
                    "eth0",
                    &["10.88.0.5/16", "fd00::5/129"],
                    0,
                )],
                vec![],
                "interfaces[0].addresses[1]",
            ),
            (
                vec![good.clone()],
                vec![route("10.0.0.0/33", "10.88.0.1", "")],
                "routes[0].destination",
            ),
            (
                vec![good.clone()],
                vec![route("10.1.0.0/8", "10.88.0.1", "")],
                "routes[0].destination",
            ),
            (
                vec![good.clone()],
                vec![
                    route("0.0.0.0/0", "10.88.0.1", ""),
                    route("::/0", "10.88.0.1", ""),
                ],
                "routes[1].gateway",
            ),
            (
                vec![good.clone()],
                vec![route("0.0.0.0/0", "fd00::1", "eth0")],
                "routes[0].gateway",
            ),
            (
                vec![good.clone()],
                vec![route("0.0.0.0/0", "10.88.0.256", "")],
                "routes[0].gateway",
            ),
            (
                vec![good.clone()],
                vec![route("10.88.0.0/16", "", "")],
                "routes[0].device",
            ),
            (
                vec![good.clone()],
                vec![route("10.88.0.0/16", "", "a/b")],
                "routes[0].device",
            ),
        ];
        for (interfaces, routes, field) in cases {
            let err = Plan::parse(&interfaces, &routes).expect_err(field);
            let message = err.to_string();
            assert_eq!(field_of(err), field, "{message}");
            assert!(message.starts_with(field), "{message}");
        }
    }

    fn guest_links() -> Vec<Link> {
        vec![
            Link {
                index: 1,
                name: "lo".into(),
                mac: None,
                up: false,
                mtu: Some(65536),
            },
            Link {
                index: 2,
                name: "eth0".into(),
                mac: Some(Mac([0x52, 0x54, 0, 0, 0, 0x0a])),
                up: true,
                mtu: Some(1500),
            },
            Link {
                index: 3,
                name: "eth1".into(),
                mac: Some(Mac([0x52, 0x54, 0, 0, 0, 0x0b])),
                up: false,
                mtu: Some(1500),
            },
        ]
    }

    #[test]
    fn lo_comes_up_even_without_interfaces() {
        let steps = Plan::parse(&[], &[])
            .unwrap()
            .resolve(&guest_links())
            .unwrap();
        assert_eq!(
            steps,
            vec![Step::Up {
                index: 1,
                name: "lo".into()
            }]
        );
    }

    #[test]
    fn resolves_interfaces_by_mac_and_orders_the_steps() {
        let plan = Plan::parse(
            &[
                interface(
                    "52:54:00:00:00:0A",
                    "pod0",
                    &["10.88.0.5/16", "fd00::5/64"],
                    1400,
                ),
                interface("52:54:00:00:00:0b", "eth1", &[], 1500),
            ],
            &[
                route("0.0.0.0/0", "10.88.0.1", ""),
                route("::/0", "fd00::1", "pod0"),
                route("10.96.0.0/12", "", "pod0"),
                route("127.1.0.0/16", "", "lo"),
            ],
        )
        .unwrap();
        let steps = plan.resolve(&guest_links()).unwrap();
        let cidr = |s: &str| Cidr::parse(s).unwrap();
        let pod0 = || "pod0".to_owned();
        assert_eq!(
            &steps[..9],
            &[
                Step::Up {
                    index: 1,
                    name: "lo".into()
                },
                Step::Down {
                    index: 2,
                    name: "eth0".into()
                },
                Step::Rename {
                    index: 2,
                    from: "eth0".into(),
                    to: pod0()
                },
                Step::Mtu {
                    index: 2,
                    name: pod0(),
                    mtu: 1400
                },
                Step::Address {
                    index: 2,
                    name: pod0(),
                    cidr: cidr("10.88.0.5/16")
                },
                Step::Address {
                    index: 2,
                    name: pod0(),
                    cidr: cidr("fd00::5/64")
                },
                Step::Up {
                    index: 2,
                    name: pod0()
                },
                // eth1: name and MTU already right.
                Step::Up {
                    index: 3,
                    name: "eth1".into()
                },
                Step::Route {
                    route: RouteSpec {
                        destination: cidr("0.0.0.0/0"),
                        gateway: Some("10.88.0.1".parse().unwrap()),
                        device: None
                    },
                    oif: None
                },
            ]
        );
        let oifs: Vec<Option<u32>> = steps[9..]
            .iter()
            .map(|s| match s {
                Step::Route { oif, .. } => *oif,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(oifs, [Some(2), Some(2), Some(1)]);
    }

    #[test]
    fn refuses_what_does_not_fit_the_guest() {
        let links = guest_links();
        let err = Plan::parse(&[interface("52:54:00:00:00:0c", "eth0", &[], 0)], &[])
            .unwrap()
            .resolve(&links)
            .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, NetworkError::NoSuchMac { .. }), "{message}");
        assert_eq!(
            message,
            "interfaces[0].mac_address: no guest network link has MAC address \
             52:54:00:00:00:0c (links present: eth0 52:54:00:00:00:0a, eth1 52:54:00:00:00:0b)"
        );

        // eth1 keeps its name, so eth0 cannot take it.
        let err = Plan::parse(&[interface("52:54:00:00:00:0a", "eth1", &[], 0)], &[])
            .unwrap()
            .resolve(&links)
            .unwrap_err();
        assert_eq!(field_of(err), "interfaces[0].name");

        // eth0 is renamed away, so a route on "eth0" has no device.
        let err = Plan::parse(
            &[interface("52:54:00:00:00:0a", "pod0", &[], 0)],
            &[route("10.0.0.0/8", "", "eth0")],
        )
        .unwrap()
        .resolve(&links)
        .unwrap_err();
        assert_eq!(field_of(err), "routes[0].device");
        let err = Plan::parse(&[], &[route("10.0.0.0/8", "", "eth9")])
            .unwrap()
            .resolve(&links)
            .unwrap_err();
        assert_eq!(field_of(err), "routes[0].device");
    }

    #[test]
    fn ipv6_addresses_skip_duplicate_address_detection() {
        let (message, flags, exists_ok) = request_for(&Step::Address {
            index: 2,
            name: "eth0".into(),
            cidr: Cidr::parse("fd00::5/64").unwrap(),
        });
        assert_eq!(flags, NLM_F_CREATE | NLM_F_EXCL);
        assert!(exists_ok);
        let RouteNetlinkMessage::NewAddress(message) = message else {
            panic!("{message:?}")
        };
        assert_eq!(message.header.family, AddressFamily::Inet6);
        assert_eq!(message.header.prefix_len, 64);
        assert_eq!(message.header.index, 2);
        assert!(message.header.flags.contains(AddressHeaderFlags::Nodad));
        assert!(
            message
                .attributes
                .contains(&AddressAttribute::Flags(AddressFlags::Nodad))
        );

        let (message, _, _) = request_for(&Step::Address {
            index: 2,
            name: "eth0".into(),
            cidr: Cidr::parse("10.88.0.5/16").unwrap(),
        });
        let RouteNetlinkMessage::NewAddress(message) = message else {
            panic!("{message:?}")
        };
        assert_eq!(message.header.family, AddressFamily::Inet);
        assert!(
            message
                .attributes
                .contains(&AddressAttribute::Broadcast(Ipv4Addr::new(
                    10, 88, 255, 255
                )))
        );
    }

    #[test]
    fn builds_gateway_and_on_link_routes() {
        let spec = |d: &str, g: &str, dev: &str| {
            Plan::parse(&[], &[route(d, g, dev)]).unwrap().routes[0].clone()
        };
        let RouteNetlinkMessage::NewRoute(default) =
            route_message(&spec("0.0.0.0/0", "10.88.0.1", ""), None)
        else {
            unreachable!()
        };
        assert_eq!(default.header.destination_prefix_length, 0);
        assert_eq!(default.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(default.header.scope, RouteScope::Universe);
        assert_eq!(
            default.attributes,
            vec![RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
                10, 88, 0, 1
            )))]
        );
        let RouteNetlinkMessage::NewRoute(on_link) =
            route_message(&spec("fd00:96::/112", "", "eth0"), Some(2))
        else {
            unreachable!()
        };
        assert_eq!(on_link.header.address_family, AddressFamily::Inet6);
        assert_eq!(on_link.header.scope, RouteScope::Link);
        assert_eq!(
            on_link.attributes,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet6("fd00:96::".parse().unwrap())),
                RouteAttribute::Oif(2),
            ]
        );
    }

    #[test]
    fn renames_with_an_ifname_attribute() {
        let (message, flags, exists_ok) = request_for(&Step::Rename {
            index: 3,
            from: "eth1".into(),
            to: "net1".into(),
        });
        assert_eq!((flags, exists_ok), (0, false));
        let RouteNetlinkMessage::SetLink(message) = message else {
            panic!("{message:?}")
        };
        assert_eq!(message.header.index, 3);
        assert_eq!(message.header.change_mask, LinkFlags::empty());
        assert_eq!(
            message.attributes,
            vec![LinkAttribute::IfName("net1".into())]
        );
        let (RouteNetlinkMessage::SetLink(down), _, _) = request_for(&Step::Down {
            index: 3,
            name: "eth1".into(),
        }) else {
            unreachable!()
        };
        assert_eq!(down.header.flags, LinkFlags::empty());
        assert_eq!(down.header.change_mask, LinkFlags::Up);
    }

    /// Runs `f` on a new thread in a new network namespace (netns is per
    /// thread, so the test's own thread and the rest of the process are not
    /// moved). `None`, with the reason printed, when that is not allowed.
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (CAP_NET_ADMIN in a new network namespace)");
            return None;
        }
        std::thread::spawn(move || {
            match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                Ok(()) => Some(f()),
                Err(err) => {
                    eprintln!("skipped: unshare(CLONE_NEWNET) failed: {err}");
                    None
                }
            }
        })
        .join()
        .expect("the namespace thread does not panic")
    }

    /// `ip link add veth-a address A type veth peer name veth-b`, both up:
    /// a stand-in for the VM's virtio-net link (no `dummy` driver here).
    fn add_veth_pair(netlink: &mut Netlink, mac: Mac) {
        use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkInfo};
        let mut peer = LinkMessage::default();
        peer.attributes.push(LinkAttribute::IfName("veth-b".into()));
        let mut message = LinkMessage::default();
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        message.attributes = vec![
            LinkAttribute::IfName("veth-a".into()),
            LinkAttribute::Address(mac.0.to_vec()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
            ]),
        ];
        netlink
            .request(
                RouteNetlinkMessage::NewLink(message),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .expect("creating a veth pair");
        let links = netlink.links().unwrap();
        let b = links.iter().find(|l| l.name == "veth-b").unwrap().index;
        apply(
            netlink,
            &[Step::Up {
                index: b,
                name: "veth-b".into(),
            }],
        )
        .unwrap();
    }

    fn configure(
        netlink: &mut Netlink,
        interfaces: &[v1::Interface],
        routes: &[v1::Route],
    ) -> Result<(), NetworkError> {
        let steps = Plan::parse(interfaces, routes)?.resolve(&netlink.links()?)?;
        apply(netlink, &steps)
    }

    #[test]
    fn configures_a_link_in_a_new_namespace_as_root() {
        let Some(()) = in_new_netns(|| {
            let mut netlink = Netlink::open().unwrap();
            let mac = Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
            add_veth_pair(&mut netlink, mac);
            let interfaces = [interface(
                "52:54:00:12:34:56",
                "pod0",
                &["10.88.0.5/16", "fd00:88::5/64"],
                1400,
            )];
            let routes = [
                route("0.0.0.0/0", "10.88.0.1", ""),
                route("::/0", "fd00:88::1", "pod0"),
                route("10.96.0.0/12", "", "pod0"),
                route("fd00:96::/112", "", "pod0"),
                // The kernel's own prefix route: EEXIST, which is fine.
                route("10.88.0.0/16", "", "pod0"),
            ];
            configure(&mut netlink, &interfaces, &routes).unwrap();
            // hulld restarted and sent the same request again.
            configure(&mut netlink, &interfaces, &routes).unwrap();

            let links = netlink.links().unwrap();
            let lo = links.iter().find(|l| l.name == "lo").unwrap();
            assert!(lo.up, "{lo:?}");
            let pod0 = links.iter().find(|l| l.name == "pod0").unwrap();
            assert_eq!((pod0.mac, pod0.mtu, pod0.up), (Some(mac), Some(1400), true));
            assert!(!links.iter().any(|l| l.name == "veth-a"));

            let addresses: Vec<(IpAddr, u8, bool)> = netlink
                .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
                .unwrap()
                .into_iter()
                .filter_map(|reply| match reply {
                    RouteNetlinkMessage::NewAddress(a) if a.header.index == pod0.index => {
                        let nodad = a.attributes.iter().any(|attr| {
                            matches!(attr, AddressAttribute::Flags(f) if f.contains(AddressFlags::Nodad))
                        });
                        a.attributes.iter().find_map(|attr| match attr {
                            AddressAttribute::Address(ip) => Some((*ip, a.header.prefix_len, nodad)),
                            _ => None,
                        })
                    }
                    _ => None,
                })
                .collect();
            assert!(
                addresses.contains(&("10.88.0.5".parse().unwrap(), 16, false)),
                "{addresses:?}"
            );
            assert!(
                addresses.contains(&("fd00:88::5".parse().unwrap(), 64, true)),
                "{addresses:?}"
            );

            let routes: Vec<(IpAddr, u8, Option<RouteAddress>, Option<u32>)> = netlink
                .dump(RouteNetlinkMessage::GetRoute(RouteMessage::default()))
                .unwrap()
                .into_iter()
                .filter_map(|reply| match reply {
                    RouteNetlinkMessage::NewRoute(r)
                        if r.header.table == RouteHeader::RT_TABLE_MAIN =>
                    {
                        let mut destination = match r.header.address_family {
                            AddressFamily::Inet6 => IpAddr::from(Ipv6Addr::UNSPECIFIED),
                            _ => IpAddr::from(Ipv4Addr::UNSPECIFIED),
                        };
                        let (mut gateway, mut oif) = (None, None);
                        for attr in &r.attributes {
                            match attr {
                                RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                                    destination = (*a).into()
                                }
                                RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
                                    destination = (*a).into()
                                }
                                RouteAttribute::Gateway(g) => gateway = Some(g.clone()),
                                RouteAttribute::Oif(i) => oif = Some(*i),
                                _ => {}
                            }
                        }
                        Some((
                            destination,
                            r.header.destination_prefix_length,
                            gateway,
                            oif,
                        ))
                    }
                    _ => None,
                })
                .collect();
            let want = [
                (
                    "0.0.0.0",
                    0,
                    Some(RouteAddress::Inet("10.88.0.1".parse().unwrap())),
                ),
                (
                    "::",
                    0,
                    Some(RouteAddress::Inet6("fd00:88::1".parse().unwrap())),
                ),
                ("10.96.0.0", 12, None),
                ("fd00:96::", 112, None),
                ("10.88.0.0", 16, None),
            ];
            for (destination, prefix, gateway) in want {
                let entry = (
                    destination.parse().unwrap(),
                    prefix,
                    gateway,
                    Some(pod0.index),
                );
                assert!(routes.contains(&entry), "{entry:?} not in {routes:?}");
            }

            // A MAC the guest does not have: refused before any change.
            let err = configure(
                &mut netlink,
                &[interface("52:54:00:00:00:99", "eth9", &["10.99.0.5/16"], 0)],
                &[],
            )
            .unwrap_err();
            assert!(err.to_string().contains("pod0 52:54:00:12:34:56"), "{err}");
        }) else {
            return;
        };
    }
}
