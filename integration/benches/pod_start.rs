//! Pod start time and idle pod memory, through hulld's CRI socket.
//!
//! `cargo xtask bench pod-start` builds and runs this inside the test VM
//! (docs/benchmarks.md). By hand, where KVM works:
//!
//! ```text
//! cargo build --release -p cri-server -p vm-runtime --bins
//! cargo bench -p hull-integration --features vm-tests --bench pod_start --no-run
//! HULL_GUEST_VMLINUX=$(dirname $(cargo xtask kernel))/vmlinux \
//!   HULL_AGENT_INITRAMFS=$(cargo xtask initramfs) \
//!   cargo xtask vm-run -- target/release/deps/pod_start-<hash> [RUNS]
//! ```
//!
//! On a [`Node`] (a real hulld with the busybox image already pulled):
//!
//! 1. RUNS times (default 10), one pod at a time: RunPodSandbox, then
//!    CreateContainer and StartContainer of a `sleep` container, then
//!    ContainerStatus every 5 ms until the container is RUNNING. Each start
//!    is timed from the RunPodSandbox call and broken into those phases;
//!    RunPodSandbox's share from the VMM's start to the agent's first answer
//!    comes from hulld's `pod VM ready … boot_ms=` log line. The pod is
//!    stopped and removed before the next one starts.
//! 2. Ten fresh pods, each running a `sleep` container, left idle (their
//!    starts are timed too, printed only: each runs beside the ones already
//!    idle). After a pause, the host memory of each pod is read from its
//!    VMM's `/proc/<pid>/status`: `VmRSS`, which includes the guest RAM the
//!    guest touched (hull-vmm maps guest RAM from a memfd: `RssShmem`), and
//!    its parts; `Pss` from `smaps_rollup` for reference (the VMM binary's
//!    pages are shared between pods).
//!
//! Prints one line per start and per idle pod. When `HULL_POD_START_SUMMARY`
//! names a file, writes the samples there as JSON for xtask, which prints
//! the medians and the `RESULT` line. Timings are only printed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hull_integration::pod_node::{DEADLINE, Node};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

/// Pods left idle for the memory measurement.
const IDLE_PODS: usize = 10;
/// How long the idle pods sit before their memory is read.
const SETTLE: Duration = Duration::from_secs(10);
/// Where xtask wants the samples (JSON).
const SUMMARY_ENV: &str = "HULL_POD_START_SUMMARY";
/// The container every pod runs.
const CONTAINER: &str = "sleeper";
const SCRIPT: &str = "exec sleep 86400";

/// One pod start, in milliseconds since the RunPodSandbox call.
struct Start {
    pod: String,
    run_pod_ms: f64,
    create_ms: f64,
    start_ms: f64,
    running_ms: f64,
    /// hulld's own figure: VMM start to the agent's first answer.
    vm_boot_ms: Option<f64>,
}

impl Start {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "total_ms": self.running_ms,
            "run_pod_sandbox_ms": self.run_pod_ms,
            "create_container_ms": self.create_ms - self.run_pod_ms,
            "start_container_ms": self.start_ms - self.create_ms,
            "status_running_ms": self.running_ms - self.start_ms,
            "vm_boot_ms": self.vm_boot_ms,
        })
    }

    fn line(&self) -> String {
        let boot = self
            .vm_boot_ms
            .map(|ms| format!(" (VMM start to agent {ms:.0})"))
            .unwrap_or_default();
        format!(
            "{:>6.0} ms to RUNNING: RunPodSandbox {:.0}{boot}, CreateContainer {:.0}, StartContainer {:.0}, ContainerStatus RUNNING {:.0}",
            self.running_ms,
            self.run_pod_ms,
            self.create_ms - self.run_pod_ms,
            self.start_ms - self.create_ms,
            self.running_ms - self.start_ms,
        )
    }
}

fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1000.0
}

