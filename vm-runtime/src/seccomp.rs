//! Per-thread seccomp filters, installed by each thread once its setup is
//! done. A thread may make only the system calls on its list; `ioctl` is
//! further restricted by request number. A call off the list raises SIGSYS,
//! and the VMM ends with exit status [`SECCOMP_EXIT_STATUS`] and an exit
//! record naming the syscall and the thread (see [`crate::sigsys`]).
//!
//! The lists are documented in `docs/vmm.md`; keep the two in step.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Exit status of a VMM killed by its own seccomp filter.
pub const SECCOMP_EXIT_STATUS: i32 = 159;

/// The VMM's thread roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadKind {
    /// Runs `KVM_RUN` and emulates port I/O and MMIO.
    Vcpu,
    /// The epoll loop serving virtio queues, taps and vsock sockets.
    Devices,
    /// Serves the control socket.
    Control,
    /// Waits for the VM to end and writes the exit record.
    Main,
}

impl ThreadKind {
    /// The role's name, as the exit record spells it.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Devices => "devices",
            ThreadKind::Control => "control",
            ThreadKind::Main => "main",
        }
    }
}

/// Why filters could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter")]
    Build(#[from] seccompiler::BackendError),
    #[error("cannot install the seccomp filter")]
    Apply(#[from] seccompiler::Error),
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] vmm_sys_util::errno::Error),
}

// ioctl request numbers (x86_64).
const KVM_RUN: u64 = 0xae80;
const FIONBIO: u64 = 0x5421;
/// virtio-net sets a tap's offloads when a driver starts or resets the
/// device. Activation and reset arrive on a vCPU thread (an MMIO write);
/// the device defers the ioctl to the devices thread, so only that role
/// gets it and vCPUs keep KVM_RUN alone.
const TUNSETOFFLOAD: u64 = 0x4004_54d0;

/// Syscalls every thread needs: memory allocation, locks, signals, time,
/// plain reads and writes of fds it already holds, thread exit.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Extra syscalls per role, beyond [`COMMON`] and the ioctls below.
fn extra(kind: ThreadKind) -> &'static [i64] {
    match kind {
        ThreadKind::Vcpu => &[],
        ThreadKind::Devices => &[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_lseek,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_accept4,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_recvmsg,
            libc::SYS_sendmsg,
            libc::SYS_shutdown,
        ],
        ThreadKind::Control => &[
            libc::SYS_poll,
            libc::SYS_ppoll,
            libc::SYS_accept4,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_recvmsg,
            libc::SYS_sendmsg,
            libc::SYS_openat,
            libc::SYS_lseek,
            libc::SYS_fstat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_getpid,
        ],
        ThreadKind::Main => &[
            libc::SYS_openat,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_rename,
            libc::SYS_unlink,
            libc::SYS_getpid,
        ],
    }
}

/// `ioctl` requests each role may make (argument 1, the request number).
fn ioctls(kind: ThreadKind) -> &'static [u64] {
    match kind {
        ThreadKind::Vcpu => &[KVM_RUN],
        ThreadKind::Devices => &[FIONBIO, TUNSETOFFLOAD],
        ThreadKind::Control => &[FIONBIO],
        ThreadKind::Main => &[],
    }
}

/// `fcntl` commands every thread may use: reading fd flags (Rust's std
/// checks them on fd handling), setting O_NONBLOCK, duplicating with CLOEXEC.
const FCNTL_COMMANDS: &[u64] = &[
    libc::F_GETFD as u64,
    libc::F_GETFL as u64,
    libc::F_SETFL as u64,
    libc::F_DUPFD_CLOEXEC as u64,
];

/// The syscall numbers `kind` may make (for docs and tests).
pub fn allowed_syscalls(kind: ThreadKind) -> Vec<i64> {
    let mut list: Vec<i64> = COMMON.iter().chain(extra(kind)).copied().collect();
    list.push(libc::SYS_fcntl);
    list.push(libc::SYS_mprotect);
    if !ioctls(kind).is_empty() {
        list.push(libc::SYS_ioctl);
    }
    list
}

