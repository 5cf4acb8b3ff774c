//! `cargo xtask bench stream` runs this inside the test VM (see
//! `xtask/src/bench/stream.rs`): hulld's streaming server end to end, with
//! hull's own SPDY client, as `crictl exec` and `kubectl port-forward` use
//! it.
//!
//! - `exec_latency_ms`: median over `RUNS` of Exec RPC + SPDY session for
//!   `true`, until its exit status arrives;
//! - `exec_mbps`: 100 MB written by `head -c` to stdout of an exec, through
//!   the agent, vsock, hulld and SPDY, in Mbit/s;
//! - `portforward_mbps`: a 64 MiB file fetched from busybox httpd on the
//!   pod's loopback over a SPDY port-forward connection, in Mbit/s.
//!
//! Prints one line per measurement and `RESULT stream exec_latency_ms=…
//! exec_mbps=… portforward_mbps=…`.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use hull_integration::pod_node::Node;
use hull_integration::streaming::{CommandOptions, spdy_command, spdy_forward, spdy_session};
use k8s_cri::v1 as cri;

const RUNS: usize = 10;
const EXEC_BYTES: usize = 100_000_000;
const FILE_MIB: usize = 64;

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(measure())
}

fn mbit_per_s(bytes: usize, seconds: f64) -> f64 {
    bytes as f64 * 8.0 / seconds / 1e6
}

async fn measure() -> Result<()> {
    let node = Node::start().await;
    let (pod, pod_config) = node.run_pod("bench-stream").await;
    let server = node
        .run_container(
            &pod,
            &pod_config,
            "server",
            &format!(
                "mkdir -p /srv && dd if=/dev/zero of=/srv/big bs=1048576 count={FILE_MIB} && \
                 echo ready && exec httpd -f -p 127.0.0.1:8080 -h /srv"
            ),
        )
        .await;
    node.wait_for_log("bench-stream", "server", "ready").await;
    let mut runtime = node.hulld.runtime().await;
    let exec = |cmd: &str| cri::ExecRequest {
        container_id: server.clone(),
        cmd: vec!["sh".into(), "-c".into(), cmd.into()],
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let output = CommandOptions {
        stdout: true,
        stderr: true,
        ..Default::default()
    };

    let mut latencies = Vec::new();
    for run in 1..=RUNS {
        let started = Instant::now();
        let url = runtime.exec(exec("true")).await?.into_inner().url;
        let result = spdy_command(&url, output.clone()).await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        ensure!(result.exit_code()? == 0, "exec true failed: {result:?}");
        println!("exec true, run {run}: {ms:.1} ms");
        latencies.push(ms);
    }
    latencies.sort_by(f64::total_cmp);
    let latency = (latencies[(RUNS - 1) / 2] + latencies[RUNS / 2]) / 2.0;

    let url = runtime
        .exec(exec(&format!("head -c {EXEC_BYTES} /dev/zero")))
        .await?
        .into_inner()
        .url;
    let started = Instant::now();
    let result = spdy_command(&url, output.clone()).await?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(
        result.stdout.len() == EXEC_BYTES,
        "exec output {} bytes",
        result.stdout.len()
    );
    let exec_mbps = mbit_per_s(EXEC_BYTES, seconds);
    println!("exec stdout: {EXEC_BYTES} bytes in {seconds:.2} s = {exec_mbps:.0} Mbit/s");

    let url = runtime
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080],
        })
        .await?
        .into_inner()
        .url;
    let session = spdy_session(&url, "portforward.k8s.io").await?;
    let connection = spdy_forward(&session, 8080, 0).await?;
    let started = Instant::now();
    let (answer, error) = connection
        .round_trip(b"GET /big HTTP/1.0\r\n\r\n")
        .await
        .context("port-forward")?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(error.is_empty(), "port-forward error: {error}");
    ensure!(
        answer.len() >= FILE_MIB << 20,
        "fetched only {} bytes",
        answer.len()
    );
    let forward_mbps = mbit_per_s(answer.len(), seconds);
    println!(
        "port-forward: {} bytes in {seconds:.2} s = {forward_mbps:.0} Mbit/s",
        answer.len()
    );
    session.close().await;

    println!(
        "RESULT stream exec_latency_ms={latency:.1} exec_mbps={exec_mbps:.0} portforward_mbps={forward_mbps:.0}"
    );
    Ok(())
}
