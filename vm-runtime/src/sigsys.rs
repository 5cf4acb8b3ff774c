//! What follows when a confined thread makes a syscall its filter refuses.
//!
//! The filters' action is `Trap`: the refused call is not made and the
//! thread gets SIGSYS. The handler prints the syscall number and the
//! thread's role to stderr. When the fault reporter runs (the VMM starts it
//! before any thread is confined), the handler passes the syscall and the
//! role to it through a pipe and waits: the reporter writes an exit record
//! naming both ([`ExitReason::SeccompViolation`]) and ends the VMM with
//! [`SECCOMP_EXIT_STATUS`]. Without a reporter, or when it has not ended the
//! process within [`REPORT_WAIT`], the handler ends the process itself and
//! no record is written (to hulld, a VMM that died without a say).
//!
//! Reporting must not allocate: the faulting thread may hold the malloc
//! lock (glibc's malloc making a refused syscall is how such a fault once
//! happened). The record is serialized into a buffer reserved up front and
//! written with raw syscalls on paths prepared up front. Guest drives are
//! not synced: their locks may be held by the faulting thread.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU8, AtomicU32, Ordering};
use std::time::Duration;

use seccompiler::BpfProgram;

use crate::exit_record::{ExitReason, ExitRecord};
use crate::seccomp::{self, SECCOMP_EXIT_STATUS, ThreadKind};
use crate::vmm::timeline::BootTimeline;

/// How long a faulting thread waits for the reporter to end the process.
pub const REPORT_WAIT: Duration = Duration::from_secs(5);

/// Write end of the reporter's pipe; -1 while no reporter runs.
static REPORT_PIPE: AtomicI32 = AtomicI32::new(-1);
/// Set by the first faulting thread; later faults only wait.
static FAULT_CLAIMED: AtomicBool = AtomicBool::new(false);
static FAULT_SYSCALL: AtomicI64 = AtomicI64::new(-1);
static FAULT_ROLE: AtomicU8 = AtomicU8::new(ROLE_UNCONFINED);
/// A futex word nobody ever changes: faulting threads sleep on it.
static NEVER_WOKEN: AtomicU32 = AtomicU32::new(0);

const ROLE_UNCONFINED: u8 = 0;
const ROLE_REPORTER: u8 = 5;

thread_local! {
    /// The calling thread's role (a plain TLS read, safe in a signal
    /// handler).
    static THREAD_ROLE: std::cell::Cell<u8> = const { std::cell::Cell::new(ROLE_UNCONFINED) };
}

fn role_code(kind: ThreadKind) -> u8 {
    match kind {
        ThreadKind::Vcpu => 1,
        ThreadKind::Devices => 2,
        ThreadKind::Control => 3,
        ThreadKind::Main => 4,
    }
}

fn role_of_code(code: u8) -> Option<ThreadKind> {
    match code {
        1 => Some(ThreadKind::Vcpu),
        2 => Some(ThreadKind::Devices),
        3 => Some(ThreadKind::Control),
        4 => Some(ThreadKind::Main),
        _ => None,
    }
}

fn role_name(code: u8) -> &'static [u8] {
    match (code, role_of_code(code)) {
        (_, Some(kind)) => kind.name().as_bytes(),
        (ROLE_REPORTER, None) => b"fault reporter",
        _ => b"unconfined",
    }
}

/// Names the calling thread's role for a later SIGSYS.
pub(crate) fn set_thread_role(kind: ThreadKind) {
    THREAD_ROLE.with(|role| role.set(role_code(kind)));
}

/// Installs the SIGSYS handler (process-wide).
pub(crate) fn install_handler() -> Result<(), vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
}

/// Offset of `si_syscall` in a SIGSYS `siginfo_t` on x86_64: three ints,
/// padding to 8, then `si_call_addr` (a pointer).
const SI_SYSCALL_OFFSET: usize = 24;