/// Starts pod `name` with its `sleep` container and times it.
async fn start_pod(
    node: &Node,
    client: &mut RuntimeServiceClient<Channel>,
    name: &str,
) -> Result<Start> {
    let container = node.container_config(CONTAINER, SCRIPT);
    let t0 = Instant::now();
    let (pod, pod_config) = node.run_pod(name).await;
    let run_pod_ms = ms_since(t0);
    let id = client
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container),
            sandbox_config: Some(pod_config),
        })
        .await
        .with_context(|| format!("CreateContainer in {name}\n{}", node.hulld.log()))?
        .into_inner()
        .container_id;
    let create_ms = ms_since(t0);
    client
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .with_context(|| format!("StartContainer in {name}\n{}", node.hulld.log()))?;
    let start_ms = ms_since(t0);
    loop {
        let state = client
            .container_status(cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .with_context(|| format!("ContainerStatus in {name}"))?
            .into_inner()
            .status
            .context("ContainerStatus without a status")?
            .state;
        if state == cri::ContainerState::ContainerRunning as i32 {
            break;
        }
        if state == cri::ContainerState::ContainerExited as i32 || t0.elapsed() > DEADLINE {
            bail!(
                "container of {name} is {state} instead of RUNNING\n{}",
                node.hulld.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let running_ms = ms_since(t0);
    Ok(Start {
        vm_boot_ms: vm_boot_ms(&node.hulld.log(), &pod),
        pod,
        run_pod_ms,
        create_ms,
        start_ms,
        running_ms,
    })
}

/// hulld's `pod VM ready` figure for `pod` (`boot_ms=`), from its text log
/// (which may carry ANSI colour codes around field names).
fn vm_boot_ms(log: &str, pod: &str) -> Option<f64> {
    log.lines()
        .map(strip_ansi)
        .filter(|line| line.contains("pod VM ready") && line.contains(pod))
        .find_map(|line| {
            let (_, rest) = line.split_once("boot_ms=")?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC '[' parameters, ending with a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn remove_pod(client: &mut RuntimeServiceClient<Channel>, pod: &str) -> Result<()> {
    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        })
        .await
        .with_context(|| format!("StopPodSandbox {pod}"))?;
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        })
        .await
        .with_context(|| format!("RemovePodSandbox {pod}"))?;
    Ok(())
}

/// Host memory of one pod: its VMM's resident set, in KiB.
struct PodMemory {
    rss: u64,
    anon: u64,
    file: u64,
    shmem: u64,
    pss: u64,
}

fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn pod_memory(pid: u32) -> Result<PodMemory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
    let field = |text: &str, name: &str| {
        kib_field(text, name).with_context(|| format!("no {name} for pid {pid}"))
    };
    Ok(PodMemory {
        rss: field(&status, "VmRSS:")?,
        anon: field(&status, "RssAnon:")?,
        file: field(&status, "RssFile:")?,
        shmem: field(&status, "RssShmem:")?,
        pss: field(&rollup, "Pss:")?,
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn bench(runs: usize) -> Result<serde_json::Value> {
    let node = Node::start().await;
    let mut client = node.hulld.runtime().await;

    println!("hull: {runs} pod starts, one pod at a time (busybox image already pulled)");
    let mut starts = Vec::new();
    for run in 1..=runs {
        let start = start_pod(&node, &mut client, &format!("timed-{run}")).await?;
        println!("run {run:>2}: {}", start.line());
        remove_pod(&mut client, &start.pod).await?;
        starts.push(start.json());
    }

    println!("hull: {IDLE_PODS} idle pods, each running `{SCRIPT}`");
    let mut idle = Vec::new();
    for n in 1..=IDLE_PODS {
        let start = start_pod(&node, &mut client, &format!("idle-{n}")).await?;
        println!("idle pod {n:>2} (beside {} idle): {}", n - 1, start.line());
        idle.push(start);
    }
    tokio::time::sleep(SETTLE).await;
    let mut memory = Vec::new();
    for (n, start) in idle.iter().enumerate() {
        let pid = node.vmm_pid(&start.pod);
        let m = pod_memory(pid)?;
        println!(
            "idle pod {:>2}: VMM VmRSS {:.1} MiB = guest RAM touched (RssShmem) {:.1} + VMM anon {:.1} + file {:.1}; Pss {:.1}",
            n + 1,
            mib(m.rss),
            mib(m.shmem),
            mib(m.anon),
            mib(m.file),
            mib(m.pss)
        );
        memory.push(m);
    }
    let mean = |f: fn(&PodMemory) -> u64| {
        memory.iter().map(|m| mib(f(m))).sum::<f64>() / memory.len() as f64
    };
    println!(
        "idle pods: mean VmRSS {:.1} MiB (guest RAM touched {:.1}, VMM anon {:.1}, file {:.1}), mean Pss {:.1} MiB",
        mean(|m| m.rss),
        mean(|m| m.shmem),
        mean(|m| m.anon),
        mean(|m| m.file),
        mean(|m| m.pss)
    );
    Ok(serde_json::json!({
        "starts": starts,
        "idle_starts": idle.iter().map(Start::json).collect::<Vec<_>>(),
        "idle_pods": IDLE_PODS,
        "idle_pod_vmrss_mib": mean(|m| m.rss),
        "idle_pod_guest_touched_mib": mean(|m| m.shmem),
        "idle_pod_vmm_anon_mib": mean(|m| m.anon),
        "idle_pod_vmm_file_mib": mean(|m| m.file),
        "idle_pod_pss_mib": mean(|m| m.pss),
    }))
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; the first number given is the run count.
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    if runs == 0 {
        bail!("the run count must be at least 1");
    }
    let summary = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the async runtime")?
        .block_on(bench(runs))?;
    if let Some(path) = std::env::var_os(SUMMARY_ENV).map(PathBuf::from) {
        std::fs::write(&path, summary.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
