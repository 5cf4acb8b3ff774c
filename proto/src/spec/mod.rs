//! Building a container's OCI runtime spec on the host, from CRI-like inputs.
//!
//! hulld translates a CRI `ContainerConfig` (+ image config) into a
//! [`ContainerSpecInput`]; [`build`] turns it into an OCI [`Spec`] that the
//! agent receives in `CreateContainerRequest.oci_spec_json`. The agent fills
//! in only `root.path` (its overlay) and `linux.cgroupsPath`.
//!
//! Defaults follow containerd's CRI plugin: its default capability set,
//! masked and read-only paths, `/dev` as tmpfs, a private devpts, read-only
//! `/sys` and cgroupfs. Namespaces: own mount, pid and cgroup namespaces per
//! container; uts and ipc joined from paths the agent keeps for the pod; no
//! network namespace (the VM's network namespace is the pod's).

mod seccomp;

use std::collections::HashMap;

use oci_spec::runtime::{LinuxResources, LinuxSeccomp, Spec};
use serde_json::{Value, json};

pub use seccomp::{DENIED_SYSCALLS, LocalhostProfileError, localhost, runtime_default};

/// Where the agent keeps the pod's shared state in the guest. The host
/// builds bind mounts and namespace paths from these; the agent creates them
/// in `SetupSandbox`.
pub mod guest_paths {
    /// The pod's UTS namespace (bind-mounted nsfs file).
    pub const UTS_NAMESPACE: &str = "/run/hull/sandbox/ns/uts";
    /// The pod's IPC namespace (bind-mounted nsfs file).
    pub const IPC_NAMESPACE: &str = "/run/hull/sandbox/ns/ipc";
    /// resolv.conf written from `SetupSandboxRequest.dns`.
    pub const RESOLV_CONF: &str = "/run/hull/sandbox/resolv.conf";
    /// hosts written from `SetupSandboxRequest.hosts`.
    pub const HOSTS: &str = "/run/hull/sandbox/hosts";
    /// The pod's hostname.
    pub const HOSTNAME: &str = "/run/hull/sandbox/hostname";
    /// The pod's /dev/shm (a tmpfs shared by its containers).
    pub const SHM: &str = "/run/hull/sandbox/shm";
    /// Parent of files written by `CopyFile`.
    pub const FILES: &str = "/run/hull/files";
    /// Parent of image mount points (`MountImage`).
    pub const IMAGES: &str = "/run/hull/images";
}

/// The capabilities a container gets unless told otherwise (containerd's set).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability Linux 6.1 knows, for `add: ["ALL"]`.
const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// containerd's default masked paths.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// containerd's default read-only paths.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The seccomp profile of a container (CRI `SecurityProfile`).
#[derive(Debug, Clone, Default)]
pub enum SeccompProfile {
    /// No filter.
    Unconfined,
    /// hull's default profile ([`runtime_default`]).
    #[default]
    RuntimeDefault,
    /// A profile the kubelet names by path; hulld reads it and passes it
    /// through [`localhost`].
    Localhost(LinuxSeccomp),
}

/// A bind mount from the guest into the container (volumes, copied-in
/// files, the pod's resolv.conf ...).
#[derive(Debug, Clone)]
pub struct BindMount {
    /// Absolute path inside the container.
    pub container_path: String,
    /// Absolute path inside the guest.
    pub guest_path: String,
    pub readonly: bool,
}

/// Resource limits (CRI `LinuxContainerResources`).
#[derive(Debug, Clone, Default)]
pub struct Resources {
    /// cpu.weight is derived from shares as runc does; 0: unset.
    pub cpu_shares: u64,
    /// CFS quota in µs per period; 0: unlimited.
    pub cpu_quota: i64,
    /// CFS period in µs; 0: the kernel's default (100000).
    pub cpu_period: u64,
    /// memory.max in bytes; 0: unlimited.
    pub memory_limit_bytes: i64,
    /// pids.max; 0: unlimited.
    pub pids_limit: i64,
    /// cpuset.cpus, e.g. "0-1"; empty: unset.
    pub cpuset_cpus: String,
}

