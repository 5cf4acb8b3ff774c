//! Dropping Linux capabilities the VMM does not need once its VM is built.
//!
//! The bounding set is emptied once for the whole process at start (no
//! later `execve` could regain anything); each thread clears its own
//! effective, permitted and inheritable sets before it installs its seccomp
//! filter. Nothing the VMM does after setup needs a capability: it reads and
//! writes fds it already holds, opens drive files hulld made for it, and
//! connects to unix sockets in hulld's run directory.

/// Why capabilities could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegesError {
    #[error("cannot clear the thread's capability sets")]
    Capset(#[source] std::io::Error),
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Removes every capability from the bounding set. Needs CAP_SETPCAP;
/// without it (an unprivileged VMM) there is nothing to drop and this is a no-op.
pub fn drop_bounding_set() {
    let mut dropped = 0;
    for cap in 0..=63 {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and no pointers;
        // invalid numbers fail with EINVAL, which ends the loop's usefulness only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } == 0 {
            dropped += 1;
        }
    }
    tracing::debug!(dropped, "capability bounding set emptied");
}

/// Clears the calling thread's effective, permitted and inheritable sets.
pub fn drop_thread_capabilities() -> Result<(), PrivilegesError> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a v3 header and two data structs, which are valid
    // and live for the call; pid 0 means the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(PrivilegesError::Capset(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The calling thread's effective capability mask (from /proc).
pub fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_can_drop_everything() {
        std::thread::spawn(|| {
            drop_thread_capabilities().unwrap();
            assert_eq!(effective_capabilities(), Some(0));
        })
        .join()
        .unwrap();
    }
}
