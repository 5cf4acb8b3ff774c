//! Host mounts (CRI `Mount`s) copied into the pod VM.
//!
//! hull has no shared filesystem between the host and a pod VM yet, so the
//! host directories and files the kubelet hands a container — the
//! service-account token, configmaps, secrets, downward API, `/etc/hosts`,
//! the termination-message file — are copied into the guest with the
//! agent's `CopyFile` (under `/run/hull/files/<container-id>/`), and the
//! container bind-mounts the copy. The steps, in the order hulld uses them:
//!
//! 1. [`plan`] (CreateContainer; blocking): checks every mount and scans its
//!    host tree into a [`MountPlan`]; [`MountPlan::bind_mounts`] gives the
//!    container's bind mounts for `hull_proto::spec::ContainerSpecInput`.
//! 2. [`copy_in`]: writes the copies (directories first, then files, then
//!    symlinks) and returns the [`GuestCopy`] the guest now holds.
//! 3. [`spawn_sync`]: while the container lives, rescans its read-only
//!    directory mounts every [`SYNC_INTERVAL`] and mirrors changes, so
//!    rotated tokens and updated configmaps reach the container; dropping
//!    the [`SyncHandle`] ends it. After a hulld restart, a fresh plan and
//!    [`GuestCopy::assumed`] start it again.
//! 4. [`write_back`] (after the container exits): copies writable single
//!    files (the termination message) back to the host, where the kubelet
//!    reads them.
//! 5. [`remove_guest_copies`] (RemoveContainer).
//!
//! # Decisions
//!
//! - **What is copied.** Regular files (mode, owner, group kept), directories
//!   (walked recursively, without following symlinks) and symlinks. Sockets,
//!   fifos and devices are refused with an error naming the path: a copy of
//!   a socket cannot connect to anything, and a silently missing entry fails
//!   later in a more confusing way (Kata's copy mode, used when it has no
//!   shared filesystem, skips such entries, and a whole mount whose root is
//!   one, with only a debug log).
//! - **Symlinks are copied as they are**, target text unchanged, whether it
//!   stays inside the mount (the kubelet's `token -> ..data/token`,
//!   `..data -> ..2026_…`) or leaves it. Under containerd a bind-mounted
//!   directory shows its symlinks unchanged too and the container resolves
//!   them in its own mount namespace; a copy bind-mounted at the same place
//!   resolves them exactly the same way, so refusing links that leave the
//!   mount would only break pods that work under containerd. Kata's copy
//!   mode also sends links unchanged. hulld itself never follows a link in
//!   a host tree: nothing outside the mount is read.
//! - **The mount root is resolved** (symlinks followed), as the CRI asks
//!   runtimes to and containerd does; a `host_path` that does not exist is an
//!   error naming it (the kubelet creates every host path before
//!   CreateContainer).
//! - **Limits** ([`MAX_FILE_BYTES`], [`MAX_MOUNT_BYTES`],
//!   [`MAX_MOUNT_ENTRIES`]): the copies live in the guest's RAM (`/run` is a
//!   tmpfs) and are rescanned every few seconds; a mount over a limit is an
//!   error that names the host path, its size and the limit.
//! - **Mount propagation**: only private. containerd turns HostToContainer
//!   into `rslave` and Bidirectional into `rshared` (and fails the container
//!   if the host mount is not shared), so mounts made later on one side
//!   appear on the other. Copies cannot do that in either direction, so both
//!   are refused with an error rather than quietly ignored (firecracker-
//!   containerd has the same gap; Kata has them only with its shared
//!   filesystem).
//! - **Other fields**: idmapped mounts (`uid_mappings`/`gid_mappings`) and
//!   image volumes (`image`) are refused; `selinux_relabel` is ignored (no
//!   SELinux in the guest); `recursive_read_only` needs nothing more than
//!   `ro`, since a copy has no submounts.
//! - **Who keeps what up to date** ([`UpdatePolicy`]): read-only
//!   directories are kept in sync from the host; read-only single files are
//!   copied once, because the container's bind mount holds the file's inode
//!   and an atomic replacement would never reach it (a kubelet `subPath`
//!   mount does not update under containerd either); writable single files
//!   (the termination-message file, `/etc/hosts`) are written back when the
//!   container exits; writable directories are copied once and their changes
//!   stay in the guest (emptyDir volumes belong on the pod's scratch disk,
//!   not here).
//! - **Change detection**: per entry, kind, mode, owner, group, symlink
//!   target, and for files size, mtime, ctime and inode; no content hash.
//!   Hashing would read every byte of every mount every round (up to 8 MiB
//!   per mount every few seconds), while the kubelet never rewrites a file
//!   in place (it writes a new timestamped directory and swaps `..data`), and
//!   ctime, which user space cannot set, moves with every write, chmod and
//!   chown. A rewrite of the same size within one timestamp tick is the only
//!   change missed, until the next change.
//! - **Update order**: new directories, then files, then symlinks (a link is
//!   updated after the links it resolves through), then removals (links and
//!   files, then directories). That is the kubelet's own order, so the
//!   container never sees `..data`, a kept key or a new key dangle (a
//!   dropped key's link dangles from the swap to its removal, as on the
//!   host). hulld tracks what each request did, so a round cut short by an
//!   agent error is finished by the next. Kata's runtime watches the same
//!   volumes with inotify, but only on host paths that match the default
//!   kubelet root (its issue #9986); hull polls every read-only directory
//!   mount, whatever its path.
//! - **Termination message**: the kubelet reads the last 4096 bytes
//!   (`MaxContainerTerminationMessageLength`, with `tail.ReadAtMost`) of the
//!   host file that `ContainerStatus.mounts` names for the container's
//!   `terminationMessagePath`. [`write_back`] writes the guest copy (or its
//!   last [`MAX_WRITE_BACK_BYTES`]) into that file in place, truncating
//!   first, unless the host file changed since the copy was made (the pod's
//!   `/etc/hosts` is one file for all its containers: a sibling's write-back
//!   is not undone). ContainerStatus must list the CRI mounts with their
//!   host paths, or the kubelet finds no message.