/// One rule per allowed value of argument `arg`.
fn arg_rules(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, SeccompError> {
    values
        .iter()
        .map(|value| {
            Ok(SeccompRule::new(vec![SeccompCondition::new(
                arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                *value,
            )?])?)
        })
        .collect()
}

/// `mprotect` without `PROT_EXEC` (argument 2): glibc's malloc grows the
/// heap of a thread's arena by making reserved pages read-write, so any
/// thread that allocates needs it; no thread may make memory executable.
fn non_executable_mprotect() -> Result<SeccompRule, SeccompError> {
    Ok(SeccompRule::new(vec![SeccompCondition::new(
        2,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )?])?)
}

fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON
        .iter()
        .chain(extra(kind))
        .map(|nr| (*nr, Vec::new()))
        .collect();
    rules.insert(libc::SYS_fcntl, arg_rules(1, FCNTL_COMMANDS)?);
    rules.insert(libc::SYS_mprotect, vec![non_executable_mprotect()?]);
    if !ioctls(kind).is_empty() {
        rules.insert(libc::SYS_ioctl, arg_rules(1, ioctls(kind))?);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    Ok(filter.try_into()?)
}

/// Compiled filters for every role, built before any is installed.
#[derive(Debug)]
pub struct Filters {
    vcpu: BpfProgram,
    devices: BpfProgram,
    control: BpfProgram,
    main: BpfProgram,
}

impl Filters {
    pub fn build() -> Result<Self, SeccompError> {
        install_sigsys_handler()?;
        Ok(Self {
            vcpu: filter(ThreadKind::Vcpu)?,
            devices: filter(ThreadKind::Devices)?,
            control: filter(ThreadKind::Control)?,
            main: filter(ThreadKind::Main)?,
        })
    }

    /// The program for `kind`.
    pub fn get(&self, kind: ThreadKind) -> BpfProgram {
        match kind {
            ThreadKind::Vcpu => self.vcpu.clone(),
            ThreadKind::Devices => self.devices.clone(),
            ThreadKind::Control => self.control.clone(),
            ThreadKind::Main => self.main.clone(),
        }
    }
}

/// Installs `filter` on the calling thread; a thread that cannot be
/// confined must not run, so failure ends the VMM.
pub fn apply_or_exit(filter: &BpfProgram, kind: ThreadKind) {
    crate::sigsys::set_thread_role(kind);
    if let Err(error) = seccompiler::apply_filter(filter) {
        tracing::error!(?kind, %error, "cannot install the seccomp filter; exiting");
        std::process::exit(SECCOMP_EXIT_STATUS);
    }
    tracing::debug!(?kind, "seccomp filter installed");
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    crate::sigsys::install_handler().map_err(SeccompError::Handler)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_compiles() {
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::Devices,
            ThreadKind::Control,
            ThreadKind::Main,
        ] {
            let prog = filter(kind).unwrap();
            assert!(!prog.is_empty());
        }
    }

    #[test]
    fn vcpus_may_not_open_files_or_sockets() {
        let vcpu = allowed_syscalls(ThreadKind::Vcpu);
        for forbidden in [
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_connect,
        ] {
            assert!(!vcpu.contains(&forbidden), "{forbidden}");
        }
        assert!(vcpu.contains(&libc::SYS_ioctl));
        assert!(!allowed_syscalls(ThreadKind::Main).contains(&libc::SYS_ioctl));
    }

    #[test]
    fn nobody_may_exec_or_fork() {
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::Devices,
            ThreadKind::Control,
            ThreadKind::Main,
        ] {
            let list = allowed_syscalls(kind);
            for forbidden in [
                libc::SYS_execve,
                libc::SYS_fork,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_ptrace,
            ] {
                assert!(!list.contains(&forbidden), "{kind:?} {forbidden}");
            }
        }
    }

    /// Runs `probe` in a forked child under the filter of `kind`; returns
    /// its exit status (`SECCOMP_EXIT_STATUS` when the filter trapped).
    fn exit_status_under_filter(kind: ThreadKind, probe: fn() -> i32) -> i32 {
        let filters = Filters::build().unwrap();
        let filter = filters.get(kind);
        // SAFETY: the child only makes raw syscalls (prctl/seccomp via
        // apply_filter, the probe's, _exit) and never returns into the test
        // harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if seccompiler::apply_filter(&filter).is_err() {
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(1) };
            }
            let code = probe();
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child we forked; `status` is a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    /// mprotect of an anonymous page to `prot`: 0 when it succeeded.
    fn mprotect_page(prot: i32) -> i32 {
        // SAFETY: maps one fresh anonymous page, owned by nobody else.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if page == libc::MAP_FAILED {
            return 2;
        }
        // SAFETY: changes the protection of the page mapped just above.
        if unsafe { libc::mprotect(page, 4096, prot) } == 0 {
            0
        } else {
            3
        }
    }

    #[test]
    fn memory_may_become_writable_but_never_executable() {
        for kind in [ThreadKind::Devices, ThreadKind::Vcpu, ThreadKind::Control] {
            assert_eq!(
                exit_status_under_filter(kind, || mprotect_page(
                    libc::PROT_READ | libc::PROT_WRITE
                )),
                0,
                "{kind:?}"
            );
            assert_eq!(
                exit_status_under_filter(kind, || mprotect_page(libc::PROT_READ | libc::PROT_EXEC)),
                SECCOMP_EXIT_STATUS,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn a_filtered_thread_is_confined() {
        // Build in the parent (allocation after fork is unsafe in a threaded
        // test binary); in the child only install the filter and try socket(2).
        let filters = Filters::build().unwrap();
        let main = filters.get(ThreadKind::Main);
        // SAFETY: the child only makes raw syscalls (prctl/seccomp via
        // apply_filter, socket, _exit) and never returns into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if seccompiler::apply_filter(&main).is_err() {
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(1) };
            }
            // SAFETY: plain syscall with constant arguments.
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child we forked; `status` is a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), SECCOMP_EXIT_STATUS);
    }

    #[test]
    fn only_the_devices_thread_may_set_tap_offloads() {
        // On a bad fd the ioctl fails with EBADF when the filter lets it
        // through; a trapped call ends the child with SECCOMP_EXIT_STATUS.
        fn set_offloads() -> i32 {
            // SAFETY: TUNSETOFFLOAD takes its argument by value; fd -1 is
            // never valid, so nothing is changed.
            let rc = unsafe { libc::ioctl(-1, TUNSETOFFLOAD as libc::c_ulong, 0 as libc::c_ulong) };
            if rc < 0 { 0 } else { 1 }
        }
        assert_eq!(
            exit_status_under_filter(ThreadKind::Devices, set_offloads),
            0
        );
        assert_eq!(
            exit_status_under_filter(ThreadKind::Vcpu, set_offloads),
            SECCOMP_EXIT_STATUS
        );
    }
}
