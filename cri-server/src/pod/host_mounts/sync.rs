//! Keeping a running container's read-only directory mounts in step with
//! the host: one task per container rescans them every [`SYNC_INTERVAL`]
//! and sends what changed. A failed round is logged (once, until the error
//! changes or goes away) and retried on the next; the task never ends on
//! its own, only when its [`SyncHandle`] is stopped or dropped.

use std::time::Duration;

use hull_proto::client::AgentClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::guest::{GuestCopy, GuestFiles, Location, mirror, rescan};
use super::scan::Snapshot;
use super::{HostMountError, SYNC_INTERVAL, UpdatePolicy};

/// The sync task of one container. Dropping it ends the task at once;
/// [`SyncHandle::stop`] lets a round in progress finish first.
#[derive(Debug)]
pub struct SyncHandle {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl SyncHandle {
    /// Whether a task runs (a container without read-only directory mounts
    /// has none).
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|task| !task.is_finished())
    }

    /// Ends the task after the round in progress, if any, and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts keeping the read-only directory mounts of `copy` (what
/// [`copy_in`](super::copy_in) returned) in sync with the host, every
/// [`SYNC_INTERVAL`]. Must be called inside a tokio runtime.
pub fn spawn_sync(agent: AgentClient, copy: GuestCopy) -> SyncHandle {
    spawn_sync_with(agent, copy, SYNC_INTERVAL)
}

/// A mount the task keeps in sync.
struct SyncedMount {
    location: Location,
    held: Snapshot,
    /// The last round's error, to log each distinct failure once.
    failing: Option<String>,
}

pub fn spawn_sync_with<G: GuestFiles + Send + 'static>(
    files: G,
    copy: GuestCopy,
    interval: Duration,
) -> SyncHandle {
    let mounts: Vec<SyncedMount> = copy
        .mounts
        .into_iter()
        .filter(|m| m.policy == UpdatePolicy::KeptInSync)
        .map(|m| SyncedMount {
            location: m.location,
            held: m.held,
            failing: None,
        })
        .collect();
    if mounts.is_empty() {
        return SyncHandle {
            stop: None,
            task: None,
        };
    }
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(run(files, copy.container_id, mounts, interval, stopped));
    SyncHandle {
        stop: Some(stop),
        task: Some(task),
    }
}

async fn run<G: GuestFiles>(
    mut files: G,
    container_id: String,
    mut mounts: Vec<SyncedMount>,
    interval: Duration,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick is immediate; the copy was just made.
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = ticks.tick() => {}
        }
        for mount in &mut mounts {
            round(&mut files, &container_id, mount).await;
        }
    }
}

/// The message of an error and its sources.
fn chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

async fn round<G: GuestFiles>(files: &mut G, container_id: &str, mount: &mut SyncedMount) {
    let host_path = mount.location.host_path.display().to_string();
    match sync_once(files, &mount.location, &mut mount.held).await {
        Ok(sent) => {
            if mount.failing.take().is_some() {
                tracing::info!(
                    container_id,
                    host_path,
                    "host mount is in sync with its copy in the pod VM again"
                );
            }
            if sent > 0 {
                tracing::debug!(
                    container_id,
                    host_path,
                    requests = sent,
                    "host mount changes copied into the pod VM"
                );
            }
        }
        Err(err) => {
            let message = chain(&err);
            if mount.failing.as_deref() != Some(message.as_str()) {
                tracing::warn!(
                    container_id,
                    host_path,
                    error = %message,
                    "cannot bring a host mount's copy in the pod VM up to date; retrying every {:?}",
                    SYNC_INTERVAL
                );
                mount.failing = Some(message);
            }
        }
    }
}

