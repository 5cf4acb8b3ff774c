//! `cargo xtask install` and `uninstall` into a staging root (`--root`),
//! with the hulld and hull-vmm of this build (`--profile`, `--no-build`) and
//! stand-in kernel and initramfs files; `systemd-analyze verify` on the
//! installed unit; and hulld's readiness notification to systemd.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hull_integration::hulld::{connect_unix, hulld_binary};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;

const PREFIX: &str = "/usr/local";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ is inside the workspace")
        .to_path_buf()
}

/// The cargo profile hulld was built with, from its folder in target/.
fn profile() -> &'static str {
    let hulld = hulld_binary();
    match hulld
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
    {
        Some("debug") => "dev",
        Some("release") => "release",
        _ => panic!(
            "{} is not in target/debug or target/release; install takes binaries from there",
            hulld.display()
        ),
    }
}

/// `cargo xtask ARGS` (built if needed), from the workspace root.
fn xtask(args: &[&str]) -> Output {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["run", "--quiet", "--package", "xtask", "--"])
        .args(args)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .expect("run cargo xtask");
    eprintln!(
        "$ cargo xtask {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A staging root and stand-ins for the guest kernel and initramfs.
struct Stage {
    dir: tempfile::TempDir,
}

impl Stage {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hull-install-test")
            .tempdir()
            .expect("temporary directory");
        std::fs::write(dir.path().join("vmlinux"), b"stand-in guest kernel\n").unwrap();
        std::fs::write(dir.path().join("initramfs.cpio"), b"stand-in initramfs\n").unwrap();
        Stage { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// `path` of the installed system, in the staging root.
    fn at(&self, path: &str) -> PathBuf {
        self.root().join(path.trim_start_matches('/'))
    }

    fn kernel(&self) -> PathBuf {
        self.dir.path().join("vmlinux")
    }

    fn initramfs(&self) -> PathBuf {
        self.dir.path().join("initramfs.cpio")
    }

    fn install(&self) -> Output {
        let root = self.root().display().to_string();
        let kernel = self.kernel().display().to_string();
        let initramfs = self.initramfs().display().to_string();
        xtask(&[
            "install",
            "--root",
            &root,
            "--profile",
            profile(),
            "--no-build",
            "--kernel",
            &kernel,
            "--initramfs",
            &initramfs,
        ])
    }

    fn uninstall(&self, extra: &[&str]) -> Output {
        let root = self.root().display().to_string();
        let mut args = vec!["uninstall", "--root", &root];
        args.extend_from_slice(extra);
        xtask(&args)
    }

    /// Every file and symlink under the root, as installed-system paths.
    fn files(&self) -> BTreeSet<String> {
        fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.is_dir() && !path.is_symlink() {
                    walk(&path, root, out);
                } else {
                    let relative = path.strip_prefix(root).unwrap();
                    out.insert(format!("/{}", relative.display()));
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(&self.root(), &self.root(), &mut out);
        out
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn same_content(a: &Path, b: &Path) -> bool {
    let open = |p: &Path| std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a), open(b));
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

fn set(paths: &[&str]) -> BTreeSet<String> {
    paths.iter().map(|p| p.to_string()).collect()
}

const PLACED: [&str; 9] = [
    "/etc/crictl.yaml",
    "/etc/hull/config.toml",
    "/etc/systemd/system/hull.service",
    "/usr/local/bin/hull-vmm",
    "/usr/local/bin/hulld",
    "/usr/local/lib/hull/hull-agent-initramfs.cpio",
    "/usr/local/lib/hull/install-manifest.json",
    "/usr/local/lib/hull/vmlinux",
    "/usr/local/share/hull/cni/10-hull-bridge.conflist",
];

/// `hulld config check` of the installed hulld on `config`: its output.
fn config_check(stage: &Stage, config: &Path) -> String {
    let output = Command::new(stage.at("/usr/local/bin/hulld"))
        .args(["config", "check", "--config"])
        .arg(config)
        .output()
        .expect("run the installed hulld");
    assert!(
        output.status.success(),
        "hulld config check {}: {}",
        config.display(),
        stderr(&output)
    );
    stdout(&output)
}

/// `systemd-analyze verify` of the installed unit. Its ExecStart names the
/// binary as installed (/usr/local/bin/hulld), which is not on this
/// machine: a copy of the unit names the staged binary instead, and is
/// verified against this machine's systemd units (`--root` would look for
/// those in the staging tree too).
fn verify_unit(stage: &Stage) {
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!(
            "SKIPPED systemd-analyze verify: systemd-analyze is not installed (Debian package systemd; `cargo xtask deps` installs it)"
        );
        return;
    };
    let unit = std::fs::read_to_string(stage.at("/etc/systemd/system/hull.service")).unwrap();
    let installed = format!("ExecStart={PREFIX}/bin/hulld ");
    assert!(unit.contains(&installed), "{unit}");
    let staged_hulld = stage.at("/usr/local/bin/hulld");
    let copy = unit.replace(
        &installed,
        &format!("ExecStart={} ", staged_hulld.display()),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hull.service");
    std::fs::write(&path, copy).unwrap();
    let output = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let complaints: Vec<String> = stderr(&output)
        .lines()
        .filter(|l| l.contains("hull"))
        .map(str::to_string)
        .collect();
    assert!(
        output.status.success() && complaints.is_empty(),
        "systemd-analyze verify {}: {}\n{}",
        path.display(),
        output.status,
        stderr(&output)
    );
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/bin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
fn install_places_every_file_and_uninstall_takes_them_back() {
    let stage = Stage::new();
    let output = stage.install();
    assert!(
        output.status.success(),
        "install failed: {}",
        stderr(&output)
    );
    let printed = stdout(&output);

    // Exactly these files, nothing else (no temporary files left behind).
    assert_eq!(stage.files(), set(&PLACED));
    for path in PLACED {
        assert!(
            printed.contains(&stage.at(path).display().to_string()),
            "install does not say it placed {path}:\n{printed}"
        );
    }

    // Binaries: this build's, executable.
    let hulld = hulld_binary();
    let vmm = hulld.with_file_name("hull-vmm");
    for (installed, built) in [
        ("/usr/local/bin/hulld", &hulld),
        ("/usr/local/bin/hull-vmm", &vmm),
    ] {
        assert_eq!(mode(&stage.at(installed)), 0o755, "{installed}");
        assert!(same_content(&stage.at(installed), built), "{installed}");
    }
    // Guest kernel and agent where the installed config says.
    for (installed, source) in [
        ("/usr/local/lib/hull/vmlinux", stage.kernel()),
        (
            "/usr/local/lib/hull/hull-agent-initramfs.cpio",
            stage.initramfs(),
        ),
    ] {
        assert_eq!(mode(&stage.at(installed)), 0o644, "{installed}");
        assert!(same_content(&stage.at(installed), &source), "{installed}");
    }
    for other in [
        "/etc/systemd/system/hull.service",
        "/etc/crictl.yaml",
        "/usr/local/share/hull/cni/10-hull-bridge.conflist",
        "/usr/local/lib/hull/install-manifest.json",
    ] {
        assert_eq!(mode(&stage.at(other)), 0o644, "{other}");
    }

    // The config: hulld's default, pointing into the prefix, valid for the
    // installed hulld; private (it may hold registry credentials).
    let config = stage.at("/etc/hull/config.toml");
    assert_eq!(mode(&config), 0o600);
    let checked = config_check(&stage, &config);
    for line in [
        "kernel = \"/usr/local/lib/hull/vmlinux\"",
        "initramfs = \"/usr/local/lib/hull/hull-agent-initramfs.cpio\"",
        "socket_path = \"/run/hull/hull.sock\"",
        "state_dir = \"/var/lib/hull\"",
        "vmm_binary = \"\"",
    ] {
        assert!(
            checked.lines().any(|l| l == line),
            "{line} not in:\n{checked}"
        );
    }

    // The unit runs the installed hulld with the installed config.
    let unit = std::fs::read_to_string(stage.at("/etc/systemd/system/hull.service")).unwrap();
    let exec: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(
        exec,
        ["ExecStart=/usr/local/bin/hulld --config /etc/hull/config.toml"]
    );
    assert!(!unit.contains('@'), "a placeholder is left:\n{unit}");
    verify_unit(&stage);

    let crictl = std::fs::read_to_string(stage.at("/etc/crictl.yaml")).unwrap();
    assert!(crictl.contains("runtime-endpoint: unix:///run/hull/hull.sock"));
    assert!(crictl.contains("image-endpoint: unix:///run/hull/hull.sock"));

    let cni: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(stage.at("/usr/local/share/hull/cni/10-hull-bridge.conflist"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(cni["plugins"][0]["type"], "bridge");
    assert_eq!(cni["plugins"][0]["ipam"]["type"], "host-local");
    assert_eq!(cni["plugins"][1]["type"], "portmap");
    // The example is offered, never activated.
    assert!(!stage.at("/etc/cni").exists());
    assert!(
        printed.contains("no pod network in /etc/cni/net.d"),
        "{printed}"
    );

    // A second install with nothing edited changes nothing of the config.
    let installed_config = std::fs::read(&config).unwrap();
    let output = stage.install();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::read(&config).unwrap(), installed_config);
    assert_eq!(stage.files(), set(&PLACED));

    // An edited config is kept; the default goes beside it.
    let edited = String::from_utf8(installed_config.clone())
        .unwrap()
        .replace("level = \"info\"", "level = \"debug\"");
    std::fs::write(&config, &edited).unwrap();
    let output = stage.install();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    let beside = stage.at("/etc/hull/config.toml.default");
    assert_eq!(std::fs::read(&beside).unwrap(), installed_config);
    assert_eq!(mode(&beside), 0o600);
    let printed = stdout(&output);
    assert!(
        printed.contains("kept") && printed.contains(&beside.display().to_string()),
        "install does not say it kept the edited config:\n{printed}"
    );

    // Uninstall takes back all it placed, and keeps the edited config.
    let output = stage.uninstall(&[]);
    assert!(
        output.status.success(),
        "uninstall failed: {}",
        stderr(&output)
    );
    assert_eq!(stage.files(), set(&["/etc/hull/config.toml"]));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    assert!(stdout(&output).contains("(edited"), "{}", stdout(&output));
    // hull's own folders go with their files.
    for dir in ["/usr/local/lib/hull", "/usr/local/share/hull"] {
        assert!(!stage.at(dir).exists(), "{dir} is left");
    }

    // Nothing left to uninstall.
    let output = stage.uninstall(&[]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("nothing to uninstall"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn files_of_the_user_stay_as_they_are() {
    let stage = Stage::new();
    let crictl = stage.at("/etc/crictl.yaml");
    let network = stage.at("/etc/cni/net.d/05-cluster.conflist");
    let config = stage.at("/etc/hull/config.toml");
    for (path, text) in [
        (
            &crictl,
            "runtime-endpoint: unix:///run/containerd/containerd.sock\n",
        ),
        (
            &network,
            "{\"cniVersion\": \"1.0.0\", \"name\": \"cluster\", \"plugins\": []}\n",
        ),
        (&config, "# mine\n[log]\nlevel = \"warn\"\n"),
    ] {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let before: Vec<Vec<u8>> = [&crictl, &network, &config]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();

    let output = stage.install();
    assert!(
        output.status.success(),
        "install failed: {}",
        stderr(&output)
    );
    let printed = stdout(&output);
    assert!(
        printed.contains("pod network: /etc/cni/net.d/05-cluster.conflist"),
        "{printed}"
    );
    assert!(printed.contains("unix:///run/hull/hull.sock"), "{printed}");
    let after: Vec<Vec<u8>> = [&crictl, &network, &config]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(before, after, "install changed a file of the user's");
    // The user's config was not hull's: the default went beside it.
    let beside = stage.at("/etc/hull/config.toml.default");
    config_check(&stage, &beside);
    config_check(&stage, &config);

    // An enabled unit is not taken away under systemd.
    let wants = stage.at("/etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink("../hull.service", wants.join("hull.service")).unwrap();
    let output = stage.uninstall(&[]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("disable --now hull"),
        "{}",
        stderr(&output)
    );
    assert!(stage.at("/usr/local/bin/hulld").exists());
    std::fs::remove_file(wants.join("hull.service")).unwrap();
    std::fs::remove_dir(&wants).unwrap();

    // --purge also removes the config and hulld's state, never the user's
    // crictl.yaml or network.
    let state = stage.at("/var/lib/hull/sandboxes");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("record.json"), "{}").unwrap();
    let output = stage.uninstall(&["--purge"]);
    assert!(
        output.status.success(),
        "uninstall failed: {}",
        stderr(&output)
    );
    assert_eq!(
        stage.files(),
        set(&["/etc/cni/net.d/05-cluster.conflist", "/etc/crictl.yaml"])
    );
    assert_eq!(std::fs::read(&crictl).unwrap(), before[0]);
    assert!(!stage.at("/var/lib/hull").exists());
    assert!(!stage.at("/etc/hull").exists());
}

#[test]
fn no_build_names_what_is_missing() {
    let stage = Stage::new();
    let root = stage.root().display().to_string();
    let output = xtask(&[
        "install",
        "--root",
        &root,
        "--profile",
        profile(),
        "--no-build",
        "--kernel",
        "/nonexistent/vmlinux",
        "--initramfs",
        &stage.initramfs().display().to_string(),
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("/nonexistent/vmlinux is missing"),
        "{}",
        stderr(&output)
    );

    let output = xtask(&[
        "install",
        "--root",
        &root,
        "--profile",
        profile(),
        "--no-build",
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--kernel"), "{}", stderr(&output));

    let output = xtask(&["install", "--root", &root, "--prefix", "opt/hull"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("absolute"), "{}", stderr(&output));
    // Nothing was written.
    assert!(!stage.root().exists());
}

/// A child process killed (and reaped) if the test ends before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Receives one datagram, waiting at most `timeout`.
fn receive(socket: &UnixDatagram, timeout: Duration) -> String {
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification from hulld");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn hulld_tells_systemd_it_is_ready_once_the_socket_answers() {
    let dir = tempfile::tempdir().unwrap();
    let notify = UnixDatagram::bind(dir.path().join("notify")).unwrap();
    let socket = dir.path().join("hull.sock");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "socket_path = {:?}\nstate_dir = {:?}\n[cni]\nconf_dir = {:?}\nnetns_dir = {:?}\n",
            socket,
            dir.path().join("state"),
            dir.path().join("net.d"),
            dir.path().join("netns"),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("hulld.log")).unwrap();
    let mut child = KillOnDrop(
        Command::new(hulld_binary())
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", dir.path().join("notify"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start hulld"),
    );
    let child = &mut child.0;
    let hulld_log = || std::fs::read_to_string(dir.path().join("hulld.log")).unwrap_or_default();

    let ready = receive(&notify, Duration::from_secs(30));
    let lines: Vec<&str> = ready.lines().collect();
    assert!(lines.contains(&"READY=1"), "{ready}\n{}", hulld_log());
    assert!(
        lines.contains(&format!("MAINPID={}", child.id()).as_str()),
        "{ready}"
    );
    assert!(
        lines.contains(&format!("STATUS=serving the CRI on {}", socket.display()).as_str()),
        "{ready}"
    );
    // READY=1 means a CRI call made now is answered: no retry here.
    let mut runtime = RuntimeServiceClient::new(connect_unix(socket.clone()).await);
    let version = runtime
        .version(cri::VersionRequest::default())
        .await
        .expect("hulld answers once it said READY=1")
        .into_inner();
    assert_eq!(version.runtime_name, "hull");
    // hulld's graceful shutdown waits for open connections to close.
    drop(runtime);

    // SAFETY: kill(2) on the pid of our own child, not yet reaped.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let stopping = receive(&notify, Duration::from_secs(30));
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "hulld did not exit within 30 s of SIGTERM:\n{}",
                hulld_log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.success(),
        "hulld exited with {status}:\n{}",
        hulld_log()
    );
}
