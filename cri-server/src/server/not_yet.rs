//! The RPCs hull does not serve (yet): the streaming ones (Exec, Attach,
//! PortForward) until hulld has its streaming server, and checkpointing and
//! CRI metrics. They validate their request, look up what they name (so a
//! wrong id still gets NotFound), then answer Unimplemented with the reason —
//! never a fake success.

use k8s_cri::v1 as cri;

use super::{CriService, required};
use crate::error::CriError;

const NEEDS_STREAMING: &str = "hulld has no streaming server yet (use ExecSync)";

fn pending(what: &'static str) -> CriError {
    CriError::NotYetAvailable {
        what,
        why: NEEDS_STREAMING,
    }
}

impl CriService {
    fn existing_container(&self, id: &str) -> Result<(), CriError> {
        required(id, "container_id")?;
        self.containers.lookup(id)?;
        Ok(())
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
