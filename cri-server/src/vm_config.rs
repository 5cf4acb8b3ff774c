//! The `[vm]` section of hulld's configuration and the `[runtime_handlers]`
//! that select a pod VM's size (Kubernetes RuntimeClass handlers).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How pod VMs are built.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmSettings {
    /// The guest kernel (`vmlinux` ELF or `bzImage`) every pod VM boots.
    pub kernel: PathBuf,
    /// The initramfs holding the guest agent.
    pub initramfs: PathBuf,
    /// The VMM binary; empty: `hull-vmm` next to `hulld`, else on `PATH`.
    pub vmm_binary: PathBuf,
    /// Where each pod's sockets live (a tmpfs): `<run_dir>/<pod>/`.
    pub run_dir: PathBuf,
    /// vCPUs of a pod VM whose pod asks for no CPU limit.
    pub vcpus: u8,
    /// Guest memory of a pod VM whose pod asks for no memory limit; with a
    /// limit, the VM gets `base_memory_mib` plus the pod's limit.
    pub memory_mib: u64,
    /// Guest memory for the guest kernel and agent on top of a pod's limit.
    pub base_memory_mib: u64,
    /// Host memory allowed to the VMM process beyond guest memory (its own
    /// heap, device buffers), part of the pod cgroup's `memory.max`.
    pub vmm_overhead_mib: u64,
    /// Empty drive slots declared at boot for container images: the most
    /// distinct images one pod's containers can use.
    pub drive_slots: u8,
    /// Size of each pod's sparse scratch disk (containers' writable layers
    /// and emptyDir volumes); only written blocks take host disk space.
    pub scratch_disk_mib: u64,
    /// How long RunPodSandbox waits for the guest agent to answer.
    pub start_timeout_secs: u64,
    /// Parent of the pod VM cgroups when the kubelet names none: a cgroupfs
    /// path (`/hull`) or a systemd slice (`hull.slice`). Empty: `/hull` or
    /// `hull.slice` by the cgroup driver.
    pub cgroup_parent: String,
    /// Appended to the guest kernel command line.
    pub kernel_cmdline_extra: String,
}

impl Default for VmSettings {
    fn default() -> Self {
        Self {
            kernel: PathBuf::from("/usr/lib/hull/vmlinux"),
            initramfs: PathBuf::from("/usr/lib/hull/hull-agent-initramfs.cpio"),
            vmm_binary: PathBuf::new(),
            run_dir: PathBuf::from("/run/hull/pods"),
            vcpus: 1,
            memory_mib: 256,
            base_memory_mib: 128,
            vmm_overhead_mib: 64,
            drive_slots: 8,
            scratch_disk_mib: 10240,
            start_timeout_secs: 30,
            cgroup_parent: String::new(),
            kernel_cmdline_extra: "quiet".to_string(),
        }
    }
}

impl VmSettings {
    /// The VMM binary to start.
    pub fn vmm_binary(&self) -> PathBuf {
        if !self.vmm_binary.as_os_str().is_empty() {
            return self.vmm_binary.clone();
        }
        let beside_hulld = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("hull-vmm")));
        match beside_hulld {
            Some(path) if path.exists() => path,
            _ => PathBuf::from("hull-vmm"),
        }
    }
}

/// A RuntimeClass handler: overrides of the `[vm]` sizes for the pods that
/// name it (`runtimeClassName` → `runtime_handler` in the CRI).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeHandler {
    pub vcpus: Option<u8>,
    pub memory_mib: Option<u64>,
    pub kernel: Option<PathBuf>,
}

/// Handlers by name; the empty name (no RuntimeClass) always exists and
/// uses `[vm]` as it is.
pub type RuntimeHandlers = BTreeMap<String, RuntimeHandler>;

/// The VM shape for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmShape {
    pub vcpus: u8,
    pub memory_mib: u64,
    pub kernel: PathBuf,
}

/// Most vCPUs hull gives one pod VM (the VMM's MP table allows 32).
pub const MAX_VCPUS: u8 = 32;

impl VmShape {
    /// The VM for a pod: the handler's (or `[vm]`'s) size, grown to the
    /// pod's own limits when the kubelet passes them (pod-level resources,
    /// the sum of its containers' limits).
    pub fn for_pod(
        settings: &VmSettings,
        handler: Option<&RuntimeHandler>,
        pod_resources: Option<&k8s_cri::v1::LinuxContainerResources>,
    ) -> Self {
        let mut shape = VmShape {
            vcpus: handler.and_then(|h| h.vcpus).unwrap_or(settings.vcpus),
            memory_mib: handler
                .and_then(|h| h.memory_mib)
                .unwrap_or(settings.memory_mib),
            kernel: handler
                .and_then(|h| h.kernel.clone())
                .unwrap_or_else(|| settings.kernel.clone()),
        };
        if let Some(resources) = pod_resources {
            if resources.memory_limit_in_bytes > 0 {
                let limit_mib = (resources.memory_limit_in_bytes as u64).div_ceil(1 << 20);
                shape.memory_mib = shape
                    .memory_mib
                    .max(settings.base_memory_mib.saturating_add(limit_mib));
            }
            if resources.cpu_quota > 0 && resources.cpu_period > 0 {
                let cpus = (resources.cpu_quota as u64).div_ceil(resources.cpu_period as u64);
                let cpus = u8::try_from(cpus).unwrap_or(MAX_VCPUS).min(MAX_VCPUS);
                shape.vcpus = shape.vcpus.max(cpus);
            }
        }
        shape
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::LinuxContainerResources;

    #[test]
    fn a_pod_without_limits_gets_the_handler_or_default_size() {
        let settings = VmSettings::default();
        let shape = VmShape::for_pod(&settings, None, None);
        assert_eq!((shape.vcpus, shape.memory_mib), (1, 256));
        let big = RuntimeHandler {
            vcpus: Some(4),
            memory_mib: Some(2048),
            kernel: None,
        };
        let shape = VmShape::for_pod(&settings, Some(&big), None);
        assert_eq!((shape.vcpus, shape.memory_mib), (4, 2048));
        assert_eq!(shape.kernel, settings.kernel);
    }

    #[test]
    fn pod_limits_grow_the_vm() {
        let settings = VmSettings::default();
        let resources = LinuxContainerResources {
            memory_limit_in_bytes: 1 << 30,
            cpu_quota: 250_000,
            cpu_period: 100_000,
            ..Default::default()
        };
        let shape = VmShape::for_pod(&settings, None, Some(&resources));
        assert_eq!(shape.memory_mib, 128 + 1024);
        assert_eq!(shape.vcpus, 3);
        let huge = LinuxContainerResources {
            cpu_quota: 1_000_000_000,
            cpu_period: 100_000,
            ..Default::default()
        };
        assert_eq!(
            VmShape::for_pod(&settings, None, Some(&huge)).vcpus,
            MAX_VCPUS
        );
        // A small limit never shrinks the VM below the configured size.
        let small = LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            ..Default::default()
        };
        assert_eq!(
            VmShape::for_pod(&settings, None, Some(&small)).memory_mib,
            256
        );
    }
}
