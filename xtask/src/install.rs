//! `cargo xtask install` and `cargo xtask uninstall`: hull as a systemd
//! service.
//!
//! What goes where (PREFIX is `--prefix`, default `/usr/local`; with
//! `--root DIR` every path lies under DIR instead of `/`):
//!
//! ```text
//! PREFIX/bin/hulld, PREFIX/bin/hull-vmm             0755  every install replaces them
//! PREFIX/lib/hull/vmlinux                           0644  the guest kernel
//! PREFIX/lib/hull/hull-agent-initramfs.cpio         0644  the guest agent
//! PREFIX/lib/hull/install-manifest.json             0644  what was placed, with hashes
//! PREFIX/share/hull/cni/10-hull-bridge.conflist     0644  example pod network (inactive)
//! /etc/systemd/system/hull.service                  0644  systemd/hull.service.in, @BINDIR@ = PREFIX/bin
//! /etc/hull/config.toml                             0600  hulld's default, [vm] paths in PREFIX
//! /etc/hull/config.toml.default                     0600  the new default, beside an edited config
//! /etc/crictl.yaml                                  0644  only where there is none
//! ```
//!
//! The unit goes to /etc/systemd/system, the place for units the
//! administrator installs (a distribution package would use
//! /usr/lib/systemd/system), so it is found whatever the prefix. It is
//! rendered from a template because ExecStart names the binary's path,
//! which depends on the prefix.
//!
//! The manifest makes reinstalls and uninstalls exact: a file whose content
//! no longer matches its recorded hash was changed by someone else and is
//! left alone. The config follows dpkg's conffile rule: an edited config is
//! never overwritten; the new default goes beside it.

mod files;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::testvm::target_dir;
use crate::util::{cargo, run};
use crate::{initramfs, kernel};
use files::{
    Manifest, Source, check_plain_path, hash_bytes, hash_file, unchanged, under_root, write_atomic,
};

/// The unit template; `@BINDIR@` is the prefix's bin folder.
const UNIT_TEMPLATE: &str = include_str!("../../systemd/hull.service.in");
/// The example pod network.
const CNI_EXAMPLE: &str = include_str!("install/10-hull-bridge.conflist");
const CNI_EXAMPLE_NAME: &str = "10-hull-bridge.conflist";

const UNIT_PATH: &str = "/etc/systemd/system/hull.service";
const CONFIG_PATH: &str = "/etc/hull/config.toml";
const CONFIG_DEFAULT_PATH: &str = "/etc/hull/config.toml.default";
const CRICTL_PATH: &str = "/etc/crictl.yaml";
const CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// Where hulld's default config serves the CRI.
const ENDPOINT: &str = "unix:///run/hull/hull.sock";
/// The state folder in hulld's default config.
const DEFAULT_STATE_DIR: &str = "/var/lib/hull";
/// The `[vm]` lines of hulld's default config that name files in /usr.
const DEFAULT_KERNEL_LINE: &str = "kernel = \"/usr/lib/hull/vmlinux\"";
const DEFAULT_INITRAMFS_LINE: &str = "initramfs = \"/usr/lib/hull/hull-agent-initramfs.cpio\"";

const CRICTL_YAML: &str = "\
# Written by hull's `cargo xtask install`: crictl talks to hulld.
runtime-endpoint: unix:///run/hull/hull.sock
image-endpoint: unix:///run/hull/hull.sock
# Seconds per call: a pod start boots a VM.
timeout: 30
";

/// Where to install.
#[derive(Args, Debug)]
pub struct TargetArgs {
    /// Installation prefix: binaries in PREFIX/bin, the guest kernel and
    /// agent in PREFIX/lib/hull, examples in PREFIX/share/hull.
    #[arg(long, default_value = "/usr/local", value_name = "DIR")]
    prefix: PathBuf,
    /// Install under DIR instead of / (a staging tree for packaging or
    /// tests): nothing is reloaded, started or checked on this machine.
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,
}

/// `cargo xtask install` arguments.
#[derive(Args, Debug)]
pub struct InstallArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Cargo profile of hulld and hull-vmm (dev: target/debug).
    #[arg(long, default_value = "release", value_parser = ["dev", "release"])]
    profile: String,
    /// Build nothing: install hulld and hull-vmm from target/<profile>, the
    /// initramfs from target/agent-static, and the kernel given by --kernel.
    #[arg(long)]
    no_build: bool,
    /// Install this guest kernel instead of building it (`cargo xtask
    /// kernel` prints the path of the one it builds).
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Install this initramfs instead of building it.
    #[arg(long, value_name = "FILE")]
    initramfs: Option<PathBuf>,
}

