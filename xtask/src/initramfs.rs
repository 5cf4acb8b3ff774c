//! `cargo xtask initramfs`: builds the guest agent as a static binary and
//! packs it as `/init` into the initramfs every pod VM boots; prints its
//! path.
//!
//! The static build uses its own target dir (`target/agent-static`) because
//! its RUSTFLAGS (`+crt-static`) would otherwise invalidate the shared build
//! cache. libseccomp is linked statically from Debian's `libseccomp-dev`.
//!
//! The archive (newc) holds only what the agent needs before it mounts
//! anything: `/init`, `/dev/console` (the kernel opens it for PID 1's
//! stdio), and the empty mount points.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::deps;
use crate::util::{cargo, run, workspace_root};

const TARGET: &str = "x86_64-unknown-linux-gnu";

#[derive(Args)]
pub struct InitramfsArgs {
    /// gzip the archive (smaller, but boots slower in the test VM).
    #[arg(long)]
    gzip: bool,
}

/// Where the static build and the archives go.
pub fn output_dir() -> PathBuf {
    workspace_root().join("target").join("agent-static")
}

/// The archive's path for a given compression.
pub fn archive_path(gzip: bool) -> PathBuf {
    output_dir().join(if gzip {
        "hull-agent-initramfs.cpio.gz"
    } else {
        "hull-agent-initramfs.cpio"
    })
}

pub fn run_cli(args: InitramfsArgs) -> Result<()> {
    let path = build(args.gzip)?;
    println!("{}", path.display());
    Ok(())
}

/// Builds the static agent and the archive.
pub fn build(gzip: bool) -> Result<PathBuf> {
    deps::install_node()?;
    let agent = build_static_agent()?;
    let binary = std::fs::read(&agent).with_context(|| format!("reading {}", agent.display()))?;
    if has_interpreter(&binary) {
        bail!(
            "{} is dynamically linked (it has an ELF interpreter); the initramfs has no libc",
            agent.display()
        );
    }
    let archive = pack(&binary)?;
    let path = archive_path(gzip);
    let bytes = if gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&archive)?;
        encoder.finish()?
    } else {
        archive
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)?;
    eprintln!(
        "xtask: initramfs {} ({} KiB, agent {} KiB)",
        path.display(),
        bytes.len() / 1024,
        binary.len() / 1024
    );
    Ok(path)
}

fn build_static_agent() -> Result<PathBuf> {
    let target_dir = output_dir();
    run(cargo()
        .args([
            "build",
            "--release",
            "-p",
            "hull-agent",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(&target_dir)
        // --target keeps these flags off build scripts and proc macros.
        // Symbols stripped: every pod VM holds the agent in guest RAM.
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=symbols",
        )
        .env("LIBSECCOMP_LINK_TYPE", "static")
        .env("LIBSECCOMP_LIB_PATH", "/usr/lib/x86_64-linux-gnu"))?;
    Ok(target_dir.join(TARGET).join("release").join("hull-agent"))
}

/// Whether an ELF64 little-endian binary has a PT_INTERP program header
/// (i.e. needs a dynamic loader).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read_u16 = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let read_u32 = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let read_u64 = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if elf.get(0..4) != Some(b"\x7fELF") {
        return true; // not an ELF: refuse it like a dynamic one
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (read_u64(0x20), read_u16(0x36), read_u16(0x38))
    else {
        return true;
    };
    (0..usize::from(phnum)).any(|i| {
        let at = usize::try_from(phoff)
            .unwrap_or(usize::MAX)
            .saturating_add(i * usize::from(phentsize));
        read_u32(at) == Some(PT_INTERP)
    })
}

/// One newc entry.
fn push_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let name_size = name.len() + 1;
    let header = format!(
        "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}{dmaj:08X}{dmin:08X}{rmaj:08X}{rmin:08X}{namesize:08X}{check:08X}",
        uid = 0,
        gid = 0,
        nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 },
        mtime = 0,
        size = data.len(),
        dmaj = 0,
        dmin = 0,
        rmaj = rdev.0,
        rmin = rdev.1,
        namesize = name_size,
        check = 0,
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// The archive: the mount points, /dev/console and /init.
fn pack(agent: &[u8]) -> Result<Vec<u8>> {
    const DIR: u32 = 0o040000;
    const CHAR: u32 = 0o020000;
    const FILE: u32 = 0o100000;
    let mut out = Vec::with_capacity(agent.len() + 4096);
    let mut ino = 1;
    for dir in ["dev", "proc", "sys", "run", "tmp"] {
        push_entry(&mut out, ino, dir, DIR | 0o755, (0, 0), &[]);
        ino += 1;
    }
    push_entry(&mut out, ino, "dev/console", CHAR | 0o600, (5, 1), &[]);
    ino += 1;
    push_entry(&mut out, ino, "init", FILE | 0o755, (0, 0), agent);
    push_entry(&mut out, 0, "TRAILER!!!", 0, (0, 0), &[]);
    Ok(out)
}

/// The archive's entry names, for the tests and for `--list`-style checks.
#[cfg(test)]
fn names(archive: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut at = 0;
    while at + 110 <= archive.len() {
        let field = |i: usize| {
            u32::from_str_radix(
                std::str::from_utf8(&archive[at + 6 + i * 8..at + 14 + i * 8]).unwrap(),
                16,
            )
            .unwrap() as usize
        };
        let (size, name_size) = (field(6), field(11));
        let name =
            String::from_utf8_lossy(&archive[at + 110..at + 110 + name_size - 1]).into_owned();
        if name == "TRAILER!!!" {
            break;
        }
        names.push(name);
        at = (at + 110 + name_size).next_multiple_of(4);
        at = (at + size).next_multiple_of(4);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_holds_only_init_console_and_mount_points() {
        let archive = pack(b"\x7fELF-agent").unwrap();
        assert_eq!(
            names(&archive),
            ["dev", "proc", "sys", "run", "tmp", "dev/console", "init"]
        );
        assert!(archive.windows(10).any(|w| w == b"\x7fELF-agent"));
        assert_eq!(archive.len() % 4, 0);
    }

    #[test]
    fn detects_dynamic_binaries() {
        let myself = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // The test binary is built without crt-static: it has an interpreter.
        assert!(has_interpreter(&myself));
        assert!(has_interpreter(b"#!/bin/sh\n"));
    }
}
