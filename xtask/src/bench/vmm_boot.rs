//! `cargo xtask bench vmm-boot`: boot time and memory of hull's VMM against
//! QEMU `-M microvm`, booting the same kernel and initramfs to an init
//! marker, side by side in one test VM boot (or directly on a host whose
//! KVM boots standard guests).
//!
//! On the host: builds the guest kernel, a release `hull-vmm` and a busybox
//! initramfs whose init prints a marker and reboots, then re-runs itself
//! under `vm-run` with `HULL_VMM_BENCH_INNER=1`. There it starts each VMM
//! `--runs` times, alternating, polls the console file for the marker every
//! millisecond, reads the VMM's memory at that moment, and waits for the
//! guest's reboot to end the VMM. Both VMMs boot both images of the kernel
//! (vmlinux and bzImage). Prints per-run lines, the medians per image, hull's
//! phase breakdown from its exit record, and, comparing each VMM with its
//! faster image, `RESULT vmm-boot hull_ms=… qemu_ms=… ratio=… vmm_rss_mib=…`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::median;
use crate::kernel;
use crate::testvm::{self, RunOptions};
use crate::util::{cargo, run};

const INNER_ENV: &str = "HULL_VMM_BENCH_INNER";
const MARKER: &str = "HULL-BENCH-INIT";
const MEMORY_MIB: u32 = 128;
const DEADLINE: Duration = Duration::from_secs(120);
const INIT: &str = "#!/bin/busybox sh\necho HULL-BENCH-INIT\n/bin/busybox reboot -f\n";

/// Entry point of `cargo xtask bench vmm-boot`.
pub fn run_bench(runs: usize) -> Result<()> {
    let dir = testvm::target_dir().join("hull-bench").join("vmm-boot");
    if std::env::var_os(INNER_ENV).is_some() {
        return measure(&dir, runs);
    }
    std::fs::create_dir_all(&dir)?;
    let kernel = kernel::build()?;
    std::fs::copy(&kernel.bzimage, dir.join("bzImage")).context("cannot copy the bzImage")?;
    std::fs::copy(&kernel.vmlinux, dir.join("vmlinux")).context("cannot copy the vmlinux")?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "vm-runtime",
        "--bin",
        "hull-vmm",
    ]))?;
    std::fs::copy(
        testvm::target_dir().join("release/hull-vmm"),
        dir.join("hull-vmm"),
    )
    .context("cannot copy hull-vmm")?;
    write_initramfs(&dir.join("initramfs.cpio"))?;
    let xtask = std::env::current_exe()?;
    let command = vec![
        "env".to_string(),
        format!("{INNER_ENV}=1"),
        xtask.display().to_string(),
        "bench".into(),
        "vmm-boot".into(),
        "--runs".into(),
        runs.to_string(),
    ];
    let code = testvm::run(&command, &RunOptions::default())?;
    if code != 0 {
        bail!("the vmm-boot benchmark failed inside the test VM (exit status {code})");
    }
    Ok(())
}

/// busybox + `/init` + `/dev/console`, packed with Debian's cpio.
fn write_initramfs(path: &Path) -> Result<()> {
    let staging = path.with_extension("staging");
    let _ = std::fs::remove_dir_all(&staging);
    for sub in ["bin", "dev", "proc", "sys"] {
        std::fs::create_dir_all(staging.join(sub))?;
    }
    std::fs::copy("/bin/busybox", staging.join("bin/busybox"))
        .context("cannot copy /bin/busybox (Debian busybox-static)")?;
    std::fs::write(staging.join("init"), INIT)?;
    run(Command::new("chmod")
        .args(["755"])
        .arg(staging.join("init")))?;
    run(Command::new("mknod")
        .arg(staging.join("dev/console"))
        .args(["c", "5", "1"]))?;
    let list = Command::new("sh")
        .arg("-c")
        .arg("find . | sort | cpio -o -H newc --quiet")
        .current_dir(&staging)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cpio")?;
    if !list.status.success() {
        bail!("cpio failed: {}", list.status);
    }
    std::fs::write(path, list.stdout)?;
    std::fs::remove_dir_all(&staging)?;
    Ok(())
}

/// One boot: time to the marker, memory at that moment, hull's phases.
pub(super) struct Boot {
    pub(super) ms: f64,
    /// VMM memory without guest RAM (hull: RssAnon + RssFile; guest RAM is shared memory).
    pub(super) overhead_kib: u64,
    /// Whole resident set.
    pub(super) rss_kib: u64,
    phases_us: Option<serde_json::Value>,
}

