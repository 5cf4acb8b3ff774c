//! The dev node: a test VM left running in the background, with host unix
//! sockets forwarded to unix sockets inside it.
//!
//! `cargo xtask vm-run --detach [--name N] [--forward-unix HOST=GUEST]...
//! [--host-port PORT]... -- CMD` boots the VM with QEMU `-daemonize`, starts
//! CMD inside, starts the host halves of the forwards (see [`super::proxy`]),
//! makes each host loopback PORT reachable at 127.0.0.1:PORT inside, waits
//! until the VM is ready and prints the instance folder:
//!
//! ```text
//! <cache>/testvm/instances/<name>/
//!   qemu.pid  proxy.pids  forwards  job.sh
//!   stdout.log  stderr.log  control  console.log  proxy.log
//! ```
//!
//! `cargo xtask vm-stop [--name N]` ends QEMU and the proxies (by the pids
//! recorded there, after checking that each pid is still the process it was).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::foreground::ControlEvent;
use super::qemu::{self, GUEST_IP, HOST_SERVICES_IP, PortSink, TcpForward, VmSpec};
use super::{
    RunOptions, host_check, initramfs, job_environment, job_script, shell_quote, writable_shares,
};
use crate::cache::cache_root;
use crate::deps;

/// First guest TCP port used by the guest halves of forwards.
const FIRST_GUEST_PORT: u16 = 7000;
/// How long the VM may take to report `ready`.
const READY_DEADLINE: Duration = Duration::from_secs(180);

/// A host unix socket forwarded to a guest unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixForward {
    pub host: PathBuf,
    pub guest: PathBuf,
}

impl UnixForward {
    /// Parses `HOST_PATH=GUEST_PATH`.
    pub fn parse(spec: &str) -> Result<UnixForward> {
        let (host, guest) = spec
            .split_once('=')
            .with_context(|| format!("--forward-unix {spec:?}: expected HOST_PATH=GUEST_PATH"))?;
        let forward = UnixForward {
            host: PathBuf::from(host),
            guest: PathBuf::from(guest),
        };
        if !forward.host.is_absolute() || !forward.guest.is_absolute() {
            bail!("--forward-unix {spec:?}: both paths must be absolute");
        }
        Ok(forward)
    }
}

/// `cargo xtask vm-stop` / `vm-status` arguments.
#[derive(Args, Debug)]
pub struct InstanceArgs {
    /// Name of the detached VM.
    #[arg(long, default_value = "dev")]
    name: String,
}

/// The folder of the detached VM called `name`.
pub fn instance_dir(name: &str) -> PathBuf {
    cache_root().join("testvm").join("instances").join(name)
}

