//! One pod's microVM: its files, the `hull-vmm` process, the agent
//! connection, how it is stopped and how its end is explained.
//!
//! The VMM is started detached (its own session) so that it outlives hulld;
//! hulld finds it again from the pod record (pid + start time, paths).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use hull_proto::client::{AgentAddress, AgentClient};
use hull_proto::v1 as agent;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use vm_runtime::control::{ControlClient, ControlRequest, StopKind};
use vm_runtime::exit_record::{ExitReason, ExitRecord};
use vm_runtime::vmm::config::{DriveConfig, NetConfig, TapSource, VmConfig, VsockConfig};

use crate::vm_config::{VmSettings, VmShape};

/// The guest's vsock context id (each VM has its own vsock device, so every
/// guest can use the same one).
const GUEST_CID: u32 = 3;
/// The scratch disk's drive id (also its virtio serial in the guest).
pub const SCRATCH_DRIVE: &str = "scratch";
/// The id of the pod VM's network device (the virtio-net device for the CNI
/// interface).
pub const POD_NIC: &str = "eth0";
/// The oldest agent protocol (v1 minor) hulld drives: host mounts need
/// ReadFile and RemoveFile (minor 2), ExecSync sends only the args of an
/// exec and relies on the rest coming from the container (minor 3).
const MIN_AGENT_PROTOCOL: u32 = 4;
/// How long a pod's agent may take to answer one request on the stop path.
const STOP_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a pod VM could not be started, reached or stopped.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot create {path}")]
    Files {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make the scratch disk {path}: {message}")]
    ScratchDisk { path: PathBuf, message: String },
    #[error("cannot start the VMM {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the pod VM ended while starting: {reason}{console}")]
    EndedAtStart { reason: String, console: String },
    #[error("the pod VM's agent did not answer within {timeout:?} (VMM pid {pid}){console}")]
    AgentTimeout {
        timeout: Duration,
        pid: u32,
        console: String,
    },
    #[error("the pod VM's agent speaks protocol v1.{got}, hulld needs v1.{need} or newer")]
    AgentTooOld { got: u32, need: u32 },
    #[error("VMM control request failed ({what})")]
    Control {
        what: &'static str,
        #[source]
        source: vm_runtime::control::ControlClientError,
    },
}

/// Where one pod's files are. State that must survive a hulld restart goes
/// under the state dir; sockets under the (tmpfs) run dir, with a short name
/// because unix socket paths are limited to 107 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPaths {
    pub state: PathBuf,
    pub run: PathBuf,
}

impl PodPaths {
    pub fn new(pods_dir: &Path, run_dir: &Path, pod_id: &str) -> Self {
        let short = &pod_id[..pod_id.len().min(16)];
        Self {
            state: pods_dir.join(pod_id),
            run: run_dir.join(short),
        }
    }
    pub fn scratch_disk(&self) -> PathBuf {
        self.state.join("scratch.img")
    }
    pub fn console_log(&self) -> PathBuf {
        self.state.join("console.log")
    }
    pub fn vmm_log(&self) -> PathBuf {
        self.state.join("vmm.log")
    }
    pub fn exit_record(&self) -> PathBuf {
        self.state.join("exit.json")
    }
    pub fn vm_config(&self) -> PathBuf {
        self.state.join("vm.json")
    }
    /// Where the container's output stands in its log file (see
    /// [`crate::pod::logs::OutputCursor`]).
    pub fn output_offsets(&self, container_id: &str) -> PathBuf {
        self.state.join(format!("output-{container_id}.offsets"))
    }
    pub fn pid_file(&self) -> PathBuf {
        self.run.join("vmm.pid")
    }
    pub fn api_socket(&self) -> PathBuf {
        self.run.join("vmm.sock")
    }
    pub fn vsock_socket(&self) -> PathBuf {
        self.run.join("vsock.sock")
    }
    pub fn agent_address(&self) -> AgentAddress {
        AgentAddress::HybridVsock {
            socket: self.vsock_socket(),
            port: hull_proto::DEFAULT_AGENT_PORT,
        }
    }
}

