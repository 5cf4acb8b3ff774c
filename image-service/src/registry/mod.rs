//! Talking to OCI registries: which endpoints to try (mirrors, then the
//! registry), over which scheme, with which credentials; fetching manifests
//! and blobs with `oci-client`; and classifying its errors.

pub mod auth;
pub mod manifest;

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::config::{PullAuth, RegistryConfig};
use crate::digest::{Digest, DigestFormatError};
use crate::error::ErrorKind;
use crate::reference::ImageRef;
use auth::{AuthDecodeError, Credentials, TokenExchangeError};
use manifest::{ACCEPTED_MANIFESTS, MAX_JSON_BYTES, ManifestError};

/// Talking to a registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry refused the credentials (or wants some).
    #[error("registry {endpoint} refused access to {reference}")]
    Unauthorized {
        /// The image reference.
        reference: String,
        /// The endpoint that refused.
        endpoint: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    /// The manifest or blob does not exist.
    #[error("{what} of {reference} was not found at {endpoint}")]
    NotFound {
        /// The image reference.
        reference: String,
        /// What was fetched.
        what: String,
        /// The last endpoint tried.
        endpoint: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    /// The registry could not be reached, or failed.
    #[error("cannot fetch {what} of {reference} from {endpoint}")]
    Unreachable {
        /// The image reference.
        reference: String,
        /// What was fetched.
        what: String,
        /// The endpoint.
        endpoint: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    /// Content did not hash to its digest.
    #[error("{what} of {reference} does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The image reference.
        reference: String,
        /// What was fetched.
        what: String,
        /// The digest that was asked for.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// Content was not the size its descriptor declares.
    #[error("{what} of {reference} is {actual} bytes, but its descriptor declares {expected}")]
    SizeMismatch {
        /// The image reference.
        reference: String,
        /// What was fetched.
        what: String,
        /// Declared size.
        expected: u64,
        /// Size (so far) of what arrived.
        actual: u64,
    },
    /// The manifest is not one hull can use.
    #[error("the manifest of {reference} cannot be used")]
    Manifest {
        /// The image reference.
        reference: String,
        #[source]
        source: ManifestError,
    },
    /// The index offers no linux/amd64 image.
    #[error("{reference} has no linux/amd64 image; it offers {}", platforms.join(", "))]
    NoPlatform {
        /// The image reference.
        reference: String,
        /// What the index offers.
        platforms: Vec<String>,
    },
    /// A config or layer media type hull does not run.
    #[error("{what} of {reference} has media type {media_type:?}, which hull cannot run")]
    UnsupportedMediaType {
        /// The image reference.
        reference: String,
        /// Config or layer.
        what: String,
        /// The media type.
        media_type: String,
    },
    /// A manifest names something that is not a sha256 digest.
    #[error("the manifest of {reference} names an invalid digest")]
    InvalidDigest {
        /// The image reference.
        reference: String,
        #[source]
        source: DigestFormatError,
    },
    /// A manifest or config is larger than hull reads into memory.
    #[error("{what} of {reference} is larger than {limit} bytes")]
    TooLarge {
        /// The image reference.
        reference: String,
        /// What was fetched.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// Credentials from the request or config cannot be decoded.
    #[error("the credentials for registry {registry} cannot be used")]
    Credentials {
        /// The registry host.
        registry: String,
        #[source]
        source: AuthDecodeError,
    },
    /// A configured mirror is not a `scheme://host[:port]` URL.
    #[error("mirror {mirror:?} of registry {registry} is not an http:// or https:// host URL")]
    BadMirror {
        /// The registry host.
        registry: String,
        /// The mirror as configured.
        mirror: String,
    },
    /// The identity token could not be exchanged for a bearer token.
    #[error(transparent)]
    TokenExchange(#[from] TokenExchangeError),
}

impl RegistryError {
    /// The class of this error, for the gRPC status.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::Unauthorized { .. } | RegistryError::TokenExchange(_) => {
                ErrorKind::Unauthenticated
            }
            RegistryError::NotFound { .. } => ErrorKind::NotFound,
            RegistryError::Unreachable { .. } => ErrorKind::Unavailable,
            RegistryError::Credentials { .. } | RegistryError::BadMirror { .. } => {
                ErrorKind::InvalidArgument
            }
            RegistryError::DigestMismatch { .. }
            | RegistryError::SizeMismatch { .. }
            | RegistryError::Manifest { .. }
            | RegistryError::NoPlatform { .. }
            | RegistryError::UnsupportedMediaType { .. }
            | RegistryError::InvalidDigest { .. }
            | RegistryError::TooLarge { .. } => ErrorKind::FailedPrecondition,
        }
    }
}

/// One place to fetch an image from: a mirror or the registry itself.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host[:port]`.
    pub host: String,
    /// Plain HTTP instead of HTTPS.
    pub plain_http: bool,
    /// A mirror (requests carry `?ns=<registry>`), not the registry itself.
    pub is_mirror: bool,
    /// Credentials for this endpoint.
    pub credentials: Credentials,
}

