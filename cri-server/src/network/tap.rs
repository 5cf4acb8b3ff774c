//! The tap device the pod VM's virtio-net uses, joined to the CNI interface.
//!
//! CNI plugins configure an interface (a veth, usually `eth0`) in the pod's
//! network namespace. [`connect`] creates a tap next to it and joins the
//! two with tc, as Kata does: an `ingress` qdisc on each and a filter
//! matching every packet with the action `mirred egress redirect` to the
//! other device. What arrives on the CNI interface leaves through the tap
//! (to the VMM reading its fd); what the VMM writes to the tap leaves
//! through the CNI interface. The guest uses the CNI interface's MAC and
//! MTU, so the CNI bridge, ARP/ND entries and IPAM see the same interface
//! they configured.
//!
//! The filter is `u32` with one key of mask 0 (matches every packet):
//! the `matchall` classifier would do the same, but `u32` is built in or
//! loadable on every kernel hull runs on, `matchall` not always
//! (`CONFIG_NET_CLS_MATCHALL`).
//!
//! The tap is not persistent: it lives as long as an fd on it, i.e. the VMM
//! that got [`TapLink::fd`] (the fd is passed as `TapSource::PassedFd`).
//!
//! [`connect`] and [`disconnect`] block (a thread in the pod's namespace,
//! netlink round trips): async callers use `tokio::task::spawn_blocking`.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key,
    TcU32Selector, TcU32SelectorFlags,
};
use vm_runtime::devices::virtio::net::VNET_HDR_LEN;

use super::netns::{NetnsError, PodNetns};
use super::rtnl::{Link, Rtnl, set_link_message};

/// `IFNAMSIZ`: interface names are at most 15 bytes.
const IFNAMSIZ: usize = 16;
/// The handle of the ingress qdisc (`ffff:`), parent of its filters.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// Priority of the redirect filter (its only filter, so any value).
const FILTER_PRIORITY: u16 = 1;

/// A tap joined to the pod's CNI interface, ready to hand to the VMM.
#[derive(Debug)]
pub struct TapLink {
    /// The tap's name in the pod's namespace.
    pub tap_name: String,
    /// The CNI interface's MAC: the guest's virtio-net uses it, so the
    /// bridge and the neighbours see the address CNI configured.
    pub guest_mac: [u8; 6],
    /// The CNI interface's MTU, also set on the tap; the guest uses it.
    pub mtu: u32,
    /// The tap, opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, vnet
    /// header size [`VNET_HDR_LEN`] and no offloads, as the VMM's
    /// `Tap::from_fd` expects. Blocking; the VMM makes it non-blocking.
    pub fd: OwnedFd,
}

impl TapLink {
    /// The guest MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn guest_mac_string(&self) -> String {
        format_mac(&self.guest_mac)
    }
}

