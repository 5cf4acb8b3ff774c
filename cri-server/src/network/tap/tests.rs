use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use netlink_packet_core::{Emitable, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkInfo, LinkMessage};
use netlink_packet_route::tc::TcMessageBuffer;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::*;
use crate::network::netns::NetnsDir;

// ---- pure ----

#[test]
fn interface_names_are_checked_like_the_kernel_does() {
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "a:b",
        "a b",
        "tab\tx",
        "sixteen-bytes-xx",
    ] {
        let err = validate_ifname(bad).unwrap_err();
        assert!(
            err.to_string().contains(&format!("{bad:?}")),
            "{err} should name {bad:?}"
        );
    }
    for good in ["eth0", "tap0_hull", "fifteen-bytes-x", "a.b-c"] {
        validate_ifname(good).unwrap();
    }
}

#[test]
fn macs_are_formatted_lowercase_with_colons() {
    assert_eq!(
        format_mac(&[0x02, 0xab, 0, 0x10, 0xff, 9]),
        "02:ab:00:10:ff:09"
    );
}

/// Emits a tc message and parses it back, as the kernel's bytes would be.
fn round_trip(message: &TcMessage) -> TcMessage {
    let mut bytes = vec![0; message.buffer_len()];
    message.emit(&mut bytes);
    let buffer = TcMessageBuffer::new_checked(&bytes).unwrap();
    <TcMessage as netlink_packet_core::Parseable<_>>::parse(&buffer).unwrap()
}

#[test]
fn the_ingress_qdisc_message_is_what_tc_sends() {
    let message = round_trip(&ingress_qdisc(7));
    assert_eq!(message.header.index, 7);
    assert_eq!(u32::from(message.header.parent), 0xffff_fff1);
    assert_eq!(u32::from(message.header.handle), 0xffff_0000);
    assert_eq!(qdisc_kind(&message).as_deref(), Some("ingress"));
}

/// The mirred targets of a u32 filter message.
fn redirect_targets(message: &TcMessage) -> Vec<(u32, TcMirrorActionType, TcActionType)> {
    let mut targets = Vec::new();
    for attribute in &message.attributes {
        let TcAttribute::Options(options) = attribute else {
            continue;
        };
        for option in options {
            let TcOption::U32(TcFilterU32Option::Action(actions)) = option else {
                continue;
            };
            for action in actions {
                for attribute in &action.attributes {
                    let TcActionAttribute::Options(options) = attribute else {
                        continue;
                    };
                    for option in options {
                        if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = option {
                            targets.push((p.ifindex, p.eaction, p.generic.action));
                        }
                    }
                }
            }
        }
    }
    targets
}

#[test]
fn the_redirect_filter_matches_everything_and_steals_it_to_the_other_device() {
    let RouteNetlinkMessage::NewTrafficFilter(sent) = redirect_filter(3, 9) else {
        panic!("not a filter");
    };
    let message = round_trip(&sent);
    assert_eq!(message.header.index, 3);
    assert_eq!(u32::from(message.header.parent), 0xffff_0000);
    // prio 1, protocol ETH_P_ALL in network order.
    assert_eq!(message.header.info >> 16, 1);
    assert_eq!(
        u16::from_be(message.header.info as u16),
        libc::ETH_P_ALL as u16
    );
    assert_eq!(qdisc_kind(&message).as_deref(), Some("u32"));
    let selector = message
        .attributes
        .iter()
        .find_map(|a| match a {
            TcAttribute::Options(options) => options.iter().find_map(|o| match o {
                TcOption::U32(TcFilterU32Option::Selector(s)) => Some(s.clone()),
                _ => None,
            }),
            _ => None,
        })
        .expect("a selector");
    assert_eq!(selector.flags, TcU32SelectorFlags::Terminal);
    assert_eq!(selector.nkeys, 1);
    assert_eq!((selector.keys[0].mask, selector.keys[0].val), (0, 0));
    assert_eq!(
        redirect_targets(&message),
        [(9, TcMirrorActionType::EgressRedir, TcActionType::Stolen)]
    );
}

// ---- root: a pod namespace, a veth to a peer namespace, frames ----

const GUEST_MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x07];
const PEER_MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x01];
/// IEEE local experimental ethertype: no stack answers or sends it.
const TEST_ETHERTYPE: [u8; 2] = [0x88, 0xb5];

fn rtnl() -> Rtnl {
    Rtnl::open().unwrap()
}

