//! One test VM boot that runs one command and streams its output: the normal
//! `vm-run`.
//!
//! QEMU connects its three virtio-serial ports to unix sockets on which xtask
//! listens: `stdout` and `stderr` are copied to xtask's own as they arrive;
//! `control` carries the guest init's `ready <uptime>` and `exit <code>`
//! lines (or `error <reason>`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::initramfs;
use super::qemu::{self, PortSink, VmSpec};
use super::{RunOptions, job_environment, job_script, new_run_dir, writable_shares};

/// How long QEMU may take to connect its ports after it starts.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// A line the guest init wrote to the control port.
#[derive(Debug, PartialEq)]
pub enum ControlEvent {
    /// Mounts done; the job starts now. Guest uptime in seconds.
    Ready(f64),
    /// The job ended with this exit code.
    Exit(i32),
    /// The init could not set the VM up.
    Error(String),
}

impl ControlEvent {
    pub fn parse(line: &str) -> Option<ControlEvent> {
        let (word, rest) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        match word {
            "ready" => Some(ControlEvent::Ready(rest.parse().unwrap_or(0.0))),
            "exit" => rest.parse().ok().map(ControlEvent::Exit),
            "error" => Some(ControlEvent::Error(rest.to_string())),
            _ => None,
        }
    }
}

/// Boots the test VM, runs `command` in it, returns its exit code.
pub fn run(command: &[String], options: &RunOptions) -> Result<i32> {
    let boot = initramfs::prepare()?;
    let run_dir = new_run_dir()?;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let job = run_dir.join("job.sh");
    std::fs::write(&job, job_script(command, &cwd, &job_environment(), &[]))?;

    let sockets = ["stdout", "stderr", "control"].map(|name| run_dir.join(format!("{name}.sock")));
    let listeners = sockets
        .iter()
        .map(|path| {
            let listener = UnixListener::bind(path)
                .with_context(|| format!("cannot listen on {}", path.display()))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .collect::<Result<Vec<_>>>()?;
    let console_log = run_dir.join("console.log");
    let spec = VmSpec {
        boot,
        memory_mib: options.memory_mib,
        cpus: options.cpus,
        job,
        shares: writable_shares(&options.extra_shares)?,
        tmpfs: options.tmpfs.clone(),
        stdout: PortSink::Socket(sockets[0].clone()),
        stderr: PortSink::Socket(sockets[1].clone()),
        control: PortSink::Socket(sockets[2].clone()),
        console_log: console_log.clone(),
        forwards: Vec::new(),
        host_ports: Vec::new(),
        host_port_proxy: String::new(),
        daemonize_pidfile: None,
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let args = qemu::qemu_args(&spec, qemu::host_tsc_khz(&cpuinfo))?;

    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start qemu-system-x86_64 (Debian qemu-system-x86)")?;
    let outcome = supervise(&mut child, &listeners, started, options.timeout);
    if child.try_wait()?.is_none() {
        // Error paths only: QEMU is still running.
        let _ = child.kill();
        let _ = child.wait();
    }
    match outcome {
        Ok(code) => {
            let _ = std::fs::remove_dir_all(&run_dir);
            Ok(code)
        }
        Err(err) => {
            show_console_tail(&console_log);
            Err(err.context(format!("test VM run folder kept: {}", run_dir.display())))
        }
    }
}

fn supervise(
    child: &mut Child,
    listeners: &[UnixListener],
    started: Instant,
    timeout: Option<Duration>,
) -> Result<i32> {
    let mut streams = Vec::new();
    for listener in listeners {
        streams.push(accept_before_exit(listener, child)?);
    }
    let control = streams.pop().context("no control stream")?;
    let stderr = streams.pop().context("no stderr stream")?;
    let stdout = streams.pop().context("no stdout stream")?;
    let copiers = [
        copy_in_background(stdout, std::io::stdout()),
        copy_in_background(stderr, std::io::stderr()),
    ];
    let (events_tx, events) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(control).lines() {
            let Ok(line) = line else { break };
            if let Some(event) = ControlEvent::parse(&line)
                && events_tx.send(event).is_err()
            {
                break;
            }
        }
    });

    let mut exit_code = None;
    let mut setup_error = None;
    let qemu_status = loop {
        match events.recv_timeout(Duration::from_millis(50)) {
            Ok(ControlEvent::Ready(uptime)) => eprintln!(
                "xtask: test VM ready in {:.1} s (guest uptime {uptime:.1} s)",
                started.elapsed().as_secs_f64()
            ),
            Ok(ControlEvent::Exit(code)) => exit_code = Some(code),
            Ok(ControlEvent::Error(reason)) => setup_error = Some(reason),
            Err(_) => {}
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(limit) = timeout
            && started.elapsed() > limit
        {
            child.kill()?;
            child.wait()?;
            bail!("the test VM did not finish within {} s", limit.as_secs());
        }
    };
    for copier in copiers {
        let _ = copier.join();
    }
    // Events sent just before QEMU exited.
    while let Ok(event) = events.recv_timeout(Duration::from_millis(200)) {
        match event {
            ControlEvent::Exit(code) => exit_code = Some(code),
            ControlEvent::Error(reason) => setup_error = Some(reason),
            ControlEvent::Ready(_) => {}
        }
    }
    if let Some(reason) = setup_error {
        bail!("the test VM could not start the command: {reason}");
    }
    match exit_code {
        Some(code) => Ok(code),
        None => {
            bail!("the test VM ended ({qemu_status}) without reporting the command's exit status")
        }
    }
}

fn accept_before_exit(listener: &UnixListener, child: &mut Child) -> Result<UnixStream> {
    let deadline = Instant::now() + CONNECT_DEADLINE;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err).context("cannot accept QEMU's port connection"),
        }
        if let Some(status) = child.try_wait()? {
            bail!("qemu-system-x86_64 exited ({status}) before connecting its ports");
        }
        if Instant::now() > deadline {
            bail!("qemu-system-x86_64 did not connect its ports within {CONNECT_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn copy_in_background<W: Write + Send + 'static>(
    mut from: UnixStream,
    mut to: W,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buffer[..n]).is_err() || to.flush().is_err() {
                        break;
                    }
                }
            }
        }
    })
}

fn show_console_tail(console_log: &Path) {
    let text = std::fs::read_to_string(console_log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(30);
    if lines.is_empty() {
        return;
    }
    eprintln!(
        "xtask: last lines of the test VM console ({}):",
        console_log.display()
    );
    for line in &lines[start..] {
        eprintln!("  {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_lines() {
        assert_eq!(
            ControlEvent::parse("ready 4.51\n"),
            Some(ControlEvent::Ready(4.51))
        );
        assert_eq!(ControlEvent::parse("exit 3"), Some(ControlEvent::Exit(3)));
        assert_eq!(
            ControlEvent::parse("error cannot load kvm-amd.ko"),
            Some(ControlEvent::Error("cannot load kvm-amd.ko".into()))
        );
        assert_eq!(ControlEvent::parse("exit x"), None);
        assert_eq!(ControlEvent::parse("noise"), None);
    }
}