/// Whether `host[:port]` names a loopback address (`localhost`, `127.0.0.0/8`, `::1`).
pub fn is_loopback(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
        return true;
    }
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
    };
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The endpoints to try for `registry`, in order: its configured mirrors,
/// then the registry itself.
pub fn endpoints(
    config: &RegistryConfig,
    registry: &str,
    request_auth: Option<&PullAuth>,
) -> Result<Vec<Endpoint>, RegistryError> {
    let bad_creds = |host: &str| {
        let registry = host.to_string();
        move |source| RegistryError::Credentials { registry, source }
    };
    let host_config = config.hosts.get(registry).cloned().unwrap_or_default();
    let mut list = Vec::new();
    for mirror in &host_config.mirrors {
        let (plain_http, rest) = if let Some(rest) = mirror.strip_prefix("http://") {
            (true, rest)
        } else if let Some(rest) = mirror.strip_prefix("https://") {
            (false, rest)
        } else {
            return Err(RegistryError::BadMirror {
                registry: registry.to_string(),
                mirror: mirror.clone(),
            });
        };
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            return Err(RegistryError::BadMirror {
                registry: registry.to_string(),
                mirror: mirror.clone(),
            });
        }
        let mirror_config = config.hosts.get(host).cloned().unwrap_or_default();
        list.push(Endpoint {
            host: host.to_string(),
            plain_http,
            is_mirror: true,
            credentials: auth::from_config(&mirror_config).map_err(bad_creds(host))?,
        });
    }
    let request_creds = match request_auth {
        Some(auth) => auth::from_request(auth).map_err(bad_creds(registry))?,
        None => None,
    };
    let credentials = match request_creds {
        Some(creds) => creds,
        None => auth::from_config(&host_config).map_err(bad_creds(registry))?,
    };
    list.push(Endpoint {
        host: registry.to_string(),
        plain_http: host_config.insecure || is_loopback(registry),
        is_mirror: false,
        credentials,
    });
    Ok(list)
}

/// A connection to the endpoints of one image's registry.
pub struct RegistryClient {
    client: Client,
    http: reqwest::Client,
    endpoints: Vec<Endpoint>,
    /// Resolved credentials per endpoint (identity tokens exchanged once).
    auths: std::sync::Mutex<Vec<Option<RegistryAuth>>>,
    image: ImageRef,
}

