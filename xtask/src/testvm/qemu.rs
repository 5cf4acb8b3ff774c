//! The QEMU command line of the test VM, and the host ends of its ports.
//!
//! Machine: `-M microvm` under multi-threaded TCG with a `qemu64,+svm,+npt`
//! CPU, so the guest has AMD SVM with nested paging and its `kvm_amd` works.
//! Devices are all virtio-mmio (found by the generic kernel through ACPI):
//! one 9p export of the host's `/` (read-only), one 9p export per writable
//! share, a virtio-serial bus with three named ports (`hull.stdout`,
//! `hull.stderr`, `hull.control`), and in detached mode a user-mode network
//! with TCP forwards from 127.0.0.1.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::initramfs::BootFiles;

/// Where the guest's address is on QEMU's user network (its default layout).
pub const GUEST_IP: &str = "10.0.2.15";
/// Where the guest reaches the host's loopback ports it was given
/// ([`VmSpec::host_ports`]).
pub const HOST_SERVICES_IP: &str = "10.0.2.100";

/// Where the bytes of one virtio-serial port go on the host.
#[derive(Debug, Clone)]
pub enum PortSink {
    /// QEMU connects to this unix socket, on which xtask listens.
    Socket(PathBuf),
    /// QEMU appends to this file.
    File(PathBuf),
}

/// One TCP forward: 127.0.0.1:`host_port` on the host to `guest_port` in the guest.
#[derive(Debug, Clone, Copy)]
pub struct TcpForward {
    pub host_port: u16,
    pub guest_port: u16,
}

/// Everything that varies between test VM boots.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub boot: BootFiles,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Host shell script the guest runs (visible at the same path inside).
    pub job: PathBuf,
    /// Host folders the guest may write to, at the same paths.
    pub shares: Vec<PathBuf>,
    /// Guest folders that get an empty tmpfs.
    pub tmpfs: Vec<PathBuf>,
    pub stdout: PortSink,
    pub stderr: PortSink,
    pub control: PortSink,
    /// The kernel console (ttyS0) goes to this file.
    pub console_log: PathBuf,
    pub forwards: Vec<TcpForward>,
    /// Host loopback ports the guest reaches at [`HOST_SERVICES_IP`]: for
    /// each, QEMU runs `proxy_command` with the port appended per guest
    /// connection (its stdin and stdout are the connection).
    pub host_ports: Vec<u16>,
    /// The command (no commas) joining a guest connection to a host port.
    pub host_port_proxy: String,
    /// `-daemonize` with this pid file.
    pub daemonize_pidfile: Option<PathBuf>,
}

/// The TSC frequency in kHz, from the first "cpu MHz" line of `/proc/cpuinfo`.
///
/// TCG's PIT-based TSC calibration fails under host load, and a test VM with
/// a wrong TSC frequency hangs its nested guests; so the frequency is passed
/// on the command line (`tsc_early_khz=`).
pub fn host_tsc_khz(cpuinfo: &str) -> Option<u64> {
    cpuinfo
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.trim() == "cpu MHz")
        .and_then(|(_, value)| value.trim().parse::<f64>().ok())
        .map(|mhz| (mhz * 1000.0).round() as u64)
}

/// A path that can go on the kernel command line as one word, and into a
/// comma-separated list: no whitespace, no commas, absolute.
fn cmdline_safe(path: &Path) -> Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    if !path.is_absolute() || text.contains(|c: char| c.is_whitespace() || c == ',' || c == '"') {
        bail!(
            "{text:?} cannot be passed to the test VM: it must be absolute, \
             without whitespace, commas or quotes"
        );
    }
    Ok(text.to_string())
}

fn chardev(id: &str, sink: &PortSink) -> Result<String> {
    Ok(match sink {
        PortSink::Socket(path) => format!("socket,id={id},path={}", cmdline_safe(path)?),
        PortSink::File(path) => format!("file,id={id},path={},append=on", cmdline_safe(path)?),
    })
}