/// `cargo xtask uninstall` arguments.
#[derive(Args, Debug)]
pub struct UninstallArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Also remove /etc/hull (edited or not) and hulld's state folder
    /// (records, images, pod disks).
    #[arg(long)]
    purge: bool,
}

/// The installed paths of one prefix and root.
struct Layout {
    prefix: PathBuf,
    root: PathBuf,
}

impl Layout {
    fn new(target: &TargetArgs) -> Result<Layout> {
        check_plain_path("--prefix", &target.prefix)?;
        let root = std::path::absolute(&target.root)
            .with_context(|| format!("--root {}", target.root.display()))?;
        Ok(Layout {
            prefix: target.prefix.clone(),
            root,
        })
    }

    /// Installing into this machine's own `/`.
    fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// Where `path` (as on the installed system) is written here.
    fn staged(&self, path: impl AsRef<Path>) -> PathBuf {
        under_root(&self.root, path.as_ref())
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.prefix.join("bin").join(name)
    }

    fn lib(&self, name: &str) -> PathBuf {
        self.prefix.join("lib/hull").join(name)
    }

    fn cni_example(&self) -> PathBuf {
        self.prefix.join("share/hull/cni").join(CNI_EXAMPLE_NAME)
    }

    fn manifest(&self) -> PathBuf {
        self.lib("install-manifest.json")
    }

    /// `systemctl`, pointed at the root when staging.
    fn systemctl(&self) -> String {
        if self.is_live() {
            "systemctl".to_string()
        } else {
            format!("systemctl --root={}", self.root.display())
        }
    }

    fn check_privileges(&self, what: &str) -> Result<()> {
        if self.is_live() && !nix::unistd::geteuid().is_root() {
            bail!("{what} into / needs root: run it as root (or stage the files with --root DIR)");
        }
        Ok(())
    }
}

/// The files an install copies.
struct Sources {
    hulld: PathBuf,
    vmm: PathBuf,
    kernel: PathBuf,
    initramfs: PathBuf,
}

impl Sources {
    /// Builds what is not given (unless `--no-build`) and checks every file
    /// is there.
    fn gather(args: &InstallArgs) -> Result<Sources> {
        let profile_dir = if args.profile == "dev" {
            "debug"
        } else {
            &args.profile
        };
        let bin_dir = target_dir().join(profile_dir);
        let build_hint = format!(
            "build it with `cargo build --profile {} -p cri-server -p vm-runtime --bins` (or leave out --no-build)",
            args.profile
        );
        if !args.no_build {
            run(cargo().args([
                "build",
                "--profile",
                &args.profile,
                "-p",
                "cri-server",
                "-p",
                "vm-runtime",
                "--bins",
            ]))?;
        }
        let kernel = match (&args.kernel, args.no_build) {
            (Some(path), _) => path.clone(),
            (None, false) => kernel::build()?.vmlinux,
            (None, true) => bail!(
                "--no-build needs --kernel FILE: the guest kernel lives in the build cache; \
                 `cargo xtask kernel` builds it and prints its path"
            ),
        };
        let initramfs = match (&args.initramfs, args.no_build) {
            (Some(path), _) => path.clone(),
            (None, false) => initramfs::build(false)?,
            (None, true) => initramfs::archive_path(false),
        };
        let sources = Sources {
            hulld: bin_dir.join("hulld"),
            vmm: bin_dir.join("hull-vmm"),
            kernel,
            initramfs,
        };
        for (path, hint) in [
            (&sources.hulld, build_hint.as_str()),
            (&sources.vmm, build_hint.as_str()),
            (&sources.kernel, "build it with `cargo xtask kernel`"),
            (&sources.initramfs, "build it with `cargo xtask initramfs`"),
        ] {
            if !path.is_file() {
                bail!("{} is missing; {hint}", path.display());
            }
        }
        Ok(sources)
    }
}

