//! ExecSync: runs a command in a running container and returns its output
//! and exit code (the kubelet's exec probes, `crictl exec --sync`).

use std::time::Duration;

use hull_proto::v1 as agent;
use k8s_cri::v1 as cri;
use tokio_stream::StreamExt;

use super::sandbox_lifecycle::{agent_error, new_id};
use super::{CriService, required};
use crate::error::CriError;
use crate::pod::live::LivePod;

/// Output kept per stream. The kubelet takes CRI messages up to 16 MiB, and
/// both streams travel in one response; what a command prints beyond this
/// is read (so it never blocks) and dropped, as containerd caps it.
const MAX_STREAM_BYTES: usize = 7 << 20;

impl CriService {
    pub async fn exec_sync(
        &self,
        request: cri::ExecSyncRequest,
    ) -> Result<cri::ExecSyncResponse, CriError> {
        required(&request.container_id, "container_id")?;
        if request.cmd.is_empty() {
            return Err(CriError::MissingField { field: "cmd" });
        }
        let container = self.containers.lookup(&request.container_id)?;
        let id = container.metadata.id.clone();
        if !container.status.state.can_exec() {
            return Err(CriError::WrongState {
                kind: "container",
                id,
                state: container.status.state.name(),
                action: "exec in it",
            });
        }
        let pod = self.ready_pod(&container.metadata.sandbox_id)?;
        let exec_id = format!("sync-{}", &new_id()[..16]);
        let process = serde_json::json!({ "args": request.cmd, "terminal": false });
        pod.agent()
            .exec_process(agent::ExecProcessRequest {
                container_id: id.clone(),
                exec_id: exec_id.clone(),
                process_json: process.to_string().into_bytes(),
                stdin: false,
            })
            .await
            .map_err(|status| agent_error(&pod.id, "exec in the container", status))?;
        tracing::debug!(container = id, exec_id, cmd = ?request.cmd, "exec started");

        let run = run_to_exit(&pod, &id, &exec_id);
        let timeout = u64::try_from(request.timeout).unwrap_or(0);
        let outcome = if timeout == 0 {
            run.await
        } else {
            match tokio::time::timeout(Duration::from_secs(timeout), run).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    kill_exec(&pod, &id, &exec_id).await;
                    return Err(CriError::Timeout {
                        what: format!("command {:?} in container {id}", request.cmd),
                        seconds: timeout,
                    });
                }
            }
        };
        let (stdout, stderr, exit) = outcome?;
        Ok(cri::ExecSyncResponse {
            stdout,
            stderr,
            exit_code: exit.exit_code,
        })
    }
}

/// Reads the exec's output until it ends, then its exit status.
async fn run_to_exit(
    pod: &LivePod,
    container_id: &str,
    exec_id: &str,
) -> Result<(Vec<u8>, Vec<u8>, agent::ExitStatus), CriError> {
    let mut output = pod
        .agent()
        .read_output(agent::ReadOutputRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            // ExecSync does not outlive its call: nothing to resume.
            ..Default::default()
        })
        .await
        .map_err(|status| agent_error(&pod.id, "read the exec's output", status))?
        .into_inner();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    while let Some(chunk) = output.next().await {
        let chunk =
            chunk.map_err(|status| agent_error(&pod.id, "read the exec's output", status))?;
        let stream = hull_proto::validate::output_chunk(&chunk).map_err(|err| CriError::Agent {
            pod: pod.id.clone(),
            action: "read the exec's output",
            code: tonic::Code::Internal,
            message: err.to_string(),
        })?;
        let sink = match stream {
            agent::OutputStream::Stderr => &mut stderr,
            _ => &mut stdout,
        };
        let room = MAX_STREAM_BYTES.saturating_sub(sink.len());
        sink.extend_from_slice(&chunk.data[..chunk.data.len().min(room)]);
    }
    let waited = pod
        .agent()
        .wait_process(agent::WaitProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
        })
        .await
        .map_err(|status| agent_error(&pod.id, "wait for the exec", status))?
        .into_inner();
    let exit = *hull_proto::validate::wait_reply(&waited).map_err(|err| CriError::Agent {
        pod: pod.id.clone(),
        action: "wait for the exec",
        code: tonic::Code::Internal,
        message: err.to_string(),
    })?;
    Ok((stdout, stderr, exit))
}

/// Kills an exec'd process (past its timeout, or whose client went away),
/// and reaps it in the agent.
pub async fn kill_exec(pod: &LivePod, container_id: &str, exec_id: &str) {
    let killed = pod
        .agent()
        .signal_process(agent::SignalProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            signal: libc::SIGKILL as u32,
            all: false,
        })
        .await;
    if let Err(status) = killed {
        tracing::warn!(
            container = container_id,
            exec_id,
            error = status.message(),
            "cannot kill a timed-out exec"
        );
        return;
    }
    // Collects the exit so the agent forgets the exec.
    let mut agent = pod.agent();
    let (container_id, exec_id) = (container_id.to_string(), exec_id.to_string());
    tokio::spawn(async move {
        let _ = agent
            .wait_process(agent::WaitProcessRequest {
                container_id,
                exec_id,
            })
            .await;
    });
}
