//! Manifests and indexes as the registry serves them (OCI and Docker schema 2),
//! the platform choice (linux/amd64), and the media types hull can unpack.

use serde::Deserialize;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Every manifest media type hull asks the registry for.
pub const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
];
/// Image config media types hull runs.
pub const ACCEPTED_CONFIGS: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];
/// The largest manifest or config hull reads into memory.
pub const MAX_JSON_BYTES: u64 = 8 << 20;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// The compression of a layer media type, or `None` if hull cannot unpack it.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// A content descriptor.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the content.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform (index entries only).
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Other places the blob may be fetched from (foreign layers).
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

/// The platform of an index entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    /// CPU architecture (`amd64`).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// CPU variant (`v8` for arm64, `v2`… for amd64 levels).
    #[serde(default)]
    pub variant: Option<String>,
}

/// An image index or manifest list.
#[derive(Debug, Clone, Deserialize)]
pub struct Index {
    /// The per-platform manifests.
    pub manifests: Vec<Descriptor>,
}

/// A single-platform image manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// The image config.
    pub config: Descriptor,
    /// The layers, lowest first.
    pub layers: Vec<Descriptor>,
}

/// What a manifest document turned out to be.
#[derive(Debug, Clone)]
pub enum ManifestKind {
    /// An index: choose a platform and fetch again.
    Index(Index),
    /// An image manifest.
    Image(Manifest),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
}

/// A manifest document hull cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the expected shape.
    #[error("the manifest is not a valid OCI or Docker manifest")]
    Invalid(#[source] serde_json::Error),
    /// A media type or schema version hull does not pull.
    #[error("manifest media type {0:?} is not supported (OCI and Docker schema 2 are)")]
    Unsupported(String),
}

/// Classifies and parses a manifest document.
pub fn parse(body: &[u8]) -> Result<ManifestKind, ManifestError> {
    let probe: Probe = serde_json::from_slice(body).map_err(ManifestError::Invalid)?;
    if probe.schema_version != Some(2) {
        return Err(ManifestError::Unsupported(format!(
            "schemaVersion {}",
            probe
                .schema_version
                .map_or("missing".into(), |v| v.to_string())
        )));
    }
    let is_index = match probe.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => return Err(ManifestError::Unsupported(other.to_string())),
        None => probe.manifests.is_some(),
    };
    if is_index {
        serde_json::from_slice(body)
            .map(ManifestKind::Index)
            .map_err(ManifestError::Invalid)
    } else {
        serde_json::from_slice(body)
            .map(ManifestKind::Image)
            .map_err(ManifestError::Invalid)
    }
}

/// The linux/amd64 entry of an index: one without a variant or with `v1`
/// preferred, otherwise the first linux/amd64 one.
pub fn choose_linux_amd64(index: &Index) -> Option<&Descriptor> {
    let amd64 = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    };
    let plain = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| matches!(p.variant.as_deref(), None | Some("") | Some("v1")))
    };
    index
        .manifests
        .iter()
        .filter(amd64)
        .find(plain)
        .or_else(|| index.manifests.iter().find(amd64))
}

/// `os/arch[/variant]` of every entry, for error messages.
pub fn platforms(index: &Index) -> Vec<String> {
    index
        .manifests
        .iter()
        .map(|d| match &d.platform {
            Some(p) => match &p.variant {
                Some(v) if !v.is_empty() => format!("{}/{}/{v}", p.os, p.architecture),
                _ => format!("{}/{}", p.os, p.architecture),
            },
            None => "unknown".to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(arch: &str, variant: Option<&str>, n: u8) -> serde_json::Value {
        let mut platform = serde_json::json!({"architecture": arch, "os": "linux"});
        if let Some(v) = variant {
            platform["variant"] = v.into();
        }
        serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": format!("sha256:{}", format!("{n:02x}").repeat(32)),
            "size": 100,
            "platform": platform,
        })
    }

    #[test]
    fn index_picks_linux_amd64_even_when_listed_after_others() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [entry("arm64", Some("v8"), 1), entry("amd64", Some("v3"), 2), entry("amd64", None, 3)],
        });
        let ManifestKind::Index(index) = parse(body.to_string().as_bytes()).unwrap() else {
            panic!("not an index");
        };
        assert_eq!(
            choose_linux_amd64(&index).unwrap().digest,
            format!("sha256:{}", "03".repeat(32))
        );
        assert_eq!(
            platforms(&index),
            ["linux/arm64/v8", "linux/amd64/v3", "linux/amd64"]
        );
    }

    #[test]
    fn index_without_amd64_has_no_choice() {
        let body = serde_json::json!({"schemaVersion": 2, "manifests": [entry("arm64", None, 1)]});
        let ManifestKind::Index(index) = parse(body.to_string().as_bytes()).unwrap() else {
            panic!("an index without mediaType is recognized by its manifests");
        };
        assert!(choose_linux_amd64(&index).is_none());
    }

    #[test]
    fn docker_schema2_manifest_parses_and_schema1_is_refused() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": ACCEPTED_CONFIGS[1], "digest": format!("sha256:{}", "ab".repeat(32)), "size": 7},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": format!("sha256:{}", "cd".repeat(32)), "size": 9}],
        });
        let ManifestKind::Image(m) = parse(body.to_string().as_bytes()).unwrap() else {
            panic!("not a manifest");
        };
        assert_eq!(m.layers[0].size, 9);
        assert_eq!(
            layer_compression(&m.layers[0].media_type),
            Some(Compression::Gzip)
        );

        let schema1 = br#"{"schemaVersion": 1, "name": "x", "fsLayers": []}"#;
        assert!(matches!(parse(schema1), Err(ManifestError::Unsupported(_))));
        assert!(matches!(parse(b"not json"), Err(ManifestError::Invalid(_))));
    }

    #[test]
    fn layer_media_types() {
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar"),
            Some(Compression::None)
        );
        assert_eq!(
            layer_compression("application/vnd.wasm.content.layer.v1+wasm"),
            None
        );
    }
}
