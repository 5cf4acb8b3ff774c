//! The container record: its creation request (never changes) and its
//! lifecycle state (changes through `update`).

use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};

use super::Record;

/// A container as hulld keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub metadata: ContainerMetadata,
    pub status: ContainerStatus,
}

/// Fixed at CreateContainer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerMetadata {
    pub id: String,
    pub sandbox_id: String,
    /// The ContainerConfig exactly as the kubelet sent it.
    pub config: cri::ContainerConfig,
    /// The image's id (config digest) the container was created from.
    pub image_id: String,
    /// The image reference reported as `image_ref` (a repo digest when known).
    pub image_ref: String,
    /// Full path of the container's log file on the host.
    pub log_path: String,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_at: i64,
}

/// Changes over the container's life.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub state: ContainerState,
    /// Nanoseconds since the Unix epoch; 0 until started.
    #[serde(default)]
    pub started_at: i64,
    /// Nanoseconds since the Unix epoch; 0 until exited.
    #[serde(default)]
    pub finished_at: i64,
    #[serde(default)]
    pub exit_code: i32,
    /// Brief CamelCase reason: Completed, Error, OOMKilled, ...
    #[serde(default)]
    pub reason: String,
    /// Human-readable detail of the reason.
    #[serde(default)]
    pub message: String,
}

/// Where a container is in its lifecycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    #[default]
    Created,
    Running,
    Exited,
    /// hulld lost track of it (e.g. its VM is gone without an exit record).
    Unknown,
}

impl ContainerState {
    /// The CRI enum value.
    pub fn to_cri(self) -> cri::ContainerState {
        match self {
            ContainerState::Created => cri::ContainerState::ContainerCreated,
            ContainerState::Running => cri::ContainerState::ContainerRunning,
            ContainerState::Exited => cri::ContainerState::ContainerExited,
            ContainerState::Unknown => cri::ContainerState::ContainerUnknown,
        }
    }

    /// The state's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Exited => "exited",
            ContainerState::Unknown => "in an unknown state",
        }
    }

    pub fn can_start(self) -> bool {
        self == ContainerState::Created
    }

    pub fn can_exec(self) -> bool {
        self == ContainerState::Running
    }

    /// A running container must be stopped before it is removed.
    pub fn can_remove(self) -> bool {
        self != ContainerState::Running
    }
}

impl Record for ContainerRecord {
    const KIND: &'static str = "container";
    fn id(&self) -> &str {
        &self.metadata.id
    }
}

impl ContainerRecord {
    pub fn labels(&self) -> &std::collections::HashMap<String, String> {
        &self.metadata.config.labels
    }

    /// The entry ListContainers returns.
    pub fn to_cri(&self) -> cri::Container {
        cri::Container {
            id: self.metadata.id.clone(),
            pod_sandbox_id: self.metadata.sandbox_id.clone(),
            metadata: self.metadata.config.metadata.clone(),
            image: self.metadata.config.image.clone(),
            image_ref: self.metadata.image_ref.clone(),
            state: self.status.state.to_cri() as i32,
            created_at: self.metadata.created_at,
            labels: self.metadata.config.labels.clone(),
            annotations: self.metadata.config.annotations.clone(),
            image_id: self.metadata.image_id.clone(),
        }
    }

    /// The status ContainerStatus returns.
    pub fn to_cri_status(&self) -> cri::ContainerStatus {
        let config = &self.metadata.config;
        cri::ContainerStatus {
            id: self.metadata.id.clone(),
            metadata: config.metadata.clone(),
            state: self.status.state.to_cri() as i32,
            created_at: self.metadata.created_at,
            started_at: self.status.started_at,
            finished_at: self.status.finished_at,
            exit_code: self.status.exit_code,
            image: config.image.clone(),
            image_ref: self.metadata.image_ref.clone(),
            reason: self.status.reason.clone(),
            message: self.status.message.clone(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            mounts: config.mounts.clone(),
            log_path: self.metadata.log_path.clone(),
            image_id: self.metadata.image_id.clone(),
            resources: config
                .linux
                .as_ref()
                .and_then(|linux| linux.resources.clone())
                .map(|linux| cri::ContainerResources {
                    linux: Some(linux),
                    ..Default::default()
                }),
            ..Default::default()
        }
    }
}