/// The kernel command line of the test VM.
pub fn kernel_cmdline(spec: &VmSpec, tsc_khz: Option<u64>) -> Result<String> {
    let mut words = vec![
        "console=ttyS0".to_string(),
        "quiet".to_string(),
        "panic=-1".to_string(),
        // microvm has no keyboard controller; a triple fault is a reset that
        // QEMU (-no-reboot) turns into its exit.
        "reboot=t".to_string(),
        "rdinit=/init".to_string(),
        // A PCI-less machine: skip the probe and its "Fatal" line.
        "pci=off".to_string(),
    ];
    if let Some(khz) = tsc_khz {
        words.push(format!("tsc_early_khz={khz}"));
        words.push("tsc=reliable".to_string());
    }
    words.push(format!("hull.job={}", cmdline_safe(&spec.job)?));
    let shares = spec
        .shares
        .iter()
        .map(|p| cmdline_safe(p))
        .collect::<Result<Vec<_>>>()?;
    if !shares.is_empty() {
        words.push(format!("hull.shares={}", shares.join(",")));
    }
    let tmpfs = spec
        .tmpfs
        .iter()
        .map(|p| cmdline_safe(p))
        .collect::<Result<Vec<_>>>()?;
    if !tmpfs.is_empty() {
        words.push(format!("hull.tmpfs={}", tmpfs.join(",")));
    }
    if !spec.forwards.is_empty() || !spec.host_ports.is_empty() {
        words.push(format!("hull.ip={GUEST_IP}"));
    }
    let cmdline = words.join(" ");
    if cmdline.len() >= 2048 {
        bail!(
            "the test VM's kernel command line is too long ({} bytes)",
            cmdline.len()
        );
    }
    Ok(cmdline)
}

