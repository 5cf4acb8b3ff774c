//! The pod's containers and their processes, created with youki's
//! libcontainer.
//!
//! Operations that call libcontainer run synchronously on the agent's only
//! runtime thread (see `reaper`): they fork, and forking while other
//! threads run Rust code is unsound, and the reaper must not run while
//! libcontainer waits for its own children.

mod create;
mod exec;
mod lifecycle;
mod oom;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use hull_proto::v1;
use tokio::sync::{broadcast, watch};

use crate::reaper::Reaper;
use crate::stats::{self, StatsError};
use crate::stdio::{ProcessStdio, StdioError};
use crate::storage::StorageError;
use crate::user::UserError;

/// libcontainer's state directory (one folder per container).
pub const STATE_ROOT: &str = "/run/hull/state";
/// Bundles (config.json) and rootfs mount points, one folder per container.
pub const BUNDLES: &str = "/run/hull/containers";
/// The pod cgroup, below the cgroup2 root; containers are its children.
pub const POD_CGROUP: &str = "/pod";
/// Where the cgroup2 tree is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A container request failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("process {exec_id} does not exist in container {container_id}")]
    ExecNotFound {
        container_id: String,
        exec_id: String,
    },
    #[error("container {0} already exists")]
    AlreadyExists(String),
    #[error("exec id {exec_id} is already used in container {container_id}")]
    ExecExists {
        container_id: String,
        exec_id: String,
    },
    #[error("container {id} is {state}; cannot {action} it")]
    BadState {
        id: String,
        state: &'static str,
        action: &'static str,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("libcontainer could not {action} container {id}")]
    Runtime {
        action: &'static str,
        id: String,
        #[source]
        source: Box<libcontainer::error::LibcontainerError>,
    },
    #[error("cannot {action} for container {id}")]
    Io {
        action: &'static str,
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot change the cgroup of container {id}: {detail}")]
    Cgroup { id: String, detail: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error(transparent)]
    Stats(#[from] StatsError),
}

/// A process the agent started in a container: the init or an exec.
pub struct Process {
    pub pid: i32,
    pub stdio: ProcessStdio,
    exit: watch::Receiver<Option<v1::ExitStatus>>,
}

impl Process {
    /// The exit status, once the process has been reaped.
    pub fn exit(&self) -> Option<v1::ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits until the process has exited.
    pub async fn wait(&self) -> v1::ExitStatus {
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(status) => status.expect("waited for Some"),
            // The sender lives in the exit task until it has sent.
            Err(_) => self.exit().unwrap_or_default(),
        }
    }
}

struct ContainerEntry {
    container: libcontainer::container::Container,
    init: Arc<Process>,
    execs: HashMap<String, Arc<Process>>,
    bundle: PathBuf,
    rootfs: PathBuf,
    cgroup_dir: PathBuf,
    created_at: i64,
    started_at: i64,
}

impl ContainerEntry {
    fn state(&self) -> v1::ContainerState {
        if self.init.exit().is_some() {
            v1::ContainerState::Stopped
        } else if self.started_at > 0 {
            v1::ContainerState::Running
        } else {
            v1::ContainerState::Created
        }
    }

    fn state_name(&self) -> &'static str {
        match self.state() {
            v1::ContainerState::Created => "created",
            v1::ContainerState::Running => "running",
            _ => "stopped",
        }
    }
}

/// Every container of the pod.
pub struct Containers {
    entries: Mutex<HashMap<String, ContainerEntry>>,
    reaper: Arc<Reaper>,
    events: broadcast::Sender<v1::Event>,
}

