//! Files hulld copies into the guest (`CopyFile`), reads back (`ReadFile`)
//! and removes (`RemoveFile`), all under [`guest_paths::FILES`].
//!
//! Some of these trees are bind-mounted writable into containers (a
//! termination-message file, a writable host directory), so what is in them
//! is not the agent's to trust: a container may have put a symlink anywhere
//! in them. Every operation therefore walks the path one component at a time
//! from the base directory with `openat(O_NOFOLLOW)` and acts on the last
//! component relative to its parent's descriptor (`renameat`, `unlinkat`,
//! ...): no symlink, wherever it is, redirects a write, a read or a removal
//! out of the tree.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use hull_proto::limits::{MAX_COPY_FILE_BYTES, MAX_READ_FILE_BYTES};
use hull_proto::spec::guest_paths;
use hull_proto::v1;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, symlinkat, unlinkat};

use crate::storage::{StorageError, path_under};

/// Mode of the parent directories `CopyFile` creates.
const PARENT_DIR_MODE: u32 = 0o755;

/// The tree of copied-in files. Requests name paths under
/// [`guest_paths::FILES`]; `root` is the directory that stands for it (the
/// same path in the guest, a temporary directory in tests).
pub struct FileTree {
    root: PathBuf,
}

/// A request's path, checked and split into the components below the base.
struct Target<'a> {
    /// The path as the request gave it, for messages.
    shown: &'a str,
    /// Directories between the base and the last component.
    parents: Vec<&'a OsStr>,
    /// The last component.
    name: &'a OsStr,
}

impl<'a> Target<'a> {
    fn parse(path: &'a str) -> Result<Self, StorageError> {
        path_under("path", guest_paths::FILES, path)?;
        let relative = Path::new(path)
            .strip_prefix(guest_paths::FILES)
            .expect("path_under checked the prefix");
        let mut parts: Vec<&'a OsStr> = relative
            .components()
            .filter_map(|c| match c {
                Component::Normal(part) => Some(part),
                _ => None,
            })
            .collect();
        let name = parts.pop().expect("path_under refuses the base itself");
        Ok(Self {
            shown: path,
            parents: parts,
            name,
        })
    }

    /// The guest path of the first `depth` components below the base.
    fn prefix(&self, depth: usize) -> String {
        let mut shown = PathBuf::from(guest_paths::FILES);
        shown.extend(self.parents.iter().chain([&self.name]).take(depth));
        shown.display().to_string()
    }
}

fn is_kind(stat: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == kind
}

fn io<'a>(action: &'static str, path: &'a str) -> impl FnOnce(Errno) -> StorageError + 'a {
    move |errno| StorageError::FileIo {
        action,
        path: path.to_owned(),
        source: errno.into(),
    }
}

fn io_std<'a>(
    action: &'static str,
    path: &'a str,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::FileIo {
        action,
        path: path.to_owned(),
        source,
    }
}

/// What `openat` with `O_NOFOLLOW` failing with ELOOP or ENOTDIR meant:
/// a symlink, or something that is not a directory where one is needed.
fn classify(dir: &OwnedFd, name: &OsStr, shown: String, errno: Errno) -> StorageError {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) if is_kind(&stat, SFlag::S_IFLNK) => StorageError::Symlink { path: shown },
        Ok(_) if errno == Errno::ENOTDIR => StorageError::NotADirectory { path: shown },
        _ => io("open", &shown)(errno),
    }
}

fn temporary_name(name: &OsStr) -> Vec<u8> {
    let mut tmp = b".".to_vec();
    tmp.extend_from_slice(name.as_bytes());
    tmp.extend_from_slice(b".hull-tmp");
    tmp
}

const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_RDONLY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

impl FileTree {
    /// The tree at [`guest_paths::FILES`].
    pub fn guest() -> Self {
        Self::new(guest_paths::FILES)
    }

