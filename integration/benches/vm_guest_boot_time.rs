//! Guest boot time under KVM: hull's guest kernel against Debian's stock
//! kernel, booting the same busybox init with QEMU `-M microvm`.
//!
//! Run it where KVM works (in the test VM on hosts without one):
//!
//! ```text
//! cargo bench -p hull-integration --features vm-tests --bench vm_guest_boot_time --no-run
//! HULL_GUEST_BZIMAGE=$(dirname $(cargo xtask kernel))/bzImage \
//!   cargo xtask vm-run -- target/release/deps/vm_guest_boot_time-<hash> [RUNS]
//! ```
//!
//! For each kernel it boots RUNS times (default 5) and prints the median,
//! minimum and maximum wall time from QEMU's start to the init's marker, the
//! kernel's own uptime at that point, and QEMU's resident memory then.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hull_integration::guest::{BZIMAGE_ENV, require_kvm, write_busybox_initramfs};
use hull_integration::qemu::MicrovmConfig;

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "HULL-BENCH-INIT uptime=$(/bin/busybox cut -d' ' -f1 /proc/uptime)"
/bin/busybox reboot -f
"#;
const DEADLINE: Duration = Duration::from_secs(120);

struct Sample {
    wall: Duration,
    uptime: f64,
    rss_kib: u64,
}

fn boot_once(kernel: &Path, initramfs: &Path) -> Result<Sample> {
    let mut config = MicrovmConfig::new(kernel);
    config.initramfs = Some(initramfs.to_path_buf());
    config.cmdline.push_str(" quiet");
    let mut vm = config.spawn()?;
    let wall = vm.wait_for_console("HULL-BENCH-INIT", DEADLINE)?;
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", vm.pid()))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let status = vm.wait_exit(DEADLINE)?;
    let console = vm.console().text();
    if !status.success() {
        bail!("QEMU exited with {status}; console:\n{console}");
    }
    let uptime = console
        .lines()
        .find_map(|line| {
            line.split_once("HULL-BENCH-INIT uptime=")
                .map(|(_, v)| v.trim())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    Ok(Sample {
        wall,
        uptime,
        rss_kib,
    })
}

fn report(name: &str, mut samples: Vec<Sample>) {
    samples.sort_by_key(|s| s.wall);
    let median = &samples[samples.len() / 2];
    println!(
        "{name}: median {:.2} s (min {:.2}, max {:.2}; n={}), kernel uptime at init {:.2} s, QEMU RSS {} MiB",
        median.wall.as_secs_f64(),
        samples[0].wall.as_secs_f64(),
        samples[samples.len() - 1].wall.as_secs_f64(),
        samples.len(),
        median.uptime,
        median.rss_kib / 1024
    );
}

/// The newest Debian stock kernel in /boot.
fn debian_kernel() -> Result<PathBuf> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels
        .pop()
        .context("no /boot/vmlinuz-* (Debian linux-image-amd64)")
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; the first number given is the run count.
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let hull_kernel = PathBuf::from(
        std::env::var_os(BZIMAGE_ENV)
            .with_context(|| format!("set {BZIMAGE_ENV} to hull's guest bzImage"))?,
    );
    require_kvm()?;
    let dir = tempfile::tempdir()?;
    let initramfs = dir.path().join("init.cpio");
    write_busybox_initramfs(INIT, &initramfs)?;

    for (name, kernel) in [
        ("hull guest kernel", hull_kernel),
        ("Debian stock kernel", debian_kernel()?),
    ] {
        let samples = (0..runs)
            .map(|_| boot_once(&kernel, &initramfs))
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("booting {}", kernel.display()))?;
        report(&format!("{name} ({})", kernel.display()), samples);
    }
    Ok(())
}
