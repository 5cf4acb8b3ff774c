//! The host cgroup of a pod's VMM (cgroup v2 only).
//!
//! Every pod VM's `hull-vmm` process runs in its own cgroup below the
//! kubelet's pod cgroup ([`placement`]), sized by the pod's resources, so a
//! pod VM never takes more than its share of the node, the kubelet's
//! pod-level accounting sees it, and an OOM kill takes that VMM only — all of
//! it, thanks to `memory.oom.group`.
//!
//! Lifecycle: [`CgroupRoot::create`] (ancestors, controllers, limits) →
//! [`PodCgroup::place_child`] on the VMM's `Command` → [`PodCgroup::stats`]
//! and [`PodCgroup::memory_events`] while and after it runs →
//! [`PodCgroup::remove`]. After a hulld restart, [`CgroupRoot::open_existing`]
//! takes the path the pod record kept ([`PodCgroup::cgroup_path`]).
//!
//! With the systemd cgroup driver, the pod cgroup is made directly in the
//! cgroup filesystem under the kubelet's slice, named like a scope
//! (`hull-<pod>.scope`), not registered with systemd over D-Bus as runc and
//! CRI-O do. systemd ignores cgroups it did not create, but it does not know
//! this one either: `systemctl status` does not list it, and a
//! `daemon-reload` could in principle rewrite the controllers enabled on the
//! slice. Registering a transient scope (StartTransientUnit with
//! `Delegate=yes`) is the better way and is left for later.
//!
//! All calls are blocking file I/O on cgroupfs (fast, except
//! [`PodCgroup::remove`], which waits for killed processes); async callers
//! use `spawn_blocking` for `remove`.

pub mod files;
pub mod placement;
#[cfg(test)]
mod tests;

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use files::{
    CgroupEvents, CpuStat, MemoryEvents, MemoryStat, cpu_weight_from_shares, working_set,
};
pub use placement::{builtin_default_parent, expand_slice, pod_cgroup_path};

/// Where the unified hierarchy must be mounted.
pub const SYS_FS_CGROUP: &str = "/sys/fs/cgroup";

/// Controllers hulld enables for pod cgroups when the host has them. `io`
/// carries no limit yet; it is enabled for its `io.stat` accounting.
const WANTED_CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "io"];

/// How long [`PodCgroup::remove`] waits for killed processes to go.
pub const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong with a pod cgroup; every variant names the cgroup, file
/// or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "hull needs the unified cgroup v2 hierarchy at {SYS_FS_CGROUP}, but {found}; boot the host with systemd.unified_cgroup_hierarchy=1 (or cgroup_no_v1=all)"
    )]
    NotUnified { found: String },
    #[error("{} is not a cgroup v2 hierarchy (it has no cgroup.controllers)", path.display())]
    NotCgroup2 { path: PathBuf },
    #[error("cgroup parent {parent:?} is not valid for the {driver} cgroup driver: {reason}")]
    InvalidParent {
        parent: String,
        driver: &'static str,
        reason: String,
    },
    #[error("pod id {pod_id:?} cannot name a cgroup: {reason}")]
    InvalidPodId {
        pod_id: String,
        reason: &'static str,
    },
    #[error("{path:?} is not a pod cgroup path: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error(
        "the {controller} controller is not available in {} (it offers: {available}), and the pod's limits need it",
        path.display()
    )]
    ControllerMissing {
        controller: &'static str,
        path: PathBuf,
        available: String,
    },
    #[error("cannot enable the {controller} controller for the children of {}", path.display())]
    EnableController {
        controller: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create cgroup {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {} already holds processes (here: {pids:?}); hulld starts no second VMM in it", path.display())]
    Busy { path: PathBuf, pids: Vec<u32> },
    #[error("cgroup {} does not exist", path.display())]
    NotFound { path: PathBuf },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("cgroup {} still has processes {waited_ms} ms after they were killed", path.display())]
    StillPopulated { path: PathBuf, waited_ms: u128 },
    #[error("cannot remove cgroup {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `cpu.max`: at most `quota_us` of CPU time per `period_us` (both in
/// microseconds; the kernel takes quotas ≥ 1000 and periods 1000..=1000000).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuMax {
    pub quota_us: u64,
    pub period_us: u64,
}

