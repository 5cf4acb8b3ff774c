//! Start-up after a restart or crash of hulld: pod VMs outlive hulld (each
//! VMM is its own process in its own cgroup), so the new hulld takes back
//! every pod its records say is ready, finds out what happened to the ones
//! that ended meanwhile, and cleans up a RunPodSandbox that was interrupted.

use std::sync::Arc;

use hull_proto::v1 as agent;
use k8s_cri::v1 as cri;

use super::container_lifecycle::mount_plan;
use super::{CriService, now_nanos};
use crate::error::CriError;
use crate::pod::cgroup::{CgroupRoot, PodCgroup};
use crate::pod::host_mounts;
use crate::pod::live::LivePod;
use crate::pod::vm::{self, VmEnd};
use crate::store::container::{ContainerRecord, ContainerState};
use crate::store::sandbox::{SandboxRecord, SandboxState};

impl CriService {
    /// At shutdown: writes what each log pump has read (unfinished lines
    /// too) and stops the tasks. The pods keep running; the next hulld
    /// adopts them and reads on from where this one stopped.
    pub async fn release_pods(&self) {
        for pod in self.pods.all() {
            for mut container in pod.take_all_containers() {
                if let Some(sync) = container.mount_sync.take() {
                    sync.stop().await;
                }
                if let Some(log) = container.log.take()
                    && let Ok(log) = Arc::try_unwrap(log)
                    && let Err(err) = log.stop().await
                {
                    tracing::warn!(pod = pod.id, error = %err, "a container log did not flush");
                }
            }
        }
    }

    /// Takes back the pods of the previous hulld. Runs before the socket
    /// serves, so no request sees a pod half adopted.
    pub async fn adopt_pods(self: &Arc<Self>) {
        for sandbox in self.sandboxes.list() {
            let id = sandbox.metadata.id.clone();
            match sandbox.status.state {
                SandboxState::Starting => self.drop_interrupted_start(&id).await,
                SandboxState::Ready => self.adopt_pod(sandbox).await,
                // Its VM ended before; only leftovers to clean.
                SandboxState::NotReady => {
                    let _ = self.tear_down_pod(&id).await;
                }
            }
        }
        self.remove_stray_netns().await;
        // CNI CHECK of the adopted pods' networks, in the background: the
        // plugins take a while per pod and the socket should not wait.
        let adopted: Vec<String> = self.pods.all().iter().map(|p| p.id.clone()).collect();
        if !adopted.is_empty() {
            let service = self.clone();
            tokio::spawn(async move {
                for id in adopted {
                    // Under the pod's lock, and not once a stop began: the
                    // network may be going away.
                    let Some(pod) = service.pods.get(&id) else {
                        continue;
                    };
                    let _guard = pod.lock.lock().await;
                    if !pod.is_stopping() {
                        service.check_pod_network(&id).await;
                    }
                }
            });
        }
    }

    /// A RunPodSandbox that hulld did not finish: its caller never got an
    /// id, so nothing of it stays (the kubelet runs the pod again).
    async fn drop_interrupted_start(&self, id: &str) {
        tracing::warn!(
            pod = id,
            "removing a pod sandbox whose start was interrupted by a hulld restart"
        );
        let _ = self.tear_down_pod(id).await;
        let paths = self.pod_paths(id);
        if let Err(err) = vm::remove_files(&paths) {
            tracing::warn!(pod = id, error = %err, "cannot remove the pod's files");
        }
        if let Err(err) = self.sandboxes.remove(id) {
            tracing::warn!(pod = id, error = %err, "cannot remove the pod's record");
        }
    }

