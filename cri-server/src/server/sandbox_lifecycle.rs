//! RunPodSandbox, StopPodSandbox, RemovePodSandbox, and what happens when a
//! pod's VM ends on its own (panic, kill, OOM).

use std::sync::Arc;
use std::time::Duration;

use hull_proto::v1 as agent;
use k8s_cri::v1 as cri;

use super::adopt::cgroup_says_oom;
use super::{CriService, now_nanos, required};
use crate::error::CriError;
use crate::pod::cgroup::{CgroupLimits, CgroupRoot, CpuMax, PodCgroup, pod_cgroup_path};
use crate::pod::live::LivePod;
use crate::pod::vm::{self, PodPaths, VmEnd};
use crate::store::StoreError;
use crate::store::container::ContainerState;
use crate::store::sandbox::{
    PodVmRecord, SandboxMetadata, SandboxRecord, SandboxState, SandboxStatus,
};
use crate::vm_config::VmShape;

/// How long a stopping pod's guest may take to shut down after the agent
/// was asked, before the VMM ends it.
const GUEST_SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A new 64-hex-digit id, as containerd makes them.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer
    // it is given, which lives for the whole call.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    assert_eq!(n, 32, "getrandom(2) fills 32 bytes");
    hex::encode(bytes)
}

/// The agent's error, as hulld reports it.
pub fn agent_error(pod: &str, action: &'static str, status: tonic::Status) -> CriError {
    CriError::Agent {
        pod: pod.to_string(),
        action,
        code: status.code(),
        message: status.message().to_string(),
    }
}

/// Kills what is left in a pod's host cgroup and removes it (waits for the
/// kernel, so off the async threads).
async fn remove_cgroup(pod_id: &str, cgroup: PodCgroup) {
    match tokio::task::spawn_blocking(move || cgroup.remove()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(pod = pod_id, error = %err, "cannot remove the pod's cgroup")
        }
        Err(err) => tracing::warn!(pod = pod_id, error = %err, "removing the pod's cgroup failed"),
    }
}

