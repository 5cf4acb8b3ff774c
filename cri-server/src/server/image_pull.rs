//! PullImage.

use k8s_cri::v1 as cri;

use super::{CriService, required_image};
use crate::error::CriError;

impl CriService {
    pub async fn pull_image(
        &self,
        request: cri::PullImageRequest,
    ) -> Result<cri::PullImageResponse, CriError> {
        let reference = required_image(request.image)?;
        let auth = request.auth.map(|auth| image_service::PullAuth {
            username: auth.username,
            password: auth.password,
            auth: auth.auth,
            server_address: auth.server_address,
            identity_token: auth.identity_token,
            registry_token: auth.registry_token,
        });
        let started = std::time::Instant::now();
        let image = self.images.pull(&reference, auth).await?;
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.observe_image_pull(seconds, image.size);
        tracing::info!(reference, image_id = image.id, seconds, "image pulled");
        Ok(cri::PullImageResponse {
            image_ref: image.id,
        })
    }
}