/// Why the tap could not be joined to (or parted from) the CNI interface.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// An interface name the kernel would refuse.
    #[error("interface name {name:?} is invalid: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Entering the pod's namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The CNI interface is not in the namespace.
    #[error("CNI interface {name:?} not found in {netns}; links present: {}", present.join(", "))]
    CniInterfaceMissing {
        /// The name looked for.
        name: String,
        /// The namespace.
        netns: PathBuf,
        /// The names of the links that are there.
        present: Vec<String>,
    },
    /// The CNI interface lacks something the guest needs.
    #[error("CNI interface {name:?} in {netns} has no {what}")]
    CniInterfaceIncomplete {
        /// The interface.
        name: String,
        /// The namespace.
        netns: PathBuf,
        /// What is missing ("Ethernet MAC address", "MTU").
        what: &'static str,
    },
    /// The tap's name belongs to a link that is not a tap.
    #[error("{name:?} in {netns} is a {kind} link, not a tap: refusing to replace it")]
    NameTaken {
        /// The tap name asked for.
        name: String,
        /// The namespace.
        netns: PathBuf,
        /// The kind of link holding the name.
        kind: String,
    },
    /// An ingress qdisc of another kind (e.g. `clsact`) is in the way.
    #[error("{name:?} in {netns} already has a {kind:?} qdisc at ingress: refusing to replace it")]
    ForeignIngressQdisc {
        /// The interface.
        name: String,
        /// The namespace.
        netns: PathBuf,
        /// The qdisc's kind.
        kind: String,
    },
    /// The kernel refused a netlink request.
    #[error("cannot {action} in {netns}")]
    Netlink {
        /// What was being done.
        action: String,
        /// The namespace.
        netns: PathBuf,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Creating or configuring the tap through `/dev/net/tun` failed.
    #[error("cannot {action} for tap {tap:?} in {netns}")]
    Tun {
        /// What was being done.
        action: &'static str,
        /// The tap.
        tap: String,
        /// The namespace.
        netns: PathBuf,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Checks a network interface name the way the kernel does
/// (`dev_valid_name`).
pub fn validate_ifname(name: &str) -> Result<(), TapError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() >= IFNAMSIZ {
        "it is longer than 15 bytes"
    } else if name == "." || name == ".." {
        "it is a relative directory name"
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        "it contains '/', ':', a NUL or white space"
    } else {
        return Ok(());
    };
    Err(TapError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// Creates the tap `tap_name` in the pod's namespace and joins it to the
/// CNI interface `cni_ifname` both ways; returns the tap's fd with the
/// guest's MAC and MTU. Idempotent: a tap of that name left by an earlier
/// connect is deleted and made anew (its old fd stops working), and the
/// ingress qdiscs with their filters are replaced.
pub fn connect(netns: &PodNetns, cni_ifname: &str, tap_name: &str) -> Result<TapLink, TapError> {
    validate_ifname(cni_ifname)?;
    validate_ifname(tap_name)?;
    if cni_ifname == tap_name {
        return Err(TapError::InvalidName {
            name: tap_name.to_owned(),
            reason: "the tap cannot have the CNI interface's name",
        });
    }
    let link = netns.run_in(|| Session::open(netns.path())?.connect(cni_ifname, tap_name))??;
    tracing::info!(
        netns = %netns.path().display(),
        cni_ifname,
        tap = tap_name,
        guest_mac = %link.guest_mac_string(),
        mtu = link.mtu,
        "tap joined to the CNI interface"
    );
    Ok(link)
}

/// Removes what [`connect`] made: the ingress qdiscs (with their filters)
/// and the tap. Whatever is missing is fine, so this can run twice or
/// after a half-done connect. Removing the namespace removes all of it too.
pub fn disconnect(netns: &PodNetns, cni_ifname: &str, tap_name: &str) -> Result<(), TapError> {
    validate_ifname(cni_ifname)?;
    validate_ifname(tap_name)?;
    netns.run_in(|| Session::open(netns.path())?.disconnect(cni_ifname, tap_name))??;
    tracing::info!(
        netns = %netns.path().display(),
        cni_ifname,
        tap = tap_name,
        "tap parted from the CNI interface"
    );
    Ok(())
}

/// A netlink socket in the pod's namespace (opened on the thread that
/// entered it), and the namespace's path for errors.
struct Session<'a> {
    rtnl: Rtnl,
    netns: &'a Path,
}

impl<'a> Session<'a> {
    fn open(netns: &'a Path) -> Result<Self, TapError> {
        let rtnl = Rtnl::open().map_err(|source| TapError::Netlink {
            action: "open a NETLINK_ROUTE socket".to_owned(),
            netns: netns.to_owned(),
            source,
        })?;
        Ok(Session { rtnl, netns })
    }

    fn fail(&self, action: String) -> impl FnOnce(io::Error) -> TapError + '_ {
        move |source| TapError::Netlink {
            action,
            netns: self.netns.to_owned(),
            source,
        }
    }

    fn links(&mut self) -> Result<Vec<Link>, TapError> {
        self.rtnl
            .links()
            .map_err(self.fail("list the links".to_owned()))
    }

    fn connect(mut self, cni_ifname: &str, tap_name: &str) -> Result<TapLink, TapError> {
        let links = self.links()?;
        let cni = links
            .iter()
            .find(|link| link.name == cni_ifname)
            .ok_or_else(|| TapError::CniInterfaceMissing {
                name: cni_ifname.to_owned(),
                netns: self.netns.to_owned(),
                present: links.iter().map(|link| link.name.clone()).collect(),
            })?;
        let incomplete = |what| TapError::CniInterfaceIncomplete {
            name: cni_ifname.to_owned(),
            netns: self.netns.to_owned(),
            what,
        };
        let guest_mac = cni
            .mac
            .filter(|mac| *mac != [0; 6])
            .ok_or_else(|| incomplete("Ethernet MAC address"))?;
        let mtu = cni.mtu.ok_or_else(|| incomplete("MTU"))?;
        let cni_index = cni.index;

        if let Some(old) = links.iter().find(|link| link.name == tap_name) {
            self.delete_old_tap(old)?;
        }
        let fd = open_tap(tap_name).map_err(|(action, source)| TapError::Tun {
            action,
            tap: tap_name.to_owned(),
            netns: self.netns.to_owned(),
            source,
        })?;
        let tap_index = self
            .rtnl
            .link_by_name(tap_name)
            .and_then(|link| link.ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV)))
            .map_err(self.fail(format!("find the new tap {tap_name}")))?
            .index;
        self.rtnl
            .request(
                set_link_message(
                    tap_index,
                    LinkFlags::Up,
                    LinkFlags::Up,
                    vec![LinkAttribute::Mtu(mtu)],
                ),
                0,
            )
            .map_err(self.fail(format!("set {tap_name} up with MTU {mtu}")))?;
        disable_ipv6(tap_name);

        for (from, from_index, to_index) in [
            (cni_ifname, cni_index, tap_index),
            (tap_name, tap_index, cni_index),
        ] {
            self.replace_ingress_qdisc(from, from_index)?;
            self.rtnl
                .request(
                    redirect_filter(from_index, to_index),
                    NLM_F_CREATE | NLM_F_EXCL,
                )
                .map_err(self.fail(format!(
                    "add a u32 filter redirecting everything from {from} to the other \
                     device (kernel modules cls_u32, act_mirred)"
                )))?;
        }
        Ok(TapLink {
            tap_name: tap_name.to_owned(),
            guest_mac,
            mtu,
            fd,
        })
    }

    fn disconnect(mut self, cni_ifname: &str, tap_name: &str) -> Result<(), TapError> {
        let links = self.links()?;
        if let Some(cni) = links.iter().find(|link| link.name == cni_ifname) {
            match self.ingress_qdisc_kind(cni.index)? {
                Some(kind) if kind == "ingress" => {
                    self.delete_ingress_qdisc(cni_ifname, cni.index)?
                }
                Some(kind) => tracing::warn!(
                    netns = %self.netns.display(),
                    cni_ifname,
                    kind,
                    "leaving an ingress qdisc hull did not make"
                ),
                None => {}
            }
        }
        if let Some(tap) = links.iter().find(|link| link.name == tap_name) {
            if tap.kind.as_deref() == Some("tun") {
                self.delete_link(tap)?;
            } else {
                tracing::warn!(
                    netns = %self.netns.display(),
                    tap = tap_name,
                    kind = ?tap.kind,
                    "leaving a link that is not a tap"
                );
            }
        }
        Ok(())
    }

    /// A tap of the same name is left by an earlier connect (its VMM or a
    /// crashed hulld's fd still holds it): it cannot be attached again, so
    /// it is deleted. Any other kind of link keeps its name.
    fn delete_old_tap(&mut self, old: &Link) -> Result<(), TapError> {
        if old.kind.as_deref() != Some("tun") {
            return Err(TapError::NameTaken {
                name: old.name.clone(),
                netns: self.netns.to_owned(),
                kind: old.kind.clone().unwrap_or_else(|| "unknown".to_owned()),
            });
        }
        tracing::info!(
            netns = %self.netns.display(),
            tap = old.name,
            "replacing the tap of an earlier connect"
        );
        self.delete_link(old)
    }

    fn delete_link(&mut self, link: &Link) -> Result<(), TapError> {
        match self.rtnl.delete_link(link.index) {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            other => other.map_err(self.fail(format!("delete {}", link.name))),
        }
    }

    /// The kind of the qdisc at the ingress hook of link `index`, if any.
    fn ingress_qdisc_kind(&mut self, index: u32) -> Result<Option<String>, TapError> {
        let replies = self
            .rtnl
            .dump(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()))
            .map_err(self.fail("list the qdiscs".to_owned()))?;
        Ok(replies.iter().find_map(|reply| match reply {
            RouteNetlinkMessage::NewQueueDiscipline(qdisc)
                if qdisc.header.index == index as i32
                    && qdisc.header.parent == TcHandle::INGRESS =>
            {
                Some(qdisc_kind(qdisc).unwrap_or_default())
            }
            _ => None,
        }))
    }

    fn delete_ingress_qdisc(&mut self, name: &str, index: u32) -> Result<(), TapError> {
        match self.rtnl.request(
            RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(index)),
            0,
        ) {
            // Gone meanwhile.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => Ok(()),
            other => other.map_err(self.fail(format!("delete the ingress qdisc of {name}"))),
        }
    }

    /// Adds a fresh ingress qdisc to `name`, deleting an earlier one (and
    /// so its filters, which may point at a tap that no longer exists).
    fn replace_ingress_qdisc(&mut self, name: &str, index: u32) -> Result<(), TapError> {
        match self.ingress_qdisc_kind(index)? {
            Some(kind) if kind == "ingress" => self.delete_ingress_qdisc(name, index)?,
            Some(kind) => {
                return Err(TapError::ForeignIngressQdisc {
                    name: name.to_owned(),
                    netns: self.netns.to_owned(),
                    kind,
                });
            }
            None => {}
        }
        self.rtnl
            .request(
                RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(index)),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .map_err(self.fail(format!(
                "add an ingress qdisc to {name} (kernel module sch_ingress)"
            )))
    }
}

