//! Tests against a real, writable cgroup v2 hierarchy. Hosts with a hybrid
//! cgroup layout (like hull's development machines) have none, so these are
//! ignored by default; `cargo xtask test` runs them in the test VM with the
//! VM tests. By hand:
//!
//! ```text
//! cargo test -p cri-server --lib --no-run      # prints the test binary
//! cargo xtask vm-run -- target/debug/deps/cri_server-<hash> pod::cgroup --ignored
//! ```
//!
//! Where the hierarchy is missing or read-only they fail and say so; they
//! never pass without having run.

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::config::CgroupDriver;

/// The host's unified hierarchy, if it is one hulld could use: cgroup2 at
/// /sys/fs/cgroup, writable, with the memory controller. Panics with the
/// reason otherwise.
fn usable_root() -> CgroupRoot {
    let how = "run these tests in the test VM: cargo xtask vm-run -- \
               target/debug/deps/cri_server-<hash> pod::cgroup --ignored";
    let root = match CgroupRoot::detect() {
        Ok(root) => root,
        Err(err) => panic!("no usable cgroup v2 hierarchy: {err}; {how}"),
    };
    let controllers = root.controllers().expect("cgroup.controllers is readable");
    assert!(
        controllers.iter().any(|c| c == "memory"),
        "the cgroup v2 root offers no memory controller ({controllers:?}); {how}"
    );
    // Tests run in parallel threads of one process: one probe each.
    static PROBES: AtomicUsize = AtomicUsize::new(0);
    let probe = root.path().join(format!(
        "hull-probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    ));
    if let Err(err) = fs::create_dir(&probe) {
        panic!(
            "the cgroup v2 root {} is not writable: {err}; {how}",
            root.path().display()
        );
    }
    fs::remove_dir(&probe).expect("the probe cgroup can be removed");
    root
}

/// A test's own top-level cgroup: removed, with everything below it, when
/// the test ends, even by a panic.
struct TestParent {
    top: PathBuf,
}

impl TestParent {
    fn new(root: &CgroupRoot, name: &str) -> Self {
        Self {
            top: root.path().join(top_name(name)),
        }
    }
}

fn top_name(name: &str) -> String {
    format!("hulltest{}{name}", std::process::id())
}

impl Drop for TestParent {
    fn drop(&mut self) {
        if !self.top.exists() {
            return;
        }
        let top = PodCgroup {
            dir: self.top.clone(),
            cgroup_path: String::new(),
        };
        let started = Instant::now();
        let deadline = started + Duration::from_secs(10);
        let _ = top.kill_all(started, deadline, true);
        let _ = remove_tree(&self.top, deadline);
    }
}

fn read_file(cgroup: &PodCgroup, file: &str) -> String {
    fs::read_to_string(cgroup.dir().join(file))
        .unwrap_or_else(|err| panic!("reading {file}: {err}"))
        .trim()
        .to_string()
}

fn spawn_in(cgroup: &PodCgroup, program: &str, args: &[&str]) -> Child {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cgroup.place_child(&mut command).expect("place_child");
    command
        .spawn()
        .unwrap_or_else(|err| panic!("spawning {program}: {err}"))
}

/// Waits for `child` with a deadline; kills it and fails if it runs on.
fn wait_with_deadline(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("child {} still runs after {within:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs a writable cgroup v2 hierarchy; run in the test VM"]
fn limits_are_written_and_read_back_under_a_systemd_style_slice() {
    let root = usable_root();
    let top = top_name("limits");
    // The slice layout puts the test's top cgroup at <top>.slice.
    let _parent = TestParent {
        top: root.path().join(format!("{top}.slice")),
    };
    // /<top>.slice/<top>-pod1.slice/hull-p1.scope: two ancestors to create
    // and enable controllers in.
    let path = pod_cgroup_path(
        CgroupDriver::Systemd,
        &format!("{top}-pod1.slice"),
        "",
        "p1",
    )
    .unwrap();
    assert_eq!(path, format!("/{top}.slice/{top}-pod1.slice/hull-p1.scope"));
    let limits = CgroupLimits {
        memory_max: Some(96 << 20),
        memory_high: Some(64 << 20),
        memory_swap_max: None,
        cpu_max: Some(CpuMax {
            quota_us: 50_000,
            period_us: 100_000,
        }),
        cpu_shares: Some(1024),
        pids_max: Some(64),
    };
    let cgroup = root.create(&path, &limits).expect("create");
    assert_eq!(cgroup.cgroup_path(), path);
    assert_eq!(read_file(&cgroup, "memory.max"), (96u64 << 20).to_string());
    assert_eq!(read_file(&cgroup, "memory.high"), (64u64 << 20).to_string());
    assert_eq!(read_file(&cgroup, "memory.oom.group"), "1");
    assert_eq!(read_file(&cgroup, "cpu.max"), "50000 100000");
    assert_eq!(read_file(&cgroup, "cpu.weight"), "100");
    assert_eq!(read_file(&cgroup, "pids.max"), "64");
    let parent_controllers = fs::read_to_string(cgroup.dir().join("cgroup.controllers")).unwrap();
    for controller in ["cpu", "memory", "pids"] {
        assert!(
            parent_controllers.contains(controller),
            "{parent_controllers}"
        );
    }

    // Resizing, then lifting every limit.
    let mut resized = limits.clone();
    resized.memory_max = Some(128 << 20);
    resized.cpu_shares = Some(2048);
    cgroup.set_limits(&resized).expect("resize");
    assert_eq!(read_file(&cgroup, "memory.max"), (128u64 << 20).to_string());
    assert_eq!(read_file(&cgroup, "cpu.weight"), "174");
    cgroup
        .set_limits(&CgroupLimits::default())
        .expect("unlimit");
    for file in ["memory.max", "memory.high", "pids.max"] {
        assert_eq!(read_file(&cgroup, file), "max", "{file}");
    }
    assert_eq!(read_file(&cgroup, "cpu.max"), "max 100000");
    assert_eq!(read_file(&cgroup, "cpu.weight"), "100");

    // A limit the kernel refuses names the file and the value.
    let err = cgroup
        .set_limits(&CgroupLimits {
            cpu_max: Some(CpuMax {
                quota_us: 1,
                period_us: 100_000,
            }),
            ..Default::default()
        })
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("cpu.max") && text.contains("1 100000"),
        "{text}"
    );

    // Re-adoption finds it; an empty existing cgroup is reused by create.
    assert_eq!(root.open_existing(&path).unwrap(), cgroup);
    assert_eq!(root.create(&path, &limits).unwrap(), cgroup);

    cgroup.remove().expect("remove");
    assert!(!cgroup.dir().exists());
    cgroup.remove().expect("a second remove is fine");
    assert!(matches!(
        root.open_existing(&path),
        Err(CgroupError::NotFound { .. })
    ));
}

#[test]
#[ignore = "needs a writable cgroup v2 hierarchy; run in the test VM"]
fn a_child_starts_inside_and_remove_kills_what_runs() {
    let root = usable_root();
    let top = top_name("child");
    let _parent = TestParent::new(&root, "child");
    let path = pod_cgroup_path(CgroupDriver::Cgroupfs, &format!("/{top}/pod1"), "", "p1").unwrap();
    let limits = CgroupLimits {
        memory_max: Some(64 << 20),
        pids_max: Some(32),
        ..Default::default()
    };
    let cgroup = root.create(&path, &limits).expect("create");

    let mut vmm = spawn_in(&cgroup, "sleep", &["600"]);
    let pid = vmm.id();
    // In the cgroup from its first instruction: /proc says so at once.
    let proc_cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_eq!(proc_cgroup.trim(), format!("0::{path}"));
    assert_eq!(cgroup.pids().unwrap(), vec![pid]);
    assert!(cgroup.events().unwrap().populated);

    // A process started elsewhere is adopted with add_pid.
    let mut stray = Command::new("sleep").arg("600").spawn().unwrap();
    cgroup.add_pid(stray.id()).expect("add_pid");
    let mut pids = cgroup.pids().unwrap();
    pids.sort_unstable();
    let mut expected = vec![pid, stray.id()];
    expected.sort_unstable();
    assert_eq!(pids, expected);

    let stats = cgroup.stats().expect("stats");
    assert!(stats.timestamp_ns > 1_600_000_000_000_000_000, "{stats:?}");
    assert_eq!(stats.pids_current, Some(2), "{stats:?}");
    assert!(stats.memory_current > 0, "{stats:?}");
    assert!(stats.working_set_bytes <= stats.memory_current, "{stats:?}");
    assert_eq!(stats.memory_max, Some(64 << 20));
    assert_eq!(
        stats.available_bytes(),
        Some((64 << 20) - stats.working_set_bytes)
    );
    assert!(!stats.memory_events.oom_killed(), "{stats:?}");
    assert!(stats.cpu_usage_ns() >= stats.cpu.usage_usec);

    // A cgroup with processes in it is not handed out again.
    assert!(matches!(
        root.create(&path, &limits),
        Err(CgroupError::Busy { .. })
    ));

    // Remove with both still running: killed, cgroup gone.
    cgroup.remove().expect("remove");
    assert!(!cgroup.dir().exists());
    for child in [&mut vmm, &mut stray] {
        let status = wait_with_deadline(child, Duration::from_secs(10));
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }
    cgroup
        .remove()
        .expect("removing a removed cgroup is success");
}

#[test]
#[ignore = "needs a writable cgroup v2 hierarchy; run in the test VM"]
fn an_oom_kills_the_whole_cgroup_and_is_counted() {
    let root = usable_root();
    let top = top_name("oom");
    let _parent = TestParent::new(&root, "oom");
    let path = pod_cgroup_path(CgroupDriver::Cgroupfs, &format!("/{top}"), "", "p1").unwrap();
    let has_swap_file = |cgroup: &PodCgroup| cgroup.dir().join("memory.swap.max").exists();
    let mut limits = CgroupLimits {
        memory_max: Some(16 << 20),
        ..Default::default()
    };
    let cgroup = root.create(&path, &limits).expect("create");
    if has_swap_file(&cgroup) {
        // No swapping out of the OOM.
        limits.memory_swap_max = Some(0);
        cgroup.set_limits(&limits).expect("swap limit");
    }
    // A bystander in the same cgroup dies too: memory.oom.group.
    let mut bystander = spawn_in(&cgroup, "sleep", &["600"]);
    // dd reads 64 MiB from /dev/zero into one buffer: every page touched.
    let mut hog = spawn_in(
        &cgroup,
        "dd",
        &["if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    let status = wait_with_deadline(&mut hog, Duration::from_secs(60));
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the hog ended with {status:?}"
    );
    let status = wait_with_deadline(&mut bystander, Duration::from_secs(10));
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the bystander ended with {status:?}"
    );

    let events = cgroup.memory_events().expect("memory.events");
    assert!(events.oom_killed(), "{events:?}");
    assert!(
        events.oom_kill >= 2,
        "both processes were OOM kills: {events:?}"
    );
    assert!(events.max >= 1, "{events:?}");
    let raw = read_file(&cgroup, "memory.events");
    if raw.contains("oom_group_kill") {
        assert!(events.oom_group_kill >= 1, "{raw}");
    }
    let stats = cgroup.stats().expect("stats after the OOM");
    assert_eq!(stats.memory_events, events);
    assert_eq!(stats.pids_current.unwrap_or(0), 0);
    assert!(!cgroup.events().unwrap().populated);
    cgroup.remove().expect("remove");
}

#[test]
#[ignore = "needs a writable cgroup v2 hierarchy; run in the test VM"]
fn a_missing_required_controller_is_named() {
    let root = usable_root();
    let top = top_name("nocontroller");
    let _parent = TestParent::new(&root, "nocontroller");
    // A delegated subtree whose parent passes down only memory: hulld given
    // it as its root can limit memory but not pids.
    write_file(&root.path().join("cgroup.subtree_control"), "+memory").unwrap();
    let top_dir = root.path().join(&top);
    fs::create_dir(&top_dir).unwrap();
    write_file(&top_dir.join("cgroup.subtree_control"), "+memory").unwrap();
    let delegated = top_dir.join("delegated");
    fs::create_dir(&delegated).unwrap();
    let sub_root = CgroupRoot::at(&delegated).expect("a cgroup2 directory");
    assert_eq!(sub_root.controllers().unwrap(), vec!["memory".to_string()]);

    let err = sub_root
        .create(
            "/hull-p1",
            &CgroupLimits {
                pids_max: Some(10),
                ..Default::default()
            },
        )
        .expect_err("pids is not offered");
    let text = err.to_string();
    assert!(
        matches!(
            err,
            CgroupError::ControllerMissing {
                controller: "pids",
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains(&delegated.display().to_string()), "{text}");
    assert!(!delegated.join("hull-p1").exists());

    // Without a pids limit the same subtree serves: memory only, and the
    // optional cpu/pids files are skipped.
    let cgroup = sub_root
        .create(
            "/hull-p1",
            &CgroupLimits {
                memory_max: Some(32 << 20),
                ..Default::default()
            },
        )
        .expect("memory alone is enough");
    assert_eq!(read_file(&cgroup, "memory.max"), (32u64 << 20).to_string());
    assert_eq!(cgroup.stats().unwrap().pids_current, None);
    cgroup.remove().unwrap();
}

#[test]
#[ignore = "needs a writable cgroup v2 hierarchy; run in the test VM"]
fn remove_kills_a_whole_subtree_with_and_without_cgroup_kill() {
    let root = usable_root();
    let top = top_name("subtree");
    let _parent = TestParent::new(&root, "subtree");
    for use_kill_file in [true, false] {
        let path = format!("/{top}/hull-kill-{use_kill_file}");
        let cgroup = root
            .create(&path, &CgroupLimits::default())
            .expect("create");
        // A VMM, and a child cgroup (which a VMM does not make, but remove
        // must not trip on) with a process of its own.
        let mut outer = spawn_in(&cgroup, "sleep", &["600"]);
        let inner = PodCgroup {
            dir: cgroup.dir().join("inner"),
            cgroup_path: format!("{path}/inner"),
        };
        fs::create_dir(inner.dir()).unwrap();
        let mut nested = spawn_in(&inner, "sleep", &["600"]);
        assert_eq!(inner.pids().unwrap(), vec![nested.id()]);

        let started = Instant::now();
        cgroup
            .kill_all(started, started + Duration::from_secs(10), use_kill_file)
            .unwrap_or_else(|err| panic!("kill (cgroup.kill: {use_kill_file}): {err}"));
        assert!(!cgroup.events().unwrap().populated);
        for child in [&mut outer, &mut nested] {
            let status = wait_with_deadline(child, Duration::from_secs(10));
            assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        }
        cgroup.remove().expect("remove");
        assert!(!cgroup.dir().exists(), "cgroup.kill: {use_kill_file}");
    }
}
