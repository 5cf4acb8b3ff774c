//! CreateContainer, StartContainer, StopContainer, RemoveContainer, and the
//! exit of a container's init process.

use std::sync::Arc;
use std::time::Duration;

use hull_proto::v1 as agent;
use k8s_cri::v1 as cri;

use super::sandbox_lifecycle::{agent_error, new_id};
use super::{CriService, now_nanos, required};
use crate::error::CriError;
use crate::pod::container_spec::container_inputs;
use crate::pod::host_mounts;
use crate::pod::live::LivePod;
use crate::pod::vm;
use crate::store::container::{
    ContainerMetadata, ContainerRecord, ContainerState, ContainerStatus,
};
use crate::store::sandbox::SlotUse;

/// Where the guest mounts container images.
const GUEST_IMAGES_DIR: &str = hull_proto::spec::guest_paths::IMAGES;

impl CriService {
    /// The live pod a container request names, or why there is none.
    pub(crate) fn ready_pod(&self, sandbox_id: &str) -> Result<Arc<LivePod>, CriError> {
        let id = self.sandboxes.resolve(sandbox_id)?;
        self.pods.get(&id).ok_or_else(|| CriError::WrongState {
            kind: "pod sandbox",
            id,
            state: "not ready (its VM is not running)",
            action: "run containers in it",
        })
    }

    pub async fn create_container(
        self: &Arc<Self>,
        request: cri::CreateContainerRequest,
    ) -> Result<cri::CreateContainerResponse, CriError> {
        required(&request.pod_sandbox_id, "pod_sandbox_id")?;
        let config = request
            .config
            .ok_or(CriError::MissingField { field: "config" })?;
        let metadata = config.metadata.clone().ok_or(CriError::MissingField {
            field: "config.metadata",
        })?;
        required(&metadata.name, "config.metadata.name")?;
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        required(&image_name, "config.image.image")?;
        let pod = self.ready_pod(&request.pod_sandbox_id)?;
        let sandbox = self.sandboxes.lookup(&pod.id)?;
        // Held from the name check to the record: two creates of one name
        // cannot both pass.
        let _guard = pod.lock.lock().await;
        let name = format!("{}_{}", metadata.name, metadata.attempt);
        if let Some(existing) = self.containers.list().into_iter().find(|c| {
            c.metadata.sandbox_id == pod.id
                && c.metadata
                    .config
                    .metadata
                    .as_ref()
                    .is_some_and(|m| format!("{}_{}", m.name, m.attempt) == name)
        }) {
            return Err(CriError::NameInUse {
                kind: "container",
                name,
                id: existing.metadata.id,
            });
        }
        let image = self
            .images
            .get(&image_name)
            .ok_or_else(|| CriError::ImageNotFound {
                reference: image_name.clone(),
            })?;
        let id = new_id();
        let log_path = match (
            sandbox.metadata.config.log_directory.as_str(),
            config.log_path.as_str(),
        ) {
            ("", _) | (_, "") => String::new(),
            (dir, file) => std::path::Path::new(dir).join(file).display().to_string(),
        };

        let mount_point = self.attach_image(&pod, &image, &id).await?;
        let prepared = self
            .create_in_guest(&pod, &id, &config, &image_name, &image, mount_point)
            .await;
        let copy = match prepared {
            Ok(copy) => copy,
            Err(err) => {
                // Nothing of a failed create stays in the pod.
                if let Err(err) = host_mounts::remove_guest_copies(&mut pod.agent(), &id).await {
                    tracing::warn!(container = id, error = %err, "cannot remove the host-mount copies from the guest");
                }
                self.release_image(&pod, &id).await;
                return Err(err);
            }
        };

        let image_ref = image
            .repo_digests
            .first()
            .cloned()
            .unwrap_or_else(|| image.id.clone());
        self.containers.insert(ContainerRecord {
            metadata: ContainerMetadata {
                id: id.clone(),
                sandbox_id: pod.id.clone(),
                config,
                image_id: image.id.clone(),
                image_ref,
                log_path,
                created_at: now_nanos(),
            },
            status: ContainerStatus::default(),
        })?;
        let sync = host_mounts::spawn_sync(pod.agent(), copy);
        pod.with_container(&id, |c| c.mount_sync = Some(sync));
        self.publish_container_event(&id, cri::ContainerEventType::ContainerCreatedEvent);
        tracing::info!(
            pod = pod.id,
            container = id,
            image = image_name,
            "container created"
        );
        Ok(cri::CreateContainerResponse { container_id: id })
    }