/// The limits of a pod cgroup. `None` is "no limit" (`max`), or the
/// kernel's default for `cpu.weight` (100); every call writes every file,
/// so the struct is the whole truth after [`PodCgroup::set_limits`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    /// `memory.max` in bytes: guest memory plus the VMM's own overhead.
    pub memory_max: Option<u64>,
    /// `memory.high` in bytes: reclaim pressure above this.
    pub memory_high: Option<u64>,
    /// `memory.swap.max` in bytes (`Some(0)`: the VMM never swaps). Skipped
    /// when `None` and the host has no swap accounting.
    pub memory_swap_max: Option<u64>,
    /// `cpu.max`.
    pub cpu_max: Option<CpuMax>,
    /// CRI `cpu_shares`, written as `cpu.weight` ([`cpu_weight_from_shares`]).
    pub cpu_shares: Option<u64>,
    /// `pids.max`: threads of the VMM (one per vCPU, plus its own).
    pub pids_max: Option<u64>,
}

/// One interface file write of [`CgroupLimits`]. `required`: a missing file
/// is an error (the caller asked for this limit); otherwise a file that does
/// not exist (controller or feature absent) is skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitWrite {
    pub file: &'static str,
    pub value: String,
    pub required: bool,
}

impl CgroupLimits {
    /// The controllers these limits cannot do without; `memory` always, for
    /// `memory.oom.group`.
    pub fn required_controllers(&self) -> Vec<&'static str> {
        let mut controllers = vec!["memory"];
        if self.cpu_max.is_some() || self.cpu_shares.is_some() {
            controllers.push("cpu");
        }
        if self.pids_max.is_some() {
            controllers.push("pids");
        }
        controllers
    }

    /// The files to write, in order.
    pub fn writes(&self) -> Vec<LimitWrite> {
        let write = |file, value, required| LimitWrite {
            file,
            value,
            required,
        };
        let weight = self
            .cpu_shares
            .map(cpu_weight_from_shares)
            .filter(|&w| w > 0);
        vec![
            // An OOM kill takes every process of the cgroup, never a part
            // of the VMM: a half-dead VMM is worse than a dead one.
            write("memory.oom.group", "1".to_string(), true),
            write("memory.high", files::limit_value(self.memory_high), true),
            write("memory.max", files::limit_value(self.memory_max), true),
            write(
                "memory.swap.max",
                files::limit_value(self.memory_swap_max),
                self.memory_swap_max.is_some(),
            ),
            write(
                "cpu.max",
                match self.cpu_max {
                    Some(max) => files::cpu_max_line(Some(max.quota_us), max.period_us),
                    None => "max".to_string(),
                },
                self.cpu_max.is_some(),
            ),
            write(
                "cpu.weight",
                weight.unwrap_or(100).to_string(),
                weight.is_some(),
            ),
            write(
                "pids.max",
                files::limit_value(self.pids_max),
                self.pids_max.is_some(),
            ),
        ]
    }
}

/// What a pod cgroup uses, read at `timestamp_ns` (Unix epoch, ns).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupStats {
    pub timestamp_ns: i64,
    pub cpu: CpuStat,
    /// `memory.current`: everything charged, page cache included.
    pub memory_current: u64,
    /// `memory.max`, `None` for no limit.
    pub memory_max: Option<u64>,
    pub memory: MemoryStat,
    /// `memory.current` minus `inactive_file`, as the kubelet counts it.
    pub working_set_bytes: u64,
    pub memory_events: MemoryEvents,
    /// `pids.current`; `None` without the pids controller.
    pub pids_current: Option<u64>,
}

impl CgroupStats {
    /// CPU time used, in nanoseconds (CRI `usage_core_nano_seconds`).
    pub fn cpu_usage_ns(&self) -> u64 {
        self.cpu.usage_usec.saturating_mul(1000)
    }

