//! Version: who is serving the CRI.

use k8s_cri::v1 as cri;

use super::CriService;
use crate::error::CriError;

/// The kubelet's CRI API version this runtime speaks.
pub const KUBELET_API_VERSION: &str = "0.1.0";
/// Name reported as `runtime_name`.
pub const RUNTIME_NAME: &str = "hull";
/// The CRI API version (`runtime_api_version`).
pub const RUNTIME_API_VERSION: &str = "v1";

impl CriService {
    pub async fn version(&self, _: cri::VersionRequest) -> Result<cri::VersionResponse, CriError> {
        Ok(cri::VersionResponse {
            version: KUBELET_API_VERSION.to_string(),
            runtime_name: RUNTIME_NAME.to_string(),
            runtime_version: env!("CARGO_PKG_VERSION").to_string(),
            runtime_api_version: RUNTIME_API_VERSION.to_string(),
        })
    }
}
