//! Block devices, image mounts and container overlays; the storage errors
//! (copied-in files are in `files`).

use std::path::{Component, Path, PathBuf};

use hull_proto::spec::guest_paths;
use hull_proto::v1;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Where the scratch disk (or its tmpfs stand-in) is mounted.
pub const SCRATCH: &str = "/run/hull/scratch";

/// A storage request failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{field} must be an absolute path under {base}, without '..', got {path:?}")]
    PathOutsideBase {
        field: &'static str,
        base: &'static str,
        path: String,
    },
    #[error("{field} is missing")]
    Missing { field: &'static str },
    #[error("no block device has the serial {0:?}")]
    NoSuchSerial(String),
    #[error("block device {0} does not exist")]
    NoSuchDevice(String),
    #[error("filesystem type {0:?} is not supported (use erofs or ext4)")]
    UnsupportedFsType(String),
    #[error("file content is {len} bytes, more than the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("cannot mount {source_path} at {target}")]
    Mount {
        source_path: String,
        target: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot unmount {target}")]
    Unmount {
        target: String,
        #[source]
        source: nix::Error,
    },
    #[error("max_bytes is {requested}, more than the limit of {max}")]
    ReadTooLarge { requested: u32, max: usize },
    #[error("{path} is a symlink; refused (no component of the path may be one)")]
    Symlink { path: String },
    #[error("{path} is not a directory")]
    NotADirectory { path: String },
    #[error("{path} is not a regular file")]
    NotRegularFile { path: String },
    #[error("{path} does not exist")]
    NoSuchFile { path: String },
    #[error("cannot {action} {path}")]
    FileIo {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Checks that `path` is absolute, strictly below `base`, and has no `.` or
/// `..` components (so it cannot climb out of `base`).
pub fn path_under(
    field: &'static str,
    base: &'static str,
    path: &str,
) -> Result<PathBuf, StorageError> {
    let error = || StorageError::PathOutsideBase {
        field,
        base,
        path: path.to_owned(),
    };
    let candidate = Path::new(path);
    // `components()` drops inner "." silently, so look at the raw parts too.
    let clean = candidate
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !path.split('/').any(|part| part == "." || part == "..");
    if !clean
        || !candidate.is_absolute()
        || !candidate.starts_with(base)
        || candidate == Path::new(base)
    {
        return Err(error());
    }
    Ok(candidate.to_path_buf())
}

/// Finds the device node of a virtio block device.
pub fn find_block_device(device: Option<&v1::BlockDevice>) -> Result<PathBuf, StorageError> {
    let source = device
        .and_then(|d| d.source.as_ref())
        .ok_or(StorageError::Missing { field: "device" })?;
    match source {
        v1::block_device::Source::Path(path) => {
            let path = path_under("device.path", "/dev", path)?;
            if !path.exists() {
                return Err(StorageError::NoSuchDevice(path.display().to_string()));
            }
            Ok(path)
        }
        v1::block_device::Source::Serial(serial) => {
            let entries =
                std::fs::read_dir("/sys/block").map_err(io_error(Path::new("/sys/block")))?;
            for entry in entries.flatten() {
                let found = std::fs::read_to_string(entry.path().join("serial"))
                    .is_ok_and(|s| s.trim_end_matches(['\n', '\0']) == serial);
                if found {
                    return Ok(Path::new("/dev").join(entry.file_name()));
                }
            }
            Err(StorageError::NoSuchSerial(serial.clone()))
        }
    }
}

fn do_mount(
    source: &Path,
    target: &Path,
    fs_type: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), StorageError> {
    std::fs::create_dir_all(target).map_err(io_error(target))?;
    mount(Some(source), target, Some(fs_type), flags, data).map_err(|source_err| {
        StorageError::Mount {
            source_path: source.display().to_string(),
            target: target.display().to_string(),
            source: source_err,
        }
    })
}

/// Mounts an image device read-only (`MountImage`).
pub fn mount_image(request: &v1::MountImageRequest) -> Result<PathBuf, StorageError> {
    if !matches!(request.fs_type.as_str(), "erofs" | "ext4") {
        return Err(StorageError::UnsupportedFsType(request.fs_type.clone()));
    }
    let target = path_under("mount_point", guest_paths::IMAGES, &request.mount_point)?;
    let device = find_block_device(request.device.as_ref())?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    // ext4 must not replay its journal on a read-only, shared image.
    let data = (request.fs_type == "ext4").then_some("noload");
    do_mount(&device, &target, &request.fs_type, flags, data)?;
    Ok(target)
}

/// Unmounts what [`mount_image`] mounted.
pub fn unmount_image(mount_point: &str) -> Result<(), StorageError> {
    let target = path_under("mount_point", guest_paths::IMAGES, mount_point)?;
    unmount(&target)?;
    let _ = std::fs::remove_dir(&target);
    Ok(())
}

/// Detaches a mount (lazily: a container being torn down may still hold it).
pub fn unmount(target: &Path) -> Result<(), StorageError> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(source) => Err(StorageError::Unmount {
            target: target.display().to_string(),
            source,
        }),
    }
}

/// Whether something is mounted exactly at `path` (per /proc/self/mounts).
pub fn is_mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts
            .lines()
            .filter_map(|line| line.split(' ').nth(1))
            .any(|target| Path::new(target) == path)
    })
}

