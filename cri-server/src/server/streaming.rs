//! Exec, Attach and PortForward: each checks its request and answers with a
//! one-time URL on hulld's streaming server (see `crate::stream`), where the
//! client then opens the session.

use k8s_cri::v1 as cri;

use super::{CriService, required};
use crate::error::CriError;
use crate::stream::{AttachTarget, ExecTarget, PortForwardTarget, StreamRequest};

/// The stdio a session asks for, as the kubelet's streaming server checks
/// it.
fn check_stdio(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<(), CriError> {
    if !stdin && !stdout && !stderr {
        return Err(CriError::InvalidField {
            field: "stdin/stdout/stderr",
            reason: "at least one of stdin, stdout and stderr must be requested".to_string(),
        });
    }
    if tty && stderr {
        return Err(CriError::InvalidField {
            field: "stderr",
            reason: "a terminal has no separate stderr: tty and stderr cannot both be set"
                .to_string(),
        });
    }
    Ok(())
}

impl CriService {
    pub async fn exec(&self, request: cri::ExecRequest) -> Result<cri::ExecResponse, CriError> {
        required(&request.container_id, "container_id")?;
        if request.cmd.is_empty() {
            return Err(CriError::MissingField { field: "cmd" });
        }
        check_stdio(request.stdin, request.stdout, request.stderr, request.tty)?;
        let (container, _) = self.running_container(&request.container_id, "exec in it")?;
        let url = self.streaming.url_for(
            StreamRequest::Exec(ExecTarget {
                container_id: container.metadata.id,
                cmd: request.cmd,
                tty: request.tty,
                stdin: request.stdin,
                stdout: request.stdout,
                stderr: request.stderr,
            }),
            "Exec",
        )?;
        Ok(cri::ExecResponse { url })
    }

    pub async fn attach(
        &self,
        request: cri::AttachRequest,
    ) -> Result<cri::AttachResponse, CriError> {
        required(&request.container_id, "container_id")?;
        check_stdio(request.stdin, request.stdout, request.stderr, request.tty)?;
        let (container, _) = self.running_container(&request.container_id, "attach to it")?;
        let url = self.streaming.url_for(
            StreamRequest::Attach(AttachTarget {
                container_id: container.metadata.id,
                tty: request.tty,
                stdin: request.stdin,
                stdout: request.stdout,
                stderr: request.stderr,
            }),
            "Attach",
        )?;
        Ok(cri::AttachResponse { url })
    }

    pub async fn port_forward(
        &self,
        request: cri::PortForwardRequest,
    ) -> Result<cri::PortForwardResponse, CriError> {
        required(&request.pod_sandbox_id, "pod_sandbox_id")?;
        let pod_id = self.sandboxes.resolve(&request.pod_sandbox_id)?;
        let mut ports = Vec::with_capacity(request.port.len());
        for port in request.port {
            match u16::try_from(port) {
                Ok(port) if port > 0 => ports.push(port),
                _ => {
                    return Err(CriError::InvalidField {
                        field: "port",
                        reason: format!("{port} is not a port (1-65535)"),
                    });
                }
            }
        }
        self.ready_pod(&pod_id)?;
        let url = self.streaming.url_for(
            StreamRequest::PortForward(PortForwardTarget { pod_id, ports }),
            "PortForward",
        )?;
        Ok(cri::PortForwardResponse { url })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_requests_are_checked_like_the_kubelet_does() {
        assert!(check_stdio(false, false, false, false).is_err());
        assert!(check_stdio(false, true, true, true).is_err());
        check_stdio(true, false, false, false).unwrap();
        check_stdio(true, true, false, true).unwrap();
        check_stdio(false, true, true, false).unwrap();
    }
}
