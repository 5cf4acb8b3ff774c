//! What this host can do, checked once at start: whether its KVM can run a
//! standard guest kernel (the pod VMs need it).

/// The result of hulld's start-up host checks.
#[derive(Clone, Debug)]
pub struct HostCheck {
    kvm_problem: Option<String>,
}

impl HostCheck {
    /// Checks this host.
    pub fn detect() -> Self {
        let kvm_problem = match vm_runtime::host_check::check() {
            vm_runtime::host_check::KvmSupport::Usable => None,
            vm_runtime::host_check::KvmSupport::Unusable(reason) => Some(reason.to_string()),
        };
        if let Some(reason) = &kvm_problem {
            tracing::warn!(%reason, "pod VMs cannot run on this host; serving images and status only");
        }
        Self { kvm_problem }
    }

    /// Why pod VMs cannot run here, if they cannot.
    pub fn kvm_problem(&self) -> Option<&str> {
        self.kvm_problem.as_deref()
    }
}
