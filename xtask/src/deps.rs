//! Installs the Debian packages hull needs, once: `cargo xtask deps`.
//!
//! Every command that needs a package calls [`install`] first, so a newcomer on
//! a fresh Debian bookworm machine needs nothing but Rust to start.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::util::run;

/// Debian packages (bookworm, plus bookworm-backports where noted) and why.
pub const PACKAGES: &[(&str, &str)] = &[
    (
        "protobuf-compiler",
        "protoc, for the CRI and agent gRPC code",
    ),
    (
        "docker-registry",
        "a real OCI registry on loopback for tests and the dev node",
    ),
    ("skopeo", "copies test images into the local registry"),
    (
        "erofs-utils",
        "mkfs.erofs: builds the read-only image filesystems",
    ),
    ("e2fsprogs", "mke2fs: scratch disks"),
    (
        "qemu-system-x86",
        "the test VM (nested SVM under TCG) and the reference VMM",
    ),
    (
        "linux-image-amd64",
        "the test VM's kernel (has 9p, kvm_amd, virtio modules)",
    ),
    ("linux-source-6.1", "source of hull's guest kernel"),
    (
        "busybox-static",
        "static userland for test images and the test VM",
    ),
    ("cpio", "packs initramfs archives"),
    (
        "libseccomp-dev",
        "static libseccomp for the guest agent (libcontainer's seccomp)",
    ),
    ("pkg-config", "finds libseccomp for the agent build"),
    ("make", "guest kernel build"),
    ("gcc", "guest kernel build (host tools and the kernel)"),
    (
        "libc6-dev",
        "guest kernel build (headers of its host tools)",
    ),
    ("flex", "guest kernel build"),
    ("bison", "guest kernel build"),
    ("bc", "guest kernel build"),
    ("libelf-dev", "guest kernel build"),
    ("libssl-dev", "guest kernel build"),
    ("lz4", "guest kernel build (LZ4-compressed bzImage)"),
    ("zstd", "test images with zstd layers"),
    ("xz-utils", "guest kernel source archive"),
    (
        "containernetworking-plugins",
        "CNI plugins for pod networking",
    ),
    ("iproute2", "network namespaces, tap devices"),
    (
        "iptables",
        "the CNI portmap and bridge (ipMasq) plugins program it",
    ),
    (
        "iperf3",
        "bench net: TCP throughput pod to host and pod to pod",
    ),
    ("containerd", "the baseline the benchmarks compare with"),
    (
        "attr",
        "getfattr: image tests read extended attributes of mounted images",
    ),
    ("systemd", "systemd-analyze verify for the unit file"),
];

const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/hull-bookworm-backports.list";

fn missing_packages() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", name])
                .output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

/// Installs whatever of [`PACKAGES`] is missing. Needs root when anything is.
pub fn install() -> Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let is_root = std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
    if !is_root {
        bail!(
            "missing Debian packages: {}; run `sudo cargo xtask deps` or install them with apt-get",
            missing.join(" ")
        );
    }
    if !Path::new(BACKPORTS_LIST).exists() {
        std::fs::write(
            BACKPORTS_LIST,
            "deb http://deb.debian.org/debian bookworm-backports main\n",
        )?;
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))?;
    Ok(())
}