/// `eth0` (MTU 1400, GUEST_MAC) in the pod namespace, its peer `peer0`
/// (PEER_MAC) in the peer namespace; both up.
fn make_veth(pod: &PodNetns, peer: &PodNetns) {
    let peer_fd = peer.as_fd().as_raw_fd();
    pod.run_in(|| {
        let mut peer_message = LinkMessage::default();
        peer_message.attributes = vec![
            LinkAttribute::IfName("peer0".into()),
            LinkAttribute::Mtu(1400),
            LinkAttribute::Address(PEER_MAC.to_vec()),
            LinkAttribute::NetNsFd(peer_fd),
        ];
        let mut message = LinkMessage::default();
        message.attributes = vec![
            LinkAttribute::IfName("eth0".into()),
            LinkAttribute::Mtu(1400),
            LinkAttribute::Address(GUEST_MAC.to_vec()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_message))),
            ]),
        ];
        let mut rtnl = rtnl();
        rtnl.request(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .unwrap();
        let eth0 = rtnl.link_by_name("eth0").unwrap().unwrap();
        rtnl.set_up(eth0.index, true).unwrap();
    })
    .unwrap();
    peer.run_in(|| {
        let mut rtnl = rtnl();
        let peer0 = rtnl.link_by_name("peer0").unwrap().expect("peer0 moved");
        rtnl.set_up(peer0.index, true).unwrap();
    })
    .unwrap();
}

/// The pod namespace's view: links by name, ingress qdisc kinds, and the
/// redirect targets of each link's ingress filters.
struct View {
    links: Vec<Link>,
    ingress: Vec<(String, String)>,
    redirects: Vec<(String, u32)>,
}

impl View {
    fn index(&self, name: &str) -> Option<u32> {
        self.links.iter().find(|l| l.name == name).map(|l| l.index)
    }
}

fn view(pod: &PodNetns) -> View {
    pod.run_in(|| {
        let mut session = Session::open(pod.path()).unwrap();
        let links = session.links().unwrap();
        let mut ingress = Vec::new();
        let mut redirects = Vec::new();
        for link in &links {
            if let Some(kind) = session.ingress_qdisc_kind(link.index).unwrap() {
                ingress.push((link.name.clone(), kind));
                let mut query = TcMessage::with_index(link.index as i32);
                query.header.parent = INGRESS_HANDLE;
                for reply in session
                    .rtnl
                    .dump(RouteNetlinkMessage::GetTrafficFilter(query))
                    .unwrap()
                {
                    if let RouteNetlinkMessage::NewTrafficFilter(filter) = reply {
                        for (to, _, _) in redirect_targets(&filter) {
                            redirects.push((link.name.clone(), to));
                        }
                    }
                }
            }
        }
        View {
            links,
            ingress,
            redirects,
        }
    })
    .unwrap()
}

/// A raw packet socket bound to `peer0` in the peer namespace.
fn packet_socket(peer: &PodNetns) -> OwnedFd {
    peer.run_in(|| {
        let index = rtnl().link_by_name("peer0").unwrap().unwrap().index;
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call with constant arguments; no pointers.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(protocol),
            )
        };
        assert!(raw >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: `raw` was just returned by socket(2) and is owned by no
        // one else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol;
        address.sll_ifindex = index as i32;
        // SAFETY: `address` is a live sockaddr_ll and the length passed is
        // its size; `fd` is an open socket.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
        fd
    })
    .unwrap()
}

fn test_frame(dst: [u8; 6], src: [u8; 6], text: &str) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&TEST_ETHERTYPE);
    frame.extend_from_slice(text.as_bytes());
    frame.resize(60, 0);
    frame
}

/// Reads frames from `fd` (skipping `skip` leading bytes of each) until one
/// carries TEST_ETHERTYPE, for at most 5 s.
fn receive_test_frame(fd: &OwnedFd, skip: usize) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut file = std::fs::File::from(fd.try_clone().unwrap());
    let mut buf = vec![0u8; 65_536];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        if nix::poll::poll(&mut fds, timeout).unwrap() == 0 {
            break;
        }
        let n = file.read(&mut buf).unwrap();
        let frame = &buf[skip.min(n)..n];
        if frame.get(12..14) == Some(&TEST_ETHERTYPE[..]) {
            return Some(frame.to_vec());
        }
    }
    None
}

