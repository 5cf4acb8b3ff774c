//! The agent's parameters, from `hull.*` keys on the kernel command line.
//!
//! ```text
//! console=ttyS0 hull.vsock_port=1024 hull.log=debug
//! ```
//!
//! Unknown `hull.*` keys are reported (a typo should not pass unnoticed) but
//! do not stop the boot: an agent that cannot be reached is worse than one
//! that runs with a default.

use hull_proto::DEFAULT_AGENT_PORT;

/// What the agent takes from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentParams {
    /// The vsock port the gRPC server listens on (`hull.vsock_port`).
    pub vsock_port: u32,
    /// A `tracing` filter directive (`hull.log`), e.g. `info` or
    /// `hull_agent=debug`.
    pub log_filter: String,
}

impl Default for AgentParams {
    fn default() -> Self {
        Self {
            vsock_port: DEFAULT_AGENT_PORT,
            log_filter: "info".to_owned(),
        }
    }
}

/// A `hull.*` key that was ignored, and why; logged once logging is up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("unknown kernel command line key {0:?}")]
    UnknownKey(String),
    #[error("kernel command line key {key} has the invalid value {value:?}")]
    BadValue { key: String, value: String },
}

/// Parses the kernel command line. Returns the parameters (defaults where a
/// key is absent or invalid) and the problems found.
pub fn parse(cmdline: &str) -> (AgentParams, Vec<ParamError>) {
    let mut params = AgentParams::default();
    let mut problems = Vec::new();
    for word in cmdline.split_ascii_whitespace() {
        let Some(rest) = word.strip_prefix("hull.") else {
            continue;
        };
        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
        match key {
            "vsock_port" => match value.parse::<u32>() {
                // Ports below 1024 are privileged in vsock too; u32::MAX is
                // VMADDR_PORT_ANY.
                Ok(port) if port != 0 && port != u32::MAX => params.vsock_port = port,
                _ => problems.push(ParamError::BadValue {
                    key: word.split('=').next().unwrap_or(word).to_owned(),
                    value: value.to_owned(),
                }),
            },
            "log" if !value.is_empty() => params.log_filter = value.to_owned(),
            "log" => problems.push(ParamError::BadValue {
                key: "hull.log".to_owned(),
                value: String::new(),
            }),
            _ => problems.push(ParamError::UnknownKey(format!("hull.{key}"))),
        }
    }
    (params, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_no_hull_keys() {
        let (params, problems) = parse("console=ttyS0 reboot=k panic=-1\n");
        assert_eq!(params, AgentParams::default());
        assert!(problems.is_empty());
    }

    #[test]
    fn reads_port_and_log_level() {
        let (params, problems) = parse("console=ttyS0 hull.vsock_port=2048 quiet hull.log=debug");
        assert_eq!(params.vsock_port, 2048);
        assert_eq!(params.log_filter, "debug");
        assert!(problems.is_empty());
    }

    #[test]
    fn log_filter_may_hold_equals_signs_and_commas() {
        let (params, _) = parse("hull.log=hull_agent=trace,libcontainer=warn");
        assert_eq!(params.log_filter, "hull_agent=trace,libcontainer=warn");
    }

    #[test]
    fn bad_values_keep_the_default_and_are_reported() {
        let (params, problems) =
            parse("hull.vsock_port=abc hull.vsock_port=0 hull.log= hull.colour=1");
        assert_eq!(params, AgentParams::default());
        assert_eq!(problems.len(), 4);
        assert_eq!(problems[3], ParamError::UnknownKey("hull.colour".into()));
        assert!(matches!(&problems[0], ParamError::BadValue { value, .. } if value == "abc"));
    }

    #[test]
    fn last_value_wins() {
        let (params, _) = parse("hull.vsock_port=5000 hull.vsock_port=6000");
        assert_eq!(params.vsock_port, 6000);
    }
}
