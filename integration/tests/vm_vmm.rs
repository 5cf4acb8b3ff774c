//! hull's own VMM (`hull-vmm`) boots hull's guest kernel and serves its
//! devices; each way a VM can end is reported as what it was.
//!
//! Every test starts `hull-vmm` with a control socket, boots the guest
//! kernel with a busybox init written for it, drives the VM from the host
//! side (drive slots, vsock, tap), and reads the exit record. Needs a
//! working KVM: run with `cargo xtask test`, or under `cargo xtask vm-run`
//! with `HULL_GUEST_VMLINUX`/`HULL_GUEST_BZIMAGE` set. `hull-vmm` is taken
//! from `HULL_VMM_BIN`, else from the cargo target dir these tests run from
//! (`cargo build -p vm-runtime` builds it).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hull_integration::guest::{busybox_initramfs, guest_kernel, require_kvm};
use vm_runtime::control::{ControlClient, ControlRequest, StopKind};
use vm_runtime::exit_record::{ExitReason, ExitRecord, StopMode};
use vm_runtime::vmm::config::{DriveConfig, NetConfig, TapSource, VmConfig, VsockConfig};

/// Inside the test VM a boot takes ~2-3 s; a loaded host is several times slower.
const DEADLINE: Duration = Duration::from_secs(120);

/// A guest-side vsock client/server (busybox has none), built static once
/// into the target dir with the host's C compiler.
const VSOCK_PROBE_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <linux/vm_sockets.h>

static int sock(unsigned cid, unsigned port, int do_listen) {
    struct sockaddr_vm a;
    memset(&a, 0, sizeof a);
    a.svm_family = AF_VSOCK;
    a.svm_cid = cid;
    a.svm_port = port;
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) { perror("socket"); exit(1); }
    if (do_listen) {
        if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 1)) { perror("listen"); exit(1); }
    } else if (connect(s, (struct sockaddr *)&a, sizeof a)) { perror("connect"); exit(1); }
    return s;
}

int main(int argc, char **argv) {
    char buf[4096];
    ssize_t n, total = 0;
    if (argc == 3 && !strcmp(argv[1], "echo-once")) {
        int l = sock(VMADDR_CID_ANY, atoi(argv[2]), 1);
        int c = accept(l, 0, 0);
        if (c < 0) { perror("accept"); return 1; }
        n = read(c, buf, sizeof buf);
        if (n <= 0) return 1;
        if (write(c, "echo:", 5) != 5 || write(c, buf, n) != n) return 1;
        close(c);
        return 0;
    }
    if (argc == 5 && !strcmp(argv[1], "send")) {
        int s = sock(atoi(argv[2]), atoi(argv[3]), 0);
        size_t len = strlen(argv[4]);
        if (write(s, argv[4], len) != (ssize_t)len) return 1;
        shutdown(s, SHUT_WR);
        while ((n = read(s, buf + total, sizeof buf - 1 - total)) > 0) total += n;
        buf[total] = 0;
        printf("%s\n", buf);
        return 0;
    }
    fprintf(stderr, "usage: vsock-probe echo-once PORT | send CID PORT TEXT\n");
    return 2;
}
"#;

/// Directory of the cargo profile these tests were built in (target/debug).
fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/debug/deps/vm_vmm-<hash>
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("test binary is not in a cargo target dir")
}

fn vmm_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("HULL_VMM_BIN") {
        return Ok(PathBuf::from(path));
    }
    let path = profile_dir()?.join("hull-vmm");
    ensure!(
        path.is_file(),
        "{} does not exist: build it with `cargo build -p vm-runtime` (or set HULL_VMM_BIN)",
        path.display()
    );
    Ok(path)
}

fn vsock_probe() -> Result<PathBuf> {
    let dir = profile_dir()?.join("hull-test-helpers");
    std::fs::create_dir_all(&dir)?;
    let binary = dir.join("vsock-probe");
    let source = dir.join("vsock-probe.c");
    let current = std::fs::read_to_string(&source).ok();
    if current.as_deref() != Some(VSOCK_PROBE_C) || !binary.is_file() {
        std::fs::write(&source, VSOCK_PROBE_C)?;
        let status = Command::new("cc")
            .args(["-static", "-O1", "-o"])
            .arg(&binary)
            .arg(&source)
            .status()
            .context("cannot run the C compiler (Debian gcc, libc6-dev)")?;
        ensure!(
            status.success(),
            "building the vsock probe failed: {status}"
        );
    }
    Ok(binary)
}

