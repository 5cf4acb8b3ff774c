//! `cargo xtask vm-run -- CMD ARGS...`: runs CMD on a host whose KVM boots
//! standard guests.
//!
//! When this host's `/dev/kvm` passes hull's host check, CMD runs directly.
//! Otherwise (a PVM host, or no hardware virtualization) CMD runs inside a
//! test VM that QEMU emulates with nested SVM, where `kvm_amd` gives a working
//! `/dev/kvm`. Inside, the host's files are at the same paths (read-only, with
//! a throw-away tmpfs overlay), the cargo target dir and the xtask cache are
//! written through to the host, the working directory and environment are
//! the caller's, and `HULL_TEST_VM=1` is set. CMD's stdout and stderr stream
//! live, and its exit status becomes vm-run's.
//!
//! `--detach` keeps the VM running in the background with unix sockets
//! forwarded from the host into it (see [`detach`]); `vm-stop` ends it.
//! The interface is documented in `docs/testvm.md`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::cache::cache_root;
use crate::deps;
use crate::util::workspace_root;

pub mod detach;
mod foreground;
pub mod initramfs;
pub mod proxy;
pub mod qemu;
pub mod suite;

// The host check is the VMM crate's own (hulld uses the same function), but
// xtask includes its source rather than depending on the crate: this keeps
// `cargo xtask` building while the VMM is mid-change, and keeps it small.
#[path = "../../../vm-runtime/src/host_check.rs"]
#[allow(dead_code)]
pub(crate) mod host_check;

/// Set to `1` in CMD's environment when it runs inside the test VM.
pub const IN_VM_ENV: &str = "HULL_TEST_VM";

/// How `vm-run` runs its command.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Test VM memory in MiB (default 4096, or `HULL_TESTVM_MEMORY_MIB`).
    pub memory_mib: u32,
    /// Test VM vCPUs (default 1, or `HULL_TESTVM_CPUS`; see `docs/testvm.md`).
    pub cpus: u32,
    /// Host folders writable from inside, besides the target dir and the cache.
    pub extra_shares: Vec<PathBuf>,
    /// Guest folders that start as an empty tmpfs (default `/run`).
    pub tmpfs: Vec<PathBuf>,
    /// Kill the test VM after this long.
    pub timeout: Option<Duration>,
    /// Use the test VM even when the host's KVM is usable.
    pub force_vm: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        let from_env = |name: &str, default: u32| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        RunOptions {
            memory_mib: from_env("HULL_TESTVM_MEMORY_MIB", 4096),
            cpus: from_env("HULL_TESTVM_CPUS", 1),
            extra_shares: Vec::new(),
            tmpfs: vec![PathBuf::from("/run")],
            timeout: None,
            force_vm: false,
        }
    }
}

/// `cargo xtask vm-run` arguments.
#[derive(Args, Debug)]
pub struct VmRunArgs {
    /// Test VM memory in MiB [default: 4096, or $HULL_TESTVM_MEMORY_MIB].
    #[arg(long)]
    memory: Option<u32>,
    /// Test VM vCPUs [default: 1, or $HULL_TESTVM_CPUS].
    #[arg(long)]
    cpus: Option<u32>,
    /// Another host folder the command may write to (repeatable).
    #[arg(long = "share", value_name = "DIR")]
    shares: Vec<PathBuf>,
    /// A guest folder to start as an empty tmpfs (repeatable; default /run).
    #[arg(long = "tmpfs", value_name = "DIR")]
    tmpfs: Vec<PathBuf>,
    /// Kill the test VM after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Boot the test VM even if this host's KVM can run guests itself.
    #[arg(long)]
    force_vm: bool,
    /// Keep the VM running in the background (dev node); see docs/testvm.md.
    #[arg(long)]
    detach: bool,
    /// Name of the detached VM (its state folder).
    #[arg(long, default_value = "dev", requires = "detach")]
    name: String,
    /// Forward a host unix socket to a guest unix socket: HOST_PATH=GUEST_PATH
    /// (repeatable; needs --detach).
    #[arg(long = "forward-unix", value_name = "HOST=GUEST", requires = "detach")]
    forward_unix: Vec<String>,
    /// Make a TCP port of the host's loopback reachable at the same
    /// 127.0.0.1 port inside (repeatable; needs --detach).
    #[arg(long = "host-port", value_name = "PORT", requires = "detach")]
    host_port: Vec<u16>,
    /// Make a TCP port of the guest's loopback reachable at the same
    /// 127.0.0.1 port on the host (repeatable; needs --detach).
    #[arg(long = "loopback-port", value_name = "PORT", requires = "detach")]
    loopback_port: Vec<u16>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

impl VmRunArgs {
    fn options(&self) -> RunOptions {
        let mut options = RunOptions::default();
        if let Some(memory) = self.memory {
            options.memory_mib = memory;
        }
        if let Some(cpus) = self.cpus {
            options.cpus = cpus;
        }
        options.extra_shares = self.shares.clone();
        if !self.tmpfs.is_empty() {
            options.tmpfs = self.tmpfs.clone();
        }
        options.timeout = self.timeout.map(Duration::from_secs);
        options.force_vm = self.force_vm;
        options
    }
}

/// `cargo xtask vm-run`: exits with CMD's status.
pub fn run_cli(args: VmRunArgs) -> Result<()> {
    let options = args.options();
    if args.detach {
        let forwards = args
            .forward_unix
            .iter()
            .map(|spec| detach::UnixForward::parse(spec))
            .collect::<Result<Vec<_>>>()?;
        let instance = detach::start(
            &args.name,
            &args.command,
            &options,
            &forwards,
            &args.host_port,
            &args.loopback_port,
        )?;
        println!("{}", instance.display());
        return Ok(());
    }
    let code = run(&args.command, &options)?;
    std::process::exit(code);
}

/// Runs `command` on a host with a working KVM and returns its exit code
/// (128 + signal number when a signal ended it, as a shell reports).
pub fn run(command: &[String], options: &RunOptions) -> Result<i32> {
    if command.is_empty() {
        bail!("vm-run needs a command to run");
    }
    let support = host_check::check();
    if support.is_usable() && !options.force_vm {
        eprintln!("xtask: this host's KVM is usable; running {command:?} directly");
        let status = Command::new(&command[0])
            .args(&command[1..])
            .status()
            .with_context(|| format!("cannot start {:?}", command[0]))?;
        return Ok(exit_code(status));
    }
    eprintln!("xtask: {support}; running {command:?} in the test VM");
    deps::install()?;
    foreground::run(command, options)
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// The cargo target dir the workspace builds into.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Writable shares: the target dir, the cache, and `extra`, created if
/// missing, canonical, with folders inside another share left out.
pub fn writable_shares(extra: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut shares = Vec::new();
    for dir in [target_dir(), cache_root()].iter().chain(extra) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create share {}", dir.display()))?;
        shares.push(
            dir.canonicalize()
                .with_context(|| format!("cannot resolve {}", dir.display()))?,
        );
    }
    Ok(outermost(shares))
}

fn outermost(mut dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    dirs.sort();
    dirs.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        if !kept.iter().any(|outer| dir.starts_with(outer)) {
            kept.push(dir);
        }
    }
    kept
}

