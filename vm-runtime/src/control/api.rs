//! Request and response types of the control socket.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::vmm::config::VmConfig;

/// One request line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    /// Builds and starts the VM. Tap fds named by `TapSource::PassedFd` come
    /// with this line (SCM_RIGHTS, in the same `sendmsg`).
    Boot { config: VmConfig },
    /// State, boot timeline, devices. (Empty struct variants, so that
    /// unknown fields are refused as for every other request.)
    Status {},
    /// Counters of vCPUs and devices, and the VMM's memory use.
    Metrics {},
    /// Ends the VM. `graceful` injects Ctrl+Alt+Del and waits up to
    /// `timeout_ms` (default 5000) for the guest to reboot, then forces.
    Stop {
        mode: StopKind,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Sets, replaces or (with no `path`) empties drive `id`'s backing file.
    SetDrive {
        id: String,
        #[serde(default)]
        path: Option<PathBuf>,
    },
}

/// How to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopKind {
    Graceful,
    Forced,
}

/// What kind of failure a response reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlErrorKind {
    /// The line is not a valid request (bad JSON, unknown op or field).
    InvalidRequest,
    /// The request needs a running VM and there is none yet.
    NotBooted,
    /// `boot` when a VM already runs.
    AlreadyBooted,
    /// Building or starting the VM failed; the VMM stays up for another `boot`.
    BootFailed,
    /// No drive with that id.
    NotFound,
    /// A host operation (opening a backing file, ...) failed.
    HostError,
}

/// One response line: `{"ok":true,"result":...}` or `{"ok":false,"error":{...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ControlErrorBody>,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlErrorBody {
    pub kind: ControlErrorKind,
    pub message: String,
}

impl ControlResponse {
    pub fn ok(result: serde_json::Value) -> Self {
        Self {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn error(kind: ControlErrorKind, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            result: None,
            error: Some(ControlErrorBody {
                kind,
                message: message.into(),
            }),
        }
    }
}

/// Renders an error with its sources, for the `message` field.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_from_their_documented_json() {
        let r: ControlRequest = serde_json::from_str(r#"{"op":"status"}"#).unwrap();
        assert_eq!(r, ControlRequest::Status {});
        let r: ControlRequest =
            serde_json::from_str(r#"{"op":"stop","mode":"graceful","timeout_ms":100}"#).unwrap();
        assert_eq!(
            r,
            ControlRequest::Stop {
                mode: StopKind::Graceful,
                timeout_ms: Some(100)
            }
        );
        let r: ControlRequest =
            serde_json::from_str(r#"{"op":"set_drive","id":"slot1","path":"/img"}"#).unwrap();
        assert_eq!(
            r,
            ControlRequest::SetDrive {
                id: "slot1".into(),
                path: Some("/img".into())
            }
        );
        let r: ControlRequest =
            serde_json::from_str(r#"{"op":"boot","config":{"kernel":"/k","vcpus":2}}"#).unwrap();
        assert!(matches!(r, ControlRequest::Boot { config } if config.vcpus == 2));
    }

    #[test]
    fn unknown_ops_and_fields_are_refused() {
        assert!(serde_json::from_str::<ControlRequest>(r#"{"op":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<ControlRequest>(r#"{"op":"status","x":1}"#).is_err());
        assert!(
            serde_json::from_str::<ControlRequest>(r#"{"op":"stop","mode":"nicely"}"#).is_err()
        );
    }

    #[test]
    fn responses_serialize_compactly() {
        let ok = serde_json::to_string(&ControlResponse::ok(serde_json::json!({"a":1}))).unwrap();
        assert_eq!(ok, r#"{"ok":true,"result":{"a":1}}"#);
        let err = serde_json::to_string(&ControlResponse::error(
            ControlErrorKind::NotFound,
            "no drive x",
        ))
        .unwrap();
        assert_eq!(
            err,
            r#"{"ok":false,"error":{"kind":"not_found","message":"no drive x"}}"#
        );
    }
}
