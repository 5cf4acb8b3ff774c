//! [`CniResult`]: what an ADD returns, typed and validated, with the
//! plugin's JSON kept as it was.
//!
//! Reads the result shapes of specification 0.3.0 to 1.1.0 (0.3.x and 0.4.0
//! add a `version` to each IP, 1.1.0 adds route and interface attributes;
//! hull reads neither, both stay in the raw JSON). A result is another
//! program's output, so every field hull reads is checked: a bad CIDR, MAC
//! or interface index is an error naming the field.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde_json::{Map, Value};

/// A validated CNI result, with the exact JSON the plugin printed.
///
/// Serializes as that JSON and deserializes by validating it again, so a
/// result persisted with the pod can be read back after a restart and
/// passed unchanged as `prevResult` to CHECK and DEL.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub struct CniResult {
    cni_version: String,
    interfaces: Vec<Interface>,
    ips: Vec<IpConfig>,
    routes: Vec<Route>,
    dns: Dns,
    raw: Value,
}

/// An interface a plugin created or configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// The interface name.
    pub name: String,
    /// Its hardware address, when the plugin reported one.
    pub mac: Option<MacAddr>,
    /// The network namespace path the interface is in; `None` for
    /// interfaces on the host.
    pub sandbox: Option<String>,
}

/// An IP address a plugin assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpConfig {
    /// The address and the prefix length of its subnet (`10.88.0.5/16`).
    pub address: IpCidr,
    /// The default gateway for this subnet, if there is one.
    pub gateway: Option<IpAddr>,
    /// The index into [`CniResult::interfaces`] of the interface the
    /// address is on (checked to be in range).
    pub interface: Option<usize>,
}

/// A route a plugin set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The destination.
    pub dst: IpCidr,
    /// The next hop; `None` for the gateway of the interface's subnet.
    pub gw: Option<IpAddr>,
}

/// DNS settings a plugin knows of (`dns` of the result).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    /// Name servers, in priority order.
    pub nameservers: Vec<String>,
    /// The local domain.
    pub domain: Option<String>,
    /// Search domains, in priority order.
    pub search: Vec<String>,
    /// Resolver options.
    pub options: Vec<String>,
}

/// An IP address with a prefix length, as in `10.88.0.5/16`. The address
/// keeps its host bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length: up to 32 for IPv4, 128 for IPv6.
    pub prefix_len: u8,
}

/// An Ethernet hardware address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// Why a result is invalid: the field, as a JSON path, and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ResultError {
    /// The offending field (`ips[0].address`), or `(result)`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ResultError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ResultError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl CniResult {
    /// Validates a plugin's result.
    pub fn from_json(raw: Value) -> Result<Self, ResultError> {
        let Value::Object(top) = &raw else {
            return Err(ResultError::new("(result)", "not a JSON object"));
        };
        let cni_version = match top.get("cniVersion") {
            Some(Value::String(v)) if !v.is_empty() => v.clone(),
            Some(Value::String(_)) => return Err(ResultError::new("cniVersion", "empty")),
            None | Some(Value::Null) => return Err(ResultError::new("cniVersion", "missing")),
            Some(other) => {
                return Err(ResultError::new(
                    "cniVersion",
                    format!("not a string: {other}"),
                ));
            }
        };
        let interfaces = objects(top, "interfaces")?
            .into_iter()
            .enumerate()
            .map(|(i, obj)| parse_interface(obj, &format!("interfaces[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let ips = objects(top, "ips")?
            .into_iter()
            .enumerate()
            .map(|(i, obj)| parse_ip(obj, &format!("ips[{i}]"), interfaces.len()))
            .collect::<Result<Vec<_>, _>>()?;
        let routes = objects(top, "routes")?
            .into_iter()
            .enumerate()
            .map(|(i, obj)| parse_route(obj, &format!("routes[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let dns = match top.get("dns") {
            None | Some(Value::Null) => Dns::default(),
            Some(Value::Object(obj)) => parse_dns(obj)?,
            Some(_) => return Err(ResultError::new("dns", "not an object")),
        };
        Ok(CniResult {
            cni_version,
            interfaces,
            ips,
            routes,
            dns,
            raw,
        })
    }

    /// The result's `cniVersion`.
    pub fn cni_version(&self) -> &str {
        &self.cni_version
    }

    /// The interfaces, in the plugin's order (IPs refer to them by index).
    pub fn interfaces(&self) -> &[Interface] {
        &self.interfaces
    }

    /// The assigned addresses.
    pub fn ips(&self) -> &[IpConfig] {
        &self.ips
    }

    /// The routes.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The DNS settings (empty when the result had none).
    pub fn dns(&self) -> &Dns {
        &self.dns
    }

    /// The JSON the plugin printed, unchanged.
    pub fn raw(&self) -> &Value {
        &self.raw
    }

    /// The pod's IP addresses: those on interfaces inside the pod's
    /// namespace (`sandbox` set), IPv4 ones first, otherwise in the
    /// result's order.
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        let in_sandbox = |ip: &&IpConfig| {
            ip.interface
                .and_then(|i| self.interfaces.get(i))
                .is_some_and(|iface| iface.sandbox.is_some())
        };
        let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = self
            .ips
            .iter()
            .filter(in_sandbox)
            .map(|ip| ip.address.addr)
            .partition(IpAddr::is_ipv4);
        v4.into_iter().chain(v6).collect()
    }

    /// The interface named `name` inside the pod's namespace (`sandbox`
    /// set), such as the `CNI_IFNAME` of the ADD.
    pub fn sandbox_interface(&self, name: &str) -> Option<&Interface> {
        self.interfaces
            .iter()
            .find(|iface| iface.name == name && iface.sandbox.is_some())
    }

    /// The addresses on the interface at `index` of
    /// [`interfaces`](Self::interfaces).
    pub fn ips_of_interface(&self, index: usize) -> impl Iterator<Item = &IpConfig> {
        self.ips
            .iter()
            .filter(move |ip| ip.interface == Some(index))
    }
}

impl TryFrom<Value> for CniResult {
    type Error = ResultError;

    fn try_from(raw: Value) -> Result<Self, ResultError> {
        CniResult::from_json(raw)
    }
}

impl From<CniResult> for Value {
    fn from(result: CniResult) -> Value {
        result.raw
    }
}

impl FromStr for IpCidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an address/prefix-length CIDR"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = prefix
            .parse::<u8>()
            .ok()
            .filter(|len| *len <= max && prefix.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("{s:?}: prefix length {prefix:?} is not 0 to {max}"))?;
        Ok(IpCidr { addr, prefix_len })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an Ethernet MAC address (six hex octets joined by ':')");
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(octets))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// The objects of the array at `key`; missing or null is empty.
fn objects<'a>(
    top: &'a Map<String, Value>,
    key: &str,
) -> Result<Vec<&'a Map<String, Value>>, ResultError> {
    match top.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_object()
                    .ok_or_else(|| ResultError::new(format!("{key}[{i}]"), "not an object"))
            })
            .collect(),
        Some(_) => Err(ResultError::new(key, "not an array")),
    }
}