/// The drive ids of a pod's empty image slots: `slot1`, `slot2`, ...
pub fn slot_ids(count: u8) -> Vec<String> {
    (1..=count).map(|n| format!("slot{n}")).collect()
}

/// A running VMM process, identified by pid and start time so that a
/// recycled pid is never mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmProcess {
    pub pid: u32,
    /// `/proc/<pid>/stat` field 22 (clock ticks since boot).
    pub start_time: u64,
}

impl VmmProcess {
    /// The process if `pid` runs now.
    pub fn find(pid: u32) -> Option<Self> {
        process_start_time(pid).map(|start_time| Self { pid, start_time })
    }

    /// Whether this very process still exists (a zombie counts as gone).
    pub fn is_alive(&self) -> bool {
        match process_stat(self.pid) {
            // Z: zombie, X: dead (being reaped).
            Some((state, start)) => start == self.start_time && state != 'Z' && state != 'X',
            None => false,
        }
    }

    /// Resolves when the process has ended. Uses a pidfd, so it works for
    /// VMMs started by an earlier hulld too.
    pub async fn exited(&self) {
        let Some(pidfd) = pidfd_open(self.pid) else {
            return;
        };
        // The pid may have been recycled between the caller's check and
        // pidfd_open: compare start times once the fd pins the process.
        if process_start_time(self.pid) != Some(self.start_time) {
            return;
        }
        // SAFETY: `pidfd` is an OwnedFd moved into the AsyncFd: it stays open
        // and is the same descriptor for the AsyncFd's whole life.
        let registered = unsafe { AsyncFd::register(pidfd) };
        let Ok(fd) = registered else {
            // Cannot watch: fall back to polling.
            while self.is_alive() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            return;
        };
        // A pidfd becomes readable when the process exits.
        let _ = fd.readable().await;
    }