/// `cargo xtask install`.
pub fn install_cli(args: InstallArgs) -> Result<()> {
    let layout = Layout::new(&args.target)?;
    layout.check_privileges("installing")?;
    let sources = Sources::gather(&args)?;
    let config = render_config(&sources.hulld, &layout.prefix)?;
    let unit = render_unit(&layout.prefix)?;

    let manifest_path = layout.staged(layout.manifest());
    let previous = Manifest::read(&manifest_path)?.unwrap_or_default();
    let mut installer = Installer {
        layout: &layout,
        previous,
        manifest: Manifest {
            prefix: layout.prefix.clone(),
            files: Vec::new(),
        },
    };
    if !layout.is_live() {
        println!("staging under {}", layout.root.display());
    }
    installer.replace(&layout.bin("hulld"), Source::File(&sources.hulld), 0o755)?;
    installer.replace(&layout.bin("hull-vmm"), Source::File(&sources.vmm), 0o755)?;
    installer.replace(&layout.lib("vmlinux"), Source::File(&sources.kernel), 0o644)?;
    installer.replace(
        &layout.lib("hull-agent-initramfs.cpio"),
        Source::File(&sources.initramfs),
        0o644,
    )?;
    installer.replace(
        &layout.cni_example(),
        Source::Bytes(CNI_EXAMPLE.as_bytes()),
        0o644,
    )?;
    // Another install (another prefix) may rewrite the unit: hashed.
    installer.replace_hashed(Path::new(UNIT_PATH), unit.as_bytes(), 0o644)?;
    installer.config(&config)?;
    installer.crictl_yaml()?;
    installer.drop_stale()?;
    installer.manifest.write(&manifest_path)?;
    println!("recorded {}", manifest_path.display());

    explain_cni(&layout)?;
    if layout.is_live() {
        after_live_install(&layout)
    } else {
        println!(
            "\nstaged only: nothing was reloaded or started. On the target, after the files are in place:\n  \
             systemctl daemon-reload && systemctl enable --now hull"
        );
        Ok(())
    }
}

/// Places files and records them in the new manifest.
struct Installer<'a> {
    layout: &'a Layout,
    /// The manifest of the install before this one (empty if none).
    previous: Manifest,
    manifest: Manifest,
}

impl Installer<'_> {
    /// Writes a file recorded with the hash of `text`.
    fn write(&mut self, path: &Path, text: &[u8], mode: u32) -> Result<PathBuf> {
        let staged = self.layout.staged(path);
        write_atomic(&staged, Source::Bytes(text), mode)?;
        self.manifest.record(path, Some(hash_bytes(text)));
        Ok(staged)
    }

    /// A file in the prefix, hull's alone: always (re)written, recorded
    /// without a hash (hashing hundreds of MiB of binaries at every install
    /// and uninstall would buy nothing).
    fn replace(&mut self, path: &Path, source: Source<'_>, mode: u32) -> Result<()> {
        let staged = self.layout.staged(path);
        write_atomic(&staged, source, mode)?;
        self.manifest.record(path, None);
        println!("installed {} ({mode:04o})", staged.display());
        Ok(())
    }

    /// A file outside the prefix that is hull's: always (re)written,
    /// recorded with its hash.
    fn replace_hashed(&mut self, path: &Path, text: &[u8], mode: u32) -> Result<()> {
        let staged = self.write(path, text, mode)?;
        println!("installed {} ({mode:04o})", staged.display());
        Ok(())
    }

    /// `/etc/hull/config.toml`: written where there is none, or where it is
    /// still the default an earlier install wrote; an edited one is kept
    /// and this version's default goes beside it.
    fn config(&mut self, text: &str) -> Result<()> {
        let path = Path::new(CONFIG_PATH);
        let staged = self.layout.staged(path);
        if !staged.exists() {
            self.write(path, text.as_bytes(), 0o600)?;
            println!("installed {} (0600)", staged.display());
            return Ok(());
        }
        let current = hash_file(&staged)?;
        if current == hash_bytes(text.as_bytes()) {
            self.manifest.record(path, Some(current));
            println!("unchanged {}", staged.display());
            return Ok(());
        }
        if self.previous.recorded(path) == Some(current.as_str()) {
            self.write(path, text.as_bytes(), 0o600)?;
            println!(
                "updated   {} (the earlier install's default, not edited)",
                staged.display()
            );
            return Ok(());
        }
        // Edited, or written by someone else: it stays as it is.
        if let Some(hash) = self.previous.recorded(path) {
            let hash = hash.to_string();
            self.manifest.record(path, Some(hash));
        }
        let beside = self.write(Path::new(CONFIG_DEFAULT_PATH), text.as_bytes(), 0o600)?;
        println!(
            "kept      {} (edited, left as it is): this version's default config is in {}; compare them with diff",
            staged.display(),
            beside.display()
        );
        Ok(())
    }

    /// `/etc/crictl.yaml`, written only where there is none (or where it is
    /// still the one an earlier install wrote).
    fn crictl_yaml(&mut self) -> Result<()> {
        let path = Path::new(CRICTL_PATH);
        let staged = self.layout.staged(path);
        let ours = match self.previous.recorded(path) {
            Some(hash) => unchanged(&staged, hash)?,
            None => false,
        };
        if staged.exists() && !ours {
            let current = std::fs::read_to_string(&staged).unwrap_or_default();
            if current.contains("/run/hull/hull.sock") {
                println!("kept      {} (already there)", staged.display());
            } else {
                println!(
                    "kept      {} (already there; it does not name {ENDPOINT}: pass \
                     --runtime-endpoint {ENDPOINT} to crictl)",
                    staged.display()
                );
            }
            return Ok(());
        }
        self.write(path, CRICTL_YAML.as_bytes(), 0o644)?;
        println!("installed {} (0644)", staged.display());
        Ok(())
    }

    /// Removes what the earlier install placed and this one did not (a
    /// `config.toml.default` no longer needed), where nobody changed it.
    fn drop_stale(&mut self) -> Result<()> {
        for entry in &self.previous.files {
            if self.manifest.contains(&entry.path) {
                continue;
            }
            let staged = self.layout.staged(&entry.path);
            if entry.unchanged_at(&staged)? {
                std::fs::remove_file(&staged)
                    .with_context(|| format!("cannot remove {}", staged.display()))?;
                println!("removed   {} (no longer needed)", staged.display());
            }
        }
        Ok(())
    }
}

