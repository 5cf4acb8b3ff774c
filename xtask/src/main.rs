//! `cargo xtask`: build automation for hull.
//!
//! Every task a developer or CI runs goes through here, so that the README's
//! two commands (`cargo xtask node` and `cargo xtask test`) install what they
//! need and do the same thing on every machine.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod cache;
mod deps;
mod fuzz;
mod initramfs;
mod install;
mod kernel;
mod node;
mod test;
mod testvm;
mod util;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "hull build automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring up a hull node here, run a demo pod through its CRI socket, and
    /// leave it running (`--stop` ends it).
    Node(node::NodeArgs),
    /// Install the Debian packages hull's build, tests and dev node need.
    Deps,
    /// Run a benchmark against its baseline: image-pull, vmm-boot, pod-start,
    /// net, stream.
    Bench(bench::BenchArgs),
    /// Run the whole test suite: lints, unit and integration tests, VM tests.
    Test(test::TestArgs),
    /// Run the fuzz targets (nightly toolchain, libFuzzer) for a while each.
    Fuzz(fuzz::FuzzArgs),
    /// Build hull's guest kernel (cached) and print the path of its vmlinux.
    Kernel,
    /// Build the static guest agent and its initramfs; print the archive's path.
    Initramfs(initramfs::InitramfsArgs),
    /// Build hull and install it as a systemd service (`--root DIR` stages
    /// the files under DIR instead of /).
    Install(install::InstallArgs),
    /// Remove what `install` placed (an edited config and hulld's state stay
    /// unless `--purge`).
    Uninstall(install::UninstallArgs),
    /// Run a command on a host with a working KVM (natively, or in the test VM).
    VmRun(testvm::VmRunArgs),
    /// Build and run only the VM tests (`vm_*` targets), in one test VM boot.
    VmTest,
    /// Stop a test VM started with `vm-run --detach`.
    VmStop(testvm::detach::InstanceArgs),
    /// Show whether a detached test VM runs, and its forwards.
    VmStatus(testvm::detach::InstanceArgs),
    /// One half of a detached test VM's socket forward (internal).
    #[command(hide = true)]
    TestvmProxy(testvm::proxy::ProxyArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Node(args) => node::run_cli(args),
        Command::Deps => deps::install(),
        Command::Bench(args) => bench::run_cli(args),
        Command::Test(args) => test::run_all(args),
        Command::Fuzz(args) => fuzz::run_cli(args),
        Command::Kernel => kernel::run_cli(),
        Command::Initramfs(args) => initramfs::run_cli(args),
        Command::Install(args) => install::install_cli(args),
        Command::Uninstall(args) => install::uninstall_cli(args),
        Command::VmRun(args) => testvm::run_cli(args),
        Command::VmTest => testvm::suite::run_vm_tests(),
        Command::VmStop(args) => testvm::detach::stop_cli(args),
        Command::VmStatus(args) => testvm::detach::status_cli(args),
        Command::TestvmProxy(args) => testvm::proxy::run_cli(args),
    }
}
