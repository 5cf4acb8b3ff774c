use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::json;

use super::*;

/// What bridge + host-local print for spec 0.4.0 (IPs carry `version`).
fn result_0_4_0() -> Value {
    json!({
        "cniVersion": "0.4.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa:bb:cc:00:00:01"},
            {"name": "veth1234", "mac": "aa:bb:cc:00:00:02"},
            {"name": "eth0", "mac": "0A:58:0A:58:00:05", "sandbox": "/run/hull/netns/pod1"}
        ],
        "ips": [
            {"version": "6", "address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
            {"version": "4", "address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2}
        ],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00::1"}],
        "dns": {"nameservers": ["10.96.0.10"], "domain": "cluster.local", "search": ["svc.cluster.local"]}
    })
}

/// A 1.0.0 result: no `version`, plus a 1.1.0-style attribute hull ignores.
fn result_1_0_0() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "eth0", "mac": "02:00:00:00:00:07", "sandbox": "/run/netns/x", "mtu": 1450}
        ],
        "ips": [{"address": "192.168.7.9/24", "interface": 0}],
        "routes": [{"dst": "10.0.0.0/8", "gw": "192.168.7.1", "priority": 5}]
    })
}

#[test]
fn a_0_4_0_result_is_read() {
    let result = CniResult::from_json(result_0_4_0()).unwrap();
    assert_eq!(result.cni_version(), "0.4.0");
    assert_eq!(result.interfaces().len(), 3);
    let eth0 = result.sandbox_interface("eth0").unwrap();
    assert_eq!(eth0.mac, Some(MacAddr([0x0a, 0x58, 0x0a, 0x58, 0, 5])));
    assert_eq!(eth0.mac.unwrap().to_string(), "0a:58:0a:58:00:05");
    assert_eq!(eth0.sandbox.as_deref(), Some("/run/hull/netns/pod1"));
    // A host interface is not the sandbox's.
    assert!(result.sandbox_interface("cni0").is_none());
    let v4 = result.ips()[1];
    assert_eq!(v4.address.addr, IpAddr::V4(Ipv4Addr::new(10, 88, 0, 5)));
    assert_eq!(v4.address.prefix_len, 16);
    assert_eq!(v4.address.to_string(), "10.88.0.5/16");
    assert_eq!(v4.gateway, Some(IpAddr::V4(Ipv4Addr::new(10, 88, 0, 1))));
    assert_eq!(v4.interface, Some(2));
    // IPv4 first, though the plugin listed IPv6 first.
    assert_eq!(
        result.pod_ips(),
        [
            IpAddr::V4(Ipv4Addr::new(10, 88, 0, 5)),
            "fd00::5".parse::<IpAddr>().unwrap()
        ]
    );
    assert_eq!(result.ips_of_interface(2).count(), 2);
    assert_eq!(result.routes()[0].dst.to_string(), "0.0.0.0/0");
    assert_eq!(result.routes()[0].gw, None);
    assert_eq!(
        result.routes()[1].gw,
        Some(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)))
    );
    assert_eq!(result.dns().nameservers, ["10.96.0.10"]);
    assert_eq!(result.dns().domain.as_deref(), Some("cluster.local"));
    assert_eq!(result.dns().search, ["svc.cluster.local"]);
    assert!(result.dns().options.is_empty());
}

#[test]
fn a_1_0_0_result_is_read() {
    let result = CniResult::from_json(result_1_0_0()).unwrap();
    assert_eq!(result.cni_version(), "1.0.0");
    assert_eq!(
        result.pod_ips(),
        [IpAddr::V4(Ipv4Addr::new(192, 168, 7, 9))]
    );
    assert_eq!(result.ips()[0].gateway, None);
    assert_eq!(
        result.routes()[0].gw,
        Some(IpAddr::V4(Ipv4Addr::new(192, 168, 7, 1)))
    );
    assert_eq!(*result.dns(), Dns::default());
    // What hull does not read is kept.
    assert_eq!(result.raw()["interfaces"][0]["mtu"], 1450);
}

#[test]
fn ips_outside_the_sandbox_are_not_pod_ips() {
    let result = CniResult::from_json(json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/x"}],
        "ips": [
            {"address": "10.0.0.1/24", "interface": 0},
            {"address": "10.0.0.2/24"},
            {"address": "10.0.0.3/24", "interface": 1}
        ]
    }))
    .unwrap();
    assert_eq!(result.pod_ips(), [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3))]);
    assert_eq!(result.interfaces()[0].mac, None);
}

