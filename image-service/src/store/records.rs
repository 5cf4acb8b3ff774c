//! The records the store keeps on disk: one per image (immutable once
//! written, except `pinned`) and one per reference name.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The filesystem format of an image's block image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockImageFormat {
    /// EROFS, uncompressed, 4 KiB blocks, written by hull's own writer.
    Erofs,
    /// ext4.
    Ext4,
}

/// One layer as the manifest names it, with the digest of its uncompressed
/// tar stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as stored (compressed).
    pub digest: String,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Media type from the manifest.
    pub media_type: String,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
}

/// Everything known about one image, stored as `images/<hex>/image.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:<config digest>`.
    pub id: String,
    /// Digest of the platform manifest the image came from.
    pub manifest_digest: String,
    /// Digests of every blob this image keeps alive (manifest, index if any,
    /// config, layers); garbage collection deletes blobs named by no image.
    pub blobs: Vec<String>,
    /// The layers, lowest first.
    pub layers: Vec<LayerRecord>,
    /// The image config JSON.
    pub config: serde_json::Value,
    /// Sum of the compressed sizes of config and layers, as containerd's CRI
    /// reports image size.
    pub size: u64,
    /// Format of the block image file.
    pub block_image_format: BlockImageFormat,
    /// Size of the block image file in bytes.
    pub block_image_size: u64,
    /// Pinned images are never removed by the kubelet's image GC.
    #[serde(default)]
    pub pinned: bool,
}

/// One reference name (repo tag or repo digest) and the image it points to,
/// stored as `refs/<sha256 of name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefRecord {
    /// `docker.io/library/busybox:latest` or `docker.io/library/busybox@sha256:…`.
    pub name: String,
    /// `sha256:<config digest>` of the image.
    pub image_id: String,
    /// Digest of the manifest (index or platform manifest) this name resolved to.
    pub target_digest: String,
}

impl RefRecord {
    /// Whether the name is a repo digest (`…@sha256:…`) rather than a tag.
    pub fn is_digest(&self) -> bool {
        self.name.contains('@')
    }
}

/// An image as the CRI ImageService reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// `sha256:<config digest>`.
    pub id: String,
    /// `docker.io/library/busybox:latest`, `127.0.0.1:5000/test:v1`.
    pub repo_tags: Vec<String>,
    /// `docker.io/library/busybox@sha256:<manifest digest>`.
    pub repo_digests: Vec<String>,
    /// Sum of the compressed sizes of config and layers, as containerd's CRI
    /// reports it.
    pub size: u64,
    /// The image config JSON (ImageStatus verbose info).
    pub config: serde_json::Value,
    /// `config.User` (empty when unset).
    pub user: String,
    /// The read-only filesystem image the pod VM attaches.
    pub block_image: PathBuf,
    /// The filesystem in `block_image`.
    pub block_image_format: BlockImageFormat,
    /// Never removed by the kubelet's image GC.
    pub pinned: bool,
}

impl Image {
    /// Builds the CRI view of `record` with its reference names.
    pub fn from_record<'a>(
        record: &ImageRecord,
        refs: impl Iterator<Item = &'a RefRecord>,
        block_image: PathBuf,
    ) -> Image {
        let mut repo_tags = Vec::new();
        let mut repo_digests = Vec::new();
        for r in refs {
            if r.is_digest() {
                repo_digests.push(r.name.clone());
            } else {
                repo_tags.push(r.name.clone());
            }
        }
        repo_tags.sort();
        repo_digests.sort();
        let user = record
            .config
            .pointer("/config/User")
            .and_then(|u| u.as_str())
            .unwrap_or_default()
            .to_string();
        Image {
            id: record.id.clone(),
            repo_tags,
            repo_digests,
            size: record.size,
            config: record.config.clone(),
            user,
            block_image,
            block_image_format: record.block_image_format,
            pinned: record.pinned,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ImageRecord {
        ImageRecord {
            id: "sha256:aa".into(),
            manifest_digest: "sha256:bb".into(),
            blobs: vec!["sha256:bb".into(), "sha256:aa".into(), "sha256:cc".into()],
            layers: vec![LayerRecord {
                digest: "sha256:cc".into(),
                size: 10,
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                diff_id: "sha256:dd".into(),
            }],
            config: serde_json::json!({"config": {"User": "1000:1000", "Env": ["A=b"]}}),
            size: 12,
            block_image_format: BlockImageFormat::Erofs,
            block_image_size: 8192,
            pinned: false,
        }
    }

    #[test]
    fn image_record_round_trips_through_json() {
        let rec = record();
        let text = serde_json::to_string_pretty(&rec).unwrap();
        let back: ImageRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, rec);
        assert!(text.contains("\"erofs\""));
    }

    #[test]
    fn image_view_splits_tags_from_digests_and_reads_user() {
        let refs = [
            RefRecord {
                name: "docker.io/library/x@sha256:bb".into(),
                image_id: "sha256:aa".into(),
                target_digest: "sha256:bb".into(),
            },
            RefRecord {
                name: "docker.io/library/x:latest".into(),
                image_id: "sha256:aa".into(),
                target_digest: "sha256:bb".into(),
            },
        ];
        let image = Image::from_record(&record(), refs.iter(), PathBuf::from("/x"));
        assert_eq!(image.repo_tags, vec!["docker.io/library/x:latest"]);
        assert_eq!(image.repo_digests, vec!["docker.io/library/x@sha256:bb"]);
        assert_eq!(image.user, "1000:1000");
    }
}