/// Appends `bytes` to `buf` at `*len`, as far as it fits.
fn append(buf: &mut [u8], len: &mut usize, bytes: &[u8]) {
    for b in bytes {
        if *len < buf.len() {
            buf[*len] = *b;
            *len += 1;
        }
    }
}

/// Appends the decimal digits of `n`.
fn append_number(buf: &mut [u8], len: &mut usize, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut count = 0;
    loop {
        digits[count] = b'0' + (n % 10) as u8;
        count += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits[..count].reverse();
    append(buf, len, &digits[..count]);
}

extern "C" fn on_sigsys(_num: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS; for
    // SYS_SECCOMP its `si_syscall` int lies at SI_SYSCALL_OFFSET, inside the
    // 128-byte structure.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<libc::c_int>()
            .read_unaligned()
    };
    let role = THREAD_ROLE.with(|role| role.get());
    // Only async-signal-safe work from here on: a stack buffer, atomics,
    // write, futex and _exit.
    let mut msg = [0u8; 96];
    let mut len = 0;
    append(&mut msg, &mut len, b"hull-vmm: seccomp blocked syscall ");
    append_number(&mut msg, &mut len, u64::from(nr.unsigned_abs()));
    append(&mut msg, &mut len, b" in the ");
    append(&mut msg, &mut len, role_name(role));
    append(&mut msg, &mut len, b" thread\n");
    // SAFETY: writes `len` initialized bytes of a stack buffer to stderr.
    unsafe { libc::write(2, msg.as_ptr().cast(), len) };

    let pipe = REPORT_PIPE.load(Ordering::SeqCst);
    if pipe >= 0 && role != ROLE_REPORTER {
        if !FAULT_CLAIMED.swap(true, Ordering::SeqCst) {
            FAULT_SYSCALL.store(i64::from(nr), Ordering::SeqCst);
            FAULT_ROLE.store(role, Ordering::SeqCst);
            let byte = 1u8;
            // SAFETY: writes one byte from a stack variable to the pipe's
            // write end, which stays open for the life of the process.
            unsafe { libc::write(pipe, (&byte as *const u8).cast(), 1) };
        }
        // Sleep until the reporter ends the process, at most REPORT_WAIT.
        let slice = libc::timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        for _ in 0..REPORT_WAIT.as_millis() / 100 {
            // SAFETY: FUTEX_WAIT on a static word that stays 0, with a
            // valid relative timeout; it only sleeps.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    NEVER_WOKEN.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    0u32,
                    &slice as *const libc::timespec,
                )
            };
        }
    }
    // SAFETY: ends the process at once without running any non-reentrant
    // code; async-signal-safe.
    unsafe { libc::_exit(SECCOMP_EXIT_STATUS) };
}

/// What the reporter needs, made before any fault can happen.
struct Prepared {
    timeline: Arc<BootTimeline>,
    record_path: CString,
    temp_path: CString,
    dir_path: CString,
    /// Room for the serialized record, so reporting never allocates.
    buffer: Vec<u8>,
}

/// Room reserved for the serialized record (it is a few hundred bytes).
const RECORD_CAPACITY: usize = 16 * 1024;

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} contains a NUL byte", path.display()),
        )
    })
}

/// Starts the fault reporter thread, which writes `exit_record` when a
/// confined thread breaks its filter. `filter` confines the reporter itself
/// (the main thread's: it may open, write, sync and rename files). Call
/// after the SIGSYS handler is installed and before any thread is confined;
/// at most once per process.
pub fn start_fault_reporter(
    exit_record: &Path,
    timeline: Arc<BootTimeline>,
    filter: Option<BpfProgram>,
) -> std::io::Result<()> {
    let dir = exit_record
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp_name = exit_record.file_name().unwrap_or_default().to_os_string();
    temp_name.push(format!(".fault.{}", std::process::id()));
    let prepared = Prepared {
        timeline,
        record_path: c_path(exit_record)?,
        temp_path: c_path(&dir.join(temp_name))?,
        dir_path: c_path(dir)?,
        buffer: Vec::with_capacity(RECORD_CAPACITY),
    };
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so fds[0] is a fresh descriptor owned by
    // nobody else. The write end (fds[1]) is deliberately never closed:
    // the signal handler may use it until the process ends.
    let read_end = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    REPORT_PIPE.store(fds[1], Ordering::SeqCst);
    std::thread::Builder::new()
        .name("fault-reporter".into())
        .spawn(move || {
            if let Some(filter) = &filter {
                seccomp::apply_or_exit(filter, ThreadKind::Main);
            }
            THREAD_ROLE.with(|role| role.set(ROLE_REPORTER));
            wait_and_report(read_end, prepared);
        })?;
    Ok(())
}