impl CriService {
    pub async fn run_pod_sandbox(
        self: &Arc<Self>,
        request: cri::RunPodSandboxRequest,
    ) -> Result<cri::RunPodSandboxResponse, CriError> {
        let config = request
            .config
            .ok_or(CriError::MissingField { field: "config" })?;
        let metadata = config.metadata.clone().ok_or(CriError::MissingField {
            field: "config.metadata",
        })?;
        required(&metadata.name, "config.metadata.name")?;
        required(&metadata.namespace, "config.metadata.namespace")?;
        required(&metadata.uid, "config.metadata.uid")?;
        let handler = if request.runtime_handler.is_empty() {
            None
        } else {
            Some(
                self.config
                    .runtime_handlers
                    .get(&request.runtime_handler)
                    .ok_or_else(|| CriError::InvalidField {
                        field: "runtime_handler",
                        reason: format!(
                            "no runtime handler {:?} in hulld's config (configured: {:?})",
                            request.runtime_handler,
                            self.config.runtime_handlers.keys().collect::<Vec<_>>()
                        ),
                    })?,
            )
        };
        let network_mode = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|c| c.namespace_options.as_ref())
            .map(|o| o.network);
        if network_mode == Some(cri::NamespaceMode::Node as i32) {
            return Err(CriError::InvalidField {
                field: "config.linux.security_context.namespace_options.network",
                reason: "hostNetwork pods cannot share the node's network stack: every hull pod \
                         runs in its own VM with its own kernel (run it with another runtime \
                         through a RuntimeClass)"
                    .to_string(),
            });
        }
        if let Some(reason) = self.host.kvm_problem() {
            return Err(CriError::KvmUnusable {
                reason: reason.to_string(),
            });
        }
        // One sandbox per (name, namespace, uid, attempt), as containerd
        // reserves names: a retried RunPodSandbox must not make a second VM.
        let name = format!(
            "{}_{}_{}_{}",
            metadata.name, metadata.namespace, metadata.uid, metadata.attempt
        );
        if let Some(existing) = self.sandboxes.list().into_iter().find(|s| {
            s.metadata.config.metadata.as_ref().is_some_and(|m| {
                format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt) == name
            })
        }) {
            return Err(CriError::NameInUse {
                kind: "pod sandbox",
                name,
                id: existing.metadata.id,
            });
        }

        let id = new_id();
        let paths = PodPaths::new(&self.config.pods_dir(), &self.config.vm.run_dir, &id);
        let shape = VmShape::for_pod(
            &self.config.vm,
            handler,
            config.linux.as_ref().and_then(|l| l.resources.as_ref()),
        );
        let record = SandboxRecord {
            metadata: SandboxMetadata {
                id: id.clone(),
                config: config.clone(),
                runtime_handler: request.runtime_handler.clone(),
                created_at: now_nanos(),
            },
            status: SandboxStatus {
                state: SandboxState::Starting,
                ..Default::default()
            },
        };
        self.sandboxes.insert(record)?;
        tracing::info!(
            pod = id,
            name,
            vcpus = shape.vcpus,
            memory_mib = shape.memory_mib,
            "starting pod VM"
        );

        let starting = std::time::Instant::now();
        match self.start_pod_vm(&id, &config, &paths, &shape).await {
            Ok(()) => {
                self.metrics
                    .observe_pod_start(starting.elapsed().as_secs_f64());
                Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
            }
            Err(err) => {
                // A failed RunPodSandbox leaves nothing behind: the kubelet
                // will retry with a new attempt.
                let _ = self.tear_down_pod(&id).await;
                let _ = self.sandboxes.remove(&id);
                Err(err)
            }
        }
    }

    async fn start_pod_vm(
        self: &Arc<Self>,
        id: &str,
        config: &cri::PodSandboxConfig,
        paths: &PodPaths,
        shape: &VmShape,
    ) -> Result<(), CriError> {
        let linux = config.linux.clone().unwrap_or_default();
        let memory_bytes = (shape.memory_mib + self.config.vm.vmm_overhead_mib) << 20;
        let limits = CgroupLimits {
            memory_max: Some(memory_bytes),
            cpu_max: Some(CpuMax {
                quota_us: u64::from(shape.vcpus) * 100_000,
                period_us: 100_000,
            }),
            ..Default::default()
        };
        let cgroup_error = |source| CriError::Cgroup {
            pod: id.to_string(),
            source,
        };
        let cgroup_path = pod_cgroup_path(
            self.config.cgroup_driver,
            &linux.cgroup_parent,
            &self.config.vm.cgroup_parent,
            id,
        )
        .map_err(cgroup_error)?;
        let cgroup = CgroupRoot::detect()
            .and_then(|root| root.create(&cgroup_path, &limits))
            .map_err(cgroup_error)?;
        self.sandboxes
            .update(id, |r| r.status.cgroup = Some(cgroup_path.clone().into()))?;

        let network = self.set_up_pod_network(id, config).await?;
        let (nic, interfaces, routes) = match network {
            Some(n) => (Some(n.nic), n.interfaces, n.routes),
            None => (None, Vec::new(), Vec::new()),
        };
        let started = vm::launch(paths, &self.config.vm, shape, nic, |command| {
            cgroup.place_child(command).map_err(std::io::Error::other)
        })
        .await
        .map_err(|source| CriError::PodVm {
            pod: id.to_string(),
            source,
        })?;
        self.metrics
            .observe_vm_boot(started.boot_ms as f64 / 1000.0);
        self.sandboxes.update(id, |r| {
            r.status.vm = Some(PodVmRecord {
                paths: paths.clone(),
                process: started.process,
                boot_ms: started.boot_ms,
                slots: Default::default(),
            })
        })?;
        let pod = Arc::new(LivePod::new(
            id.to_string(),
            paths.clone(),
            started.process,
            started.agent,
            Some(cgroup),
        ));
        self.pods.insert(pod.clone());
        self.watch_pod_vm(pod.clone());

        let dns = config.dns_config.clone().unwrap_or_default();
        pod.agent()
            .setup_sandbox(agent::SetupSandboxRequest {
                hostname: config.hostname.clone(),
                dns: Some(agent::DnsConfig {
                    servers: dns.servers,
                    searches: dns.searches,
                    options: dns.options,
                }),
                hosts: Vec::new(),
                interfaces,
                routes,
                sysctls: linux.sysctls.clone(),
                scratch_disk: Some(agent::BlockDevice {
                    source: Some(agent::block_device::Source::Serial(
                        vm::SCRATCH_DRIVE.to_string(),
                    )),
                }),
            })
            .await
            .map_err(|status| agent_error(id, "set up the sandbox", status))?;
        self.sandboxes
            .update(id, |r| r.status.state = SandboxState::Ready)?;
        tracing::info!(
            pod = id,
            boot_ms = started.boot_ms,
            pid = started.process.pid,
            "pod VM ready"
        );
        Ok(())
    }

    /// Watches a live pod's VMM; when it ends without hulld asking, the pod
    /// turns NOTREADY and its containers EXITED with the reason.
    pub fn watch_pod_vm(self: &Arc<Self>, pod: Arc<LivePod>) {
        let service = Arc::clone(self);
        tokio::spawn(async move {
            pod.process.exited().await;
            if pod.is_stopping() {
                return;
            }
            let oom_killed = cgroup_says_oom(pod.cgroup.as_ref());
            let end = vm::read_end(&pod.paths, &pod.process, oom_killed);
            service.pod_vm_ended(&pod.id, &end).await;
        });
    }

    /// Records that a pod's VM is gone: sandbox NOTREADY with the reason,
    /// every container that was not already EXITED marked so.
    pub async fn pod_vm_ended(self: &Arc<Self>, id: &str, end: &VmEnd) {
        let (reason, message) = vm::describe_end(end);
        tracing::warn!(pod = id, reason, message, "pod VM ended");
        if let Some(pod) = self.pods.remove(id) {
            pod.drop_all_containers();
            if let Some(cgroup) = pod.cgroup.clone() {
                remove_cgroup(id, cgroup).await;
            }
        }
        let now = now_nanos();
        for container in self.containers.list() {
            if container.metadata.sandbox_id != id
                || container.status.state == ContainerState::Exited
            {
                continue;
            }
            let cid = container.metadata.id.clone();
            let updated = self.containers.update(&cid, |c| {
                c.status.state = ContainerState::Exited;
                c.status.finished_at = now;
                c.status.exit_code = 255;
                c.status.reason = reason.to_string();
                c.status.message = message.clone();
            });
            if updated.is_ok() {
                self.publish_container_event(&cid, cri::ContainerEventType::ContainerStoppedEvent);
            }
        }
        let _ = self.sandboxes.update(id, |r| {
            r.status.state = SandboxState::NotReady;
            r.status.reason = reason.to_string();
            r.status.message = message.clone();
        });
    }

    pub async fn stop_pod_sandbox(
        self: &Arc<Self>,
        request: cri::StopPodSandboxRequest,
    ) -> Result<cri::StopPodSandboxResponse, CriError> {
        required(&request.pod_sandbox_id, "pod_sandbox_id")?;
        // Stopping a sandbox that does not exist succeeds, as the CRI asks.
        let id = match self.sandboxes.resolve(&request.pod_sandbox_id) {
            Err(StoreError::NotFound { .. }) => return Ok(cri::StopPodSandboxResponse {}),
            Err(err) => return Err(err.into()),
            Ok(id) => id,
        };
        // A failed CNI DEL is reported, so the kubelet stops the pod again
        // (and DEL is retried then); the containers are stopped regardless.
        let teardown = self.stop_pod(&id).await;
        let now = now_nanos();
        for container in self.containers.list() {
            if container.metadata.sandbox_id == id
                && container.status.state != ContainerState::Exited
            {
                let cid = container.metadata.id.clone();
                let never_started = container.status.state == ContainerState::Created;
                self.containers.update(&cid, |c| {
                    c.status.state = ContainerState::Exited;
                    c.status.finished_at = now;
                    if c.status.reason.is_empty() {
                        // Killed with the VM, as containerd kills a pod's
                        // containers with SIGKILL on StopPodSandbox.
                        c.status.exit_code = if never_started { 0 } else { 137 };
                        c.status.reason = "Error".to_string();
                        c.status.message = "stopped with its pod sandbox".to_string();
                    }
                })?;
                self.publish_container_event(&cid, cri::ContainerEventType::ContainerStoppedEvent);
            }
        }
        self.sandboxes.update(&id, |r| {
            r.status.state = SandboxState::NotReady;
        })?;
        teardown?;
        tracing::info!(pod = id, "pod sandbox stopped");
        Ok(cri::StopPodSandboxResponse {})
    }

    /// Ends the pod's VM if it runs and tears down its network (idempotent).
    /// The error is the network's: everything else is done regardless.
    async fn stop_pod(self: &Arc<Self>, id: &str) -> Result<(), CriError> {
        if let Some(pod) = self.pods.get(id) {
            pod.mark_stopping();
            let _guard = pod.lock.lock().await;
            pod.drop_all_containers();
            let mut agent = pod.agent();
            vm::shut_down(
                &pod.paths,
                &pod.process,
                Some(&mut agent),
                GUEST_SHUTDOWN_GRACE,
            )
            .await;
            if let Some(cgroup) = pod.cgroup.clone() {
                remove_cgroup(id, cgroup).await;
            }
            self.pods.remove(id);
        }
        // A VMM hulld does not drive (e.g. left by an interrupted start).
        self.tear_down_pod(id).await
    }

    /// Where a pod's files are: from its record, or where this config puts
    /// them.
    pub(super) fn pod_paths(&self, id: &str) -> PodPaths {
        self.sandboxes
            .get(id)
            .and_then(|r| r.status.vm.map(|v| v.paths))
            .unwrap_or_else(|| PodPaths::new(&self.config.pods_dir(), &self.config.vm.run_dir, id))
    }

    /// Kills whatever is left of a pod's VM and cgroup, from its record, and
    /// tears down its network. Returns the network's error (logged too): a
    /// failed CNI DEL is retried by the next call.
    pub(super) async fn tear_down_pod(&self, id: &str) -> Result<(), CriError> {
        let Some(record) = self.sandboxes.get(id) else {
            return Ok(());
        };
        if let Some(vm_record) = &record.status.vm
            && vm_record.process.is_alive()
        {
            vm::shut_down(&vm_record.paths, &vm_record.process, None, Duration::ZERO).await;
        }
        let network = self.tear_down_pod_network(id).await;
        if let Err(err) = &network {
            tracing::warn!(pod = id, error = %err, "cannot tear down the pod's network");
        }
        if let Some(path) = &record.status.cgroup {
            let opened = CgroupRoot::detect()
                .and_then(|root| root.open_existing(&path.display().to_string()));
            match opened {
                Ok(cgroup) => remove_cgroup(id, cgroup).await,
                Err(err) => tracing::debug!(pod = id, error = %err, "pod cgroup already gone"),
            }
        }
        network
    }

    pub async fn remove_pod_sandbox(
        self: &Arc<Self>,
        request: cri::RemovePodSandboxRequest,
    ) -> Result<cri::RemovePodSandboxResponse, CriError> {
        required(&request.pod_sandbox_id, "pod_sandbox_id")?;
        let id = match self.sandboxes.resolve(&request.pod_sandbox_id) {
            Err(StoreError::NotFound { .. }) => return Ok(cri::RemovePodSandboxResponse {}),
            Err(err) => return Err(err.into()),
            Ok(id) => id,
        };
        // Removing a running sandbox stops it first, as containerd does; a
        // network that cannot be torn down keeps the record for a retry.
        self.stop_pod(&id).await?;
        for container in self.containers.list() {
            if container.metadata.sandbox_id == id {
                self.containers.remove(&container.metadata.id)?;
                self.publish_container_event(
                    &container.metadata.id,
                    cri::ContainerEventType::ContainerDeletedEvent,
                );
            }
        }
        let paths = self.pod_paths(&id);
        if let Err(err) = vm::remove_files(&paths) {
            tracing::warn!(pod = id, error = %err, "cannot remove the pod's files");
        }
        self.sandboxes.remove(&id)?;
        tracing::info!(pod = id, "pod sandbox removed");
        Ok(cri::RemovePodSandboxResponse {})
    }
}
