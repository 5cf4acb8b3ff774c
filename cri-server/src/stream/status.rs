//! What the Kubernetes remote-command protocols carry besides bytes: the
//! final status on the error stream, terminal sizes on the resize stream,
//! and the protocol names both sides negotiate.

use serde::{Deserialize, Serialize};

/// Remote-command protocols, newest first (WebSocket only: v5).
pub const CHANNEL_V5: &str = "v5.channel.k8s.io";
pub const CHANNEL_V4: &str = "v4.channel.k8s.io";
pub const CHANNEL_V3: &str = "v3.channel.k8s.io";
pub const CHANNEL_V2: &str = "v2.channel.k8s.io";
pub const CHANNEL_V1: &str = "channel.k8s.io";
/// The SPDY port-forward protocol.
pub const PORT_FORWARD_V1: &str = "portforward.k8s.io";
/// SPDY/3.1 carried inside WebSocket binary messages (crictl's and
/// kubectl's WebSocket port-forward).
pub const SPDY_OVER_WEBSOCKET_PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";

/// Remote-command protocols served over SPDY, preferred first.
pub const SPDY_COMMAND_PROTOCOLS: [&str; 4] = [CHANNEL_V4, CHANNEL_V3, CHANNEL_V2, CHANNEL_V1];
/// Remote-command protocols served over WebSocket, preferred first.
pub const WEBSOCKET_COMMAND_PROTOCOLS: [&str; 5] =
    [CHANNEL_V5, CHANNEL_V4, CHANNEL_V3, CHANNEL_V2, CHANNEL_V1];

/// The first of the client's protocols (in the client's order) that the
/// server speaks.
pub fn negotiate<'a>(client: &[String], server: &[&'a str]) -> Option<&'a str> {
    client
        .iter()
        .find_map(|wanted| server.iter().find(|&&have| have == wanted.trim()).copied())
}

/// The version of a remote-command protocol: 1 (`channel.k8s.io`) to 5.
pub fn command_protocol_version(protocol: &str) -> u8 {
    match protocol {
        CHANNEL_V5 => 5,
        CHANNEL_V4 => 4,
        CHANNEL_V3 => 3,
        CHANNEL_V2 => 2,
        _ => 1,
    }
}

/// How an exec or attach session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The command exited 0 (exec), or the container's output ended
    /// (attach).
    Success,
    /// The command exited with this non-zero code.
    ExitCode { code: i32, cmd: Vec<String> },
    /// The session could not do its job; the message says why.
    Failure(String),
}

impl Outcome {
    /// The error-stream message of protocols v4 and v5: a JSON
    /// `metav1.Status`, from which clients read the exit code.
    pub fn v4_status(&self) -> Vec<u8> {
        let status = match self {
            Outcome::Success => Status {
                status: "Success",
                ..Status::default()
            },
            Outcome::ExitCode { code, cmd } => Status {
                metadata: Metadata {},
                status: "Failure",
                message: Some(format!(
                    "command terminated with non-zero exit code: command {cmd:?} exited with {code}"
                )),
                reason: Some("NonZeroExitCode"),
                details: Some(Details {
                    causes: vec![Cause {
                        reason: Some("ExitCode"),
                        message: code.to_string(),
                    }],
                }),
                code: None,
            },
            Outcome::Failure(message) => Status {
                metadata: Metadata {},
                status: "Failure",
                message: Some(format!("Internal error occurred: {message}")),
                reason: Some("InternalError"),
                details: Some(Details {
                    causes: vec![Cause {
                        reason: None,
                        message: message.clone(),
                    }],
                }),
                code: Some(500),
            },
        };
        serde_json::to_vec(&status).unwrap_or_default()
    }

    /// The error-stream message of protocols v1 to v3: the error's text,
    /// nothing on success.
    pub fn v1_error(&self) -> Option<Vec<u8>> {
        match self {
            Outcome::Success => None,
            Outcome::ExitCode { code, cmd } => Some(
                format!(
                    "command terminated with non-zero exit code: command {cmd:?} exited with {code}"
                )
                .into_bytes(),
            ),
            Outcome::Failure(message) => {
                Some(format!("Internal error occurred: {message}").into_bytes())
            }
        }
    }

    /// The error-stream message for `protocol_version`.
    pub fn error_stream_message(&self, protocol_version: u8) -> Option<Vec<u8>> {
        if protocol_version >= 4 {
            Some(self.v4_status())
        } else {
            self.v1_error()
        }
    }
}

/// `metav1.Status`, as much of it as the clients read.
#[derive(Serialize, Default)]
struct Status {
    metadata: Metadata,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
}

#[derive(Serialize, Default)]
struct Metadata {}

