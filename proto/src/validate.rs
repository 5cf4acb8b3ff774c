//! Field checks for messages crossing the host ⇄ guest boundary.
//!
//! The agent uses [`container_id`], [`exec_id`], [`port_forward_port`] and
//! [`port_forward_input`] on requests; hulld runs the
//! `*_reply`/[`output_chunk`]/[`event`]/`port_forward_*` output checks on
//! everything the agent sends before acting on it, because a compromised
//! guest may send anything.

use crate::limits::{
    MAX_CONTAINERS_PER_SANDBOX, MAX_ID_LEN, MAX_PORT_FORWARD_INPUT_BYTES,
    MAX_PORT_FORWARD_OUTPUT_BYTES, MAX_READ_FILE_BYTES, MAX_STDIO_CHUNK_BYTES, MAX_VERSION_LEN,
};
use crate::v1;

/// A field that failed validation; the message names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidationError {
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes long, more than the limit of {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} holds a character outside [A-Za-z0-9_.-] or starts with '.' or '-'")]
    BadCharacters { field: &'static str },
    #[error("{field} has the value {value}, outside the allowed range")]
    OutOfRange { field: &'static str, value: i64 },
    #[error("{field} is missing")]
    Missing { field: &'static str },
    #[error("{field} is an unknown enum value {value}")]
    UnknownEnum { field: &'static str, value: i32 },
    #[error("{field} contradicts {other}")]
    Inconsistent {
        field: &'static str,
        other: &'static str,
    },
}

fn identifier(field: &'static str, id: &str) -> Result<(), ValidationError> {
    if id.is_empty() {
        return Err(ValidationError::Empty { field });
    }
    if id.len() > MAX_ID_LEN {
        return Err(ValidationError::TooLong {
            field,
            len: id.len(),
            max: MAX_ID_LEN,
        });
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if !id.chars().all(allowed) || id.starts_with(['.', '-']) {
        return Err(ValidationError::BadCharacters { field });
    }
    Ok(())
}

/// A container id: 1–64 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
/// Safe to use as a single path component.
pub fn container_id(id: &str) -> Result<(), ValidationError> {
    identifier("container_id", id)
}

/// An exec id: same rules as [`container_id`]; the empty string means the
/// container's init process and is accepted.
pub fn exec_id(id: &str) -> Result<(), ValidationError> {
    if id.is_empty() {
        return Ok(());
    }
    identifier("exec_id", id)
}

fn printable(field: &'static str, s: &str, max: usize) -> Result<(), ValidationError> {
    if s.len() > max {
        return Err(ValidationError::TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(ValidationError::BadCharacters { field });
    }
    Ok(())
}

/// A `HealthResponse` from an agent.
pub fn health_reply(reply: &v1::HealthResponse) -> Result<(), ValidationError> {
    if reply.agent_version.is_empty() {
        return Err(ValidationError::Empty {
            field: "agent_version",
        });
    }
    printable("agent_version", &reply.agent_version, MAX_VERSION_LEN)?;
    if !reply.uptime_seconds.is_finite() || reply.uptime_seconds < 0.0 {
        return Err(ValidationError::OutOfRange {
            field: "uptime_seconds",
            value: reply.uptime_seconds as i64,
        });
    }
    Ok(())
}

/// An `ExitStatus`: exit code 0–255 (128+signal when signalled), signal
/// 0–64, non-negative time.
pub fn exit_status(status: &v1::ExitStatus) -> Result<(), ValidationError> {
    if !(0..=255).contains(&status.exit_code) {
        return Err(ValidationError::OutOfRange {
            field: "exit_status.exit_code",
            value: status.exit_code.into(),
        });
    }
    if status.signal > 64 {
        return Err(ValidationError::OutOfRange {
            field: "exit_status.signal",
            value: status.signal.into(),
        });
    }
    if status.signal != 0 && status.exit_code != 128 + status.signal as i32 {
        return Err(ValidationError::OutOfRange {
            field: "exit_status.exit_code",
            value: status.exit_code.into(),
        });
    }
    if status.exited_at_unix_nanos < 0 {
        return Err(ValidationError::OutOfRange {
            field: "exit_status.exited_at_unix_nanos",
            value: status.exited_at_unix_nanos,
        });
    }
    Ok(())
}

/// A `WaitProcessResponse`.
pub fn wait_reply(reply: &v1::WaitProcessResponse) -> Result<&v1::ExitStatus, ValidationError> {
    let status = reply
        .status
        .as_ref()
        .ok_or(ValidationError::Missing { field: "status" })?;
    exit_status(status)?;
    Ok(status)
}

/// A `ContainerStatusResponse`.
pub fn container_status_reply(reply: &v1::ContainerStatusResponse) -> Result<(), ValidationError> {
    let state =
        v1::ContainerState::try_from(reply.state).map_err(|_| ValidationError::UnknownEnum {
            field: "state",
            value: reply.state,
        })?;
    if state == v1::ContainerState::Unspecified {
        return Err(ValidationError::Missing { field: "state" });
    }
    for (field, value) in [
        ("created_at_unix_nanos", reply.created_at_unix_nanos),
        ("started_at_unix_nanos", reply.started_at_unix_nanos),
    ] {
        if value < 0 {
            return Err(ValidationError::OutOfRange { field, value });
        }
    }
    if let Some(exit) = &reply.exit {
        exit_status(exit)?;
    } else if state == v1::ContainerState::Stopped {
        return Err(ValidationError::Missing { field: "exit" });
    }
    Ok(())
}

/// One `OutputChunk` of a `ReadOutput` stream.
pub fn output_chunk(chunk: &v1::OutputChunk) -> Result<v1::OutputStream, ValidationError> {
    if chunk.data.len() > MAX_STDIO_CHUNK_BYTES {
        return Err(ValidationError::TooLong {
            field: "output_chunk.data",
            len: chunk.data.len(),
            max: MAX_STDIO_CHUNK_BYTES,
        });
    }
    if chunk.offset.checked_add(chunk.data.len() as u64).is_none() {
        return Err(ValidationError::OutOfRange {
            field: "output_chunk.offset",
            value: i64::try_from(chunk.offset).unwrap_or(i64::MAX),
        });
    }
    match v1::OutputStream::try_from(chunk.stream) {
        Ok(v1::OutputStream::Unspecified) | Err(_) => Err(ValidationError::UnknownEnum {
            field: "output_chunk.stream",
            value: chunk.stream,
        }),
        Ok(stream) => Ok(stream),
    }
}

fn cgroup_stats(stats: &v1::CgroupStats) -> Result<(), ValidationError> {
    if stats.timestamp_unix_nanos <= 0 {
        return Err(ValidationError::OutOfRange {
            field: "stats.timestamp_unix_nanos",
            value: stats.timestamp_unix_nanos,
        });
    }
    if let Some(memory) = &stats.memory
        && memory.working_set_bytes > memory.usage_bytes
    {
        return Err(ValidationError::OutOfRange {
            field: "stats.memory.working_set_bytes",
            value: i64::try_from(memory.working_set_bytes).unwrap_or(i64::MAX),
        });
    }
    Ok(())
}

/// A `ContainerStatsResponse`.
pub fn container_stats_reply(
    reply: &v1::ContainerStatsResponse,
) -> Result<&v1::CgroupStats, ValidationError> {
    let stats = reply
        .stats
        .as_ref()
        .ok_or(ValidationError::Missing { field: "stats" })?;
    cgroup_stats(stats)?;
    Ok(stats)
}

/// A `SandboxStatsResponse`.
pub fn sandbox_stats_reply(reply: &v1::SandboxStatsResponse) -> Result<(), ValidationError> {
    if let Some(pod) = &reply.pod {
        cgroup_stats(pod)?;
    }
    if reply.containers.len() > MAX_CONTAINERS_PER_SANDBOX {
        return Err(ValidationError::TooLong {
            field: "containers",
            len: reply.containers.len(),
            max: MAX_CONTAINERS_PER_SANDBOX,
        });
    }
    for (id, stats) in &reply.containers {
        container_id(id)?;
        cgroup_stats(stats)?;
    }
    Ok(())
}

/// A `ReadFileResponse` to `request`: no more data than asked for (and never
/// more than [`MAX_READ_FILE_BYTES`]), the data lies inside the file, and
/// `truncated` says exactly whether the file goes on after it.
pub fn read_file_reply(
    request: &v1::ReadFileRequest,
    reply: &v1::ReadFileResponse,
) -> Result<(), ValidationError> {
    let max = MAX_READ_FILE_BYTES.min(request.max_bytes as usize);
    if reply.data.len() > max {
        return Err(ValidationError::TooLong {
            field: "read_file.data",
            len: reply.data.len(),
            max,
        });
    }
    let end =
        request
            .offset
            .checked_add(reply.data.len() as u64)
            .ok_or(ValidationError::OutOfRange {
                field: "read_file.offset",
                value: i64::try_from(request.offset).unwrap_or(i64::MAX),
            })?;
    if !reply.data.is_empty() && end > reply.size {
        return Err(ValidationError::Inconsistent {
            field: "read_file.size",
            other: "the length of the data returned",
        });
    }
    if reply.truncated != (end < reply.size) {
        return Err(ValidationError::Inconsistent {
            field: "read_file.truncated",
            other: "read_file.size",
        });
    }
    Ok(())
}

/// One `Event` of an `Events` stream.
pub fn event(event: &v1::Event) -> Result<(), ValidationError> {
    match &event.kind {
        None => Err(ValidationError::Missing {
            field: "event.kind",
        }),
        Some(v1::event::Kind::ProcessExited(exited)) => {
            container_id(&exited.container_id)?;
            exec_id(&exited.exec_id)?;
            let status = exited.status.as_ref().ok_or(ValidationError::Missing {
                field: "process_exited.status",
            })?;
            exit_status(status)
        }
        Some(v1::event::Kind::OomKilled(oom)) => container_id(&oom.container_id),
    }
}

/// The `port` of the first `PortForwardInput`: 1–65535.
pub fn port_forward_port(port: u32) -> Result<u16, ValidationError> {
    match u16::try_from(port) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(ValidationError::OutOfRange {
            field: "port",
            value: port.into(),
        }),
    }
}

/// A `PortForwardInput`'s data: at most [`MAX_PORT_FORWARD_INPUT_BYTES`].
/// (The port is checked on the first message only, with
/// [`port_forward_port`].)
pub fn port_forward_input(input: &v1::PortForwardInput) -> Result<(), ValidationError> {
    if input.data.len() > MAX_PORT_FORWARD_INPUT_BYTES {
        return Err(ValidationError::TooLong {
            field: "data",
            len: input.data.len(),
            max: MAX_PORT_FORWARD_INPUT_BYTES,
        });
    }
    Ok(())
}

/// The first `PortForwardOutput` of a call: `connected`, without data.
pub fn port_forward_connected(output: &v1::PortForwardOutput) -> Result<(), ValidationError> {
    if !output.connected {
        return Err(ValidationError::Missing {
            field: "port_forward_output.connected",
        });
    }
    if !output.data.is_empty() {
        return Err(ValidationError::Inconsistent {
            field: "port_forward_output.data",
            other: "port_forward_output.connected",
        });
    }
    Ok(())
}

/// A `PortForwardOutput` after the first: 1 to
/// [`MAX_PORT_FORWARD_OUTPUT_BYTES`] bytes of data, not `connected` again.
/// Returns the data.
pub fn port_forward_data(output: &v1::PortForwardOutput) -> Result<&[u8], ValidationError> {
    if output.connected {
        return Err(ValidationError::Inconsistent {
            field: "port_forward_output.connected",
            other: "an earlier port_forward_output.connected",
        });
    }
    if output.data.is_empty() {
        return Err(ValidationError::Empty {
            field: "port_forward_output.data",
        });
    }
    if output.data.len() > MAX_PORT_FORWARD_OUTPUT_BYTES {
        return Err(ValidationError::TooLong {
            field: "port_forward_output.data",
            len: output.data.len(),
            max: MAX_PORT_FORWARD_OUTPUT_BYTES,
        });
    }
    Ok(&output.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_follow_the_rules() {
        assert!(container_id("abc-123_x.y").is_ok());
        assert_eq!(
            container_id(""),
            Err(ValidationError::Empty {
                field: "container_id"
            })
        );
        for bad in ["../etc", "a/b", ".hidden", "-flag", "sp ace", "é"] {
            assert_eq!(
                container_id(bad),
                Err(ValidationError::BadCharacters {
                    field: "container_id"
                }),
                "{bad}"
            );
        }
        assert!(matches!(
            container_id(&"a".repeat(65)),
            Err(ValidationError::TooLong { len: 65, .. })
        ));
        assert!(container_id(&"a".repeat(64)).is_ok());
        assert!(exec_id("").is_ok());
        assert!(exec_id("x/y").is_err());
    }

    #[test]
    fn exit_status_must_be_consistent() {
        let ok = v1::ExitStatus {
            exit_code: 143,
            signal: 15,
            oom_killed: false,
            exited_at_unix_nanos: 1,
        };
        assert!(exit_status(&ok).is_ok());
        let inconsistent = v1::ExitStatus { exit_code: 1, ..ok };
        assert!(exit_status(&inconsistent).is_err());
        let too_big = v1::ExitStatus {
            exit_code: 300,
            signal: 0,
            ..ok
        };
        assert!(exit_status(&too_big).is_err());
        let bad_signal = v1::ExitStatus {
            exit_code: 128 + 99,
            signal: 99,
            ..ok
        };
        assert!(exit_status(&bad_signal).is_err());
        assert!(
            wait_reply(&v1::WaitProcessResponse { status: None }).is_err(),
            "a missing status is rejected"
        );
    }

    #[test]
    fn output_chunks_are_bounded_and_tagged() {
        let mut chunk = v1::OutputChunk {
            stream: v1::OutputStream::Stdout as i32,
            data: vec![0; MAX_STDIO_CHUNK_BYTES],
            offset: u64::MAX - MAX_STDIO_CHUNK_BYTES as u64,
        };
        assert_eq!(output_chunk(&chunk), Ok(v1::OutputStream::Stdout));
        chunk.offset += 1;
        assert!(matches!(
            output_chunk(&chunk),
            Err(ValidationError::OutOfRange { .. })
        ));
        chunk.offset = 0;
        chunk.data.push(0);
        assert!(matches!(
            output_chunk(&chunk),
            Err(ValidationError::TooLong { .. })
        ));
        chunk.data.clear();
        chunk.stream = 7;
        assert!(matches!(
            output_chunk(&chunk),
            Err(ValidationError::UnknownEnum { value: 7, .. })
        ));
        chunk.stream = 0;
        assert!(output_chunk(&chunk).is_err());
    }

    #[test]
    fn health_reply_rejects_control_characters_and_bad_uptime() {
        let mut reply = v1::HealthResponse {
            agent_version: "0.1.0".into(),
            protocol_version: 1,
            uptime_seconds: 2.5,
        };
        assert!(health_reply(&reply).is_ok());
        reply.agent_version = "0.1\x1b[2J".into();
        assert!(health_reply(&reply).is_err());
        reply.agent_version = "0.1.0".into();
        reply.uptime_seconds = f64::NAN;
        assert!(health_reply(&reply).is_err());
    }

    #[test]
    fn stats_reject_impossible_values() {
        let stats = v1::CgroupStats {
            memory: Some(v1::MemoryStats {
                usage_bytes: 10,
                working_set_bytes: 20,
                ..Default::default()
            }),
            timestamp_unix_nanos: 5,
            ..Default::default()
        };
        let reply = v1::ContainerStatsResponse { stats: Some(stats) };
        assert!(container_stats_reply(&reply).is_err());
        let mut sandbox = v1::SandboxStatsResponse::default();
        sandbox.containers.insert("../x".into(), stats);
        assert!(sandbox_stats_reply(&sandbox).is_err());
    }

    #[test]
    fn events_need_a_kind_and_valid_ids() {
        assert!(event(&v1::Event::default()).is_err());
        let oom = v1::Event {
            timestamp_unix_nanos: 1,
            kind: Some(v1::event::Kind::OomKilled(v1::OomKilled {
                container_id: "c1".into(),
            })),
        };
        assert!(event(&oom).is_ok());
        let exited = v1::Event {
            timestamp_unix_nanos: 1,
            kind: Some(v1::event::Kind::ProcessExited(v1::ProcessExited {
                container_id: "c1".into(),
                exec_id: String::new(),
                status: None,
            })),
        };
        assert!(event(&exited).is_err());
    }

    #[test]
    fn read_file_replies_stay_within_the_request_and_the_file() {
        let request = v1::ReadFileRequest {
            path: "/run/hull/files/c/0-log".into(),
            offset: 0,
            max_bytes: 4,
        };
        let reply = |data: &[u8], size, truncated| v1::ReadFileResponse {
            data: data.to_vec(),
            size,
            truncated,
        };
        assert_eq!(read_file_reply(&request, &reply(b"abcd", 4, false)), Ok(()));
        assert_eq!(read_file_reply(&request, &reply(b"abcd", 9, true)), Ok(()));
        assert_eq!(read_file_reply(&request, &reply(b"", 0, false)), Ok(()));
        // More data than asked for.
        assert!(matches!(
            read_file_reply(&request, &reply(b"abcde", 9, true)),
            Err(ValidationError::TooLong { len: 5, max: 4, .. })
        ));
        // Data beyond the end of the file it claims to come from.
        assert!(matches!(
            read_file_reply(&request, &reply(b"abcd", 2, false)),
            Err(ValidationError::Inconsistent {
                field: "read_file.size",
                ..
            })
        ));
        // `truncated` must match the size, both ways.
        for bad in [reply(b"abcd", 9, false), reply(b"abcd", 4, true)] {
            assert!(matches!(
                read_file_reply(&request, &bad),
                Err(ValidationError::Inconsistent {
                    field: "read_file.truncated",
                    ..
                })
            ));
        }
        // Reading from an offset: the tail of a 10-byte file.
        let tail = v1::ReadFileRequest {
            offset: 6,
            ..request.clone()
        };
        assert_eq!(read_file_reply(&tail, &reply(b"ghij", 10, false)), Ok(()));
        assert!(read_file_reply(&tail, &reply(b"ghij", 9, false)).is_err());
        // Past the end: no data, not truncated.
        let past = v1::ReadFileRequest {
            offset: 100,
            ..request.clone()
        };
        assert_eq!(read_file_reply(&past, &reply(b"", 10, false)), Ok(()));
        // An offset that overflows with the data is refused, not wrapped.
        let overflow = v1::ReadFileRequest {
            offset: u64::MAX,
            ..request.clone()
        };
        assert!(matches!(
            read_file_reply(&overflow, &reply(b"a", u64::MAX, false)),
            Err(ValidationError::OutOfRange { .. })
        ));
        // The protocol limit holds even when the request asked for more.
        let huge = v1::ReadFileRequest {
            max_bytes: u32::MAX,
            ..request
        };
        let size = MAX_READ_FILE_BYTES as u64 + 1;
        let big = v1::ReadFileResponse {
            data: vec![0; MAX_READ_FILE_BYTES + 1],
            size,
            truncated: false,
        };
        assert!(matches!(
            read_file_reply(&huge, &big),
            Err(ValidationError::TooLong { .. })
        ));
    }

    #[test]
    fn port_forward_ports_are_1_to_65535() {
        assert_eq!(port_forward_port(1), Ok(1));
        assert_eq!(port_forward_port(8080), Ok(8080));
        assert_eq!(port_forward_port(65535), Ok(65535));
        for bad in [0, 65536, u32::MAX] {
            assert_eq!(
                port_forward_port(bad),
                Err(ValidationError::OutOfRange {
                    field: "port",
                    value: bad.into()
                })
            );
        }
        assert_eq!(
            port_forward_port(0).unwrap_err().to_string(),
            "port has the value 0, outside the allowed range"
        );
    }

    #[test]
    fn port_forward_input_data_is_bounded() {
        let mut input = v1::PortForwardInput {
            port: 80,
            data: vec![0; MAX_PORT_FORWARD_INPUT_BYTES],
        };
        assert_eq!(port_forward_input(&input), Ok(()));
        input.data.push(0);
        let err = port_forward_input(&input).unwrap_err();
        assert_eq!(
            err,
            ValidationError::TooLong {
                field: "data",
                len: MAX_PORT_FORWARD_INPUT_BYTES + 1,
                max: MAX_PORT_FORWARD_INPUT_BYTES
            }
        );
        input.data.clear();
        assert_eq!(port_forward_input(&input), Ok(()));
    }

    #[test]
    fn port_forward_output_starts_connected_then_carries_bounded_data() {
        let connected = v1::PortForwardOutput {
            connected: true,
            data: Vec::new(),
        };
        assert_eq!(port_forward_connected(&connected), Ok(()));
        // Data before the connection is established, or no marker at all.
        for bad in [
            v1::PortForwardOutput {
                connected: true,
                data: b"x".to_vec(),
            },
            v1::PortForwardOutput {
                connected: false,
                data: b"x".to_vec(),
            },
        ] {
            assert!(port_forward_connected(&bad).is_err(), "{bad:?}");
        }

        let data = v1::PortForwardOutput {
            connected: false,
            data: vec![7; MAX_PORT_FORWARD_OUTPUT_BYTES],
        };
        assert_eq!(port_forward_data(&data), Ok(&data.data[..]));
        assert!(matches!(
            port_forward_data(&connected),
            Err(ValidationError::Inconsistent { .. })
        ));
        let empty = v1::PortForwardOutput::default();
        assert!(matches!(
            port_forward_data(&empty),
            Err(ValidationError::Empty { .. })
        ));
        let big = v1::PortForwardOutput {
            connected: false,
            data: vec![7; MAX_PORT_FORWARD_OUTPUT_BYTES + 1],
        };
        assert!(matches!(
            port_forward_data(&big),
            Err(ValidationError::TooLong { .. })
        ));
    }

    #[test]
    fn stopped_container_status_needs_an_exit() {
        let reply = v1::ContainerStatusResponse {
            state: v1::ContainerState::Stopped as i32,
            ..Default::default()
        };
        assert!(container_status_reply(&reply).is_err());
        let reply = v1::ContainerStatusResponse {
            state: 42,
            ..Default::default()
        };
        assert!(container_status_reply(&reply).is_err());
    }
}