    /// Anonymous memory, reported as RSS (CRI `rss_bytes`).
    pub fn rss_bytes(&self) -> u64 {
        self.memory.anon
    }

    /// Memory left before the limit, counted from the working set (CRI
    /// `available_bytes`); `None` without a limit.
    pub fn available_bytes(&self) -> Option<u64> {
        self.memory_max
            .map(|max| max.saturating_sub(self.working_set_bytes))
    }
}

/// The cgroup v2 hierarchy hulld creates pod cgroups in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupRoot {
    path: PathBuf,
}

impl CgroupRoot {
    /// The unified hierarchy at `/sys/fs/cgroup`. A hybrid host (cgroup v1
    /// controllers, cgroup2 only at `/sys/fs/cgroup/unified`) or a legacy one
    /// is refused with what was found.
    pub fn detect() -> Result<Self, CgroupError> {
        let mountinfo = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(mountinfo).map_err(|source| CgroupError::Read {
            path: mountinfo.to_path_buf(),
            source,
        })?;
        files::classify_cgroup_mounts(&files::parse_mountinfo(&text), SYS_FS_CGROUP)
            .map_err(|found| CgroupError::NotUnified { found })?;
        Self::at(SYS_FS_CGROUP)
    }

    /// A cgroup v2 hierarchy (or a delegated subtree of one) at `path`; tests
    /// and hosts that mount it elsewhere use this.
    pub fn at(path: impl Into<PathBuf>) -> Result<Self, CgroupError> {
        let path = path.into();
        if !path.join("cgroup.controllers").is_file() {
            return Err(CgroupError::NotCgroup2 { path });
        }
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The controllers the root offers (`cgroup.controllers`).
    pub fn controllers(&self) -> Result<Vec<String>, CgroupError> {
        let text = read(&self.path.join("cgroup.controllers"))?;
        Ok(files::parse_controllers(&text)
            .into_iter()
            .map(str::to_string)
            .collect())
    }

    /// Creates the pod cgroup at `cgroup_path` (from [`pod_cgroup_path`]),
    /// with any missing ancestors, the controllers its limits need enabled
    /// from the root down, and `limits` written. An existing empty cgroup
    /// (left by a RunPodSandbox that died before starting its VMM) is reused;
    /// one that holds processes is [`CgroupError::Busy`].
    pub fn create(
        &self,
        cgroup_path: &str,
        limits: &CgroupLimits,
    ) -> Result<PodCgroup, CgroupError> {
        let (cgroup_path, elements) = self.split(cgroup_path)?;
        let required = limits.required_controllers();
        let mut dir = self.path.clone();
        for element in &elements {
            enable_controllers(&dir, &required)?;
            dir.push(element);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(CgroupError::Create { path: dir, source }),
            }
        }
        let cgroup = PodCgroup { dir, cgroup_path };
        if cgroup.events()?.populated {
            let pids = cgroup.pids()?;
            return Err(CgroupError::Busy {
                path: cgroup.dir,
                pids,
            });
        }
        if let Err(err) = cgroup.set_limits(limits) {
            let _ = fs::remove_dir(&cgroup.dir);
            return Err(err);
        }
        tracing::info!(cgroup = %cgroup.cgroup_path, ?limits, "pod cgroup created");
        Ok(cgroup)
    }

    /// The pod cgroup at `cgroup_path`, kept in a pod record by an earlier
    /// hulld. Nothing is written; [`CgroupError::NotFound`] if it is gone.
    pub fn open_existing(&self, cgroup_path: &str) -> Result<PodCgroup, CgroupError> {
        let (cgroup_path, elements) = self.split(cgroup_path)?;
        let dir = elements
            .iter()
            .fold(self.path.clone(), |dir, element| dir.join(element));
        if !dir.join("cgroup.procs").is_file() {
            return Err(CgroupError::NotFound { path: dir });
        }
        tracing::debug!(cgroup = %cgroup_path, "pod cgroup re-adopted");
        Ok(PodCgroup { dir, cgroup_path })
    }

