//! Building OCI and Docker images in memory and pushing them to a registry,
//! for tests that must not need the internet.
//!
//! ```ignore
//! let layer = Layer::new().dir("etc", 0o755).file("etc/hostname", b"pod\n", 0o644);
//! let image = ImageSpec::new().layer(layer).cmd(&["sh"]).build();
//! Pusher::new(&registry).push_image("test/app:v1", &image).await?;
//! ```
//!
//! Layers are written tar entry by tar entry, so a test can also build what
//! no honest tool would: `../` paths, absolute paths, a huge declared size.

use std::io::Write;

use sha2::{Digest as _, Sha256};

use crate::registry::TestRegistry;

/// Building or pushing a test image failed.
#[derive(Debug, thiserror::Error)]
pub enum TestImageError {
    /// Compressing a layer failed.
    #[error("cannot compress a layer")]
    Compress(#[source] std::io::Error),
    /// Reading a file for the image failed.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The registry refused or could not be reached.
    #[error("cannot push {what} to {url}")]
    Push {
        /// What was pushed.
        what: String,
        /// The request URL.
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an error status.
    #[error("pushing {what} to {url} failed with HTTP {status}: {body}")]
    Refused {
        /// What was pushed.
        what: String,
        /// The request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd (OCI media type only).
    Zstd,
}

/// Manifest flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OCI image manifest / index.
    Oci,
    /// Docker schema 2 manifest / manifest list.
    Docker,
}

#[derive(Debug, Clone)]
enum TarKind {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    CharDev(u32, u32),
    Fifo,
}

#[derive(Debug, Clone)]
struct TarEntry {
    path: Vec<u8>,
    kind: TarKind,
    mode: u32,
    uid: u64,
    gid: u64,
    xattrs: Vec<(String, Vec<u8>)>,
    declared_size: Option<u64>,
}

/// One layer: tar entries in order, and its compression.
#[derive(Debug, Clone)]
pub struct Layer {
    entries: Vec<TarEntry>,
    compression: Compression,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    /// An empty gzip layer.
    pub fn new() -> Self {
        Layer {
            entries: Vec::new(),
            compression: Compression::Gzip,
        }
    }

    /// Sets the compression.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    fn push(mut self, path: impl AsRef<[u8]>, kind: TarKind, mode: u32) -> Self {
        self.entries.push(TarEntry {
            path: path.as_ref().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            xattrs: Vec::new(),
            declared_size: None,
        });
        self
    }

    /// A folder.
    pub fn dir(self, path: impl AsRef<[u8]>, mode: u32) -> Self {
        self.push(path, TarKind::Dir, mode)
    }

    /// A regular file.
    pub fn file(self, path: impl AsRef<[u8]>, content: impl AsRef<[u8]>, mode: u32) -> Self {
        self.push(path, TarKind::File(content.as_ref().to_vec()), mode)
    }

    /// A symbolic link.
    pub fn symlink(self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        self.push(path, TarKind::Symlink(target.as_ref().to_vec()), 0o777)
    }

    /// A hard link to `target` (a path from the root, as tar stores it).
    pub fn hardlink(self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        self.push(path, TarKind::Hardlink(target.as_ref().to_vec()), 0o644)
    }

    /// A character device.
    pub fn char_device(self, path: impl AsRef<[u8]>, major: u32, minor: u32) -> Self {
        self.push(path, TarKind::CharDev(major, minor), 0o666)
    }

    /// A named pipe.
    pub fn fifo(self, path: impl AsRef<[u8]>) -> Self {
        self.push(path, TarKind::Fifo, 0o644)
    }

    /// A whiteout deleting `path` of lower layers (`dir/.wh.name`).
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let marker = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.push(marker, TarKind::File(Vec::new()), 0o644)
    }

    /// An opaque marker hiding every lower-layer child of `dir`.
    pub fn opaque(self, dir: &str) -> Self {
        self.push(
            format!("{dir}/.wh..wh..opq"),
            TarKind::File(Vec::new()),
            0o644,
        )
    }

    fn last(&mut self) -> &mut TarEntry {
        self.entries
            .last_mut()
            .expect("add an entry before setting its attributes")
    }