fn qdisc_kind(message: &TcMessage) -> Option<String> {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            TcAttribute::Kind(kind) => Some(kind.clone()),
            _ => None,
        })
}

/// `tc qdisc add dev <index> handle ffff: ingress`.
fn ingress_qdisc(index: u32) -> TcMessage {
    let mut message = TcMessage::with_index(index as i32);
    message.header.parent = TcHandle::INGRESS;
    message.header.handle = INGRESS_HANDLE;
    message
        .attributes
        .push(TcAttribute::Kind("ingress".to_owned()));
    message
}

/// `tc filter add dev <from> parent ffff: protocol all prio 1 u32 match u32
/// 0 0 action mirred egress redirect dev <to>`.
fn redirect_filter(from: u32, to: u32) -> RouteNetlinkMessage {
    let mut message = TcMessage::with_index(from as i32);
    message.header.parent = INGRESS_HANDLE;
    // tcm_info: priority in the upper half, protocol (big endian) below.
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    message.header.info = (u32::from(FILTER_PRIORITY) << 16) | u32::from(protocol);

    let mut key = TcU32Key::default();
    key.mask = 0;
    key.val = 0;
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![key];

    let mut mirror = TcMirror::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.tab = 1;
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".to_owned()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];

    message.attributes = vec![
        TcAttribute::Kind("u32".to_owned()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]),
    ];
    RouteNetlinkMessage::NewTrafficFilter(message)
}