    /// Copies the container's host mounts into the guest and has the agent
    /// create the container on `mount_point` (its image). Returns what was
    /// copied, for the sync task.
    async fn create_in_guest(
        &self,
        pod: &LivePod,
        id: &str,
        config: &cri::ContainerConfig,
        image_name: &str,
        image: &image_service::Image,
        mount_point: String,
    ) -> Result<host_mounts::GuestCopy, CriError> {
        let plan = mount_plan(id, &config.mounts).await?;
        let inputs = container_inputs(config, image_name, &image.config, plan.bind_mounts())
            .map_err(|err| CriError::InvalidField {
                field: "config",
                reason: err.to_string(),
            })?;
        let spec = hull_proto::spec::build(&inputs.spec).map_err(|source| CriError::Spec {
            container: id.to_string(),
            source,
        })?;
        let oci_spec_json = serde_json::to_vec(&spec).map_err(|_| CriError::Internal {
            what: "encoding the container's OCI spec",
        })?;
        let mut client = pod.agent();
        let copy = host_mounts::copy_in(&mut client, &plan)
            .await
            .map_err(|source| CriError::HostMount {
                container: id.to_string(),
                source,
            })?;
        client
            .create_container(agent::CreateContainerRequest {
                container_id: id.to_string(),
                oci_spec_json,
                rootfs_lower_dirs: vec![mount_point],
                user: inputs.user,
                stdin: config.stdin,
            })
            .await
            .map_err(|status| agent_error(&pod.id, "create the container", status))?;
        Ok(copy)
    }

    /// Puts `image` in a drive slot of the pod's VM and mounts it in the
    /// guest, or reuses the slot that already holds it. Returns the guest
    /// mount point. The caller holds the pod's lock.
    async fn attach_image(
        &self,
        pod: &LivePod,
        image: &image_service::Image,
        container_id: &str,
    ) -> Result<String, CriError> {
        let record = self.sandboxes.lookup(&pod.id)?;
        let slots = record.status.vm.map(|v| v.slots).unwrap_or_default();
        if let Some((slot, _)) = slots.iter().find(|(_, use_)| use_.image_id == image.id) {
            let slot = slot.clone();
            let updated = self.sandboxes.update(&pod.id, |r| {
                if let Some(vm) = r.status.vm.as_mut()
                    && let Some(use_) = vm.slots.get_mut(&slot)
                {
                    use_.containers.insert(container_id.to_string());
                }
            })?;
            return Ok(updated
                .status
                .vm
                .and_then(|v| v.slots.get(&slot).map(|u| u.mount_point.clone()))
                .unwrap_or_default());
        }
        let free = vm::slot_ids(self.config.vm.drive_slots)
            .into_iter()
            .find(|slot| !slots.contains_key(slot))
            .ok_or_else(|| CriError::WrongState {
                kind: "pod sandbox",
                id: pod.id.clone(),
                state: "using all its image drive slots",
                action: "attach another image (raise vm.drive_slots for pods whose containers use more distinct images)",
            })?;
        vm::set_drive(&pod.paths, &free, Some(image.block_image.clone()))
            .await
            .map_err(|source| CriError::PodVm {
                pod: pod.id.clone(),
                source,
            })?;
        let digest = image.id.trim_start_matches("sha256:");
        let mount_point = format!("{GUEST_IMAGES_DIR}/{}", &digest[..digest.len().min(16)]);
        let fs_type = match image.block_image_format {
            image_service::BlockImageFormat::Erofs => "erofs",
            #[allow(unreachable_patterns)]
            _ => "ext4",
        };
        let mounted = pod
            .agent()
            .mount_image(agent::MountImageRequest {
                device: Some(agent::BlockDevice {
                    source: Some(agent::block_device::Source::Serial(free.clone())),
                }),
                fs_type: fs_type.to_string(),
                mount_point: mount_point.clone(),
            })
            .await;
        if let Err(status) = mounted {
            let _ = vm::set_drive(&pod.paths, &free, None).await;
            return Err(agent_error(&pod.id, "mount the image", status));
        }
        self.sandboxes.update(&pod.id, |r| {
            if let Some(vm) = r.status.vm.as_mut() {
                vm.slots.insert(
                    free.clone(),
                    SlotUse {
                        image_id: image.id.clone(),
                        mount_point: mount_point.clone(),
                        containers: [container_id.to_string()].into(),
                    },
                );
            }
        })?;
        Ok(mount_point)
    }