/// One round for one mount: scan the host tree, send the difference to
/// `held` (scanning again if the host changes under the copy). `held`
/// follows every request that succeeded, so a failed round leaves it true
/// and the next round sends the rest. Returns the number of requests sent.
pub async fn sync_once<G: GuestFiles>(
    files: &mut G,
    location: &Location,
    held: &mut Snapshot,
) -> Result<usize, HostMountError> {
    let host = rescan(location).await?;
    mirror(files, location, host, held).await
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tonic::Status;

    use super::super::guest::copy_in_with;
    use super::super::test_support::{FakeGuest, KubeletVolume, cri_mount};
    use super::super::{MAX_MOUNT_ENTRIES, plan};
    use super::*;

    async fn copied(volume: &KubeletVolume, guest: &mut FakeGuest) -> GuestCopy {
        let plan = plan("c1", &[cri_mount("/cfg", &volume.dir, true)]).unwrap();
        copy_in_with(guest, &plan).await.unwrap()
    }

    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_kubelet_update_reaches_the_guest_without_a_dangling_link() {
        let host = tempfile::tempdir().unwrap();
        let volume = KubeletVolume::new(host.path().join("cfg"));
        let old = volume.write(&[("app.conf", b"v1"), ("dropped", b"x")]);
        let mut guest = FakeGuest::new();
        let mut copy = copied(&volume, &mut guest).await;
        let mount = &mut copy.mounts[0];
        guest.clear_requests();

        let new = volume.write(&[("app.conf", b"v2"), ("-added", b"y")]);
        let sent = sync_once(&mut guest, &mount.location, &mut mount.held)
            .await
            .unwrap();
        let root = "/run/hull/files/c1/0-cfg";
        assert_eq!(
            guest.summary(),
            [
                format!("+{root}/{new}"),
                format!("+{root}/{new}/-added"),
                format!("+{root}/{new}/app.conf"),
                format!("+{root}/..data -> {new}"),
                format!("+{root}/-added -> ..data/-added"),
                format!("-{root}/dropped"),
                format!("-{root}/{old}"),
            ]
        );
        assert_eq!(sent, 7);
        guest.assert_mirrors(&volume.dir, root);
        assert_eq!(guest.read_guest(&format!("{root}/app.conf")), b"v2");
        // Only the dropped key's link dangled (from the swap to its
        // removal, two requests later); `..data` and the kept and new keys
        // always led to data.
        let dangling = guest.dangling_links_seen();
        assert_eq!(dangling, ["c1/0-cfg/dropped", "c1/0-cfg/dropped"]);

        // Nothing changed: nothing sent.
        guest.clear_requests();
        let sent = sync_once(&mut guest, &mount.location, &mut mount.held)
            .await
            .unwrap();
        assert_eq!(sent, 0);
        assert!(guest.requests().is_empty());
    }

    #[tokio::test]
    async fn a_failed_round_is_finished_by_the_next() {
        let host = tempfile::tempdir().unwrap();
        let volume = KubeletVolume::new(host.path().join("cfg"));
        let old = volume.write(&[("a", b"1")]);
        let mut guest = FakeGuest::new();
        let mut copy = copied(&volume, &mut guest).await;
        let mount = &mut copy.mounts[0];

        volume.write(&[("a", b"2"), ("b", b"3")]);
        // The agent takes the new directory and one file, then fails.
        guest.fail_copies_after(2, Status::unavailable("connection reset"));
        let err = sync_once(&mut guest, &mount.location, &mut mount.held)
            .await
            .unwrap_err();
        assert!(matches!(err, HostMountError::Agent { .. }), "{err}");
        // The container still sees the old version, whole.
        assert_eq!(guest.read_guest("/run/hull/files/c1/0-cfg/a"), b"1");
        assert_eq!(guest.dangling_links_seen(), Vec::<String>::new());

        // The kubelet updates once more before the next round.
        volume.write(&[("a", b"4")]);
        guest.stop_failing();
        sync_once(&mut guest, &mount.location, &mut mount.held)
            .await
            .unwrap();
        guest.assert_mirrors(&volume.dir, "/run/hull/files/c1/0-cfg");
        assert_eq!(guest.read_guest("/run/hull/files/c1/0-cfg/a"), b"4");
        // The half-copied directory of the failed round is gone too.
        assert!(!guest.exists(&format!("/run/hull/files/c1/0-cfg/{old}")));
        assert_eq!(guest.local_entries("/run/hull/files/c1/0-cfg").len(), 4);
    }

    #[tokio::test]
    async fn a_host_over_the_limits_leaves_the_copy_alone() {
        let host = tempfile::tempdir().unwrap();
        let volume = KubeletVolume::new(host.path().join("cfg"));
        volume.write(&[("a", b"1")]);
        let mut guest = FakeGuest::new();
        let mut copy = copied(&volume, &mut guest).await;
        let mount = &mut copy.mounts[0];
        let held = mount.held.clone();
        guest.clear_requests();

        let extra = volume.dir.join("extra");
        std::fs::create_dir(&extra).unwrap();
        for i in 0..MAX_MOUNT_ENTRIES {
            std::fs::write(extra.join(i.to_string()), "").unwrap();
        }
        let err = sync_once(&mut guest, &mount.location, &mut mount.held)
            .await
            .unwrap_err();
        assert!(
            matches!(err, HostMountError::TooManyEntries { .. }),
            "{err}"
        );
        assert!(guest.requests().is_empty());
        assert_eq!(mount.held, held);

        std::fs::remove_dir_all(&extra).unwrap();
        volume.write(&[("a", b"2")]);
        sync_once(&mut guest, &mount.location, &mut mount.held)
            .await
            .unwrap();
        guest.assert_mirrors(&volume.dir, "/run/hull/files/c1/0-cfg");
    }

    #[tokio::test]
    async fn the_task_follows_the_host_until_stopped_or_dropped() {
        let host = tempfile::tempdir().unwrap();
        let volume = KubeletVolume::new(host.path().join("cfg"));
        volume.write(&[("token", b"first")]);
        let mut guest = FakeGuest::new();
        let copy = copied(&volume, &mut guest).await;

        let handle = spawn_sync_with(guest.clone(), copy.clone(), Duration::from_millis(20));
        assert!(handle.is_running());
        volume.write(&[("token", b"rotated")]);
        let token = "/run/hull/files/c1/0-cfg/token";
        wait_until("the rotated token is in the guest", || {
            guest.try_read_guest(token).as_deref() == Some(b"rotated".as_slice())
        })
        .await;
        tokio::time::timeout(Duration::from_secs(10), handle.stop())
            .await
            .expect("stop returns once the task has ended");

        // Dropping the handle ends the task too (it releases its agent).
        let before = guest.holders();
        let handle = spawn_sync_with(guest.clone(), copy, Duration::from_millis(20));
        assert_eq!(guest.holders(), before + 1);
        drop(handle);
        wait_until("the task let go of its agent", || guest.holders() == before).await;
    }

    #[tokio::test]
    async fn only_read_only_directories_are_kept_in_sync() {
        let host = tempfile::tempdir().unwrap();
        let file = host.path().join("termination-log");
        std::fs::write(&file, "").unwrap();
        let plan = plan(
            "c1",
            &[
                cri_mount("/dev/termination-log", &file, false),
                cri_mount("/scratch", host.path(), false),
            ],
        )
        .unwrap();
        let mut guest = FakeGuest::new();
        let copy = copy_in_with(&mut guest, &plan).await.unwrap();
        let handle = spawn_sync_with(guest.clone(), copy, Duration::from_millis(10));
        assert!(!handle.is_running());
        handle.stop().await;
        // No task holds the fake agent.
        assert_eq!(guest.holders(), 1);
    }
}