/// The arguments of `qemu-system-x86_64` for `spec`.
pub fn qemu_args(spec: &VmSpec, tsc_khz: Option<u64>) -> Result<Vec<OsString>> {
    let mut args: Vec<String> = vec![
        "-M".into(),
        "microvm,acpi=on,pcie=off,rtc=on".into(),
        "-accel".into(),
        "tcg,thread=multi,tb-size=256".into(),
        "-cpu".into(),
        "qemu64,+svm,+npt".into(),
        "-smp".into(),
        spec.cpus.to_string(),
        "-m".into(),
        format!("{}M", spec.memory_mib),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-kernel".into(),
        cmdline_safe(&spec.boot.kernel)?,
        "-initrd".into(),
        cmdline_safe(&spec.boot.initramfs)?,
        "-append".into(),
        kernel_cmdline(spec, tsc_khz)?,
        "-serial".into(),
        format!("file:{}", cmdline_safe(&spec.console_log)?),
        "-fsdev".into(),
        "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap".into(),
        "-device".into(),
        "virtio-9p-device,fsdev=hostroot,mount_tag=hostroot".into(),
    ];
    for (index, share) in spec.shares.iter().enumerate() {
        args.push("-fsdev".into());
        args.push(format!(
            "local,id=share{index},path={},security_model=none,multidevs=remap",
            cmdline_safe(share)?
        ));
        args.push("-device".into());
        args.push(format!(
            "virtio-9p-device,fsdev=share{index},mount_tag=share{index}"
        ));
    }
    args.push("-device".into());
    args.push("virtio-serial-device,max_ports=4".into());
    for (name, sink) in [
        ("stdout", &spec.stdout),
        ("stderr", &spec.stderr),
        ("control", &spec.control),
    ] {
        args.push("-chardev".into());
        args.push(chardev(name, sink)?);
        args.push("-device".into());
        args.push(format!("virtserialport,chardev={name},name=hull.{name}"));
    }
    if !spec.forwards.is_empty() || !spec.host_ports.is_empty() {
        let mut netdev = "user,id=net0,restrict=on".to_string();
        for forward in &spec.forwards {
            netdev.push_str(&format!(
                ",hostfwd=tcp:127.0.0.1:{}-{GUEST_IP}:{}",
                forward.host_port, forward.guest_port
            ));
        }
        if spec.host_port_proxy.contains(',') {
            bail!(
                "the host-port proxy command {:?} contains a comma",
                spec.host_port_proxy
            );
        }
        for port in &spec.host_ports {
            netdev.push_str(&format!(
                ",guestfwd=tcp:{HOST_SERVICES_IP}:{port}-cmd:{} 127.0.0.1:{port}",
                spec.host_port_proxy
            ));
        }
        args.push("-netdev".into());
        args.push(netdev);
        args.push("-device".into());
        args.push("virtio-net-device,netdev=net0".into());
    }
    if let Some(pidfile) = &spec.daemonize_pidfile {
        args.push("-daemonize".into());
        args.push("-pidfile".into());
        args.push(cmdline_safe(pidfile)?);
    }
    Ok(args.into_iter().map(OsString::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            boot: BootFiles {
                kernel: "/boot/vmlinuz-6.1.0-1-amd64".into(),
                initramfs: "/c/initramfs.cpio".into(),
            },
            memory_mib: 4096,
            cpus: 1,
            job: "/c/runs/1/job.sh".into(),
            shares: vec!["/w/target".into(), "/c".into()],
            tmpfs: vec!["/run".into()],
            stdout: PortSink::Socket("/c/runs/1/stdout.sock".into()),
            stderr: PortSink::Socket("/c/runs/1/stderr.sock".into()),
            control: PortSink::File("/c/runs/1/control".into()),
            console_log: "/c/runs/1/console.log".into(),
            forwards: vec![],
            host_ports: vec![],
            host_port_proxy: String::new(),
            daemonize_pidfile: None,
        }
    }

    #[test]
    fn host_ports_are_reachable_through_a_guestfwd_command() {
        let mut with_ports = spec();
        with_ports.host_ports.push(5000);
        with_ports.host_port_proxy = "/x/xtask testvm-proxy --stdio --connect-tcp".into();
        let args: Vec<String> = qemu_args(&with_ports, None)
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert!(
            args.iter().any(|a| a
                == "user,id=net0,restrict=on,guestfwd=tcp:10.0.2.100:5000-cmd:/x/xtask testvm-proxy --stdio --connect-tcp 127.0.0.1:5000"),
            "{args:?}"
        );
        assert!(
            kernel_cmdline(&with_ports, None)
                .unwrap()
                .contains("hull.ip=")
        );
        with_ports.host_port_proxy = "/a,b/xtask".into();
        assert!(qemu_args(&with_ports, None).is_err());
    }

    #[test]
    fn cmdline_carries_job_shares_and_tsc() {
        let line = kernel_cmdline(&spec(), Some(2_596_146)).unwrap();
        assert!(line.contains(" hull.job=/c/runs/1/job.sh"), "{line}");
        assert!(line.contains(" hull.shares=/w/target,/c"), "{line}");
        assert!(line.contains(" hull.tmpfs=/run"), "{line}");
        assert!(
            line.contains("tsc_early_khz=2596146 tsc=reliable"),
            "{line}"
        );
        assert!(!line.contains("hull.ip="), "{line}");
    }

    #[test]
    fn paths_that_would_split_the_cmdline_are_refused() {
        let mut bad = spec();
        bad.shares.push("/a b".into());
        assert!(kernel_cmdline(&bad, None).is_err());
        bad.shares.pop();
        bad.shares.push("/a,b".into());
        assert!(kernel_cmdline(&bad, None).is_err());
        bad.shares.pop();
        bad.shares.push("relative".into());
        assert!(kernel_cmdline(&bad, None).is_err());
    }

    #[test]
    fn forwards_add_a_restricted_user_network() {
        let mut with_net = spec();
        with_net.forwards.push(TcpForward {
            host_port: 40000,
            guest_port: 7000,
        });
        let args: Vec<String> = qemu_args(&with_net, None)
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert!(args.iter().any(|a| a
            == "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40000-10.0.2.15:7000"));
        assert!(
            args.iter()
                .any(|a| a == "virtserialport,chardev=control,name=hull.control")
        );
        assert!(
            args.iter()
                .any(|a| a.starts_with("file,id=control,path=/c/runs/1/control"))
        );
    }

    #[test]
    fn tsc_from_cpuinfo() {
        let cpuinfo = "processor\t: 0\ncpu MHz\t\t: 2596.146\nflags\t: fpu\n";
        assert_eq!(host_tsc_khz(cpuinfo), Some(2_596_146));
        assert_eq!(host_tsc_khz("processor: 0\n"), None);
    }
}
