//! `ExecProcess`: an extra process in a running container.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hull_proto::limits::MAX_PROCESS_JSON_BYTES;
use hull_proto::v1;

use super::create::{receive_terminal, runtime_error, stdio_builder};
use super::{ContainerError, Containers, Process};
use crate::stdio::ProcessStdio;

/// Numbers the console sockets of exec'd processes with a terminal.
static CONSOLE_SOCKETS: AtomicU64 = AtomicU64::new(0);

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
        let container_spec =
            std::fs::read(bundle.join("config.json")).map_err(io("read the container's spec"))?;
        let merged = exec_process(&container_spec, &request.process_json)?;
        let process: oci_spec::runtime::Process = serde_json::from_slice(&merged).map_err(|e| {
            ContainerError::Invalid(format!("process_json is not an OCI process: {e}"))
        })?;
        let terminal = process.terminal().unwrap_or(false);
        let process_file = bundle.join(format!("exec-{exec_id}.json"));
        std::fs::write(&process_file, &merged).map_err(io("write the exec process"))?;

        // Not in the bundle: a unix socket path holds at most 107 bytes, and
        // the bundle's path with a 64-character container id and exec id is
        // longer than that.
        let socket = PathBuf::from(format!(
            "/run/hull/exec-tty-{}.sock",
            CONSOLE_SOCKETS.fetch_add(1, Ordering::Relaxed)
        ));
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

/// The process an exec runs: the container's own `process` (user, env, cwd,
/// capabilities, no_new_privs, rlimits, ...) with each top-level key of
/// `requested` (a JSON object) replacing the container's, so an exec runs
/// as the container does unless the host asks otherwise.
fn exec_process(container_spec: &[u8], requested: &[u8]) -> Result<Vec<u8>, ContainerError> {
    let requested: serde_json::Value = serde_json::from_slice(requested)
        .map_err(|e| ContainerError::Invalid(format!("process_json is not JSON: {e}")))?;
    let serde_json::Value::Object(requested) = requested else {
        return Err(ContainerError::Invalid(
            "process_json is not a JSON object".into(),
        ));
    };
    let spec: serde_json::Value = serde_json::from_slice(container_spec)
        .map_err(|e| ContainerError::Invalid(format!("the container's config.json: {e}")))?;
    let mut process = match spec.get("process") {
        Some(serde_json::Value::Object(own)) => own.clone(),
        _ => serde_json::Map::new(),
    };
    process.extend(requested);
    serde_json::to_vec(&process)
        .map_err(|e| ContainerError::Invalid(format!("cannot encode the exec process: {e}")))
}

#[cfg(test)]
mod tests {
    use super::exec_process;

    #[test]
    fn exec_inherits_the_containers_process_and_overrides_what_is_given() {
        let spec = br#"{"ociVersion":"1.0.2","process":{"args":["sleep","9"],"env":["PATH=/bin","A=1"],"cwd":"/srv","user":{"uid":1000,"gid":1000,"additionalGids":[5]},"noNewPrivileges":true,"terminal":true}}"#;
        let merged = exec_process(spec, br#"{"args":["id"],"terminal":false}"#).unwrap();
        let merged: serde_json::Value = serde_json::from_slice(&merged).unwrap();
        assert_eq!(merged["args"], serde_json::json!(["id"]));
        assert_eq!(merged["terminal"], false);
        assert_eq!(merged["cwd"], "/srv");
        assert_eq!(merged["user"]["uid"], 1000);
        assert_eq!(merged["user"]["additionalGids"], serde_json::json!([5]));
        assert_eq!(merged["noNewPrivileges"], true);
        assert_eq!(merged["env"], serde_json::json!(["PATH=/bin", "A=1"]));
    }

    #[test]
    fn exec_process_must_be_an_object() {
        let spec = br#"{"process":{"args":["sh"]}}"#;
        assert!(exec_process(spec, b"[1]").is_err());
        assert!(exec_process(spec, b"not json").is_err());
    }
}