pub(super) fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn wait_marker(
    child: &mut Child,
    console: &Path,
    marker: &str,
    started: Instant,
) -> Result<Duration> {
    loop {
        if std::fs::read(console)
            .map(|c| c.windows(marker.len()).any(|w| w == marker.as_bytes()))
            .unwrap_or(false)
        {
            return Ok(started.elapsed());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the VMM exited ({status}) before the marker; console:\n{}",
                std::fs::read_to_string(console).unwrap_or_default()
            );
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            bail!("no marker within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn wait_exit(child: &mut Child) -> Result<()> {
    let started = Instant::now();
    while child.try_wait()?.is_none() {
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            bail!("the VMM did not exit after the guest rebooted");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn boot_hull(dir: &Path, work: &Path, kernel: &str) -> Result<Boot> {
    let console = work.join("hull-console.log");
    let record = work.join("hull-exit.json");
    let _ = std::fs::remove_file(&console);
    let _ = std::fs::remove_file(&record);
    let config = serde_json::json!({
        "kernel": dir.join(kernel),
        "initramfs": dir.join("initramfs.cpio"),
        "cmdline_extra": "quiet",
        "vcpus": 1,
        "memory_mib": MEMORY_MIB,
    });
    let config_path = work.join("hull-config.json");
    std::fs::write(&config_path, config.to_string())?;
    let started = Instant::now();
    let mut child = Command::new(dir.join("hull-vmm"))
        .arg("--config-file")
        .arg(&config_path)
        .arg("--exit-record")
        .arg(&record)
        .arg("--console-log")
        .arg(&console)
        .arg("--no-setsid")
        .env("HULL_VMM_LOG", "warn")
        .spawn()
        .context("cannot start hull-vmm")?;
    let elapsed = wait_marker(&mut child, &console, MARKER, started)?;
    let pid = child.id();
    let overhead_kib = status_kib(pid, "RssAnon:") + status_kib(pid, "RssFile:");
    let rss_kib = status_kib(pid, "VmRSS:");
    wait_exit(&mut child)?;
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&record)?)?;
    Ok(Boot {
        ms: elapsed.as_secs_f64() * 1000.0,
        overhead_kib,
        rss_kib,
        phases_us: record.get("boot_timeline_us").cloned(),
    })
}

fn boot_qemu(dir: &Path, work: &Path, kernel: &str) -> Result<Boot> {
    let (boot, mut child) = boot_qemu_to_marker(
        &dir.join(kernel),
        &dir.join("initramfs.cpio"),
        MEMORY_MIB,
        MARKER,
        &work.join("qemu-console.log"),
    )?;
    wait_exit(&mut child)?;
    Ok(boot)
}

/// Starts QEMU `-M microvm -enable-kvm` (1 vCPU, `memory_mib`) with
/// `kernel` and `initramfs`, its serial console written to `console`, and
/// times it from its start to `marker` on the console; reads its memory at
/// that moment. Returns the still running QEMU: the caller waits for its
/// exit or ends it.
pub(super) fn boot_qemu_to_marker(
    kernel: &Path,
    initramfs: &Path,
    memory_mib: u32,
    marker: &str,
    console: &Path,
) -> Result<(Boot, Child)> {
    let _ = std::fs::remove_file(console);
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,acpi=off",
            "-enable-kvm",
            "-cpu",
            "host",
            "-smp",
            "1",
        ])
        .args(["-m", &format!("{memory_mib}M")])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 reboot=t panic=-1 quiet"])
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let elapsed = wait_marker(&mut child, console, marker, started)?;
    let pid = child.id();
    let overhead_kib = status_kib(pid, "RssAnon:") + status_kib(pid, "RssFile:");
    let rss_kib = status_kib(pid, "VmRSS:");
    Ok((
        Boot {
            ms: elapsed.as_secs_f64() * 1000.0,
            overhead_kib,
            rss_kib,
            phases_us: None,
        },
        child,
    ))
}

fn phase_ms(phases: &serde_json::Value, key: &str) -> f64 {
    phases.get(key).and_then(|v| v.as_u64()).unwrap_or(0) as f64 / 1000.0
}

/// Boots of one VMM with one kernel image.
#[derive(Default)]
struct Series(Vec<Boot>);

impl Series {
    fn median_ms(&self) -> f64 {
        median(&self.0.iter().map(|b| b.ms).collect::<Vec<_>>())
    }
    fn median_kib(&self, f: impl Fn(&Boot) -> u64) -> f64 {
        median(&self.0.iter().map(|b| f(b) as f64).collect::<Vec<_>>())
    }
}

