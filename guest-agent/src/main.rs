//! hull's guest agent: PID 1 inside every pod VM.
//!
//! Boot: leave the initramfs for a tmpfs root, mount the kernel
//! filesystems, read `hull.*` parameters from the kernel command line, start
//! logging to the console, then serve the agent protocol over vsock on one
//! runtime thread (see `reaper` for why only one). If anything fatal
//! happens, the agent syncs and reboots: PID 1 exiting would panic the
//! kernel, and a reboot ends the VM cleanly.

mod cmdline;
mod container;
mod files;
mod network;
mod output;
mod pid1;
mod port_forward;
mod reaper;
mod sandbox;
mod service;
mod stats;
mod stdio;
mod storage;
mod sys;
mod user;

use std::sync::Arc;

use anyhow::Context;
use hull_proto::limits::MAX_REQUEST_BYTES;
use hull_proto::v1::agent_server::AgentServer;
use tokio_vsock::{VMADDR_CID_ANY, VsockAddr, VsockListener};
use tracing_subscriber::EnvFilter;

fn main() {
    let is_init = std::process::id() == 1;
    if let Err(err) = run(is_init) {
        // Logging may not be up yet: write to the console directly too.
        eprintln!("hull-agent: fatal: {err:#}");
        tracing::error!(error = %format!("{err:#}"), "fatal error");
        if is_init {
            pid1::power(pid1::PowerAction::Reboot);
        }
        std::process::exit(1);
    }
}

fn run(is_init: bool) -> anyhow::Result<()> {
    if is_init {
        pid1::leave_initramfs().context("leaving the initramfs")?;
        pid1::mount_kernel_filesystems().context("mounting kernel filesystems")?;
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (params, problems) = cmdline::parse(&cmdline);
    let filter = EnvFilter::try_new(&params.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    for problem in &problems {
        tracing::warn!(%problem, "ignored a kernel command line parameter");
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        vsock_port = params.vsock_port,
        is_init,
        "hull-agent starting"
    );

    // One thread: see the `reaper` module.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the async runtime")?;
    runtime.block_on(serve(params.vsock_port, is_init))
}

async fn serve(port: u32, is_init: bool) -> anyhow::Result<()> {
    if is_init {
        pid1::power_off_on_ctrl_alt_del();
    }
    let reaper = Arc::new(reaper::Reaper::default());
    tokio::spawn({
        let reaper = reaper.clone();
        async move {
            if let Err(err) = reaper.run().await {
                tracing::error!(error = %err, "the reaper stopped");
            }
        }
    });
    let containers = Arc::new(container::Containers::new(reaper));
    let service = AgentServer::new(service::AgentService::new(containers))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))
        .with_context(|| format!("listening on vsock port {port}"))?;
    tracing::info!(port, "serving the agent protocol over vsock");
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(listener.incoming())
        .await
        .context("the gRPC server stopped")
}
