//! `hull-vmm`: one microVM per process. See `docs/vmm.md`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use vm_runtime::exit_record::ExitReason;
use vm_runtime::vmm::{self, VmmOptions, timeline};

/// hull's microVM monitor.
#[derive(Parser, Debug)]
#[command(name = "hull-vmm", version, about)]
struct Args {
    /// Control socket (JSON lines) to create and listen on.
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Boot this VM config (JSON, as in the `boot` request) at once.
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Where to write the exit record when the VM ends.
    #[arg(long)]
    exit_record: PathBuf,
    /// File the guest console (COM1) is appended to.
    #[arg(long)]
    console_log: PathBuf,
    /// File to write this process's pid to.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Run without seccomp filters (debugging only).
    #[arg(long)]
    no_seccomp: bool,
    /// Stay in the caller's session instead of starting a new one.
    #[arg(long)]
    no_setsid: bool,
    /// A descriptor left open by the parent for the config file's
    /// `{"passed_fd": N}` taps: the N-th `--pass-fd` (repeatable).
    #[arg(long = "pass-fd", value_name = "FD")]
    pass_fds: Vec<i32>,
}

fn main() -> Result<()> {
    timeline::mark_process_start();
    // One malloc arena for every thread. glibc gives threads their own
    // arenas, whose heaps grow with mprotect and, when they shrink, open
    // /proc/sys/vm/overcommit_memory: a seccomp-confined device thread
    // moving much data through vsock was killed for that openat. The main
    // arena grows with brk and mmap only, which every filter allows.
    // SAFETY: mallopt only sets a malloc tunable, and no other thread
    // exists yet.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("HULL_VMM_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if !args.no_setsid {
        // Own session and process group: signals to hulld's group and the
        // end of hulld's session do not reach the VMM. Fails (harmlessly)
        // when already a group leader.
        // SAFETY: setsid takes no arguments and touches no memory.
        unsafe { libc::setsid() };
    }
    let exit = vmm::run(VmmOptions {
        api_sock: args.api_sock,
        config_file: args.config_file,
        exit_record: args.exit_record,
        console_log: args.console_log,
        pid_file: args.pid_file,
        seccomp: !args.no_seccomp,
        inherited_fds: args.pass_fds,
    })?;
    let code = match exit.record.reason {
        ExitReason::VmmError { .. } => 1,
        _ => 0,
    };
    // Ends every thread at once, with the VM still mapped under them.
    std::process::exit(code);
}
