//! ContainerStatus.

use std::collections::HashMap;

use k8s_cri::v1 as cri;

use super::{CriService, required};
use crate::error::CriError;

impl CriService {
    pub async fn container_status(
        &self,
        request: cri::ContainerStatusRequest,
    ) -> Result<cri::ContainerStatusResponse, CriError> {
        required(&request.container_id, "container_id")?;
        let container = self.containers.lookup(&request.container_id)?;
        let mut info = HashMap::new();
        if request.verbose {
            let record = serde_json::to_string(&container)
                .unwrap_or_else(|err| format!("cannot encode the container record: {err}"));
            info.insert("info".to_string(), record);
        }
        Ok(cri::ContainerStatusResponse {
            status: Some(container.to_cri_status()),
            info,
        })
    }
}
