//! PodSandboxStatus.

use std::collections::HashMap;

use k8s_cri::v1 as cri;

use super::{CriService, now_nanos, required};
use crate::error::CriError;

impl CriService {
    pub async fn pod_sandbox_status(
        &self,
        request: cri::PodSandboxStatusRequest,
    ) -> Result<cri::PodSandboxStatusResponse, CriError> {
        required(&request.pod_sandbox_id, "pod_sandbox_id")?;
        let sandbox = self.sandboxes.lookup(&request.pod_sandbox_id)?;
        let mut info = HashMap::new();
        if request.verbose {
            let record = serde_json::to_string(&sandbox)
                .unwrap_or_else(|err| format!("cannot encode the sandbox record: {err}"));
            info.insert("info".to_string(), record);
        }
        let mut containers_statuses: Vec<cri::ContainerStatus> = self
            .containers
            .list()
            .iter()
            .filter(|c| c.metadata.sandbox_id == sandbox.metadata.id)
            .map(|c| c.to_cri_status())
            .collect();
        containers_statuses.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(cri::PodSandboxStatusResponse {
            status: Some(sandbox.to_cri_status()),
            info,
            containers_statuses,
            timestamp: now_nanos(),
        })
    }
}
