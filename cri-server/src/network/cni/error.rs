//! [`CniError`]: everything that can go wrong loading a network
//! configuration, running a plugin or reading what it returned.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// The CNI operation a plugin was asked to perform (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CniCommand {
    /// Attach the container to the network.
    Add,
    /// Verify that an earlier ADD is still in place.
    Check,
    /// Detach the container and release what ADD took.
    Del,
}

impl CniCommand {
    /// The value of `CNI_COMMAND` for this operation.
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Check => "CHECK",
            CniCommand::Del => "DEL",
        }
    }
}

impl fmt::Display for CniCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why loading a CNI configuration, running a plugin or reading its result
/// failed. Every message names what was wrong: the file and key, or the
/// plugin and the command.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The configuration directory exists but cannot be listed.
    #[error("cannot read CNI config directory {dir}")]
    ConfigDir {
        /// The directory.
        dir: PathBuf,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// A configuration file cannot be read.
    #[error("cannot read CNI config file {file}")]
    ConfigRead {
        /// The file.
        file: PathBuf,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// A configuration file is not a valid network configuration.
    #[error("invalid CNI config file {file}: {key}: {reason}")]
    ConfigInvalid {
        /// The file.
        file: PathBuf,
        /// The offending key, as a JSON path (`plugins[1].type`), or
        /// `(file)` when the file as a whole is wrong.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An [`Attachment`](super::Attachment) field cannot be passed to
    /// plugins.
    #[error("invalid CNI attachment: {field} {value:?}: {reason}")]
    InvalidAttachment {
        /// The field (`container_id`, `ifname`, ...).
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No executable of the plugin's name in any binary directory.
    #[error("CNI plugin {plugin:?} not found in {}", display_dirs(.dirs))]
    PluginNotFound {
        /// The plugin's `type`.
        plugin: String,
        /// The directories searched, in order.
        dirs: Vec<PathBuf>,
    },
    /// The plugin could not be started.
    #[error("cannot run CNI plugin {plugin} ({path}) for {command}")]
    Spawn {
        /// The plugin's `type`.
        plugin: String,
        /// The executable.
        path: PathBuf,
        /// The command it was to run.
        command: CniCommand,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// Reading the plugin's output or waiting for it failed.
    #[error("CNI plugin {plugin} {command}: cannot {op}")]
    Io {
        /// The plugin's `type`.
        plugin: String,
        /// The command it was running.
        command: CniCommand,
        /// What was being done.
        op: &'static str,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// The plugin did not finish in time and was killed.
    #[error("CNI plugin {plugin} {command} did not finish within {timeout:?}: killed")]
    Timeout {
        /// The plugin's `type`.
        plugin: String,
        /// The command it was running.
        command: CniCommand,
        /// The time it was given.
        timeout: Duration,
    },
    /// The plugin failed and reported a CNI error on stdout.
    #[error(
        "CNI plugin {plugin} {command} failed: {msg} (code {code}{}{}){}",
        code_meaning(*.code),
        details_suffix(.details),
        stderr_suffix(.stderr)
    )]
    Plugin {
        /// The plugin's `type`.
        plugin: String,
        /// The command it was running.
        command: CniCommand,
        /// The CNI error code (1-99 are the specification's, 100 and above
        /// the plugin's own).
        code: u32,
        /// The error message.
        msg: String,
        /// Further details, possibly empty.
        details: String,
        /// The start of the plugin's stderr, possibly empty.
        stderr: String,
    },
    /// The plugin exited with a failure but stdout held no CNI error.
    #[error(
        "CNI plugin {plugin} {command} failed with {status} without a CNI error on stdout{}",
        stderr_suffix(.stderr)
    )]
    PluginExit {
        /// The plugin's `type`.
        plugin: String,
        /// The command it was running.
        command: CniCommand,
        /// How it exited.
        status: ExitStatus,
        /// The start of the plugin's stderr, possibly empty.
        stderr: String,
    },
    /// The plugin wrote more to stdout than a result can reasonably be.
    #[error("CNI plugin {plugin} {command} wrote more than {limit} bytes to stdout")]
    OutputTooLarge {
        /// The plugin's `type`.
        plugin: String,
        /// The command it was running.
        command: CniCommand,
        /// The limit, in bytes.
        limit: usize,
    },
    /// The plugin succeeded but its result is not a valid CNI result.
    #[error("CNI plugin {plugin} {command} returned an invalid result: {field}: {reason}")]
    InvalidResult {
        /// The plugin's `type`.
        plugin: String,
        /// The command it was running.
        command: CniCommand,
        /// The offending field, as a JSON path (`ips[0].address`), or
        /// `(result)` when the output as a whole is wrong.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// One or more plugins failed in DEL. Every plugin was still run; the
    /// caller should retry the whole DEL later.
    #[error("CNI DEL of network {network} failed: {}", display_failures(.failures))]
    Delete {
        /// The network's name.
        network: String,
        /// Each plugin's failure, in the order they ran.
        failures: Vec<CniError>,
    },
}

fn display_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "(no plugin directories configured)".to_owned();
    }
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(": {details}")
    }
}

fn code_meaning(code: u32) -> String {
    match well_known_error_code(code) {
        Some(meaning) => format!(", {meaning}"),
        None => String::new(),
    }
}

fn stderr_suffix(stderr: &str) -> String {
    let stderr = stderr.trim();
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

fn display_failures(failures: &[CniError]) -> String {
    failures
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The meaning of a CNI error code the specification reserves, if `code` is
/// one of them.
pub fn well_known_error_code(code: u32) -> Option<&'static str> {
    Some(match code {
        1 => "incompatible CNI version",
        2 => "unsupported field in network configuration",
        3 => "container unknown or does not exist",
        4 => "invalid necessary environment variables",
        5 => "I/O failure",
        6 => "failed to decode content",
        7 => "invalid network config",
        11 => "try again later",
        50 => "the plugin is not available",
        51 => "the plugin is not available, and existing containers may have limited connectivity",
        _ => return None,
    })
}
