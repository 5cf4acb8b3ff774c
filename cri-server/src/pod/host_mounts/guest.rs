//! Talking to the agent about copies: the three file requests behind a small
//! trait (the agent client in production, a fake in tests), applying a
//! diff's operations to a mount's guest copy, and the first copy.

use std::future::Future;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use hull_proto::client::AgentClient;
use hull_proto::v1;
use tonic::Status;

use super::diff::{Op, diff};
use super::scan::{self, Entry, EntryKind, Snapshot};
use super::{
    Bytes, GUEST_REQUEST_TIMEOUT, HostMountError, MAX_FILE_BYTES, MountPlan, PlannedMount,
    UpdatePolicy, guest_dir,
};

/// Copies of one host tree that fail because the host keeps changing under
/// them are retried this many times, with a fresh scan each time.
const COPY_ATTEMPTS: usize = 3;

/// The agent's file requests, as host_mounts uses them.
pub trait GuestFiles {
    fn copy_file(
        &mut self,
        request: v1::CopyFileRequest,
    ) -> impl Future<Output = Result<(), Status>> + Send;
    fn read_file(
        &mut self,
        request: v1::ReadFileRequest,
    ) -> impl Future<Output = Result<v1::ReadFileResponse, Status>> + Send;
    fn remove_file(
        &mut self,
        request: v1::RemoveFileRequest,
    ) -> impl Future<Output = Result<(), Status>> + Send;
}

impl GuestFiles for AgentClient {
    async fn copy_file(&mut self, request: v1::CopyFileRequest) -> Result<(), Status> {
        v1::agent_client::AgentClient::copy_file(self, request)
            .await
            .map(drop)
    }

    async fn read_file(
        &mut self,
        request: v1::ReadFileRequest,
    ) -> Result<v1::ReadFileResponse, Status> {
        v1::agent_client::AgentClient::read_file(self, request)
            .await
            .map(tonic::Response::into_inner)
    }

    async fn remove_file(&mut self, request: v1::RemoveFileRequest) -> Result<(), Status> {
        v1::agent_client::AgentClient::remove_file(self, request)
            .await
            .map(drop)
    }
}

/// Runs one agent request with [`GUEST_REQUEST_TIMEOUT`].
pub async fn with_timeout<T>(
    request: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout(GUEST_REQUEST_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "no answer within {GUEST_REQUEST_TIMEOUT:?}"
            )))
        })
}

/// Where one mount is on both sides.
#[derive(Clone, Debug)]
pub struct Location {
    /// The host path as the kubelet gave it (messages).
    pub host_path: PathBuf,
    /// The resolved host path that is read.
    pub source: PathBuf,
    /// The copy's root in the guest.
    pub guest_path: String,
}

impl Location {
    fn of(mount: &PlannedMount) -> Self {
        Self {
            host_path: mount.host_path.clone(),
            source: mount.source.clone(),
            guest_path: mount.guest_path.clone(),
        }
    }

    pub fn guest(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.guest_path.clone()
        } else {
            format!("{}/{rel}", self.guest_path)
        }
    }

    pub fn shown(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.host_path.clone()
        } else {
            self.host_path.join(rel)
        }
    }

    fn source(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.source.clone()
        } else {
            self.source.join(rel)
        }
    }

    pub fn agent_error(
        &self,
        action: &'static str,
        rel: &str,
    ) -> impl FnOnce(Status) -> HostMountError + '_ {
        let guest_path = self.guest(rel);
        let host_path = self.shown(rel);
        move |source| HostMountError::Agent {
            action,
            guest_path,
            host_path,
            source,
        }
    }
}

