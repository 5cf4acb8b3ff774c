//! RemoveImage.

use k8s_cri::v1 as cri;

use super::{CriService, required_image};
use crate::error::CriError;

impl CriService {
    pub async fn remove_image(
        &self,
        request: cri::RemoveImageRequest,
    ) -> Result<cri::RemoveImageResponse, CriError> {
        let reference = required_image(request.image)?;
        // Removing an image that is not there succeeds (the CRI's contract).
        self.images.remove(&reference).await?;
        tracing::info!(reference, "image removed");
        Ok(cri::RemoveImageResponse {})
    }
}
