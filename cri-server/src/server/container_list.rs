//! ListContainers.

use k8s_cri::v1 as cri;

use super::CriService;
use crate::error::CriError;
use crate::store::filter::container_matches;

impl CriService {
    pub async fn list_containers(
        &self,
        request: cri::ListContainersRequest,
    ) -> Result<cri::ListContainersResponse, CriError> {
        let mut filter = request.filter.unwrap_or_default();
        if let Ok(full) = self.containers.resolve(&filter.id) {
            filter.id = full;
        }
        if let Ok(full) = self.sandboxes.resolve(&filter.pod_sandbox_id) {
            filter.pod_sandbox_id = full;
        }
        let mut containers: Vec<cri::Container> = self
            .containers
            .list()
            .iter()
            .filter(|container| container_matches(container, &filter))
            .map(|container| container.to_cri())
            .collect();
        containers.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(cri::ListContainersResponse { containers })
    }
}
