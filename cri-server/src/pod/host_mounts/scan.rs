//! A host mount's tree as hull sees it: one [`Entry`] per directory, file
//! and symlink, read without ever following a symlink, with the limits
//! checked.
//!
//! The walk holds each directory open while it reads it and goes down
//! through `/proc/self/fd/<dir>/<name>`: the kernel resolves that magic
//! link to the very directory already open, so a directory swapped for a
//! symlink mid-walk cannot lead the walk (and the copy) out of the mount.
//! A directory whose listing changed while it was read (its mtime or ctime
//! moved), or a symlink inside the mount that leads to an entry the walk did
//! not see, means the host changed under the walk (the kubelet swapping a
//! volume's `..data`): the walk is repeated.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, Metadata};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Bytes, HostMountError, MAX_FILE_BYTES, MAX_MOUNT_BYTES, MAX_MOUNT_ENTRIES};

/// Walks of a tree that changed while it was walked, before giving up.
const SCAN_ATTEMPTS: usize = 4;
/// Pause between walks of a changing tree (the kubelet's volume update takes
/// milliseconds).
const SCAN_RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Symlinks followed when checking where a link inside the mount leads
/// (Linux's own limit).
const MAX_LINK_HOPS: usize = 40;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    Regular,
    Symlink { target: String },
}

/// One directory, file or symlink of a host tree, with what tells whether
/// it changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    /// Permission bits with setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Modification and status-change times, in nanoseconds.
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub dev: u64,
    pub ino: u64,
}

impl Entry {
    fn from_metadata(kind: EntryKind, meta: &Metadata) -> Self {
        let nanos = |secs: i64, nsecs: i64| i128::from(secs) * 1_000_000_000 + i128::from(nsecs);
        Self {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            mtime_ns: nanos(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: nanos(meta.ctime(), meta.ctime_nsec()),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Directory
    }

    /// Whether the guest copy of `self` is still right for `other`: the
    /// same kind, owner and mode, the same link target, and for files the
    /// same size, times and inode.
    pub fn same_copy(&self, other: &Entry) -> bool {
        let owner = (self.mode, self.uid, self.gid) == (other.mode, other.uid, other.gid);
        match (&self.kind, &other.kind) {
            (EntryKind::Directory, EntryKind::Directory) => owner,
            (EntryKind::Symlink { target: a }, EntryKind::Symlink { target: b }) => {
                a == b && (self.uid, self.gid) == (other.uid, other.gid)
            }
            (EntryKind::Regular, EntryKind::Regular) => {
                owner
                    && (self.size, self.mtime_ns, self.ctime_ns, self.dev, self.ino)
                        == (
                            other.size,
                            other.mtime_ns,
                            other.ctime_ns,
                            other.dev,
                            other.ino,
                        )
            }
            _ => false,
        }
    }
}

/// A tree, keyed by path relative to the mount root ("" is the root,
/// components joined with `/`). Key order puts a directory before
/// everything under it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    entries: BTreeMap<String, Entry>,
}

/// `rel` joined under `parent` ("" is the root).
pub fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

/// Whether `rel` is `root` or lies under it.
pub fn is_within(rel: &str, root: &str) -> bool {
    root.is_empty()
        || rel == root
        || (rel.len() > root.len() && rel.starts_with(root) && rel.as_bytes()[root.len()] == b'/')
}

impl Snapshot {
    pub fn get(&self, rel: &str) -> Option<&Entry> {
        self.entries.get(rel)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries
            .iter()
            .map(|(rel, entry)| (rel.as_str(), entry))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn root_is_dir(&self) -> bool {
        self.entries.get("").is_some_and(Entry::is_dir)
    }

    /// Bytes of regular files.
    pub fn bytes(&self) -> u64 {
        self.entries
            .values()
            .filter(|e| e.kind == EntryKind::Regular)
            .map(|e| e.size)
            .sum()
    }

    pub fn insert(&mut self, rel: String, entry: Entry) {
        self.entries.insert(rel, entry);
    }

    /// Drops `rel` and everything under it.
    pub fn remove_tree(&mut self, rel: &str) {
        self.entries.retain(|key, _| !is_within(key, rel));
    }

    /// Where the symlink at `rel` leads, following links inside the tree:
    /// `Some(true)` when it reaches an entry of the tree, `Some(false)` when
    /// it reaches nothing, `None` when it leaves the tree (an absolute
    /// target, more `..` than depth, a loop).
    pub fn link_reaches_entry(&self, rel: &str) -> Option<bool> {
        let Some(Entry {
            kind: EntryKind::Symlink { target },
            ..
        }) = self.entries.get(rel)
        else {
            return Some(true);
        };
        let mut done: Vec<&str> = parent_components(rel);
        let mut todo: VecDeque<&str> = relative_components(target)?.collect();
        let mut hops = 0;
        while let Some(part) = todo.pop_front() {
            match part {
                "" | "." => {}
                ".." => {
                    done.pop()?;
                }
                name => {
                    done.push(name);
                    match self.entries.get(&done.join("/")) {
                        None => return Some(false),
                        Some(Entry {
                            kind: EntryKind::Symlink { target },
                            ..
                        }) => {
                            hops += 1;
                            if hops > MAX_LINK_HOPS {
                                return None;
                            }
                            done.pop();
                            for part in relative_components(target)?.rev() {
                                todo.push_front(part);
                            }
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        Some(true)
    }
}

/// The components of the directory holding `rel`.
pub fn parent_components(rel: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = rel.split('/').collect();
    parts.pop();
    parts
}

/// The components of a relative symlink target; `None` for an absolute one.
pub fn relative_components(target: &str) -> Option<impl DoubleEndedIterator<Item = &str>> {
    (!target.starts_with('/')).then(|| target.split('/'))
}

/// Why one walk did not produce a snapshot.
enum WalkError {
    /// The tree changed under the walk: walk again.
    Changed,
    Fatal(HostMountError),
}

impl From<HostMountError> for WalkError {
    fn from(err: HostMountError) -> Self {
        Self::Fatal(err)
    }
}

struct Walk<'a> {
    /// The host path as the kubelet gave it, for messages.
    shown: &'a Path,
    snapshot: Snapshot,
}

fn through(dir: &File, name: &std::ffi::OsStr) -> PathBuf {
    Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name)
}

fn open_dir(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
}

/// An error that means the entry changed kind or vanished since it was
/// looked at.
fn is_race(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR | libc::EINVAL)
    )
}

fn times(meta: &Metadata) -> (i64, i64, i64, i64) {
    (
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    )
}

impl Walk<'_> {
    fn host_path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.shown.to_path_buf()
        } else {
            self.shown.join(rel)
        }
    }