/// What hulld knows about a container when it asks the agent to create it.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpecInput {
    /// The command line: CRI command+args merged with the image's
    /// entrypoint/cmd by hulld. Must not be empty.
    pub args: Vec<String>,
    /// `NAME=value` pairs: image env overlaid with CRI envs.
    pub env: Vec<String>,
    /// Absolute; empty: "/".
    pub working_dir: String,
    pub tty: bool,
    /// Numeric user when known; a named user goes in
    /// `CreateContainerRequest.user` and the agent resolves it.
    pub uid: u32,
    pub gid: u32,
    pub supplemental_groups: Vec<u32>,
    pub readonly_rootfs: bool,
    pub no_new_privileges: bool,
    /// Capability names with or without the `CAP_` prefix; `ALL` allowed.
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
    pub seccomp: SeccompProfile,
    pub resources: Resources,
    pub mounts: Vec<BindMount>,
    /// Join the pod's UTS and IPC namespaces (always, except for tests).
    pub share_pod_namespaces: bool,
    /// Bind-mount the pod's resolv.conf, hosts and hostname.
    pub pod_dns_and_hosts: bool,
    /// A privileged container (CRI `privileged`): every capability, no
    /// masked or read-only paths, writable /sys and cgroupfs. The caller
    /// also passes `SeccompProfile::Unconfined`. Inside a pod VM this gives
    /// power over the pod's guest kernel, not over the node.
    pub privileged: bool,
    pub annotations: HashMap<String, String>,
}

/// The inputs cannot make a valid spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("the container has no command: args is empty")]
    NoCommand,
    #[error("{field} must be an absolute path, got {path:?}")]
    RelativePath { field: &'static str, path: String },
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
    #[error("env entry {0:?} is not NAME=value")]
    BadEnv(String),
    #[error("the generated spec does not match the OCI schema")]
    Schema(#[source] serde_json::Error),
}

fn normalize_capability(name: &str) -> Result<String, SpecError> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if full == "CAP_ALL" || ALL_CAPABILITIES.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(SpecError::UnknownCapability(name.to_owned()))
    }
}

/// The capability set after `add` and `drop`, as containerd computes it:
/// start from the defaults (or everything, if `add` holds ALL), add, then
/// drop (ALL drops everything not explicitly added).
fn capabilities(add: &[String], drop: &[String]) -> Result<Vec<String>, SpecError> {
    let add: Vec<String> = add
        .iter()
        .map(|c| normalize_capability(c))
        .collect::<Result<_, _>>()?;
    let drop: Vec<String> = drop
        .iter()
        .map(|c| normalize_capability(c))
        .collect::<Result<_, _>>()?;
    let explicit = add.iter().filter(|c| *c != "CAP_ALL").cloned();
    if drop.iter().any(|c| c == "CAP_ALL") {
        return Ok(explicit.collect());
    }
    let base = if add.iter().any(|c| c == "CAP_ALL") {
        ALL_CAPABILITIES
    } else {
        DEFAULT_CAPABILITIES
    };
    let mut caps: Vec<String> = base.iter().map(|c| (*c).to_owned()).collect();
    for cap in explicit {
        if !caps.contains(&cap) {
            caps.push(cap);
        }
    }
    caps.retain(|c| !drop.contains(c));
    Ok(caps)
}