    /// A tree whose base directory is `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Opens the base directory; `None` when it does not exist and `create`
    /// is false. The base itself is the agent's (a tmpfs directory), so it
    /// is opened by path.
    fn open_root(&self, create: bool) -> Result<Option<OwnedFd>, StorageError> {
        let shown = guest_paths::FILES;
        if create {
            std::fs::create_dir_all(&self.root).map_err(io_std("create", shown))?;
        }
        match nix::fcntl::open(&self.root, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::ENOENT) if !create => Ok(None),
            Err(errno) => Err(io("open", shown)(errno)),
        }
    }

    /// Opens the parent directory of `target`, one component at a time,
    /// never following a symlink. Missing directories are created (mode
    /// 0755) with `create`, or end the walk with `None` without it.
    fn open_parent(
        &self,
        target: &Target<'_>,
        create: bool,
    ) -> Result<Option<OwnedFd>, StorageError> {
        let Some(mut dir) = self.open_root(create)? else {
            return Ok(None);
        };
        for (depth, part) in target.parents.iter().enumerate() {
            let shown = || target.prefix(depth + 1);
            let mut next = openat(&dir, *part, DIR_FLAGS, Mode::empty());
            if create && matches!(next, Err(Errno::ENOENT)) {
                match mkdirat(&dir, *part, Mode::from_bits_truncate(PARENT_DIR_MODE)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(errno) => return Err(io("create", &shown())(errno)),
                }
                next = openat(&dir, *part, DIR_FLAGS, Mode::empty());
            }
            dir = match next {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if !create => return Ok(None),
                Err(errno @ (Errno::ELOOP | Errno::ENOTDIR)) => {
                    return Err(classify(&dir, part, shown(), errno));
                }
                Err(errno) => return Err(io("open", &shown())(errno)),
            };
        }
        Ok(Some(dir))
    }

    /// `CopyFile`: writes a regular file, a directory or a symlink. Files
    /// and symlinks are replaced atomically (written beside, then renamed
    /// over); the owner is set before the mode, because chown clears the
    /// setuid and setgid bits.
    pub fn copy(&self, request: &v1::CopyFileRequest) -> Result<(), StorageError> {
        let target = Target::parse(&request.path)?;
        if request.data.len() > MAX_COPY_FILE_BYTES {
            return Err(StorageError::TooLarge {
                len: request.data.len(),
                max: MAX_COPY_FILE_BYTES,
            });
        }
        let kind = v1::FileKind::try_from(request.kind).unwrap_or(v1::FileKind::Unspecified);
        if kind == v1::FileKind::Symlink && request.symlink_target.is_empty() {
            return Err(StorageError::Missing {
                field: "symlink_target",
            });
        }
        let parent = self
            .open_parent(&target, true)?
            .expect("open_parent creates what is missing");
        let shown = target.shown;
        let mode = Mode::from_bits_truncate(request.mode & 0o7777);
        let (uid, gid) = (
            Some(Uid::from_raw(request.uid)),
            Some(Gid::from_raw(request.gid)),
        );
        match kind {
            v1::FileKind::Directory => {
                match mkdirat(&parent, target.name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(errno) => return Err(io("create", shown)(errno)),
                }
                let dir = match openat(&parent, target.name, DIR_FLAGS, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(errno @ (Errno::ELOOP | Errno::ENOTDIR)) => {
                        return Err(classify(&parent, target.name, shown.to_owned(), errno));
                    }
                    Err(errno) => return Err(io("open", shown)(errno)),
                };
                fchown(&dir, uid, gid).map_err(io("chown", shown))?;
                fchmod(&dir, mode).map_err(io("chmod", shown))
            }
            v1::FileKind::Symlink => {
                let tmp = temporary_name(target.name);
                let tmp = OsStr::from_bytes(&tmp);
                remove_stale(&parent, tmp, shown)?;
                symlinkat(request.symlink_target.as_str(), &parent, tmp)
                    .map_err(io("create", shown))?;
                fchownat(&parent, tmp, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(io("chown", shown))?;
                renameat(&parent, tmp, &parent, target.name).map_err(io("rename", shown))
            }
            v1::FileKind::Regular | v1::FileKind::Unspecified => {
                let tmp = temporary_name(target.name);
                let tmp = OsStr::from_bytes(&tmp);
                remove_stale(&parent, tmp, shown)?;
                let flags = OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                let fd = openat(&parent, tmp, flags, Mode::from_bits_truncate(0o600))
                    .map_err(io("create", shown))?;
                let mut file = File::from(fd);
                file.write_all(&request.data)
                    .map_err(io_std("write", shown))?;
                fchown(&file, uid, gid).map_err(io("chown", shown))?;
                fchmod(&file, mode).map_err(io("chmod", shown))?;
                file.sync_all().map_err(io_std("sync", shown))?;
                drop(file);
                renameat(&parent, tmp, &parent, target.name).map_err(io("rename", shown))
            }
        }
    }

    /// `ReadFile`: up to `max_bytes` of a regular file from `offset`.
    pub fn read(
        &self,
        request: &v1::ReadFileRequest,
    ) -> Result<v1::ReadFileResponse, StorageError> {
        let target = Target::parse(&request.path)?;
        let max = request.max_bytes as usize;
        if max > MAX_READ_FILE_BYTES {
            return Err(StorageError::ReadTooLarge {
                requested: request.max_bytes,
                max: MAX_READ_FILE_BYTES,
            });
        }
        let shown = target.shown;
        let missing = || StorageError::NoSuchFile {
            path: shown.to_owned(),
        };
        let parent = self.open_parent(&target, false)?.ok_or_else(missing)?;
        // Look before opening: opening a device or a fifo can have effects.
        let before = match fstatat(&parent, target.name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => return Err(missing()),
            Err(errno) => return Err(io("stat", shown)(errno)),
        };
        if is_kind(&before, SFlag::S_IFLNK) {
            return Err(StorageError::Symlink {
                path: shown.to_owned(),
            });
        }
        if !is_kind(&before, SFlag::S_IFREG) {
            return Err(StorageError::NotRegularFile {
                path: shown.to_owned(),
            });
        }
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match openat(&parent, target.name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Err(missing()),
            Err(Errno::ELOOP) => {
                return Err(StorageError::Symlink {
                    path: shown.to_owned(),
                });
            }
            Err(errno) => return Err(io("open", shown)(errno)),
        };
        // Replaced between the look and the open: refuse rather than guess.
        let opened = fstat(&fd).map_err(io("stat", shown))?;
        if !is_kind(&opened, SFlag::S_IFREG)
            || (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino)
        {
            return Err(StorageError::NotRegularFile {
                path: shown.to_owned(),
            });
        }
        let file = File::from(fd);
        let mut data = vec![0; max];
        let mut filled = 0;
        while filled < max {
            let at = request.offset.saturating_add(filled as u64);
            match file.read_at(&mut data[filled..], at) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_std("read", shown)(e)),
            }
        }
        data.truncate(filled);
        // The file may have grown or shrunk meanwhile: the size reported is
        // at least where the data ends, so the reply stays consistent.
        let now = fstat(file.as_fd()).map_err(io("stat", shown))?;
        let end = request.offset.saturating_add(filled as u64);
        let size = u64::try_from(now.st_size).unwrap_or(0);
        let size = if filled > 0 { size.max(end) } else { size };
        Ok(v1::ReadFileResponse {
            truncated: end < size,
            data,
            size,
        })
    }

    /// `RemoveFile`: removes a file, a symlink (not what it points to) or a
    /// directory tree. A missing path is success.
    pub fn remove(&self, path: &str) -> Result<(), StorageError> {
        let target = Target::parse(path)?;
        let shown = target.shown;
        let Some(parent) = self.open_parent(&target, false)? else {
            return Ok(());
        };
        let stat = match fstatat(&parent, target.name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => return Ok(()),
            Err(errno) => return Err(io("stat", shown)(errno)),
        };
        if !is_kind(&stat, SFlag::S_IFDIR) {
            return match unlinkat(&parent, target.name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(errno) => Err(io("remove", shown)(errno)),
            };
        }
        // std's remove_dir_all never follows a symlink inside the tree
        // (openat/unlinkat all the way down, since Rust 1.58.1). It is given
        // the directory through the parent's descriptor, whose /proc link
        // the kernel resolves to that very directory, so no component of
        // the request's path is looked up by name again.
        let through_fd = Path::new("/proc/self/fd")
            .join(parent.as_raw_fd().to_string())
            .join(target.name);
        match std::fs::remove_dir_all(&through_fd) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_std("remove", shown)(e)),
        }
    }
}

