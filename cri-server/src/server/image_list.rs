//! ListImages, and the conversion of a stored image to its CRI form.

use k8s_cri::v1 as cri;

use super::CriService;
use crate::error::CriError;

impl CriService {
    pub async fn list_images(
        &self,
        request: cri::ListImagesRequest,
    ) -> Result<cri::ListImagesResponse, CriError> {
        let wanted = request
            .filter
            .and_then(|f| f.image)
            .map(|spec| spec.image)
            .unwrap_or_default();
        let images = if wanted.is_empty() {
            self.images.list()
        } else {
            self.images.get(&wanted).into_iter().collect()
        };
        let mut images: Vec<cri::Image> = images.iter().map(to_cri_image).collect();
        images.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(cri::ListImagesResponse { images })
    }
}

/// The CRI view of a stored image.
pub fn to_cri_image(image: &image_service::Image) -> cri::Image {
    let (uid, username) = image_user(&image.user);
    cri::Image {
        id: image.id.clone(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.size,
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec {
            image: image.id.clone(),
            ..Default::default()
        }),
        pinned: image.pinned,
    }
}

/// Splits the image config's `User` ("1000", "1000:1000", "nginx",
/// "nginx:www") into the CRI's uid or username, as the kubelet expects: a
/// numeric user gives a uid, a name gives a username, the group is dropped.
fn image_user(user: &str) -> (Option<i64>, String) {
    let user = user.split(':').next().unwrap_or("");
    if user.is_empty() {
        return (None, String::new());
    }
    match user.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, user.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::image_user;

    #[test]
    fn image_user_forms() {
        assert_eq!(image_user(""), (None, String::new()));
        assert_eq!(image_user("0"), (Some(0), String::new()));
        assert_eq!(image_user("1000:1000"), (Some(1000), String::new()));
        assert_eq!(image_user("nginx"), (None, "nginx".to_string()));
        assert_eq!(image_user("nginx:www"), (None, "nginx".to_string()));
    }
}