    async fn adopt_pod(self: &Arc<Self>, sandbox: SandboxRecord) {
        let id = sandbox.metadata.id.clone();
        let Some(vm_record) = sandbox.status.vm.clone() else {
            // Ready without a VM cannot be; treat it as an interrupted start.
            self.drop_interrupted_start(&id).await;
            return;
        };
        let cgroup = sandbox.status.cgroup.as_ref().and_then(|path| {
            CgroupRoot::detect()
                .and_then(|root| root.open_existing(&path.display().to_string()))
                .map_err(
                    |err| tracing::warn!(pod = id, error = %err, "cannot open the pod's cgroup"),
                )
                .ok()
        });
        if !vm_record.process.is_alive() {
            let oom_killed = cgroup_says_oom(cgroup.as_ref());
            let end = vm::read_end(&vm_record.paths, &vm_record.process, oom_killed);
            tracing::warn!(pod = id, "the pod's VM ended while hulld was not running");
            self.pod_vm_ended(&id, &end).await;
            let _ = self.tear_down_pod(&id).await;
            return;
        }
        let agent = match vm::reconnect(&vm_record.paths).await {
            Ok(agent) => agent,
            Err(err) => {
                tracing::warn!(pod = id, error = %err, "the pod's VM runs but its agent does not answer; stopping it");
                vm::shut_down(
                    &vm_record.paths,
                    &vm_record.process,
                    None,
                    std::time::Duration::ZERO,
                )
                .await;
                let end = VmEnd::Vanished {
                    pid: vm_record.process.pid,
                    oom_killed: false,
                };
                self.pod_vm_ended(&id, &end).await;
                let _ = self.tear_down_pod(&id).await;
                return;
            }
        };
        let pod = Arc::new(LivePod::new(
            id.clone(),
            vm_record.paths.clone(),
            vm_record.process,
            agent,
            cgroup,
        ));
        self.pods.insert(pod.clone());
        self.watch_pod_vm(pod.clone());

        let containers: Vec<ContainerRecord> = self
            .containers
            .list()
            .into_iter()
            .filter(|c| c.metadata.sandbox_id == id)
            .collect();
        for container in &containers {
            if let Err(err) = self.adopt_container(&pod, container).await {
                tracing::warn!(pod = id, container = container.metadata.id, error = %err, "cannot take the container back");
            }
        }
        // Image slots held for containers that have no record (a create
        // interrupted by the crash) are given back.
        let known: std::collections::BTreeSet<&str> =
            containers.iter().map(|c| c.metadata.id.as_str()).collect();
        let orphans: Vec<String> = vm_record
            .slots
            .values()
            .flat_map(|slot| slot.containers.iter())
            .filter(|c| !known.contains(c.as_str()))
            .cloned()
            .collect();
        for orphan in orphans {
            let _guard = pod.lock.lock().await;
            self.release_image(&pod, &orphan).await;
        }
        tracing::info!(
            pod = id,
            pid = pod.process.pid,
            containers = containers.len(),
            "pod VM adopted"
        );
    }

    /// Re-attaches hulld's tasks to one container of an adopted pod.
    async fn adopt_container(
        self: &Arc<Self>,
        pod: &Arc<LivePod>,
        container: &ContainerRecord,
    ) -> Result<(), CriError> {
        let id = &container.metadata.id;
        match container.status.state {
            ContainerState::Exited | ContainerState::Unknown => return Ok(()),
            ContainerState::Created | ContainerState::Running => {}
        }
        let known = pod
            .agent()
            .container_status(agent::ContainerStatusRequest {
                container_id: id.clone(),
            })
            .await;
        if let Err(status) = known {
            if status.code() == tonic::Code::NotFound {
                // The guest has no such container: it cannot be run or
                // waited for any more.
                self.containers.update(id, |c| {
                    c.status.state = ContainerState::Exited;
                    c.status.finished_at = now_nanos().max(c.status.started_at);
                    c.status.exit_code = 255;
                    c.status.reason = "ContainerLost".to_string();
                    c.status.message = "the pod's agent no longer knows this container".to_string();
                })?;
                self.publish_container_event(id, cri::ContainerEventType::ContainerStoppedEvent);
                return Ok(());
            }
            return Err(super::sandbox_lifecycle::agent_error(
                &pod.id,
                "report the container's state",
                status,
            ));
        }
        // Read-only directory mounts go on being synced; the guest holds
        // what the last hulld copied, which the first round compares.
        let plan = mount_plan(id, &container.metadata.config.mounts).await?;
        let sync = host_mounts::spawn_sync(pod.agent(), host_mounts::GuestCopy::assumed(&plan));
        pod.with_container(id, |c| c.mount_sync = Some(sync));
        if container.status.state == ContainerState::Running {
            // Output written while no hulld read it waits in the guest;
            // a process that exited meanwhile is reported by the watcher
            // at once.
            self.attach_log(pod, container).await?;
            self.watch_container_exit(pod, id);
        }
        Ok(())
    }
}

/// Whether the pod's host cgroup saw an OOM kill (its VMM's end).
pub(super) fn cgroup_says_oom(cgroup: Option<&PodCgroup>) -> bool {
    cgroup
        .and_then(|c| c.memory_events().ok())
        .is_some_and(|events| events.oom_killed())
}