/// The unit for `prefix`.
fn render_unit(prefix: &Path) -> Result<String> {
    let bin_dir = prefix.join("bin");
    let unit = UNIT_TEMPLATE.replace("@BINDIR@", &bin_dir.display().to_string());
    if let Some(line) = unit
        .lines()
        .find(|l| l.contains('@') && !l.starts_with('#'))
    {
        bail!("systemd/hull.service.in: unknown placeholder left in {line:?}");
    }
    Ok(unit)
}

/// hulld's default config (`hulld config default` of the binary being
/// installed), its `[vm] kernel` and `initramfs` moved into the prefix,
/// checked with `hulld config check`.
fn render_config(hulld: &Path, prefix: &Path) -> Result<String> {
    let output = Command::new(hulld)
        .args(["config", "default"])
        .output()
        .with_context(|| format!("cannot run {} config default", hulld.display()))?;
    if !output.status.success() {
        bail!(
            "{} config default failed: {}",
            hulld.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let default = String::from_utf8(output.stdout)
        .with_context(|| format!("{} config default printed no UTF-8", hulld.display()))?;
    let config = config_for_prefix(&default, prefix)?;
    check_config(hulld, &config, &prefix.join("lib/hull/vmlinux"))?;
    Ok(config)
}

/// `default` with the `[vm]` files in `<prefix>/lib/hull`; unchanged for
/// `/usr`, whose paths the default already names.
fn config_for_prefix(default: &str, prefix: &Path) -> Result<String> {
    if prefix == Path::new("/usr") {
        return Ok(default.to_string());
    }
    let lib = prefix.join("lib/hull");
    let mut text = format!(
        "# Installed by `cargo xtask install --prefix {}`: [vm] kernel and\n\
         # initramfs name the files installed there; every other value is hulld's\n\
         # default.\n#\n",
        prefix.display()
    );
    let mut replaced = [false, false];
    for line in default.lines() {
        let new = if line == DEFAULT_KERNEL_LINE {
            replaced[0] = true;
            format!("kernel = \"{}\"", lib.join("vmlinux").display())
        } else if line == DEFAULT_INITRAMFS_LINE {
            replaced[1] = true;
            format!(
                "initramfs = \"{}\"",
                lib.join("hull-agent-initramfs.cpio").display()
            )
        } else {
            line.to_string()
        };
        text.push_str(&new);
        text.push('\n');
    }
    if replaced != [true, true] {
        bail!(
            "hulld's default config has no line `{DEFAULT_KERNEL_LINE}` or \
             `{DEFAULT_INITRAMFS_LINE}`; xtask/src/install.rs must follow it"
        );
    }
    Ok(text)
}

/// Runs `hulld config check` on `config`; it must name `kernel`.
fn check_config(hulld: &Path, config: &str, kernel: &Path) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("hull-install-config-{}.toml", std::process::id()));
    std::fs::write(&tmp, config).with_context(|| format!("cannot write {}", tmp.display()))?;
    let output = Command::new(hulld)
        .args(["config", "check", "--config"])
        .arg(&tmp)
        .output()
        .with_context(|| format!("cannot run {} config check", hulld.display()));
    let _ = std::fs::remove_file(&tmp);
    let output = output?;
    if !output.status.success() {
        bail!(
            "the config to install does not pass `hulld config check`: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let wanted = format!("kernel = \"{}\"", kernel.display());
    if !String::from_utf8_lossy(&output.stdout).contains(&wanted) {
        bail!("`hulld config check` of the config to install does not show {wanted}");
    }
    Ok(())
}

/// Says which pod network hulld will find, and how to use the example when
/// there is none. The example is never activated here: a cluster's network
/// add-on writes its own config into /etc/cni/net.d, and a bridge network
/// found there first would take its pods.
fn explain_cni(layout: &Layout) -> Result<()> {
    let example = layout.cni_example();
    match first_network(&layout.staged(CNI_CONF_DIR))? {
        Some(name) => println!(
            "\npod network: {CNI_CONF_DIR}/{name} (left as it is; hull's example is {})",
            example.display()
        ),
        None => println!(
            "\nno pod network in {CNI_CONF_DIR} yet (pods get loopback only). Either let the \
             cluster's network add-on write one, or use hull's example bridge (10.88.0.0/16, \
             plugins bridge, host-local and portmap from Debian's containernetworking-plugins):\n  \
             install -D -m 0644 {} {CNI_CONF_DIR}/{CNI_EXAMPLE_NAME}",
            example.display()
        ),
    }
    Ok(())
}

/// The first network config in `dir`, as hulld picks it (lexical order).
fn first_network(dir: &Path) -> Result<Option<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            [".conflist", ".conf", ".json"]
                .iter()
                .any(|x| n.ends_with(x))
        })
        .collect();
    names.sort();
    Ok(names.into_iter().next())
}