/// cgroup v1 cpu.shares → OCI `cpu.shares` is kept as is; libcontainer
/// converts it to cgroup v2 `cpu.weight` (the same formula as runc).
fn resources_json(resources: &Resources) -> Value {
    let mut cpu = serde_json::Map::new();
    if resources.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(resources.cpu_shares));
    }
    if resources.cpu_quota > 0 {
        cpu.insert("quota".into(), json!(resources.cpu_quota));
        let period = if resources.cpu_period > 0 {
            resources.cpu_period
        } else {
            100_000
        };
        cpu.insert("period".into(), json!(period));
    }
    if !resources.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(resources.cpuset_cpus));
    }
    let mut out = serde_json::Map::new();
    if !cpu.is_empty() {
        out.insert("cpu".into(), Value::Object(cpu));
    }
    if resources.memory_limit_bytes > 0 {
        // swap = limit: no swap beyond the memory limit (the kubelet's default).
        out.insert(
            "memory".into(),
            json!({"limit": resources.memory_limit_bytes, "swap": resources.memory_limit_bytes}),
        );
    }
    if resources.pids_limit > 0 {
        out.insert("pids".into(), json!({"limit": resources.pids_limit}));
    }
    Value::Object(out)
}

/// The OCI `linux.resources` for an update (`UpdateContainerRequest`).
pub fn build_resources(resources: &Resources) -> Result<LinuxResources, SpecError> {
    serde_json::from_value(resources_json(resources)).map_err(SpecError::Schema)
}

fn default_mounts(input: &ContainerSpecInput) -> Vec<Value> {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", if input.privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", if input.privileged { "rw" } else { "ro" }]}),
    ];
    if input.share_pod_namespaces {
        mounts.push(
            json!({"destination": "/dev/shm", "type": "bind", "source": guest_paths::SHM,
                           "options": ["rbind", "rw", "nosuid", "nodev", "noexec"]}),
        );
    } else {
        mounts.push(
            json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                           "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        );
    }
    if input.pod_dns_and_hosts {
        for (dest, src) in [
            ("/etc/resolv.conf", guest_paths::RESOLV_CONF),
            ("/etc/hosts", guest_paths::HOSTS),
            ("/etc/hostname", guest_paths::HOSTNAME),
        ] {
            mounts.push(json!({"destination": dest, "type": "bind", "source": src,
                               "options": ["rbind", "rprivate", "rw"]}));
        }
    }
    mounts
}

