//! Running one plugin: its environment, its stdin, the process with a
//! timeout, and reading what it printed.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::config::{NetworkConfigList, PluginConfig};
use super::{Attachment, CniCommand, CniError};

/// The most a plugin may print on stdout; a result is a few KiB.
pub const MAX_STDOUT_BYTES: usize = 1 << 20;

/// How much of a plugin's stderr is kept for error messages.
pub const MAX_STDERR_BYTES: usize = 4 << 10;

/// `PATH` for plugins when hulld itself has none: plugins run `iptables`,
/// `ip6tables`, `nft` and the like through it.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything needed to run one plugin once.
pub(super) struct PluginRun<'a> {
    /// The plugin's `type`, for messages.
    pub plugin: &'a str,
    /// Its executable.
    pub path: &'a Path,
    /// The command.
    pub command: CniCommand,
    /// The `CNI_*` variables.
    pub env: &'a [(&'static str, OsString)],
    /// What the plugin reads on stdin.
    pub stdin: &'a [u8],
    /// How long it may take.
    pub timeout: Duration,
}

/// The `CNI_*` environment of a plugin run. `CNI_NETNS` is empty when the
/// attachment has no namespace path (a DEL after the namespace is gone).
pub(super) fn plugin_env(
    command: CniCommand,
    attachment: &Attachment,
    bin_dirs: &[PathBuf],
) -> Vec<(&'static str, OsString)> {
    let mut cni_path = OsString::new();
    for (i, dir) in bin_dirs.iter().enumerate() {
        if i > 0 {
            cni_path.push(":");
        }
        cni_path.push(dir);
    }
    vec![
        ("CNI_COMMAND", command.as_str().into()),
        ("CNI_CONTAINERID", attachment.container_id.clone().into()),
        ("CNI_NETNS", attachment.netns.clone().into_os_string()),
        ("CNI_IFNAME", attachment.ifname.clone().into()),
        ("CNI_ARGS", attachment.cni_args().into()),
        ("CNI_PATH", cni_path),
    ]
}

/// What a plugin reads on stdin: its configuration with the network's
/// `name` and `cniVersion`, `prevResult` when given, and `runtimeConfig`
/// holding the runtime values of the capabilities the plugin declares.
pub(super) fn plugin_stdin(
    list: &NetworkConfigList,
    plugin: &PluginConfig,
    prev_result: Option<&Value>,
    runtime_values: &Map<String, Value>,
) -> Vec<u8> {
    let mut config = plugin.config().clone();
    config.insert("name".to_owned(), Value::String(list.name.clone()));
    config.insert(
        "cniVersion".to_owned(),
        Value::String(list.cni_version.clone()),
    );
    match prev_result {
        Some(prev) => {
            config.insert("prevResult".to_owned(), prev.clone());
        }
        None => {
            config.remove("prevResult");
        }
    }
    let declared: Map<String, Value> = runtime_values
        .iter()
        .filter(|(capability, _)| plugin.has_capability(capability))
        .map(|(capability, value)| (capability.clone(), value.clone()))
        .collect();
    if !declared.is_empty() {
        // Values the file itself puts in runtimeConfig stay, unless the
        // runtime has one for the same capability.
        let runtime_config = config
            .entry("runtimeConfig")
            .or_insert_with(|| Value::Object(Map::new()));
        match runtime_config {
            Value::Object(existing) => existing.extend(declared),
            other => *other = Value::Object(declared),
        }
    }
    // Serializing a map of JSON values cannot fail.
    serde_json::to_vec(&Value::Object(config)).unwrap_or_default()
}

