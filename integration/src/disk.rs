//! Filesystem images for guests, built from a host folder without mounting
//! anything (no root needed): ext4 with `mke2fs -d`, erofs with `mkfs.erofs`.

use std::path::Path;
use std::process::Command;

/// Errors building a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The tool is not installed.
    #[error("cannot run {tool} (Debian package {package}); run `cargo xtask deps`")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The tool ran and failed.
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed {
        tool: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

fn run(tool: &'static str, package: &'static str, cmd: &mut Command) -> Result<(), DiskError> {
    let out = cmd.output().map_err(|source| DiskError::ToolMissing {
        tool,
        package,
        source,
    })?;
    if !out.status.success() {
        return Err(DiskError::ToolFailed {
            tool,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Writes an ext4 image of `size_mib` MiB at `image` holding the tree `from`.
pub fn make_ext4(from: &Path, image: &Path, size_mib: u32) -> Result<(), DiskError> {
    run(
        "mke2fs",
        "e2fsprogs",
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-E", "root_owner=0:0", "-d"])
            .arg(from)
            .arg(image)
            .arg(format!("{size_mib}M")),
    )
}

/// Writes an erofs image at `image` holding the tree `from`.
pub fn make_erofs(from: &Path, image: &Path) -> Result<(), DiskError> {
    run(
        "mkfs.erofs",
        "erofs-utils",
        Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg("--all-root")
            .arg(image)
            .arg(from),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_start_with_their_magic() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("hello.txt"), "hi\n").unwrap();

        let ext4 = dir.path().join("fs.ext4");
        make_ext4(&tree, &ext4, 8).unwrap();
        let bytes = std::fs::read(&ext4).unwrap();
        // ext2/3/4 superblock at 1024, magic 0xEF53 at offset 56 of it.
        assert_eq!(&bytes[1024 + 56..1024 + 58], &[0x53, 0xef]);

        let erofs = dir.path().join("fs.erofs");
        make_erofs(&tree, &erofs).unwrap();
        let bytes = std::fs::read(&erofs).unwrap();
        // erofs superblock at 1024, magic 0xE0F5E1E2 little-endian.
        assert_eq!(&bytes[1024..1028], &[0xe2, 0xe1, 0xf5, 0xe0]);
    }

    #[test]
    fn failure_carries_the_tool_message() {
        let dir = tempfile::tempdir().unwrap();
        let err = make_ext4(&dir.path().join("missing"), &dir.path().join("x"), 8).unwrap_err();
        assert!(matches!(err, DiskError::ToolFailed { .. }), "{err}");
    }
}