/// Reads a host file for copying: opened without following a symlink, and
/// only if it is still the file the scan saw (same device and inode) and
/// still within the limit. Blocking.
fn read_host_file(
    location: &Location,
    rel: &str,
    entry: &Entry,
) -> Result<Vec<u8>, HostMountError> {
    let shown = location.shown(rel);
    let changed = || HostMountError::KeptChanging {
        host_path: shown.clone(),
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(location.source(rel))
    {
        Ok(file) => file,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR)
            ) =>
        {
            return Err(changed());
        }
        Err(source) => {
            return Err(HostMountError::Host {
                action: "open",
                host_path: shown,
                source,
            });
        }
    };
    let meta = file.metadata().map_err(|source| HostMountError::Host {
        action: "stat",
        host_path: shown.clone(),
        source,
    })?;
    if !meta.is_file() || (meta.dev(), meta.ino()) != (entry.dev, entry.ino) {
        return Err(changed());
    }
    let mut data = Vec::with_capacity(entry.size.min(MAX_FILE_BYTES) as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|source| HostMountError::Host {
            action: "read",
            host_path: shown.clone(),
            source,
        })?;
    if data.len() as u64 > MAX_FILE_BYTES {
        return Err(HostMountError::FileTooBig {
            host_path: shown,
            size: Bytes(meta.size().max(data.len() as u64)),
        });
    }
    Ok(data)
}

/// The `CopyFile` request for one entry (reading a file's content).
async fn copy_request(
    location: &Location,
    rel: &str,
    entry: &Entry,
) -> Result<v1::CopyFileRequest, HostMountError> {
    let mut request = v1::CopyFileRequest {
        path: location.guest(rel),
        mode: entry.mode,
        uid: entry.uid,
        gid: entry.gid,
        ..Default::default()
    };
    match &entry.kind {
        EntryKind::Directory => request.kind = v1::FileKind::Directory as i32,
        EntryKind::Symlink { target } => {
            request.kind = v1::FileKind::Symlink as i32;
            request.symlink_target = target.clone();
        }
        EntryKind::Regular => {
            request.kind = v1::FileKind::Regular as i32;
            let (location, rel, entry) = (location.clone(), rel.to_owned(), entry.clone());
            request.data =
                tokio::task::spawn_blocking(move || read_host_file(&location, &rel, &entry))
                    .await
                    .expect("reading a host file does not panic")?;
        }
    }
    Ok(request)
}

/// Sends `ops` to the agent in order, updating `held` (what the guest copy
/// holds) after each one that succeeded; stops at the first failure.
/// Returns how many were applied.
pub async fn apply<G: GuestFiles>(
    files: &mut G,
    location: &Location,
    ops: Vec<Op>,
    held: &mut Snapshot,
) -> Result<usize, HostMountError> {
    let mut applied = 0;
    for op in ops {
        match op {
            Op::Copy { rel, entry } => {
                let request = copy_request(location, &rel, &entry).await?;
                with_timeout(files.copy_file(request))
                    .await
                    .map_err(location.agent_error("write", &rel))?;
                held.insert(rel, entry);
            }
            Op::Remove { rel } => {
                let request = v1::RemoveFileRequest {
                    path: location.guest(&rel),
                };
                with_timeout(files.remove_file(request))
                    .await
                    .map_err(location.agent_error("remove", &rel))?;
                held.remove_tree(&rel);
            }
        }
        applied += 1;
    }
    Ok(applied)
}

/// Brings a mount's guest copy from `held` to the host's current tree,
/// starting from `host` (a fresh scan) and rescanning when the host changes
/// under the copy. Returns the number of requests of the last, complete
/// pass.
pub async fn mirror<G: GuestFiles>(
    files: &mut G,
    location: &Location,
    mut host: Snapshot,
    held: &mut Snapshot,
) -> Result<usize, HostMountError> {
    for attempt in 1..=COPY_ATTEMPTS {
        match apply(files, location, diff(held, &host), held).await {
            Ok(sent) => return Ok(sent),
            Err(err) if err.is_host_change() && attempt < COPY_ATTEMPTS => {
                tracing::debug!(host_path = %location.host_path.display(), error = %err,
                    "host mount changed during the copy; scanning it again");
                host = rescan(location).await?;
            }
            Err(err) => return Err(err),
        }
    }
    unreachable!("the last attempt returns")
}

/// Scans a mount's host tree again (blocking work on a blocking thread).
pub async fn rescan(location: &Location) -> Result<Snapshot, HostMountError> {
    let (source, shown) = (location.source.clone(), location.host_path.clone());
    tokio::task::spawn_blocking(move || scan::scan(&source, &shown))
        .await
        .expect("scanning a host tree does not panic")
}