/// Mounts the pod's scratch disk at [`SCRATCH`], or a tmpfs when there is
/// none.
pub fn mount_scratch(device: Option<&v1::BlockDevice>) -> Result<(), StorageError> {
    let target = Path::new(SCRATCH);
    if is_mounted(target) {
        // Mounted by an earlier SetupSandbox (hulld restarted and repeats it).
        return Ok(());
    }
    let flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    match device.and_then(|d| d.source.as_ref()) {
        Some(_) => {
            let device = find_block_device(device)?;
            do_mount(&device, target, "ext4", flags, None)
        }
        None => do_mount(
            Path::new("tmpfs"),
            target,
            "tmpfs",
            flags,
            Some("mode=0755"),
        ),
    }
}

/// The upper and work dirs of a container's overlay, on the scratch disk.
pub fn overlay_dirs(container_id: &str) -> (PathBuf, PathBuf) {
    let base = Path::new(SCRATCH).join("containers").join(container_id);
    (base.join("upper"), base.join("work"))
}

/// Mounts a container's rootfs: overlay of `lower_dirs` (image mounts, top
/// first) with upper/work on the scratch disk.
pub fn mount_overlay(
    container_id: &str,
    lower_dirs: &[String],
    target: &Path,
) -> Result<(), StorageError> {
    if lower_dirs.is_empty() {
        return Err(StorageError::Missing {
            field: "rootfs_lower_dirs",
        });
    }
    let mut lowers = Vec::with_capacity(lower_dirs.len());
    for dir in lower_dirs {
        let dir = path_under("rootfs_lower_dirs", guest_paths::IMAGES, dir)?;
        // overlayfs treats ':' and ',' in option values specially.
        if dir.to_string_lossy().contains([':', ',']) {
            return Err(StorageError::PathOutsideBase {
                field: "rootfs_lower_dirs",
                base: guest_paths::IMAGES,
                path: dir.display().to_string(),
            });
        }
        lowers.push(dir.display().to_string());
    }
    let (upper, work) = overlay_dirs(container_id);
    for dir in [&upper, &work] {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    do_mount(
        Path::new("overlay"),
        target,
        "overlay",
        MsFlags::MS_NODEV,
        Some(&data),
    )
}

/// Unmounts a container's rootfs and removes its upper and work dirs.
pub fn remove_overlay(container_id: &str, target: &Path) -> Result<(), StorageError> {
    unmount(target)?;
    let base = Path::new(SCRATCH).join("containers").join(container_id);
    match std::fs::remove_dir_all(&base) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(&base)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_under_their_base() {
        assert!(path_under("p", "/run/hull/files", "/run/hull/files/a/b").is_ok());
        for bad in [
            "/run/hull/files",
            "/run/hull/files/../x",
            "/run/hull/files/./x",
            "run/hull/files/x",
            "/run/hull/filesx",
            "/etc/passwd",
            "",
        ] {
            assert!(path_under("p", "/run/hull/files", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn device_paths_are_checked() {
        let device = v1::BlockDevice {
            source: Some(v1::block_device::Source::Path("/etc/../dev/vda".into())),
        };
        assert!(matches!(
            find_block_device(Some(&device)),
            Err(StorageError::PathOutsideBase { .. })
        ));
        let device = v1::BlockDevice {
            source: Some(v1::block_device::Source::Path(
                "/dev/hull-no-such-device".into(),
            )),
        };
        assert!(matches!(
            find_block_device(Some(&device)),
            Err(StorageError::NoSuchDevice(_))
        ));
        assert!(matches!(
            find_block_device(None),
            Err(StorageError::Missing { .. })
        ));
    }

    #[test]
    fn mount_image_rejects_other_filesystems_before_touching_anything() {
        let request = v1::MountImageRequest {
            device: None,
            fs_type: "nfs".into(),
            mount_point: "/run/hull/images/a".into(),
        };
        assert!(matches!(
            mount_image(&request),
            Err(StorageError::UnsupportedFsType(_))
        ));
    }
}
