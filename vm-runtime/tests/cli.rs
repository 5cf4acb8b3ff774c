//! `hull-vmm` as hulld runs it, on any host (no guest is booted): argument
//! errors, the control socket before boot, boot failures reported in the
//! exit record, and the refusal to start on a host whose KVM cannot run a
//! standard guest.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vm_runtime::control::{
    ControlClient, ControlClientError, ControlErrorKind, ControlRequest, StopKind,
};
use vm_runtime::exit_record::{ExitReason, ExitRecord, StopMode};
use vm_runtime::host_check::{KvmSupport, check};

const VMM: &str = env!("CARGO_BIN_EXE_hull-vmm");

fn wait_for(path: &Path, deadline: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < deadline,
            "{} did not appear within {deadline:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_exit(child: &mut Child, deadline: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < deadline,
            "hull-vmm did not exit within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn refuses_to_start_with_nothing_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(VMM)
        .args(["--exit-record"])
        .arg(dir.path().join("exit.json"))
        .arg("--console-log")
        .arg(dir.path().join("console.log"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("give a control socket, a config file, or both"),
        "{stderr}"
    );
}

#[test]
fn a_failed_boot_from_a_config_file_leaves_a_record_naming_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vm.json");
    std::fs::write(
        &config,
        r#"{"kernel":"/nonexistent/vmlinux","memory_mib":64}"#,
    )
    .unwrap();
    let record_path = dir.path().join("exit.json");
    let status = Command::new(VMM)
        .arg("--config-file")
        .arg(&config)
        .arg("--exit-record")
        .arg(&record_path)
        .arg("--console-log")
        .arg(dir.path().join("console.log"))
        .arg("--no-setsid")
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let record = ExitRecord::read(&record_path).unwrap();
    let ExitReason::VmmError { message } = &record.reason else {
        panic!("expected a VMM error, got {:?}", record.reason);
    };
    match check() {
        // A host like the one hull is developed on: the VMM refuses at once, with the reason.
        KvmSupport::Unusable(reason) => {
            assert!(
                message.contains("this host cannot run hull's VMs"),
                "{message}"
            );
            assert!(message.contains(&reason.to_string()), "{message}");
        }
        KvmSupport::Usable => assert!(message.contains("/nonexistent/vmlinux"), "{message}"),
    }
    assert_eq!(record.guest_uptime_ms, None);
}

#[test]
fn control_socket_before_boot_then_forced_stop() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vmm.sock");
    let record_path = dir.path().join("exit.json");
    let pid_file = dir.path().join("vmm.pid");
    let mut child = Command::new(VMM)
        .arg("--api-sock")
        .arg(&sock)
        .arg("--exit-record")
        .arg(&record_path)
        .arg("--console-log")
        .arg(dir.path().join("console.log"))
        .arg("--pid-file")
        .arg(&pid_file)
        .arg("--no-setsid")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&sock, Duration::from_secs(10));
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, child.id());

    let mut client = ControlClient::connect(&sock).unwrap();
    let status = client.request(&ControlRequest::Status {}).unwrap();
    assert_eq!(status["state"], "waiting_for_boot");
    assert_eq!(status["pid"], child.id());

    // Requests that need a VM say so.
    let err = client.request(&ControlRequest::Metrics {}).unwrap_err();
    assert!(
        matches!(err, ControlClientError::Refused(ref e) if e.kind == ControlErrorKind::NotBooted),
        "{err}"
    );
    let err = client
        .request(&ControlRequest::SetDrive {
            id: "slot1".into(),
            path: None,
        })
        .unwrap_err();
    assert!(
        matches!(err, ControlClientError::Refused(ref e) if e.kind == ControlErrorKind::NotBooted),
        "{err}"
    );

    // A malformed line gets an answer, and the connection stays usable.
    {
        use std::io::{BufRead, BufReader, Write};
        let mut raw = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        raw.write_all(b"{\"op\":\"reboot\"}\n").unwrap();
        let mut line = String::new();
        BufReader::new(raw.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("\"invalid_request\""), "{line}");
    }

    // A boot that cannot succeed fails with a reason and leaves the VMM up.
    let config = serde_json::from_str(r#"{"kernel":"/nonexistent/vmlinux"}"#).unwrap();
    let err = client
        .request(&ControlRequest::Boot { config })
        .unwrap_err();
    match err {
        ControlClientError::Refused(e) => {
            assert_eq!(e.kind, ControlErrorKind::BootFailed);
            if let KvmSupport::Unusable(reason) = check() {
                assert!(e.message.contains(&reason.to_string()), "{}", e.message);
            }
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(
        client.request(&ControlRequest::Status {}).unwrap()["state"],
        "waiting_for_boot"
    );

    client
        .request(&ControlRequest::Stop {
            mode: StopKind::Forced,
            timeout_ms: None,
        })
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let record = ExitRecord::read(&record_path).unwrap();
    assert_eq!(
        record.reason,
        ExitReason::Stopped {
            mode: StopMode::Forced
        }
    );
    assert_eq!(record.pid, pid);
    assert!(!sock.exists(), "the control socket is removed at exit");
}
