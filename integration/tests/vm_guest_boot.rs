//! hull's guest kernel boots under KVM and has what pods need.
//!
//! Boots the kernel from `cargo xtask kernel` with QEMU `-M microvm` (the
//! reference VMM until hull's own lands) and a busybox init that prints a
//! marker, mounts an ext4 and an erofs disk, reads a known file from each,
//! reports the kernel features pods rely on, and reboots (the VM's end).
//! Needs a working KVM: run it with `cargo xtask test`, or
//! `cargo xtask vm-run -- <this test binary>` with the kernel variables set.

use std::time::Duration;

use anyhow::{Context, Result};
use hull_integration::disk::{make_erofs, make_ext4};
use hull_integration::guest::{GuestKernel, guest_kernel, require_kvm, write_busybox_initramfs};
use hull_integration::qemu::{Disk, MicrovmConfig};

/// Generous: inside the test VM, a boot takes ~2-3 s; a loaded CI host is
/// several times slower.
const BOOT_DEADLINE: Duration = Duration::from_secs(120);

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "HULL-GUEST-INIT uptime=$(cut -d' ' -f1 /proc/uptime)"

# Find each disk by its serial, not by probe order.
for dir in /sys/block/vd*; do
    serial=$(cat "$dir/serial" 2>/dev/null)
    dev=/dev/${dir##*/}
    case "$serial" in
        hull-ext4)
            mkdir -p /mnt/ext4
            if mount -t ext4 -o ro "$dev" /mnt/ext4; then
                echo "HULL-EXT4-FILE $(cat /mnt/ext4/probe.txt)"
            else
                echo "HULL-EXT4-MOUNT-FAILED"
            fi ;;
        hull-erofs)
            mkdir -p /mnt/erofs
            if mount -t erofs -o ro "$dev" /mnt/erofs; then
                echo "HULL-EROFS-FILE $(cat /mnt/erofs/probe.txt)"
            else
                echo "HULL-EROFS-MOUNT-FAILED"
            fi ;;
    esac
done

mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup && echo "HULL-CGROUP-CONTROLLERS $(cat /sys/fs/cgroup/cgroup.controllers)"
[ -r /proc/pressure/memory ] && echo "HULL-PSI present"
echo "HULL-FILESYSTEMS $(grep -v nodev /proc/filesystems | tr -s '\t\n' '  ') $(grep -o 'overlay\|tmpfs' /proc/filesystems | tr '\n' ' ')"
echo "HULL-NAMESPACES $(ls /proc/self/ns | tr '\n' ' ')"
echo "HULL-RNG $(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
[ -d /proc/sys/net/netfilter ] && [ -e /proc/net/ip_tables_names ] && echo "HULL-NETFILTER present"
echo "HULL-GUEST-DONE"
reboot -f
"#;

struct Prepared {
    _dir: tempfile::TempDir,
    config: MicrovmConfig,
    ext4_text: String,
    erofs_text: String,
}

fn prepare(kernel: &GuestKernel) -> Result<Prepared> {
    let dir = tempfile::tempdir()?;
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let ext4_text = format!("ext4-{nonce}");
    let erofs_text = format!("erofs-{nonce}");

    let ext4_tree = dir.path().join("ext4-tree");
    std::fs::create_dir(&ext4_tree)?;
    std::fs::write(ext4_tree.join("probe.txt"), &ext4_text)?;
    let ext4_image = dir.path().join("disk.ext4");
    make_ext4(&ext4_tree, &ext4_image, 16)?;

    let erofs_tree = dir.path().join("erofs-tree");
    std::fs::create_dir(&erofs_tree)?;
    std::fs::write(erofs_tree.join("probe.txt"), &erofs_text)?;
    let erofs_image = dir.path().join("disk.erofs");
    make_erofs(&erofs_tree, &erofs_image)?;

    let initramfs = dir.path().join("initramfs.cpio");
    write_busybox_initramfs(INIT, &initramfs)?;

    let mut config = MicrovmConfig::new(&kernel.bzimage);
    config.initramfs = Some(initramfs);
    config.cmdline.push_str(" quiet");
    config.extra_args = vec!["-device".into(), "virtio-rng-device".into()];
    config.disks = vec![
        Disk {
            path: ext4_image,
            read_only: true,
            serial: "hull-ext4".into(),
        },
        Disk {
            path: erofs_image,
            read_only: true,
            serial: "hull-erofs".into(),
        },
    ];
    Ok(Prepared {
        _dir: dir,
        config,
        ext4_text,
        erofs_text,
    })
}

fn line_after<'a>(console: &'a str, marker: &str) -> Option<&'a str> {
    console
        .lines()
        .find_map(|line| line.split_once(marker).map(|(_, rest)| rest.trim()))
}

#[test]
fn guest_kernel_boots_and_mounts_ext4_and_erofs() -> Result<()> {
    let kernel = guest_kernel()?;
    require_kvm()?;
    let prepared = prepare(&kernel)?;

    let mut vm = prepared.config.spawn()?;
    let to_init = vm.wait_for_console("HULL-GUEST-INIT", BOOT_DEADLINE)?;
    vm.wait_for_console("HULL-GUEST-DONE", BOOT_DEADLINE)?;
    let status = vm.wait_exit(BOOT_DEADLINE)?;
    let console = vm.console().text();
    eprintln!("guest reached init {to_init:?} after QEMU started");

    assert!(
        status.success(),
        "QEMU exited with {status}; console:\n{console}"
    );
    assert_eq!(
        line_after(&console, "HULL-EXT4-FILE"),
        Some(prepared.ext4_text.as_str()),
        "ext4 disk; console:\n{console}"
    );
    assert_eq!(
        line_after(&console, "HULL-EROFS-FILE"),
        Some(prepared.erofs_text.as_str()),
        "erofs disk; console:\n{console}"
    );

    let controllers =
        line_after(&console, "HULL-CGROUP-CONTROLLERS").context("no cgroup2 controllers line")?;
    for controller in ["cpu", "io", "memory", "pids"] {
        assert!(
            controllers.split_whitespace().any(|c| c == controller),
            "cgroup controller {controller} missing from {controllers:?}"
        );
    }
    assert!(
        console.contains("HULL-PSI present"),
        "no PSI; console:\n{console}"
    );
    let filesystems = line_after(&console, "HULL-FILESYSTEMS").context("no filesystems line")?;
    for fs in ["ext4", "erofs", "overlay", "tmpfs"] {
        assert!(
            filesystems.contains(fs),
            "{fs} missing from {filesystems:?}"
        );
    }
    let namespaces = line_after(&console, "HULL-NAMESPACES").context("no namespaces line")?;
    for ns in ["cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"] {
        assert!(
            namespaces.split_whitespace().any(|n| n == ns),
            "namespace {ns} missing from {namespaces:?}"
        );
    }
    let rng = line_after(&console, "HULL-RNG").context("no hw_random line")?;
    assert!(
        rng.starts_with("virtio_rng"),
        "virtio-rng not the current hw_random: {rng:?}"
    );
    assert!(
        console.contains("HULL-NETFILTER present"),
        "no netfilter/iptables in the guest; console:\n{console}"
    );
    Ok(())
}
