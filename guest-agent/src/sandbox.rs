//! Pod setup inside the VM (`SetupSandbox`): hostname and the pod's UTS and
//! IPC namespaces, resolv.conf, hosts, /dev/shm, sysctls, the scratch disk,
//! and the network (`lo`, interfaces, addresses, routes: see `network`).

use std::path::Path;

use hull_proto::spec::guest_paths;
use hull_proto::v1;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

use crate::network::{self, NetworkError};
use crate::storage::{self, StorageError};

/// Longest hostname Linux accepts.
const MAX_HOSTNAME: usize = 64;

/// Pod setup failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("hostname {0:?} is not a DNS label of at most 64 characters")]
    BadHostname(String),
    #[error("sysctl {0:?} is not a namespaced kernel parameter name")]
    BadSysctl(String),
    #[error("cannot set sysctl {key}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{field} entry {value:?} holds a newline or control character")]
    BadConfigLine { field: &'static str, value: String },
    #[error("cannot create the pod's {kind} namespace")]
    Namespace {
        kind: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("cannot write {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Network(#[from] NetworkError),
}

fn write_file(path: &str, content: &str) -> Result<(), SandboxError> {
    let io = |source| SandboxError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = Path::new(path).parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, content).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HOSTNAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !name.starts_with(['-', '.'])
}

fn single_line(field: &'static str, value: &str) -> Result<(), SandboxError> {
    if value.is_empty() || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(SandboxError::BadConfigLine {
            field,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// resolv.conf for the pod.
pub fn resolv_conf(dns: &v1::DnsConfig) -> Result<String, SandboxError> {
    let mut out = String::new();
    for server in &dns.servers {
        single_line("dns.servers", server)?;
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.searches.is_empty() {
        for search in &dns.searches {
            single_line("dns.searches", search)?;
        }
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        for option in &dns.options {
            single_line("dns.options", option)?;
        }
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(out)
}

/// /etc/hosts for the pod: the usual localhost lines, the pod's hostname,
/// then the requested entries.
pub fn hosts_file(hostname: &str, entries: &[v1::HostEntry]) -> Result<String, SandboxError> {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for entry in entries {
        single_line("hosts.ip", &entry.ip)?;
        for name in &entry.hostnames {
            single_line("hosts.hostnames", name)?;
        }
        out.push_str(&format!("{}\t{}\n", entry.ip, entry.hostnames.join(" ")));
    }
    if !hostname.is_empty() && entries.is_empty() {
        out.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    Ok(out)
}

/// `net.ipv4.ip_forward` → `/proc/sys/net/ipv4/ip_forward`. Only names of
/// `[a-z0-9_.-]` with no empty component are accepted.
pub fn sysctl_path(key: &str) -> Result<String, SandboxError> {
    let ok = !key.is_empty()
        && key.split(['.', '/']).all(|part| {
            !part.is_empty()
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        });
    if !ok {
        return Err(SandboxError::BadSysctl(key.to_owned()));
    }
    Ok(format!("/proc/sys/{}", key.replace('.', "/")))
}

/// Creates the pod's UTS and IPC namespaces and keeps them alive by
/// bind-mounting them at [`guest_paths::UTS_NAMESPACE`] and
/// [`guest_paths::IPC_NAMESPACE`], so containers can join them by path. Done
/// on a short-lived thread: `unshare` moves only the calling thread, and the
/// agent's own thread stays in the VM's namespaces.
fn create_pod_namespaces(hostname: &str) -> Result<(), SandboxError> {
    if Path::new(guest_paths::UTS_NAMESPACE).exists() {
        // Already created; SetupSandbox is idempotent.
        return Ok(());
    }
    for path in [guest_paths::UTS_NAMESPACE, guest_paths::IPC_NAMESPACE] {
        write_file(path, "")?;
    }
    let hostname = hostname.to_owned();
    std::thread::spawn(move || -> Result<(), SandboxError> {
        unshare(CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC).map_err(|source| {
            SandboxError::Namespace {
                kind: "uts+ipc",
                source,
            }
        })?;
        if !hostname.is_empty() {
            nix::unistd::sethostname(&hostname).map_err(|source| SandboxError::Namespace {
                kind: "uts (hostname)",
                source,
            })?;
        }
        for (kind, ns, target) in [
            ("uts", "uts", guest_paths::UTS_NAMESPACE),
            ("ipc", "ipc", guest_paths::IPC_NAMESPACE),
        ] {
            let source = format!("/proc/thread-self/ns/{ns}");
            mount(
                Some(source.as_str()),
                target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|source| SandboxError::Namespace { kind, source })?;
        }
        Ok(())
    })
    .join()
    .expect("the namespace thread does not panic")
}

/// Does everything `SetupSandbox` asks.
pub fn setup(request: &v1::SetupSandboxRequest) -> Result<(), SandboxError> {
    let network_plan = network::Plan::parse(&request.interfaces, &request.routes)?;
    if !request.hostname.is_empty() && !valid_hostname(&request.hostname) {
        return Err(SandboxError::BadHostname(request.hostname.clone()));
    }
    let sysctls: Vec<(String, &String)> = request
        .sysctls
        .iter()
        .map(|(k, v)| sysctl_path(k).map(|p| (p, v)))
        .collect::<Result<_, _>>()?;
    let resolv = resolv_conf(&request.dns.clone().unwrap_or_default())?;
    let hosts = hosts_file(&request.hostname, &request.hosts)?;
    // Matching the interfaces to the guest's links only reads: a MAC or
    // device that is not there fails the request before anything changes.
    let mut netlink = network::Netlink::open()?;
    let network_steps = network_plan.resolve(&netlink.links()?)?;

    storage::mount_scratch(request.scratch_disk.as_ref())?;
    create_pod_namespaces(&request.hostname)?;
    write_file(guest_paths::RESOLV_CONF, &resolv)?;
    write_file(guest_paths::HOSTS, &hosts)?;
    write_file(guest_paths::HOSTNAME, &format!("{}\n", request.hostname))?;
    std::fs::create_dir_all(guest_paths::SHM).map_err(|source| SandboxError::Io {
        path: guest_paths::SHM.to_owned(),
        source,
    })?;
    if !storage::is_mounted(Path::new(guest_paths::SHM)) {
        mount(
            Some("shm"),
            guest_paths::SHM,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        )
        .map_err(|source| SandboxError::Namespace {
            kind: "shm",
            source,
        })?;
    }
    // Before the sysctls, which may name the interfaces (net.ipv4.conf.eth0.*).
    network::apply(&mut netlink, &network_steps)?;
    // Sysctls are set in the VM's namespaces, which are the pod's network
    // namespace; the IPC ones would need the pod's IPC namespace and are
    // rare in practice.
    for (path, value) in sysctls {
        std::fs::write(&path, value).map_err(|source| SandboxError::Sysctl {
            key: path.clone(),
            source,
        })?;
    }
    tracing::info!(hostname = %request.hostname, "sandbox set up");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_resolv_conf() {
        let dns = v1::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns).unwrap(),
            "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        );
        let evil = v1::DnsConfig {
            servers: vec!["1.1.1.1\nnameserver 6.6.6.6".into()],
            ..Default::default()
        };
        assert!(matches!(
            resolv_conf(&evil),
            Err(SandboxError::BadConfigLine { .. })
        ));
    }

    #[test]
    fn writes_hosts() {
        let hosts = hosts_file(
            "web-0",
            &[v1::HostEntry {
                ip: "10.0.0.5".into(),
                hostnames: vec!["web-0".into(), "web-0.web".into()],
            }],
        )
        .unwrap();
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(hosts.ends_with("10.0.0.5\tweb-0 web-0.web\n"));
        assert!(
            hosts_file("pod", &[])
                .unwrap()
                .ends_with("127.0.1.1\tpod\n")
        );
    }

    #[test]
    fn sysctl_names_map_to_proc_sys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_local_port_range").unwrap(),
            "/proc/sys/net/ipv4/ip_local_port_range"
        );
        assert_eq!(
            sysctl_path("net/core/somaxconn").unwrap(),
            "/proc/sys/net/core/somaxconn"
        );
        for bad in ["", "net..x", "../../etc/passwd", "net.ipv4 x", "a.b/../c"] {
            assert!(sysctl_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostnames_are_dns_labels() {
        assert!(valid_hostname("web-0.example"));
        assert!(!valid_hostname("-x"));
        assert!(!valid_hostname(&"a".repeat(65)));
        assert!(!valid_hostname("a b"));
    }
}
