//! The RPCs that need a running pod VM. Until the pod lifecycle lands they
//! validate their request, look up what they name (so a wrong id still gets
//! NotFound), and then answer Unimplemented with the reason — never a fake
//! success. RunPodSandbox first checks that this host can run pod VMs at all.

use k8s_cri::v1 as cri;

use super::CriService;
use crate::error::CriError;

const NEEDS_POD_VMS: &str = "pod sandboxes are not started in microVMs by this build";

fn pending(what: &'static str) -> CriError {
    CriError::NotYetAvailable {
        what,
        why: NEEDS_POD_VMS,
    }
}

fn required(value: &str, field: &'static str) -> Result<(), CriError> {
    if value.is_empty() {
        Err(CriError::MissingField { field })
    } else {
        Ok(())
    }
}

impl CriService {
    fn existing_container(&self, id: &str) -> Result<(), CriError> {
        required(id, "container_id")?;
        self.containers.lookup(id)?;
        Ok(())
    }

    pub async fn update_container_resources(
        &self,
        request: cri::UpdateContainerResourcesRequest,
    ) -> Result<cri::UpdateContainerResourcesResponse, CriError> {
        self.existing_container(&request.container_id)?;
        Err(pending("UpdateContainerResources"))
    }

    pub async fn reopen_container_log(
        &self,
        request: cri::ReopenContainerLogRequest,
    ) -> Result<cri::ReopenContainerLogResponse, CriError> {
        self.existing_container(&request.container_id)?;
        Err(pending("ReopenContainerLog"))
    }

    pub async fn exec_sync(
        &self,
        request: cri::ExecSyncRequest,
    ) -> Result<cri::ExecSyncResponse, CriError> {
        self.existing_container(&request.container_id)?;
        Err(pending("ExecSync"))
    }

    pub async fn exec(&self, request: cri::ExecRequest) -> Result<cri::ExecResponse, CriError> {
        self.existing_container(&request.container_id)?;
        Err(pending("Exec"))
    }

    pub async fn attach(
        &self,
        request: cri::AttachRequest,
    ) -> Result<cri::AttachResponse, CriError> {
        self.existing_container(&request.container_id)?;
        Err(pending("Attach"))
    }

    pub async fn port_forward(
        &self,
        request: cri::PortForwardRequest,
    ) -> Result<cri::PortForwardResponse, CriError> {
        required(&request.pod_sandbox_id, "pod_sandbox_id")?;
        self.sandboxes.lookup(&request.pod_sandbox_id)?;
        Err(pending("PortForward"))
    }

    pub async fn container_stats(
        &self,
        request: cri::ContainerStatsRequest,
    ) -> Result<cri::ContainerStatsResponse, CriError> {
        self.existing_container(&request.container_id)?;
        Err(pending("ContainerStats"))
    }

    /// Stats of the containers that match; with no container to report on,
    /// the truthful answer is an empty list.
    pub async fn list_container_stats(
        &self,
        request: cri::ListContainerStatsRequest,
    ) -> Result<cri::ListContainerStatsResponse, CriError> {
        let filter = request.filter.unwrap_or_default();
        let listed = self
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    id: filter.id,
                    pod_sandbox_id: filter.pod_sandbox_id,
                    label_selector: filter.label_selector,
                    state: None,
                }),
            })
            .await?;
        if listed.containers.is_empty() {
            Ok(cri::ListContainerStatsResponse { stats: Vec::new() })
        } else {
            Err(pending("ListContainerStats"))
        }
    }

    pub async fn pod_sandbox_stats(
        &self,
        request: cri::PodSandboxStatsRequest,
    ) -> Result<cri::PodSandboxStatsResponse, CriError> {
        required(&request.pod_sandbox_id, "pod_sandbox_id")?;
        self.sandboxes.lookup(&request.pod_sandbox_id)?;
        Err(pending("PodSandboxStats"))
    }

    /// Stats of the sandboxes that match; none to report on means an empty list.
    pub async fn list_pod_sandbox_stats(
        &self,
        request: cri::ListPodSandboxStatsRequest,
    ) -> Result<cri::ListPodSandboxStatsResponse, CriError> {
        let filter = request.filter.unwrap_or_default();
        let listed = self
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    id: filter.id,
                    label_selector: filter.label_selector,
                    state: None,
                }),
            })
            .await?;
        if listed.items.is_empty() {
            Ok(cri::ListPodSandboxStatsResponse { stats: Vec::new() })
        } else {
            Err(pending("ListPodSandboxStats"))
        }
    }

    pub async fn checkpoint_container(
        &self,
        _: cri::CheckpointContainerRequest,
    ) -> Result<cri::CheckpointContainerResponse, CriError> {
        Err(CriError::Unsupported {
            what: "CheckpointContainer",
            why: "checkpoint/restore of containers inside pod VMs is not implemented",
        })
    }

    pub async fn list_metric_descriptors(
        &self,
        _: cri::ListMetricDescriptorsRequest,
    ) -> Result<cri::ListMetricDescriptorsResponse, CriError> {
        Err(CriError::Unsupported {
            what: "ListMetricDescriptors",
            why: "hull reports pod and container usage through the *Stats RPCs, not CRI metrics",
        })
    }

    pub async fn list_pod_sandbox_metrics(
        &self,
        _: cri::ListPodSandboxMetricsRequest,
    ) -> Result<cri::ListPodSandboxMetricsResponse, CriError> {
        Err(CriError::Unsupported {
            what: "ListPodSandboxMetrics",
            why: "hull reports pod and container usage through the *Stats RPCs, not CRI metrics",
        })
    }
}
