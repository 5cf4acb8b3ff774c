use super::*;

#[test]
fn pod_ids_that_cannot_be_file_names_are_refused() {
    let long = "x".repeat(MAX_POD_ID_LEN + 1);
    for bad in ["", ".", "..", "a/b", "/abs", "a\0b", long.as_str()] {
        let err = validate_pod_id(bad).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("{bad:?}")),
            "{text} should name {bad:?}"
        );
    }
    for good in ["a", "0123abcdef", "pod.with-dots_and-dashes", "...", "a..b"] {
        validate_pod_id(good).unwrap();
    }
    validate_pod_id(&"y".repeat(MAX_POD_ID_LEN)).unwrap();
}

#[test]
fn bad_ids_are_refused_by_every_operation() {
    let dir = NetnsDir::new("/nonexistent/hull-netns");
    assert!(matches!(
        dir.create("../x"),
        Err(NetnsError::InvalidPodId { .. })
    ));
    assert!(matches!(
        dir.open(".."),
        Err(NetnsError::InvalidPodId { .. })
    ));
    assert!(matches!(
        dir.remove(""),
        Err(NetnsError::InvalidPodId { .. })
    ));
}

#[test]
fn a_missing_directory_lists_nothing_and_opens_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = NetnsDir::new(tmp.path().join("absent"));
    assert!(dir.list().unwrap().is_empty());
    assert!(dir.open("pod").unwrap().is_none());
}

#[test]
fn a_plain_file_is_listed_but_is_no_namespace() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("b-leftover"), b"").unwrap();
    std::fs::write(tmp.path().join("a-leftover"), b"").unwrap();
    let dir = NetnsDir::new(tmp.path());
    assert_eq!(dir.list().unwrap(), ["a-leftover", "b-leftover"]);
    assert!(dir.open("a-leftover").unwrap().is_none());
}

#[test]
fn errors_name_the_operation_and_the_path() {
    let err = NetnsError::io("unmount", Path::new("/run/hull/netns/p1"), Errno::EBUSY);
    assert_eq!(err.to_string(), "cannot unmount /run/hull/netns/p1");
}

// ---- root tests: each creates and removes its own namespaces ----

/// Removes the test's namespaces and the directory's own mount, even when
/// the test fails half way.
pub(crate) struct Cleanup<'a> {
    pub dir: &'a NetnsDir,
    pub ids: Vec<&'static str>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            if let Err(e) = self.dir.remove(id) {
                eprintln!("cleanup: {e}");
            }
        }
        // The directory became a mount point in create; nothing may stay.
        let _ = nix::mount::umount2(self.dir.root(), MntFlags::MNT_DETACH);
    }
}

/// Mount points at or under `root`, from /proc/self/mountinfo.
pub(crate) fn mounts_under(root: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = root.to_str().unwrap();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| *point == root || point.starts_with(&format!("{root}/")))
        .map(str::to_owned)
        .collect()
}

fn identity(fd: &impl AsFd) -> (u64, u64) {
    let stat = nix::sys::stat::fstat(fd.as_fd()).unwrap();
    (stat.st_dev, stat.st_ino)
}

fn own_netns_link() -> String {
    std::fs::read_link("/proc/thread-self/ns/net")
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
#[ignore = "needs root and network namespaces: run in the test VM"]
fn netns_lifecycle() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = NetnsDir::new(tmp.path().join("netns"));
    let _cleanup = Cleanup {
        dir: &dir,
        ids: vec!["pod-a", "pod-b"],
    };

    let first = dir.create("pod-a").unwrap();
    assert_eq!(first.path(), dir.root().join("pod-a"));
    assert_eq!(first.pod_id(), "pod-a");
    let again = dir.create("pod-a").unwrap();
    assert_eq!(identity(&first), identity(&again), "create is idempotent");
    let opened = dir.open("pod-a").unwrap().expect("pod-a exists");
    assert_eq!(identity(&first), identity(&opened));

    // A file left by a crash before its mount is reused.
    std::fs::write(dir.root().join("pod-b"), b"").unwrap();
    assert!(dir.open("pod-b").unwrap().is_none());
    let second = dir.create("pod-b").unwrap();
    assert_ne!(identity(&first), identity(&second));
    assert_eq!(dir.list().unwrap(), ["pod-a", "pod-b"]);

    // Inside: another namespace (the one of the file), with lo up.
    let outside = own_netns_link();
    let (inside, lo) = first
        .run_in(|| {
            let lo = Rtnl::open()
                .and_then(|mut rtnl| rtnl.link_by_name("lo"))
                .unwrap()
                .expect("lo exists");
            (own_netns_link(), lo)
        })
        .unwrap();
    assert_ne!(inside, outside);
    assert_eq!(inside, format!("net:[{}]", identity(&first).1));
    assert!(lo.up, "lo is up in the new namespace");
    assert_eq!(own_netns_link(), outside, "the caller never moved");

    drop((first, again, opened, second));
    for _ in 0..2 {
        dir.remove("pod-a").unwrap();
        dir.remove("pod-b").unwrap();
    }
    assert!(dir.list().unwrap().is_empty());
    assert!(dir.open("pod-a").unwrap().is_none());
    assert_eq!(mounts_under(dir.root()), [dir.root().to_str().unwrap()]);
    nix::mount::umount2(dir.root(), MntFlags::MNT_DETACH).unwrap();
    assert!(mounts_under(dir.root()).is_empty(), "nothing left mounted");
}

#[test]
#[ignore = "needs root and network namespaces: run in the test VM"]
fn the_directory_is_a_shared_mount_made_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = NetnsDir::new(tmp.path().join("netns"));
    let _cleanup = Cleanup {
        dir: &dir,
        ids: vec!["p1", "p2"],
    };
    dir.create("p1").unwrap();
    dir.create("p2").unwrap();
    let root = dir.root().to_str().unwrap();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let own: Vec<&str> = info
        .lines()
        .filter(|line| line.split(' ').nth(4) == Some(root))
        .collect();
    assert_eq!(own.len(), 1, "one mount of the directory: {own:?}");
    assert!(
        own[0].contains(" shared:"),
        "shared propagation: {}",
        own[0]
    );
}