    /// A pod cgroup path checked and split into its elements.
    fn split(&self, cgroup_path: &str) -> Result<(String, Vec<String>), CgroupError> {
        let normalized =
            placement::cgroupfs_parent(cgroup_path).map_err(|reason| CgroupError::InvalidPath {
                path: cgroup_path.to_string(),
                reason,
            })?;
        if normalized == "/" {
            return Err(CgroupError::InvalidPath {
                path: cgroup_path.to_string(),
                reason: "the root cgroup cannot be a pod cgroup".to_string(),
            });
        }
        let elements = normalized[1..].split('/').map(str::to_string).collect();
        Ok((normalized, elements))
    }
}

/// Enables the wanted controllers that `dir` offers for its children.
/// A required controller that `dir` lacks, or cannot enable, is an error.
fn enable_controllers(dir: &Path, required: &[&'static str]) -> Result<(), CgroupError> {
    let available_text = read(&dir.join("cgroup.controllers"))?;
    let available = files::parse_controllers(&available_text);
    let subtree = dir.join("cgroup.subtree_control");
    let enabled_text = read(&subtree)?;
    let enabled = files::parse_controllers(&enabled_text);
    for controller in WANTED_CONTROLLERS {
        let is_required = required.contains(&controller);
        if enabled.contains(&controller) {
            continue;
        }
        if !available.contains(&controller) {
            if is_required {
                return Err(CgroupError::ControllerMissing {
                    controller,
                    path: dir.to_path_buf(),
                    available: available_text.trim().to_string(),
                });
            }
            tracing::debug!(cgroup = %dir.display(), controller, "controller not offered; skipped");
            continue;
        }
        match write_file(&subtree, &format!("+{controller}")) {
            Ok(()) => {
                tracing::debug!(cgroup = %dir.display(), controller, "controller enabled");
            }
            Err(source) if is_required => {
                return Err(CgroupError::EnableController {
                    controller,
                    path: dir.to_path_buf(),
                    source,
                });
            }
            Err(err) => {
                tracing::warn!(cgroup = %dir.display(), controller, error = %err, "cannot enable an optional controller");
            }
        }
    }
    Ok(())
}

/// A pod's VMM cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    /// The directory in the cgroup filesystem.
    dir: PathBuf,
    /// The path from the cgroup root, `/a/b/hull-<pod>`.
    cgroup_path: String,
}

impl PodCgroup {
    /// The path from the cgroup root (`/kubepods/.../hull-<pod>`): what a pod
    /// record keeps for [`CgroupRoot::open_existing`], and what
    /// `/proc/<pid>/cgroup` shows for its processes.
    pub fn cgroup_path(&self) -> &str {
        &self.cgroup_path
    }