    /// Sets the owner of the last entry.
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        let last = self.last();
        last.uid = uid;
        last.gid = gid;
        self
    }

    /// Adds an extended attribute (PAX `SCHILY.xattr.<name>`) to the last entry.
    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.last()
            .xattrs
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    /// Makes the last entry's header declare `size` bytes whatever its
    /// content (a hostile layer).
    pub fn declared_size(mut self, size: u64) -> Self {
        self.last().declared_size = Some(size);
        self
    }

    /// The uncompressed tar stream.
    pub fn tar(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for entry in &self.entries {
            write_entry(&mut out, entry);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    /// The layer blob (compressed as set) and the digest of its tar (diff id).
    pub fn blob(&self) -> Result<(Vec<u8>, String), TestImageError> {
        let tar = self.tar();
        let diff_id = sha256_digest(&tar);
        let data = match self.compression {
            Compression::None => tar,
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&tar).map_err(TestImageError::Compress)?;
                enc.finish().map_err(TestImageError::Compress)?
            }
            Compression::Zstd => zstd::encode_all(&tar[..], 3).map_err(TestImageError::Compress)?,
        };
        Ok((data, diff_id))
    }

    fn media_type(&self, format: Format) -> &'static str {
        match (format, self.compression) {
            (Format::Oci, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
            (Format::Oci, Compression::Gzip) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (Format::Oci, Compression::Zstd) | (Format::Docker, Compression::Zstd) => {
                "application/vnd.oci.image.layer.v1.tar+zstd"
            }
            (Format::Docker, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
            (Format::Docker, Compression::Gzip) => {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            }
        }
    }
}

/// A PAX record: `"<len> <key>=<value>\n"`, where len counts the whole record.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = 1 + key.len() + 1 + value.len() + 1;
    let mut len = body_len + 1;
    while len != body_len + len.to_string().len() {
        len = body_len + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(512), 0);
}

fn write_entry(out: &mut Vec<u8>, entry: &TarEntry) {
    let mut pax = Vec::new();
    if entry.path.len() > 100 {
        pax.extend(pax_record("path", &entry.path));
    }
    let link = match &entry.kind {
        TarKind::Symlink(t) | TarKind::Hardlink(t) => Some(t.as_slice()),
        _ => None,
    };
    if let Some(link) = link.filter(|l| l.len() > 100) {
        pax.extend(pax_record("linkpath", link));
    }
    for (name, value) in &entry.xattrs {
        pax.extend(pax_record(&format!("SCHILY.xattr.{name}"), value));
    }
    if !pax.is_empty() {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::XHeader);
        header.set_size(pax.len() as u64);
        header.set_mode(0o644);
        set_name(&mut header, b"PaxHeader");
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&pax);
        pad(out);
    }

    let mut header = tar::Header::new_ustar();
    let (entry_type, content): (tar::EntryType, &[u8]) = match &entry.kind {
        TarKind::File(data) => (tar::EntryType::Regular, data),
        TarKind::Dir => (tar::EntryType::Directory, &[]),
        TarKind::Symlink(_) => (tar::EntryType::Symlink, &[]),
        TarKind::Hardlink(_) => (tar::EntryType::Link, &[]),
        TarKind::CharDev(..) => (tar::EntryType::Char, &[]),
        TarKind::Fifo => (tar::EntryType::Fifo, &[]),
    };
    header.set_entry_type(entry_type);
    header.set_mode(entry.mode);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mtime(1_700_000_000);
    header.set_size(entry.declared_size.unwrap_or(content.len() as u64));
    set_name(&mut header, &entry.path[..entry.path.len().min(100)]);
    if let Some(link) = link {
        let ustar = header.as_ustar_mut().expect("a ustar header");
        let n = link.len().min(100);
        ustar.linkname[..n].copy_from_slice(&link[..n]);
    }
    if let TarKind::CharDev(major, minor) = entry.kind {
        header
            .set_device_major(major)
            .expect("ustar has device fields");
        header
            .set_device_minor(minor)
            .expect("ustar has device fields");
    }
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(content);
    pad(out);
}

/// Writes raw name bytes (no checks: tests build hostile names on purpose).
fn set_name(header: &mut tar::Header, name: &[u8]) {
    let ustar = header.as_ustar_mut().expect("a ustar header");
    ustar.name = [0; 100];
    ustar.name[..name.len()].copy_from_slice(name);
}

/// A blob with its digest and media type.
#[derive(Debug, Clone)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Media type.
    pub media_type: String,
    /// Content.
    pub data: Vec<u8>,
}

impl Blob {
    fn new(media_type: &str, data: Vec<u8>) -> Self {
        Blob {
            digest: sha256_digest(&data),
            media_type: media_type.to_string(),
            data,
        }
    }

    fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.data.len(),
        })
    }
}

/// An image to build: layers (lowest first) and config settings.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    layers: Vec<Layer>,
    format: Format,
    config: serde_json::Map<String, serde_json::Value>,
    os: String,
    architecture: String,
}

impl Default for ImageSpec {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageSpec {
    /// An OCI linux/amd64 image with no layers yet.
    pub fn new() -> Self {
        ImageSpec {
            layers: Vec::new(),
            format: Format::Oci,
            config: serde_json::Map::new(),
            os: "linux".into(),
            architecture: "amd64".into(),
        }
    }

    /// Adds a layer on top.
    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    /// OCI or Docker schema 2 media types.
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// The platform written in the config.
    pub fn platform(mut self, os: &str, architecture: &str) -> Self {
        self.os = os.into();
        self.architecture = architecture.into();
        self
    }

    fn set(mut self, key: &str, value: serde_json::Value) -> Self {
        self.config.insert(key.into(), value);
        self
    }

    /// `config.User`.
    pub fn user(self, user: &str) -> Self {
        self.set("User", user.into())
    }

    /// `config.Env`.
    pub fn env(self, env: &[&str]) -> Self {
        self.set("Env", env.into())
    }

    /// `config.Cmd`.
    pub fn cmd(self, cmd: &[&str]) -> Self {
        self.set("Cmd", cmd.into())
    }

    /// `config.Entrypoint`.
    pub fn entrypoint(self, entrypoint: &[&str]) -> Self {
        self.set("Entrypoint", entrypoint.into())
    }

    /// `config.WorkingDir`.
    pub fn working_dir(self, dir: &str) -> Self {
        self.set("WorkingDir", dir.into())
    }

    /// Builds config, layer blobs and manifest.
    pub fn build(&self) -> Result<BuiltImage, TestImageError> {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for layer in &self.layers {
            let (data, diff_id) = layer.blob()?;
            layers.push(Blob::new(layer.media_type(self.format), data));
            diff_ids.push(diff_id);
        }
        let config = serde_json::json!({
            "architecture": self.architecture,
            "os": self.os,
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": self.layers.iter().map(|_| serde_json::json!({"created_by": "hull test image"})).collect::<Vec<_>>(),
        });
        let (config_type, manifest_type) = match self.format {
            Format::Oci => (
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.manifest.v1+json",
            ),
            Format::Docker => (
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
            ),
        };
        let config = Blob::new(
            config_type,
            serde_json::to_vec(&config).expect("JSON encodes"),
        );
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        let manifest = Blob::new(
            manifest_type,
            serde_json::to_vec(&manifest).expect("JSON encodes"),
        );
        Ok(BuiltImage {
            config,
            layers,
            manifest,
            diff_ids,
            platform: (self.os.clone(), self.architecture.clone()),
        })
    }
}

/// A built image.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The config blob (its digest is the image id).
    pub config: Blob,
    /// The layer blobs, lowest first.
    pub layers: Vec<Blob>,
    /// The manifest.
    pub manifest: Blob,
    /// Digests of the uncompressed layers.
    pub diff_ids: Vec<String>,
    /// (os, architecture).
    pub platform: (String, String),
}

impl BuiltImage {
    /// `sha256:<config digest>`, the image id.
    pub fn id(&self) -> &str {
        &self.config.digest
    }
}

/// A multi-platform index over built images, in the given order.
#[derive(Debug, Clone)]
pub struct BuiltIndex {
    /// The images.
    pub images: Vec<BuiltImage>,
    /// The index document.
    pub index: Blob,
}

/// Builds an index (OCI) or manifest list (Docker) over `images`.
pub fn build_index(images: Vec<BuiltImage>, format: Format) -> BuiltIndex {
    let media_type = match format {
        Format::Oci => "application/vnd.oci.image.index.v1+json",
        Format::Docker => "application/vnd.docker.distribution.manifest.list.v2+json",
    };
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|image| {
            let mut d = image.manifest.descriptor();
            let mut platform =
                serde_json::json!({"os": image.platform.0, "architecture": image.platform.1});
            if image.platform.1 == "arm64" {
                platform["variant"] = "v8".into();
            }
            d["platform"] = platform;
            d
        })
        .collect();
    let index =
        serde_json::json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests});
    BuiltIndex {
        images,
        index: Blob::new(
            media_type,
            serde_json::to_vec(&index).expect("JSON encodes"),
        ),
    }
}

