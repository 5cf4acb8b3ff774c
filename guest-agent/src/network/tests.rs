use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::netlink::*;
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
    std::thread::spawn(
        move || match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            Ok(()) => Some(f()),
            Err(err) => {
                eprintln!("skipped: unshare(CLONE_NEWNET) failed: {err}");
                None
            }
        },
    )
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