/// One mount's copy in the guest and what it holds.
#[derive(Clone, Debug)]
pub struct CopiedMount {
    pub location: Location,
    pub policy: UpdatePolicy,
    /// What the guest copy holds (as far as hulld knows).
    pub held: Snapshot,
}

/// What [`copy_in`] put in the guest for one container: the start of
/// [`spawn_sync`](super::spawn_sync).
#[derive(Clone, Debug)]
pub struct GuestCopy {
    pub container_id: String,
    pub mounts: Vec<CopiedMount>,
}

impl GuestCopy {
    /// What the guest is assumed to hold when hulld did not copy it in this
    /// run (after a restart, from a fresh [`plan`](super::plan)): the
    /// plan's scan. The first sync round sends whatever differs from that.
    pub fn assumed(plan: &MountPlan) -> Self {
        Self {
            container_id: plan.container_id.clone(),
            mounts: plan
                .mounts
                .iter()
                .map(|m| CopiedMount {
                    location: Location::of(m),
                    policy: m.policy,
                    held: m.snapshot.clone(),
                })
                .collect(),
        }
    }
}

/// Copies every mount of `plan` into the guest: directories (parents
/// first), files with their mode, owner and group, then symlinks. A tree
/// that changed since the plan's scan is scanned again and the copy
/// completed from there.
pub async fn copy_in(
    agent: &mut AgentClient,
    plan: &MountPlan,
) -> Result<GuestCopy, HostMountError> {
    copy_in_with(agent, plan).await
}

pub async fn copy_in_with<G: GuestFiles>(
    files: &mut G,
    plan: &MountPlan,
) -> Result<GuestCopy, HostMountError> {
    let mut mounts = Vec::with_capacity(plan.mounts.len());
    for mount in &plan.mounts {
        let location = Location::of(mount);
        let mut held = Snapshot::default();
        let sent = mirror(files, &location, mount.snapshot.clone(), &mut held).await?;
        tracing::debug!(
            container_id = %plan.container_id,
            host_path = %mount.host_path.display(),
            guest_path = %mount.guest_path,
            entries = held.len(),
            bytes = held.bytes(),
            requests = sent,
            "host mount copied into the pod VM"
        );
        mounts.push(CopiedMount {
            location,
            policy: mount.policy,
            held,
        });
    }
    Ok(GuestCopy {
        container_id: plan.container_id.clone(),
        mounts,
    })
}

/// Removes every copy of a container from the guest (RemoveContainer).
pub async fn remove_guest_copies(
    agent: &mut AgentClient,
    container_id: &str,
) -> Result<(), HostMountError> {
    remove_guest_copies_with(agent, container_id).await
}

