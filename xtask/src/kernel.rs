//! `cargo xtask kernel`: builds hull's guest kernel from Debian's
//! `linux-source-6.1` and the project's config fragment
//! (`vm-runtime/kernel/microvm.config`), and prints the path of `vmlinux`.
//!
//! Cache layout, outside the checkout (see [`crate::cache::cache_root`]):
//!
//! ```text
//! kernel/
//!   .lock                      flock held while building or reading
//!   source/<version>/          linux-source-<series> unpacked, never built in
//!   build/<version>/           make O= output tree, shared by every config of
//!                              that source version (a fragment change rebuilds
//!                              only what it touches)
//!   <key>/vmlinux, bzImage, config, build.log
//! ```
//!
//! `<key>` is a digest of the fragment, the source package version and
//! [`BUILD_SCRIPT_VERSION`], so a second call with nothing changed only checks
//! that the two files exist.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cache::{CacheLock, cache_root, digest_hex};
use crate::deps;
use crate::util::workspace_root;

/// Bump when the build steps below change in a way that changes the result.
const BUILD_SCRIPT_VERSION: &str = "hull-kernel-build-1";
/// The Debian source package; the archive keeps only the current few
/// versions of it, so the cache is keyed by whichever one is installed.
const SOURCE_PACKAGE: &str = "linux-source-6.1";
/// The fragment, relative to the workspace root.
const FRAGMENT: &str = "vm-runtime/kernel/microvm.config";

/// The two images of one kernel build.
#[derive(Debug, Clone)]
pub struct KernelArtifacts {
    /// Uncompressed ELF kernel: what hull's VMM loads (PVH entry point).
    pub vmlinux: PathBuf,
    /// Compressed bzImage, for VMMs that take the Linux boot protocol image
    /// (QEMU `-kernel`).
    pub bzimage: PathBuf,
}

/// `cargo xtask kernel`: builds (or finds in the cache) and prints the paths.
pub fn run_cli() -> Result<()> {
    let artifacts = build()?;
    eprintln!("xtask: bzImage: {}", artifacts.bzimage.display());
    println!("{}", artifacts.vmlinux.display());
    Ok(())
}

/// Builds the guest kernel unless the cache holds this exact build.
pub fn build() -> Result<KernelArtifacts> {
    deps::install_node()?;
    let fragment_path = workspace_root().join(FRAGMENT);
    let fragment = std::fs::read(&fragment_path)
        .with_context(|| format!("cannot read {}", fragment_path.display()))?;
    let version = installed_version(SOURCE_PACKAGE)?;
    let key = cache_key(&fragment, &version);

    let kernel_cache = cache_root().join("kernel");
    let _lock = CacheLock::acquire(&kernel_cache.join(".lock"))?;
    let out_dir = kernel_cache.join(&key);
    let artifacts = KernelArtifacts {
        vmlinux: out_dir.join("vmlinux"),
        bzimage: out_dir.join("bzImage"),
    };
    if artifacts.vmlinux.is_file() && artifacts.bzimage.is_file() {
        return Ok(artifacts);
    }

    let started = Instant::now();
    let source_dir = unpack_source(&kernel_cache.join("source").join(&version))?;
    let build_dir = kernel_cache.join("build").join(&version);
    std::fs::create_dir_all(&build_dir)?;
    std::fs::create_dir_all(&out_dir)?;
    let log_path = out_dir.join("build.log");
    eprintln!(
        "xtask: building the guest kernel ({SOURCE_PACKAGE} {version}, key {key}); \
         ~6 min on 2 cores when cold; log: {}",
        log_path.display()
    );

    let mut configure = make(&source_dir, &build_dir);
    configure
        .env("KCONFIG_ALLCONFIG", &fragment_path)
        .arg("allnoconfig");
    run_logged(&mut configure, &log_path)?;
    let final_config = std::fs::read_to_string(build_dir.join(".config"))?;
    let missing = unmet_requests(&String::from_utf8_lossy(&fragment), &final_config);
    if !missing.is_empty() {
        bail!(
            "{FRAGMENT} asks for values that Kconfig did not keep (unmet dependency or \
             option absent in {version}): {}",
            missing.join(", ")
        );
    }

    let mut compile = make(&source_dir, &build_dir);
    compile.arg(format!("-j{}", parallelism())).arg("bzImage");
    run_logged(&mut compile, &log_path)?;

    install_file(&build_dir.join("arch/x86/boot/bzImage"), &artifacts.bzimage)?;
    install_file(&build_dir.join(".config"), &out_dir.join("config"))?;
    // Last: the presence of vmlinux is what marks the cache entry complete.
    install_file(&build_dir.join("vmlinux"), &artifacts.vmlinux)?;
    eprintln!(
        "xtask: guest kernel built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(artifacts)
}

fn cache_key(fragment: &[u8], version: &str) -> String {
    let digest = digest_hex(&[
        BUILD_SCRIPT_VERSION.as_bytes(),
        SOURCE_PACKAGE.as_bytes(),
        version.as_bytes(),
        fragment,
    ]);
    format!("{version}-{}", &digest[..16])
}

fn installed_version(package: &str) -> Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .context("cannot run dpkg-query")?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || version.is_empty() {
        bail!("Debian package {package} is not installed; run `cargo xtask deps`");
    }
    Ok(version)
}