    fn io(&self, action: &'static str, rel: &str, source: std::io::Error) -> WalkError {
        if is_race(&source) {
            return WalkError::Changed;
        }
        WalkError::Fatal(HostMountError::Host {
            action,
            host_path: self.host_path(rel),
            source,
        })
    }

    /// Records one entry, checking the limits.
    fn add(
        &mut self,
        rel: String,
        meta: &Metadata,
        target: Option<String>,
    ) -> Result<(), WalkError> {
        if self.snapshot.len() >= MAX_MOUNT_ENTRIES {
            return Err(HostMountError::TooManyEntries {
                host_path: self.shown.to_path_buf(),
            }
            .into());
        }
        let file_type = meta.file_type();
        let kind = if file_type.is_dir() {
            EntryKind::Directory
        } else if file_type.is_file() {
            if meta.size() > MAX_FILE_BYTES {
                return Err(HostMountError::FileTooBig {
                    host_path: self.host_path(&rel),
                    size: Bytes(meta.size()),
                }
                .into());
            }
            EntryKind::Regular
        } else if let Some(target) = target {
            EntryKind::Symlink { target }
        } else {
            let kind = if file_type.is_socket() {
                "a socket"
            } else if file_type.is_fifo() {
                "a fifo"
            } else if file_type.is_char_device() {
                "a character device"
            } else if file_type.is_block_device() {
                "a block device"
            } else {
                // A symlink where none was expected: the resolved root
                // was swapped for one.
                return Err(WalkError::Changed);
            };
            return Err(HostMountError::UnsupportedKind {
                host_path: self.host_path(&rel),
                kind,
            }
            .into());
        };
        self.snapshot.insert(rel, Entry::from_metadata(kind, meta));
        Ok(())
    }