/// One frame each way through the tap and the CNI interface.
fn frames_flow(tap: &TapLink, packet: &OwnedFd, label: &str) {
    // Guest to network: what the VMM writes (with its vnet header).
    let out = test_frame(PEER_MAC, GUEST_MAC, &format!("from the guest {label}"));
    let mut written = vec![0u8; VNET_HDR_LEN];
    written.extend_from_slice(&out);
    std::fs::File::from(tap.fd.try_clone().unwrap())
        .write_all(&written)
        .unwrap();
    let got = receive_test_frame(packet, 0).expect("the guest's frame reached the peer");
    assert_eq!(&got[..out.len()], &out[..]);

    // Network to guest: the VMM reads it after a vnet header.
    let back = test_frame(GUEST_MAC, PEER_MAC, &format!("to the guest {label}"));
    std::fs::File::from(packet.try_clone().unwrap())
        .write_all(&back)
        .unwrap();
    let got = receive_test_frame(&tap.fd, VNET_HDR_LEN).expect("the peer's frame reached the tap");
    assert_eq!(&got[..back.len()], &back[..]);
}

/// Loads the modules the test needs. The kernel loads them on demand on a
/// normal host, but not in the test VM (its usermode helper finds no
/// modprobe); built in or already loaded is fine, so failures are ignored.
fn load_modules() {
    for module in ["tun", "veth", "sch_ingress", "cls_u32", "act_mirred"] {
        let _ = std::process::Command::new("modprobe")
            .args(["-q", module])
            .status();
    }
}

#[test]
#[ignore = "needs root and network namespaces: run in the test VM"]
fn tap_end_to_end() {
    load_modules();
    let tmp = tempfile::tempdir().unwrap();
    let dir = NetnsDir::new(tmp.path().join("netns"));
    let _cleanup = crate::network::netns::tests::Cleanup {
        dir: &dir,
        ids: vec!["pod", "peer"],
    };
    let pod = dir.create("pod").unwrap();
    let peer = dir.create("peer").unwrap();
    make_veth(&pod, &peer);

    let missing = connect(&pod, "eth9", "tap0").unwrap_err().to_string();
    assert!(
        missing.contains("\"eth9\"") && missing.contains("eth0") && missing.contains("lo"),
        "{missing}"
    );

    let tap = connect(&pod, "eth0", "tap0").unwrap();
    assert_eq!(tap.tap_name, "tap0");
    assert_eq!(tap.guest_mac, GUEST_MAC);
    assert_eq!(tap.mtu, 1400);
    let seen = view(&pod);
    let tap_link = seen.links.iter().find(|l| l.name == "tap0").unwrap();
    assert_eq!(tap_link.mtu, Some(1400));
    assert!(tap_link.up);
    assert_eq!(tap_link.kind.as_deref(), Some("tun"));
    let (eth0, tap0) = (seen.index("eth0").unwrap(), tap_link.index);
    let mut ingress = seen.ingress.clone();
    ingress.sort();
    assert_eq!(
        ingress,
        [
            ("eth0".to_owned(), "ingress".to_owned()),
            ("tap0".to_owned(), "ingress".to_owned())
        ]
    );
    let mut redirects = seen.redirects.clone();
    redirects.sort();
    assert_eq!(
        redirects,
        [("eth0".to_owned(), tap0), ("tap0".to_owned(), eth0)]
    );

    let ipv6_off = pod
        .run_in(|| std::fs::read_to_string("/proc/sys/net/ipv6/conf/tap0/disable_ipv6").ok())
        .unwrap();
    if let Some(value) = ipv6_off {
        assert_eq!(value.trim(), "1", "no IPv6 chatter from the tap itself");
    }

    let packet = packet_socket(&peer);
    frames_flow(&tap, &packet, "1");

    // The VMM's own check of a passed fd accepts it.
    vm_runtime::devices::virtio::net::Tap::from_fd(tap.fd.try_clone().unwrap())
        .expect("the VMM accepts the tap fd");

    // Connecting again (hulld retrying) replaces the tap and the redirects.
    let again = connect(&pod, "eth0", "tap0").unwrap();
    let seen = view(&pod);
    let new_tap0 = seen.index("tap0").unwrap();
    let mut redirects = seen.redirects.clone();
    redirects.sort();
    assert_eq!(
        redirects,
        [("eth0".to_owned(), new_tap0), ("tap0".to_owned(), eth0)]
    );
    assert_eq!(seen.ingress.len(), 2);
    frames_flow(&again, &packet, "2");
    drop(tap);

    for _ in 0..2 {
        disconnect(&pod, "eth0", "tap0").unwrap();
    }
    let seen = view(&pod);
    assert!(seen.index("tap0").is_none(), "the tap is gone");
    assert!(seen.ingress.is_empty(), "no ingress qdisc left");
    assert!(seen.index("eth0").is_some(), "the CNI interface stays");
    drop(again);

    drop((pod, peer, packet));
    dir.remove("pod").unwrap();
    dir.remove("peer").unwrap();
}