    /// Drops a container's use of its image slot; the last user unmounts
    /// the image and empties the slot. The caller holds the pod's lock.
    pub(super) async fn release_image(&self, pod: &LivePod, container_id: &str) {
        let Some(record) = self.sandboxes.get(&pod.id) else {
            return;
        };
        let slots = record.status.vm.map(|v| v.slots).unwrap_or_default();
        for (slot, use_) in slots {
            if !use_.containers.contains(container_id) {
                continue;
            }
            if use_.containers.len() == 1 {
                let unmounted = pod
                    .agent()
                    .unmount_image(agent::UnmountImageRequest {
                        mount_point: use_.mount_point.clone(),
                    })
                    .await;
                match unmounted {
                    // Only an unmounted slot may be swapped.
                    Ok(_) => {
                        if let Err(err) = vm::set_drive(&pod.paths, &slot, None).await {
                            tracing::warn!(pod = pod.id, slot, error = %err, "cannot empty the drive slot");
                        }
                        let _ = self.sandboxes.update(&pod.id, |r| {
                            if let Some(vm) = r.status.vm.as_mut() {
                                vm.slots.remove(&slot);
                            }
                        });
                    }
                    Err(status) => {
                        tracing::warn!(
                            pod = pod.id,
                            slot,
                            error = status.message(),
                            "cannot unmount the image; its slot stays in use"
                        );
                        let _ = self.sandboxes.update(&pod.id, |r| {
                            if let Some(vm) = r.status.vm.as_mut()
                                && let Some(u) = vm.slots.get_mut(&slot)
                            {
                                u.containers.remove(container_id);
                            }
                        });
                    }
                }
            } else {
                let _ = self.sandboxes.update(&pod.id, |r| {
                    if let Some(vm) = r.status.vm.as_mut()
                        && let Some(u) = vm.slots.get_mut(&slot)
                    {
                        u.containers.remove(container_id);
                    }
                });
            }
        }
    }

