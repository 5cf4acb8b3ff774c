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
//! The netlink side (the socket, the messages, [`apply`]) is in `netlink.rs`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hull_proto::v1;
use netlink_packet_route::AddressFamily;

/// Linux's `IFNAMSIZ` minus the terminating NUL.
const MAX_IFNAME: usize = 15;
/// The smallest MTU IPv4 allows; the kernel checks the device's own range.
const MIN_MTU: u32 = 68;
/// The loopback device, brought up on every `SetupSandbox`.
const LOOPBACK: &str = "lo";

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

mod netlink;
pub use netlink::{Netlink, apply};

#[cfg(test)]
mod tests;