/// Builds the OCI runtime spec for one container.
pub fn build(input: &ContainerSpecInput) -> Result<Spec, SpecError> {
    if input.args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    let cwd = if input.working_dir.is_empty() {
        "/"
    } else {
        input.working_dir.as_str()
    };
    if !cwd.starts_with('/') {
        return Err(SpecError::RelativePath {
            field: "working_dir",
            path: cwd.to_owned(),
        });
    }
    if let Some(bad) = input
        .env
        .iter()
        .find(|e| !e.contains('=') || e.starts_with('='))
    {
        return Err(SpecError::BadEnv(bad.clone()));
    }
    let caps = capabilities(&input.capabilities_add, &input.capabilities_drop)?;

    let mut mounts = default_mounts(input);
    for mount in &input.mounts {
        for (field, path) in [
            ("mounts.container_path", &mount.container_path),
            ("mounts.guest_path", &mount.guest_path),
        ] {
            if !path.starts_with('/') {
                return Err(SpecError::RelativePath {
                    field,
                    path: path.clone(),
                });
            }
        }
        let mode = if mount.readonly { "ro" } else { "rw" };
        mounts.push(json!({"destination": mount.container_path, "type": "bind",
                           "source": mount.guest_path, "options": ["rbind", "rprivate", mode]}));
    }

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    if input.share_pod_namespaces {
        namespaces.push(json!({"type": "uts", "path": guest_paths::UTS_NAMESPACE}));
        namespaces.push(json!({"type": "ipc", "path": guest_paths::IPC_NAMESPACE}));
    } else {
        namespaces.push(json!({"type": "uts"}));
        namespaces.push(json!({"type": "ipc"}));
    }

    let seccomp = match &input.seccomp {
        SeccompProfile::Unconfined => None,
        SeccompProfile::RuntimeDefault => Some(runtime_default()),
        SeccompProfile::Localhost(profile) => Some(profile.clone()),
    };

    let mut linux = json!({
        "namespaces": namespaces,
        "resources": resources_json(&input.resources),
        "maskedPaths": if input.privileged { &[][..] } else { DEFAULT_MASKED_PATHS },
        "readonlyPaths": if input.privileged { &[][..] } else { DEFAULT_READONLY_PATHS },
    });
    if let Some(seccomp) = seccomp {
        linux["seccomp"] = serde_json::to_value(seccomp).map_err(SpecError::Schema)?;
    }

    let spec = json!({
        "ociVersion": "1.2.0",
        "process": {
            "terminal": input.tty,
            "user": {
                "uid": input.uid,
                "gid": input.gid,
                "additionalGids": input.supplemental_groups,
            },
            "args": input.args,
            "env": input.env,
            "cwd": cwd,
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1_048_576, "soft": 1_048_576}],
        },
        // The agent replaces the path with the container's overlay.
        "root": {"path": "rootfs", "readonly": input.readonly_rootfs},
        "mounts": mounts,
        "annotations": input.annotations,
        "linux": linux,
    });
    let mut spec = spec;
    // Only `true` is written: libcontainer 0.7 loads the seccomp filter
    // before dropping capabilities only when the key is absent; an explicit
    // `false` makes it load the filter after the drop, without
    // no_new_privs, which the kernel refuses (EACCES).
    if input.no_new_privileges {
        spec["process"]["noNewPrivileges"] = Value::Bool(true);
    }
    serde_json::from_value(spec).map_err(SpecError::Schema)
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{Capability, LinuxNamespaceType};

    use super::*;

    fn input() -> ContainerSpecInput {
        ContainerSpecInput {
            args: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/bin".into()],
            share_pod_namespaces: true,
            pod_dns_and_hosts: true,
            ..Default::default()
        }
    }

    #[test]
    fn builds_a_containerd_like_default_spec() {
        let spec = build(&input()).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), None, "false is left out");
        assert_eq!(process.args().as_ref().unwrap()[2], "echo hi");
        assert_eq!(process.cwd().to_str(), Some("/"));
        assert_eq!(process.user().uid(), 0);
        let caps = process.capabilities().as_ref().unwrap();
        let bounding = caps.bounding().as_ref().unwrap();
        assert_eq!(bounding.len(), DEFAULT_CAPABILITIES.len());
        assert!(bounding.contains(&Capability::NetBindService));
        assert!(!bounding.contains(&Capability::SysAdmin));

        let linux = spec.linux().as_ref().unwrap();
        let namespaces = linux.namespaces().as_ref().unwrap();
        let kinds: Vec<_> = namespaces.iter().map(|n| n.typ()).collect();
        assert!(kinds.contains(&LinuxNamespaceType::Pid));
        assert!(kinds.contains(&LinuxNamespaceType::Mount));
        assert!(
            !kinds.contains(&LinuxNamespaceType::Network),
            "the VM's netns is the pod's"
        );
        let uts = namespaces
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Uts)
            .unwrap();
        assert_eq!(
            uts.path().as_ref().unwrap().to_str(),
            Some(guest_paths::UTS_NAMESPACE)
        );
        assert!(
            linux
                .masked_paths()
                .as_ref()
                .unwrap()
                .contains(&"/proc/kcore".to_string())
        );
        assert!(
            linux
                .readonly_paths()
                .as_ref()
                .unwrap()
                .contains(&"/proc/sys".to_string())
        );
        assert!(linux.seccomp().is_some(), "RuntimeDefault is the default");

        let mounts = spec.mounts().as_ref().unwrap();
        let resolv = mounts
            .iter()
            .find(|m| m.destination().to_str() == Some("/etc/resolv.conf"))
            .unwrap();
        assert_eq!(
            resolv.source().as_ref().unwrap().to_str(),
            Some(guest_paths::RESOLV_CONF)
        );
    }

    #[test]
    fn privileged_has_no_masked_or_readonly_paths_and_a_writable_sys() {
        let mut input = input();
        input.privileged = true;
        input.capabilities_add = vec!["ALL".into()];
        input.seccomp = SeccompProfile::Unconfined;
        let spec = build(&input).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.masked_paths().as_ref().is_none_or(|p| p.is_empty()));
        assert!(linux.readonly_paths().as_ref().is_none_or(|p| p.is_empty()));
        assert!(linux.seccomp().is_none());
        let bounding = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        assert!(
            bounding
                .bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::SysAdmin)
        );
        let sys = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination().to_str() == Some("/sys"))
            .unwrap();
        assert!(sys.options().as_ref().unwrap().contains(&"rw".to_string()));
    }

    #[test]
    fn applies_user_security_and_limits() {
        let mut input = input();
        input.uid = 1000;
        input.gid = 1001;
        input.supplemental_groups = vec![5, 6];
        input.readonly_rootfs = true;
        input.no_new_privileges = true;
        input.tty = true;
        input.seccomp = SeccompProfile::Unconfined;
        input.resources = Resources {
            memory_limit_bytes: 64 << 20,
            cpu_quota: 50_000,
            pids_limit: 100,
            ..Default::default()
        };
        let spec = build(&input).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.user().uid(), 1000);
        assert_eq!(process.user().gid(), 1001);
        assert_eq!(
            process.user().additional_gids().as_deref(),
            Some(&[5, 6][..])
        );
        assert_eq!(process.no_new_privileges(), Some(true));
        assert_eq!(process.terminal(), Some(true));
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none());
        let resources = linux.resources().as_ref().unwrap();
        assert_eq!(resources.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(resources.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(resources.cpu().as_ref().unwrap().period(), Some(100_000));
        assert_eq!(resources.pids().as_ref().unwrap().limit(), 100);
    }

    #[test]
    fn capability_add_and_drop_follow_containerd() {
        let caps = capabilities(&["sys_admin".into()], &["CAP_KILL".into()]).unwrap();
        assert!(caps.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_KILL".to_string()));
        let caps = capabilities(&["NET_ADMIN".into()], &["ALL".into()]).unwrap();
        assert_eq!(caps, vec!["CAP_NET_ADMIN".to_string()]);
        let caps = capabilities(&["ALL".into()], &[]).unwrap();
        assert_eq!(caps.len(), ALL_CAPABILITIES.len());
        assert!(matches!(
            capabilities(&["CAP_FLY".into()], &[]),
            Err(SpecError::UnknownCapability(_))
        ));
    }

    #[test]
    fn rejects_bad_inputs_naming_the_field() {
        let mut bad = input();
        bad.args.clear();
        assert!(matches!(build(&bad), Err(SpecError::NoCommand)));
        let mut bad = input();
        bad.working_dir = "relative".into();
        assert!(matches!(
            build(&bad),
            Err(SpecError::RelativePath {
                field: "working_dir",
                ..
            })
        ));
        let mut bad = input();
        bad.env.push("NOEQUALS".into());
        assert!(matches!(build(&bad), Err(SpecError::BadEnv(_))));
        let mut bad = input();
        bad.mounts.push(BindMount {
            container_path: "data".into(),
            guest_path: "/run/hull/files/x".into(),
            readonly: true,
        });
        assert!(matches!(build(&bad), Err(SpecError::RelativePath { .. })));
    }

    #[test]
    fn resources_for_update_round_trip() {
        let resources = build_resources(&Resources {
            cpu_shares: 512,
            memory_limit_bytes: 1 << 30,
            cpuset_cpus: "0".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(resources.cpu().as_ref().unwrap().shares(), Some(512));
        assert_eq!(
            resources.cpu().as_ref().unwrap().cpus().as_deref(),
            Some("0")
        );
        assert_eq!(resources.memory().as_ref().unwrap().swap(), Some(1 << 30));
    }
}
