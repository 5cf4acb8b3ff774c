//! ListPodSandbox.

use k8s_cri::v1 as cri;

use super::CriService;
use crate::error::CriError;
use crate::store::filter::sandbox_matches;

impl CriService {
    pub async fn list_pod_sandbox(
        &self,
        request: cri::ListPodSandboxRequest,
    ) -> Result<cri::ListPodSandboxResponse, CriError> {
        let mut filter = request.filter.unwrap_or_default();
        // An id filter may be a prefix; one that resolves to nothing matches
        // nothing (unless it is an exact id, which it then cannot be).
        if let Ok(full) = self.sandboxes.resolve(&filter.id) {
            filter.id = full;
        }
        let mut items: Vec<cri::PodSandbox> = self
            .sandboxes
            .list()
            .iter()
            .filter(|sandbox| sandbox_matches(sandbox, &filter))
            .map(|sandbox| sandbox.to_cri())
            .collect();
        items.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(cri::ListPodSandboxResponse { items })
    }
}