/// Whether systemd is the running init (`sd_booted`).
fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn unit_is_active() -> bool {
    Command::new("systemctl")
        .args(["is-active", "--quiet", "hull.service"])
        .status()
        .is_ok_and(|s| s.success())
}

fn after_live_install(layout: &Layout) -> Result<()> {
    if !systemd_runs() {
        println!(
            "\nsystemd is not running here, so nothing was reloaded. Under systemd: \
             systemctl enable --now hull\nWithout it, start hulld yourself:\n  {} --config {CONFIG_PATH}",
            layout.bin("hulld").display()
        );
        return Ok(());
    }
    run(Command::new("systemctl").arg("daemon-reload"))?;
    if unit_is_active() {
        println!(
            "\nhull.service is running the binaries it started with. Switch to the new ones with\n  \
             systemctl restart hull      # running pods keep running"
        );
    } else {
        println!(
            "\nnext:\n  \
             systemctl enable --now hull   # start hulld now and at every boot\n  \
             crictl info                   # RuntimeReady and NetworkReady, with reasons\n  \
             kubelet --container-runtime-endpoint={ENDPOINT} ..."
        );
    }
    Ok(())
}

/// `cargo xtask uninstall`.
pub fn uninstall_cli(args: UninstallArgs) -> Result<()> {
    let layout = Layout::new(&args.target)?;
    layout.check_privileges("uninstalling")?;
    let manifest_path = layout.staged(layout.manifest());
    let Some(manifest) = Manifest::read(&manifest_path)? else {
        bail!(
            "nothing to uninstall: {} does not exist (no `cargo xtask install --prefix {}` there)",
            manifest_path.display(),
            layout.prefix.display()
        );
    };
    refuse_while_in_use(&layout)?;
    let vmms = if layout.is_live() {
        running_vmms()
    } else {
        Vec::new()
    };
    if args.purge && !vmms.is_empty() {
        bail!(
            "pod VMs are still running (hull-vmm pids {vmms:?}); --purge would delete their disks. \
             Remove the pods first (`crictl rmp -fa` while hulld runs)"
        );
    }
    // Read before hulld itself goes.
    let state_dir = if args.purge {
        Some(state_dir(&layout)?)
    } else {
        None
    };

    let is_config =
        |path: &Path| path == Path::new(CONFIG_PATH) || path == Path::new(CONFIG_DEFAULT_PATH);
    for entry in &manifest.files {
        let staged = layout.staged(&entry.path);
        if !staged.exists() {
            println!("gone      {}", staged.display());
        } else if (args.purge && is_config(&entry.path)) || entry.unchanged_at(&staged)? {
            remove(&staged)?;
        } else if is_config(&entry.path) {
            println!(
                "kept      {} (edited; `cargo xtask uninstall --purge` removes it)",
                staged.display()
            );
        } else {
            println!(
                "kept      {} (changed since it was installed)",
                staged.display()
            );
        }
    }
    if args.purge {
        for path in [CONFIG_PATH, CONFIG_DEFAULT_PATH] {
            let staged = layout.staged(path);
            if staged.exists() {
                remove(&staged)?;
            }
        }
        if let Some(dir) = state_dir {
            purge_state(&layout.staged(&dir))?;
        }
    }
    remove(&manifest_path)?;
    for dir in [
        layout.lib(""),
        layout.prefix.join("share/hull/cni"),
        layout.prefix.join("share/hull"),
        PathBuf::from("/etc/hull"),
    ] {
        // Only folders hull's files emptied; anything left in them stays.
        let _ = std::fs::remove_dir(layout.staged(dir));
    }
    let drop_ins = layout.staged("/etc/systemd/system/hull.service.d");
    if drop_ins.exists() {
        println!(
            "kept      {} (your drop-ins for hull.service)",
            drop_ins.display()
        );
    }
    let state = layout.staged(DEFAULT_STATE_DIR);
    if !args.purge && state.exists() {
        println!(
            "kept      {} (hulld's state; `cargo xtask uninstall --purge` removes it)",
            state.display()
        );
    }
    if layout.is_live() && systemd_runs() {
        run(Command::new("systemctl").arg("daemon-reload"))?;
    }
    if !vmms.is_empty() {
        println!(
            "\npod VMs are still running without hulld (hull-vmm pids {vmms:?}); they end \
             when killed (`kill <pid>`), and their pods are lost."
        );
    }
    Ok(())
}

