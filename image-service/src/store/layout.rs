//! Where things live under the store root, and the atomic-write helpers that
//! make every file appear whole or not at all.
//!
//! ```text
//! <root>/blobs/sha256/<hex>          manifests, indexes, configs, layers (as pulled)
//! <root>/images/<config hex>/        one folder per image, renamed into place whole:
//!     image.json                     the image record
//!     rootfs.erofs                   the read-only filesystem image pods attach
//! <root>/refs/<sha256 of name>.json  one record per repo tag / repo digest
//! <root>/tmp/                        everything in progress; emptied by `open()`
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::Digest;

/// Paths of one store.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

/// File name of the image record inside an image folder.
pub const IMAGE_RECORD: &str = "image.json";
/// File name of the filesystem image inside an image folder.
pub const ROOTFS_EROFS: &str = "rootfs.erofs";

impl Layout {
    /// The layout under `root`.
    pub fn new(root: &Path) -> Self {
        Layout {
            root: root.to_path_buf(),
        }
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Folder of blobs.
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    /// Path of one blob.
    pub fn blob(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// Folder of image folders.
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    /// Folder of one image (by its config digest).
    pub fn image_dir(&self, id: &Digest) -> PathBuf {
        self.images_dir().join(id.hex())
    }

    /// Folder of reference records.
    pub fn refs_dir(&self) -> PathBuf {
        self.root.join("refs")
    }

    /// Path of the record for reference `name`.
    pub fn ref_record(&self, name: &str) -> PathBuf {
        self.refs_dir()
            .join(format!("{}.json", Digest::of(name.as_bytes()).hex()))
    }

    /// Folder for work in progress.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A fresh, unused path under the tmp folder.
    pub fn tmp_path(&self, purpose: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir()
            .join(format!("{purpose}-{}-{n}", std::process::id()))
    }

    /// Creates the folders of the layout.
    pub fn create_dirs(&self) -> io::Result<()> {
        for dir in [
            self.blobs_dir(),
            self.images_dir(),
            self.refs_dir(),
            self.tmp_dir(),
        ] {
            fs::create_dir_all(dir)?;
        }
        Ok(())
    }
}

/// Flushes a folder's entries (a rename or create in it) to disk.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `data` to `path` atomically: a temp file in `tmp_dir`, fsync, rename
/// over `path`, fsync of `path`'s folder. `tmp_dir` must be on the same
/// filesystem as `path`.
pub fn write_atomic(path: &Path, tmp: &Path, data: &[u8]) -> io::Result<()> {
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        fs::rename(tmp, path)?;
        fsync_dir(path.parent().unwrap_or(Path::new("/")))
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

/// Removes a file or a folder tree; absent is fine.
pub fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.create_dirs().unwrap();
        let target = layout.refs_dir().join("a.json");
        write_atomic(&target, &layout.tmp_path("ref"), b"first").unwrap();
        write_atomic(&target, &layout.tmp_path("ref"), b"second").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"second");
        assert_eq!(fs::read_dir(layout.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn ref_record_paths_do_not_depend_on_reference_characters() {
        let layout = Layout::new(Path::new("/store"));
        let path = layout.ref_record("docker.io/../../etc/passwd:latest");
        assert_eq!(path.parent().unwrap(), Path::new("/store/refs"));
    }
}