#[test]
fn a_result_survives_a_round_trip_as_its_raw_json() {
    let raw = result_0_4_0();
    let result = CniResult::from_json(raw.clone()).unwrap();
    let stored = serde_json::to_string(&result).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&stored).unwrap(), raw);
    let back: CniResult = serde_json::from_str(&stored).unwrap();
    assert_eq!(back, result);
    // Deserializing validates.
    let err =
        serde_json::from_str::<CniResult>(r#"{"cniVersion":"1.0.0","ips":[{"address":"x"}]}"#)
            .unwrap_err();
    assert!(err.to_string().contains("ips[0].address"), "{err}");
}

#[test]
fn malformed_results_are_refused_naming_the_field() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!([]), "(result)", "not a JSON object"),
        (json!({"ips": []}), "cniVersion", "missing"),
        (
            json!({"cniVersion": "1.0.0", "ips": {}}),
            "ips",
            "not an array",
        ),
        (
            json!({"cniVersion": "1.0.0", "ips": [1]}),
            "ips[0]",
            "not an object",
        ),
        (
            json!({"cniVersion": "1.0.0", "ips": [{}]}),
            "ips[0].address",
            "missing",
        ),
        (
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5"}]}),
            "ips[0].address",
            "CIDR",
        ),
        (
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/33"}]}),
            "ips[0].address",
            "prefix length",
        ),
        (
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/+8"}]}),
            "ips[0].address",
            "prefix length",
        ),
        (
            json!({"cniVersion": "1.0.0", "ips": [{"address": "fd00::5/129"}]}),
            "ips[0].address",
            "prefix length",
        ),
        (
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.300/8"}]}),
            "ips[0].address",
            "not an IP",
        ),
        (
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/8", "gateway": "x"}]}),
            "ips[0].gateway",
            "not an IP",
        ),
        (
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/8", "gateway": "fd00::1"}]}),
            "ips[0].gateway",
            "family",
        ),
        (
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/8", "interface": 0}]}),
            "ips[0].interface",
            "out of range",
        ),
        (
            json!({"cniVersion": "1.0.0", "interfaces": [{"name": "a"}], "ips": [{"address": "10.0.0.5/8", "interface": -1}]}),
            "ips[0].interface",
            "not an index",
        ),
        (
            json!({"cniVersion": "1.0.0", "interfaces": [{"mac": "aa:bb:cc:dd:ee:ff"}]}),
            "interfaces[0].name",
            "missing",
        ),
        (
            json!({"cniVersion": "1.0.0", "interfaces": [{"name": "a", "mac": "aa:bb:cc:dd:ee"}]}),
            "interfaces[0].mac",
            "MAC",
        ),
        (
            json!({"cniVersion": "1.0.0", "interfaces": [{"name": "a", "mac": "aa:bb:cc:dd:ee:fg"}]}),
            "interfaces[0].mac",
            "MAC",
        ),
        (
            json!({"cniVersion": "1.0.0", "interfaces": [{"name": "a", "mac": "aa:bb:cc:dd:ee:ff:00"}]}),
            "interfaces[0].mac",
            "MAC",
        ),
        (
            json!({"cniVersion": "1.0.0", "interfaces": [{"name": "a", "sandbox": 3}]}),
            "interfaces[0].sandbox",
            "not a string",
        ),
        (
            json!({"cniVersion": "1.0.0", "routes": [{"gw": "10.0.0.1"}]}),
            "routes[0].dst",
            "missing",
        ),
        (
            json!({"cniVersion": "1.0.0", "routes": [{"dst": "0.0.0.0/0", "gw": "nope"}]}),
            "routes[0].gw",
            "not an IP",
        ),
        (
            json!({"cniVersion": "1.0.0", "dns": []}),
            "dns",
            "not an object",
        ),
        (
            json!({"cniVersion": "1.0.0", "dns": {"nameservers": [1]}}),
            "dns.nameservers[0]",
            "not a string",
        ),
    ];
    for (raw, field, reason) in cases {
        let err = CniResult::from_json(raw.clone()).unwrap_err();
        assert_eq!(err.field, field, "{raw}: {err}");
        assert!(
            err.reason.contains(reason),
            "{raw}: {err} should mention {reason:?}"
        );
    }
}

#[test]
fn cidrs_and_macs_print_as_they_parse() {
    for text in ["10.88.0.5/16", "0.0.0.0/0", "fd00::5/64", "::/0"] {
        assert_eq!(text.parse::<IpCidr>().unwrap().to_string(), text);
    }
    let mac: MacAddr = "02:42:AC:11:00:02".parse().unwrap();
    assert_eq!(mac.to_string(), "02:42:ac:11:00:02");
    assert!("".parse::<MacAddr>().is_err());
    assert!("02:42:ac:11:00:2".parse::<MacAddr>().is_err());
}