mod diff;
mod guest;
mod scan;
mod sync;
mod write_back;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_proto::limits::MAX_COPY_FILE_BYTES;
use hull_proto::spec::{BindMount, guest_paths};
use hull_proto::validate::{self, ValidationError};
use k8s_cri::v1::{Mount, MountPropagation};

pub use guest::{GuestCopy, copy_in, remove_guest_copies};
pub use sync::{SyncHandle, spawn_sync};
pub use write_back::write_back;

use scan::Snapshot;

/// Largest regular file hull copies into a pod VM: the agent's `CopyFile`
/// limit, one request per file.
pub const MAX_FILE_BYTES: u64 = MAX_COPY_FILE_BYTES as u64;

/// Most bytes of regular files in one mount. The copies live in the guest's
/// RAM; Kubernetes caps a Secret or ConfigMap at 1 MiB and a projected volume
/// combines a few, so this leaves room while bounding what one mount costs
/// the pod VM and every rescan.
pub const MAX_MOUNT_BYTES: u64 = 8 * 1024 * 1024;

/// Most entries (files, directories and symlinks, the mount root included)
/// in one mount. Bounds the work of every rescan and the requests of a copy.
pub const MAX_MOUNT_ENTRIES: usize = 1024;

/// How often a running container's read-only directory mounts are rescanned.
/// The kubelet itself refreshes projected volumes about once a minute (its
/// pod sync period plus its configmap/secret cache), so this adds little to
/// the delay a pod already sees.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(3);

/// Most bytes [`write_back`] copies to the host: the whole guest file up to
/// this size (what [`copy_in`] accepts), else its last this many bytes. The
/// kubelet reads only the last 4096 bytes of a termination-message file.
pub const MAX_WRITE_BACK_BYTES: u64 = MAX_FILE_BYTES;

/// How long one agent request of a copy, a sync round or a write-back may
/// take before it counts as failed.
const GUEST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest sanitized host basename in a guest path.
const MAX_GUEST_NAME: usize = 64;

/// A byte count, shown the way people read sizes ("20 MiB", "1.5 KiB").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (unit, name) in units {
            if self.0 >= unit {
                let (size, unit) = (u128::from(self.0), u128::from(unit));
                let tenths = (size * 10 + unit / 2) / unit;
                let (whole, tenth) = (tenths / 10, tenths % 10);
                return if tenth == 0 {
                    write!(f, "{whole} {name}")
                } else {
                    write!(f, "{whole}.{tenth} {name}")
                };
            }
        }
        write!(f, "{} bytes", self.0)
    }
}

