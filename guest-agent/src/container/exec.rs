//! `ExecProcess`: an extra process in a running container.

use std::sync::Arc;

use hull_proto::limits::MAX_PROCESS_JSON_BYTES;
use hull_proto::v1;

use super::create::{receive_terminal, runtime_error, stdio_builder};
use super::{ContainerError, Containers, Process};
use crate::stdio::ProcessStdio;

impl Containers {
    /// Starts `request.process_json` inside the container. Returns its pid.
    pub fn exec(&self, request: &v1::ExecProcessRequest) -> Result<u32, ContainerError> {
        let id = request.container_id.as_str();
        let exec_id = request.exec_id.as_str();
        let invalid =
            |e: hull_proto::validate::ValidationError| ContainerError::Invalid(e.to_string());
        hull_proto::validate::container_id(id).map_err(invalid)?;
        hull_proto::validate::exec_id(exec_id).map_err(invalid)?;
        if exec_id.is_empty() {
            return Err(ContainerError::Invalid("exec_id is empty".into()));
        }
        if request.process_json.len() > MAX_PROCESS_JSON_BYTES {
            return Err(ContainerError::Invalid(format!(
                "process_json is {} bytes, more than {MAX_PROCESS_JSON_BYTES}",
                request.process_json.len()
            )));
        }
        let process: oci_spec::runtime::Process = serde_json::from_slice(&request.process_json)
            .map_err(|e| {
                ContainerError::Invalid(format!("process_json is not an OCI process: {e}"))
            })?;
        let terminal = process.terminal().unwrap_or(false);

        let bundle = {
            let entries = self.lock();
            let entry = entries
                .get(id)
                .ok_or_else(|| ContainerError::NotFound(id.to_owned()))?;
            if entry.state() != v1::ContainerState::Running {
                return Err(ContainerError::BadState {
                    id: id.to_owned(),
                    state: entry.state_name(),
                    action: "exec in",
                });
            }
            if entry.execs.contains_key(exec_id) {
                return Err(ContainerError::ExecExists {
                    container_id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                });
            }
            entry.bundle.clone()
        };
        let io = |action| {
            move |source| ContainerError::Io {
                action,
                id: id.to_owned(),
                source,
            }
        };
        let process_file = bundle.join(format!("exec-{exec_id}.json"));
        std::fs::write(&process_file, &request.process_json)
            .map_err(io("write the exec process"))?;

        let socket = bundle.join(format!("exec-{exec_id}.sock"));
        let (builder, console, pipes) =
            stdio_builder(id, "prepare an exec in", terminal, request.stdin, &socket)?;
        let built = builder
            .as_tenant()
            .with_detach(true)
            .with_process(Some(&process_file))
            .build();
        let _ = std::fs::remove_file(&process_file);
        let pid = built.map_err(runtime_error(id, "exec in"))?.as_raw();
        let exit = self.track_exit(id, exec_id, pid, None);
        let stdio = match (pipes, console) {
            (Some(stdio), _) => stdio,
            (None, Some(listener)) => {
                let master = receive_terminal(&listener, id);
                let _ = std::fs::remove_file(&socket);
                ProcessStdio::terminal(master?, request.stdin)?
            }
            (None, None) => unreachable!("either pipes or a console socket was set up"),
        };
        tracing::info!(container_id = %id, %exec_id, pid, "exec process started");
        let mut entries = self.lock();
        let entry = entries
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_owned()))?;
        entry
            .execs
            .insert(exec_id.to_owned(), Arc::new(Process { pid, stdio, exit }));
        Ok(u32::try_from(pid).unwrap_or(0))
    }
}
