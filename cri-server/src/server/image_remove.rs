//! RemoveImage.

use k8s_cri::v1 as cri;

use super::CriService;
use crate::error::CriError;

impl CriService {
    pub async fn remove_image(
        &self,
        request: cri::RemoveImageRequest,
    ) -> Result<cri::RemoveImageResponse, CriError> {
        let reference = request
            .image
            .map(|spec| spec.image)
            .filter(|image| !image.is_empty())
            .ok_or(CriError::MissingField {
                field: "image.image",
            })?;
        // Removing an image that is not there succeeds (the CRI's contract).
        self.images.remove(&reference).await?;
        tracing::info!(reference, "image removed");
        Ok(cri::RemoveImageResponse {})
    }
}
