//! ImageStatus.

use std::collections::HashMap;

use k8s_cri::v1 as cri;

use super::image_list::to_cri_image;
use super::{CriService, required_image};
use crate::error::CriError;

impl CriService {
    pub async fn image_status(
        &self,
        request: cri::ImageStatusRequest,
    ) -> Result<cri::ImageStatusResponse, CriError> {
        let reference = required_image(request.image)?;
        // An image that is not present is not an error: the kubelet asks to
        // decide whether to pull.
        let Some(image) = self.images.get(&reference) else {
            return Ok(cri::ImageStatusResponse::default());
        };
        let mut info = HashMap::new();
        if request.verbose {
            let verbose = serde_json::json!({
                "imageSpec": image.config,
                "blockImage": image.block_image,
                "blockImageFormat": format!("{:?}", image.block_image_format),
            });
            info.insert("info".to_string(), verbose.to_string());
        }
        Ok(cri::ImageStatusResponse {
            image: Some(to_cri_image(&image)),
            info,
        })
    }
}
