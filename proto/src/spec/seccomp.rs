//! Seccomp profiles: hull's RuntimeDefault, and Localhost profiles read from
//! JSON.
//!
//! RuntimeDefault is built here, on the host, so the spec that reaches the
//! agent is complete and the agent applies exactly what hulld decided.
//!
//! hull's RuntimeDefault is a deny list over a default of ALLOW: it refuses
//! (EPERM) the syscalls that Docker's and containerd's default profiles leave
//! out of their allow lists for an unprivileged container (namespace
//! creation, keyrings, kernel modules, mounting, BPF, perf, clock setting,
//! reboot, io_uring, ...), refuses `clone` with any
//! namespace flag, answers `clone3` with ENOSYS (so libc falls back to
//! `clone`, whose flags can be filtered), and lets only the x86_64 syscall
//! ABI through (i386 and x32 calls kill the process). An allow list would
//! also refuse syscalls added to Linux after the list was written; hull's
//! guest kernel is pinned, so the deny list is exact for it and does not
//! break programs that use newer but harmless syscalls.

use oci_spec::runtime::LinuxSeccomp;
use serde_json::json;

/// `EPERM`, returned for denied syscalls.
const EPERM: u32 = 1;
/// `ENOSYS`, returned for `clone3`.
const ENOSYS: u32 = 38;

/// Namespace flags of `clone(2)` (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
/// NEWUSER, NEWPID, NEWNET, NEWTIME).
const CLONE_NAMESPACE_FLAGS: [u64; 8] = [
    0x0002_0000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
    0x0000_0080,
];

/// Syscalls RuntimeDefault refuses with EPERM.
pub const DENIED_SYSCALLS: &[&str] = &[
    // namespaces and mounts
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    // keyrings
    "keyctl",
    "add_key",
    "request_key",
    // kernel modules, kexec, reboot, swap, accounting
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    // tracing
    "perf_event_open",
    "bpf",
    "userfaultfd",
    "lookup_dcookie",
    // clocks and system settings
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "syslog",
    "quotactl",
    "nfsservctl",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    // raw hardware access
    "iopl",
    "ioperm",
    "open_by_handle_at",
    "name_to_handle_at",
    "vhangup",
    // io_uring bypasses the filter for the operations it carries
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

/// hull's RuntimeDefault profile (see the module docs).
pub fn runtime_default() -> LinuxSeccomp {
    let mut syscalls = vec![
        json!({
            "names": DENIED_SYSCALLS,
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EPERM,
        }),
        json!({
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": ENOSYS,
        }),
    ];
    // One rule per flag: libseccomp ANDs the conditions of one rule, so
    // "any of these bits" takes one rule each.
    for flag in CLONE_NAMESPACE_FLAGS {
        syscalls.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EPERM,
            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
    }
    let profile = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": syscalls,
    });
    serde_json::from_value(profile).expect("the RuntimeDefault profile is valid OCI seccomp JSON")
}

/// A Localhost profile could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LocalhostProfileError {
    #[error("the seccomp profile is not valid OCI/Docker seccomp JSON")]
    Parse(#[source] serde_json::Error),
}

/// Parses a Localhost profile (the kubelet's `localhost/<path>`; hulld
/// reads the file). The OCI seccomp format and Docker's profile format share
/// `defaultAction`, `architectures` and `syscalls[].{names,action,args}`;
/// Docker-only keys (`archMap`, `includes`, `excludes`) are ignored.
pub fn localhost(json: &[u8]) -> Result<LinuxSeccomp, LocalhostProfileError> {
    serde_json::from_slice(json).map_err(LocalhostProfileError::Parse)
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{Arch, LinuxSeccompAction, LinuxSeccompOperator};

    use super::*;

    #[test]
    fn runtime_default_denies_namespace_and_key_syscalls() {
        let profile = runtime_default();
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(
            profile.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64][..])
        );
        let rules = profile.syscalls().as_ref().unwrap();
        let denied = &rules[0];
        assert_eq!(denied.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(denied.errno_ret(), Some(EPERM));
        for name in ["unshare", "keyctl", "mount", "bpf", "setns"] {
            assert!(denied.names().iter().any(|n| n == name), "{name} is denied");
        }
        for allowed in ["read", "write", "clone", "execve", "socket"] {
            assert!(
                !denied.names().iter().any(|n| n == allowed),
                "{allowed} is allowed"
            );
        }
        let clone_rules: Vec<_> = rules.iter().filter(|r| r.names() == &["clone"]).collect();
        assert_eq!(clone_rules.len(), CLONE_NAMESPACE_FLAGS.len());
        let arg = &clone_rules[0].args().as_ref().unwrap()[0];
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(arg.value(), arg.value_two().unwrap());
    }

    #[test]
    fn localhost_accepts_docker_style_profiles() {
        let docker = br#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []}],
            "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "args": []}]
        }"#;
        let profile = localhost(docker).unwrap();
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(
            profile.syscalls().as_ref().unwrap()[0].names(),
            &["read", "write"]
        );
    }

    #[test]
    fn localhost_rejects_malformed_json() {
        assert!(matches!(
            localhost(b"{nope"),
            Err(LocalhostProfileError::Parse(_))
        ));
        assert!(matches!(
            localhost(br#"{"defaultAction": "SCMP_ACT_BOGUS"}"#),
            Err(LocalhostProfileError::Parse(_))
        ));
    }
}