fn remove(path: &Path) -> Result<()> {
    std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    println!("removed   {}", path.display());
    Ok(())
}

/// Refuses to take away a service that is enabled or running.
fn refuse_while_in_use(layout: &Layout) -> Result<()> {
    let unit_dir = layout.staged("/etc/systemd/system");
    if let Ok(entries) = std::fs::read_dir(&unit_dir) {
        for entry in entries.filter_map(|e| e.ok()) {
            let link = entry.path().join("hull.service");
            if entry.file_name().to_string_lossy().ends_with(".wants")
                && link.symlink_metadata().is_ok()
            {
                bail!(
                    "hull.service is enabled ({}). First remove the pods you no longer need \
                     (`crictl rmp -fa`), then `{} disable --now hull`, then uninstall",
                    link.display(),
                    layout.systemctl()
                );
            }
        }
    }
    if layout.is_live() && systemd_runs() && unit_is_active() {
        bail!(
            "hull.service is running. First remove the pods you no longer need (`crictl rmp -fa`), \
             then `systemctl stop hull`, then uninstall"
        );
    }
    Ok(())
}

/// Pids of running `hull-vmm` processes (pod VMs).
fn running_vmms() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "hull-vmm")
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// hulld's state folder per the installed config (its default if there is
/// none), as the installed hulld reads it.
fn state_dir(layout: &Layout) -> Result<PathBuf> {
    let config = layout.staged(CONFIG_PATH);
    if !config.exists() {
        return Ok(PathBuf::from(DEFAULT_STATE_DIR));
    }
    let hulld = layout.staged(layout.bin("hulld"));
    if !hulld.exists() {
        println!(
            "{} is gone: taking state_dir to be {DEFAULT_STATE_DIR}",
            hulld.display()
        );
        return Ok(PathBuf::from(DEFAULT_STATE_DIR));
    }
    let output = Command::new(&hulld)
        .args(["config", "check", "--config"])
        .arg(&config)
        .output()
        .with_context(|| format!("cannot run {} to read state_dir", hulld.display()))?;
    if !output.status.success() {
        bail!(
            "cannot read state_dir from {}: {}",
            config.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("state_dir = "))
        .with_context(|| {
            format!(
                "`hulld config check` of {} shows no state_dir",
                config.display()
            )
        })?;
    Ok(PathBuf::from(value.trim().trim_matches('"')))
}

/// Removes hulld's state folder, if its name says it is hull's.
fn purge_state(dir: &Path) -> Result<()> {
    let named_for_hull = dir
        .file_name()
        .is_some_and(|n| n.to_string_lossy().contains("hull"));
    if !named_for_hull {
        println!(
            "kept      {} (state_dir is not named for hull; remove it yourself if it is only hull's)",
            dir.display()
        );
        return Ok(());
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => println!("removed   {}", dir.display()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("cannot remove {}", dir.display())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = "# hulld configuration\nstate_dir = \"/var/lib/hull\"\n\n[vm]\n\
        kernel = \"/usr/lib/hull/vmlinux\"\n\
        initramfs = \"/usr/lib/hull/hull-agent-initramfs.cpio\"\n\
        # kernel = \"/usr/lib/hull/vmlinux-debug\"\n";

    #[test]
    fn the_config_follows_the_prefix() {
        let text = config_for_prefix(DEFAULT, Path::new("/usr/local")).unwrap();
        assert!(
            text.contains("\nkernel = \"/usr/local/lib/hull/vmlinux\"\n"),
            "{text}"
        );
        assert!(
            text.contains("\ninitramfs = \"/usr/local/lib/hull/hull-agent-initramfs.cpio\"\n"),
            "{text}"
        );
        // Comments keep their text.
        assert!(text.contains("# kernel = \"/usr/lib/hull/vmlinux-debug\""));
        assert!(text.starts_with("# Installed by `cargo xtask install --prefix /usr/local`"));
        assert_eq!(
            config_for_prefix(DEFAULT, Path::new("/usr")).unwrap(),
            DEFAULT
        );
    }

    #[test]
    fn a_default_config_without_the_vm_lines_is_refused() {
        let err = config_for_prefix("state_dir = \"/x\"\n", Path::new("/opt/hull")).unwrap_err();
        assert!(err.to_string().contains("xtask/src/install.rs"), "{err}");
    }

    #[test]
    fn the_unit_names_the_prefix_binary() {
        let unit = render_unit(Path::new("/opt/hull")).unwrap();
        assert!(
            unit.lines()
                .any(|l| l == "ExecStart=/opt/hull/bin/hulld --config /etc/hull/config.toml"),
            "{unit}"
        );
        assert!(!unit.contains("@BINDIR@"));
        for line in [
            "Type=notify",
            "KillMode=process",
            "Delegate=yes",
            "RuntimeDirectory=hull",
            "RuntimeDirectoryPreserve=yes",
            "StateDirectory=hull",
            "Restart=always",
            "WantedBy=multi-user.target",
        ] {
            assert!(unit.lines().any(|l| l == line), "{line} missing");
        }
    }

    #[test]
    fn the_cni_example_is_a_bridge_list_with_portmap() {
        let list: serde_json::Value = serde_json::from_str(CNI_EXAMPLE).unwrap();
        let types: Vec<&str> = list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["bridge", "portmap"]);
        assert_eq!(list["plugins"][0]["ipam"]["type"], "host-local");
    }

    #[test]
    fn the_first_network_is_picked_in_lexical_order() {
        let dir = std::env::temp_dir().join(format!("xtask-install-cni-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(first_network(&dir).unwrap(), None);
        std::fs::write(dir.join("README"), "").unwrap();
        std::fs::write(dir.join("20-b.conf"), "{}").unwrap();
        std::fs::write(dir.join("10-a.conflist"), "{}").unwrap();
        assert_eq!(
            first_network(&dir).unwrap().as_deref(),
            Some("10-a.conflist")
        );
        assert_eq!(first_network(&dir.join("missing")).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
