//! Installs the Debian packages hull needs, once: `cargo xtask deps`.
//!
//! Every command that needs a package calls [`install`] (everything) or
//! [`install_node`] (building and running hull only) first, so a newcomer on
//! a fresh Debian bookworm machine needs nothing but Rust to start.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::util::run;

/// What a package is for: building hull, running it on a node, or only the
/// tests, benchmarks and dev node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Build,
    Node,
    Test,
}

/// Debian packages (bookworm, plus bookworm-backports where noted), why, and
/// for what.
pub const PACKAGES: &[(&str, &str, Need)] = &[
    (
        "protobuf-compiler",
        "protoc, for the CRI and agent gRPC code",
        Need::Build,
    ),
    (
        "docker-registry",
        "a real OCI registry on loopback for tests and the dev node",
        Need::Test,
    ),
    (
        "skopeo",
        "copies test images into the local registry",
        Need::Test,
    ),
    (
        "erofs-utils",
        "fsck.erofs: tests check the image filesystems hull writes",
        Need::Test,
    ),
    ("e2fsprogs", "mke2fs: scratch disks", Need::Node),
    (
        "qemu-system-x86",
        "the test VM (nested SVM under TCG) and the reference VMM",
        Need::Test,
    ),
    (
        "linux-image-amd64",
        "the test VM's kernel (has 9p, kvm_amd, virtio modules)",
        Need::Test,
    ),
    (
        "linux-source-6.1",
        "source of hull's guest kernel",
        Need::Build,
    ),
    (
        "busybox-static",
        "static userland for test images and the test VM",
        Need::Test,
    ),
    ("cpio", "packs initramfs archives", Need::Build),
    (
        "libseccomp-dev",
        "static libseccomp for the guest agent (libcontainer's seccomp)",
        Need::Build,
    ),
    (
        "pkg-config",
        "finds libseccomp for the agent build",
        Need::Build,
    ),
    ("make", "guest kernel build", Need::Build),
    (
        "gcc",
        "guest kernel build (host tools and the kernel)",
        Need::Build,
    ),
    (
        "libc6-dev",
        "guest kernel build (headers of its host tools)",
        Need::Build,
    ),
    ("flex", "guest kernel build", Need::Build),
    ("bison", "guest kernel build", Need::Build),
    ("bc", "guest kernel build", Need::Build),
    ("libelf-dev", "guest kernel build", Need::Build),
    ("libssl-dev", "guest kernel build", Need::Build),
    (
        "lz4",
        "guest kernel build (LZ4-compressed bzImage)",
        Need::Build,
    ),
    ("zstd", "test images with zstd layers", Need::Test),
    ("xz-utils", "guest kernel source archive", Need::Build),
    (
        "containernetworking-plugins",
        "CNI plugins for pod networking",
        Need::Node,
    ),
    ("iproute2", "network namespaces, tap devices", Need::Node),
    (
        "iptables",
        "the CNI portmap and bridge (ipMasq) plugins program it",
        Need::Node,
    ),
    (
        "iperf3",
        "bench net: TCP throughput pod to host and pod to pod",
        Need::Test,
    ),
    (
        "containerd",
        "the baseline the benchmarks compare with",
        Need::Test,
    ),
    (
        "attr",
        "getfattr: image tests read extended attributes of mounted images",
        Need::Test,
    ),
    (
        "systemd",
        "systemd-analyze verify for the unit file",
        Need::Test,
    ),
    ("g++", "libFuzzer, which the fuzz targets build", Need::Test),
];

const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/hull-bookworm-backports.list";

fn missing_packages(needs: &[Need]) -> Vec<&'static str> {
    PACKAGES
        .iter()
        .filter(|(_, _, need)| needs.contains(need))
        .map(|(name, _, _)| *name)
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
    install_for(&[Need::Build, Need::Node, Need::Test])
}

/// Installs only what building hull and running it on a node need (`cargo
/// xtask install`, `kernel`, `initramfs`): no test registry, QEMU or
/// containerd on a node.
pub fn install_node() -> Result<()> {
    install_for(&[Need::Build, Need::Node])
}

fn install_for(needs: &[Need]) -> Result<()> {
    let missing = missing_packages(needs);
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
