//! A node for the pod tests (`vm_pods*`): hulld configured to boot pod VMs
//! with hull's guest kernel and agent, a real registry holding busybox
//! (pulled through the CRI), and helpers that drive pods and containers
//! only through hulld's CRI socket.
//!
//! Needs a working KVM with `HULL_GUEST_VMLINUX` and `HULL_AGENT_INITRAMFS`
//! set, and `hull-vmm` built next to `hulld`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;

use crate::guest::{guest_kernel, require_kvm};
use crate::hulld::{Hulld, hulld_binary, pull_request};
use crate::registry::TestRegistry;
use crate::test_image;

/// How long a pod test waits for any one thing.
pub const DEADLINE: Duration = Duration::from_secs(120);

pub struct Node {
    pub hulld: Hulld,
    registry: TestRegistry,
    pub image: String,
    logs: tempfile::TempDir,
    run_dir: PathBuf,
    /// Which network of this process the node's pods join (see
    /// [`Node::start_with_network`]).
    network_index: u8,
    /// hulld's Prometheus endpoint, on 127.0.0.1.
    metrics_port: u16,
}

/// Networks handed out to the nodes of this process: each node with a
/// network gets its own bridge and /24, so nodes of concurrent tests never
/// share addresses.
static NETWORKS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

impl Node {
    pub async fn start() -> Node {
        require_kvm().expect("these tests need a working KVM");
        let kernel = guest_kernel().expect("HULL_GUEST_VMLINUX");
        let initramfs = std::env::var("HULL_AGENT_INITRAMFS").expect("HULL_AGENT_INITRAMFS");
        let vmm = hulld_binary().with_file_name("hull-vmm");
        assert!(vmm.exists(), "build hull-vmm: cargo build -p vm-runtime");
        // Short: unix socket paths of the pods live under it.
        let run_dir = tempfile::Builder::new()
            .prefix("hp")
            .tempdir_in("/tmp")
            .expect("run dir")
            .keep();
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let hulld = Hulld::start_with_config(&format!(
            "[vm]\nkernel = {:?}\ninitramfs = {initramfs:?}\nvmm_binary = {vmm:?}\nrun_dir = {run_dir:?}\nmemory_mib = 192\nscratch_disk_mib = 1024\nstart_timeout_secs = 90\n\n[metrics]\naddress = \"127.0.0.1:{metrics_port}\"\n",
            kernel.vmlinux
        ))
        .await;
        let registry = TestRegistry::start().expect("registry");
        test_image::push_busybox(&registry.url(), None, "busybox:1")
            .await
            .expect("push busybox");
        let image = format!("{}/busybox:1", registry.host());
        hulld
            .images()
            .await
            .pull_image(pull_request(&image))
            .await
            .expect("pull busybox");
        Node {
            hulld,
            registry,
            image,
            logs: tempfile::tempdir().expect("log dir"),
            run_dir,
            network_index: 0,
            metrics_port,
        }
    }

    /// What to look at when a pod misbehaved: its VMM's log, the end of its
    /// guest console, and the newest kernel messages of this host.
    pub fn pod_diagnostics(&self, pod: &str) -> String {
        let dir = self.hulld.state_dir().join("pods").join(pod);
        let vmm_log = std::fs::read_to_string(dir.join("vmm.log")).unwrap_or_default();
        let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
        let console_tail =
            &console[console.floor_char_boundary(console.len().saturating_sub(4000))..];
        let dmesg = std::process::Command::new("dmesg")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let dmesg_tail: Vec<&str> = dmesg.lines().rev().take(20).collect();
        format!(
            "VMM log:\n{vmm_log}\nguest console (end):\n{console_tail}\nkernel messages (newest first):\n{}",
            dmesg_tail.join("\n")
        )
    }

