//! The real plugins (Debian's `containernetworking-plugins` in
//! `/usr/lib/cni`): bridge with host-local IPAM and portmap, and loopback,
//! against a pod namespace of the test's own.
//!
//! Never touches the machine's network: the test runs on a thread that
//! first moves into a new network namespace, which plays the host (the
//! plugins, `ip` and `iptables` are spawned from that thread and inherit
//! it), and the pod namespace is created from there.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use serde_json::json;

use super::*;

const SUBNET_PREFIX: &str = "10.244.77.";
const BRIDGE: &str = "hulltest0";
const CONTAINER_ID: &str = "cnitest0123456789abcdef";

/// A network namespace of the test's own, kept alive by a bind mount of its
/// nsfs file onto `path`; unmounted and removed on drop.
struct TestNetns {
    path: PathBuf,
}

impl TestNetns {
    /// Creates the namespace from a new thread, so the calling thread stays
    /// where it is.
    fn create(path: PathBuf) -> Self {
        File::create(&path).expect("create the netns mount point");
        let target = path.clone();
        std::thread::spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare the pod netns");
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .expect("bind-mount the pod netns");
        })
        .join()
        .expect("pod netns thread");
        TestNetns { path }
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.path, MntFlags::MNT_DETACH) {
            eprintln!("cleanup: unmount {}: {e}", self.path.display());
        }
        let _ = fs::remove_file(&self.path);
    }
}

/// Runs `program args` (in this thread's network namespace) and returns its
/// stdout; panics naming the command when it fails.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Whether `program args` succeeds.
fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn in_pod(netns: &Path, args: &[&str]) -> String {
    let net = format!("--net={}", netns.display());
    let mut all = vec![net.as_str(), "ip"];
    all.extend_from_slice(args);
    run("nsenter", &all)
}

fn nat_rules() -> String {
    run("iptables", &["-t", "nat", "-S"])
}