/// Copies the VMM binary, both kernel images and the initramfs from the
/// host's share (9p, where reading the 21 MB vmlinux alone takes ~0.3 s)
/// into the test VM's `/run` tmpfs, so that both VMMs read them from memory
/// as a node reads them from its page cache. Falls back to the share when
/// `/run` is not a tmpfs.
fn stage_in_memory(shared_dir: &Path) -> Result<std::path::PathBuf> {
    let staged = Path::new("/run/hull-vmm-boot-bench");
    let is_tmpfs = nix::sys::statfs::statfs("/run")
        .map(|fs| fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false);
    if !is_tmpfs {
        println!("/run is not a tmpfs: booting from {}", shared_dir.display());
        return Ok(shared_dir.to_path_buf());
    }
    std::fs::create_dir_all(staged)?;
    for name in ["hull-vmm", "vmlinux", "bzImage", "initramfs.cpio"] {
        std::fs::copy(shared_dir.join(name), staged.join(name))
            .with_context(|| format!("cannot copy {name} into {}", staged.display()))?;
    }
    println!(
        "kernel, initramfs and hull-vmm read from memory ({})",
        staged.display()
    );
    Ok(staged.to_path_buf())
}

/// Runs inside the VM: alternating boots, then the report. Both VMMs boot
/// both images of the same kernel: the ELF vmlinux (direct 64-bit entry for
/// hull, PVH for QEMU; no decompression) and the bzImage (LZ4-compressed).
fn measure(shared_dir: &Path, runs: usize) -> Result<()> {
    let work = std::env::temp_dir().join("hull-vmm-boot-bench");
    std::fs::create_dir_all(&work)?;
    let dir = &stage_in_memory(shared_dir)?;
    let images = ["vmlinux", "bzImage"];
    let mut hull: [Series; 2] = Default::default();
    let mut qemu: [Series; 2] = Default::default();
    for run in 1..=runs {
        for (i, image) in images.iter().enumerate() {
            let h = boot_hull(dir, &work, image)?;
            println!(
                "run {run} {image:<8}: hull {:>5.0} ms (VMM {} KiB without guest RAM, VmRSS {} KiB)",
                h.ms, h.overhead_kib, h.rss_kib
            );
            hull[i].0.push(h);
            let q = boot_qemu(dir, &work, image)?;
            println!(
                "run {run} {image:<8}: qemu {:>5.0} ms (VmRSS {} KiB)",
                q.ms, q.rss_kib
            );
            qemu[i].0.push(q);
        }
    }
    for (i, image) in images.iter().enumerate() {
        println!(
            "median to init marker, {image}: hull {:.0} ms, qemu -M microvm {:.0} ms, ratio {:.2} ({runs} runs each)",
            hull[i].median_ms(),
            qemu[i].median_ms(),
            hull[i].median_ms() / qemu[i].median_ms()
        );
    }
    let hull_rss_mib = hull[0].median_kib(|b| b.overhead_kib) / 1024.0;
    let qemu_rss_mib = qemu[0].median_kib(|b| b.rss_kib) / 1024.0;
    println!(
        "memory at the marker: hull-vmm {hull_rss_mib:.1} MiB without guest RAM; qemu VmRSS {qemu_rss_mib:.1} MiB"
    );
    println!("hull phases with the vmlinux (median, ms since VMM start):");
    let keys = [
        ("boot_requested_us", "config read, boot starts"),
        ("kvm_ready_us", "KVM VM + memory ready"),
        ("kernel_loaded_us", "kernel + initramfs loaded"),
        ("devices_ready_us", "devices + vCPUs ready"),
        ("first_vcpu_run_us", "first vCPU run"),
    ];
    for (key, label) in keys {
        let values: Vec<f64> = hull[0]
            .0
            .iter()
            .filter_map(|b| b.phases_us.as_ref())
            .map(|p| phase_ms(p, key))
            .collect();
        if !values.is_empty() {
            println!("  {label:<28} {:>8.1}", median(&values));
        }
    }
    // The headline compares each VMM with its faster image of the kernel.
    let best = |series: &[Series; 2]| {
        (0..2)
            .map(|i| (series[i].median_ms(), images[i]))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .expect("two images")
    };
    let (hull_ms, hull_image) = best(&hull);
    let (qemu_ms, qemu_image) = best(&qemu);
    println!(
        "  {:<28} {:>8.1}",
        "init marker on the console",
        hull[0].median_ms()
    );
    println!(
        "fastest: hull with the {hull_image} {hull_ms:.0} ms, qemu with the {qemu_image} {qemu_ms:.0} ms"
    );
    println!(
        "RESULT vmm-boot hull_ms={hull_ms:.0} qemu_ms={qemu_ms:.0} ratio={:.2} vmm_rss_mib={hull_rss_mib:.1}",
        hull_ms / qemu_ms
    );
    Ok(())
}
