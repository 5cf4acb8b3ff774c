//! The RPCs hull does not serve: checkpointing and CRI metrics. They answer
//! Unimplemented with the reason — never a fake success.

use k8s_cri::v1 as cri;

use super::CriService;
use crate::error::CriError;

impl CriService {
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
