//! Helpers shared by the image-service registry tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

/// Checks a filesystem image with `fsck.erofs` and extracts it (ownership and
/// modes preserved, as root) into a fresh folder under `into`.
pub fn fsck_and_extract(image: &Path, into: &Path) -> Result<PathBuf> {
    ensure!(
        Path::new("/usr/bin/fsck.erofs").exists(),
        "fsck.erofs is missing; install Debian's erofs-utils (`cargo xtask deps`)"
    );
    let out_dir = into.join("extracted");
    let output = Command::new("fsck.erofs")
        .arg(format!("--extract={}", out_dir.display()))
        .arg("--preserve")
        .arg(image)
        .output()
        .context("run fsck.erofs")?;
    if !output.status.success() {
        bail!(
            "fsck.erofs rejected {}: {}{}",
            image.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(out_dir)
}

/// `dump.erofs --path=<path>` of the image: inode details as text.
pub fn dump_path(image: &Path, path: &str) -> Result<String> {
    let output = Command::new("dump.erofs")
        .arg(format!("--path={path}"))
        .arg(image)
        .output()
        .context("run dump.erofs")?;
    ensure!(
        output.status.success(),
        "dump.erofs --path={path} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Every file under `root` (relative paths), sorted.
pub fn list_tree(root: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            found.push(path.strip_prefix(root)?.to_string_lossy().into_owned());
            if entry.file_type()?.is_dir() {
                pending.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Every file under the store's tmp folder (must be empty after any pull).
pub fn tmp_leftovers(store_root: &Path) -> Result<Vec<String>> {
    list_tree(&store_root.join("tmp"))
}

/// Names of the blobs in the store.
pub fn blob_names(store_root: &Path) -> Result<Vec<String>> {
    list_tree(&store_root.join("blobs").join("sha256"))
}

/// An EROFS image mounted read-only by the kernel (loop device), unmounted on
/// drop. Needs root and loop devices; fails with the reason otherwise.
pub struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    /// Mounts `image` (`ro,nosuid,nodev,noexec`).
    pub fn new(image: &Path) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let output = Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro,nosuid,nodev,noexec"])
            .arg(image)
            .arg(dir.path())
            .output()
            .context("run mount")?;
        ensure!(
            output.status.success(),
            "mounting the EROFS image needs root, loop devices and erofs in the kernel: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(Mounted { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// `getfattr -n <name> --only-values` of `path`.
pub fn xattr(path: &Path, name: &str) -> Result<Vec<u8>> {
    let output = Command::new("getfattr")
        .args(["-h", "--only-values", "-n", name])
        .arg(path)
        .output()
        .context("run getfattr (Debian package attr)")?;
    ensure!(
        output.status.success(),
        "getfattr -n {name} {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output.stdout)
}

/// (major, minor) of a device number as Linux's `stat` returns it.
pub fn dev_major_minor(rdev: u64) -> (u64, u64) {
    (
        ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff),
        (rdev & 0xff) | ((rdev >> 12) & !0xff),
    )
}