/// Removes a temporary entry a failed earlier call may have left.
fn remove_stale(parent: &OwnedFd, tmp: &OsStr, shown: &str) -> Result<(), StorageError> {
    match unlinkat(parent, tmp, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(errno) => Err(io("remove a temporary file beside", shown)(errno)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    use super::*;

    fn tree() -> (tempfile::TempDir, FileTree) {
        let dir = tempfile::tempdir().unwrap();
        let tree = FileTree::new(dir.path().join("files"));
        (dir, tree)
    }

    fn file(path: &str, data: &[u8], mode: u32) -> v1::CopyFileRequest {
        v1::CopyFileRequest {
            path: format!("{}/{path}", guest_paths::FILES),
            kind: v1::FileKind::Regular as i32,
            data: data.to_vec(),
            mode,
            uid: 1000,
            gid: 2000,
            ..Default::default()
        }
    }

    fn read(path: &str, offset: u64, max_bytes: u32) -> v1::ReadFileRequest {
        v1::ReadFileRequest {
            path: format!("{}/{path}", guest_paths::FILES),
            offset,
            max_bytes,
        }
    }

    fn guest(path: &str) -> String {
        format!("{}/{path}", guest_paths::FILES)
    }

    #[test]
    fn paths_are_split_below_the_base() {
        let target = Target::parse("/run/hull/files/c1/0-token/..data").unwrap();
        assert_eq!(target.parents, [OsStr::new("c1"), OsStr::new("0-token")]);
        assert_eq!(target.name, OsStr::new("..data"));
        assert_eq!(target.prefix(1), "/run/hull/files/c1");
        for bad in [
            "/run/hull/files",
            "/run/hull/files/",
            "/run/hull/files/../etc/passwd",
            "/run/hull/files/c1/./x",
            "/run/hull/filesx/a",
            "relative/path",
            "/etc/shadow",
        ] {
            assert!(
                matches!(
                    Target::parse(bad),
                    Err(StorageError::PathOutsideBase { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn copies_files_dirs_and_symlinks_with_owner_and_mode() {
        let (dir, tree) = tree();
        let root = dir.path().join("files");
        tree.copy(&file("c1/0-vol/..2026/token", b"secret", 0o4750))
            .unwrap();
        let token = root.join("c1/0-vol/..2026/token");
        assert_eq!(std::fs::read(&token).unwrap(), b"secret");
        let meta = std::fs::metadata(&token).unwrap();
        // The setuid bit survives: the owner is set before the mode.
        assert_eq!(meta.permissions().mode() & 0o7777, 0o4750);
        assert_eq!((meta.uid(), meta.gid()), (1000, 2000));
        // Parents are created 0755 and owned by the agent.
        let parent = std::fs::metadata(root.join("c1/0-vol")).unwrap();
        assert_eq!(parent.permissions().mode() & 0o777, 0o755);

        tree.copy(&v1::CopyFileRequest {
            path: guest("c1/0-vol/..2026"),
            kind: v1::FileKind::Directory as i32,
            mode: 0o2775,
            uid: 0,
            gid: 2000,
            ..Default::default()
        })
        .unwrap();
        let ts = std::fs::metadata(root.join("c1/0-vol/..2026")).unwrap();
        assert_eq!(ts.permissions().mode() & 0o7777, 0o2775);
        assert_eq!(ts.gid(), 2000);

        let link = |target: &str| v1::CopyFileRequest {
            path: guest("c1/0-vol/..data"),
            kind: v1::FileKind::Symlink as i32,
            symlink_target: target.into(),
            uid: 1000,
            gid: 2000,
            ..Default::default()
        };
        tree.copy(&link("..2026")).unwrap();
        tree.copy(&link("..2027")).unwrap();
        let data = root.join("c1/0-vol/..data");
        assert_eq!(
            std::fs::read_link(&data).unwrap(),
            Path::new("..2027"),
            "a symlink is replaced"
        );
        assert_eq!(std::fs::symlink_metadata(&data).unwrap().uid(), 1000);
        // Replacing a file keeps no temporary file behind.
        tree.copy(&file("c1/0-vol/..2026/token", b"rotated", 0o644))
            .unwrap();
        assert_eq!(std::fs::read(&token).unwrap(), b"rotated");
        let names: Vec<_> = std::fs::read_dir(root.join("c1/0-vol/..2026"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["token"]);
        // A symlink without a target is refused.
        assert!(matches!(
            tree.copy(&link("")),
            Err(StorageError::Missing { .. })
        ));
    }

    #[test]
    fn writes_never_go_through_a_symlink() {
        let (dir, tree) = tree();
        let root = dir.path().join("files");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(root.join("c1/0-data")).unwrap();
        // What a container could do in a writable copy.
        symlink(&outside, root.join("c1/0-data/sub")).unwrap();
        let err = tree
            .copy(&file("c1/0-data/sub/passwd", b"x", 0o644))
            .unwrap_err();
        assert!(
            matches!(&err, StorageError::Symlink { path } if path == "/run/hull/files/c1/0-data/sub"),
            "{err}"
        );
        let err = tree
            .copy(&v1::CopyFileRequest {
                path: guest("c1/0-data/sub"),
                kind: v1::FileKind::Directory as i32,
                mode: 0o777,
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(err, StorageError::Symlink { .. }), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        assert_ne!(
            std::fs::metadata(&outside).unwrap().permissions().mode() & 0o777,
            0o777
        );
        // A file where a directory is needed.
        tree.copy(&file("c1/plain", b"x", 0o644)).unwrap();
        assert!(matches!(
            tree.copy(&file("c1/plain/x", b"x", 0o644)),
            Err(StorageError::NotADirectory { .. })
        ));
    }

    #[test]
    fn reads_are_bounded_and_report_size_and_truncation() {
        let (_dir, tree) = tree();
        tree.copy(&file("c1/1-termination-log", b"0123456789", 0o666))
            .unwrap();
        let whole = tree.read(&read("c1/1-termination-log", 0, 4096)).unwrap();
        assert_eq!(whole.data, b"0123456789");
        assert_eq!((whole.size, whole.truncated), (10, false));
        let head = tree.read(&read("c1/1-termination-log", 0, 4)).unwrap();
        assert_eq!(head.data, b"0123");
        assert_eq!((head.size, head.truncated), (10, true));
        let tail = tree.read(&read("c1/1-termination-log", 6, 4)).unwrap();
        assert_eq!(tail.data, b"6789");
        assert!(!tail.truncated);
        let past = tree.read(&read("c1/1-termination-log", 50, 4)).unwrap();
        assert!(past.data.is_empty() && !past.truncated);
        let size_only = tree.read(&read("c1/1-termination-log", 0, 0)).unwrap();
        assert_eq!((size_only.data.len(), size_only.size), (0, 10));
        assert!(size_only.truncated);
        // Every reply passes the host's check.
        for (request, reply) in [
            (read("c1/1-termination-log", 0, 4), head),
            (read("c1/1-termination-log", 6, 4), tail),
            (read("c1/1-termination-log", 50, 4), past),
        ] {
            hull_proto::validate::read_file_reply(&request, &reply).unwrap();
        }
        // The protocol limit.
        let limit = MAX_READ_FILE_BYTES as u32;
        tree.copy(&file("c1/big", &vec![7; MAX_READ_FILE_BYTES + 10], 0o644))
            .unwrap();
        let most = tree.read(&read("c1/big", 0, limit)).unwrap();
        assert_eq!(most.data.len(), MAX_READ_FILE_BYTES);
        assert!(most.truncated);
        assert!(matches!(
            tree.read(&read("c1/big", 0, limit + 1)),
            Err(StorageError::ReadTooLarge { .. })
        ));
    }

    #[test]
    fn reads_refuse_symlinks_and_other_kinds() {
        let (dir, tree) = tree();
        let root = dir.path().join("files");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"host secret").unwrap();
        std::fs::create_dir_all(root.join("c1/0-data")).unwrap();
        symlink(&secret, root.join("c1/0-data/link")).unwrap();
        symlink(dir.path(), root.join("c1/0-data/dirlink")).unwrap();
        assert!(matches!(
            tree.read(&read("c1/0-data/link", 0, 100)),
            Err(StorageError::Symlink { .. })
        ));
        assert!(matches!(
            tree.read(&read("c1/0-data/dirlink/secret", 0, 100)),
            Err(StorageError::Symlink { .. })
        ));
        assert!(matches!(
            tree.read(&read("c1/0-data", 0, 100)),
            Err(StorageError::NotRegularFile { .. })
        ));
        nix::unistd::mkfifo(
            &root.join("c1/0-data/fifo"),
            Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert!(matches!(
            tree.read(&read("c1/0-data/fifo", 0, 100)),
            Err(StorageError::NotRegularFile { .. })
        ));
        for missing in ["c1/0-data/nothing", "c9/none/at/all"] {
            assert!(
                matches!(
                    tree.read(&read(missing, 0, 100)),
                    Err(StorageError::NoSuchFile { .. })
                ),
                "{missing}"
            );
        }
    }

    #[test]
    fn removes_trees_without_following_symlinks() {
        let (dir, tree) = tree();
        let root = dir.path().join("files");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        tree.copy(&file("c1/0-vol/..2026/token", b"t", 0o644))
            .unwrap();
        symlink(&outside, root.join("c1/0-vol/..2026/escape")).unwrap();
        symlink(&outside, root.join("c1/0-vol/link")).unwrap();

        // A symlink is removed, not what it points to.
        tree.remove(&guest("c1/0-vol/link")).unwrap();
        assert!(!root.join("c1/0-vol/link").exists());
        assert!(outside.join("keep").exists());
        // A directory tree goes, symlinks inside it are not followed.
        tree.remove(&guest("c1/0-vol/..2026")).unwrap();
        assert!(std::fs::symlink_metadata(root.join("c1/0-vol/..2026")).is_err());
        assert!(outside.join("keep").exists());
        // Missing paths are success, at any depth.
        tree.remove(&guest("c1/0-vol/..2026")).unwrap();
        tree.remove(&guest("c9/x/y")).unwrap();
        FileTree::new(dir.path().join("no-such-base"))
            .remove(&guest("c1"))
            .unwrap();
        // A symlinked parent is refused, and nothing behind it is touched.
        symlink(&outside, root.join("c1/sub")).unwrap();
        assert!(matches!(
            tree.remove(&guest("c1/sub/keep")),
            Err(StorageError::Symlink { .. })
        ));
        assert!(outside.join("keep").exists());
        // The whole container directory.
        tree.remove(&guest("c1")).unwrap();
        assert!(!root.join("c1").exists());
        assert!(outside.join("keep").exists());
        assert!(matches!(
            tree.remove("/run/hull/files/../x"),
            Err(StorageError::PathOutsideBase { .. })
        ));
    }

    #[test]
    fn oversized_copies_are_refused_before_anything_is_created() {
        let (dir, tree) = tree();
        let request = file("c1/big", &vec![0; MAX_COPY_FILE_BYTES + 1], 0o644);
        assert!(matches!(
            tree.copy(&request),
            Err(StorageError::TooLarge { .. })
        ));
        assert!(!dir.path().join("files").exists());
    }
}