    /// hulld's Prometheus exposition, scraped now.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .and_then(|r| r.error_for_status())
            .expect("metrics endpoint")
            .text()
            .await
            .expect("metrics text")
    }

    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let log_directory = self.logs.path().join(name);
        std::fs::create_dir_all(&log_directory).unwrap();
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_directory.display().to_string(),
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            ..Default::default()
        }
    }

    /// A node whose pods join a dual-stack CNI network: Debian's bridge
    /// plugin with host-local addresses from a /24 and an IPv6 /64 of its
    /// own (gateways on the node's bridge, see [`Node::gateway`] and
    /// [`Node::gateway6`]) and portmap. Its leases live in hulld's
    /// directory.
    pub async fn start_with_network() -> Node {
        let mut node = Node::start().await;
        node.network_index = NETWORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        node.write_network(&[]);
        node
    }

    /// The bridge on the node that this node's pods are ports of.
    pub fn bridge(&self) -> String {
        format!("hulltest{}", self.network_index)
    }

    /// The first three octets of the pods' /24, e.g. `10.88.7`.
    pub fn subnet_prefix(&self) -> String {
        format!("10.88.{}", 7 + u16::from(self.network_index))
    }

    /// The node's address on the pods' bridge (their gateway).
    pub fn gateway(&self) -> String {
        format!("{}.1", self.subnet_prefix())
    }

    /// The pods' IPv6 /64 without its `::/64`, e.g. `fd00:10:88:7`.
    pub fn subnet6_prefix(&self) -> String {
        format!("fd00:10:88:{}", 7 + u16::from(self.network_index))
    }

    /// The node's IPv6 address on the pods' bridge (their IPv6 gateway).
    pub fn gateway6(&self) -> String {
        format!("{}::1", self.subnet6_prefix())
    }

    /// (Re)writes the CNI network of [`Node::start_with_network`], with
    /// `first_plugins` (plugin configs) chained before bridge and portmap.
    pub fn write_network(&self, first_plugins: &[serde_json::Value]) {
        let conf_dir = self.hulld.cni_conf_dir();
        std::fs::create_dir_all(&conf_dir).expect("CNI conf dir");
        let mut network = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "hull-test",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge(),
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [
                            [{"subnet": format!("{}.0/24", self.subnet_prefix())}],
                            [{"subnet": format!("{}::/64", self.subnet6_prefix())}]
                        ],
                        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                        "dataDir": self.ipam_dir(),
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        let plugins = network["plugins"].as_array_mut().expect("plugins");
        for (i, plugin) in first_plugins.iter().enumerate() {
            plugins.insert(i, plugin.clone());
        }
        std::fs::write(
            conf_dir.join("10-hull-test.conflist"),
            serde_json::to_vec_pretty(&network).unwrap(),
        )
        .expect("write the CNI network");
    }

    /// host-local's lease directory of the network.
    pub fn ipam_dir(&self) -> PathBuf {
        self.hulld.dir().join("ipam")
    }

    /// Pushes `spec` to the node's registry as `repo_tag` and pulls it
    /// through the CRI; returns the reference containers name.
    pub async fn add_image(&self, repo_tag: &str, spec: &test_image::ImageSpec) -> String {
        let image = spec.build().expect("build the test image");
        test_image::Pusher::for_url(&self.registry.url(), None)
            .push_image(repo_tag, &image)
            .await
            .expect("push the test image");
        let reference = format!("{}/{repo_tag}", self.registry.host());
        self.hulld
            .images()
            .await
            .pull_image(pull_request(&reference))
            .await
            .unwrap_or_else(|s| panic!("pull {reference}: {s:?}"));
        reference
    }

    /// PodSandboxStatus of the pod (`verbose`: with hulld's record).
    pub async fn sandbox_status(&self, id: &str, verbose: bool) -> cri::PodSandboxStatusResponse {
        self.hulld
            .runtime()
            .await
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner()
    }

    /// The pod's IPs as PodSandboxStatus reports them.
    pub async fn pod_ips(&self, id: &str) -> Vec<String> {
        let network = self
            .sandbox_status(id, false)
            .await
            .status
            .expect("status")
            .network
            .unwrap_or_default();
        std::iter::once(network.ip)
            .filter(|ip| !ip.is_empty())
            .chain(network.additional_ips.into_iter().map(|ip| ip.ip))
            .collect()
    }

    /// The sandbox record hulld shows in PodSandboxStatus's verbose info.
    pub async fn sandbox_info(&self, id: &str) -> serde_json::Value {
        let response = self.sandbox_status(id, true).await;
        let info = response.info.get("info").expect("verbose info");
        serde_json::from_str(info).expect("the verbose info is JSON")
    }

    pub async fn run_pod(&self, name: &str) -> (String, cri::PodSandboxConfig) {
        self.run_pod_with(self.pod_config(name)).await
    }

    /// RunPodSandbox with `config` (e.g. [`Node::pod_config`] with port
    /// mappings added).
    pub async fn run_pod_with(
        &self,
        config: cri::PodSandboxConfig,
    ) -> (String, cri::PodSandboxConfig) {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let id = self
            .hulld
            .runtime()
            .await
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|s| panic!("RunPodSandbox {name}: {s:?}\n{}", self.hulld.log()))
            .into_inner()
            .pod_sandbox_id;
        (id, config)
    }

    /// A container config running `script` with `sh -c`, logging to
    /// `<name>.log` in the pod's log directory.
    pub fn container_config(&self, name: &str, script: &str) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            log_path: format!("{name}.log"),
            ..Default::default()
        }
    }

    /// Creates and starts a container from `config`; returns its id.
    pub async fn start_container(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> String {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let mut runtime = self.hulld.runtime().await;
        let id = runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config),
                sandbox_config: Some(pod_config.clone()),
            })
            .await
            .unwrap_or_else(|s| panic!("CreateContainer {name}: {s:?}\n{}", self.hulld.log()))
            .into_inner()
            .container_id;
        runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("StartContainer {name}: {s:?}\n{}", self.hulld.log()));
        id
    }

    /// Creates and starts a `sh -c script` container.
    pub async fn run_container(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        name: &str,
        script: &str,
    ) -> String {
        self.start_container(pod, pod_config, self.container_config(name, script))
            .await
    }

    pub async fn container_status(&self, id: &str) -> cri::ContainerStatus {
        self.hulld
            .runtime()
            .await
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("status")
    }

    pub async fn wait_exited(&self, id: &str) -> cri::ContainerStatus {
        let start = Instant::now();
        loop {
            let status = self.container_status(id).await;
            if status.state == cri::ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "container {id} still {:?}\n{}",
                status.state,
                self.hulld.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn pod_state(&self, id: &str) -> i32 {
        self.sandbox_status(id, false)
            .await
            .status
            .expect("status")
            .state
    }

    pub async fn exec_sync(
        &self,
        container: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        self.hulld
            .runtime()
            .await
            .exec_sync(cri::ExecSyncRequest {
                container_id: container.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await
            .map(|r| r.into_inner())
    }

    pub fn log_path(&self, pod: &str, container: &str) -> PathBuf {
        self.logs.path().join(pod).join(format!("{container}.log"))
    }

    pub fn log_of(&self, pod: &str, container: &str) -> String {
        std::fs::read_to_string(self.log_path(pod, container)).unwrap_or_default()
    }

    /// Waits until `container`'s log (of pod `pod`) holds `needle`.
    pub async fn wait_for_log(&self, pod: &str, container: &str, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let log = self.log_of(pod, container);
            if log.contains(needle) {
                return log;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{needle:?} not in the log of {container}:\n{log}\n{}",
                self.hulld.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The folder hulld keeps the pods' sockets and pid files in.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The pid of a pod's VMM, from the pid file it writes.
    pub fn vmm_pid(&self, pod: &str) -> u32 {
        let path = self.run_dir.join(&pod[..16]).join("vmm.pid");
        read_pid(&path).unwrap_or_else(|| panic!("no pid in {}", path.display()))
    }

    /// Pids of every VMM that wrote a pid file under the run dir.
    pub fn vmm_pids(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(&self.run_dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| read_pid(&e.path().join("vmm.pid")))
            .collect()
    }
}

impl Drop for Node {
    /// A test that failed half-way leaves no pod VM running into the next
    /// test: every VMM hulld started for this node is killed by its pid.
    fn drop(&mut self) {
        for pid in self.vmm_pids() {
            if !process_gone(pid) {
                // SAFETY: kill(2) on a pid read from the pid file of a VMM
                // this node's hulld started, checked alive just before.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` is gone (or a zombie nobody reaped yet).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// Records of a CRI log file: (stream, tag, content).
pub fn log_records(log: &str) -> Vec<(String, String, String)> {
    log.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let time = parts.next().unwrap();
            assert!(
                time.ends_with('Z') && time.contains('T'),
                "RFC3339 time: {line}"
            );
            (
                parts.next().unwrap().to_string(),
                parts.next().unwrap().to_string(),
                parts.next().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The numbers N of `<prefix>N` stdout lines of a CRI log, in order.
pub fn numbered_lines(log: &str, prefix: &str) -> Vec<u64> {
    log_records(log)
        .into_iter()
        .filter(|(stream, tag, _)| stream == "stdout" && tag == "F")
        .filter_map(|(_, _, content)| content.strip_prefix(prefix).and_then(|n| n.parse().ok()))
        .collect()
}

/// Panics unless `numbers` is exactly 1, 2, 3, ... (nothing lost, nothing
/// written twice).
pub fn assert_consecutive(numbers: &[u64], what: &str) {
    for (index, n) in numbers.iter().enumerate() {
        assert_eq!(
            *n,
            index as u64 + 1,
            "{what}: line {} is {n} (lost or repeated output)",
            index + 1
        );
    }
}
