//! Pod networking through hulld's CRI socket with Debian's CNI plugins
//! (bridge + host-local + portmap) in the test VM: pod IPs, traffic between
//! pods and from the node through each pod's tap and VM, hostPorts, and
//! teardown that leaves nothing behind, a failed CNI DEL included.
//!
//! Needs a working KVM (`cargo xtask test` runs it in the test VM); see
//! `hull_integration::pod_node`.

use std::path::Path;
use std::time::Duration;

use hull_integration::pod_node::Node;
use k8s_cri::v1 as cri;

/// Pods on a dual-stack CNI network (Debian's bridge + host-local +
/// portmap in the test VM): their IPv4 and IPv6 addresses, pod to pod and
/// node to pod traffic over both through the tap and the VM, a hostPort
/// on both, CNI CHECK after hulld restarts (passing, then failing on a
/// deleted veth), and a teardown that leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_a_cni_network_reach_each_other_and_the_node() {
    let mut node = Node::start_with_network().await;
    let (a, a_config) = node.run_pod("net-a").await;
    let mut b_config = node.pod_config("net-b");
    b_config.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: HOST_PORT as i32,
        host_ip: String::new(),
    }];
    let (b, b_config) = node.run_pod_with(b_config).await;
    let (a_ips, b_ips) = (node.pod_ips(&a).await, node.pod_ips(&b).await);
    // Dual stack: the IPv4 address first (PodSandboxStatus's ip), the IPv6
    // one as the additional IP.
    for ips in [&a_ips, &b_ips] {
        assert_eq!(ips.len(), 2, "{ips:?}");
        assert!(
            ips[0].starts_with(&format!("{}.", node.subnet_prefix())),
            "{ips:?}"
        );
        assert!(
            ips[1].starts_with(&format!("{}:", node.subnet6_prefix())),
            "{ips:?}"
        );
    }
    assert_ne!(a_ips, b_ips);
    let (b_ip, b_ip6) = (b_ips[0].clone(), b_ips[1].clone());

    // Pod B serves HTTP on its own IPs, inside its VM.
    node.run_container(
        &b,
        &b_config,
        "server",
        "mkdir -p /srv && echo served-by-pod-b > /srv/index.html && httpd -f -p 8080 -h /srv",
    )
    .await;
    // Pod A's container sees its CNI addresses on eth0 and reaches pod B
    // over both families.
    let client = node
        .run_container(
            &a,
            &a_config,
            "client",
            &format!(
                "ip -o addr show dev eth0; ip route; ip -6 route; \
                 get() {{ for i in $(seq 30); do timeout 5 wget -q -O - \"$1\" && return 0; sleep 1; done; return 1; }}; \
                 get http://{b_ip}:8080/ && echo 'over IPv4: done' && \
                 get 'http://[{b_ip6}]:8080/' && echo 'over IPv6: done'"
            ),
        )
        .await;
    let status = node.wait_exited(&client).await;
    let log = node.log_of("net-a", "client");
    assert_eq!(status.exit_code, 0, "{log}\n{}", node.hulld.log());
    assert!(log.contains(&format!("inet {}/24", a_ips[0])), "{log}");
    assert!(log.contains(&format!("inet6 {}/64", a_ips[1])), "{log}");
    let default_route = format!("default via {} dev eth0", node.gateway());
    assert!(log.contains(&default_route), "{log}");
    let default_route6 = format!("default via {} dev eth0", node.gateway6());
    assert!(log.contains(&default_route6), "{log}");
    assert!(log.contains("over IPv4: done"), "{log}");
    assert!(log.contains("over IPv6: done"), "{log}");
    assert_eq!(log.matches("served-by-pod-b").count(), 2, "{log}");

    // The node reaches the pod by its IPs, through the bridge, and through
    // the hostPort on its own addresses (portmap's DNAT, both families).
    for (ip, port) in [
        (&b_ip, 8080),
        (&b_ip6, 8080),
        (&node.gateway(), HOST_PORT),
        (&node.gateway6(), HOST_PORT),
    ] {
        let body = http_get(ip, port).await;
        assert!(body.contains("served-by-pod-b"), "{ip} {port}: {body}");
    }

    // hulld restarts: it takes the pods back and runs CNI CHECK on their
    // networks, which pass. Then pod A's veth goes while hulld is down
    // (an admin's or another agent's mistake): the next CHECK fails and
    // says so, and the pod stays as it is.
    node.hulld.restart().await;
    let check = last_check_after(&node, &a, 0).await;
    assert_eq!(check["outcome"], "passed", "{check}");
    // Pod B has a hostPort: Debian bookworm's portmap (1.1.1) fails its
    // CHECK, looking for the IPv4 DNAT rules in ip6tables
    // (containernetworking/plugins#819); a fixed portmap passes.
    let check = last_check_after(&node, &b, 0).await;
    let detail = check["detail"].as_str().unwrap_or_default();
    let portmap_bug = check["outcome"] == "failed"
        && detail.contains("portmap")
        && detail.contains("could not check ipv6 dnat");
    assert!(check["outcome"] == "passed" || portmap_bug, "{check}");
    let body = http_get(&b_ip6, 8080).await;
    assert!(
        body.contains("served-by-pod-b"),
        "after the restart: {body}"
    );
    let before = last_check_after(&node, &a, 0).await["unix_time_ms"]
        .as_u64()
        .unwrap();
    let veth = host_veth(&node, &a).await;
    let deleted = std::process::Command::new("ip")
        .args(["link", "del", "dev", &veth])
        .status()
        .unwrap();
    assert!(deleted.success(), "ip link del {veth}");
    node.hulld.restart().await;
    let check = last_check_after(&node, &a, before).await;
    assert_eq!(check["outcome"], "failed", "{check}");
    let detail = check["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("bridge"), "{check}");
    assert!(
        node.hulld
            .log()
            .contains("CNI CHECK of an adopted pod's network failed"),
        "{}",
        node.hulld.log()
    );
    assert_eq!(
        node.pod_state(&a).await,
        cri::PodSandboxState::SandboxReady as i32
    );

    // Stop and remove: the namespaces and veths go, stop again is a no-op.
    for pod in [&a, &b] {
        for _ in 0..2 {
            node.hulld
                .runtime()
                .await
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: pod.to_string(),
                })
                .await
                .expect("StopPodSandbox");
        }
        node.hulld
            .runtime()
            .await
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.to_string(),
            })
            .await
            .expect("RemovePodSandbox");
    }
    let netns_left: Vec<_> = std::fs::read_dir(node.hulld.dir().join("netns"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(netns_left.is_empty(), "{netns_left:?}");
    let veths = ports_of(&node.bridge());
    assert!(
        veths.is_empty(),
        "veths left on {}: {veths:?}",
        node.bridge()
    );
}

/// The pod's last CNI CHECK (from PodSandboxStatus's verbose info) once
/// one newer than `after` (ms since the epoch) is there; hulld runs them in
/// the background after taking the pods back.
async fn last_check_after(node: &Node, pod: &str, after: u64) -> serde_json::Value {
    for _ in 0..100 {
        let info = node.sandbox_info(pod).await;
        let check = &info["status"]["network"]["last_check"];
        if check["unix_time_ms"].as_u64().is_some_and(|t| t > after) {
            return check.clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "no CNI CHECK of {pod} recorded after {after}:\n{}",
        node.hulld.log()
    );
}

/// The node-side veth of the pod's CNI attachment (from its CNI result).
async fn host_veth(node: &Node, pod: &str) -> String {
    let info = node.sandbox_info(pod).await;
    let interfaces = info["status"]["network"]["result"]["interfaces"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    interfaces
        .iter()
        .filter(|i| i.get("sandbox").is_none())
        .filter_map(|i| i["name"].as_str())
        .find(|name| *name != node.bridge())
        .unwrap_or_else(|| panic!("no host veth in {interfaces:?}"))
        .to_string()
}

/// The pod's hostPort in the network test.
const HOST_PORT: u16 = 18080;

/// `GET /` from the node; a few tries, for the first ARP exchanges through
/// a fresh bridge port.
async fn http_get(ip: &str, port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut errors = Vec::new();
    for _ in 0..5 {
        let attempt = tokio::time::timeout(Duration::from_secs(10), async {
            let mut stream = tokio::net::TcpStream::connect((ip, port)).await?;
            stream
                .write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")
                .await?;
            let mut body = String::new();
            stream.read_to_string(&mut body).await?;
            Ok::<_, std::io::Error>(body)
        })
        .await;
        match attempt {
            Ok(Ok(body)) => return body,
            Ok(Err(err)) => errors.push(err.to_string()),
            Err(_) => errors.push("no answer within 10 s".to_string()),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("the node cannot reach {ip}:{port}: {errors:?}");
}

/// A plugin that fails its first DEL (CNI error 11) and passes everything
/// else on: chained first, its ADD result is empty and the bridge's is the
/// pod's.
const FLAKY_DEL_PLUGIN: &str = r#"#!/bin/sh
cat > /dev/null
case "$CNI_COMMAND" in
ADD) echo '{"cniVersion": "1.0.0"}' ;;
DEL)
    if [ ! -e "$0.failed" ]; then
        touch "$0.failed"
        echo '{"cniVersion": "1.0.0", "code": 11, "msg": "injected DEL failure"}'
        exit 1
    fi ;;
VERSION) echo '{"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}' ;;
esac
exit 0
"#;

/// 20 dual-stack pods with a hostPort started and removed leave no
/// namespace, veth, iptables or ip6tables rule or address lease; a CNI DEL that fails fails
/// StopPodSandbox and RemovePodSandbox, keeps the namespace, and the next
/// stop retries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_networks_leave_nothing_behind_and_a_failed_del_is_retried() {
    let node = Node::start_with_network().await;
    let mut ids = Vec::new();
    for cycle in 0..20 {
        let mut config = node.pod_config(&format!("cycle-{cycle}"));
        config.port_mappings = vec![cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 80,
            host_port: 18100,
            host_ip: String::new(),
        }];
        let (pod, _) = node.run_pod_with(config).await;
        assert_eq!(node.pod_ips(&pod).await.len(), 2, "cycle {cycle}");
        stop(&node, &pod).await.expect("StopPodSandbox");
        remove(&node, &pod).await.expect("RemovePodSandbox");
        ids.push(pod);
    }
    assert_eq!(
        entries(&node.hulld.dir().join("netns")),
        Vec::<String>::new()
    );
    let veths = ports_of(&node.bridge());
    assert!(
        veths.is_empty(),
        "veths left on {}: {veths:?}",
        node.bridge()
    );
    for tool in ["iptables-save", "ip6tables-save"] {
        let rules = String::from_utf8(
            std::process::Command::new(tool)
                .output()
                .unwrap_or_else(|e| panic!("{tool}: {e}"))
                .stdout,
        )
        .unwrap();
        for id in &ids {
            assert!(
                !rules.contains(id.as_str()),
                "{tool}: rules of {id} left:\n{rules}"
            );
        }
    }
    let leases: Vec<String> = entries(&node.ipam_dir().join("hull-test"))
        .into_iter()
        .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
        .collect();
    assert!(leases.is_empty(), "address leases left: {leases:?}");

    // DEL fails once: Stop and Remove say so and keep what DEL needs.
    let bin = node.hulld.cni_bin_dir();
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("flaky-del"), FLAKY_DEL_PLUGIN).unwrap();
    std::process::Command::new("chmod")
        .args(["755"])
        .arg(bin.join("flaky-del"))
        .status()
        .unwrap();
    node.write_network(&[serde_json::json!({"type": "flaky-del"})]);
    let (pod, _) = node.run_pod("del-retry").await;
    let err = stop(&node, &pod).await.expect_err("the first DEL fails");
    assert!(err.message().contains("injected DEL failure"), "{err:?}");
    assert!(node.hulld.dir().join("netns").join(&pod).exists());
    let state = node.pod_state(&pod).await;
    assert_eq!(state, cri::PodSandboxState::SandboxNotready as i32);
    stop(&node, &pod)
        .await
        .expect("the second stop retries DEL");
    assert!(!node.hulld.dir().join("netns").join(&pod).exists());
    remove(&node, &pod).await.expect("RemovePodSandbox");
    let log = node.hulld.log();
    assert!(
        log.contains("injected DEL failure"),
        "hulld logged the failure"
    );
}

async fn stop(node: &Node, pod: &str) -> Result<(), tonic::Status> {
    node.hulld
        .runtime()
        .await
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        })
        .await
        .map(|_| ())
}

async fn remove(node: &Node, pod: &str) -> Result<(), tonic::Status> {
    node.hulld
        .runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        })
        .await
        .map(|_| ())
}

/// The names in `dir`; none when it does not exist.
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The links of the node whose master is `bridge` (its pods' veth ends).
fn ports_of(bridge: &str) -> Vec<String> {
    entries(Path::new("/sys/class/net"))
        .into_iter()
        .filter(|name| {
            std::fs::read_link(format!("/sys/class/net/{name}/master"))
                .is_ok_and(|master| master.file_name().is_some_and(|m| m == bridge))
        })
        .collect()
}
