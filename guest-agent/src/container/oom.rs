//! OOM kills in a container's cgroup, reported as they happen.
//!
//! The kernel counts them in the cgroup's `memory.events` (`oom_kill`) and
//! signals every change of that file to inotify watchers. A watcher per
//! container sends an `OomKilled` event for each new kill while the
//! container runs (a killed child process of a container whose init goes on
//! running is an OOM kill too); the exit of the init checks once more, so a
//! kill just before the exit is reported even if the watcher had no time.
//! Both go through [`OomCount::report_new`], so each kill is reported once.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hull_proto::v1;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::sync::{broadcast, watch};

use crate::stats;

/// The OOM kills of one container's cgroup already reported.
pub struct OomCount {
    container_id: String,
    cgroup_dir: PathBuf,
    reported: AtomicU64,
}

impl OomCount {
    /// Starts at the cgroup's current count: only kills from now on are
    /// reported.
    pub fn new(container_id: &str, cgroup_dir: &Path) -> Arc<OomCount> {
        Arc::new(OomCount {
            container_id: container_id.to_owned(),
            cgroup_dir: cgroup_dir.to_owned(),
            reported: AtomicU64::new(stats::oom_kills(cgroup_dir)),
        })
    }

    /// Whether the cgroup saw any OOM kill.
    pub fn any(&self) -> bool {
        stats::oom_kills(&self.cgroup_dir) > 0
    }

    /// Sends one `OomKilled` event if the cgroup counts kills not reported
    /// yet; returns whether it did.
    pub fn report_new(&self, events: &broadcast::Sender<v1::Event>) -> bool {
        let now = stats::oom_kills(&self.cgroup_dir);
        let before = self.reported.fetch_max(now, Ordering::SeqCst);
        if now <= before {
            return false;
        }
        tracing::warn!(
            container_id = self.container_id,
            kills = now - before,
            "OOM kill in container"
        );
        let _ = events.send(v1::Event {
            timestamp_unix_nanos: stats::now_unix_nanos(),
            kind: Some(v1::event::Kind::OomKilled(v1::OomKilled {
                container_id: self.container_id.clone(),
            })),
        });
        true
    }
}

/// Watches the cgroup's `memory.events` until `exited` holds a status,
/// reporting new OOM kills. Without inotify (it cannot be set up), kills are
/// reported at the exit only, and that is logged.
pub fn spawn_watcher(
    count: Arc<OomCount>,
    events: broadcast::Sender<v1::Event>,
    mut exited: watch::Receiver<Option<v1::ExitStatus>>,
) {
    let file = count.cgroup_dir.join("memory.events");
    let watch = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .and_then(|inotify| {
            inotify.add_watch(&file, AddWatchFlags::IN_MODIFY)?;
            Ok(inotify)
        })
        .map_err(std::io::Error::from)
        .and_then(|inotify| crate::sys::register_async(OwnedFd::from(inotify)));
    let inotify = match watch {
        Ok(inotify) => inotify,
        Err(err) => {
            tracing::warn!(path = %file.display(), error = %err, "cannot watch for OOM kills; they are reported at exit only");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                ready = inotify.readable() => {
                    let Ok(mut guard) = ready else { return };
                    // Drain the notifications; the file says how many kills.
                    let mut buf = [0u8; 1024];
                    loop {
                        match nix::unistd::read(guard.get_inner(), &mut buf) {
                            Ok(_) => {}
                            Err(nix::errno::Errno::EAGAIN) => {
                                guard.clear_ready();
                                break;
                            }
                            Err(err) => {
                                tracing::warn!(error = %err, "reading OOM notifications failed");
                                return;
                            }
                        }
                    }
                    count.report_new(&events);
                }
                changed = exited.changed() => {
                    if changed.is_err() || exited.borrow().is_some() {
                        return;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn write_events(dir: &Path, kills: u64) {
        std::fs::write(
            dir.join("memory.events"),
            format!("low 0\nhigh 0\nmax 0\noom {kills}\noom_kill {kills}\n"),
        )
        .unwrap();
    }

    fn oom_events(rx: &mut broadcast::Receiver<v1::Event>) -> usize {
        let mut n = 0;
        while let Ok(event) = rx.try_recv() {
            if let Some(v1::event::Kind::OomKilled(k)) = event.kind {
                assert_eq!(k.container_id, "c1");
                n += 1;
            }
        }
        n
    }

    #[test]
    fn each_new_count_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        write_events(dir.path(), 2);
        let (events, mut rx) = broadcast::channel(8);
        let count = OomCount::new("c1", dir.path());
        assert!(count.any());
        assert!(!count.report_new(&events), "kills before the start");
        write_events(dir.path(), 3);
        assert!(count.report_new(&events));
        assert!(!count.report_new(&events));
        assert_eq!(oom_events(&mut rx), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_watcher_reports_while_running_and_stops_at_exit() {
        let dir = tempfile::tempdir().unwrap();
        write_events(dir.path(), 0);
        let (events, mut rx) = broadcast::channel(8);
        let (exit_tx, exit_rx) = watch::channel(None);
        let count = OomCount::new("c1", dir.path());
        spawn_watcher(Arc::clone(&count), events.clone(), exit_rx);
        tokio::task::yield_now().await;
        write_events(dir.path(), 1);
        let event = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an OOM event while running")
            .unwrap();
        assert!(matches!(event.kind, Some(v1::event::Kind::OomKilled(_))));
        exit_tx.send(Some(v1::ExitStatus::default())).unwrap();
        tokio::task::yield_now().await;
        // The exit path's check finds nothing new.
        assert!(!count.report_new(&events));
        assert_eq!(oom_events(&mut rx), 0);
    }
}
