//! The pod's named network namespace.
//!
//! Like `ip netns add`, but in a directory of hull's own (by default
//! `/run/hull/netns`): the namespace is kept alive by bind-mounting its
//! nsfs file onto `<dir>/<pod id>`, so CNI plugins get a path, hulld can
//! enter it at any time, and a restarted hulld finds what dead pods left.
//!
//! The namespace is created on a dedicated thread (`unshare(CLONE_NEWNET)`
//! affects only the calling thread), and [`PodNetns::run_in`] enters it on a
//! fresh thread that exits afterwards: no thread of hulld ever stays in a
//! pod's namespace. Everything here blocks (threads joined, mount and
//! netlink calls): async callers use `tokio::task::spawn_blocking`.
//!
//! The directory is made a mount point with shared propagation, as
//! `ip netns` does with `/run/netns`. Why: every mount namespace created
//! while a pod namespace is mounted (a container runtime, a systemd unit
//! with private mounts, ...) gets a copy of that nsfs mount, and a copy pins
//! the namespace. With the directory shared, those copies are peers or
//! slaves of ours, so the unmount in [`NetnsDir::remove`] propagates to
//! them and the namespace is really freed; with a private directory it
//! would leak (and the file could not be unlinked, `EBUSY`) until every
//! such mount namespace died. The directory only becomes its own mount
//! (a bind mount onto itself) when it is not one already, so repeated
//! starts do not stack mounts.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::rtnl::Rtnl;

/// The longest pod id accepted as a namespace file name.
pub const MAX_POD_ID_LEN: usize = 255;

/// Why a pod network namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The pod id cannot be a file name in the namespace directory.
    #[error("pod id {id:?} cannot name a network namespace: {reason}")]
    InvalidPodId {
        /// The id given.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A system call on a path failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
}

impl NetnsError {
    fn io(op: &'static str, path: &Path, source: impl Into<io::Error>) -> Self {
        NetnsError::Io {
            op,
            path: path.to_owned(),
            source: source.into(),
        }
    }
}

/// Checks that `id` can be a file name directly under the namespace
/// directory.
pub fn validate_pod_id(id: &str) -> Result<(), NetnsError> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id == "." || id == ".." {
        "it is a relative directory name"
    } else if id.contains('/') {
        "it contains '/'"
    } else if id.contains('\0') {
        "it contains a NUL byte"
    } else if id.len() > MAX_POD_ID_LEN {
        "it is longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(NetnsError::InvalidPodId {
        id: id.to_owned(),
        reason,
    })
}

/// The directory of pod network namespaces, `<root>/<pod id>` each.
#[derive(Debug)]
pub struct NetnsDir {
    root: PathBuf,
    /// Serialises create and remove within this process (the mount over a
    /// file must not be made twice by two racing creates).
    lock: Mutex<()>,
}

/// A pod's network namespace, held open (the open file keeps the namespace
/// alive even if its mount is removed meanwhile).
#[derive(Debug)]
pub struct PodNetns {
    pod_id: String,
    path: PathBuf,
    file: File,
}