/// Starts the detached VM and returns its instance folder once it is ready.
pub fn start(
    name: &str,
    command: &[String],
    options: &RunOptions,
    forwards: &[UnixForward],
    host_ports: &[u16],
    loopback_ports: &[u16],
) -> Result<PathBuf> {
    if name.is_empty() || name.contains(['/', '.']) {
        bail!("--name {name:?}: use letters, digits, dashes");
    }
    let support = host_check::check();
    if support.is_usable() && !options.force_vm {
        bail!(
            "this host's KVM is usable, so the dev node needs no test VM: run the command directly (or pass --force-vm)"
        );
    }
    deps::install()?;
    let dir = instance_dir(name);
    if let Some(pid) = live_pid(&dir.join("qemu.pid"), "qemu-system") {
        bail!(
            "test VM {name:?} is already running (QEMU pid {pid}); stop it with `cargo xtask vm-stop --name {name}`"
        );
    }
    stop_proxies(&dir);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;

    let xtask = std::env::current_exe().context("cannot find the xtask binary")?;
    let mut tcp_forwards = Vec::new();
    let mut prelude = Vec::new();
    for (index, forward) in forwards.iter().enumerate() {
        let guest_port = FIRST_GUEST_PORT + u16::try_from(index)?;
        tcp_forwards.push(TcpForward {
            host_port: free_local_port()?,
            guest_port,
        });
        if let Some(parent) = forward.guest.parent() {
            prelude.push(format!(
                "mkdir -p {}",
                shell_quote(&parent.to_string_lossy())
            ));
        }
        prelude.push(format!(
            "{} testvm-proxy --listen-tcp 0.0.0.0:{guest_port} --connect-unix {} &",
            shell_quote(&xtask.to_string_lossy()),
            shell_quote(&forward.guest.to_string_lossy())
        ));
    }
    // A server on the guest's loopback port P answers on the host's
    // loopback port P: QEMU forwards host 127.0.0.1:P to the guest's address
    // (not its loopback), where a proxy relays to 127.0.0.1:P. URLs naming
    // 127.0.0.1:P then work on both sides (hulld's streaming server).
    for &port in loopback_ports {
        tcp_forwards.push(TcpForward {
            host_port: port,
            guest_port: port,
        });
        prelude.push(format!(
            "{} testvm-proxy --listen-tcp {GUEST_IP}:{port} --connect-tcp 127.0.0.1:{port} &",
            shell_quote(&xtask.to_string_lossy())
        ));
    }
    for port in host_ports {
        prelude.push(format!(
            "{} testvm-proxy --listen-tcp 127.0.0.1:{port} --connect-tcp {HOST_SERVICES_IP}:{port} &",
            shell_quote(&xtask.to_string_lossy())
        ));
    }
    let cwd = std::env::current_dir()?;
    let job = dir.join("job.sh");
    std::fs::write(
        &job,
        job_script(command, &cwd, &job_environment(), &prelude),
    )?;

    let control = dir.join("control");
    let console_log = dir.join("console.log");
    let spec = VmSpec {
        boot: initramfs::prepare()?,
        memory_mib: options.memory_mib,
        cpus: options.cpus,
        job,
        shares: writable_shares(&options.extra_shares)?,
        tmpfs: options.tmpfs.clone(),
        stdout: PortSink::File(dir.join("stdout.log")),
        stderr: PortSink::File(dir.join("stderr.log")),
        control: PortSink::File(control.clone()),
        console_log: console_log.clone(),
        forwards: tcp_forwards.clone(),
        host_ports: host_ports.to_vec(),
        host_port_proxy: format!("{} testvm-proxy --stdio --connect-tcp", xtask.display()),
        daemonize_pidfile: Some(dir.join("qemu.pid")),
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let args = qemu::qemu_args(&spec, qemu::host_tsc_khz(&cpuinfo))?;
    let started = Instant::now();
    let status = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .status()
        .context("cannot start qemu-system-x86_64")?;
    if !status.success() {
        bail!("qemu-system-x86_64 -daemonize failed: {status}");
    }

    let proxy_log = std::fs::File::create(dir.join("proxy.log"))?;
    let mut proxy_pids = Vec::new();
    let mut forwards_text = String::new();
    for (forward, tcp) in forwards.iter().zip(&tcp_forwards) {
        let child = Command::new(&xtask)
            .arg("testvm-proxy")
            .arg("--listen-unix")
            .arg(&forward.host)
            .arg("--connect-tcp")
            .arg(format!("127.0.0.1:{}", tcp.host_port))
            .stdin(Stdio::null())
            .stdout(proxy_log.try_clone()?)
            .stderr(proxy_log.try_clone()?)
            // Its own process group: a Ctrl-C in this terminal leaves it alone.
            .process_group(0)
            .spawn()
            .context("cannot start the host side of a forward")?;
        proxy_pids.push(child.id().to_string());
        forwards_text.push_str(&format!(
            "{} -> 127.0.0.1:{} -> guest:{} -> {}\n",
            forward.host.display(),
            tcp.host_port,
            tcp.guest_port,
            forward.guest.display()
        ));
    }
    std::fs::write(dir.join("proxy.pids"), proxy_pids.join("\n"))?;
    std::fs::write(dir.join("forwards"), forwards_text)?;

    loop {
        let text = std::fs::read_to_string(&control).unwrap_or_default();
        let events: Vec<ControlEvent> = text.lines().filter_map(ControlEvent::parse).collect();
        if let Some(ControlEvent::Ready(uptime)) =
            events.iter().find(|e| matches!(e, ControlEvent::Ready(_)))
        {
            eprintln!(
                "xtask: test VM {name:?} ready in {:.1} s (guest uptime {uptime:.1} s); logs in {}",
                started.elapsed().as_secs_f64(),
                dir.display()
            );
            return Ok(dir);
        }
        if let Some(event) = events.last() {
            stop(name)?;
            bail!(
                "test VM {name:?} failed to start: {event:?}; see {}",
                console_log.display()
            );
        }
        if live_pid(&dir.join("qemu.pid"), "qemu-system").is_none() {
            stop(name)?;
            bail!(
                "test VM {name:?} exited while booting; see {}",
                console_log.display()
            );
        }
        if started.elapsed() > READY_DEADLINE {
            stop(name)?;
            bail!(
                "test VM {name:?} not ready after {READY_DEADLINE:?}; see {}",
                console_log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `cargo xtask vm-stop`: ends the VM and its proxies.
pub fn stop_cli(args: InstanceArgs) -> Result<()> {
    stop(&args.name)
}

/// Ends the detached VM `name` (SIGTERM, then SIGKILL after 10 s) and its
/// host proxies, and removes the forwarded host sockets. Logs stay.
pub fn stop(name: &str) -> Result<()> {
    let dir = instance_dir(name);
    if !dir.exists() {
        bail!(
            "no test VM called {name:?} ({} does not exist)",
            dir.display()
        );
    }
    if let Some(pid) = live_pid(&dir.join("qemu.pid"), "qemu-system") {
        terminate(pid, Duration::from_secs(10))?;
        eprintln!("xtask: stopped test VM {name:?} (QEMU pid {pid})");
    }
    stop_proxies(&dir);
    let _ = std::fs::remove_file(dir.join("qemu.pid"));
    Ok(())
}

/// `cargo xtask vm-status`: prints the state; fails when the VM is not running.
pub fn status_cli(args: InstanceArgs) -> Result<()> {
    let dir = instance_dir(&args.name);
    let forwards = std::fs::read_to_string(dir.join("forwards")).unwrap_or_default();
    let control = std::fs::read_to_string(dir.join("control")).unwrap_or_default();
    match live_pid(&dir.join("qemu.pid"), "qemu-system") {
        Some(pid) => {
            println!("running: QEMU pid {pid}, folder {}", dir.display());
            print!("{forwards}");
            Ok(())
        }
        None => {
            let exit = control
                .lines()
                .filter_map(ControlEvent::parse)
                .find_map(|e| match e {
                    ControlEvent::Exit(code) => Some(format!(" (command exited with {code})")),
                    _ => None,
                })
                .unwrap_or_default();
            bail!(
                "test VM {:?} is not running{exit}; folder {}",
                args.name,
                dir.display()
            )
        }
    }
}

fn stop_proxies(dir: &Path) {
    let pids = std::fs::read_to_string(dir.join("proxy.pids")).unwrap_or_default();
    for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if process_matches(pid, "testvm-proxy") {
            let _ = terminate(pid, Duration::from_secs(2));
        }
    }
    let _ = std::fs::remove_file(dir.join("proxy.pids"));
    let forwards = std::fs::read_to_string(dir.join("forwards")).unwrap_or_default();
    for line in forwards.lines() {
        if let Some(host) = line.split(" -> ").next() {
            let path = Path::new(host);
            if path.is_absolute() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// The pid in `pid_file` if that process is alive and its command line
/// contains `expect` (so a recycled pid is never signalled).
/// The pid in `pid_file` if that process still runs and its command line
/// contains `expect` (a recycled pid is not taken for it).
pub(crate) fn live_pid(pid_file: &Path, expect: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    process_matches(pid, expect).then_some(pid)
}

fn process_matches(pid: i32, expect: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(expect))
        .unwrap_or(false)
}

/// SIGTERM, then SIGKILL after `grace`.
pub(crate) fn terminate(pid: i32, grace: Duration) -> Result<()> {
    let target = Pid::from_raw(pid);
    kill(target, Signal::SIGTERM).with_context(|| format!("cannot signal pid {pid}"))?;
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(target, Signal::SIGKILL).with_context(|| format!("cannot kill pid {pid}"))?;
    Ok(())
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

fn free_local_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_specs() {
        assert_eq!(
            UnixForward::parse("/run/hull/hull.sock=/run/hull/hull.sock").unwrap(),
            UnixForward {
                host: "/run/hull/hull.sock".into(),
                guest: "/run/hull/hull.sock".into()
            }
        );
        assert!(UnixForward::parse("/a").is_err());
        assert!(UnixForward::parse("a=/b").is_err());
    }

    #[test]
    fn own_process_matches_and_zombie_check() {
        let me = std::process::id() as i32;
        assert!(process_matches(me, "xtask"));
        assert!(!process_matches(me, "qemu-system-no-such"));
        assert!(!is_zombie(me));
    }
}
