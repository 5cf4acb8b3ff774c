//! The pods whose VM runs now, as hulld drives them: the agent connection,
//! the VMM process, the host cgroup, and per-container tasks (log pump,
//! exit waiter, host-mount sync).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use hull_proto::client::AgentClient;
use tokio::task::JoinHandle;

use crate::pod::cgroup::PodCgroup;
use crate::pod::host_mounts::SyncHandle;
use crate::pod::logs::LogPump;
use crate::pod::vm::{PodPaths, VmmProcess};

/// One running pod VM.
pub struct LivePod {
    pub id: String,
    pub paths: PodPaths,
    pub process: VmmProcess,
    /// A tonic client multiplexes calls over one HTTP/2 connection: clone it
    /// per call.
    pub agent: AgentClient,
    pub cgroup: Option<PodCgroup>,
    /// Serialises changes to the pod's drive slots and containers.
    pub lock: tokio::sync::Mutex<()>,
    /// Set when hulld itself ends the VM (StopPodSandbox), so that the exit
    /// watcher does not report it as a failure.
    pub stopping: AtomicBool,
    containers: Mutex<HashMap<String, LiveContainer>>,
}

/// The container's output as its log pump receives it, for attach
/// sessions. The pump's stream holds the only strong sender: subscribers see
/// the channel close when the container's output ends.
pub type OutputTee = tokio::sync::broadcast::WeakSender<Arc<hull_proto::v1::OutputChunk>>;

/// Tasks hulld runs for one container of a live pod.
#[derive(Default)]
pub struct LiveContainer {
    pub log: Option<Arc<LogPump>>,
    pub output_tee: Option<OutputTee>,
    pub waiter: Option<JoinHandle<()>>,
    pub mount_sync: Option<SyncHandle>,
}

impl Drop for LiveContainer {
    fn drop(&mut self) {
        if let Some(task) = self.waiter.take() {
            task.abort();
        }
    }
}

impl LivePod {
    pub fn new(
        id: String,
        paths: PodPaths,
        process: VmmProcess,
        agent: AgentClient,
        cgroup: Option<PodCgroup>,
    ) -> Self {
        Self {
            id,
            paths,
            process,
            agent,
            cgroup,
            lock: tokio::sync::Mutex::new(()),
            stopping: AtomicBool::new(false),
            containers: Mutex::new(HashMap::new()),
        }
    }

    pub fn agent(&self) -> AgentClient {
        self.agent.clone()
    }

    pub fn mark_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Runs `f` on the container's task set (created if missing).
    pub fn with_container<T>(&self, id: &str, f: impl FnOnce(&mut LiveContainer) -> T) -> T {
        let mut containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        f(containers.entry(id.to_string()).or_default())
    }

    /// The container's log pump, if its output is being written.
    pub fn log_pump(&self, id: &str) -> Option<Arc<LogPump>> {
        let containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        containers.get(id).and_then(|c| c.log.clone())
    }

    /// Forgets a container (its tasks are aborted).
    pub fn drop_container(&self, id: &str) {
        let removed = self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        drop(removed);
    }

    /// Forgets every container (their tasks are aborted).
    pub fn drop_all_containers(&self) {
        drop(self.take_all_containers());
    }

    /// Takes every container's tasks out of the pod.
    pub fn take_all_containers(&self) -> Vec<LiveContainer> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, c)| c)
            .collect()
    }
}

/// Live pods by sandbox id.
#[derive(Default)]
pub struct PodTable {
    pods: Mutex<HashMap<String, Arc<LivePod>>>,
}

impl PodTable {
    pub fn get(&self, id: &str) -> Option<Arc<LivePod>> {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    pub fn insert(&self, pod: Arc<LivePod>) {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pod.id.clone(), pod);
    }

    pub fn remove(&self, id: &str) -> Option<Arc<LivePod>> {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }

    pub fn all(&self) -> Vec<Arc<LivePod>> {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
