//! PID 1 duties: leaving the initramfs, mounting the kernel filesystems, and
//! ending the VM.

use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sys::reboot::{RebootMode, reboot};

/// A PID 1 step failed.
#[derive(Debug, thiserror::Error)]
pub enum Pid1Error {
    #[error("cannot mount {fs_type} at {target}")]
    Mount {
        fs_type: &'static str,
        target: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("cannot create {path}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot copy the agent binary into the new root")]
    CopySelf(#[source] std::io::Error),
    #[error("cannot switch the root to the tmpfs ({step})")]
    SwitchRoot {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
}

/// Where the tmpfs that becomes `/` is prepared.
const NEW_ROOT: &str = "/newroot";

/// `statfs` magic of ramfs (include/uapi/linux/magic.h); libc lacks it.
const RAMFS_MAGIC: libc::c_long = 0x8584_58f6;

/// Whether `/` is the kernel's initramfs ("rootfs", a ramfs or tmpfs).
/// Called before /proc is mounted, so it goes by the filesystem type.
fn on_initramfs() -> bool {
    std::process::id() == 1
        && nix::sys::statfs::statfs("/").is_ok_and(|fs| {
            let magic = fs.filesystem_type().0;
            magic == RAMFS_MAGIC || magic == libc::TMPFS_MAGIC
        })
}

/// Moves `/` off the initramfs onto a tmpfs, as `switch_root` does:
/// `pivot_root(2)` (which libcontainer uses to enter each container's
/// rootfs) refuses to run while the current root is the initramfs itself.
/// Only the agent binary is carried over; the initramfs keeps nothing else.
pub fn leave_initramfs() -> Result<(), Pid1Error> {
    if !on_initramfs() {
        return Ok(());
    }
    create_dir(NEW_ROOT)?;
    mount(
        Some("tmpfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .map_err(|source| Pid1Error::Mount {
        fs_type: "tmpfs",
        target: NEW_ROOT,
        source,
    })?;
    // /proc is not mounted yet, so /proc/self/exe cannot name the binary;
    // the kernel ran it as /init.
    let exe = Path::new("/init");
    std::fs::copy(exe, Path::new(NEW_ROOT).join("init")).map_err(Pid1Error::CopySelf)?;
    // Free the initramfs copy; the running image stays mapped until exit.
    let _ = std::fs::remove_file(exe);
    nix::unistd::chdir(NEW_ROOT).map_err(|source| Pid1Error::SwitchRoot {
        step: "chdir",
        source,
    })?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|source| {
        Pid1Error::SwitchRoot {
            step: "move mount",
            source,
        }
    })?;
    nix::unistd::chroot(".").map_err(|source| Pid1Error::SwitchRoot {
        step: "chroot",
        source,
    })?;
    nix::unistd::chdir("/").map_err(|source| Pid1Error::SwitchRoot {
        step: "chdir /",
        source,
    })?;
    Ok(())
}

fn create_dir(path: &str) -> Result<(), Pid1Error> {
    std::fs::create_dir_all(path).map_err(|source| Pid1Error::CreateDir {
        path: path.to_owned(),
        source,
    })
}

struct KernelMount {
    source: &'static str,
    target: &'static str,
    fs_type: &'static str,
    flags: MsFlags,
    data: &'static str,
}

/// The filesystems every Linux userspace expects, and the cgroup v2 tree.
fn kernel_mounts() -> [KernelMount; 8] {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let nosuid_nodev_noexec = nosuid_nodev | MsFlags::MS_NOEXEC;
    [
        KernelMount {
            source: "proc",
            target: "/proc",
            fs_type: "proc",
            flags: nosuid_nodev_noexec,
            data: "",
        },
        KernelMount {
            source: "sysfs",
            target: "/sys",
            fs_type: "sysfs",
            flags: nosuid_nodev_noexec,
            data: "",
        },
        KernelMount {
            source: "devtmpfs",
            target: "/dev",
            fs_type: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: "mode=0755",
        },
        KernelMount {
            source: "devpts",
            target: "/dev/pts",
            fs_type: "devpts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: "newinstance,ptmxmode=0666,mode=0620,gid=5",
        },
        KernelMount {
            source: "shm",
            target: "/dev/shm",
            fs_type: "tmpfs",
            flags: nosuid_nodev,
            data: "mode=1777",
        },
        KernelMount {
            source: "cgroup2",
            target: "/sys/fs/cgroup",
            fs_type: "cgroup2",
            flags: nosuid_nodev_noexec,
            data: "nsdelegate",
        },
        KernelMount {
            source: "tmpfs",
            target: "/run",
            fs_type: "tmpfs",
            flags: nosuid_nodev,
            data: "mode=0755",
        },
        KernelMount {
            source: "tmpfs",
            target: "/tmp",
            fs_type: "tmpfs",
            flags: nosuid_nodev,
            data: "mode=1777",
        },
    ]
}

/// Mounts proc, sys, dev (devtmpfs), devpts, shm, cgroup2, /run and /tmp.
/// A target that is already mounted (EBUSY: the kernel's devtmpfs automount)
/// is left as it is.
pub fn mount_kernel_filesystems() -> Result<(), Pid1Error> {
    for m in kernel_mounts() {
        create_dir(m.target)?;
        let data = (!m.data.is_empty()).then_some(m.data);
        match mount(Some(m.source), m.target, Some(m.fs_type), m.flags, data) {
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(source) => {
                return Err(Pid1Error::Mount {
                    fs_type: m.fs_type,
                    target: m.target,
                    source,
                });
            }
        }
    }
    // /dev/ptmx must lead to this devpts instance.
    let _ = std::fs::remove_file("/dev/ptmx");
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    Ok(())
}

/// Makes Ctrl+Alt+Del (the VMM's graceful stop, through the i8042) a
/// SIGINT to this process instead of an immediate reboot by the kernel, and
/// powers the VM off (synced) when it comes. The handler is in place before
/// the kernel is told, so no key press falls between the two (the kernel
/// drops signals to PID 1 that have no handler). Call from within the
/// runtime, before serving.
pub fn power_off_on_ctrl_alt_del() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupts = match signal(SignalKind::interrupt()) {
        Ok(stream) => stream,
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for Ctrl+Alt+Del; the kernel reboots at once on it");
            return;
        }
    };
    if let Err(err) = nix::sys::reboot::set_cad_enabled(false) {
        tracing::warn!(error = %err, "cannot take over Ctrl+Alt+Del; the kernel reboots at once on it");
    }
    tokio::spawn(async move {
        if interrupts.recv().await.is_some() {
            tracing::info!("Ctrl+Alt+Del from the VMM: powering off");
            power(PowerAction::PowerOff);
        }
    });
}

/// How the VM should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    PowerOff,
    Reboot,
}

/// Syncs filesystems and ends the VM. hull's guest kernel has no ACPI and
/// cannot power off (it would halt and leave the VM running), so without
/// ACPI a power-off is done as a reboot; the VMM ends the VM on either.
pub fn power(action: PowerAction) -> ! {
    nix::unistd::sync();
    let can_power_off = Path::new("/sys/firmware/acpi").exists();
    let mode = match action {
        PowerAction::PowerOff if can_power_off => RebootMode::RB_POWER_OFF,
        _ => RebootMode::RB_AUTOBOOT,
    };
    tracing::info!(?action, ?mode, "ending the VM");
    let err = reboot(mode).unwrap_err();
    // reboot(2) returns only on failure (e.g. not PID 1 / no CAP_SYS_BOOT).
    tracing::error!(error = %err, "reboot(2) failed; exiting");
    std::process::exit(1)
}