#[derive(Serialize)]
struct Details {
    causes: Vec<Cause>,
}

#[derive(Serialize)]
struct Cause {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    message: String,
}

/// A terminal size as the resize stream carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Most bytes of one unfinished resize message kept between frames.
const MAX_RESIZE_MESSAGE: usize = 4096;

/// Why the resize stream cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error("resize message is not a terminal size: {0}")]
    NotASize(serde_json::Error),
    #[error("resize message longer than {MAX_RESIZE_MESSAGE} bytes")]
    TooLong,
}

/// Reads the resize stream: JSON objects one after the other, which may be
/// cut anywhere by framing.
#[derive(Default)]
pub struct ResizeDecoder {
    pending: Vec<u8>,
}

impl ResizeDecoder {
    /// The sizes completed by `data`.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<TerminalSize>, ResizeError> {
        self.pending.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut consumed = 0;
        let mut messages =
            serde_json::Deserializer::from_slice(&self.pending).into_iter::<TerminalSize>();
        loop {
            match messages.next() {
                Some(Ok(size)) => {
                    sizes.push(size);
                    consumed = messages.byte_offset();
                }
                Some(Err(err)) if err.is_eof() => break,
                Some(Err(err)) => return Err(ResizeError::NotASize(err)),
                None => {
                    consumed = messages.byte_offset();
                    break;
                }
            }
        }
        self.pending.drain(..consumed);
        if self.pending.len() > MAX_RESIZE_MESSAGE {
            return Err(ResizeError::TooLong);
        }
        Ok(sizes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_travel_as_the_status_clients_parse() {
        let status = Outcome::ExitCode {
            code: 3,
            cmd: vec!["sh".into(), "-c".into(), "exit 3".into()],
        }
        .v4_status();
        let value: serde_json::Value = serde_json::from_slice(&status).unwrap();
        assert_eq!(value["status"], "Failure");
        assert_eq!(value["reason"], "NonZeroExitCode");
        assert_eq!(value["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(value["details"]["causes"][0]["message"], "3");
        assert_eq!(value["metadata"], serde_json::json!({}));
    }

    #[test]
    fn success_is_a_bare_status_in_v4_and_nothing_in_v1() {
        assert_eq!(
            Outcome::Success.v4_status(),
            br#"{"metadata":{},"status":"Success"}"#
        );
        assert_eq!(Outcome::Success.error_stream_message(3), None);
        let failure = Outcome::Failure("agent gone".into());
        let value: serde_json::Value = serde_json::from_slice(&failure.v4_status()).unwrap();
        assert_eq!(value["reason"], "InternalError");
        assert_eq!(value["code"], 500);
        assert_eq!(
            failure.error_stream_message(2).unwrap(),
            b"Internal error occurred: agent gone"
        );
    }

    #[test]
    fn negotiation_follows_the_clients_order() {
        let client = vec![CHANNEL_V4.to_string(), CHANNEL_V5.to_string()];
        assert_eq!(
            negotiate(&client, &WEBSOCKET_COMMAND_PROTOCOLS),
            Some(CHANNEL_V4)
        );
        assert_eq!(
            negotiate(&["v9.channel.k8s.io".to_string()], &SPDY_COMMAND_PROTOCOLS),
            None
        );
        assert_eq!(command_protocol_version(CHANNEL_V1), 1);
        assert_eq!(command_protocol_version(CHANNEL_V5), 5);
    }

    #[test]
    fn resize_messages_may_be_split_and_joined_anywhere() {
        let mut decoder = ResizeDecoder::default();
        assert_eq!(decoder.push(br#"{"Width":80,"#).unwrap(), vec![]);
        assert_eq!(
            decoder
                .push(br#""Height":24}{"Width":100,"Height":30}{"Wi"#)
                .unwrap(),
            vec![
                TerminalSize {
                    width: 80,
                    height: 24
                },
                TerminalSize {
                    width: 100,
                    height: 30
                }
            ]
        );
        assert_eq!(
            decoder.push(br#"dth":1,"Height":2}"#).unwrap(),
            vec![TerminalSize {
                width: 1,
                height: 2
            }]
        );
    }

    #[test]
    fn bad_resize_messages_are_refused() {
        assert!(matches!(
            ResizeDecoder::default().push(br#"{"Width":"wide","Height":2}"#),
            Err(ResizeError::NotASize(_))
        ));
        let mut decoder = ResizeDecoder::default();
        let mut long = b"{\"Width\":".to_vec();
        long.extend(std::iter::repeat_n(b' ', 5000));
        assert!(matches!(decoder.push(&long), Err(ResizeError::TooLong)));
    }
}
