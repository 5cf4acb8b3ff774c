//! `cargo xtask fuzz [--seconds N] [--target NAME]`: runs every cargo-fuzz
//! target of the workspace (`vm-runtime/fuzz`: virtio-blk requests and vsock
//! packets; `cri-server/fuzz`: SPDY frames and header blocks) for a while
//! each, under libFuzzer (nightly toolchain, C++ compiler).
//!
//! With cargo-fuzz installed, each target runs through `cargo fuzz run`;
//! otherwise the fuzz crate is built with the same sanitizer-coverage flags
//! cargo-fuzz uses and each target binary runs on its corpus directory.
//!
//! `cargo xtask test` runs it briefly when a nightly toolchain is installed
//! and says so when it is not.

use std::process::Command;

use anyhow::{Result, bail};
use clap::Args;

use crate::util::{run, workspace_root};

/// A cargo-fuzz crate and its targets.
struct FuzzCrate {
    folder: &'static str,
    targets: &'static [&'static str],
}

const FUZZ_CRATES: [FuzzCrate; 2] = [
    FuzzCrate {
        folder: "vm-runtime/fuzz",
        targets: &["virtio_blk_request", "vsock_packet"],
    },
    FuzzCrate {
        folder: "cri-server/fuzz",
        targets: &["spdy_frames"],
    },
];

/// Largest input libFuzzer tries.
const MAX_LEN: &str = "-max_len=65536";

/// What `cargo fuzz build` passes to rustc for libFuzzer's coverage.
const SANCOV_RUSTFLAGS: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing -Cdebug-assertions -Coverflow-checks";

const FUZZ_TRIPLE: &str = "x86_64-unknown-linux-gnu";

#[derive(Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Run only this target (e.g. spdy_frames).
    #[arg(long)]
    target: Option<String>,
}

/// Whether `cargo +nightly` works here.
pub fn nightly_available() -> bool {
    succeeds(Command::new("cargo").args(["+nightly", "--version"]))
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|out| out.status.success())
}

pub fn run_cli(args: FuzzArgs) -> Result<()> {
    if let Some(name) = &args.target
        && !FUZZ_CRATES
            .iter()
            .any(|c| c.targets.contains(&name.as_str()))
    {
        let known: Vec<&str> = FUZZ_CRATES
            .iter()
            .flat_map(|c| c.targets)
            .copied()
            .collect();
        bail!(
            "no fuzz target {name:?}; the targets are {}",
            known.join(", ")
        );
    }
    run_targets(args.seconds, args.target.as_deref())
}

/// Runs every target for `seconds`; fails on the first crash.
pub fn run_all(seconds: u64) -> Result<()> {
    run_targets(seconds, None)
}

fn run_targets(seconds: u64, only: Option<&str>) -> Result<()> {
    let with_cargo_fuzz = succeeds(Command::new("cargo").args(["fuzz", "--version"]));
    let max_time = format!("-max_total_time={seconds}");
    let fuzz_target_dir = workspace_root().join("target/fuzz");
    for krate in &FUZZ_CRATES {
        let dir = workspace_root().join(krate.folder);
        let targets: Vec<&str> = krate
            .targets
            .iter()
            .copied()
            .filter(|t| only.is_none_or(|name| name == *t))
            .collect();
        if targets.is_empty() {
            continue;
        }
        if with_cargo_fuzz {
            for target in targets {
                run(Command::new("cargo")
                    .current_dir(&dir)
                    .args(["+nightly", "fuzz", "run", target, "--"])
                    .args([max_time.as_str(), MAX_LEN]))?;
            }
            continue;
        }
        run(Command::new("cargo")
            .current_dir(&dir)
            .env("RUSTFLAGS", SANCOV_RUSTFLAGS)
            .args(["+nightly", "build", "--release", "--target", FUZZ_TRIPLE])
            .arg("--target-dir")
            .arg(&fuzz_target_dir))?;
        for target in targets {
            let corpus = dir.join("corpus").join(target);
            std::fs::create_dir_all(&corpus)?;
            run(Command::new(
                fuzz_target_dir
                    .join(FUZZ_TRIPLE)
                    .join("release")
                    .join(target),
            )
            .args([max_time.as_str(), MAX_LEN])
            .arg(&corpus))?;
        }
    }
    Ok(())
}
