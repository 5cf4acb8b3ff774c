//! Files as `cargo xtask install` places them: written atomically with their
//! mode, hashed, and listed in an install manifest so that a reinstall knows
//! which files it placed (and whether anyone changed them since), and
//! `cargo xtask uninstall` removes exactly those.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What to write: bytes, or a copy of a file (binaries, kernel images).
pub enum Source<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// Writes `source` to `path` with `mode`: into a temporary file beside it,
/// flushed to disk, then renamed over `path`, so a reader (or a running
/// hulld's next exec) sees the old file or the new one, never a part.
/// Creates missing parent folders (0755).
pub fn write_atomic(path: &Path, source: Source<'_>, mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent folder", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.install-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let result = write_new(&tmp, source, mode).and_then(|()| {
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    // The rename itself reaches the disk with the folder.
    if let Ok(folder) = std::fs::File::open(dir) {
        let _ = folder.sync_all();
    }
    Ok(())
}

fn write_new(tmp: &Path, source: Source<'_>, mode: u32) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    match source {
        Source::Bytes(bytes) => file
            .write_all(bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))?,
        Source::File(from) => {
            let mut input = std::fs::File::open(from)
                .with_context(|| format!("cannot read {}", from.display()))?;
            std::io::copy(&mut input, &mut file)
                .with_context(|| format!("cannot copy {} to {}", from.display(), tmp.display()))?;
        }
    }
    // The umask may have narrowed the mode given to open().
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot flush {}", tmp.display()))?;
    Ok(())
}

/// Hex SHA-256 of a file's content.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Hex SHA-256 of bytes.
pub fn hash_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The files one install placed, as paths on the installed system (without
/// `--root`). Files that users may edit or that another install may
/// rewrite (those in /etc) carry the hash of the content written; the
/// files in the prefix are hull's alone and carry none.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// The `--prefix` of that install.
    pub prefix: PathBuf,
    pub files: Vec<ManifestEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl ManifestEntry {
    /// Whether the file is still as the install left it: for a hashed
    /// file, its content; for another, that it exists.
    pub fn unchanged_at(&self, staged: &Path) -> Result<bool> {
        match &self.sha256 {
            Some(hash) => unchanged(staged, hash),
            None => Ok(staged.symlink_metadata().is_ok()),
        }
    }
}

impl Manifest {
    /// Reads the manifest at `path`; `None` if there is none.
    pub fn read(path: &Path) -> Result<Option<Manifest>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        let manifest = serde_json::from_str(&text)
            .with_context(|| format!("{} is not an install manifest", path.display()))?;
        Ok(Some(manifest))
    }

    /// Writes the manifest (0644, atomically).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self).expect("the manifest serializes");
        text.push('\n');
        write_atomic(path, Source::Bytes(text.as_bytes()), 0o644)
    }

    /// Whether this install placed `path`.
    pub fn contains(&self, path: &Path) -> bool {
        self.files.iter().any(|e| e.path == path)
    }

    /// The hash recorded for `path`, if this install placed it hashed.
    pub fn recorded(&self, path: &Path) -> Option<&str> {
        self.files
            .iter()
            .find(|e| e.path == path)
            .and_then(|e| e.sha256.as_deref())
    }

    /// Records (or re-records) `path` with its hash, if it has one.
    pub fn record(&mut self, path: &Path, sha256: Option<String>) {
        self.files.retain(|e| e.path != path);
        self.files.push(ManifestEntry {
            path: path.to_path_buf(),
            sha256,
        });
    }
}

/// Whether `path` holds exactly the content hashed as `sha256`.
pub fn unchanged(path: &Path, sha256: &str) -> Result<bool> {
    Ok(path.is_file() && hash_file(path)? == sha256)
}

/// `path` under `root` (`/usr/local/bin/hulld` under `/stage` is
/// `/stage/usr/local/bin/hulld`).
pub fn under_root(root: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix("/") {
        Ok(relative) => root.join(relative),
        Err(_) => root.join(path),
    }
}

/// Refuses a path the unit file or the TOML config could not carry as it
/// is: only letters, digits and `/._+-`.
pub fn check_plain_path(what: &str, path: &Path) -> Result<()> {
    let Some(text) = path.to_str() else {
        bail!("{what} {} is not UTF-8", path.display());
    };
    if !path.is_absolute() {
        bail!("{what} {text:?} must be an absolute path");
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/._+-".contains(*c)))
    {
        bail!(
            "{what} {text:?} holds {c:?}; use a path of letters, digits and /._+- \
             (it goes into the unit file and the config as it is)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> Result<u32> {
        Ok(std::fs::metadata(path)?.permissions().mode() & 0o7777)
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "xtask-install-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn atomic_write_sets_the_mode_and_replaces_the_file() {
        let dir = scratch_dir("atomic");
        let path = dir.join("sub/file");
        write_atomic(&path, Source::Bytes(b"one"), 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert_eq!(mode_of(&path).unwrap(), 0o600);
        write_atomic(&path, Source::Bytes(b"two"), 0o755).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(mode_of(&path).unwrap(), 0o755);
        let copy = dir.join("copy");
        write_atomic(&copy, Source::File(&path), 0o644).unwrap();
        assert_eq!(hash_file(&copy).unwrap(), hash_bytes(b"two"));
        // No temporary file stays behind.
        let names: Vec<_> = std::fs::read_dir(dir.join("sub")).unwrap().collect();
        assert_eq!(names.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_source_is_named_and_leaves_nothing() {
        let dir = scratch_dir("missing");
        let err = write_atomic(
            &dir.join("out"),
            Source::File(Path::new("/nonexistent/vmlinux")),
            0o644,
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/vmlinux"),
            "{err:#}"
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn manifest_records_replace_earlier_ones() {
        let mut manifest = Manifest::default();
        manifest.record(Path::new("/etc/hull/config.toml"), Some("a".into()));
        manifest.record(Path::new("/etc/hull/config.toml"), Some("b".into()));
        manifest.record(Path::new("/usr/local/bin/hulld"), None);
        assert_eq!(manifest.files.len(), 2);
        assert_eq!(
            manifest.recorded(Path::new("/etc/hull/config.toml")),
            Some("b")
        );
        assert!(manifest.contains(Path::new("/usr/local/bin/hulld")));
        assert_eq!(manifest.recorded(Path::new("/usr/local/bin/hulld")), None);
        assert!(!manifest.contains(Path::new("/etc/crictl.yaml")));
    }

    #[test]
    fn paths_go_under_the_root() {
        assert_eq!(
            under_root(Path::new("/stage"), Path::new("/usr/local/bin/hulld")),
            Path::new("/stage/usr/local/bin/hulld")
        );
        assert_eq!(
            under_root(Path::new("/"), Path::new("/etc/crictl.yaml")),
            Path::new("/etc/crictl.yaml")
        );
    }

    #[test]
    fn only_plain_absolute_paths_pass() {
        check_plain_path("--prefix", Path::new("/usr/local")).unwrap();
        check_plain_path("--prefix", Path::new("/opt/hull-1.0_x+y")).unwrap();
        for bad in ["usr/local", "/opt/my hull", "/opt/%n", "/opt/\"q\""] {
            assert!(
                check_plain_path("--prefix", Path::new(bad)).is_err(),
                "{bad}"
            );
        }
    }
}