impl RegistryClient {
    /// A client for `image` over `endpoints` (tried in order).
    pub fn new(image: &ImageRef, endpoints: Vec<Endpoint>) -> Self {
        let plain: Vec<String> = endpoints
            .iter()
            .filter(|e| e.plain_http)
            .map(|e| e.host.clone())
            .collect();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain),
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(120)),
            ..Default::default()
        };
        RegistryClient {
            client: Client::new(config),
            http: reqwest::Client::new(),
            auths: std::sync::Mutex::new(vec![None; endpoints.len()]),
            endpoints,
            image: image.clone(),
        }
    }

    fn client_reference(&self, endpoint: &Endpoint, target: &ImageRef) -> Reference {
        let mut reference = target.to_client_reference();
        if endpoint.is_mirror {
            reference.set_mirror_registry(endpoint.host.clone());
        }
        reference
    }

    async fn auth_for(&self, index: usize) -> Result<RegistryAuth, RegistryError> {
        if let Some(auth) = &self.auths.lock().expect("auth lock")[index] {
            return Ok(auth.clone());
        }
        let endpoint = &self.endpoints[index];
        let scheme = if endpoint.plain_http { "http" } else { "https" };
        let host = if !endpoint.is_mirror && endpoint.host == "docker.io" {
            "index.docker.io"
        } else {
            endpoint.host.as_str()
        };
        let auth = auth::resolve(
            &endpoint.credentials,
            &self.http,
            &format!("{scheme}://{host}"),
            host,
            &self.image.repository,
        )
        .await?;
        self.auths.lock().expect("auth lock")[index] = Some(auth.clone());
        Ok(auth)
    }

    /// Fetches the manifest `target` names (a tag or digest of this image's
    /// repository), verifying it against the digest when `target` has one.
    /// Returns the document and its digest.
    pub async fn fetch_manifest(
        &self,
        target: &ImageRef,
    ) -> Result<(Bytes, Digest), RegistryError> {
        let what = format!(
            "manifest {}",
            target
                .digest
                .as_deref()
                .or(target.tag.as_deref())
                .unwrap_or("latest")
        );
        let mut last_error = None;
        for index in 0..self.endpoints.len() {
            let auth = match self.auth_for(index).await {
                Ok(auth) => auth,
                Err(err) => {
                    last_error = Some(err);
                    continue;
                }
            };
            let endpoint = self.endpoints[index].clone();
            let reference = self.client_reference(&endpoint, target);
            match self
                .client
                .pull_manifest_raw(&reference, &auth, ACCEPTED_MANIFESTS)
                .await
            {
                Ok((body, _)) => {
                    let digest = self.check_manifest(&what, target, &body)?;
                    tracing::debug!(endpoint = %endpoint.host, %digest, "fetched manifest");
                    return Ok((body, digest));
                }
                Err(err) => {
                    let err = self.classify(err, &what, &endpoint);
                    tracing::debug!(endpoint = %endpoint.host, error = %err, "manifest fetch failed");
                    last_error = Some(err);
                }
            }
        }
        Err(last_error.expect("there is always at least one endpoint"))
    }

    fn check_manifest(
        &self,
        what: &str,
        target: &ImageRef,
        body: &[u8],
    ) -> Result<Digest, RegistryError> {
        if body.len() as u64 > MAX_JSON_BYTES {
            return Err(RegistryError::TooLarge {
                reference: self.image.to_string(),
                what: what.to_string(),
                limit: MAX_JSON_BYTES,
            });
        }
        let digest = Digest::of(body);
        if let Some(expected) = &target.digest
            && digest.as_str() != expected
        {
            {
                return Err(RegistryError::DigestMismatch {
                    reference: self.image.to_string(),
                    what: what.to_string(),
                    expected: expected.clone(),
                    actual: digest.to_string(),
                });
            }
        }
        Ok(digest)
    }

    /// A stream of the blob `digest` (not yet verified: the caller hashes it).
    pub async fn blob_stream(
        &self,
        digest: &Digest,
        size: u64,
        media_type: &str,
        urls: Option<Vec<String>>,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, RegistryError> {
        let descriptor = OciDescriptor {
            media_type: media_type.to_string(),
            digest: digest.to_string(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            urls,
            annotations: None,
            artifact_type: None,
        };
        let what = format!("blob {digest}");
        let mut last_error = None;
        for index in 0..self.endpoints.len() {
            let auth = match self.auth_for(index).await {
                Ok(auth) => auth,
                Err(err) => {
                    last_error = Some(err);
                    continue;
                }
            };
            let endpoint = self.endpoints[index].clone();
            let reference = self.client_reference(&endpoint, &self.image);
            self.client
                .store_auth_if_needed(reference.resolve_registry(), &auth)
                .await;
            match self.client.pull_blob_stream(&reference, &descriptor).await {
                Ok(stream) => return Ok(stream.stream),
                Err(err) => {
                    let err = self.classify(err, &what, &endpoint);
                    tracing::debug!(endpoint = %endpoint.host, error = %err, "blob fetch failed");
                    last_error = Some(err);
                }
            }
        }
        Err(last_error.expect("there is always at least one endpoint"))
    }

    fn classify(
        &self,
        err: OciDistributionError,
        what: &str,
        endpoint: &Endpoint,
    ) -> RegistryError {
        let reference = self.image.to_string();
        let endpoint = endpoint.host.clone();
        let what = what.to_string();
        let not_found = |code: &OciErrorCode| {
            matches!(
                code,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound
            )
        };
        let denied =
            |code: &OciErrorCode| matches!(code, OciErrorCode::Unauthorized | OciErrorCode::Denied);
        match &err {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => RegistryError::Unauthorized {
                reference,
                endpoint,
                source: Box::new(err),
            },
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => RegistryError::Unauthorized {
                reference,
                endpoint,
                source: Box::new(err),
            },
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|e| denied(&e.code)) =>
            {
                RegistryError::Unauthorized {
                    reference,
                    endpoint,
                    source: Box::new(err),
                }
            }
            OciDistributionError::ImageManifestNotFoundError(_)
            | OciDistributionError::ServerError { code: 404, .. } => RegistryError::NotFound {
                reference,
                what,
                endpoint,
                source: Box::new(err),
            },
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|e| not_found(&e.code)) =>
            {
                RegistryError::NotFound {
                    reference,
                    what,
                    endpoint,
                    source: Box::new(err),
                }
            }
            _ => RegistryError::Unreachable {
                reference,
                what,
                endpoint,
                source: Box::new(err),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegistryHost;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "docker.io",
            "10.0.0.1:5000",
            "[fe80::1]:5000",
            "localhost.example:5000",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn mirrors_come_first_and_request_credentials_go_only_to_the_registry() {
        let mut config = RegistryConfig::default();
        config.hosts.insert(
            "docker.io".into(),
            RegistryHost {
                mirrors: vec![
                    "http://127.0.0.1:5001/".into(),
                    "https://mirror.example".into(),
                ],
                username: Some("config-user".into()),
                password: Some("pw".into()),
                ..Default::default()
            },
        );
        config.hosts.insert(
            "mirror.example".into(),
            RegistryHost {
                username: Some("mirror-user".into()),
                password: Some("mpw".into()),
                ..Default::default()
            },
        );
        let request = PullAuth {
            username: "req".into(),
            password: "rpw".into(),
            ..Default::default()
        };
        let list = endpoints(&config, "docker.io", Some(&request)).unwrap();
        let hosts: Vec<_> = list
            .iter()
            .map(|e| (e.host.as_str(), e.plain_http, e.is_mirror))
            .collect();
        assert_eq!(
            hosts,
            [
                ("127.0.0.1:5001", true, true),
                ("mirror.example", false, true),
                ("docker.io", false, false)
            ]
        );
        assert_eq!(list[0].credentials, Credentials::Anonymous);
        assert_eq!(
            list[1].credentials,
            Credentials::Basic("mirror-user".into(), "mpw".into())
        );
        assert_eq!(
            list[2].credentials,
            Credentials::Basic("req".into(), "rpw".into())
        );

        let without_request = endpoints(&config, "docker.io", None).unwrap();
        assert_eq!(
            without_request[2].credentials,
            Credentials::Basic("config-user".into(), "pw".into())
        );
    }

    #[test]
    fn loopback_and_insecure_registries_use_plain_http() {
        let mut config = RegistryConfig::default();
        config.hosts.insert(
            "registry.internal:5000".into(),
            RegistryHost {
                insecure: true,
                ..Default::default()
            },
        );
        assert!(endpoints(&config, "127.0.0.1:5000", None).unwrap()[0].plain_http);
        assert!(endpoints(&config, "registry.internal:5000", None).unwrap()[0].plain_http);
        assert!(!endpoints(&config, "quay.io", None).unwrap()[0].plain_http);
    }

    #[test]
    fn malformed_mirrors_are_refused() {
        for mirror in ["127.0.0.1:5001", "ftp://x", "http://", "http://host/path"] {
            let mut config = RegistryConfig::default();
            config.hosts.insert(
                "docker.io".into(),
                RegistryHost {
                    mirrors: vec![mirror.into()],
                    ..Default::default()
                },
            );
            assert!(
                matches!(
                    endpoints(&config, "docker.io", None),
                    Err(RegistryError::BadMirror { .. })
                ),
                "{mirror}"
            );
        }
    }
}