/// Why a host mount cannot be copied into the pod VM, kept in sync or
/// written back. Every message names the host path (or the container path,
/// before there is one).
#[derive(Debug, thiserror::Error)]
pub enum HostMountError {
    #[error(transparent)]
    ContainerId(#[from] ValidationError),
    #[error("mount at {container_path:?} has an invalid container path: it must be absolute")]
    RelativeContainerPath { container_path: String },
    #[error("mount at {container_path} has no host path")]
    NoHostPath { container_path: String },
    #[error(
        "mount at {container_path} has the relative host path {host_path:?}: it must be absolute"
    )]
    RelativeHostPath {
        container_path: String,
        host_path: String,
    },
    #[error("mount at {container_path} {what}, which hull does not support yet")]
    Unsupported {
        container_path: String,
        what: &'static str,
    },
    #[error(
        "mount at {container_path} from host path {host_path} asks for {propagation} mount \
         propagation: hull copies host mounts into the pod VM, so mounts made later on one \
         side cannot appear on the other (no shared filesystem yet); only private \
         propagation is supported"
    )]
    Propagation {
        container_path: String,
        host_path: PathBuf,
        propagation: &'static str,
    },
    #[error("host path {host_path} does not exist")]
    NotFound { host_path: PathBuf },
    #[error(
        "host path {host_path} is {kind}: hull copies host mounts into the pod VM and can copy \
         only regular files, directories and symlinks (no shared filesystem yet)"
    )]
    UnsupportedKind {
        host_path: PathBuf,
        kind: &'static str,
    },
    #[error(
        "host path {host_path} is {size}: hull copies host mounts into the pod VM and allows at \
         most {} per file (no shared filesystem yet)",
        Bytes(MAX_FILE_BYTES)
    )]
    FileTooBig { host_path: PathBuf, size: Bytes },
    #[error(
        "host path {host_path} holds {size}: hull copies host mounts into the pod VM and allows \
         at most {} per mount (no shared filesystem yet)",
        Bytes(MAX_MOUNT_BYTES)
    )]
    MountTooBig { host_path: PathBuf, size: Bytes },
    #[error(
        "host path {host_path} holds more than {max} files, directories and symlinks: hull \
         copies host mounts into the pod VM and allows at most {max} per mount (no shared \
         filesystem yet)",
        max = MAX_MOUNT_ENTRIES
    )]
    TooManyEntries { host_path: PathBuf },
    #[error(
        "host path {host_path} is not valid UTF-8 (in its name or its symlink target), which \
         the agent protocol cannot carry"
    )]
    NotUtf8 { host_path: PathBuf },
    #[error("host path {host_path} kept changing while hull copied it into the pod VM")]
    KeptChanging { host_path: PathBuf },
    #[error("cannot {action} host path {host_path}")]
    Host {
        action: &'static str,
        host_path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent could not {action} {guest_path} (the copy of host path {host_path})")]
    Agent {
        action: &'static str,
        guest_path: String,
        host_path: PathBuf,
        #[source]
        source: tonic::Status,
    },
    #[error(
        "the agent could not remove {guest_path}, the copies of container {container_id}'s host mounts"
    )]
    RemoveCopies {
        container_id: String,
        guest_path: String,
        #[source]
        source: tonic::Status,
    },
    #[error("the agent's reply to reading {guest_path} is invalid")]
    GuestReply {
        guest_path: String,
        #[source]
        source: ValidationError,
    },
}

impl HostMountError {
    /// The host changed under hulld between a scan and a copy; a fresh scan
    /// is the fix.
    fn is_host_change(&self) -> bool {
        matches!(self, Self::KeptChanging { .. })
    }
}

/// How a mount's guest copy is kept up to date once the container runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdatePolicy {
    /// A read-only directory: host changes are mirrored every
    /// [`SYNC_INTERVAL`].
    KeptInSync,
    /// A writable single file (the termination-message file, `/etc/hosts`):
    /// written back to the host when the container exits.
    WrittenBackOnExit,
    /// A read-only single file (its bind mount pins the inode, so updates
    /// could not reach the container) or a writable directory (the
    /// container's changes stay in the guest).
    CopiedOnce,
}

/// One CRI mount, checked and scanned.
#[derive(Clone, Debug)]
pub struct PlannedMount {
    /// Position in the CRI mount list (also in the guest path).
    pub index: usize,
    /// The host path as the kubelet gave it (used in messages).
    pub host_path: PathBuf,
    /// The host path with symlinks resolved: what is copied.
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub container_path: String,
    /// Where the copy lives in the guest:
    /// `/run/hull/files/<container-id>/<index>-<sanitized host basename>`.
    pub guest_path: String,
    pub readonly: bool,
    pub policy: UpdatePolicy,
    /// The host tree when it was scanned.
    snapshot: Snapshot,
}

