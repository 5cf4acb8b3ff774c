//! The pod sandbox record: what the kubelet asked for (never changes) and
//! where the sandbox is in its lifecycle (changes through `update`).

use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};

use super::Record;

/// A pod sandbox as hulld keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub metadata: SandboxMetadata,
    pub status: SandboxStatus,
}

/// Fixed at RunPodSandbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxMetadata {
    pub id: String,
    /// The PodSandboxConfig exactly as the kubelet sent it.
    pub config: cri::PodSandboxConfig,
    /// The RuntimeClass handler that selected the VM profile.
    pub runtime_handler: String,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_at: i64,
}

/// Changes over the sandbox's life.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SandboxStatus {
    pub state: SandboxState,
    /// The pod's primary IP, once its network is set up.
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub additional_ips: Vec<String>,
    /// The pod's VM while it has one (set once the VMM is started).
    #[serde(default)]
    pub vm: Option<PodVmRecord>,
    /// The pod's host cgroup directory, once created.
    #[serde(default)]
    pub cgroup: Option<std::path::PathBuf>,
    /// The pod's network, from the moment its namespace is about to be made.
    #[serde(default)]
    pub network: Option<PodNetworkRecord>,
    /// Why the sandbox is not ready (CamelCase), when its VM ended under it.
    #[serde(default)]
    pub reason: String,
    /// Detail of `reason`.
    #[serde(default)]
    pub message: String,
}

/// What hulld keeps of a pod's network in the sandbox record.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PodNetworkRecord {
    /// The pod's network namespace (a bind mount in `cni.netns_dir`).
    pub netns: std::path::PathBuf,
    /// The CNI ADD result, once ADD succeeded (DEL passes it back).
    #[serde(default)]
    pub result: Option<crate::network::cni::CniResult>,
    /// CNI DEL succeeded: later stops do not call it again.
    #[serde(default)]
    pub deleted: bool,
    /// The last CNI CHECK (hulld runs one when it takes the pod back after
    /// a restart); PodSandboxStatus shows it in its verbose info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<NetworkCheckRecord>,
}

/// What a CNI CHECK of the pod's network found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkCheckRecord {
    /// When it ran, milliseconds since the Unix epoch.
    pub unix_time_ms: u64,
    /// `passed`, `skipped` or `failed`.
    pub outcome: CheckResult,
    /// Why it was skipped or what failed (the plugin's error).
    #[serde(default)]
    pub detail: String,
}

/// The outcome of a CNI CHECK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckResult {
    Passed,
    Skipped,
    Failed,
}

/// What hulld needs to find and drive a pod's VM again after a restart.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodVmRecord {
    pub paths: crate::pod::vm::PodPaths,
    pub process: crate::pod::vm::VmmProcess,
    /// Milliseconds from the VMM's start to the agent's first answer.
    pub boot_ms: u64,
    /// Image drive slots in use: slot id → the image in it.
    #[serde(default)]
    pub slots: std::collections::BTreeMap<String, SlotUse>,
}

/// One image attached to a pod VM's drive slot and mounted in the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotUse {
    pub image_id: String,
    /// Where the guest mounted it (a lower dir of the containers' rootfs).
    pub mount_point: String,
    /// The containers whose rootfs uses it.
    pub containers: std::collections::BTreeSet<String>,
}

/// Where a sandbox is in its lifecycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// RunPodSandbox is under way (NOTREADY to the kubelet). Found at start
    /// of hulld, it means a RunPodSandbox interrupted by a crash.
    Starting,
    /// Its VM is running and its agent answers.
    Ready,
    /// Stopped, failed, or not yet fully started.
    #[default]
    NotReady,
}

impl SandboxState {
    /// The CRI enum value.
    pub fn to_cri(self) -> cri::PodSandboxState {
        match self {
            SandboxState::Ready => cri::PodSandboxState::SandboxReady,
            SandboxState::Starting | SandboxState::NotReady => {
                cri::PodSandboxState::SandboxNotready
            }
        }
    }

    /// Containers can be created only in a ready sandbox.
    pub fn can_create_container(self) -> bool {
        self == SandboxState::Ready
    }
}

impl Record for SandboxRecord {
    const KIND: &'static str = "pod sandbox";
    fn id(&self) -> &str {
        &self.metadata.id
    }
}

impl SandboxRecord {
    pub fn labels(&self) -> &std::collections::HashMap<String, String> {
        &self.metadata.config.labels
    }

    /// The entry ListPodSandbox returns.
    pub fn to_cri(&self) -> cri::PodSandbox {
        cri::PodSandbox {
            id: self.metadata.id.clone(),
            metadata: self.metadata.config.metadata.clone(),
            state: self.status.state.to_cri() as i32,
            created_at: self.metadata.created_at,
            labels: self.metadata.config.labels.clone(),
            annotations: self.metadata.config.annotations.clone(),
            runtime_handler: self.metadata.runtime_handler.clone(),
        }
    }

    /// The status PodSandboxStatus returns.
    pub fn to_cri_status(&self) -> cri::PodSandboxStatus {
        let network = self
            .status
            .ip
            .as_ref()
            .map(|ip| cri::PodSandboxNetworkStatus {
                ip: ip.clone(),
                additional_ips: self
                    .status
                    .additional_ips
                    .iter()
                    .map(|ip| cri::PodIp { ip: ip.clone() })
                    .collect(),
            });
        let namespace_options = self
            .metadata
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        cri::PodSandboxStatus {
            id: self.metadata.id.clone(),
            metadata: self.metadata.config.metadata.clone(),
            state: self.status.state.to_cri() as i32,
            created_at: self.metadata.created_at,
            network,
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: namespace_options,
                }),
            }),
            labels: self.metadata.config.labels.clone(),
            annotations: self.metadata.config.annotations.clone(),
            runtime_handler: self.metadata.runtime_handler.clone(),
        }
    }
}