#[test]
#[ignore = "needs root, network namespaces and iptables: run in the test VM"]
fn bridge_host_local_portmap_and_loopback_attach_and_detach_a_pod() {
    for plugin in ["bridge", "host-local", "portmap", "loopback"] {
        assert!(
            Path::new("/usr/lib/cni").join(plugin).exists(),
            "needs /usr/lib/cni/{plugin} (Debian's containernetworking-plugins)"
        );
    }
    let thread = std::thread::spawn(|| {
        // From here on this thread's namespace is "the host".
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare the host-ish netns");
        run("ip", &["link", "set", "lo", "up"]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(attach_and_detach());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

async fn attach_and_detach() {
    let tmp = tempfile::tempdir().unwrap();
    let conf_dir = tmp.path().join("net.d");
    let ipam_dir = tmp.path().join("ipam");
    fs::create_dir(&conf_dir).unwrap();
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "hull-cni-test",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": format!("{SUBNET_PREFIX}0/24")}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    fs::write(conf_dir.join("10-test.conflist"), conflist.to_string()).unwrap();
    let network = NetworkConfigList::load(&conf_dir).unwrap().unwrap();
    let loopback = NetworkConfigList::parse(
        br#"{"cniVersion": "1.0.0", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}"#,
        true,
        Path::new("(loopback)"),
    )
    .unwrap();

    let pod_ns = TestNetns::create(tmp.path().join("pod-netns"));
    let cni = Cni {
        timeout: Duration::from_secs(60),
        ..Cni::default()
    };
    let attachment = Attachment {
        container_id: CONTAINER_ID.to_owned(),
        netns: pod_ns.path.clone(),
        ifname: "eth0".to_owned(),
        pod_namespace: "default".to_owned(),
        pod_name: "cni-test".to_owned(),
        pod_uid: "00000000-0000-0000-0000-000000000001".to_owned(),
        port_mappings: vec![PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: None,
        }],
    };
    let lo_attachment = Attachment {
        ifname: "lo".to_owned(),
        port_mappings: vec![],
        ..attachment.clone()
    };

    // ---- ADD ----
    cni.add(&loopback, &lo_attachment)
        .await
        .expect("loopback ADD");
    let result = cni.add(&network, &attachment).await.expect("bridge ADD");
    let pod_ips = result.pod_ips();
    assert_eq!(pod_ips.len(), 1, "{:?}", result.raw());
    let ip = pod_ips[0].to_string();
    assert!(ip.starts_with(SUBNET_PREFIX), "{ip} not in the subnet");
    let eth0 = result
        .sandbox_interface("eth0")
        .expect("eth0 in the result");
    let mac = eth0.mac.expect("eth0 has a MAC").to_string();
    assert_eq!(eth0.sandbox.as_deref(), Some(pod_ns.path.to_str().unwrap()));
    let host_veth = result
        .interfaces()
        .iter()
        .find(|iface| iface.sandbox.is_none() && iface.name != BRIDGE)
        .expect("the host end of the veth")
        .name
        .clone();

    let pod_addrs = in_pod(&pod_ns.path, &["-o", "addr", "show", "dev", "eth0"]);
    assert!(pod_addrs.contains(&format!("inet {ip}/24")), "{pod_addrs}");
    let pod_link = in_pod(&pod_ns.path, &["-o", "link", "show", "dev", "eth0"]);
    assert!(
        pod_link.contains(&format!("link/ether {mac}")),
        "{pod_link}"
    );
    let pod_lo = in_pod(&pod_ns.path, &["-o", "link", "show", "dev", "lo"]);
    assert!(pod_lo.contains(",UP"), "loopback should be up: {pod_lo}");
    assert!(succeeds("ip", &["link", "show", "dev", &host_veth]));
    let bridge_addrs = run("ip", &["-o", "addr", "show", "dev", BRIDGE]);
    assert!(
        bridge_addrs.contains(&format!("inet {SUBNET_PREFIX}1/24")),
        "{bridge_addrs}"
    );

    let nat = nat_rules();
    assert!(nat.contains("CNI-HOSTPORT-DNAT"), "{nat}");
    assert!(nat.contains("-N CNI-DN-"), "{nat}");
    assert!(nat.contains("--dport 8080"), "{nat}");
    assert!(nat.contains(&format!("{ip}:80")), "{nat}");
    assert!(nat.contains(CONTAINER_ID), "ipMasq rule: {nat}");

    // ---- CHECK ----
    // bridge (with host-local) verifies the interface, addresses and routes.
    let bridge_only = NetworkConfigList {
        plugins: network.plugins[..1].to_vec(),
        ..network.clone()
    };
    assert_eq!(
        cni.check(&bridge_only, &attachment, &result)
            .await
            .expect("bridge CHECK"),
        CheckOutcome::Passed
    );
    // portmap 1.1.1 (Debian bookworm's) fails CHECK of an IPv4-only pod
    // when ip6tables works, looking for IPv6 rules ADD never made
    // (containernetworking/plugins#819); fixed releases pass.
    match cni.check(&network, &attachment, &result).await {
        Ok(outcome) => assert_eq!(outcome, CheckOutcome::Passed),
        Err(CniError::Plugin { plugin, msg, .. })
            if plugin == "portmap" && msg.contains("could not check ipv6 dnat") =>
        {
            eprintln!("portmap CHECK hit the known IPv6 bug: {msg}");
        }
        Err(e) => panic!("CHECK: {e}"),
    }

    // ---- DEL, twice ----
    cni.del(&network, &attachment, Some(&result))
        .await
        .expect("DEL");
    assert!(
        !succeeds("ip", &["link", "show", "dev", &host_veth]),
        "veth left behind"
    );
    let pod_links = in_pod(&pod_ns.path, &["-o", "link", "show"]);
    assert!(!pod_links.contains("eth0"), "{pod_links}");
    let nat = nat_rules();
    assert!(!nat.contains("-N CNI-DN-"), "{nat}");
    assert!(!nat.contains("--dport 8080"), "{nat}");
    assert!(!nat.contains(CONTAINER_ID), "{nat}");
    let lease = ipam_dir.join("hull-cni-test").join(&ip);
    assert!(!lease.exists(), "lease {} not released", lease.display());

    cni.del(&network, &attachment, Some(&result))
        .await
        .expect("a second DEL");
    cni.del(&network, &attachment, None)
        .await
        .expect("a DEL without the cached result");
    cni.del(&loopback, &lo_attachment, None)
        .await
        .expect("loopback DEL");
    drop(pod_ns);
}