/// A shell script that runs `command` in `cwd` with `env`, after the shell
/// lines of `prelude` (run in `cwd` too): the test VM's job.
pub fn job_script(
    command: &[String],
    cwd: &Path,
    env: &[(String, String)],
    prelude: &[String],
) -> String {
    let mut script = String::from("# hull test VM job\n");
    for (name, value) in env {
        script.push_str(&format!("export {name}={}\n", shell_quote(value)));
    }
    script.push_str(&format!(
        "cd {} || exit 125\n",
        shell_quote(&cwd.to_string_lossy())
    ));
    for line in prelude {
        script.push_str(line);
        script.push('\n');
    }
    let words: Vec<String> = command.iter().map(|word| shell_quote(word)).collect();
    script.push_str(&format!("exec {}\n", words.join(" ")));
    script
}

/// The caller's environment as it should be inside the VM: variables that
/// describe this xtask process (cargo's per-package ones, the shell's) are
/// left out; `HULL_TEST_VM=1` is added.
pub fn job_environment() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| is_shell_name(name) && !is_process_specific(name))
        .collect();
    env.retain(|(name, _)| name != IN_VM_ENV);
    env.push((IN_VM_ENV.to_string(), "1".to_string()));
    env.sort();
    env
}

fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_process_specific(name: &str) -> bool {
    matches!(
        name,
        "PWD"
            | "OLDPWD"
            | "SHLVL"
            | "_"
            | "CARGO_MANIFEST_DIR"
            | "CARGO_MANIFEST_PATH"
            | "CARGO_CRATE_NAME"
            | "CARGO_BIN_NAME"
            | "CARGO_PRIMARY_PACKAGE"
    ) || name.starts_with("CARGO_PKG_")
}

/// Single-quotes `word` for a POSIX shell.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// A fresh folder for one run's job script and sockets, under the cache (so
/// the guest sees it through the cache share).
pub fn new_run_dir() -> Result<PathBuf> {
    let runs = cache_root().join("testvm").join("runs");
    std::fs::create_dir_all(&runs)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = runs.join(format!("{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let script = job_script(
            &["echo".into(), "$HOME".into()],
            Path::new("/w"),
            &[("A".into(), "x'y".into())],
            &["true &".into()],
        );
        assert_eq!(
            script,
            "# hull test VM job\nexport A='x'\\''y'\ncd '/w' || exit 125\ntrue &\nexec 'echo' '$HOME'\n"
        );
    }

    #[test]
    fn nested_shares_collapse() {
        let kept = outermost(vec![
            "/w/target".into(),
            "/w/target/cache".into(),
            "/c".into(),
            "/w/target".into(),
            "/w/targets".into(),
        ]);
        assert_eq!(
            kept,
            vec![
                PathBuf::from("/c"),
                PathBuf::from("/w/target"),
                PathBuf::from("/w/targets")
            ]
        );
    }

    #[test]
    fn environment_names() {
        assert!(is_shell_name("RUST_LOG"));
        assert!(!is_shell_name("1A"));
        assert!(!is_shell_name("A-B"));
        assert!(is_process_specific("CARGO_PKG_NAME"));
        assert!(!is_process_specific("CARGO_HOME"));
        let env = job_environment();
        assert!(env.contains(&(IN_VM_ENV.to_string(), "1".to_string())));
    }
}
