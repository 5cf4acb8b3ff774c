//! `cargo xtask bench pod-start`: time from RunPodSandbox to a RUNNING
//! container through hulld's CRI socket, next to QEMU `-M microvm` booting
//! the same guest kernel and initramfs to init, and host memory per idle
//! pod; all in one test VM boot (or directly on a host whose KVM boots
//! standard guests).
//!
//! On the host: builds the guest kernel, the agent initramfs (`cargo xtask
//! initramfs`), release `hulld` and `hull-vmm`, and the `pod_start` bench
//! of `hull-integration` (`integration/benches/pod_start.rs`, which finds
//! the release binaries next to its own `target/release`), then re-runs
//! itself under `vm-run` with `HULL_POD_START_BENCH_INNER=1`. There:
//!
//! 1. QEMU `-M microvm -enable-kvm` (1 vCPU, the pod VMs' 192 MiB) boots
//!    the guest kernel with the agent initramfs (the very archive hulld
//!    gives its pod VMs), `--runs` times with each image of the kernel,
//!    alternating: the vmlinux (which hulld boots) and the bzImage (which
//!    QEMU boots faster). Each boot is timed from QEMU's start to the
//!    agent's first console line (`hull-agent starting`, logged once it runs
//!    as init), then QEMU is killed. `qemu_boot_ms` is the median of QEMU's
//!    faster image, as in `bench vmm-boot`.
//! 2. The bench binary times `--runs` pod starts, one pod at a time, and
//!    reads the host memory of 10 idle pods (see its doc comment).
//!
//! Prints per-run lines, the medians of hull's phases, and `RESULT pod-start
//! hull_ms=… qemu_boot_ms=… ratio=… idle_pod_host_mib=…`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{median, vmm_boot};
use crate::kernel;
use crate::testvm::{self, RunOptions, suite};
use crate::util::workspace_root;

const INNER_ENV: &str = "HULL_POD_START_BENCH_INNER";
/// The bench binary, for the inner run.
const BINARY_ENV: &str = "HULL_POD_START_BENCH_BINARY";
/// Where the bench binary writes its samples (JSON).
const SUMMARY_ENV: &str = "HULL_POD_START_SUMMARY";
const VMLINUX_ENV: &str = "HULL_GUEST_VMLINUX";
const BZIMAGE_ENV: &str = "HULL_GUEST_BZIMAGE";
const INITRAMFS_ENV: &str = "HULL_AGENT_INITRAMFS";
/// The agent's first console line.
const AGENT_MARKER: &str = "hull-agent starting";
/// The guest kernel's images QEMU boots: hulld boots pod VMs from the
/// vmlinux; QEMU boots the bzImage faster (see docs/vmm.md).
const IMAGES: [&str; 2] = ["vmlinux", "bzImage"];
/// Guest memory of the pod VMs (`integration/src/pod_node.rs`); QEMU's too.
const POD_MEMORY_MIB: u32 = 192;
/// Test VM memory at least: 10 idle pods of 192 MiB, hulld and a registry.
const MIN_TESTVM_MIB: u32 = 4096;
/// Timed pod starts (and QEMU boots) unless `--runs` says otherwise.
pub const DEFAULT_RUNS: usize = 10;

/// Entry point of `cargo xtask bench pod-start`.
pub fn run_bench(runs: usize) -> Result<()> {
    if std::env::var_os(INNER_ENV).is_some() {
        return measure(runs);
    }
    let kernel = kernel::build()?;
    let initramfs = crate::initramfs::build(false)?;
    crate::util::build_release_runtime()?;
    let binary = suite::build_vm_bench("pod_start")?;
    let xtask = std::env::current_exe()?;
    let command = vec![
        "env".to_string(),
        format!("{INNER_ENV}=1"),
        format!("{VMLINUX_ENV}={}", kernel.vmlinux.display()),
        format!("{BZIMAGE_ENV}={}", kernel.bzimage.display()),
        format!("{INITRAMFS_ENV}={}", initramfs.display()),
        format!("{BINARY_ENV}={}", binary.display()),
        xtask.display().to_string(),
        "bench".into(),
        "pod-start".into(),
        "--runs".into(),
        runs.to_string(),
    ];
    let mut options = RunOptions::default();
    options.memory_mib = options.memory_mib.max(MIN_TESTVM_MIB);
    let code = testvm::run(&command, &options)?;
    if code != 0 {
        bail!("the pod-start benchmark failed inside the test VM (exit status {code})");
    }
    Ok(())
}

fn env_path(name: &str) -> Result<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .with_context(|| format!("{name} is not set (run `cargo xtask bench pod-start`)"))
}

