//! `cargo xtask bench net` runs this inside the test VM (see
//! `xtask/src/bench/net.rs`): TCP throughput with Debian's iperf3 between a
//! pod and the node, between two pods, and between two plain network
//! namespaces joined by a veth pair (the baseline without VMs).
//!
//! The pods run on hulld with a CNI bridge network (`Node::start_with_network`)
//! from an image holding busybox and the node's iperf3 with its libraries.
//! Each measurement is one `iperf3 -t SECONDS` run; the receiver's JSON
//! report (`end.sum_received.bits_per_second`) is the figure. Prints one
//! line per measurement and `RESULT net pod_host_gbps=… netns_gbps=… ratio=…`
//! (ratio = pod↔node / netns↔netns).

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hull_integration::pod_node::{Node, log_records};
use hull_integration::test_image;

const IPERF: &str = "/usr/bin/iperf3";
const SECONDS: u32 = 5;
const PORT: u16 = 5201;
const NETNS: [&str; 2] = ["hull-bench-net-a", "hull-bench-net-b"];

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (pod_host, pod_pod) = runtime.block_on(measure_pods())?;
    let netns = measure_netns()?;
    println!("pod → node:    {pod_host:.2} Gbit/s");
    println!("pod → pod:     {pod_pod:.2} Gbit/s");
    println!("netns → netns: {netns:.2} Gbit/s (veth pair, no VMs)");
    println!(
        "RESULT net pod_host_gbps={pod_host:.2} netns_gbps={netns:.2} ratio={:.2}",
        pod_host / netns
    );
    Ok(())
}

/// Pod → node and pod → pod, each one iperf3 run.
async fn measure_pods() -> Result<(f64, f64)> {
    let node = Node::start_with_network().await;
    let spec = test_image::busybox_with_host_programs(&[IPERF])
        .context("an image with iperf3 (Debian's iperf3 package)")?;
    let image = node.add_image("iperf:1", &spec).await;
    let node_ip = node.gateway();
    let (a, a_config) = node.run_pod("bench-a").await;
    let (b, b_config) = node.run_pod("bench-b").await;
    let b_ip = node
        .pod_ips(&b)
        .await
        .into_iter()
        .next()
        .context("pod B has no IP")?;
    let container = |name: &str, script: String| {
        let mut config = node.container_config(name, &script);
        config.image.as_mut().expect("an image").image = image.clone();
        config
    };

    // Pod → node: the node's iperf3 server on the bridge address.
    let server = Command::new(IPERF)
        .args(["-s", "-1", "-J", "-B", &node_ip, "-p", &PORT.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting iperf3 on the node")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = node
        .start_container(
            &a,
            &a_config,
            container(
                "to-node",
                format!("iperf3 -c {node_ip} -p {PORT} -t {SECONDS}"),
            ),
        )
        .await;
    let status = node.wait_exited(&client).await;
    ensure!(
        status.exit_code == 0,
        "iperf3 in pod A failed: {}",
        node.log_of("bench-a", "to-node")
    );
    let report = server
        .wait_with_output()
        .context("waiting for the node's iperf3")?;
    let pod_host = received_gbps(&String::from_utf8_lossy(&report.stdout))?;

    // Pod → pod: the server in pod B, its JSON report in its log.
    let server = node
        .start_container(
            &b,
            &b_config,
            container("server", format!("iperf3 -s -1 -J -p {PORT}")),
        )
        .await;
    let client = node
        .start_container(
            &a,
            &a_config,
            container(
                "to-pod",
                format!(
                    "for i in $(seq 20); do iperf3 -c {b_ip} -p {PORT} -t {SECONDS} && exit 0; sleep 1; done; exit 1"
                ),
            ),
        )
        .await;
    let status = node.wait_exited(&client).await;
    ensure!(
        status.exit_code == 0,
        "iperf3 from pod A to pod B failed: {}",
        node.log_of("bench-a", "to-pod")
    );
    node.wait_exited(&server).await;
    let log = node.log_of("bench-b", "server");
    let json: String = log_records(&log)
        .into_iter()
        .filter(|(stream, _, _)| stream == "stdout")
        .map(|(_, _, line)| line + "\n")
        .collect();
    let pod_pod = received_gbps(&json)?;
    Ok((pod_host, pod_pod))
}

/// Two network namespaces joined by a veth pair, iperf3 between them.
fn measure_netns() -> Result<f64> {
    let ip = |args: &[&str]| -> Result<()> {
        let status = Command::new("ip").args(args).status()?;
        ensure!(status.success(), "ip {args:?} failed ({status})");
        Ok(())
    };
    for ns in NETNS {
        // Left by an earlier run that was cut short; usually absent.
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", ns])?;
    }
    let result = (|| {
        ip(&[
            "-n", NETNS[0], "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b",
            "netns", NETNS[1],
        ])?;
        for (ns, dev, addr) in [
            (NETNS[0], "veth-a", "10.99.0.1/24"),
            (NETNS[1], "veth-b", "10.99.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let server = Command::new("ip")
            .args(["netns", "exec", NETNS[0], IPERF, "-s", "-1", "-J"])
            .args(["-p", &PORT.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting iperf3 in the first namespace")?;
        std::thread::sleep(Duration::from_millis(500));
        let client = Command::new("ip")
            .args(["netns", "exec", NETNS[1], IPERF, "-c", "10.99.0.1"])
            .args(["-p", &PORT.to_string(), "-t", &SECONDS.to_string()])
            .stdout(Stdio::null())
            .status()
            .context("running iperf3 in the second namespace")?;
        ensure!(client.success(), "iperf3 between namespaces failed");
        let report = server.wait_with_output()?;
        received_gbps(&String::from_utf8_lossy(&report.stdout))
    })();
    for ns in NETNS {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
    result
}

/// `end.sum_received.bits_per_second` of an iperf3 JSON report, in Gbit/s.
fn received_gbps(json: &str) -> Result<f64> {
    let report: serde_json::Value = serde_json::from_str(json.trim())
        .with_context(|| format!("iperf3 did not print a JSON report: {json:?}"))?;
    let Some(bits) = report["end"]["sum_received"]["bits_per_second"].as_f64() else {
        bail!("no end.sum_received.bits_per_second in the iperf3 report: {report}");
    };
    Ok(bits / 1e9)
}