/// Runs the plugin and returns what it printed on success, parsed as JSON
/// (`None` when it printed nothing).
///
/// The plugin gets hulld's environment without any `CNI_*` variable of
/// hulld's own, the `CNI_*` variables of `run`, and [`DEFAULT_PATH`] if
/// hulld has no `PATH`. It runs in a process group of its own: on timeout
/// the whole group (the plugin and whatever it started, such as
/// `iptables`) is killed.
pub(super) async fn run_plugin(run: PluginRun<'_>) -> Result<Option<Value>, CniError> {
    let PluginRun {
        plugin,
        path,
        command,
        env,
        stdin,
        timeout,
    } = run;
    let io_error = |op, source| CniError::Io {
        plugin: plugin.to_owned(),
        command,
        op,
        source,
    };

    let mut cmd = Command::new(path);
    for (key, _) in std::env::vars_os() {
        if key.as_bytes().starts_with(b"CNI_") {
            cmd.env_remove(key);
        }
    }
    if std::env::var_os("PATH").is_none_or(|p| p.is_empty()) {
        cmd.env("PATH", DEFAULT_PATH);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = spawn(&mut cmd).await.map_err(|source| CniError::Spawn {
        plugin: plugin.to_owned(),
        path: path.to_owned(),
        command,
        source,
    })?;

    let mut child_stdin = child.stdin.take();
    let child_stdout = child.stdout.take();
    let child_stderr = child.stderr.take();
    let write_stdin = async move {
        let Some(pipe) = child_stdin.as_mut() else {
            return Ok(());
        };
        match pipe.write_all(stdin).await {
            // A plugin need not read its stdin (a DEL may not).
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
        // Dropping the pipe here closes it: the plugin sees end of input.
    };
    let outcome = tokio::time::timeout(timeout, async {
        tokio::join!(
            write_stdin,
            read_bounded(child_stdout, MAX_STDOUT_BYTES),
            read_bounded(child_stderr, MAX_STDERR_BYTES),
            child.wait(),
        )
    })
    .await;

    let Ok((written, stdout, stderr, status)) = outcome else {
        // `id()` is `None` once the plugin has been reaped; until then its
        // pid, and so its process group id, cannot have been reused.
        if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = child.wait().await;
        }
        tracing::warn!(plugin, %command, ?timeout, "CNI plugin timed out and was killed");
        return Err(CniError::Timeout {
            plugin: plugin.to_owned(),
            command,
            timeout,
        });
    };
    let status = status.map_err(|e| io_error("wait for it", e))?;
    let (stdout, stdout_overflow) = stdout.map_err(|e| io_error("read its stdout", e))?;
    let (stderr, _) = stderr.map_err(|e| io_error("read its stderr", e))?;
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    if let Err(e) = written {
        return Err(io_error("write its stdin", e));
    }
    if stdout_overflow {
        return Err(CniError::OutputTooLarge {
            plugin: plugin.to_owned(),
            command,
            limit: MAX_STDOUT_BYTES,
        });
    }

    if !status.success() {
        return Err(failure(plugin, command, status, &stdout, stderr));
    }
    if !stderr.trim().is_empty() {
        tracing::debug!(plugin, %command, stderr = stderr.trim(), "CNI plugin stderr");
    }
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&stdout)
        .map(Some)
        .map_err(|e| CniError::InvalidResult {
            plugin: plugin.to_owned(),
            command,
            field: "(result)".to_owned(),
            reason: format!("stdout is not JSON: {e}"),
        })
}

/// Starts the plugin, retrying briefly while its executable is busy
/// (`ETXTBSY`): a plugin being installed or upgraded right now, or, in a
/// multi-threaded process, another thread's fork momentarily holding a
/// copy of the writer's descriptor.
async fn spawn(cmd: &mut Command) -> std::io::Result<tokio::process::Child> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The error a failed plugin reports on stdout.
#[derive(Deserialize)]
struct ErrorOutput {
    code: u64,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// The error for a plugin that exited with a failure: its CNI error when
/// stdout holds one, its exit status otherwise.
fn failure(
    plugin: &str,
    command: CniCommand,
    status: ExitStatus,
    stdout: &[u8],
    stderr: String,
) -> CniError {
    match serde_json::from_slice::<ErrorOutput>(stdout) {
        Ok(error) => CniError::Plugin {
            plugin: plugin.to_owned(),
            command,
            code: u32::try_from(error.code).unwrap_or(u32::MAX),
            msg: error.msg,
            details: error.details,
            stderr,
        },
        Err(_) => CniError::PluginExit {
            plugin: plugin.to_owned(),
            command,
            status,
            stderr,
        },
    }
}

/// Reads `pipe` to its end, keeping the first `limit` bytes; the flag is
/// set when there was more. The rest is read and dropped, so a talkative
/// plugin never blocks on a full pipe.
async fn read_bounded(
    pipe: Option<impl AsyncRead + Unpin>,
    limit: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else {
        return Ok((kept, false));
    };
    let mut overflow = false;
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        let n = pipe.read(&mut chunk).await?;
        if n == 0 {
            return Ok((kept, overflow));
        }
        let room = limit - kept.len();
        if n > room {
            overflow = true;
        }
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
}