/// Unpacks `/usr/src/<package>.tar.xz` once into `dir` and returns the tree.
fn unpack_source(dir: &Path) -> Result<PathBuf> {
    let tree = dir.join(SOURCE_PACKAGE);
    if tree.join("Makefile").is_file() {
        return Ok(tree);
    }
    let tarball = PathBuf::from(format!("/usr/src/{SOURCE_PACKAGE}.tar.xz"));
    let partial = dir.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    std::fs::create_dir_all(&partial)?;
    eprintln!("xtask: unpacking {}", tarball.display());
    let status = Command::new("tar")
        .arg("-xJf")
        .arg(&tarball)
        .arg("-C")
        .arg(&partial)
        .status()
        .context("cannot run tar")?;
    if !status.success() {
        bail!("tar could not unpack {}: {status}", tarball.display());
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(&partial, dir)?;
    Ok(tree)
}

fn make(source_dir: &Path, build_dir: &Path) -> Command {
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(source_dir)
        .arg(format!("O={}", build_dir.display()))
        .arg("ARCH=x86_64");
    cmd
}

fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `cmd` with its output appended to `log`; on failure shows the log's tail.
fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let shown = format!("{cmd:?}");
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        for line in tail.iter().rev() {
            eprintln!("  {line}");
        }
        bail!("{shown} failed with {status}; full log: {}", log.display());
    }
    Ok(())
}

/// Copies `from` to `to` through a temporary name, so `to` is never partial.
fn install_file(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp)
        .with_context(|| format!("cannot copy {} to {}", from.display(), tmp.display()))?;
    std::fs::rename(&tmp, to)?;
    Ok(())
}

/// Lines of the fragment whose value the final `.config` does not have:
/// `CONFIG_X=v` must appear as is; `# CONFIG_X is not set` must not be set.
fn unmet_requests(fragment: &str, final_config: &str) -> Vec<String> {
    let mut values = std::collections::HashMap::new();
    for line in final_config.lines() {
        if let Some((name, value)) = line.split_once('=')
            && name.starts_with("CONFIG_")
        {
            values.insert(name, value);
        }
    }
    let mut missing = Vec::new();
    for line in fragment.lines().map(str::trim) {
        if let Some((name, value)) = line.split_once('=')
            && name.starts_with("CONFIG_")
        {
            if values.get(name) != Some(&value) {
                missing.push(format!(
                    "{name}={value} (got {})",
                    values.get(name).copied().unwrap_or("unset")
                ));
            }
        } else if let Some(name) = line
            .strip_prefix("# ")
            .and_then(|rest| rest.strip_suffix(" is not set"))
            && let Some(value) = values.get(name)
        {
            missing.push(format!("{name} unset (got {value})"));
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmet_requests_reports_dropped_and_unwanted_symbols() {
        let fragment = "# comment\nCONFIG_A=y\nCONFIG_B=\"x\"\n# CONFIG_C is not set\nCONFIG_D=y\n";
        let config = "CONFIG_A=y\nCONFIG_B=\"x\"\nCONFIG_C=y\n# CONFIG_D is not set\n";
        assert_eq!(
            unmet_requests(fragment, config),
            vec!["CONFIG_C unset (got y)", "CONFIG_D=y (got unset)"]
        );
        assert!(unmet_requests(fragment, "CONFIG_A=y\nCONFIG_B=\"x\"\nCONFIG_D=y\n").is_empty());
    }

    #[test]
    fn cache_key_changes_with_fragment_and_version() {
        let base = cache_key(b"CONFIG_A=y\n", "6.1.1-1");
        assert!(base.starts_with("6.1.1-1-"));
        assert_ne!(base, cache_key(b"CONFIG_A=n\n", "6.1.1-1"));
        assert_ne!(base, cache_key(b"CONFIG_A=y\n", "6.1.1-2"));
        assert_eq!(base, cache_key(b"CONFIG_A=y\n", "6.1.1-1"));
    }
}