    /// The cgroup's directory in the cgroup filesystem.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes every limit (see [`CgroupLimits`]); also used to resize a
    /// running pod.
    pub fn set_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        for LimitWrite {
            file,
            value,
            required,
        } in limits.writes()
        {
            let path = self.dir.join(file);
            match write_file(&path, &value) {
                Ok(()) => {}
                Err(err) if !required && err.kind() == io::ErrorKind::NotFound => {
                    tracing::debug!(cgroup = %self.cgroup_path, file, "interface file absent; skipped");
                }
                Err(source) => {
                    return Err(CgroupError::Write {
                        path,
                        value,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Makes `command` start its child inside this cgroup: the child moves
    /// itself in after fork and before exec, so the program (the VMM) never
    /// runs a single instruction outside. A failed move fails the spawn with
    /// the kernel's error, and nothing runs.
    ///
    /// For a `tokio::process::Command`, pass `command.as_std_mut()`.
    ///
    /// (`clone3` with `CLONE_INTO_CGROUP` would spare the move, but std's
    /// `Command` cannot be asked to use it.)
    pub fn place_child(&self, command: &mut std::process::Command) -> Result<(), CgroupError> {
        let path = self.dir.join("cgroup.procs");
        // Opened here, in hulld, so the child only has to write(2).
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| CgroupError::Write {
                path: path.clone(),
                value: "0".to_string(),
                source,
            })?;
        // Runs in the forked child: only write(2), no allocation or locks.
        let move_self = move || {
            // "0" moves the writing process: this child.
            // SAFETY: the buffer is a 1-byte static string, and the fd is
            // valid: `procs`, captured by this closure, owns it and lives as
            // long as the closure (the fork copied the descriptor table).
            let written = unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if written == 1 {
                Ok(())
            } else {
                // Reads errno; builds the error without allocating.
                Err(io::Error::last_os_error())
            }
        };
        // SAFETY: `pre_exec` requires a closure that is safe to run in the
        // child of a fork of a possibly multi-threaded process: only
        // async-signal-safe calls, no locks, no allocation. `move_self` calls
        // write(2) only, and its captured `File` is not dropped in the child
        // (the closure is only borrowed there, the child then execs or exits).
        unsafe {
            command.pre_exec(move_self);
        }
        Ok(())
    }

    /// Moves a running process into this cgroup (re-adoption edge cases: a
    /// VMM started before its cgroup existed).
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        let path = self.dir.join("cgroup.procs");
        let value = pid.to_string();
        write_file(&path, &value).map_err(|source| CgroupError::Write {
            path,
            value,
            source,
        })?;
        tracing::debug!(cgroup = %self.cgroup_path, pid, "process moved into the pod cgroup");
        Ok(())
    }

    /// The processes in this cgroup (not in descendants).
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let path = self.dir.join("cgroup.procs");
        let text = read(&path)?;
        files::parse_procs(&text).map_err(|reason| CgroupError::Parse { path, reason })
    }

    /// `cgroup.events`: whether processes remain here or below.
    pub fn events(&self) -> Result<CgroupEvents, CgroupError> {
        self.parse_file("cgroup.events", CgroupEvents::parse)
    }

    /// `memory.events`: whether, and how often, an OOM killer struck. Read
    /// it when the VMM vanishes, before [`remove`](Self::remove).
    pub fn memory_events(&self) -> Result<MemoryEvents, CgroupError> {
        self.parse_file("memory.events", MemoryEvents::parse)
    }

    /// CPU, memory and pids figures, as the kubelet's pod stats want them.
    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let timestamp_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
            });
        let cpu = self.parse_file("cpu.stat", CpuStat::parse)?;
        let memory_current = self.parse_file("memory.current", parse_number)?;
        let memory = self.parse_file("memory.stat", MemoryStat::parse)?;
        let memory_max = self.parse_file("memory.max", parse_limit)?;
        let memory_events = self.memory_events()?;
        let pids_current = match self.parse_file("pids.current", parse_number) {
            Ok(current) => Some(current),
            Err(CgroupError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                None
            }
            Err(err) => return Err(err),
        };
        Ok(CgroupStats {
            timestamp_ns,
            cpu,
            memory_current,
            memory_max,
            working_set_bytes: working_set(memory_current, &memory),
            memory,
            memory_events,
            pids_current,
        })
    }

    /// Kills whatever runs in the cgroup, waits up to [`REMOVE_TIMEOUT`] for
    /// it to go, and removes the cgroup (and any child cgroups). A cgroup
    /// that is already gone is success, so this is safe to repeat.
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.remove_within(REMOVE_TIMEOUT)
    }

    /// [`remove`](Self::remove) with its own deadline.
    pub fn remove_within(&self, timeout: Duration) -> Result<(), CgroupError> {
        let started = Instant::now();
        let deadline = started + timeout;
        if !self.dir.exists() {
            return Ok(());
        }
        match self.kill_all(started, deadline, true) {
            Err(CgroupError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(());
            }
            other => other?,
        }
        remove_tree(&self.dir, deadline)?;
        tracing::info!(cgroup = %self.cgroup_path, "pod cgroup removed");
        Ok(())
    }

    /// SIGKILLs every process in the cgroup and its descendants, and waits
    /// until `cgroup.events` says `populated 0`. `use_kill_file: false`
    /// forces the path for kernels older than 5.14 (for tests).
    fn kill_all(
        &self,
        started: Instant,
        deadline: Instant,
        use_kill_file: bool,
    ) -> Result<(), CgroupError> {
        if !self.events()?.populated {
            return Ok(());
        }
        // cgroup.kill (Linux ≥ 5.14) kills the whole subtree at once, with
        // no pid reuse race and no fork escaping.
        let kill_file = self.dir.join("cgroup.kill");
        let written = if use_kill_file {
            write_file(&kill_file, "1")
        } else {
            Err(io::ErrorKind::NotFound.into())
        };
        let by_kill_file = match written {
            Ok(()) => true,
            Err(err) if err.kind() == io::ErrorKind::NotFound => false,
            Err(source) => {
                return Err(CgroupError::Write {
                    path: kill_file,
                    value: "1".to_string(),
                    source,
                });
            }
        };
        if !by_kill_file {
            // Older kernels: freeze first (Linux ≥ 5.2) so that processes
            // stop forking and exiting (which could free a pid for reuse)
            // between reading cgroup.procs and the kill; SIGKILL still ends
            // frozen tasks, and the loop repeats until none is left.
            let _ = write_file(&self.dir.join("cgroup.freeze"), "1");
        }
        tracing::info!(cgroup = %self.cgroup_path, by_kill_file, "killing the processes left in the pod cgroup");
        let mut pause = Duration::from_millis(1);
        loop {
            if !by_kill_file {
                self.signal_all()?;
            }
            if !self.events()?.populated {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::StillPopulated {
                    path: self.dir.clone(),
                    waited_ms: started.elapsed().as_millis(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// SIGKILL to every process of this cgroup and its descendants.
    fn signal_all(&self) -> Result<(), CgroupError> {
        let mut dirs = vec![self.dir.clone()];
        while let Some(dir) = dirs.pop() {
            let path = dir.join("cgroup.procs");
            let text = read(&path)?;
            let pids =
                files::parse_procs(&text).map_err(|reason| CgroupError::Parse { path, reason })?;
            for pid in pids {
                let Ok(pid) = libc::pid_t::try_from(pid) else {
                    continue;
                };
                // SAFETY: kill(2) takes two integers and reads or writes no
                // memory of this process, so no Rust invariant is at stake.
                // (Which process it reaches: one read from cgroup.procs of a
                // cgroup being frozen, so it can hardly have exited and had
                // its pid reused since; cgroup.kill, where the kernel has
                // it, has no such window at all.)
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            dirs.extend(child_cgroups(&dir)?);
        }
        Ok(())
    }

    fn parse_file<T>(
        &self,
        file: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, CgroupError> {
        let path = self.dir.join(file);
        let text = read(&path)?;
        parse(&text).map_err(|reason| CgroupError::Parse { path, reason })
    }
}

/// Removes `dir` and every cgroup below it, deepest first. A cgroup that is
/// busy for a moment after its last process died is retried until
/// `deadline`.
fn remove_tree(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    let children = match child_cgroups(dir) {
        Ok(children) => children,
        Err(CgroupError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(());
        }
        Err(err) => return Err(err),
    };
    for child in children {
        remove_tree(&child, deadline)?;
    }
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// The cgroups directly below `dir` (its subdirectories).
fn child_cgroups(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let entries = fs::read_dir(dir).map_err(|source| CgroupError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut children = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            children.push(entry.path());
        }
    }
    Ok(children)
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// One write(2) of `value`: cgroup files take a whole value per write.
fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut file = fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(value.as_bytes())
}

fn parse_number(text: &str) -> Result<u64, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{:?} is not an unsigned number", text.trim()))
}

/// A limit file: a number, or `max` for none.
fn parse_limit(text: &str) -> Result<Option<u64>, String> {
    match text.trim() {
        "max" => Ok(None),
        _ => parse_number(text).map(Some),
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn limits_become_these_file_writes() {
        let limits = CgroupLimits {
            memory_max: Some(320 << 20),
            memory_high: None,
            memory_swap_max: Some(0),
            cpu_max: Some(CpuMax {
                quota_us: 150_000,
                period_us: 100_000,
            }),
            cpu_shares: Some(1536),
            pids_max: Some(64),
        };
        let writes: Vec<(&str, String, bool)> = limits
            .writes()
            .into_iter()
            .map(|w| (w.file, w.value, w.required))
            .collect();
        let expected = [
            ("memory.oom.group", "1", true),
            ("memory.high", "max", true),
            ("memory.max", "335544320", true),
            ("memory.swap.max", "0", true),
            ("cpu.max", "150000 100000", true),
            ("cpu.weight", "138", true),
            ("pids.max", "64", true),
        ]
        .map(|(file, value, required)| (file, value.to_string(), required));
        assert_eq!(writes, expected);
        assert_eq!(limits.required_controllers(), vec!["memory", "cpu", "pids"]);
    }

    #[test]
    fn no_limits_reset_every_file_and_need_only_memory() {
        let limits = CgroupLimits::default();
        let writes = limits.writes();
        let find = |file| writes.iter().find(|w| w.file == file).unwrap();
        assert_eq!(find("memory.max").value, "max");
        assert!(find("memory.max").required);
        assert_eq!(find("cpu.max").value, "max");
        assert!(!find("cpu.max").required);
        assert_eq!(find("cpu.weight").value, "100");
        assert_eq!(find("pids.max").value, "max");
        assert!(!find("memory.swap.max").required);
        assert_eq!(limits.required_controllers(), vec!["memory"]);
        // Shares of 0 are "unset" in the CRI: default weight, not required.
        let zero = CgroupLimits {
            cpu_shares: Some(0),
            ..Default::default()
        };
        let writes = zero.writes();
        let weight = writes.iter().find(|w| w.file == "cpu.weight").unwrap();
        assert_eq!((weight.value.as_str(), weight.required), ("100", false));
    }

    #[test]
    fn limit_and_number_files() {
        assert_eq!(parse_limit("max\n"), Ok(None));
        assert_eq!(parse_limit("16777216\n"), Ok(Some(16 << 20)));
        assert!(parse_limit("lots\n").unwrap_err().contains("lots"));
        assert_eq!(parse_number("42\n"), Ok(42));
    }

    #[test]
    fn stats_derived_figures() {
        let stats = CgroupStats {
            cpu: CpuStat {
                usage_usec: 1500,
                ..Default::default()
            },
            memory_current: 100,
            memory_max: Some(160),
            working_set_bytes: 90,
            memory: MemoryStat {
                anon: 70,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(stats.cpu_usage_ns(), 1_500_000);
        assert_eq!(stats.rss_bytes(), 70);
        assert_eq!(stats.available_bytes(), Some(70));
        let unlimited = CgroupStats {
            memory_max: None,
            ..stats
        };
        assert_eq!(unlimited.available_bytes(), None);
    }

    #[test]
    fn a_root_without_cgroup_files_is_not_cgroup2() {
        let dir = tempfile::tempdir().unwrap();
        let err = CgroupRoot::at(dir.path()).unwrap_err();
        assert!(matches!(err, CgroupError::NotCgroup2 { .. }), "{err}");
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }

    #[test]
    fn pod_cgroup_paths_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        let root = CgroupRoot::at(dir.path()).unwrap();
        for bad in ["relative/x", "/a/../b", "/", ""] {
            let err = root.open_existing(bad).unwrap_err();
            assert!(
                matches!(err, CgroupError::InvalidPath { .. }),
                "{bad}: {err}"
            );
        }
        let err = root.open_existing("/hull/hull-gone").unwrap_err();
        assert!(matches!(err, CgroupError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("hull-gone"), "{err}");
    }
}