impl PlannedMount {
    /// Whether the mount is a single file (not a directory).
    pub fn is_file(&self) -> bool {
        !self.snapshot.root_is_dir()
    }

    /// Bytes of regular files in the mount when it was scanned.
    pub fn bytes(&self) -> u64 {
        self.snapshot.bytes()
    }
}

/// Every host mount of one container.
#[derive(Clone, Debug)]
pub struct MountPlan {
    pub container_id: String,
    pub mounts: Vec<PlannedMount>,
}

impl MountPlan {
    /// The container's bind mounts of the guest copies, for
    /// `ContainerSpecInput::mounts` (which makes them `rbind`, `rprivate`,
    /// and `ro` or `rw`). Sorted by the depth of the container path, stably,
    /// as containerd and CRI-O sort CRI mounts, so a mount at `/a` never
    /// hides one at `/a/b`.
    pub fn bind_mounts(&self) -> Vec<BindMount> {
        let mut mounts: Vec<&PlannedMount> = self.mounts.iter().collect();
        mounts.sort_by_key(|m| Path::new(&m.container_path).components().count());
        mounts
            .into_iter()
            .map(|m| BindMount {
                container_path: m.container_path.clone(),
                guest_path: m.guest_path.clone(),
                readonly: m.readonly,
            })
            .collect()
    }
}

/// The guest directory that holds all of a container's copies.
pub fn guest_dir(container_id: &str) -> String {
    format!("{}/{container_id}", guest_paths::FILES)
}

/// `<index>-<basename>` with every character outside `[A-Za-z0-9._-]` replaced by
/// `_`, at most [`MAX_GUEST_NAME`] bytes of basename.
fn guest_name(index: usize, host_path: &Path) -> String {
    let base = host_path
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    let mut clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_GUEST_NAME)
        .collect();
    if clean.is_empty() {
        clean.push_str("mount");
    }
    format!("{index}-{clean}")
}

fn propagation_name(value: i32) -> Option<&'static str> {
    match MountPropagation::try_from(value) {
        Ok(MountPropagation::PropagationPrivate) => None,
        Ok(MountPropagation::PropagationHostToContainer) => Some("HostToContainer (rslave)"),
        Ok(MountPropagation::PropagationBidirectional) => Some("Bidirectional (rshared)"),
        Err(_) => Some("an unknown"),
    }
}

/// Checks one CRI mount and scans its host tree.
fn plan_mount(
    container_id: &str,
    index: usize,
    mount: &Mount,
) -> Result<PlannedMount, HostMountError> {
    let container_path = mount.container_path.clone();
    if !container_path.starts_with('/') {
        return Err(HostMountError::RelativeContainerPath { container_path });
    }
    if mount.image.is_some() {
        return Err(HostMountError::Unsupported {
            container_path,
            what: "is an image volume",
        });
    }
    if !mount.uid_mappings.is_empty() || !mount.gid_mappings.is_empty() {
        return Err(HostMountError::Unsupported {
            container_path,
            what: "asks for an idmapped mount",
        });
    }
    if mount.host_path.is_empty() {
        return Err(HostMountError::NoHostPath { container_path });
    }
    if !mount.host_path.starts_with('/') {
        return Err(HostMountError::RelativeHostPath {
            container_path,
            host_path: mount.host_path.clone(),
        });
    }
    let host_path = PathBuf::from(&mount.host_path);
    if let Some(propagation) = propagation_name(mount.propagation) {
        return Err(HostMountError::Propagation {
            container_path,
            host_path,
            propagation,
        });
    }
    let source = match std::fs::canonicalize(&host_path) {
        Ok(source) => source,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(HostMountError::NotFound { host_path });
        }
        Err(source) => {
            return Err(HostMountError::Host {
                action: "resolve",
                host_path,
                source,
            });
        }
    };
    let snapshot = scan::scan(&source, &host_path)?;
    let policy = match (mount.readonly, snapshot.root_is_dir()) {
        (true, true) => UpdatePolicy::KeptInSync,
        (true, false) => UpdatePolicy::CopiedOnce,
        (false, false) => UpdatePolicy::WrittenBackOnExit,
        (false, true) => {
            tracing::warn!(
                container_id,
                host_path = %host_path.display(),
                container_path,
                "writable host directory is copied into the pod VM once: the container's \
                 changes stay in the VM and other containers do not see them"
            );
            UpdatePolicy::CopiedOnce
        }
    };
    Ok(PlannedMount {
        index,
        guest_path: format!(
            "{}/{}",
            guest_dir(container_id),
            guest_name(index, &host_path)
        ),
        host_path,
        source,
        container_path,
        readonly: mount.readonly,
        policy,
        snapshot,
    })
}