/// Pushes blobs and manifests with the registry HTTP API (monolithic uploads).
pub struct Pusher {
    http: reqwest::Client,
    base: String,
    auth: Option<(String, String)>,
}

impl Pusher {
    /// A pusher for a test registry (with its credentials, if any).
    pub fn new(registry: &TestRegistry) -> Self {
        Self::for_url(&registry.url(), registry.auth())
    }

    /// A pusher for `http://host:port` with optional basic auth.
    pub fn for_url(base: &str, auth: Option<(&str, &str)>) -> Self {
        Pusher {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        }
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.auth {
            Some((user, password)) => req.basic_auth(user, Some(password)),
            None => req,
        }
    }

    async fn send(
        &self,
        what: &str,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, TestImageError> {
        let response = req.send().await.map_err(|source| TestImageError::Push {
            what: what.to_string(),
            url: url.to_string(),
            source,
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(TestImageError::Refused {
            what: what.to_string(),
            url: url.to_string(),
            status: response.status().as_u16(),
            body: response.text().await.unwrap_or_default(),
        })
    }

    /// Uploads one blob to `repository` (skipped if the registry has it).
    pub async fn push_blob(&self, repository: &str, blob: &Blob) -> Result<(), TestImageError> {
        let what = format!("blob {}", blob.digest);
        let head_url = format!("{}/v2/{repository}/blobs/{}", self.base, blob.digest);
        if let Ok(r) = self.request(reqwest::Method::HEAD, &head_url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        let start_url = format!("{}/v2/{repository}/blobs/uploads/", self.base);
        let started = self
            .send(
                &what,
                &start_url,
                self.request(reqwest::Method::POST, &start_url),
            )
            .await?;
        let location = started
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut upload_url = if location.starts_with("http") {
            location
        } else {
            format!("{}{location}", self.base)
        };
        upload_url.push(if upload_url.contains('?') { '&' } else { '?' });
        upload_url.push_str(&format!("digest={}", blob.digest));
        let req = self
            .request(reqwest::Method::PUT, &upload_url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(blob.data.clone());
        self.send(&what, &upload_url, req).await?;
        Ok(())
    }

    /// Puts a manifest (or index) under `reference` (a tag or its digest).
    pub async fn push_manifest(
        &self,
        repository: &str,
        reference: &str,
        manifest: &Blob,
    ) -> Result<(), TestImageError> {
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base);
        let req = self
            .request(reqwest::Method::PUT, &url)
            .header(reqwest::header::CONTENT_TYPE, &manifest.media_type)
            .body(manifest.data.clone());
        self.send(&format!("manifest {reference}"), &url, req)
            .await?;
        Ok(())
    }

    /// Pushes an image as `repository:tag`; returns the manifest digest.
    pub async fn push_image(
        &self,
        repo_tag: &str,
        image: &BuiltImage,
    ) -> Result<String, TestImageError> {
        let (repository, tag) = split_repo_tag(repo_tag);
        for blob in image.layers.iter().chain([&image.config]) {
            self.push_blob(repository, blob).await?;
        }
        self.push_manifest(repository, tag, &image.manifest).await?;
        Ok(image.manifest.digest.clone())
    }

    /// Pushes every image of an index by digest, then the index as
    /// `repository:tag`; returns the index digest.
    pub async fn push_index(
        &self,
        repo_tag: &str,
        index: &BuiltIndex,
    ) -> Result<String, TestImageError> {
        let (repository, tag) = split_repo_tag(repo_tag);
        for image in &index.images {
            for blob in image.layers.iter().chain([&image.config]) {
                self.push_blob(repository, blob).await?;
            }
            self.push_manifest(repository, &image.manifest.digest, &image.manifest)
                .await?;
        }
        self.push_manifest(repository, tag, &index.index).await?;
        Ok(index.index.digest.clone())
    }
}

fn split_repo_tag(repo_tag: &str) -> (&str, &str) {
    match repo_tag.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (repo_tag, "latest"),
    }
}

/// The static busybox Debian's `busybox-static` installs.
pub const BUSYBOX: &str = "/bin/busybox";

/// A one-layer busybox image: `/bin/busybox` (static), a symlink per applet,
/// `/etc/passwd` and `/etc/group` with root and nobody, `/tmp`; `Cmd ["sh"]`.
pub fn busybox_image() -> Result<ImageSpec, TestImageError> {
    let read_err = |source| TestImageError::Read {
        path: BUSYBOX.into(),
        source,
    };
    let binary = std::fs::read(BUSYBOX).map_err(read_err)?;
    let listing = std::process::Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .map_err(read_err)?;
    let mut layer = Layer::new();
    for dir in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "proc", "sys", "dev",
    ] {
        layer = layer.dir(dir, 0o755);
    }
    layer = layer
        .dir("tmp", 0o1777)
        .file("bin/busybox", &binary, 0o755)
        .file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            0o644,
        )
        .file("etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644);
    for applet in String::from_utf8_lossy(&listing.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        layer = layer.symlink(applet, "/bin/busybox");
    }
    Ok(ImageSpec::new()
        .layer(layer)
        .env(&["PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
        .cmd(&["sh"]))
}

/// The busybox image plus host programs (`/usr/bin/iperf3`, ...) with the
/// shared libraries `ldd` lists for them, at their host paths: a test image
/// for tools that have no static build.
pub fn busybox_with_host_programs(programs: &[&str]) -> Result<ImageSpec, TestImageError> {
    let mut files: Vec<String> = Vec::new();
    for program in programs {
        files.push(program.to_string());
        let ldd = std::process::Command::new("ldd")
            .arg(program)
            .output()
            .map_err(|source| TestImageError::Read {
                path: (*program).into(),
                source,
            })?;
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // "libx.so.1 => /lib/x86_64-linux-gnu/libx.so.1 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)".
            let path = line
                .split("=>")
                .last()
                .and_then(|rest| rest.split_whitespace().next())
                .filter(|p| p.starts_with('/'));
            if let Some(path) = path {
                files.push(path.to_string());
            }
        }
    }
    let mut layer = Layer::new();
    let mut dirs = std::collections::BTreeSet::new();
    for file in &files {
        let relative = file.trim_start_matches('/');
        let mut dir = std::path::Path::new(relative).parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_string_lossy().into_owned());
            dir = d.parent();
        }
    }
    for dir in &dirs {
        layer = layer.dir(dir, 0o755);
    }
    for file in &files {
        // Follow symlinks: the image gets the library's content at the
        // name the program asks for.
        let content = std::fs::read(file).map_err(|source| TestImageError::Read {
            path: file.into(),
            source,
        })?;
        layer = layer.file(file.trim_start_matches('/'), content, 0o755);
    }
    Ok(busybox_image()?.layer(layer))
}

/// Builds the busybox image and pushes it to `registry_url`
/// (`http://127.0.0.1:5000`) as `repo_tag` (`busybox:latest`). Returns the
/// manifest digest.
pub async fn push_busybox(
    registry_url: &str,
    auth: Option<(&str, &str)>,
    repo_tag: &str,
) -> Result<String, TestImageError> {
    let image = busybox_image()?.build()?;
    Pusher::for_url(registry_url, auth)
        .push_image(repo_tag, &image)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let rec = pax_record("path", b"x");
        assert_eq!(rec, b"9 path=x\n");
        let long = pax_record("k", &[b'v'; 95]);
        assert_eq!(long.len(), 102);
        assert!(long.starts_with(b"102 k="));
    }

