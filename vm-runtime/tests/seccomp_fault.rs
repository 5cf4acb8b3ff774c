//! A confined thread that makes a refused syscall ends the process with
//! status 159 and an exit record naming the syscall and the thread's role.
//!
//! The scenario runs in a fresh copy of this test binary (the test re-runs
//! itself with `HULL_SECCOMP_FAULT_DIR` set), so the SIGSYS handler and the
//! fault reporter are installed in a process of their own.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use vm_runtime::exit_record::{ExitReason, ExitRecord};
use vm_runtime::seccomp::{self, Filters, SECCOMP_EXIT_STATUS, ThreadKind};
use vm_runtime::sigsys;
use vm_runtime::vmm::timeline::{BootPhase, BootTimeline};

const CHILD_DIR: &str = "HULL_SECCOMP_FAULT_DIR";

/// In the child: a reporter, then a devices-confined thread calling
/// getppid (on no role's list); the process must end inside `sigsys`,
/// never here.
fn run_scenario(dir: &Path) -> ! {
    let filters = Filters::build().expect("filters");
    let timeline = Arc::new(BootTimeline::default());
    timeline.mark(BootPhase::BootRequested);
    sigsys::start_fault_reporter(
        &dir.join("exit.json"),
        timeline,
        Some(filters.get(ThreadKind::Main)),
    )
    .expect("fault reporter");
    let devices = filters.get(ThreadKind::Devices);
    let thread = std::thread::spawn(move || {
        seccomp::apply_or_exit(&devices, ThreadKind::Devices);
        // SAFETY: a syscall without arguments; the filter refuses it.
        unsafe { libc::syscall(libc::SYS_getppid) };
    });
    let _ = thread.join();
    std::thread::sleep(std::time::Duration::from_secs(30));
    std::process::exit(0);
}

#[test]
fn a_refused_syscall_ends_the_vmm_with_a_record_naming_it() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        run_scenario(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "a_refused_syscall_ends_the_vmm_with_a_record_naming_it",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD_DIR, dir.path())
        .output()
        .expect("run the scenario");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(SECCOMP_EXIT_STATUS),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "seccomp blocked syscall {} in the devices thread",
            libc::SYS_getppid
        )),
        "{stderr}"
    );
    let record = ExitRecord::read(&dir.path().join("exit.json")).expect("exit record");
    assert_eq!(
        record.reason,
        ExitReason::SeccompViolation {
            syscall: libc::SYS_getppid,
            thread: ThreadKind::Devices,
        }
    );
    assert!(!record.reason.is_clean());
    assert!(record.boot_timeline_us.boot_requested_us > 0);
    assert_eq!(record.guest_uptime_ms, None);
    // Only the record is left: the temporary file was renamed.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["exit.json"]);
}
