//! `cargo xtask node`: a working hull node on this machine, a demo pod run
//! through its CRI socket, and the node left running for crictl and friends;
//! `cargo xtask node --stop` ends it. See `docs/node.md`.
//!
//! - Where this host's KVM boots standard guests, hulld runs here, in the
//!   background. Otherwise it runs inside a detached test VM
//!   (`docs/testvm.md`) whose CRI socket is forwarded to the same path on
//!   the host.
//! - A local registry (Debian's `docker-registry`) serves 127.0.0.1:5000,
//!   started here unless something already answers there, holding
//!   `127.0.0.1:5000/busybox:latest`. hulld pulls under that same reference:
//!   inside the test VM, 127.0.0.1:5000 leads to the host's port.
//! - Everything the node writes on the host lives in `<cache>/node/`
//!   (`~/.cache/hull/node`): the registry's config, storage and log, hulld's
//!   config and log (natively), pid files, and the demo pod's log folder.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::cache::cache_root;
use crate::testvm::detach::{self, UnixForward};
use crate::testvm::{RunOptions, host_check};
use crate::util::{cargo, run, workspace_root};
use crate::{deps, initramfs, kernel};

/// The CRI socket, where the kubelet and crictl look for it.
const SOCKET: &str = "/run/hull/hull.sock";
/// The local registry's port on 127.0.0.1.
const REGISTRY_PORT: u16 = 5000;
/// hulld's streaming server (exec, attach, port-forward) on 127.0.0.1, the
/// same port on the host and, for a node in the test VM, inside it.
const STREAM_PORT: u16 = 10210;
/// The demo image, as the node and the host both name it.
const DEMO_IMAGE: &str = "busybox:latest";
/// The detached test VM's name.
const INSTANCE: &str = "hull-node";
/// How long hulld may take to serve its socket.
const SERVE_DEADLINE: Duration = Duration::from_secs(120);

/// `cargo xtask node` arguments.
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Stop the node (and the registry, if `node` started it).
    #[arg(long)]
    stop: bool,
    /// Test VM memory in MiB, when the node runs in the test VM.
    #[arg(long, default_value_t = 4096)]
    memory: u32,
}

/// Entry point of `cargo xtask node`.
pub fn run_cli(args: NodeArgs) -> Result<()> {
    if args.stop {
        return stop();
    }
    deps::install()?;
    let node_dir = node_dir();
    std::fs::create_dir_all(node_dir.join("logs"))?;
    let kernel = kernel::build()?;
    let initramfs = initramfs::build(false)?;
    crate::util::build_release_runtime()?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "hull-integration",
        "--bin",
        "hull-node-demo",
    ]))?;
    let release = crate::testvm::target_dir().join("release");
    let demo = release.join("hull-node-demo");

    ensure_registry(&node_dir)?;
    run(Command::new(&demo).args([
        "push-busybox",
        &format!("127.0.0.1:{REGISTRY_PORT}"),
        DEMO_IMAGE,
    ]))?;

    let cni_dir = node_dir.join("net.d");
    std::fs::create_dir_all(&cni_dir)?;
    std::fs::write(cni_dir.join("10-hull-node.conflist"), NODE_NETWORK)?;
    let config = node_dir.join("hulld.toml");
    std::fs::write(
        &config,
        hulld_config(
            &kernel.vmlinux,
            &initramfs,
            &release.join("hull-vmm"),
            &cni_dir,
        ),
    )?;
    let hulld = release.join("hulld");
    let native = host_check::check().is_usable();
    let log_hint = if native {
        start_native(&hulld, &config, &node_dir)?
    } else {
        start_in_test_vm(&hulld, &config, args.memory)?
    };
    wait_until_serving(&demo, &log_hint)?;

    println!("\nhull node up; running a demo pod through {SOCKET}:\n");
    run(Command::new(&demo).args([
        "run",
        SOCKET,
        &format!("127.0.0.1:{REGISTRY_PORT}/{DEMO_IMAGE}"),
        &node_dir.join("logs").display().to_string(),
    ]))
    .with_context(|| format!("the demo pod failed; hulld's log: {log_hint}"))?;
    print_usage(&log_hint);
    Ok(())
}

