//! Start, signal, delete and update of existing containers.

use std::path::Path;

use hull_proto::limits::MAX_RESOURCES_JSON_BYTES;
use hull_proto::v1;
use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt, create_cgroup_manager};
use libcontainer::signal::Signal;
use nix::sys::signal::{Signal as NixSignal, kill};
use nix::unistd::Pid;

use super::{ContainerError, Containers, POD_CGROUP, STATE_ROOT};
use crate::stats;
use crate::storage;

impl Containers {
    /// Lets a created container run its program.
    pub fn start(&self, id: &str) -> Result<(), ContainerError> {
        let mut entries = self.lock();
        let entry = entries
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_owned()))?;
        if entry.state() != v1::ContainerState::Created {
            return Err(ContainerError::BadState {
                id: id.to_owned(),
                state: entry.state_name(),
                action: "start",
            });
        }
        entry
            .container
            .start()
            .map_err(|source| ContainerError::Runtime {
                action: "start",
                id: id.to_owned(),
                source: Box::new(source),
            })?;
        entry.started_at = stats::now_unix_nanos();
        tracing::info!(container_id = %id, "container started");
        Ok(())
    }

    /// Sends `signal` to the init (empty `exec_id`), to every process of the
    /// container (`all`), or to an exec'd process.
    pub fn signal(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), ContainerError> {
        let number = i32::try_from(signal)
            .map_err(|_| ContainerError::Invalid(format!("signal {signal}")))?;
        let nix_signal = NixSignal::try_from(number)
            .map_err(|_| ContainerError::Invalid(format!("signal {signal} is not a signal")))?;
        let mut entries = self.lock();
        let entry = entries
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_owned()))?;
        if !exec_id.is_empty() {
            let process = entry
                .execs
                .get(exec_id)
                .ok_or_else(|| ContainerError::ExecNotFound {
                    container_id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                })?;
            if process.exit().is_some() {
                return Err(ContainerError::BadState {
                    id: format!("{id}/{exec_id}"),
                    state: "stopped",
                    action: "signal",
                });
            }
            return kill(Pid::from_raw(process.pid), nix_signal).map_err(|e| ContainerError::Io {
                action: "signal an exec'd process",
                id: id.to_owned(),
                source: e.into(),
            });
        }
        if entry.state() == v1::ContainerState::Stopped {
            return Err(ContainerError::BadState {
                id: id.to_owned(),
                state: "stopped",
                action: "signal",
            });
        }
        let signal = Signal::try_from(number)
            .map_err(|_| ContainerError::Invalid(format!("signal {signal}")))?;
        entry
            .container
            .kill(signal, all)
            .map_err(|source| ContainerError::Runtime {
                action: "signal",
                id: id.to_owned(),
                source: Box::new(source),
            })?;
        tracing::debug!(container_id = %id, signal = number, all, "signal sent");
        Ok(())
    }

    /// Removes a container: its processes (with `force`), cgroup, state,
    /// bundle and overlay.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), ContainerError> {
        let mut entries = self.lock();
        let entry = entries
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_owned()))?;
        if entry.state() == v1::ContainerState::Running && !force {
            return Err(ContainerError::BadState {
                id: id.to_owned(),
                state: "running",
                action: "delete (without force)",
            });
        }
        entry
            .container
            .delete(force)
            .map_err(|source| ContainerError::Runtime {
                action: "delete",
                id: id.to_owned(),
                source: Box::new(source),
            })?;
        let entry = entries.remove(id).expect("the entry was just found");
        drop(entries);
        storage::remove_overlay(id, &entry.rootfs)?;
        let _ = std::fs::remove_dir_all(&entry.bundle);
        let _ = std::fs::remove_dir_all(Path::new(STATE_ROOT).join(id));
        tracing::info!(container_id = %id, "container deleted");
        Ok(())
    }

    /// Applies new cgroup limits (`UpdateContainer`).
    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), ContainerError> {
        if resources_json.len() > MAX_RESOURCES_JSON_BYTES {
            return Err(ContainerError::Invalid(format!(
                "resources_json is {} bytes, more than {MAX_RESOURCES_JSON_BYTES}",
                resources_json.len()
            )));
        }
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(resources_json)
            .map_err(|e| {
            ContainerError::Invalid(format!("resources_json is not OCI LinuxResources: {e}"))
        })?;
        if !self.lock().contains_key(id) {
            return Err(ContainerError::NotFound(id.to_owned()));
        }
        let cgroup_error = |detail: String| ContainerError::Cgroup {
            id: id.to_owned(),
            detail,
        };
        let manager = create_cgroup_manager(CgroupConfig {
            cgroup_path: Path::new(POD_CGROUP).join(id),
            systemd_cgroup: false,
            container_name: id.to_owned(),
        })
        .map_err(|e| cgroup_error(e.to_string()))?;
        manager
            .apply(&ControllerOpt {
                resources: &resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| cgroup_error(e.to_string()))?;
        tracing::info!(container_id = %id, "container resources updated");
        Ok(())
    }
}