/// `struct ifreq` with the flags member of its union.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn tun_ioctl(
    fd: RawFd,
    action: &'static str,
    request: libc::Ioctl,
    arg: *mut libc::c_void,
) -> Result<(), (&'static str, io::Error)> {
    // SAFETY: every caller passes a tun request with the argument that
    // request reads (a live IfReq or c_int, or null for TUNSETOFFLOAD's
    // by-value 0), and `fd` is an open /dev/net/tun file it owns.
    let rc = unsafe { libc::ioctl(fd, request, arg) };
    if rc < 0 {
        return Err((action, io::Error::last_os_error()));
    }
    Ok(())
}

/// Creates the tap `name` in the calling thread's namespace and returns its
/// fd, configured as the VMM's `Tap::from_fd` expects.
fn open_tap(name: &str) -> Result<OwnedFd, (&'static str, io::Error)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| ("open /dev/net/tun", e))?;
    let fd = file.as_raw_fd();
    let mut request = IfReq {
        name: [0; IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    // validate_ifname: under IFNAMSIZ bytes, so the name stays NUL-terminated.
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    tun_ioctl(
        fd,
        "create the tap (TUNSETIFF)",
        libc::TUNSETIFF,
        (&mut request as *mut IfReq).cast(),
    )?;
    // The VMM sets these again in Tap::from_fd; setting them here makes the
    // fd right from the start (frames a test or the VMM reads carry the
    // header the VMM expects).
    let mut header_len = VNET_HDR_LEN as libc::c_int;
    tun_ioctl(
        fd,
        "set the vnet header size (TUNSETVNETHDRSZ)",
        libc::TUNSETVNETHDRSZ,
        (&mut header_len as *mut libc::c_int).cast(),
    )?;
    // No offloads until the guest says which it can take: hull-vmm's
    // virtio-net sets them (TUNSETOFFLOAD) from the features the guest's
    // driver acks when it starts the device, and turns them off on reset.
    // Until then the kernel checksums and segments before a frame reaches
    // the tap. Frames the guest writes may be offloaded either way.
    tun_ioctl(
        fd,
        "turn offloads off (TUNSETOFFLOAD)",
        libc::TUNSETOFFLOAD,
        std::ptr::null_mut(),
    )?;
    Ok(file.into())
}

/// The tap is a wire to the VMM, not an interface of the pod's namespace:
/// without IPv6 on it the namespace's stack sends no router solicitations,
/// DAD or MLD frames into the guest. Best effort (IPv6 may be off).
fn disable_ipv6(tap_name: &str) {
    // /proc/sys/net is the calling thread's namespace.
    let path = format!("/proc/sys/net/ipv6/conf/{tap_name}/disable_ipv6");
    match std::fs::write(&path, b"1") {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path, error = %e, "cannot disable IPv6 on the tap"),
    }
}

#[cfg(test)]
mod tests;