/// `<cache>/node`.
fn node_dir() -> PathBuf {
    cache_root().join("node")
}

/// The node's pod network: Debian's bridge plugin on `hull0` with
/// host-local addresses (leases on /run's tmpfs) and portmap for hostPorts.
const NODE_NETWORK: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "hull-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "hull0",
      "isGateway": true,
      "ipMasq": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.89.0.0/24"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "/run/hull/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
"#;

/// hulld's config for the node. State and pod folders keep their defaults
/// (inside the test VM those are on its tmpfs and vanish with it).
fn hulld_config(vmlinux: &Path, initramfs: &Path, vmm: &Path, cni_dir: &Path) -> String {
    format!(
        "# Written by `cargo xtask node`.\n\
         socket_path = {SOCKET:?}\n\n\
         [vm]\n\
         kernel = {:?}\n\
         initramfs = {:?}\n\
         vmm_binary = {:?}\n\
         # Pod VMs boot under nested emulation here: allow for it.\n\
         start_timeout_secs = 120\n\
         scratch_disk_mib = 2048\n\n\
         [cni]\n\
         conf_dir = {:?}\n\n\
         [stream]\n\
         address = \"127.0.0.1\"\n\
         port = {STREAM_PORT}\n",
        vmlinux.display().to_string(),
        initramfs.display().to_string(),
        vmm.display().to_string(),
        cni_dir.display().to_string(),
    )
}