    #[test]
    fn layers_read_back_with_the_tar_crate() {
        let layer = Layer::new()
            .dir("etc", 0o755)
            .file("etc/a", b"hello", 0o600)
            .owner(1000, 1001)
            .xattr("user.note", b"v")
            .symlink("link", "etc/a")
            .whiteout("etc/gone")
            .file(format!("deep/{}", "n".repeat(150)), b"", 0o644);
        let tar = layer.tar();
        let mut archive = tar::Archive::new(&tar[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            if path == "etc/a" {
                assert_eq!(entry.header().uid().unwrap(), 1000);
                let ext: Vec<_> = entry
                    .pax_extensions()
                    .unwrap()
                    .unwrap()
                    .map(|e| e.unwrap().key().unwrap().to_string())
                    .collect();
                assert_eq!(ext, ["SCHILY.xattr.user.note"]);
            }
            seen.push(path);
        }
        assert_eq!(seen[..4], ["etc", "etc/a", "link", "etc/.wh.gone"]);
        assert_eq!(seen[4].len(), 155);
    }

    #[test]
    fn repo_tag_split() {
        assert_eq!(split_repo_tag("test/app:v1"), ("test/app", "v1"));
        assert_eq!(split_repo_tag("busybox"), ("busybox", "latest"));
    }
}
