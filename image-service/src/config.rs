//! Settings: the `[registry]` table of hulld's config file, the unpack limits,
//! and the credentials a CRI `PullImageRequest` carries.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Registry settings from hulld's config file (`[registry]` table), in the
/// spirit of containerd's `hosts.toml`.
///
/// ```toml
/// [registry.hosts."docker.io"]
/// mirrors = ["http://127.0.0.1:5001", "https://mirror.example"]
///
/// [registry.hosts."registry.internal:5000"]
/// insecure = true
/// username = "puller"
/// password = "s3cret"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Per-registry settings, keyed by the registry host as written in image
    /// references (`docker.io`, `127.0.0.1:5000`).
    pub hosts: BTreeMap<String, RegistryHost>,
}

/// Settings for one registry host.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryHost {
    /// Endpoints tried in order before the host itself, as
    /// `scheme://host[:port]` (`http://127.0.0.1:5001`,
    /// `https://mirror.example`). A mirror that fails is skipped.
    pub mirrors: Vec<String>,
    /// Plain HTTP is allowed for this host. Hosts on a loopback address may
    /// use plain HTTP without this, as Docker allows.
    pub insecure: bool,
    /// User name for HTTP basic or token authentication.
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<String>,
    /// Base64 of `user:password`, as in Docker's `config.json`.
    pub auth: Option<String>,
    /// An OAuth2 refresh token exchanged at the registry's token endpoint.
    pub identity_token: Option<String>,
}

impl fmt::Debug for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryHost")
            .field("mirrors", &self.mirrors)
            .field("insecure", &self.insecure)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field(
                "identity_token",
                &self.identity_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Credentials carried by a CRI `PullImageRequest`'s `AuthConfig`. Empty
/// strings mean "not given", as in the CRI.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PullAuth {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// Base64 of `user:password`.
    pub auth: String,
    /// The registry these credentials are for (informational; the kubelet
    /// already picked them for the image's registry).
    pub server_address: String,
    /// An OAuth2 refresh token exchanged at the registry's token endpoint.
    pub identity_token: String,
    /// A bearer token sent to the registry as is.
    pub registry_token: String,
}

impl fmt::Debug for PullAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullAuth")
            .field("username", &self.username)
            .field("server_address", &self.server_address)
            .finish_non_exhaustive()
    }
}

/// Bounds on what one image may unpack to, so that a hostile layer (a tar
/// header declaring a terabyte, a decompression bomb) is refused instead of
/// filling the disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnpackLimits {
    /// Most bytes of file content all layers of one image may unpack to.
    pub max_image_bytes: u64,
    /// Most entries (files, directories, links) all layers of one image may hold.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_image_bytes: 64 << 30,
            max_entries: 4_000_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_config_rejects_unknown_keys_and_defaults_the_rest() {
        let parsed: RegistryConfig = serde_json::from_value(serde_json::json!({
            "hosts": { "docker.io": { "mirrors": ["http://127.0.0.1:5001"] } }
        }))
        .unwrap();
        let host = &parsed.hosts["docker.io"];
        assert_eq!(host.mirrors, vec!["http://127.0.0.1:5001".to_string()]);
        assert!(!host.insecure);
        assert_eq!(host.username, None);

        let err = serde_json::from_value::<RegistryConfig>(serde_json::json!({
            "hosts": { "docker.io": { "mirror": [] } }
        }))
        .unwrap_err();
        assert!(err.to_string().contains("mirror"), "{err}");
    }

    #[test]
    fn secrets_are_not_printed_by_debug() {
        let host = RegistryHost {
            password: Some("hunter2".into()),
            auth: Some("dXNlcjpodW50ZXIy".into()),
            ..Default::default()
        };
        let auth = PullAuth {
            password: "hunter2".into(),
            registry_token: "tok3n".into(),
            ..Default::default()
        };
        let shown = format!("{host:?} {auth:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("dXNl") && !shown.contains("tok3n"));
    }
}
