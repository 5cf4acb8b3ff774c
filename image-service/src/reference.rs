//! Image references, normalized as containerd and Docker do:
//! `busybox` is `docker.io/library/busybox:latest`.

use std::fmt;

use oci_client::Reference;

/// The reference could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("{reference:?} is not a valid image reference")]
pub struct ReferenceError {
    /// The text as given.
    pub reference: String,
    #[source]
    source: oci_client::ParseError,
}

/// A normalized image reference: registry, repository, and a tag or a digest
/// (a reference carrying both is pulled by its digest).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host as in references: `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path: `library/busybox`.
    pub repository: String,
    /// Tag, when the reference names one and no digest.
    pub tag: Option<String>,
    /// Manifest digest (`sha256:…`), when the reference names one.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses and normalizes `text`.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        let parsed: Reference = text.parse().map_err(|source| ReferenceError {
            reference: text.to_string(),
            source,
        })?;
        if parsed.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError {
                reference: text.to_string(),
                source: oci_client::ParseError::NameContainsUppercase,
            });
        }
        let registry = match parsed.registry() {
            "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
            other => other.to_string(),
        };
        let digest = parsed.digest().map(str::to_string);
        let tag = if digest.is_some() {
            None
        } else {
            Some(parsed.tag().unwrap_or("latest").to_string())
        };
        Ok(ImageRef {
            registry,
            repository: parsed.repository().to_string(),
            tag,
            digest,
        })
    }

    /// `registry/repository`, as containerd prints a repo name.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag`, the CRI repo tag, if this names a tag.
    pub fn repo_tag(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|tag| format!("{}:{tag}", self.name()))
    }

    /// `registry/repository@digest` for the given manifest digest.
    pub fn repo_digest(&self, manifest_digest: &str) -> String {
        format!("{}@{manifest_digest}", self.name())
    }

    /// The same repository at a manifest digest.
    pub fn with_digest(&self, digest: &str) -> ImageRef {
        ImageRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest.to_string()),
        }
    }

    /// The reference as the registry client wants it, on `endpoint_host`
    /// (the registry itself or a mirror of it).
    pub(crate) fn to_client_reference(&self) -> Reference {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                digest.clone(),
            ),
            (None, tag) => Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                tag.clone().unwrap_or_else(|| "latest".to_string()),
            ),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => write!(f, "{}@{digest}", self.name()),
            (None, Some(tag)) => write!(f, "{}:{tag}", self.name()),
            (None, None) => write!(f, "{}", self.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn short_names_normalize_to_docker_hub_library() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.repo_tag().unwrap(), "docker.io/library/busybox:latest");
        assert_eq!(
            ImageRef::parse("docker.io/library/busybox:latest").unwrap(),
            r
        );
        assert_eq!(
            ImageRef::parse("index.docker.io/library/busybox").unwrap(),
            r
        );
        assert_eq!(
            ImageRef::parse("user/app:v2").unwrap().to_string(),
            "docker.io/user/app:v2"
        );
    }

    #[test]
    fn registry_with_port_and_digest_references() {
        let r = ImageRef::parse("127.0.0.1:5000/test:v1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "test");
        assert_eq!(r.repo_tag().unwrap(), "127.0.0.1:5000/test:v1");

        let d = ImageRef::parse(&format!("localhost:5000/a/b@{DIGEST}")).unwrap();
        assert_eq!(d.registry, "localhost:5000");
        assert_eq!(d.tag, None);
        assert_eq!(d.digest.as_deref(), Some(DIGEST));
        assert_eq!(d.repo_tag(), None);
        assert_eq!(d.to_string(), format!("localhost:5000/a/b@{DIGEST}"));

        let both = ImageRef::parse(&format!("busybox:1.36@{DIGEST}")).unwrap();
        assert_eq!(both.tag, None, "a digest reference is pulled by digest");
    }

    #[test]
    fn invalid_references_are_refused() {
        for bad in ["", "UPPER/case", "a b", "busybox@sha256:xyz", "-lead"] {
            let err = ImageRef::parse(bad).map(|r| r.to_string()).expect_err(bad);
            assert_eq!(err.reference, bad);
        }
    }
}