fn wait_and_report(read_end: OwnedFd, mut prepared: Prepared) {
    loop {
        let mut byte = 0u8;
        // SAFETY: reads at most one byte into a stack variable from the
        // pipe's read end, which this thread owns.
        let n = unsafe { libc::read(read_end.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
        match n {
            1 => break,
            -1 if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            // The write end never closes; anything else leaves the
            // handler's own exit as the fallback.
            _ => return,
        }
    }
    let Some(thread) = role_of_code(FAULT_ROLE.load(Ordering::SeqCst)) else {
        return;
    };
    let record = ExitRecord::ending_now(
        ExitReason::SeccompViolation {
            syscall: FAULT_SYSCALL.load(Ordering::SeqCst),
            thread,
        },
        &prepared.timeline,
        None,
    );
    prepared.buffer.clear();
    if serde_json::to_writer(&mut prepared.buffer, &record).is_ok()
        && prepared.buffer.write_all(b"\n").is_ok()
    {
        write_record_file(&prepared);
    }
    // SAFETY: ends the process at once; the other threads (one of them
    // parked in the SIGSYS handler) end with it.
    unsafe { libc::_exit(SECCOMP_EXIT_STATUS) };
}

/// Writes the serialized record atomically (temporary file, fsync, rename,
/// fsync of the directory) with raw syscalls: no allocation.
fn write_record_file(prepared: &Prepared) {
    // SAFETY: every pointer passed below is a NUL-terminated CString or the
    // initialized part of the reserved buffer, all owned by `prepared` and
    // alive for the calls; descriptors opened here are closed here.
    unsafe {
        let fd = libc::open(
            prepared.temp_path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        );
        if fd < 0 {
            return;
        }
        let mut written = 0;
        while written < prepared.buffer.len() {
            let n = libc::write(
                fd,
                prepared.buffer[written..].as_ptr().cast(),
                prepared.buffer.len() - written,
            );
            if n <= 0 {
                libc::close(fd);
                return;
            }
            written += n as usize;
        }
        let synced = libc::fsync(fd) == 0;
        libc::close(fd);
        if !synced || libc::rename(prepared.temp_path.as_ptr(), prepared.record_path.as_ptr()) != 0
        {
            return;
        }
        let dir = libc::open(
            prepared.dir_path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if dir >= 0 {
            libc::fsync(dir);
            libc::close(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_names_fit_the_message_buffer() {
        let mut buf = [0u8; 12];
        let mut len = 0;
        append_number(&mut buf, &mut len, 0);
        append(&mut buf, &mut len, b" ");
        append_number(&mut buf, &mut len, 4_294_967_295);
        assert_eq!(&buf[..len], b"0 4294967295");
        // Beyond the buffer nothing is written and nothing panics.
        append(&mut buf, &mut len, b"overflow");
        assert_eq!(len, 12);
    }

    #[test]
    fn role_codes_round_trip() {
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::Devices,
            ThreadKind::Control,
            ThreadKind::Main,
        ] {
            assert_eq!(role_of_code(role_code(kind)), Some(kind));
        }
        assert_eq!(role_of_code(ROLE_UNCONFINED), None);
        assert_eq!(role_of_code(ROLE_REPORTER), None);
        assert_eq!(role_name(ROLE_REPORTER), b"fault reporter");
    }
}
