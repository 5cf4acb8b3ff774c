//! `cargo xtask bench image-pull`: hull's pull + conversion against
//! containerd 1.6's pull + unpack, from the same local registry.
//!
//! 1. Builds `pull_bench` (an image-service example) with optimizations; it
//!    builds a ~100 MB multi-layer image (incompressible and text data) and
//!    pushes it to a Debian `docker-registry` started here on 127.0.0.1 with
//!    its own config and storage.
//! 2. hull: each run pulls into a fresh store root (`pull_bench pull`):
//!    registry fetch, digest checks, decompression, conversion into the
//!    EROFS image.
//! 3. containerd: each run starts `containerd` with a fresh root, state and
//!    socket, then times `ctr images pull --plain-http` (fetch + unpack into
//!    the overlayfs snapshotter).
//!
//! Both sides start cold (fresh roots; the registry's files stay in the page
//! cache for both alike). Ends with
//! `RESULT image-pull hull_s=… containerd_s=… ratio=…` (ratio = hull / containerd).

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::median;
use crate::deps;
use crate::util::{self, cargo, workspace_root};

const REFERENCE_PATH: &str = "bench/image:1";

/// A child process killed (by its pid) and reaped on drop.
struct Guard {
    name: &'static str,
    child: Child,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("xtask: stopped {} (pid {})", self.name, self.child.id());
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn wait_for(what: &str, deadline: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} was not ready within {deadline:?}")
}

fn registry_answers(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

fn start_registry(dir: &Path) -> Result<(Guard, SocketAddr)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let storage = dir.join("registry-storage");
    fs::create_dir_all(&storage)?;
    let config = dir.join("registry.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n",
            storage.display()
        ),
    )?;
    let log = fs::File::create(dir.join("registry.log"))?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start docker-registry")?;
    let guard = Guard {
        name: "docker-registry",
        child,
    };
    wait_for("docker-registry", Duration::from_secs(20), || {
        registry_answers(addr)
    })?;
    Ok((guard, addr))
}

fn start_containerd(dir: &Path) -> Result<(Guard, PathBuf)> {
    let socket = dir.join("containerd.sock");
    let config = dir.join("containerd.toml");
    fs::write(
        &config,
        format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n\
             [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"{sock}.debug\"\n  level = \"warn\"\n",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = socket.display(),
        ),
    )?;
    let log = fs::File::create(dir.join("containerd.log"))?;
    let child = Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start containerd")?;
    let guard = Guard {
        name: "containerd",
        child,
    };
    let probe = socket.clone();
    wait_for("containerd", Duration::from_secs(20), || {
        Command::new("ctr")
            .arg("-a")
            .arg(&probe)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })?;
    Ok((guard, socket))
}

/// Runs `cmd` and returns its wall time in seconds; fails with its output.
fn timed(cmd: &mut Command) -> Result<(f64, String)> {
    let shown = format!("{cmd:?}");
    let started = Instant::now();
    let output = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    let elapsed = started.elapsed().as_secs_f64();
    ensure!(
        output.status.success(),
        "{shown} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((
        elapsed,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Runs the benchmark and prints the RESULT line.
pub fn run(runs: usize, megabytes: usize) -> Result<()> {
    deps::install()?;
    util::run(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "image-service",
        "--example",
        "pull_bench",
    ]))?;
    let pull_bench = workspace_root().join("target/release/examples/pull_bench");
    let work = tempfile_dir()?;
    let (_registry, addr) = start_registry(&work)?;
    let reference = format!("{addr}/{REFERENCE_PATH}");
    util::run(Command::new(&pull_bench).args([
        "push",
        "--registry",
        &format!("http://{addr}"),
        "--reference",
        REFERENCE_PATH,
        "--megabytes",
        &megabytes.to_string(),
    ]))?;

    // Runs alternate between the two sides, each after a `sync`, so that
    // neither pays for the other's writeback.
    let mut hull = Vec::new();
    let mut containerd = Vec::new();
    for i in 0..runs {
        let root = work.join(format!("hull-{i}"));
        util::run(&mut Command::new("sync"))?;
        let (elapsed, log) = timed(Command::new(&pull_bench).args([
            "pull",
            "--root",
            &root.display().to_string(),
            "--reference",
            &reference,
        ]))?;
        eprintln!("xtask: hull run {i}: {elapsed:.3}s ({})", log.trim());
        hull.push(elapsed);
        fs::remove_dir_all(&root)?;

        let dir = work.join(format!("containerd-{i}"));
        fs::create_dir_all(&dir)?;
        let (daemon, socket) = start_containerd(&dir)?;
        util::run(&mut Command::new("sync"))?;
        let (elapsed, _) = timed(Command::new("ctr").arg("-a").arg(&socket).args([
            "-n",
            "bench",
            "images",
            "pull",
            "--plain-http",
            &reference,
        ]))?;
        let snapshots = dir.join("root/io.containerd.snapshotter.v1.overlayfs/snapshots");
        let unpacked = fs::read_dir(&snapshots).map(|d| d.count()).unwrap_or(0);
        ensure!(
            unpacked > 0,
            "containerd pulled but unpacked nothing into {}",
            snapshots.display()
        );
        eprintln!("xtask: containerd run {i}: {elapsed:.3}s ({unpacked} overlayfs snapshots)");
        containerd.push(elapsed);
        drop(daemon);
        fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }

    let hull_s = median(&hull);
    let containerd_s = median(&containerd);
    let _ = fs::remove_dir_all(&work);
    println!(
        "RESULT image-pull hull_s={hull_s:.3} containerd_s={containerd_s:.3} ratio={:.2}",
        hull_s / containerd_s
    );
    Ok(())
}

/// A fresh folder for the benchmark's registry, roots and logs.
fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("hull-bench-image-pull-{}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    Ok(dir)
}