    pub async fn start_container(
        self: &Arc<Self>,
        request: cri::StartContainerRequest,
    ) -> Result<cri::StartContainerResponse, CriError> {
        required(&request.container_id, "container_id")?;
        let container = self.containers.lookup(&request.container_id)?;
        let id = container.metadata.id.clone();
        if !container.status.state.can_start() {
            return Err(CriError::WrongState {
                kind: "container",
                id,
                state: container.status.state.name(),
                action: "start it",
            });
        }
        let pod = self.ready_pod(&container.metadata.sandbox_id)?;
        // Output is read from the start: the pump attaches before the
        // process runs, so no line is lost.
        self.attach_log(&pod, &container).await?;
        // Taken before the start: a process that exits at once must not
        // look as if it finished before it started.
        let started_at = now_nanos();
        pod.agent()
            .start_container(agent::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(|status| agent_error(&pod.id, "start the container", status))?;
        self.containers.update(&id, |c| {
            c.status.state = ContainerState::Running;
            c.status.started_at = started_at;
        })?;
        self.watch_container_exit(&pod, &id);
        self.publish_container_event(&id, cri::ContainerEventType::ContainerStartedEvent);
        tracing::info!(pod = pod.id, container = id, "container started");
        Ok(cri::StartContainerResponse {})
    }

    /// Waits for the container's init to exit and records how.
    pub fn watch_container_exit(self: &Arc<Self>, pod: &Arc<LivePod>, id: &str) {
        let service = Arc::clone(self);
        let pod_for_task = Arc::clone(pod);
        let id = id.to_string();
        let task_id = id.clone();
        let waiter = tokio::spawn(async move {
            let pod = pod_for_task;
            let id = task_id;
            let waited = pod
                .agent()
                .wait_process(agent::WaitProcessRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                })
                .await;
            let response = match waited {
                Ok(response) => response.into_inner(),
                // The VM went away: its own watcher reports that.
                Err(status) => {
                    tracing::debug!(
                        container = id,
                        error = status.message(),
                        "wait for container ended"
                    );
                    return;
                }
            };
            let exit = match hull_proto::validate::wait_reply(&response) {
                Ok(exit) => *exit,
                Err(err) => {
                    tracing::warn!(container = id, error = %err, "the agent reported an invalid exit status");
                    return;
                }
            };
            // Let the log catch up with the last output before the kubelet
            // reads the status.
            if let Some(log) = pod.with_container(&id, |c| c.log.take())
                && let Ok(log) = Arc::try_unwrap(log)
            {
                let _ = tokio::time::timeout(Duration::from_secs(2), log.finished()).await;
            }
            let mounts = service
                .containers
                .get(&id)
                .map(|c| c.metadata.config.mounts)
                .unwrap_or_default();
            if let Ok(plan) = mount_plan(&id, &mounts).await
                && let Err(err) = host_mounts::write_back(&mut pod.agent(), &plan).await
            {
                tracing::warn!(container = id, error = %err, "cannot copy the termination message back");
            }
            let (reason, message) = exit_reason(&exit);
            let updated = service.containers.update(&id, |c| {
                c.status.state = ContainerState::Exited;
                c.status.exit_code = exit.exit_code;
                // The guest's clock (kvm-clock) may lag the host's by a few
                // milliseconds; the CRI wants finished >= started.
                let reported = if exit.exited_at_unix_nanos > 0 {
                    exit.exited_at_unix_nanos
                } else {
                    now_nanos()
                };
                c.status.finished_at = reported.max(c.status.started_at);
                if c.status.reason.is_empty() {
                    c.status.reason = reason.to_string();
                    c.status.message = message.clone();
                }
            });
            if updated.is_ok() {
                service
                    .publish_container_event(&id, cri::ContainerEventType::ContainerStoppedEvent);
                tracing::info!(
                    container = id,
                    exit_code = exit.exit_code,
                    reason,
                    "container exited"
                );
            }
        });
        pod.with_container(&id, |c| c.waiter = Some(waiter));
    }