/// QEMU's side: `runs` boots of each kernel image (alternating) to the
/// agent's first console line. Returns the median in ms of the image QEMU
/// boots faster (as `bench vmm-boot` does), and that image's name.
fn qemu_boots(
    images: &[(&'static str, PathBuf)],
    initramfs: &Path,
    work: &Path,
    runs: usize,
) -> Result<(f64, &'static str)> {
    println!(
        "qemu -M microvm: {runs} boots of each image of the guest kernel + {} ({POD_MEMORY_MIB} MiB, 1 vCPU) to {AGENT_MARKER:?} on the console",
        initramfs.display()
    );
    let console = work.join("qemu-console.log");
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); images.len()];
    for run in 1..=runs {
        for (i, (name, kernel)) in images.iter().enumerate() {
            let (boot, mut child) = vmm_boot::boot_qemu_to_marker(
                kernel,
                initramfs,
                POD_MEMORY_MIB,
                AGENT_MARKER,
                &console,
            )
            .with_context(|| format!("booting the {name} and the agent initramfs with QEMU"))?;
            // The agent serves nothing without hull's vsock device: end QEMU
            // (our own child) here.
            let _ = child.kill();
            child.wait().context("waiting for QEMU")?;
            println!(
                "run {run:>2} {name:<8}: qemu {:>6.0} ms (VmRSS {:.1} MiB)",
                boot.ms,
                boot.rss_kib as f64 / 1024.0
            );
            times[i].push(boot.ms);
        }
    }
    let mut best = None;
    for ((name, _), times) in images.iter().zip(&times) {
        let ms = median(times);
        println!("qemu median with the {name}: {ms:.0} ms");
        if best.is_none_or(|(best_ms, _)| ms < best_ms) {
            best = Some((ms, *name));
        }
    }
    best.context("no kernel image to boot")
}

/// The median of `key` over the starts in the bench's summary, if any
/// start has it.
fn phase_median(starts: &[serde_json::Value], key: &str) -> Option<f64> {
    let values: Vec<f64> = starts.iter().filter_map(|s| s[key].as_f64()).collect();
    (!values.is_empty()).then(|| median(&values))
}

/// Runs inside the VM: QEMU's boots, then the bench binary; the report.
fn measure(runs: usize) -> Result<()> {
    let initramfs = env_path(INITRAMFS_ENV)?;
    let binary = env_path(BINARY_ENV)?;
    let work = std::env::temp_dir().join("hull-pod-start-bench");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let images = [
        (IMAGES[0], env_path(VMLINUX_ENV)?),
        (IMAGES[1], env_path(BZIMAGE_ENV)?),
    ];
    let (qemu_ms, qemu_image) = qemu_boots(&images, &initramfs, &work, runs)?;

    let summary_path = work.join("summary.json");
    let _ = std::fs::remove_file(&summary_path);
    let status = Command::new(&binary)
        .arg(runs.to_string())
        .env(SUMMARY_ENV, &summary_path)
        .current_dir(workspace_root().join("integration"))
        .status()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if !status.success() {
        bail!("the pod_start bench failed ({status})");
    }
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&summary_path)
            .with_context(|| format!("reading {}", summary_path.display()))?,
    )
    .context("parsing the pod_start bench's summary")?;
    let starts = summary["starts"]
        .as_array()
        .context("no starts in the summary")?;

    println!(
        "hull phases ({} starts, median ms of each; medians do not add up):",
        starts.len()
    );
    let phases = [
        ("run_pod_sandbox_ms", "RunPodSandbox"),
        ("vm_boot_ms", "  of which VMM start to agent"),
        ("create_container_ms", "CreateContainer"),
        ("start_container_ms", "StartContainer"),
        ("status_running_ms", "ContainerStatus RUNNING"),
        ("total_ms", "RunPodSandbox call to RUNNING"),
    ];
    for (key, label) in phases {
        if let Some(ms) = phase_median(starts, key) {
            println!("  {label:<30} {ms:>8.0}");
        }
    }
    let hull_ms = phase_median(starts, "total_ms").context("no start times in the summary")?;
    let idle_mib = summary["idle_pod_vmrss_mib"]
        .as_f64()
        .context("no idle pod memory in the summary")?;
    println!(
        "median: hull pod RUNNING {hull_ms:.0} ms, qemu boot to the agent {qemu_ms:.0} ms (its faster image, the {qemu_image}); idle pods: {idle_mib:.1} MiB each (VMM VmRSS incl. guest RAM touched, mean of {})",
        summary["idle_pods"]
    );
    println!(
        "RESULT pod-start hull_ms={hull_ms:.0} qemu_boot_ms={qemu_ms:.0} ratio={:.2} idle_pod_host_mib={idle_mib:.1}",
        hull_ms / qemu_ms
    );
    Ok(())
}