/// Checks a container's CRI mounts and scans their host trees. Blocking
/// (file system walks): call it from `spawn_blocking`.
pub fn plan(container_id: &str, mounts: &[Mount]) -> Result<MountPlan, HostMountError> {
    validate::container_id(container_id)?;
    let mounts = mounts
        .iter()
        .enumerate()
        .map(|(index, mount)| plan_mount(container_id, index, mount))
        .collect::<Result<_, _>>()?;
    Ok(MountPlan {
        container_id: container_id.to_owned(),
        mounts,
    })
}

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::test_support::{KubeletVolume, cri_mount};
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(Bytes(300).to_string(), "300 bytes");
        assert_eq!(Bytes(1024).to_string(), "1 KiB");
        assert_eq!(Bytes(1536).to_string(), "1.5 KiB");
        assert_eq!(Bytes(20 << 20).to_string(), "20 MiB");
        assert_eq!(Bytes((8 << 20) + 1).to_string(), "8 MiB");
        assert_eq!(Bytes(3 << 30).to_string(), "3 GiB");
        assert_eq!(Bytes(u64::MAX).to_string(), "17179869184 GiB");
    }

    #[test]
    fn guest_paths_carry_the_index_and_a_clean_basename() {
        assert_eq!(
            guest_name(
                0,
                Path::new("/var/lib/kubelet/pods/u/volumes/x/kube-api-access-7x")
            ),
            "0-kube-api-access-7x"
        );
        assert_eq!(
            guest_name(3, Path::new("/a/we ird$na:me")),
            "3-we_ird_na_me"
        );
        assert_eq!(guest_name(1, Path::new("/")), "1-mount");
        assert_eq!(guest_name(2, Path::new("/a/..data")), "2-..data");
        let long = format!("/a/{}", "x".repeat(200));
        assert_eq!(guest_name(4, Path::new(&long)).len(), 2 + MAX_GUEST_NAME);
        assert_eq!(guest_dir("c1"), "/run/hull/files/c1");
    }

    #[test]
    fn plans_a_kubelet_pod_and_gives_its_bind_mounts() {
        let host = tempfile::tempdir().unwrap();
        let token = KubeletVolume::new(host.path().join("kube-api-access-abcde"));
        token.write(&[
            ("token", b"jwt"),
            ("ca.crt", b"pem"),
            ("namespace", b"default"),
        ]);
        let hosts = host.path().join("etc-hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let log = host.path().join("3b1c9a4e");
        std::fs::write(&log, "").unwrap();
        let mounts = [
            cri_mount(
                "/var/run/secrets/kubernetes.io/serviceaccount",
                &token.dir,
                true,
            ),
            cri_mount("/etc/hosts", &hosts, false),
            cri_mount("/dev/termination-log", &log, false),
        ];
        let plan = plan("c1", &mounts).unwrap();
        let policies: Vec<_> = plan.mounts.iter().map(|m| m.policy).collect();
        assert_eq!(
            policies,
            [
                UpdatePolicy::KeptInSync,
                UpdatePolicy::WrittenBackOnExit,
                UpdatePolicy::WrittenBackOnExit
            ]
        );
        assert_eq!(
            plan.mounts[0].guest_path,
            "/run/hull/files/c1/0-kube-api-access-abcde"
        );
        assert_eq!(plan.mounts[2].guest_path, "/run/hull/files/c1/2-3b1c9a4e");
        assert!(!plan.mounts[0].is_file() && plan.mounts[1].is_file());
        assert_eq!(plan.mounts[0].bytes(), 3 + 3 + 7);
        // Shallow container paths first, CRI order kept among equals.
        let binds = plan.bind_mounts();
        let order: Vec<(&str, &str, bool)> = binds
            .iter()
            .map(|b| (b.container_path.as_str(), b.guest_path.as_str(), b.readonly))
            .collect();
        assert_eq!(
            order,
            [
                ("/etc/hosts", "/run/hull/files/c1/1-etc-hosts", false),
                (
                    "/dev/termination-log",
                    "/run/hull/files/c1/2-3b1c9a4e",
                    false
                ),
                (
                    "/var/run/secrets/kubernetes.io/serviceaccount",
                    "/run/hull/files/c1/0-kube-api-access-abcde",
                    true
                ),
            ]
        );
        // They build a valid spec with the options the spec builder adds.
        let spec = hull_proto::spec::build(&hull_proto::spec::ContainerSpecInput {
            args: vec!["/pause".into()],
            mounts: binds,
            ..Default::default()
        })
        .unwrap();
        let token_mount = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/var/run/secrets/kubernetes.io/serviceaccount"))
            .unwrap();
        assert_eq!(
            token_mount.source().as_deref(),
            Some(Path::new("/run/hull/files/c1/0-kube-api-access-abcde"))
        );
        let options = token_mount.options().as_ref().unwrap();
        assert!(options.iter().any(|o| o == "rbind") && options.iter().any(|o| o == "ro"));
    }

    #[test]
    fn a_symlinked_host_path_is_resolved_and_named_as_given() {
        let host = tempfile::tempdir().unwrap();
        std::fs::create_dir(host.path().join("real")).unwrap();
        std::fs::write(host.path().join("real/f"), "x").unwrap();
        symlink("real", host.path().join("link")).unwrap();
        let plan = plan("c1", &[cri_mount("/data", &host.path().join("link"), true)]).unwrap();
        let mount = &plan.mounts[0];
        assert_eq!(
            mount.source,
            host.path().join("real").canonicalize().unwrap()
        );
        assert_eq!(mount.host_path, host.path().join("link"));
        assert_eq!(mount.guest_path, "/run/hull/files/c1/0-link");
        assert_eq!(mount.policy, UpdatePolicy::KeptInSync);
    }

    #[test]
    fn refuses_what_a_copy_cannot_do() {
        let host = tempfile::tempdir().unwrap();
        let dir = host.path().to_path_buf();
        let missing = host.path().join("gone");
        let err = plan("c1", &[cri_mount("/data", &missing, true)]).unwrap_err();
        assert!(matches!(&err, HostMountError::NotFound { host_path } if *host_path == missing));
        assert_eq!(
            err.to_string(),
            format!("host path {} does not exist", missing.display())
        );

        let mut shared = cri_mount("/data", &dir, true);
        shared.propagation = MountPropagation::PropagationBidirectional as i32;
        let err = plan("c1", &[shared.clone()]).unwrap_err();
        assert!(err.to_string().contains("Bidirectional (rshared)"), "{err}");
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );
        shared.propagation = MountPropagation::PropagationHostToContainer as i32;
        assert!(matches!(
            plan("c1", &[shared]),
            Err(HostMountError::Propagation { .. })
        ));

        let mut idmapped = cri_mount("/data", &dir, true);
        idmapped.uid_mappings.push(k8s_cri::v1::IdMapping {
            host_id: 100000,
            container_id: 0,
            length: 65536,
        });
        assert!(matches!(
            plan("c1", &[idmapped]),
            Err(HostMountError::Unsupported { .. })
        ));
        let mut image = cri_mount("/data", Path::new(""), true);
        image.image = Some(k8s_cri::v1::ImageSpec::default());
        assert!(matches!(
            plan("c1", &[image]),
            Err(HostMountError::Unsupported { .. })
        ));
        assert!(matches!(
            plan("c1", &[cri_mount("data", &dir, true)]),
            Err(HostMountError::RelativeContainerPath { .. })
        ));
        assert!(matches!(
            plan("c1", &[cri_mount("/data", Path::new(""), true)]),
            Err(HostMountError::NoHostPath { .. })
        ));
        assert!(matches!(
            plan("c1", &[cri_mount("/data", Path::new("var/lib/x"), true)]),
            Err(HostMountError::RelativeHostPath { .. })
        ));
        assert!(matches!(
            plan("../c1", &[]),
            Err(HostMountError::ContainerId(_))
        ));
    }

    #[test]
    fn writable_directories_are_copied_once_and_read_only_files_too() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("f"), "x").unwrap();
        let plan = plan(
            "c1",
            &[
                cri_mount("/scratch", host.path(), false),
                cri_mount("/etc/f", &host.path().join("f"), true),
            ],
        )
        .unwrap();
        assert_eq!(plan.mounts[0].policy, UpdatePolicy::CopiedOnce);
        assert_eq!(plan.mounts[1].policy, UpdatePolicy::CopiedOnce);
    }
}