/// The string at `key`; missing, null and empty are `None`.
fn optional_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, ResultError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ResultError::new(
            format!("{path}.{key}"),
            format!("not a string: {other}"),
        )),
    }
}

fn required_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a str, ResultError> {
    optional_str(obj, key, path)?
        .ok_or_else(|| ResultError::new(format!("{path}.{key}"), "missing"))
}

fn optional_ip(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<IpAddr>, ResultError> {
    optional_str(obj, key, path)?
        .map(|s| {
            s.parse().map_err(|_| {
                ResultError::new(
                    format!("{path}.{key}"),
                    format!("{s:?} is not an IP address"),
                )
            })
        })
        .transpose()
}

fn cidr(obj: &Map<String, Value>, key: &str, path: &str) -> Result<IpCidr, ResultError> {
    required_str(obj, key, path)?
        .parse()
        .map_err(|reason| ResultError::new(format!("{path}.{key}"), reason))
}

fn string_list(obj: &Map<String, Value>, key: &str) -> Result<Vec<String>, ResultError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ResultError::new(format!("dns.{key}[{i}]"), "not a string"))
            })
            .collect(),
        Some(_) => Err(ResultError::new(format!("dns.{key}"), "not an array")),
    }
}

fn parse_interface(obj: &Map<String, Value>, path: &str) -> Result<Interface, ResultError> {
    let name = required_str(obj, "name", path)?.to_owned();
    let mac = optional_str(obj, "mac", path)?
        .map(|s| {
            s.parse()
                .map_err(|reason| ResultError::new(format!("{path}.mac"), reason))
        })
        .transpose()?;
    let sandbox = optional_str(obj, "sandbox", path)?.map(str::to_owned);
    Ok(Interface { name, mac, sandbox })
}

fn parse_ip(
    obj: &Map<String, Value>,
    path: &str,
    interface_count: usize,
) -> Result<IpConfig, ResultError> {
    let address = cidr(obj, "address", path)?;
    let gateway = optional_ip(obj, "gateway", path)?;
    if let Some(gateway) = gateway.filter(|gw| gw.is_ipv4() != address.addr.is_ipv4()) {
        return Err(ResultError::new(
            format!("{path}.gateway"),
            format!("{gateway} is not of the family of the address {address}"),
        ));
    }
    let interface = match obj.get("interface") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let index = value
                .as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .ok_or_else(|| {
                    ResultError::new(
                        format!("{path}.interface"),
                        format!("{value} is not an index"),
                    )
                })?;
            if index >= interface_count {
                return Err(ResultError::new(
                    format!("{path}.interface"),
                    format!("index {index} is out of range ({interface_count} interfaces)"),
                ));
            }
            Some(index)
        }
    };
    Ok(IpConfig {
        address,
        gateway,
        interface,
    })
}

fn parse_route(obj: &Map<String, Value>, path: &str) -> Result<Route, ResultError> {
    let dst = cidr(obj, "dst", path)?;
    let gw = optional_ip(obj, "gw", path)?;
    Ok(Route { dst, gw })
}

fn parse_dns(obj: &Map<String, Value>) -> Result<Dns, ResultError> {
    Ok(Dns {
        nameservers: string_list(obj, "nameservers")?,
        domain: optional_str(obj, "domain", "dns")?.map(str::to_owned),
        search: string_list(obj, "search")?,
        options: string_list(obj, "options")?,
    })
}

#[cfg(test)]
mod tests;