impl NetnsDir {
    /// The namespace directory `root` (created on the first
    /// [`create`](Self::create)).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        NetnsDir {
            root: root.into(),
            lock: Mutex::new(()),
        }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the namespace of `pod_id` is (or would be) mounted.
    pub fn path_of(&self, pod_id: &str) -> Result<PathBuf, NetnsError> {
        validate_pod_id(pod_id)?;
        Ok(self.root.join(pod_id))
    }

    /// Creates the pod's network namespace with `lo` up, or returns the one
    /// that already exists. A file left without its mount (a crash between
    /// the two steps) is reused.
    pub fn create(&self, pod_id: &str) -> Result<PodNetns, NetnsError> {
        let path = self.path_of(pod_id)?;
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.prepare_root()?;
        if is_nsfs(&path)? {
            tracing::debug!(pod_id, path = %path.display(), "network namespace already exists");
            return open_at(pod_id, path);
        }
        // An empty file to mount onto (kept if a crash left one behind).
        OpenOptions::new()
            .read(true)
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o444)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| NetnsError::io("create the mount point file", &path, e))?;
        if let Err(err) = make_namespace(&path) {
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the mount point file after a failed create");
            }
            return Err(err);
        }
        tracing::info!(pod_id, path = %path.display(), "network namespace created");
        open_at(pod_id, path)
    }

    /// The pod's network namespace, if it exists (a file without its mount,
    /// left by a crash, is none; [`remove`](Self::remove) cleans it).
    pub fn open(&self, pod_id: &str) -> Result<Option<PodNetns>, NetnsError> {
        let path = self.path_of(pod_id)?;
        if !is_nsfs(&path)? {
            return Ok(None);
        }
        open_at(pod_id, path).map(Some)
    }

    /// Unmounts and deletes the pod's namespace file. The namespace itself
    /// goes away when nothing else holds it (an open [`PodNetns`], a tap fd
    /// in a VMM, a process inside). Missing is fine; so is removing twice.
    pub fn remove(&self, pod_id: &str) -> Result<(), NetnsError> {
        let path = self.path_of(pod_id)?;
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // More than one mount can be stacked on the file (a racing create
        // in another process); take them all off.
        for _ in 0..8 {
            match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
                Ok(()) => continue,
                // Not a mount point (any more), or no file at all.
                Err(Errno::EINVAL | Errno::ENOENT) => break,
                Err(e) => return Err(NetnsError::io("unmount", &path, e)),
            }
        }
        match fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(pod_id, path = %path.display(), "network namespace removed");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NetnsError::io("delete", &path, e)),
        }
    }

    /// The pod ids present in the directory (with or without a mounted
    /// namespace), sorted; none when the directory does not exist.
    pub fn list(&self) -> Result<Vec<String>, NetnsError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(NetnsError::io("list", &self.root, e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| NetnsError::io("list", &self.root, e))?;
            match entry.file_name().to_str() {
                Some(id) if validate_pod_id(id).is_ok() => ids.push(id.to_owned()),
                _ => tracing::warn!(
                    name = ?entry.file_name(),
                    dir = %self.root.display(),
                    "skipping a file that is no pod id"
                ),
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Creates the directory and makes it a mount point with shared
    /// propagation (see the module documentation for why).
    fn prepare_root(&self) -> Result<(), NetnsError> {
        let root = &self.root;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(root)
            .map_err(|e| NetnsError::io("create the directory", root, e))?;
        let make_shared = || {
            nix::mount::mount(
                None::<&OsStr>,
                root,
                None::<&OsStr>,
                MsFlags::MS_SHARED | MsFlags::MS_REC,
                None::<&OsStr>,
            )
        };
        match make_shared() {
            Ok(()) => return Ok(()),
            // EINVAL: not a mount point yet.
            Err(Errno::EINVAL) => {}
            Err(e) => return Err(NetnsError::io("make shared (mount)", root, e)),
        }
        nix::mount::mount(
            Some(root),
            root,
            None::<&OsStr>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&OsStr>,
        )
        .map_err(|e| NetnsError::io("bind-mount onto itself", root, e))?;
        make_shared().map_err(|e| NetnsError::io("make shared (mount)", root, e))?;
        tracing::debug!(dir = %root.display(), "network namespace directory mounted shared");
        Ok(())
    }
}

/// True when `path` is a mounted namespace (nsfs); false when it is missing
/// or a plain file.
fn is_nsfs(path: &Path) -> Result<bool, NetnsError> {
    match nix::sys::statfs::statfs(path) {
        Ok(stat) => Ok(stat.filesystem_type() == nix::sys::statfs::NSFS_MAGIC),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(NetnsError::io("inspect (statfs)", path, e)),
    }
}

fn open_at(pod_id: &str, path: PathBuf) -> Result<PodNetns, NetnsError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| NetnsError::io("open", &path, e))?;
    Ok(PodNetns {
        pod_id: pod_id.to_owned(),
        path,
        file,
    })
}

/// Creates a network namespace on a thread of its own, brings `lo` up in it
/// and bind-mounts it onto `path`. The thread exits afterwards; the mount
/// keeps the namespace.
fn make_namespace(path: &Path) -> Result<(), NetnsError> {
    let work = || -> Result<(), NetnsError> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetnsError::io("create a network namespace (unshare) for", path, e))?;
        bring_lo_up().map_err(|e| NetnsError::io("bring lo up in the namespace for", path, e))?;
        let own = Path::new("/proc/thread-self/ns/net");
        nix::mount::mount(
            Some(own),
            path,
            None::<&OsStr>,
            MsFlags::MS_BIND,
            None::<&OsStr>,
        )
        .map_err(|e| NetnsError::io("bind-mount the new network namespace onto", path, e))
    };
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("hull-netns-new".into())
            .spawn_scoped(scope, work)
            .map_err(|e| NetnsError::io("start a thread to create", path, e))?;
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

fn bring_lo_up() -> io::Result<()> {
    let mut rtnl = Rtnl::open()?;
    let lo = rtnl
        .link_by_name("lo")?
        .ok_or_else(|| io::Error::other("the new namespace has no lo"))?;
    rtnl.set_up(lo.index, true)
}

impl PodNetns {
    /// The pod this namespace belongs to.
    pub fn pod_id(&self) -> &str {
        &self.pod_id
    }

    /// The namespace's path (what CNI plugins get as `CNI_NETNS`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a fresh thread inside the namespace and returns its
    /// result. The thread exits when `f` returns, so no thread of the
    /// process stays in the pod's namespace; sockets and devices `f` opens
    /// stay in it. A panic in `f` is resumed on the caller.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let path = &self.path;
        let fd = self.file.as_fd();
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("hull-netns".into())
                .spawn_scoped(scope, move || {
                    nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)
                        .map_err(|e| NetnsError::io("enter (setns)", path, e))?;
                    Ok(f())
                })
                .map_err(|e| NetnsError::io("start a thread to enter", path, e))?;
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl AsFd for PodNetns {
    /// The open namespace file (for `setns`, `IFLA_NET_NS_FD`, `fstat`).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
pub(crate) mod tests;