    /// Records the open directory `dir` at `rel` and everything under it.
    fn dir(&mut self, dir: &File, before: Metadata, rel: &str) -> Result<(), WalkError> {
        self.add(rel.to_owned(), &before, None)?;
        let mut names = Vec::new();
        let listing =
            std::fs::read_dir(through(dir, "".as_ref())).map_err(|e| self.io("list", rel, e))?;
        for entry in listing {
            names.push(entry.map_err(|e| self.io("list", rel, e))?.file_name());
        }
        for name in names {
            let Some(text) = name.to_str() else {
                return Err(HostMountError::NotUtf8 {
                    host_path: self.host_path(rel).join(&name),
                }
                .into());
            };
            let child = join(rel, text);
            let path = through(dir, &name);
            let meta = std::fs::symlink_metadata(&path).map_err(|e| self.io("stat", &child, e))?;
            if meta.is_dir() {
                let opened = open_dir(&path).map_err(|e| self.io("open", &child, e))?;
                let now = opened.metadata().map_err(|e| self.io("stat", &child, e))?;
                if (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
                    return Err(WalkError::Changed);
                }
                self.dir(&opened, now, &child)?;
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).map_err(|e| self.io("read", &child, e))?;
                let Some(target) = target.to_str() else {
                    return Err(HostMountError::NotUtf8 {
                        host_path: self.host_path(&child),
                    }
                    .into());
                };
                self.add(child, &meta, Some(target.to_owned()))?;
            } else {
                self.add(child, &meta, None)?;
            }
        }
        let after = dir.metadata().map_err(|e| self.io("stat", rel, e))?;
        if times(&after) != times(&before) {
            return Err(WalkError::Changed);
        }
        Ok(())
    }
}

fn walk(source: &Path, shown: &Path) -> Result<Snapshot, WalkError> {
    let mut walk = Walk {
        shown,
        snapshot: Snapshot::default(),
    };
    let meta = match std::fs::symlink_metadata(source) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(HostMountError::NotFound {
                host_path: shown.to_path_buf(),
            }
            .into());
        }
        Err(e) => return Err(walk.io("stat", "", e)),
    };
    if meta.is_dir() {
        let dir = open_dir(source).map_err(|e| walk.io("open", "", e))?;
        let now = dir.metadata().map_err(|e| walk.io("stat", "", e))?;
        if (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
            return Err(WalkError::Changed);
        }
        walk.dir(&dir, now, "")?;
    } else {
        walk.add(String::new(), &meta, None)?;
    }
    let bytes = walk.snapshot.bytes();
    if bytes > MAX_MOUNT_BYTES {
        return Err(HostMountError::MountTooBig {
            host_path: shown.to_path_buf(),
            size: Bytes(bytes),
        }
        .into());
    }
    Ok(walk.snapshot)
}

