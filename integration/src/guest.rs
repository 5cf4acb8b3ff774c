//! What a guest test needs before it boots anything: hull's guest kernel
//! (built by `cargo xtask kernel`, passed in by the harness), a usable KVM,
//! and a busybox initramfs with a test's own init script.
//!
//! VM tests run under `cargo xtask vm-run` (which `cargo xtask test` does for
//! every `vm_*` test binary); it sets `HULL_TEST_VM=1` when it had to use
//! its test VM, and `cargo xtask test` sets the kernel variables below.

use std::path::{Path, PathBuf};

use crate::cpio::{CpioArchive, CpioError};

/// Path of the guest kernel's uncompressed ELF image.
pub const VMLINUX_ENV: &str = "HULL_GUEST_VMLINUX";
/// Path of the guest kernel's bzImage.
pub const BZIMAGE_ENV: &str = "HULL_GUEST_BZIMAGE";
/// Debian busybox-static: one static binary with every applet a test needs.
pub const BUSYBOX: &str = "/bin/busybox";

/// Why a guest test cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error(
        "{var} is not set: VM tests need hull's guest kernel; run them with `cargo xtask test`, \
         or set {var} to the output of `cargo xtask kernel` and run under `cargo xtask vm-run`"
    )]
    KernelVarMissing { var: &'static str },
    #[error("{var}={path} does not exist; rebuild it with `cargo xtask kernel`")]
    KernelMissing { var: &'static str, path: PathBuf },
    #[error(
        "KVM cannot run guests here: {reason}; run VM tests through `cargo xtask vm-run` (or `cargo xtask test`)"
    )]
    NoKvm { reason: String },
    #[error("cannot read {path} (Debian package busybox-static)")]
    Busybox {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the initramfs")]
    Cpio(#[from] CpioError),
}

/// hull's guest kernel images, as the harness passed them.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    pub vmlinux: PathBuf,
    pub bzimage: PathBuf,
}

fn kernel_path(var: &'static str) -> Result<PathBuf, GuestError> {
    let path = std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .ok_or(GuestError::KernelVarMissing { var })?;
    if !path.is_file() {
        return Err(GuestError::KernelMissing { var, path });
    }
    Ok(path)
}

/// The kernel from [`VMLINUX_ENV`] and [`BZIMAGE_ENV`].
pub fn guest_kernel() -> Result<GuestKernel, GuestError> {
    Ok(GuestKernel {
        vmlinux: kernel_path(VMLINUX_ENV)?,
        bzimage: kernel_path(BZIMAGE_ENV)?,
    })
}

/// Fails unless this host's `/dev/kvm` boots standard guests (hull's own
/// host check, the one hulld runs at start).
pub fn require_kvm() -> Result<(), GuestError> {
    use vm_runtime::host_check::{KvmSupport, check};
    match check() {
        KvmSupport::Usable => Ok(()),
        unusable => Err(GuestError::NoKvm {
            reason: unusable.to_string(),
        }),
    }
}

/// An initramfs with `/bin/busybox`, `/dev/console` and `/init` = `init`
/// (a script; start it with `#!/bin/busybox sh`). Add more entries to the
/// returned archive, then write it with [`CpioArchive::write_to`].
pub fn busybox_initramfs(init: &str) -> Result<CpioArchive, GuestError> {
    let busybox = std::fs::read(BUSYBOX).map_err(|source| GuestError::Busybox {
        path: BUSYBOX,
        source,
    })?;
    let mut archive = CpioArchive::new();
    archive
        .dir("bin", 0o755)?
        .file("bin/busybox", 0o755, &busybox)?
        .symlink("bin/sh", "busybox")?
        .dir("dev", 0o755)?
        .char_device("dev/console", 0o600, 5, 1)?
        .dir("proc", 0o555)?
        .dir("sys", 0o555)?
        .dir("mnt", 0o755)?
        .file("init", 0o755, init.as_bytes())?;
    Ok(archive)
}

/// Writes a busybox initramfs with `init` to `path`.
pub fn write_busybox_initramfs(init: &str, path: &Path) -> Result<(), GuestError> {
    busybox_initramfs(init)?.write_to(path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_kernel_variable_says_how_to_run() {
        let err = kernel_path("HULL_TEST_SURELY_UNSET_VARIABLE").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("cargo xtask test"), "{text}");
    }

    #[test]
    fn initramfs_has_init_and_busybox() {
        let archive = busybox_initramfs("#!/bin/busybox sh\necho hi\n").unwrap();
        let bytes = archive.finish();
        let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"bin/busybox\0"));
        assert!(find(b"init\0"));
        assert!(find(b"#!/bin/busybox sh\necho hi\n"));
        assert!(find(b"dev/console\0"));
    }
}