/// Starts `docker-registry` on 127.0.0.1:5000 unless a registry answers
/// there already (then it is used as it is, and never stopped by us).
fn ensure_registry(node_dir: &Path) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, REGISTRY_PORT));
    if registry_answers(addr) {
        eprintln!("xtask: using the registry that already serves {addr}");
        return Ok(());
    }
    if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
        bail!("{addr} is taken by something that is not a registry (no /v2/ answer)");
    }
    let dir = node_dir.join("registry");
    std::fs::create_dir_all(dir.join("storage"))?;
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.join("storage").display()
        ),
    )?;
    let log = std::fs::File::create(dir.join("registry.log"))?;
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Outlives this command; a Ctrl-C here leaves it alone.
        .process_group(0)
        .spawn()
        .context("cannot start /usr/bin/docker-registry (Debian's docker-registry)")?;
    std::fs::write(dir.join("registry.pid"), child.id().to_string())?;
    let started = Instant::now();
    while !registry_answers(addr) {
        if started.elapsed() > Duration::from_secs(20) {
            bail!(
                "docker-registry did not answer on {addr}; see {}",
                dir.join("registry.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "xtask: started docker-registry on {addr} (pid {})",
        child.id()
    );
    Ok(())
}

/// Whether `GET /v2/` at `addr` answers like a registry.
fn registry_answers(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.")
        && answer
            .to_ascii_lowercase()
            .contains("docker-distribution-api-version")
}

/// Runs hulld here in the background; returns where its log is.
fn start_native(hulld: &Path, config: &Path, node_dir: &Path) -> Result<String> {
    let pid_file = node_dir.join("hulld.pid");
    if let Some(pid) = detach::live_pid(&pid_file, "hulld") {
        eprintln!("xtask: hulld already runs (pid {pid})");
        return Ok(node_dir.join("hulld.log").display().to_string());
    }
    let log = std::fs::File::create(node_dir.join("hulld.log"))?;
    let child = Command::new(hulld)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", hulld.display()))?;
    std::fs::write(&pid_file, child.id().to_string())?;
    eprintln!("xtask: hulld started on this host (pid {})", child.id());
    Ok(node_dir.join("hulld.log").display().to_string())
}

/// Runs hulld in the detached test VM `hull-node`; returns where its log is.
fn start_in_test_vm(hulld: &Path, config: &Path, memory_mib: u32) -> Result<String> {
    let instance = detach::instance_dir(INSTANCE);
    let log = instance.join("stderr.log").display().to_string();
    if detach::live_pid(&instance.join("qemu.pid"), "qemu-system").is_some() {
        eprintln!("xtask: the node's test VM already runs; {SOCKET} is forwarded into it");
        return Ok(log);
    }
    let command = vec![
        hulld.display().to_string(),
        "--config".to_string(),
        config.display().to_string(),
    ];
    let options = RunOptions {
        memory_mib,
        ..RunOptions::default()
    };
    let forward = UnixForward {
        host: SOCKET.into(),
        guest: SOCKET.into(),
    };
    detach::start(
        INSTANCE,
        &command,
        &options,
        &[forward],
        &[REGISTRY_PORT],
        &[STREAM_PORT],
    )?;
    Ok(log)
}

/// Waits until hulld answers CRI calls on `socket` (through the test VM,
/// the host end of the socket answers before hulld inside does).
fn wait_until_serving(demo: &Path, log_hint: &str) -> Result<()> {
    run(Command::new(demo).args(["wait", SOCKET, &SERVE_DEADLINE.as_secs().to_string()]))
        .with_context(|| format!("hulld does not serve {SOCKET}; its log: {log_hint}"))
}

fn print_usage(log_hint: &str) {
    let root = workspace_root();
    println!(
        "\nThe node keeps running. Point a CRI client at it:\n\n  \
         crictl --runtime-endpoint unix://{SOCKET} --image-endpoint unix://{SOCKET} ps -a\n  \
         kubelet --container-runtime-endpoint=unix://{SOCKET} ...\n\n\
         Exec, attach and port-forward URLs point at 127.0.0.1:{STREAM_PORT}, reachable from this host:\n  \
         crictl --runtime-endpoint unix://{SOCKET} exec -it CONTAINER sh\n  \
         crictl --runtime-endpoint unix://{SOCKET} port-forward POD 8080:80\n\n\
         Images: push to 127.0.0.1:{REGISTRY_PORT} on this host and pull them under that same name\n\
         (127.0.0.1:{REGISTRY_PORT}/{DEMO_IMAGE} is there already).\n\
         hulld's log: {log_hint}\n\
         Stop it with: cd {} && cargo xtask node --stop",
        root.display()
    );
}

/// Ends the node: hulld (native) or its test VM, and the registry if `node`
/// started it. Succeeds when nothing runs.
fn stop() -> Result<()> {
    let node_dir = node_dir();
    let mut stopped = false;
    if let Some(pid) = detach::live_pid(&node_dir.join("hulld.pid"), "hulld") {
        detach::terminate(pid, Duration::from_secs(10))?;
        eprintln!("xtask: stopped hulld (pid {pid})");
        stopped = true;
    }
    let _ = std::fs::remove_file(node_dir.join("hulld.pid"));
    let instance = detach::instance_dir(INSTANCE);
    if instance.exists() {
        // Also ends host proxies a VM that died by itself left behind.
        stopped |= detach::live_pid(&instance.join("qemu.pid"), "qemu-system").is_some();
        detach::stop(INSTANCE)?;
    }
    let registry_pid = node_dir.join("registry").join("registry.pid");
    if let Some(pid) = detach::live_pid(&registry_pid, "docker-registry") {
        detach::terminate(pid, Duration::from_secs(5))?;
        eprintln!("xtask: stopped docker-registry (pid {pid})");
        stopped = true;
    }
    let _ = std::fs::remove_file(registry_pid);
    if !stopped {
        eprintln!("xtask: no node was running");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hulld_config_is_valid_toml_naming_the_files() {
        let text = hulld_config(
            Path::new("/c/kernel/vmlinux"),
            Path::new("/t/initramfs.cpio"),
            Path::new("/t/release/hull-vmm"),
            Path::new("/c/node/net.d"),
        );
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(value["cni"]["conf_dir"].as_str(), Some("/c/node/net.d"));
        assert_eq!(value["socket_path"].as_str(), Some(SOCKET));
        assert_eq!(value["vm"]["kernel"].as_str(), Some("/c/kernel/vmlinux"));
        assert_eq!(
            value["vm"]["vmm_binary"].as_str(),
            Some("/t/release/hull-vmm")
        );
    }

    #[test]
    fn the_node_network_is_a_cni_list_with_bridge_and_portmap() {
        let list: serde_json::Value = serde_json::from_str(NODE_NETWORK).unwrap();
        let types: Vec<&str> = list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["bridge", "portmap"]);
    }

    #[test]
    fn a_closed_port_is_not_a_registry() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        assert!(!registry_answers(addr));
    }
}