/// Scans the host tree at `source` (symlinks already resolved; `shown` is
/// the path to name in errors). Blocking.
pub fn scan(source: &Path, shown: &Path) -> Result<Snapshot, HostMountError> {
    for attempt in 1..=SCAN_ATTEMPTS {
        let last = attempt == SCAN_ATTEMPTS;
        match walk(source, shown) {
            Ok(snapshot) => {
                // A link inside the tree to an entry the walk did not see:
                // most likely the kubelet swapped `..data` meanwhile. On the
                // last attempt the host really has a dangling link; copy it.
                let dangling = snapshot
                    .iter()
                    .any(|(rel, _)| snapshot.link_reaches_entry(rel) == Some(false));
                if !dangling || last {
                    return Ok(snapshot);
                }
            }
            Err(WalkError::Fatal(err)) => return Err(err),
            Err(WalkError::Changed) => {}
        }
        if !last {
            std::thread::sleep(SCAN_RETRY_PAUSE);
        }
    }
    Err(HostMountError::KeptChanging {
        host_path: shown.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::os::unix::net::UnixListener;

    use super::super::test_support::KubeletVolume;
    use super::*;

    fn kinds(snapshot: &Snapshot) -> Vec<(String, String)> {
        snapshot
            .iter()
            .map(|(rel, e)| {
                let kind = match &e.kind {
                    EntryKind::Directory => "dir".to_owned(),
                    EntryKind::Regular => format!("file {}", e.size),
                    EntryKind::Symlink { target } => format!("-> {target}"),
                };
                (rel.to_owned(), kind)
            })
            .collect()
    }

    #[test]
    fn scans_the_kubelet_atomic_writer_layout() {
        let host = tempfile::tempdir().unwrap();
        let volume = KubeletVolume::new(host.path().join("vol"));
        let ts = volume.write(&[("token", b"jwt.jwt"), ("ca.crt", b"pem")]);
        let snapshot = scan(&volume.dir, &volume.dir).unwrap();
        let data = format!("-> {ts}");
        let expected: Vec<(String, String)> = [
            ("", "dir"),
            (ts.as_str(), "dir"),
            (&format!("{ts}/ca.crt"), "file 3"),
            (&format!("{ts}/token"), "file 7"),
            ("..data", data.as_str()),
            ("ca.crt", "-> ..data/ca.crt"),
            ("token", "-> ..data/token"),
        ]
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
        let mut got = kinds(&snapshot);
        got.sort();
        let mut expected = expected;
        expected.sort();
        assert_eq!(got, expected);
        for rel in ["..data", "token", "ca.crt"] {
            assert_eq!(snapshot.link_reaches_entry(rel), Some(true), "{rel}");
        }
        assert!(snapshot.root_is_dir());
        assert_eq!(snapshot.bytes(), 10);
        let token = snapshot.get(&format!("{ts}/token")).unwrap();
        assert_eq!(token.mode, 0o644);
    }

    #[test]
    fn a_single_file_is_one_entry() {
        let host = tempfile::tempdir().unwrap();
        let file = host.path().join("etc-hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        let snapshot = scan(&file, &file).unwrap();
        assert_eq!(kinds(&snapshot), [(String::new(), "file 20".to_owned())]);
        assert!(!snapshot.root_is_dir());
    }

    #[test]
    fn limits_name_the_host_path_and_the_size() {
        let host = tempfile::tempdir().unwrap();
        let dir = host.path().join("vol");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let big = dir.join("sub/big");
        let file = File::create(&big).unwrap();
        file.set_len(20 << 20).unwrap();
        let err = scan(&dir, &dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "host path {} is 20 MiB: hull copies host mounts into the pod VM and allows at \
                 most 1 MiB per file (no shared filesystem yet)",
                big.display()
            )
        );
        std::fs::remove_file(&big).unwrap();

        // Nine files of 1 MiB each: each is allowed, the mount is not.
        for i in 0..9 {
            File::create(dir.join(format!("part{i}")))
                .unwrap()
                .set_len(1 << 20)
                .unwrap();
        }
        let err = scan(&dir, &dir).unwrap_err();
        assert!(
            matches!(&err, HostMountError::MountTooBig { size: Bytes(n), .. } if *n == 9 << 20)
        );
        assert_eq!(
            err.to_string(),
            format!(
                "host path {} holds 9 MiB: hull copies host mounts into the pod VM and allows at \
                 most 8 MiB per mount (no shared filesystem yet)",
                dir.display()
            )
        );
    }

    #[test]
    fn too_many_entries_are_refused() {
        let host = tempfile::tempdir().unwrap();
        let dir = host.path().join("vol");
        std::fs::create_dir(&dir).unwrap();
        // The root plus 1023 entries is the limit.
        for i in 0..MAX_MOUNT_ENTRIES - 1 {
            symlink("x", dir.join(format!("l{i}"))).unwrap();
        }
        assert_eq!(scan(&dir, &dir).unwrap().len(), MAX_MOUNT_ENTRIES);
        std::fs::write(dir.join("one-more"), "").unwrap();
        let err = scan(&dir, &dir).unwrap_err();
        assert!(matches!(&err, HostMountError::TooManyEntries { host_path } if *host_path == dir));
        assert!(err.to_string().contains("at most 1024 per mount"), "{err}");
    }

    #[test]
    fn sockets_and_fifos_are_refused_by_name() {
        let host = tempfile::tempdir().unwrap();
        let dir = host.path().join("vol");
        std::fs::create_dir(&dir).unwrap();
        let socket = dir.join("agent.sock");
        let _listener = UnixListener::bind(&socket).unwrap();
        let err = scan(&dir, &dir).unwrap_err();
        assert!(
            matches!(&err, HostMountError::UnsupportedKind { host_path, kind: "a socket" } if *host_path == socket),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("host path {} is a socket", socket.display()))
        );
        // A socket mounted by itself.
        let err = scan(&socket, &socket).unwrap_err();
        assert!(matches!(err, HostMountError::UnsupportedKind { .. }));
        std::fs::remove_file(&socket).unwrap();
        nix_free_mkfifo(&dir.join("pipe"));
        assert!(matches!(
            scan(&dir, &dir),
            Err(HostMountError::UnsupportedKind { kind: "a fifo", .. })
        ));
    }

    /// mkfifo(1) without a nix dependency in this crate.
    fn nix_free_mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("mkfifo(1) runs");
        assert!(status.success());
    }

    #[test]
    fn symlinks_are_kept_as_they_are_and_never_followed() {
        let host = tempfile::tempdir().unwrap();
        let outside = host.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        // Far over every limit, but only reachable through links.
        File::create(outside.join("huge"))
            .unwrap()
            .set_len(100 << 20)
            .unwrap();
        let dir = host.path().join("vol");
        std::fs::create_dir(&dir).unwrap();
        symlink(&outside, dir.join("absolute")).unwrap();
        symlink("../outside/huge", dir.join("escaping")).unwrap();
        symlink("/etc/ssl/certs/ca.pem", dir.join("in-container")).unwrap();
        symlink("missing", dir.join("dangling")).unwrap();
        let snapshot = scan(&dir, &dir).unwrap();
        let links: Vec<_> = kinds(&snapshot).into_iter().skip(1).collect();
        let outside_target = format!("-> {}", outside.display());
        assert_eq!(
            links,
            [
                ("absolute".to_owned(), outside_target),
                ("dangling".to_owned(), "-> missing".to_owned()),
                ("escaping".to_owned(), "-> ../outside/huge".to_owned()),
                (
                    "in-container".to_owned(),
                    "-> /etc/ssl/certs/ca.pem".to_owned()
                ),
            ]
        );
        assert_eq!(snapshot.bytes(), 0, "nothing behind a link was counted");
        assert_eq!(snapshot.link_reaches_entry("absolute"), None);
        assert_eq!(snapshot.link_reaches_entry("escaping"), None);
        // A host tree that really has a dangling link is copied as it is
        // (after the walk is retried, in case the link was mid-update).
        assert_eq!(snapshot.link_reaches_entry("dangling"), Some(false));
    }

    #[test]
    fn links_are_followed_inside_the_tree_only() {
        let mut snapshot = Snapshot::default();
        let meta = std::fs::symlink_metadata(".").unwrap();
        let dir = Entry::from_metadata(EntryKind::Directory, &meta);
        let link = |target: &str| Entry {
            kind: EntryKind::Symlink {
                target: target.into(),
            },
            ..dir.clone()
        };
        let file = Entry {
            kind: EntryKind::Regular,
            ..dir.clone()
        };
        snapshot.insert(String::new(), dir.clone());
        snapshot.insert("..ts".into(), dir.clone());
        snapshot.insert("..ts/sub".into(), dir.clone());
        snapshot.insert("..ts/sub/key".into(), file);
        snapshot.insert("..data".into(), link("..ts"));
        snapshot.insert("sub".into(), link("..data/sub"));
        snapshot.insert("..ts/sub/up".into(), link("../../sub/key"));
        snapshot.insert("loop-a".into(), link("loop-b"));
        snapshot.insert("loop-b".into(), link("./loop-a"));
        snapshot.insert("gone".into(), link("..data/sub/nothing"));
        assert_eq!(snapshot.link_reaches_entry("sub"), Some(true));
        assert_eq!(snapshot.link_reaches_entry("..ts/sub/up"), Some(true));
        assert_eq!(snapshot.link_reaches_entry("loop-a"), None);
        assert_eq!(snapshot.link_reaches_entry("gone"), Some(false));
        snapshot.remove_tree("..ts");
        assert!(snapshot.get("..ts/sub/key").is_none() && snapshot.get("..ts").is_none());
        assert!(snapshot.get("..data").is_some());
        assert_eq!(snapshot.link_reaches_entry("sub"), Some(false));
    }

    #[test]
    fn names_that_are_not_utf8_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        let host = tempfile::tempdir().unwrap();
        let dir = host.path().join("vol");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(std::ffi::OsStr::from_bytes(b"bad\xff")), "").unwrap();
        assert!(matches!(
            scan(&dir, &dir),
            Err(HostMountError::NotUtf8 { .. })
        ));
    }

    #[test]
    fn path_helpers() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a", "b"), "a/b");
        assert!(is_within("a/b", "a") && is_within("a", "a") && is_within("x", ""));
        assert!(!is_within("ab", "a") && !is_within("a", "a/b"));
        assert_eq!(parent_components("a/b/c"), ["a", "b"]);
        assert!(parent_components("a").is_empty());
        assert!(relative_components("/abs").is_none());
    }
}