impl Containers {
    pub fn new(reaper: Arc<Reaper>) -> Self {
        let (events, _) = broadcast::channel(256);
        Self {
            entries: Mutex::new(HashMap::new()),
            reaper,
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, ContainerEntry>> {
        self.entries.lock().expect("container table lock poisoned")
    }

    /// Lifecycle events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<v1::Event> {
        self.events.subscribe()
    }

    /// Starts tracking `pid`'s exit; the returned receiver gets its status.
    /// With `cgroup_dir` (container init), OOM kills in the container's
    /// cgroup are reported as events while it runs (see [`oom`]) and with
    /// the exit. Must be called before returning to
    /// the runtime after the process was created.
    fn track_exit(
        &self,
        container_id: &str,
        exec_id: &str,
        pid: i32,
        cgroup_dir: Option<PathBuf>,
    ) -> watch::Receiver<Option<v1::ExitStatus>> {
        let reaped = self.reaper.watch(pid);
        let (tx, rx) = watch::channel(None);
        let events = self.events.clone();
        let oom = cgroup_dir.map(|dir| {
            let count = oom::OomCount::new(container_id, &dir);
            oom::spawn_watcher(Arc::clone(&count), events.clone(), rx.clone());
            count
        });
        let container_id = container_id.to_owned();
        let exec_id = exec_id.to_owned();
        tokio::spawn(async move {
            let Ok(exit) = reaped.await else {
                tracing::error!(%container_id, %exec_id, pid, "exit watcher dropped before the exit");
                return;
            };
            let oom_killed = oom.as_ref().is_some_and(|count| {
                count.report_new(&events);
                count.any()
            });
            let status = v1::ExitStatus {
                exit_code: exit.exit_code(),
                signal: exit.signal(),
                oom_killed,
                exited_at_unix_nanos: stats::now_unix_nanos(),
            };
            tracing::info!(%container_id, %exec_id, pid, exit_code = status.exit_code, oom_killed, "process exited");
            let _ = events.send(v1::Event {
                timestamp_unix_nanos: status.exited_at_unix_nanos,
                kind: Some(v1::event::Kind::ProcessExited(v1::ProcessExited {
                    container_id,
                    exec_id,
                    status: Some(status),
                })),
            });
            let _ = tx.send(Some(status));
        });
        rx
    }

    /// The init (empty `exec_id`) or an exec'd process.
    pub fn process(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> Result<Arc<Process>, ContainerError> {
        let entries = self.lock();
        let entry = entries
            .get(container_id)
            .ok_or_else(|| ContainerError::NotFound(container_id.to_owned()))?;
        if exec_id.is_empty() {
            return Ok(entry.init.clone());
        }
        entry
            .execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ContainerError::ExecNotFound {
                container_id: container_id.to_owned(),
                exec_id: exec_id.to_owned(),
            })
    }

    /// Drops an exec process whose exit was reported (its output stream, if
    /// still read, keeps what it holds).
    pub fn forget_exec(&self, container_id: &str, exec_id: &str) {
        if let Some(entry) = self.lock().get_mut(container_id) {
            entry.execs.remove(exec_id);
        }
    }

    /// The container's state.
    pub fn status(
        &self,
        container_id: &str,
    ) -> Result<v1::ContainerStatusResponse, ContainerError> {
        let entries = self.lock();
        let entry = entries
            .get(container_id)
            .ok_or_else(|| ContainerError::NotFound(container_id.to_owned()))?;
        Ok(v1::ContainerStatusResponse {
            state: entry.state() as i32,
            pid: u32::try_from(entry.init.pid).unwrap_or(0),
            created_at_unix_nanos: entry.created_at,
            started_at_unix_nanos: entry.started_at,
            exit: entry.init.exit(),
        })
    }

    /// Resource usage of one container.
    pub fn stats(&self, container_id: &str) -> Result<v1::CgroupStats, ContainerError> {
        let dir = self
            .lock()
            .get(container_id)
            .map(|e| e.cgroup_dir.clone())
            .ok_or_else(|| ContainerError::NotFound(container_id.to_owned()))?;
        Ok(stats::read_cgroup(&dir)?)
    }

    /// Resource usage of the pod cgroup, the VM and every container.
    pub fn sandbox_stats(&self) -> Result<v1::SandboxStatsResponse, ContainerError> {
        let pod_dir = Path::new(CGROUP_ROOT).join(POD_CGROUP.trim_start_matches('/'));
        let pod = pod_dir
            .is_dir()
            .then(|| stats::read_cgroup(&pod_dir))
            .transpose()?;
        let (total, available) =
            stats::meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default());
        let dirs: Vec<(String, PathBuf)> = self
            .lock()
            .iter()
            .map(|(id, e)| (id.clone(), e.cgroup_dir.clone()))
            .collect();
        let containers = dirs
            .into_iter()
            .filter_map(|(id, dir)| stats::read_cgroup(&dir).ok().map(|s| (id, s)))
            .collect();
        Ok(v1::SandboxStatsResponse {
            pod,
            vm_memory_total_bytes: total,
            vm_memory_available_bytes: available,
            containers,
        })
    }
}