    pub async fn stop_container(
        self: &Arc<Self>,
        request: cri::StopContainerRequest,
    ) -> Result<cri::StopContainerResponse, CriError> {
        required(&request.container_id, "container_id")?;
        let container = self.containers.lookup(&request.container_id)?;
        let id = container.metadata.id.clone();
        if container.status.state != ContainerState::Running {
            // Stopping a container that is not running succeeds.
            return Ok(cri::StopContainerResponse {});
        }
        let Some(pod) = self.pods.get(&container.metadata.sandbox_id) else {
            return Ok(cri::StopContainerResponse {});
        };
        let timeout = Duration::from_secs(u64::try_from(request.timeout).unwrap_or(0));
        let mut client = pod.agent();
        if !timeout.is_zero() {
            let signal = stop_signal(&container);
            let _ = client
                .signal_process(agent::SignalProcessRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                    signal,
                    all: false,
                })
                .await;
            if self.wait_exited(&id, timeout).await {
                return Ok(cri::StopContainerResponse {});
            }
        }
        client
            .signal_process(agent::SignalProcessRequest {
                container_id: id.clone(),
                exec_id: String::new(),
                signal: libc::SIGKILL as u32,
                all: true,
            })
            .await
            .map_err(|status| agent_error(&pod.id, "kill the container", status))?;
        if !self.wait_exited(&id, Duration::from_secs(10)).await {
            return Err(CriError::WrongState {
                kind: "container",
                id,
                state: "still running 10 s after SIGKILL",
                action: "confirm it stopped",
            });
        }
        Ok(cri::StopContainerResponse {})
    }

    /// Whether the container's record says EXITED within `timeout`.
    async fn wait_exited(&self, id: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.containers.get(id) {
                Some(c) if c.status.state == ContainerState::Running => {}
                _ => return true,
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn remove_container(
        self: &Arc<Self>,
        request: cri::RemoveContainerRequest,
    ) -> Result<cri::RemoveContainerResponse, CriError> {
        required(&request.container_id, "container_id")?;
        let id = match self.containers.resolve(&request.container_id) {
            Err(crate::store::StoreError::NotFound { .. }) => {
                return Ok(cri::RemoveContainerResponse {});
            }
            Err(err) => return Err(err.into()),
            Ok(id) => id,
        };
        let container = self.containers.lookup(&id)?;
        if let Some(pod) = self.pods.get(&container.metadata.sandbox_id) {
            let _guard = pod.lock.lock().await;
            // A running container is killed first (the CRI allows forced
            // removal; the kubelet stops before it removes).
            let deleted = pod
                .agent()
                .delete_container(agent::DeleteContainerRequest {
                    container_id: id.clone(),
                    force: true,
                })
                .await;
            if let Err(status) = deleted
                && status.code() != tonic::Code::NotFound
            {
                return Err(agent_error(&pod.id, "delete the container", status));
            }
            pod.drop_container(&id);
            if let Err(err) = host_mounts::remove_guest_copies(&mut pod.agent(), &id).await {
                tracing::warn!(container = id, error = %err, "cannot remove the host-mount copies from the guest");
            }
            self.release_image(&pod, &id).await;
        }
        let offsets = self
            .pod_paths(&container.metadata.sandbox_id)
            .output_offsets(&id);
        if let Err(err) = std::fs::remove_file(&offsets)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(container = id, path = %offsets.display(), error = %err, "cannot remove the container's output offsets");
        }
        self.containers.remove(&id)?;
        self.publish_container_event(&id, cri::ContainerEventType::ContainerDeletedEvent);
        tracing::info!(container = id, "container removed");
        Ok(cri::RemoveContainerResponse {})
    }
}

/// What to copy for a container's host mounts (reads the host paths, so off
/// the async threads).
pub(super) async fn mount_plan(
    id: &str,
    mounts: &[cri::Mount],
) -> Result<host_mounts::MountPlan, CriError> {
    let (owned_id, mounts) = (id.to_string(), mounts.to_vec());
    tokio::task::spawn_blocking(move || host_mounts::plan(&owned_id, &mounts))
        .await
        .map_err(|_| CriError::Internal {
            what: "planning host mounts",
        })?
        .map_err(|source| CriError::HostMount {
            container: id.to_string(),
            source,
        })
}

/// The signal StopContainer sends first: the image's StopSignal is not kept
/// by the kubelet in the config, so SIGTERM as containerd's default.
fn stop_signal(_container: &ContainerRecord) -> u32 {
    libc::SIGTERM as u32
}

/// The kubelet's reasons: OOMKilled, Completed (exit 0) or Error.
pub fn exit_reason(exit: &agent::ExitStatus) -> (&'static str, String) {
    if exit.oom_killed {
        return (
            "OOMKilled",
            "the container's memory limit was reached and the kernel killed it".to_string(),
        );
    }
    if exit.exit_code == 0 {
        return ("Completed", String::new());
    }
    if exit.signal != 0 {
        return ("Error", format!("killed by signal {}", exit.signal));
    }
    ("Error", String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons_are_the_kubelets() {
        let exit = |code, signal, oom| agent::ExitStatus {
            exit_code: code,
            signal,
            oom_killed: oom,
            exited_at_unix_nanos: 1,
        };
        assert_eq!(exit_reason(&exit(0, 0, false)).0, "Completed");
        assert_eq!(exit_reason(&exit(3, 0, false)).0, "Error");
        assert_eq!(exit_reason(&exit(137, 9, true)).0, "OOMKilled");
        let (reason, message) = exit_reason(&exit(143, 15, false));
        assert_eq!(reason, "Error");
        assert!(message.contains("15"));
    }
}