pub async fn remove_guest_copies_with<G: GuestFiles>(
    files: &mut G,
    container_id: &str,
) -> Result<(), HostMountError> {
    hull_proto::validate::container_id(container_id)?;
    let path = guest_dir(container_id);
    with_timeout(files.remove_file(v1::RemoveFileRequest { path: path.clone() }))
        .await
        .map_err(|source| HostMountError::RemoveCopies {
            container_id: container_id.to_owned(),
            guest_path: path,
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::super::test_support::{FakeGuest, KubeletVolume, Recorded, cri_mount};
    use super::super::{UpdatePolicy, plan};
    use super::*;

    #[tokio::test]
    async fn copy_in_recreates_the_host_trees_in_order_with_owners_and_modes() {
        let host = tempfile::tempdir().unwrap();
        let volume = KubeletVolume::new(host.path().join("kube-api-access-x"));
        let ts = volume.write(&[("token", b"jwt"), ("namespace", b"default")]);
        std::fs::set_permissions(
            volume.dir.join(&ts).join("token"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let hosts = host.path().join("etc-hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let plan = plan(
            "c1",
            &[
                cri_mount(
                    "/var/run/secrets/kubernetes.io/serviceaccount",
                    &volume.dir,
                    true,
                ),
                cri_mount("/etc/hosts", &hosts, false),
            ],
        )
        .unwrap();
        let mut guest = FakeGuest::new();
        let copy = copy_in_with(&mut guest, &plan).await.unwrap();

        // The guest holds exactly the host trees.
        guest.assert_mirrors(&volume.dir, &plan.mounts[0].guest_path);
        guest.assert_mirrors(&hosts, &plan.mounts[1].guest_path);
        assert_eq!(
            guest.read_guest(&format!("{}/token", plan.mounts[0].guest_path)),
            b"jwt"
        );
        // Directories, then files, then links; never a dangling link.
        let kinds: Vec<i32> = guest
            .requests()
            .iter()
            .filter_map(|r| match r {
                Recorded::Copy(c) if c.path.starts_with(&plan.mounts[0].guest_path) => Some(c.kind),
                _ => None,
            })
            .collect();
        let (d, f, s) = (
            v1::FileKind::Directory as i32,
            v1::FileKind::Regular as i32,
            v1::FileKind::Symlink as i32,
        );
        assert_eq!(kinds, [d, d, f, f, s, s, s]);
        assert_eq!(guest.dangling_links_seen(), Vec::<String>::new());
        // Modes and owners travel with the files.
        let token = guest
            .requests()
            .into_iter()
            .find_map(|r| match r {
                Recorded::Copy(c) if c.path.ends_with(&format!("{ts}/token")) => Some(c),
                _ => None,
            })
            .unwrap();
        let meta = std::fs::metadata(volume.dir.join(&ts).join("token")).unwrap();
        assert_eq!(
            (token.mode, token.uid, token.gid),
            (0o640, meta.uid(), meta.gid())
        );
        // What the guest holds is what was planned.
        assert_eq!(copy.mounts.len(), 2);
        assert_eq!(copy.mounts[0].held, plan.mounts[0].snapshot);
        assert_eq!(copy.mounts[1].policy, UpdatePolicy::WrittenBackOnExit);
    }

    #[tokio::test]
    async fn a_tree_updated_after_the_plan_is_copied_as_it_is_now() {
        let host = tempfile::tempdir().unwrap();
        let volume = KubeletVolume::new(host.path().join("vol"));
        volume.write(&[("key", b"v1")]);
        let plan = plan("c1", &[cri_mount("/cfg", &volume.dir, true)]).unwrap();
        // The kubelet rotates the volume between the plan and the copy: the
        // planned timestamped directory is gone.
        volume.write(&[("key", b"v2"), ("other", b"o")]);
        let mut guest = FakeGuest::new();
        let copy = copy_in_with(&mut guest, &plan).await.unwrap();
        guest.assert_mirrors(&volume.dir, &plan.mounts[0].guest_path);
        assert_eq!(
            guest.read_guest(&format!("{}/key", plan.mounts[0].guest_path)),
            b"v2"
        );
        assert_ne!(copy.mounts[0].held, plan.mounts[0].snapshot);
    }

    #[tokio::test]
    async fn a_failing_agent_names_the_guest_and_host_paths() {
        let host = tempfile::tempdir().unwrap();
        let file = host.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let plan = plan("c1", &[cri_mount("/f", &file, true)]).unwrap();
        let mut guest = FakeGuest::new();
        guest.fail_copies_with(Status::internal("disk full"));
        let err = copy_in_with(&mut guest, &plan).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the agent could not write /run/hull/files/c1/0-f (the copy of host path {})",
                file.display()
            )
        );
    }

    #[tokio::test]
    async fn removing_a_containers_copies_removes_its_directory() {
        let mut guest = FakeGuest::new();
        remove_guest_copies_with(&mut guest, "c1").await.unwrap();
        assert_eq!(
            guest.requests(),
            [Recorded::Remove("/run/hull/files/c1".into())]
        );
        assert!(
            remove_guest_copies_with(&mut guest, "../etc")
                .await
                .is_err()
        );
        let mut failing = FakeGuest::new();
        failing.fail_removes_with(Status::unavailable("gone"));
        let err = remove_guest_copies_with(&mut failing, "c1")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the agent could not remove /run/hull/files/c1, the copies of container c1's host mounts"
        );
    }
}
