//! `cargo xtask fuzz [--seconds N]`: runs every cargo-fuzz target of the
//! workspace (`vm-runtime/fuzz`: virtio-blk requests and vsock packets;
//! `cri-server/fuzz`: SPDY frames and header blocks) for a while each,
//! through each folder's `run.sh` (libFuzzer, which needs the nightly
//! toolchain).
//!
//! `cargo xtask test` runs it briefly when a nightly toolchain is installed
//! and says so when it is not.

use std::process::Command;

use anyhow::Result;
use clap::Args;

use crate::util::{run, workspace_root};

/// The folders holding a cargo-fuzz crate and its `run.sh`.
const FUZZ_CRATES: [&str; 2] = ["vm-runtime/fuzz", "cri-server/fuzz"];

#[derive(Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

/// Whether `cargo +nightly` works here.
pub fn nightly_available() -> bool {
    Command::new("cargo")
        .args(["+nightly", "--version"])
        .output()
        .is_ok_and(|out| out.status.success())
}

pub fn run_cli(args: FuzzArgs) -> Result<()> {
    run_all(args.seconds)
}

/// Runs every target for `seconds`; fails on the first crash.
pub fn run_all(seconds: u64) -> Result<()> {
    for folder in FUZZ_CRATES {
        let script = workspace_root().join(folder).join("run.sh");
        run(Command::new("sh").arg(&script).arg(seconds.to_string()))?;
    }
    Ok(())
}