    /// Sends SIGKILL if this is still the same process.
    pub fn kill(&self) {
        if process_start_time(self.pid) == Some(self.start_time) {
            // SAFETY: kill(2) takes plain integers; the pid was just checked
            // to be the VMM (same start time), so no other process is hit.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// A process's state letter and start time, from one read of
/// `/proc/<pid>/stat`; `None` when there is no such process.
fn process_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // after it start behind the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    // `rest` starts at field 3 (state); the start time is field 22.
    let state = rest.chars().next()?;
    let start_time = rest.split(' ').nth(19)?.parse().ok()?;
    Some((state, start_time))
}

fn process_start_time(pid: u32) -> Option<u64> {
    process_stat(pid).map(|(_, start_time)| start_time)
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a fresh file descriptor that nothing
    // else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A VM that booted and whose agent answered.
pub struct StartedVm {
    pub process: VmmProcess,
    pub agent: AgentClient,
    /// Milliseconds from the VMM's start to the agent's first answer.
    pub boot_ms: u64,
}

/// Creates the pod's files, starts its VMM and waits for its agent.
/// `place` puts the VMM in the pod's cgroup before it runs (see
/// `cgroup::PodCgroup::place_child`).
pub async fn launch(
    paths: &PodPaths,
    settings: &VmSettings,
    shape: &VmShape,
    nic: Option<PodNic>,
    place: impl FnOnce(&mut std::process::Command) -> std::io::Result<()>,
) -> Result<StartedVm, VmError> {
    for dir in [&paths.state, &paths.run] {
        create_private_dir(dir)?;
    }
    make_scratch_disk(&paths.scratch_disk(), settings.scratch_disk_mib).await?;
    let config = vm_config(paths, settings, shape, nic.as_ref().map(|n| n.mac.as_str()));
    let config_json = serde_json::to_vec_pretty(&config).expect("VM config serializes");
    crate::store::atomic::write_atomic(&paths.vm_config(), &config_json).map_err(|source| {
        VmError::Files {
            path: paths.vm_config(),
            source,
        }
    })?;
    // A record or socket left by an earlier VM of this pod would mislead.
    for stale in [
        paths.exit_record(),
        paths.api_socket(),
        paths.vsock_socket(),
    ] {
        let _ = std::fs::remove_file(stale);
    }

    let started = Instant::now();
    let binary = settings.vmm_binary();
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.vmm_log())
        .map_err(|source| VmError::Files {
            path: paths.vmm_log(),
            source,
        })?;
    let mut command = std::process::Command::new(&binary);
    command
        .arg("--api-sock")
        .arg(paths.api_socket())
        .arg("--exit-record")
        .arg(paths.exit_record())
        .arg("--console-log")
        .arg(paths.console_log())
        .arg("--pid-file")
        .arg(paths.pid_file())
        .arg("--config-file")
        .arg(paths.vm_config())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    if let Some(nic) = &nic {
        pass_tap(&mut command, nic);
    }
    place(&mut command).map_err(|source| VmError::Spawn {
        binary: binary.clone(),
        source,
    })?;
    let mut child = command.spawn().map_err(|source| VmError::Spawn {
        binary: binary.clone(),
        source,
    })?;
    let pid = child.id();
    // hulld reaps its own VMMs; a VMM started by an earlier hulld is reaped
    // by init. The thread ends when the VMM does.
    std::thread::Builder::new()
        .name(format!("reap-vmm-{pid}"))
        .spawn(move || {
            let _ = child.wait();
        })
        .map_err(|source| VmError::Spawn {
            binary: binary.clone(),
            source,
        })?;
    let process = VmmProcess::find(pid).unwrap_or(VmmProcess { pid, start_time: 0 });

    let timeout = Duration::from_secs(settings.start_timeout_secs);
    let agent = match wait_for_agent(paths, &process, started, timeout).await {
        Ok(agent) => agent,
        Err(err) => {
            process.kill();
            return Err(err);
        }
    };
    Ok(StartedVm {
        process,
        agent,
        boot_ms: started.elapsed().as_millis() as u64,
    })
}

/// The pod's network device: a tap opened in the pod's network namespace,
/// and the MAC of the CNI interface it stands in for.
pub struct PodNic {
    pub tap: OwnedFd,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

/// The descriptor number the tap gets in the VMM (`--pass-fd`).
const TAP_FD_IN_VMM: RawFd = 3;

/// Hands the tap to the VMM as its descriptor 3.
fn pass_tap(command: &mut std::process::Command, nic: &PodNic) {
    use std::os::unix::process::CommandExt;
    let tap = nic.tap.as_raw_fd();
    command.arg("--pass-fd").arg(TAP_FD_IN_VMM.to_string());
    // SAFETY: the closure runs in the forked child before exec and calls
    // only dup2 and fcntl, which are async-signal-safe; `tap` stays open in
    // the parent (owned by `nic`) until spawn returns, so it is open in the
    // child. dup2 onto 3 clears close-on-exec of the copy; when the tap is
    // already 3, its flag is cleared by hand.
    unsafe {
        command.pre_exec(move || {
            if tap == TAP_FD_IN_VMM {
                if libc::fcntl(tap, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(tap, TAP_FD_IN_VMM) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The VMM's boot configuration for this pod.
pub fn vm_config(
    paths: &PodPaths,
    settings: &VmSettings,
    shape: &VmShape,
    nic_mac: Option<&str>,
) -> VmConfig {
    let mut drives = vec![DriveConfig {
        id: SCRATCH_DRIVE.to_string(),
        path: Some(paths.scratch_disk()),
        read_only: false,
    }];
    drives.extend(
        slot_ids(settings.drive_slots)
            .into_iter()
            .map(|id| DriveConfig {
                id,
                path: None,
                read_only: true,
            }),
    );
    VmConfig {
        kernel: shape.kernel.clone(),
        initramfs: Some(settings.initramfs.clone()),
        cmdline_extra: settings.kernel_cmdline_extra.clone(),
        vcpus: shape.vcpus,
        memory_mib: shape.memory_mib,
        drives,
        vsock: Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: paths.vsock_socket(),
        }),
        net: nic_mac
            .map(|mac| NetConfig {
                id: POD_NIC.to_string(),
                tap: TapSource::PassedFd(0),
                mac: Some(mac.to_string()),
            })
            .into_iter()
            .collect(),
        rng: true,
    }
}

fn create_private_dir(dir: &Path) -> Result<(), VmError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| VmError::Files {
            path: dir.to_path_buf(),
            source,
        })
}

/// A sparse file holding an empty ext4 filesystem. Lazy inode-table and
/// journal initialisation keep it fast and sparse: only metadata blocks are
/// written.
async fn make_scratch_disk(path: &Path, size_mib: u64) -> Result<(), VmError> {
    let file = std::fs::File::create(path).map_err(|source| VmError::Files {
        path: path.to_path_buf(),
        source,
    })?;
    file.set_len(size_mib << 20)
        .map_err(|source| VmError::Files {
            path: path.to_path_buf(),
            source,
        })?;
    drop(file);
    let output = tokio::process::Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
            "-L",
            "hull-scratch",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|err| VmError::ScratchDisk {
            path: path.to_path_buf(),
            message: format!("cannot run mke2fs (e2fsprogs): {err}"),
        })?;
    if !output.status.success() {
        return Err(VmError::ScratchDisk {
            path: path.to_path_buf(),
            message: format!(
                "mke2fs failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// Connects to the agent until it answers Health, the VMM ends, or
/// `timeout` has passed since `started`.
async fn wait_for_agent(
    paths: &PodPaths,
    process: &VmmProcess,
    started: Instant,
    timeout: Duration,
) -> Result<AgentClient, VmError> {
    let deadline = started + timeout;
    let address = paths.agent_address();
    loop {
        if !process.is_alive() {
            return Err(VmError::EndedAtStart {
                reason: describe_end(&read_end(paths, process, false)).1,
                console: console_tail(paths),
            });
        }
        if paths.vsock_socket().exists()
            && let Ok(mut client) =
                hull_proto::client::connect(&address, Duration::from_secs(1)).await
            && let Ok(health) = client.health(agent::HealthRequest {}).await
        {
            let health = health.into_inner();
            if health.protocol_version < MIN_AGENT_PROTOCOL {
                return Err(VmError::AgentTooOld {
                    got: health.protocol_version,
                    need: MIN_AGENT_PROTOCOL,
                });
            }
            tracing::debug!(
                pid = process.pid,
                agent_version = health.agent_version,
                guest_uptime_s = health.uptime_seconds,
                "pod VM agent answered"
            );
            return Ok(client);
        }
        if Instant::now() >= deadline {
            return Err(VmError::AgentTimeout {
                timeout,
                pid: process.pid,
                console: console_tail(paths),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reconnects to the agent of a VM started earlier (after a hulld restart).
pub async fn reconnect(paths: &PodPaths) -> Result<AgentClient, VmError> {
    let mut client = hull_proto::client::connect(&paths.agent_address(), Duration::from_secs(3))
        .await
        .map_err(|err| VmError::EndedAtStart {
            reason: format!("cannot reach the agent again: {err}"),
            console: String::new(),
        })?;
    client
        .health(agent::HealthRequest {})
        .await
        .map_err(|status| VmError::EndedAtStart {
            reason: format!("the agent does not answer: {}", status.message()),
            console: String::new(),
        })?;
    Ok(client)
}

/// Sets or empties a drive slot's backing file.
pub async fn set_drive(
    paths: &PodPaths,
    slot: &str,
    image: Option<PathBuf>,
) -> Result<(), VmError> {
    let socket = paths.api_socket();
    let request = ControlRequest::SetDrive {
        id: slot.to_string(),
        path: image,
    };
    tokio::task::spawn_blocking(move || {
        let mut client = ControlClient::connect(&socket)?;
        client.request(&request).map(|_| ())
    })
    .await
    .expect("set_drive task does not panic")
    .map_err(|source| VmError::Control {
        what: "set_drive",
        source,
    })
}

/// Ends the VM: the agent is asked to shut the guest down; if the VM is
/// still there after `grace`, the VMM is told to stop at once, and as a last
/// resort it is killed. Returns when the VMM process is gone.
pub async fn shut_down(
    paths: &PodPaths,
    process: &VmmProcess,
    agent: Option<&mut AgentClient>,
    grace: Duration,
) {
    if !process.is_alive() {
        return;
    }
    if let Some(agent) = agent {
        let asked = tokio::time::timeout(
            STOP_REQUEST_TIMEOUT,
            agent.shutdown(agent::ShutdownRequest { reboot: true }),
        )
        .await;
        if matches!(asked, Ok(Ok(_))) && tokio::time::timeout(grace, process.exited()).await.is_ok()
        {
            return;
        }
    }
    let socket = paths.api_socket();
    let forced = tokio::task::spawn_blocking(move || {
        let mut client = ControlClient::connect(&socket)?;
        client.request(&ControlRequest::Stop {
            mode: StopKind::Forced,
            timeout_ms: None,
        })
    })
    .await;
    if matches!(forced, Ok(Ok(_)))
        && tokio::time::timeout(Duration::from_secs(3), process.exited())
            .await
            .is_ok()
    {
        return;
    }
    tracing::warn!(
        pid = process.pid,
        "pod VMM did not stop when asked; killing it"
    );
    process.kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), process.exited()).await;
}

/// How a pod VM ended, as far as hulld can tell.
#[derive(Clone, Debug, PartialEq)]
pub enum VmEnd {
    /// The VMM wrote an exit record.
    Recorded(ExitRecord),
    /// The VMM is gone without a record: killed (SIGKILL), crashed,
    /// or OOM-killed (`oom_killed`, from the pod cgroup's memory.events).
    Vanished { pid: u32, oom_killed: bool },
}

/// Reads how the VM ended; `oom_killed` is what the pod cgroup says.
pub fn read_end(paths: &PodPaths, process: &VmmProcess, oom_killed: bool) -> VmEnd {
    match ExitRecord::read(&paths.exit_record()) {
        Ok(record) if record.pid == process.pid => VmEnd::Recorded(record),
        _ => VmEnd::Vanished {
            pid: process.pid,
            oom_killed,
        },
    }
}

/// A CamelCase reason and a message for the containers of a pod whose VM
/// ended under them.
pub fn describe_end(end: &VmEnd) -> (&'static str, String) {
    match end {
        VmEnd::Recorded(record) => match &record.reason {
            ExitReason::GuestPanic { message } => (
                "PodVMKernelPanic",
                format!("the pod VM's guest kernel panicked: {message}"),
            ),
            ExitReason::TripleFault => (
                "PodVMCrashed",
                "the pod VM's guest triple-faulted (a guest kernel crash)".to_string(),
            ),
            ExitReason::GuestReboot | ExitReason::GuestPoweroff => (
                "PodVMShutDown",
                "the pod VM's guest shut itself down".to_string(),
            ),
            ExitReason::Stopped { .. } => ("PodVMStopped", "the pod VM was stopped".to_string()),
            ExitReason::VmmError { message } => (
                "PodVMError",
                format!("the pod VM's monitor failed: {message}"),
            ),
            ExitReason::SeccompViolation { syscall, thread } => (
                "PodVMError",
                format!(
                    "the pod VM's monitor was stopped by its own seccomp filter: its {} thread made system call {syscall}, which that thread may not make (a hull-vmm bug; please report it with the VMM log)",
                    thread.name()
                ),
            ),
        },
        VmEnd::Vanished {
            pid,
            oom_killed: true,
        } => (
            "PodVMOOMKilled",
            format!(
                "the pod VM's monitor (pid {pid}) was killed by the host's OOM killer: the pod's host cgroup ran out of memory"
            ),
        ),
        VmEnd::Vanished { pid, .. } => (
            "PodVMKilled",
            format!("the pod VM's monitor (pid {pid}) ended without an exit record (killed)"),
        ),
    }
}

/// The last lines of the guest console, for error messages.
pub fn console_tail(paths: &PodPaths) -> String {
    let Ok(text) = std::fs::read(paths.console_log()) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(8)..];
    if tail.is_empty() {
        return String::new();
    }
    format!("; last console lines:\n{}", tail.join("\n"))
}

/// Removes the pod's files (after its VM is gone).
pub fn remove_files(paths: &PodPaths) -> std::io::Result<()> {
    for dir in [&paths.run, &paths.state] {
        match std::fs::remove_dir_all(dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_fit_in_a_sockaddr() {
        let id = "a".repeat(64);
        let paths = PodPaths::new(
            Path::new("/var/lib/hull/pods"),
            Path::new("/run/hull/pods"),
            &id,
        );
        let longest = format!("{}_{}", paths.vsock_socket().display(), u32::MAX);
        assert!(longest.len() < 108, "{longest}");
        assert!(paths.state.ends_with(&id));
    }

    #[test]
    fn own_process_is_found_alive_with_its_start_time() {
        let me = VmmProcess::find(std::process::id()).expect("self");
        assert!(me.start_time > 0);
        assert!(me.is_alive());
        let recycled = VmmProcess {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(
            !recycled.is_alive(),
            "a different start time is another process"
        );
    }

    #[tokio::test]
    async fn exited_resolves_when_the_process_ends() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let process = VmmProcess::find(child.id()).unwrap();
        let waiter = tokio::spawn(async move { process.exited().await });
        let _ = child.wait();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("pidfd fires")
            .unwrap();
        assert!(!process.is_alive());
    }

    #[test]
    fn ends_are_described_for_the_kubelet() {
        let record = |reason| ExitRecord {
            reason,
            pid: 7,
            unix_time_ms: 0,
            vmm_uptime_ms: 0,
            guest_uptime_ms: None,
            panic_line: None,
            boot_timeline_us: Default::default(),
        };
        let (reason, message) = describe_end(&VmEnd::Recorded(record(ExitReason::GuestPanic {
            message: "Kernel panic - not syncing: sysrq triggered crash".into(),
        })));
        assert_eq!(reason, "PodVMKernelPanic");
        assert!(message.contains("sysrq triggered crash"));
        let (reason, message) =
            describe_end(&VmEnd::Recorded(record(ExitReason::SeccompViolation {
                syscall: 41,
                thread: vm_runtime::seccomp::ThreadKind::Devices,
            })));
        assert_eq!(reason, "PodVMError");
        assert!(
            message.contains("seccomp filter")
                && message.contains("devices thread made system call 41"),
            "{message}"
        );
        let (reason, message) = describe_end(&VmEnd::Vanished {
            pid: 42,
            oom_killed: true,
        });
        assert_eq!(reason, "PodVMOOMKilled");
        assert!(message.contains("42"));
        assert_eq!(
            describe_end(&VmEnd::Vanished {
                pid: 42,
                oom_killed: false
            })
            .0,
            "PodVMKilled"
        );
    }

    #[test]
    fn vm_config_declares_scratch_and_empty_slots() {
        let paths = PodPaths::new(Path::new("/s"), Path::new("/r"), "abc");
        let settings = VmSettings::default();
        let shape = VmShape::for_pod(&settings, None, None);
        let config = vm_config(&paths, &settings, &shape, None);
        assert_eq!(config.drives.len(), 1 + settings.drive_slots as usize);
        assert_eq!(config.drives[0].id, SCRATCH_DRIVE);
        assert!(!config.drives[0].read_only);
        assert!(
            config.drives[1..]
                .iter()
                .all(|d| d.read_only && d.path.is_none())
        );
        assert_eq!(config.drives[1].id, "slot1");
        assert_eq!(
            config.vsock.unwrap().uds_path,
            Path::new("/r/abc/vsock.sock")
        );
        assert!(config.net.is_empty());

        // With a network: one virtio-net on the passed tap, the CNI MAC.
        let config = vm_config(&paths, &settings, &shape, Some("0a:58:0a:58:00:05"));
        assert_eq!(
            config.net,
            vec![NetConfig {
                id: POD_NIC.into(),
                tap: TapSource::PassedFd(0),
                mac: Some("0a:58:0a:58:00:05".into()),
            }]
        );
    }

    #[tokio::test]
    async fn scratch_disk_is_sparse_ext4() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scratch.img");
        make_scratch_disk(&path, 1024).await.unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < 64 << 20,
            "sparse: {} blocks",
            meta.blocks()
        );
        let mut superblock = [0u8; 2048];
        use std::io::Read;
        std::fs::File::open(&path)
            .unwrap()
            .read_exact(&mut superblock)
            .unwrap();
        assert_eq!(
            superblock[1024 + 0x38..1024 + 0x3a],
            [0x53, 0xef],
            "ext4 superblock magic"
        );
    }
}
