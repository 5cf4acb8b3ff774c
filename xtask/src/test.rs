//! `cargo xtask test`: the whole test suite, as CI runs it.
//!
//! Order: install packages, lint (fmt + clippy), host tests (unit tests and
//! integration tests that need no KVM), then the tests that need a working KVM,
//! run through the test VM harness.

use anyhow::Result;
use clap::Args;

use crate::deps;
use crate::util::{cargo, run};

#[derive(Args)]
pub struct TestArgs {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Skip the tests that need a working KVM (the `vm_*` targets).
    #[arg(long)]
    no_vm: bool,
    /// Seconds each fuzz target runs (0: none; needs a nightly toolchain).
    #[arg(long, default_value_t = 15)]
    fuzz_seconds: u64,
}

pub fn run_lints() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

pub fn run_all(args: TestArgs) -> Result<()> {
    deps::install()?;
    if !args.no_lint {
        run_lints()?;
    }
    // Integration tests start hulld and hull-vmm; `cargo test` builds only
    // the binaries of the package under test, so build these two first.
    run(cargo().args(["build", "-p", "cri-server", "-p", "vm-runtime", "--bins"]))?;
    run(cargo().args(["test", "--workspace"]))?;
    // The parsers that take bytes from guests and clients, under libFuzzer
    // for a short while.
    if args.fuzz_seconds > 0 {
        if crate::fuzz::nightly_available() {
            crate::fuzz::run_all(args.fuzz_seconds)?;
        } else {
            eprintln!("xtask: no nightly toolchain here: the fuzz targets were not run");
        }
    }
    // VM tests: `vm_*` targets of hull-integration, all in one test VM boot
    // (see xtask/src/testvm/suite.rs).
    if !args.no_vm {
        if !args.no_lint {
            crate::testvm::suite::lint()?;
        }
        crate::testvm::suite::run_vm_tests()?;
    }
    Ok(())
}
