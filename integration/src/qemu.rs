//! QEMU's `-M microvm` as a reference VMM for guest tests: boots a kernel
//! under KVM with virtio-mmio disks, captures the serial console, and waits
//! for console markers and for the VM's exit with deadlines.
//!
//! The guest leaves by rebooting (`reboot -f`; hull's guest kernel has no
//! ACPI, so it cannot power off): `-no-reboot` turns that into QEMU's exit.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Errors running the reference VMM.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("cannot start qemu-system-x86_64 (Debian package qemu-system-x86)")]
    Spawn(#[source] std::io::Error),
    #[error("cannot wait for QEMU")]
    Wait(#[source] std::io::Error),
    /// The marker did not appear in time; the console so far is attached.
    #[error("{what} not seen within {waited:?}; console:\n{console}")]
    Timeout {
        what: String,
        waited: Duration,
        console: String,
    },
    /// QEMU ended before the marker appeared.
    #[error("QEMU exited ({status}) before {what} appeared; console:\n{console}")]
    ExitedEarly {
        what: String,
        status: ExitStatus,
        console: String,
    },
}

/// A virtio-blk disk for the guest.
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
    /// Visible in the guest as `/sys/block/vdX/serial` (up to 20 bytes),
    /// so the guest can find a disk without relying on probe order.
    pub serial: String,
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct MicrovmConfig {
    /// bzImage or ELF vmlinux (QEMU boots an ELF through its PVH note).
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    /// Kernel command line; QEMU appends the `virtio_mmio.device=` entries.
    pub cmdline: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub disks: Vec<Disk>,
    /// Extra arguments appended to QEMU's command line.
    pub extra_args: Vec<String>,
}

impl MicrovmConfig {
    /// 1 vCPU, 128 MiB, serial console, panic → reboot → exit.
    pub fn new(kernel: &Path) -> MicrovmConfig {
        MicrovmConfig {
            kernel: kernel.to_path_buf(),
            initramfs: None,
            cmdline: "console=ttyS0 reboot=t panic=-1".to_string(),
            memory_mib: 128,
            cpus: 1,
            disks: Vec::new(),
            extra_args: Vec::new(),
        }
    }

    /// QEMU's arguments for this configuration.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "-M".into(),
            "microvm,acpi=off".into(),
            "-enable-kvm".into(),
            "-cpu".into(),
            "host".into(),
            "-smp".into(),
            self.cpus.to_string(),
            "-m".into(),
            format!("{}M", self.memory_mib),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-serial".into(),
            "stdio".into(),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-append".into(),
            self.cmdline.clone(),
        ];
        if let Some(initramfs) = &self.initramfs {
            args.push("-initrd".into());
            args.push(initramfs.display().to_string());
        }
        for (index, disk) in self.disks.iter().enumerate() {
            args.push("-drive".into());
            args.push(format!(
                "id=disk{index},file={},format=raw,if=none,readonly={}",
                disk.path.display(),
                if disk.read_only { "on" } else { "off" }
            ));
            args.push("-device".into());
            args.push(format!(
                "virtio-blk-device,drive=disk{index},serial={}",
                disk.serial
            ));
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Starts QEMU. The VM is killed when the returned value is dropped.
    pub fn spawn(&self) -> Result<RunningVm, QemuError> {
        let started = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(QemuError::Spawn)?;
        let console = Console::default();
        if let Some(stdout) = child.stdout.take() {
            console.capture(stdout);
        }
        if let Some(stderr) = child.stderr.take() {
            console.capture(stderr);
        }
        Ok(RunningVm {
            child,
            console,
            started,
        })
    }
}

/// Everything the VM (serial console) and QEMU (its stderr) printed, shared
/// with the threads that read it.
#[derive(Clone, Default)]
pub struct Console {
    inner: Arc<(Mutex<Vec<u8>>, Condvar)>,
}

impl Console {
    fn capture<R: Read + Send + 'static>(&self, mut from: R) {
        let console = self.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            loop {
                match from.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let (text, changed) = &*console.inner;
                        text.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend_from_slice(&buffer[..n]);
                        changed.notify_all();
                    }
                }
            }
        });
    }

    /// The output so far, lossily decoded.
    pub fn text(&self) -> String {
        let (text, _) = &*self.inner;
        String::from_utf8_lossy(&text.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Blocks up to `timeout` for new output; returns early on any.
    fn wait_for_output(&self, seen_len: usize, timeout: Duration) {
        let (text, changed) = &*self.inner;
        let guard = text.lock().unwrap_or_else(|e| e.into_inner());
        if guard.len() == seen_len {
            let _ = changed.wait_timeout(guard, timeout);
        }
    }
}

/// A QEMU process running a guest.
pub struct RunningVm {
    child: Child,
    console: Console,
    started: Instant,
}

impl RunningVm {
    pub fn console(&self) -> &Console {
        &self.console
    }

    /// QEMU's process id (e.g. to read its memory use from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the console contains `needle`; returns the time since
    /// QEMU was started.
    pub fn wait_for_console(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<Duration, QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console.text();
            if text.contains(needle) {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.child.try_wait().map_err(QemuError::Wait)? {
                // Output written just before the exit may still be in flight.
                std::thread::sleep(Duration::from_millis(100));
                let text = self.console.text();
                if text.contains(needle) {
                    return Ok(self.started.elapsed());
                }
                return Err(QemuError::ExitedEarly {
                    what: format!("{needle:?}"),
                    status,
                    console: text,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(QemuError::Timeout {
                    what: format!("{needle:?}"),
                    waited: timeout,
                    console: text,
                });
            }
            self.console
                .wait_for_output(text.len(), (deadline - now).min(Duration::from_millis(100)));
        }
    }

    /// Waits for QEMU to exit (the guest rebooted or QEMU failed).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(QemuError::Wait)? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(QemuError::Timeout {
                    what: "QEMU's exit".to_string(),
                    waited: timeout,
                    console: self.console.text(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_get_serials_and_read_only_flags() {
        let mut config = MicrovmConfig::new(Path::new("/k/vmlinux"));
        config.disks.push(Disk {
            path: "/d/a.img".into(),
            read_only: true,
            serial: "image".into(),
        });
        let args = config.args().join(" ");
        assert!(
            args.contains("-drive id=disk0,file=/d/a.img,format=raw,if=none,readonly=on"),
            "{args}"
        );
        assert!(
            args.contains("virtio-blk-device,drive=disk0,serial=image"),
            "{args}"
        );
        assert!(args.contains("-enable-kvm -cpu host"), "{args}");
        assert!(!args.contains("-initrd"), "{args}");
    }

    #[test]
    fn console_wait_times_out_with_the_output() {
        // A `sleep` process stands in for a guest that prints once, then nothing.
        let console = Console::default();
        console.capture(std::io::Cursor::new(b"booting\n".to_vec()));
        let mut vm = RunningVm {
            child: Command::new("sleep").arg("5").spawn().unwrap(),
            console,
            started: Instant::now(),
        };
        let err = vm
            .wait_for_console("never", Duration::from_millis(300))
            .unwrap_err();
        match err {
            QemuError::Timeout { console, .. } => assert!(console.contains("booting")),
            other => panic!("unexpected {other}"),
        }
        assert!(
            vm.wait_for_console("booting", Duration::from_secs(5))
                .is_ok()
        );
    }
}
