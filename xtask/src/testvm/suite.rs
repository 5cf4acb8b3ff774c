//! The VM test step of `cargo xtask test`: every `vm_*` test target of the
//! `hull-integration` crate (feature `vm-tests`), run in one `vm-run`.
//!
//! 1. Build the guest kernel (cached) and pass its paths to the tests as
//!    `HULL_GUEST_VMLINUX` and `HULL_GUEST_BZIMAGE`.
//! 2. Build the test binaries on the host: `cargo test -p hull-integration
//!    --features vm-tests --no-run --message-format=json`, keeping the
//!    executables of `vm_*` targets.
//! 3. Run them one after another inside one test VM boot, each printing its
//!    usual libtest output (`test result:` lines), from the crate's folder as
//!    cargo would, then hulld's `#[ignore]`d cgroup unit tests (they need a
//!    writable cgroup v2 hierarchy, which the host may not have); fail if any
//!    fails.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use super::{RunOptions, run, shell_quote};
use crate::kernel;
use crate::util::{cargo, workspace_root};

const PACKAGE: &str = "hull-integration";
const FEATURE: &str = "vm-tests";
const TARGET_PREFIX: &str = "vm_";

/// Lints the VM test targets, which `clippy --workspace` does not build
/// (they need the `vm-tests` feature).
pub fn lint() -> Result<()> {
    crate::util::run(cargo().args([
        "clippy",
        "-p",
        PACKAGE,
        "--features",
        FEATURE,
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

/// Builds and runs every VM test; fails if any test fails.
pub fn run_vm_tests() -> Result<()> {
    let kernel = kernel::build()?;
    // The guest agent's initramfs, for vm_agent.
    let agent_initramfs = crate::initramfs::build(false)?;
    let binaries = build_test_binaries()?;
    if binaries.is_empty() {
        bail!("no `{TARGET_PREFIX}*` test targets found in {PACKAGE}");
    }
    let crate_dir = workspace_root().join("integration");
    let mut command = vec![
        "env".to_string(),
        format!("HULL_GUEST_VMLINUX={}", kernel.vmlinux.display()),
        format!("HULL_GUEST_BZIMAGE={}", kernel.bzimage.display()),
        format!("HULL_AGENT_INITRAMFS={}", agent_initramfs.display()),
        "sh".to_string(),
        "-c".to_string(),
        RUNNER.to_string(),
        "vm-tests".to_string(),
        crate_dir.display().to_string(),
    ];
    command.extend(
        binaries
            .iter()
            .map(|b| shell_quote(&b.display().to_string())),
    );
    // hulld's cgroup and network tests need a cgroup v2 hierarchy they may
    // write, network namespaces, iptables and tc: the test VM's, not the host's.
    command.push(format!(
        "{} {HOST_CGROUP_TESTS} --ignored",
        shell_quote(&build_cri_server_unit_tests()?.display().to_string())
    ));
    let code = run(&command, &RunOptions::default())?;
    if code != 0 {
        bail!("VM tests failed (exit status {code})");
    }
    Ok(())
}

/// The `#[ignore]`d unit tests of hulld that run in the test VM.
const HOST_CGROUP_TESTS: &str = "pod::cgroup network::";

/// `sh -c RUNNER vm-tests CRATE_DIR TEST...`: runs each TEST (a quoted
/// command line: a test binary and its arguments), reports the failures at
/// the end, exits 1 if any failed.
const RUNNER: &str = r#"cd "$1" || exit 125
shift
failed=""
for test in "$@"; do
    binary=$(eval "set -- $test"; echo "$1")
    echo "     Running ${binary##*/}"
    eval "$test" || failed="$failed ${binary##*/}"
done
if [ -n "$failed" ]; then
    echo "VM test binaries that failed:$failed" >&2
    exit 1
fi
"#;

/// Builds tests with `cargo test --no-run ARGS`; returns cargo's JSON
/// messages. `what` names them in the error.
fn build_tests(args: &[&str], what: &str) -> Result<String> {
    build_no_run("test", args, what)
}

/// `cargo SUBCOMMAND --no-run ARGS` (`test` or `bench`); returns cargo's
/// JSON messages. `what` names the targets in the error.
fn build_no_run(subcommand: &str, args: &[&str], what: &str) -> Result<String> {
    let out = cargo()
        .arg(subcommand)
        .args(args)
        .args(["--no-run", "--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !out.status.success() {
        bail!("building {what} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Test artifacts (`compiler-artifact` messages of test profile) in cargo's
/// JSON messages.
fn test_artifacts(messages: &str) -> impl Iterator<Item = serde_json::Value> + '_ {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["profile"]["test"] == true)
}

/// Builds the bench target `name` of the VM tests' crate (`cargo bench
/// --no-run`, so in the bench profile) and returns its executable.
pub(crate) fn build_vm_bench(name: &str) -> Result<PathBuf> {
    let messages = build_no_run(
        "bench",
        &["-p", PACKAGE, "--features", FEATURE, "--bench", name],
        &format!("the {name} benchmark"),
    )?;
    test_artifacts(&messages)
        .filter(|message| message["target"]["name"] == name)
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo built no executable for the {name} benchmark"))
}

/// Builds hulld's unit tests (`cri-server` lib) and returns the binary.
fn build_cri_server_unit_tests() -> Result<PathBuf> {
    let messages = build_tests(&["-p", "cri-server", "--lib"], "hulld's unit tests")?;
    test_artifacts(&messages)
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .context("cargo built no unit test binary for cri-server")
}

fn build_test_binaries() -> Result<Vec<PathBuf>> {
    let messages = build_tests(&["-p", PACKAGE, "--features", FEATURE], "the VM tests")?;
    Ok(vm_test_executables(&messages))
}

/// Executables of `vm_*` test targets in cargo's JSON messages.
fn vm_test_executables(messages: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = test_artifacts(messages)
        .filter(|message| {
            message["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "test"))
        })
        .filter(|message| {
            message["target"]["name"]
                .as_str()
                .is_some_and(|name| name.starts_with(TARGET_PREFIX))
        })
        .filter_map(|message| message["executable"].as_str().map(PathBuf::from))
        .collect();
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_only_vm_test_executables() {
        let messages = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"hull_integration"},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"vm_guest_boot"},"profile":{"test":true},"executable":"/t/debug/deps/vm_guest_boot-1"}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"cri_runtime"},"profile":{"test":true},"executable":"/t/debug/deps/cri_runtime-2"}
{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"hull_integration"},"profile":{"test":true},"executable":"/t/debug/deps/hull_integration-3"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            vm_test_executables(messages),
            vec![PathBuf::from("/t/debug/deps/vm_guest_boot-1")]
        );
    }
}