/// A running `hull-vmm` and its files.
struct Vmm {
    dir: tempfile::TempDir,
    child: Child,
}

impl Vmm {
    fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let child = Command::new(vmm_binary()?)
            .arg("--api-sock")
            .arg(dir.path().join("vmm.sock"))
            .arg("--exit-record")
            .arg(dir.path().join("exit.json"))
            .arg("--console-log")
            .arg(dir.path().join("console.log"))
            .arg("--pid-file")
            .arg(dir.path().join("vmm.pid"))
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start hull-vmm")?;
        let vmm = Vmm { dir, child };
        vmm.wait_until("control socket", || Ok(vmm.socket().exists()))?;
        Ok(vmm)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn socket(&self) -> PathBuf {
        self.path("vmm.sock")
    }

    fn client(&self) -> Result<ControlClient> {
        Ok(ControlClient::connect(&self.socket())?)
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.path("console.log")).unwrap_or_default()
    }

    fn wait_until(&self, what: &str, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
        let start = Instant::now();
        while !ready()? {
            if start.elapsed() > DEADLINE {
                bail!("timed out waiting for {what}; console:\n{}", self.console());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn wait_console(&self, marker: &str) -> Result<()> {
        self.wait_until(marker, || Ok(self.console().contains(marker)))
    }

    /// Waits for the process to end and returns its record (if it wrote one).
    fn wait_exit(&mut self) -> Result<(std::process::ExitStatus, Option<ExitRecord>)> {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if start.elapsed() > DEADLINE {
                let _ = self.child.kill();
                bail!("hull-vmm did not exit; console:\n{}", self.console());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let path = self.path("exit.json");
        let record = path.exists().then(|| ExitRecord::read(&path)).transpose()?;
        Ok((status, record))
    }

    fn boot(
        &self,
        config: VmConfig,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<serde_json::Value> {
        Ok(self
            .client()?
            .request_with_fds(&ControlRequest::Boot { config }, fds)?)
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base_config(init: &str, dir: &Path, extra: &[(&str, &[u8])]) -> Result<VmConfig> {
    let kernel = guest_kernel()?;
    let mut archive = busybox_initramfs(init)?;
    for (name, data) in extra {
        archive.file(name, 0o755, data)?;
    }
    let initramfs = dir.join("initramfs.cpio");
    archive.write_to(&initramfs)?;
    Ok(VmConfig {
        kernel: kernel.vmlinux,
        initramfs: Some(initramfs),
        cmdline_extra: "quiet".into(),
        vcpus: 2,
        memory_mib: 256,
        drives: Vec::new(),
        vsock: None,
        net: Vec::new(),
        rng: false,
    })
}

fn line_after(console: &str, marker: &str) -> Option<String> {
    console.lines().find_map(|line| {
        line.split_once(marker)
            .map(|(_, rest)| rest.trim().to_string())
    })
}

const DEVICES_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "HULL-INIT cpus=$(grep -c ^processor /proc/cpuinfo)"
for dir in /sys/block/vd*; do
    case "$(cat $dir/serial)" in
        data) DATA=${dir##*/} ;;
        slot) SLOT=${dir##*/} ;;
    esac
done
echo "HULL-BLK-READ $(head -c 24 /dev/$DATA)"
printf 'written-by-guest' | dd of=/dev/$DATA bs=512 seek=1 conv=fsync 2>/dev/null
echo "HULL-BLK-RO $(cat /sys/block/$SLOT/ro)"
echo "HULL-SLOT-SIZE $(cat /sys/block/$SLOT/size)"
echo "HULL-SLOT-WAIT"
i=0
while [ "$(cat /sys/block/$SLOT/size)" = 0 ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
echo "HULL-SLOT-CONTENT $(head -c 24 /dev/$SLOT)"
echo "HULL-RNG $(cat /sys/devices/virtual/misc/hw_random/rng_current) $(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \n')"
/vsock-probe echo-once 5000 &
LISTENER=$!
sleep 0.2
echo "HULL-VSOCK-LISTENING"
echo "HULL-VSOCK-OUT $(/vsock-probe send 2 1234 hello-from-guest)"
wait $LISTENER && echo "HULL-VSOCK-IN-SERVED"
ip link set eth0 up
ip addr add 10.211.0.2/24 dev eth0
if ping -c 1 -W 10 10.211.0.1 >/dev/null; then echo "HULL-NET-PING ok"; else echo "HULL-NET-PING failed"; fi
echo "HULL-DONE"
reboot -f
"#;

/// A network namespace with a tap, deleted on drop.
struct NetNs {
    name: String,
}

impl NetNs {
    fn create(name: &str, tap: &str) -> Result<Self> {
        let run = |args: &[&str]| -> Result<()> {
            let status = Command::new("ip")
                .args(args)
                .status()
                .context("cannot run ip (iproute2)")?;
            ensure!(status.success(), "ip {args:?} failed: {status}");
            Ok(())
        };
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        run(&["netns", "add", name])?;
        let ns = NetNs { name: name.into() };
        run(&[
            "-n", name, "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr",
        ])?;
        run(&["-n", name, "addr", "add", "10.211.0.1/24", "dev", tap])?;
        run(&["-n", name, "link", "set", tap, "up"])?;
        Ok(ns)
    }

    /// Opens the tap inside the namespace, as hulld does, for passing to the VMM.
    fn open_tap(&self, tap: &str) -> Result<OwnedFd> {
        let ns_path = format!("/var/run/netns/{}", self.name);
        let tap = tap.to_string();
        std::thread::spawn(move || -> Result<OwnedFd> {
            let ns = std::fs::File::open(&ns_path)?;
            // SAFETY: setns on this (short-lived) thread only, with a valid netns fd.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            ensure!(rc == 0, "setns: {}", std::io::Error::last_os_error());
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")?;
            #[repr(C)]
            struct IfReq {
                name: [u8; 16],
                flags: i16,
                pad: [u8; 22],
            }
            let mut req = IfReq {
                name: [0; 16],
                flags: 0x0002 | 0x1000 | 0x4000,
                pad: [0; 22],
            };
            req.name[..tap.len()].copy_from_slice(tap.as_bytes());
            // SAFETY: TUNSETIFF reads an ifreq, which `req` is, valid for the call.
            let rc = unsafe {
                libc::ioctl(
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    0x4004_54ca,
                    &mut req,
                )
            };
            ensure!(rc == 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
            Ok(file.into())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("tap thread panicked"))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn devices_work_and_a_guest_reboot_ends_the_vm() -> Result<()> {
    require_kvm()?;
    let probe = std::fs::read(vsock_probe()?)?;
    let vmm = Vmm::start()?;
    let dir = vmm.dir.path().to_path_buf();

    let data = dir.join("data.img");
    let mut image = vec![0u8; 1 << 20];
    image[..24].copy_from_slice(b"host-wrote-this-sector-0");
    std::fs::write(&data, &image)?;
    let slot_image = dir.join("slot.img");
    let mut slot_bytes = vec![0u8; 2 << 20];
    slot_bytes[..24].copy_from_slice(b"swapped-in-after-boot-ok");
    std::fs::write(&slot_image, &slot_bytes)?;

    let uds = dir.join("vsock.sock");
    let host_port_listener = UnixListener::bind(format!("{}_1234", uds.display()))?;
    let guest_to_host = std::thread::spawn(move || -> Result<String> {
        let (mut conn, _) = host_port_listener.accept()?;
        conn.set_read_timeout(Some(DEADLINE))?;
        let mut got = String::new();
        conn.read_to_string(&mut got)?;
        conn.write_all(format!("host-echo:{got}").as_bytes())?;
        Ok(got)
    });

    let ns = NetNs::create(&format!("hullvmm{}", std::process::id()), "hulltap0")?;
    let tap = ns.open_tap("hulltap0")?;

    let mut config = base_config(DEVICES_INIT, &dir, &[("vsock-probe", &probe)])?;
    config.drives = vec![
        DriveConfig {
            id: "data".into(),
            path: Some(data.clone()),
            read_only: false,
        },
        DriveConfig {
            id: "slot".into(),
            path: None,
            read_only: true,
        },
    ];
    config.vsock = Some(VsockConfig {
        guest_cid: 3,
        uds_path: uds.clone(),
    });
    config.net = vec![NetConfig {
        id: "eth0".into(),
        tap: TapSource::PassedFd(0),
        mac: None,
    }];
    config.rng = true;
    let status = vmm.boot(config, &[tap.as_fd()])?;
    assert_eq!(status["state"], "running", "{status}");
    drop(tap);

    vmm.wait_console("HULL-SLOT-WAIT")?;
    let swapped = vmm.client()?.request(&ControlRequest::SetDrive {
        id: "slot".into(),
        path: Some(slot_image.clone()),
    })?;
    assert_eq!(swapped["sectors"], 4096, "{swapped}");

    vmm.wait_console("HULL-VSOCK-LISTENING")?;
    let mut host = UnixStream::connect(&uds)?;
    host.set_read_timeout(Some(DEADLINE))?;
    host.write_all(b"CONNECT 5000\n")?;
    let mut reader = BufReader::new(host.try_clone()?);
    let mut ok = String::new();
    reader
        .read_line(&mut ok)
        .with_context(|| format!("no answer to CONNECT; console:\n{}", vmm.console()))?;
    ensure!(
        ok.starts_with("OK "),
        "hybrid vsock answered {ok:?}; console:\n{}",
        vmm.console()
    );
    host.write_all(b"ping-from-host")?;
    let mut echoed = String::new();
    reader
        .read_to_string(&mut echoed)
        .with_context(|| format!("no echo from the guest; console:\n{}", vmm.console()))?;

    vmm.wait_console("HULL-DONE")?;
    let metrics = vmm.client()?.request(&ControlRequest::Metrics {})?;
    let mut vmm = vmm;
    let (exit_status, record) = vmm.wait_exit()?;
    let console = vmm.console();
    let record = record.context("no exit record")?;

    assert!(exit_status.success(), "{exit_status}; console:\n{console}");
    assert_eq!(
        record.reason,
        ExitReason::GuestReboot,
        "console:\n{console}"
    );
    assert_eq!(line_after(&console, "HULL-INIT").as_deref(), Some("cpus=2"));
    assert_eq!(
        line_after(&console, "HULL-BLK-READ").as_deref(),
        Some("host-wrote-this-sector-0")
    );
    let on_disk = std::fs::read(&data)?;
    assert_eq!(
        &on_disk[512..528],
        b"written-by-guest",
        "guest write reached the backing file"
    );
    assert_eq!(line_after(&console, "HULL-BLK-RO").as_deref(), Some("1"));
    assert_eq!(line_after(&console, "HULL-SLOT-SIZE").as_deref(), Some("0"));
    assert_eq!(
        line_after(&console, "HULL-SLOT-CONTENT").as_deref(),
        Some("swapped-in-after-boot-ok")
    );
    let rng = line_after(&console, "HULL-RNG").context("no rng line")?;
    assert!(rng.starts_with("virtio_rng"), "{rng}");
    assert_eq!(
        rng.split_whitespace().nth(1).map(str::len),
        Some(32),
        "{rng}"
    );
    assert_eq!(echoed, "echo:ping-from-host");
    assert!(
        console.contains("HULL-VSOCK-IN-SERVED"),
        "console:\n{console}"
    );
    assert_eq!(guest_to_host.join().unwrap()?, "hello-from-guest");
    assert_eq!(
        line_after(&console, "HULL-VSOCK-OUT").as_deref(),
        Some("host-echo:hello-from-guest")
    );
    assert_eq!(
        line_after(&console, "HULL-NET-PING").as_deref(),
        Some("ok"),
        "console:\n{console}"
    );

    let devices = metrics["devices"]
        .as_array()
        .context("no devices in metrics")?;
    let net = devices
        .iter()
        .find(|d| d["kind"] == "net")
        .context("no net metrics")?;
    assert!(net["device"]["tx_frames"].as_u64() > Some(0), "{net}");
    let memory = &metrics["memory"];
    eprintln!(
        "hull-vmm memory after the device test: overhead {} KiB, guest {} KiB",
        memory["vmm_overhead_kib"], memory["rss_shmem_kib"]
    );
    drop(ns);
    Ok(())
}

fn run_to_exit(init: &str, cmdline_extra: &str) -> Result<(Vmm, ExitRecord)> {
    require_kvm()?;
    let mut vmm = Vmm::start()?;
    let mut config = base_config(init, vmm.dir.path(), &[])?;
    config.cmdline_extra = format!("quiet {cmdline_extra}");
    config.vcpus = 1;
    vmm.boot(config, &[])?;
    let (status, record) = vmm.wait_exit()?;
    let record = record
        .with_context(|| format!("no exit record ({status}); console:\n{}", vmm.console()))?;
    assert!(status.success(), "{status}");
    Ok((vmm, record))
}

#[test]
fn guest_panic_is_reported_as_a_panic() -> Result<()> {
    // PID 1 exiting makes the kernel panic ("Attempted to kill init!").
    let (vmm, record) = run_to_exit("#!/bin/busybox sh\necho HULL-ABOUT-TO-PANIC\nexit 3\n", "")?;
    let ExitReason::GuestPanic { message } = &record.reason else {
        panic!(
            "expected a panic, got {:?}; console:\n{}",
            record.reason,
            vmm.console()
        );
    };
    assert!(message.contains("Attempted to kill init"), "{message}");
    assert_eq!(record.panic_line.as_deref(), Some(message.as_str()));
    Ok(())
}

#[test]
fn triple_fault_is_reported_as_a_triple_fault() -> Result<()> {
    // reboot=t makes the kernel reboot by triple-faulting.
    let (vmm, record) = run_to_exit("#!/bin/busybox sh\n/bin/busybox reboot -f\n", "reboot=t")?;
    assert_eq!(
        record.reason,
        ExitReason::TripleFault,
        "console:\n{}",
        vmm.console()
    );
    Ok(())
}

#[test]
fn stops_forced_and_graceful_with_a_bounded_wait() -> Result<()> {
    require_kvm()?;
    let sleeper = "#!/bin/busybox sh\necho HULL-IDLE\nwhile true; do /bin/busybox sleep 1; done\n";
    for (mode, expected) in [
        (StopKind::Forced, StopMode::Forced),
        // Ctrl+Alt+Del through the i8042: this init (busybox sh) leaves it
        // to the kernel, which reboots; the VMM reports a graceful stop.
        (StopKind::Graceful, StopMode::Graceful),
    ] {
        let mut vmm = Vmm::start()?;
        let mut config = base_config(sleeper, vmm.dir.path(), &[])?;
        config.vcpus = 1;
        vmm.boot(config, &[])?;
        vmm.wait_console("HULL-IDLE")?;
        let started = Instant::now();
        vmm.client()?.request(&ControlRequest::Stop {
            mode,
            timeout_ms: Some(5000),
        })?;
        let (status, record) = vmm.wait_exit()?;
        assert!(status.success(), "{status}");
        assert_eq!(
            record.context("no exit record")?.reason,
            ExitReason::Stopped { mode: expected }
        );
        assert!(started.elapsed() < DEADLINE);
    }
    Ok(())
}

#[test]
fn a_graceful_stop_lets_the_agent_power_off() -> Result<()> {
    require_kvm()?;
    let initramfs = std::env::var("HULL_AGENT_INITRAMFS")
        .context("HULL_AGENT_INITRAMFS: the agent initramfs (cargo xtask initramfs)")?;
    let mut vmm = Vmm::start()?;
    let mut config = base_config("", vmm.dir.path(), &[])?;
    config.initramfs = Some(initramfs.into());
    config.vcpus = 1;
    config.vsock = Some(VsockConfig {
        guest_cid: 3,
        uds_path: vmm.path("vsock.sock"),
    });
    vmm.boot(config, &[])?;
    vmm.wait_console("serving the agent protocol")?;
    vmm.client()?.request(&ControlRequest::Stop {
        mode: StopKind::Graceful,
        timeout_ms: Some(10_000),
    })?;
    let (status, record) = vmm.wait_exit()?;
    assert!(status.success(), "{status}");
    let console = vmm.console();
    assert_eq!(
        record.context("no exit record")?.reason,
        ExitReason::Stopped {
            mode: StopMode::Graceful
        },
        "console:\n{console}"
    );
    assert!(
        console.contains("Ctrl+Alt+Del from the VMM: powering off"),
        "the agent did not handle the key press:\n{console}"
    );
    Ok(())
}

#[test]
fn kill_9_leaves_no_record_and_no_process() -> Result<()> {
    require_kvm()?;
    let mut vmm = Vmm::start()?;
    let mut config = base_config(
        "#!/bin/busybox sh\necho HULL-IDLE\nwhile true; do /bin/busybox sleep 1; done\n",
        vmm.dir.path(),
        &[],
    )?;
    config.vcpus = 1;
    vmm.boot(config, &[])?;
    vmm.wait_console("HULL-IDLE")?;
    let pid: i32 = std::fs::read_to_string(vmm.path("vmm.pid"))?
        .trim()
        .parse()?;
    // SAFETY: sends SIGKILL to the VMM this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let (status, record) = vmm.wait_exit()?;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    // hulld's rule: a dead pid without a record is a VMM that died without a say.
    assert!(
        record.is_none(),
        "a killed VMM cannot have written {record:?}"
    );
    Ok(())
}
