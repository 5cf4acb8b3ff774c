//! UpdateContainerResources and ReopenContainerLog: changes to a container
//! that keeps running.

use hull_proto::v1 as agent;
use k8s_cri::v1 as cri;

use super::sandbox_lifecycle::agent_error;
use super::{CriService, required};
use crate::error::CriError;
use crate::pod::container_spec::resources_from_cri;
use crate::store::container::ContainerState;

impl CriService {
    /// Applies new limits to the container's cgroup in the guest. The pod's
    /// VM keeps its size: limits above what the VM has are allowed (as on a
    /// node, they are not guarantees) but cannot give the container more.
    pub async fn update_container_resources(
        &self,
        request: cri::UpdateContainerResourcesRequest,
    ) -> Result<cri::UpdateContainerResourcesResponse, CriError> {
        required(&request.container_id, "container_id")?;
        let container = self.containers.lookup(&request.container_id)?;
        let id = container.metadata.id.clone();
        let linux = request
            .linux
            .ok_or(CriError::MissingField { field: "linux" })?;
        if !matches!(
            container.status.state,
            ContainerState::Created | ContainerState::Running
        ) {
            return Err(CriError::WrongState {
                kind: "container",
                id,
                state: container.status.state.name(),
                action: "update its resources",
            });
        }
        let pod = self.ready_pod(&container.metadata.sandbox_id)?;
        let resources =
            hull_proto::spec::build_resources(&resources_from_cri(&linux)).map_err(|source| {
                CriError::Spec {
                    container: id.clone(),
                    source,
                }
            })?;
        let resources_json = serde_json::to_vec(&resources).map_err(|_| CriError::Internal {
            what: "encoding the container's resources",
        })?;
        pod.agent()
            .update_container(agent::UpdateContainerRequest {
                container_id: id.clone(),
                resources_json,
            })
            .await
            .map_err(|status| agent_error(&pod.id, "update the container's resources", status))?;
        // ContainerStatus reports the limits in force.
        self.containers.update(&id, |c| {
            c.metadata
                .config
                .linux
                .get_or_insert_with(Default::default)
                .resources = Some(linux.clone());
        })?;
        tracing::info!(
            container = id,
            memory_limit = linux.memory_limit_in_bytes,
            cpu_quota = linux.cpu_quota,
            cpu_shares = linux.cpu_shares,
            "container resources updated"
        );
        Ok(cri::UpdateContainerResourcesResponse {})
    }

    /// Closes and reopens the container's log file (the kubelet's log
    /// rotation renamed it); output keeps flowing into the new file.
    pub async fn reopen_container_log(
        &self,
        request: cri::ReopenContainerLogRequest,
    ) -> Result<cri::ReopenContainerLogResponse, CriError> {
        required(&request.container_id, "container_id")?;
        let container = self.containers.lookup(&request.container_id)?;
        let id = container.metadata.id.clone();
        if container.status.state != ContainerState::Running {
            return Err(CriError::WrongState {
                kind: "container",
                id,
                state: container.status.state.name(),
                action: "reopen its log (only a running container writes one)",
            });
        }
        let pump = self
            .pods
            .get(&container.metadata.sandbox_id)
            .and_then(|pod| pod.log_pump(&id))
            .ok_or_else(|| CriError::WrongState {
                kind: "container",
                id: id.clone(),
                state: "without a log file",
                action: "reopen its log",
            })?;
        pump.reopen().await.map_err(|source| CriError::Log {
            container: id.clone(),
            source,
        })?;
        tracing::info!(container = id, path = %pump.path().display(), "container log reopened");
        Ok(cri::ReopenContainerLogResponse {})
    }
}
