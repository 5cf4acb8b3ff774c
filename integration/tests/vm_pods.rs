//! Pods end to end through hulld's CRI socket: each pod sandbox boots its
//! own microVM (hull-vmm + hull's guest kernel + the agent), containers run
//! from images pulled from a real registry, logs land in the kubelet's
//! format, and the end of one pod's VM leaves the other pods alone.
//!
//! Needs a working KVM (`cargo xtask test` runs it in the test VM) with
//! `HULL_GUEST_VMLINUX` and `HULL_AGENT_INITRAMFS` set, and `hull-vmm` built
//! next to `hulld`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_integration::guest::{guest_kernel, require_kvm};
use hull_integration::hulld::{Hulld, hulld_binary};
use hull_integration::registry::TestRegistry;
use hull_integration::test_image;
use k8s_cri::v1 as cri;

const DEADLINE: Duration = Duration::from_secs(120);

struct Node {
    hulld: Hulld,
    _registry: TestRegistry,
    image: String,
    logs: tempfile::TempDir,
}

async fn node() -> Node {
    require_kvm().expect("these tests need a working KVM");
    let kernel = guest_kernel().expect("HULL_GUEST_VMLINUX");
    let initramfs = std::env::var("HULL_AGENT_INITRAMFS").expect("HULL_AGENT_INITRAMFS");
    let vmm = hulld_binary().with_file_name("hull-vmm");
    assert!(vmm.exists(), "build hull-vmm: cargo build -p vm-runtime");
    let run_dir = tempfile::Builder::new()
        .prefix("hp")
        .tempdir_in("/tmp")
        .expect("run dir")
        .keep();
    let hulld = Hulld::start_with_config(&format!(
        "[vm]\nkernel = {:?}\ninitramfs = {initramfs:?}\nvmm_binary = {vmm:?}\nrun_dir = {run_dir:?}\nmemory_mib = 192\nscratch_disk_mib = 1024\nstart_timeout_secs = 90\n",
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
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("pull busybox");
    Node {
        hulld,
        _registry: registry,
        image,
        logs: tempfile::tempdir().expect("log dir"),
    }
}

impl Node {
    fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
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

    async fn run_pod(&self, name: &str) -> (String, cri::PodSandboxConfig) {
        let config = self.pod_config(name);
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

    async fn run_container(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        name: &str,
        script: &str,
    ) -> String {
        let mut runtime = self.hulld.runtime().await;
        let id = runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(cri::ContainerConfig {
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
                }),
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
            .unwrap_or_else(|s| panic!("StartContainer {name}: {s:?}"));
        id
    }

    async fn container_status(&self, id: &str) -> cri::ContainerStatus {
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

    async fn wait_exited(&self, id: &str) -> cri::ContainerStatus {
        let start = Instant::now();
        loop {
            let status = self.container_status(id).await;
            if status.state == cri::ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "container {id} still {:?}",
                status.state
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn pod_state(&self, id: &str) -> i32 {
        self.hulld
            .runtime()
            .await
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner()
            .status
            .expect("status")
            .state
    }

    fn log_of(&self, pod: &str, container: &str) -> String {
        std::fs::read_to_string(self.logs.path().join(pod).join(format!("{container}.log")))
            .unwrap_or_default()
    }

    /// The pid of a pod's VMM, from the pid file it writes.
    fn vmm_pid(&self, config_run_dir: &Path, pod: &str) -> u32 {
        let path = config_run_dir.join(&pod[..16]).join("vmm.pid");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .parse()
            .expect("pid")
    }
}

fn run_dir_of(hulld: &Hulld) -> PathBuf {
    let config = std::fs::read_to_string(hulld.config_path()).unwrap();
    let line = config
        .lines()
        .find(|l| l.starts_with("run_dir"))
        .expect("run_dir in the test config");
    PathBuf::from(line.split('"').nth(1).unwrap())
}

/// Lines of a CRI log file: (stream, tag, content).
fn records(log: &str) -> Vec<(String, String, String)> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_its_containers_in_its_own_kernel() {
    let node = node().await;
    let (pod, config) = node.run_pod("web").await;
    assert_eq!(
        node.pod_state(&pod).await,
        cri::PodSandboxState::SandboxReady as i32
    );

    // The pod's kernel is not the node's: a different boot.
    let host_boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let writer = node
        .run_container(
            &pod,
            &config,
            "writer",
            "cat /proc/sys/kernel/random/boot_id; hostname; date +%s; grep -c ndots:5 /etc/resolv.conf; \
             echo shared > /dev/shm/token; echo to-stderr >&2; printf partial; exit 3",
        )
        .await;
    let status = node.wait_exited(&writer).await;
    assert_eq!(status.exit_code, 3, "{status:?}");
    assert_eq!(status.reason, "Error");
    assert!(
        status.finished_at >= status.started_at && status.started_at > 0,
        "{status:?}"
    );
    let log = node.log_of("web", "writer");
    let lines = records(&log);
    let stdout: Vec<&str> = lines
        .iter()
        .filter(|(s, _, _)| s == "stdout")
        .map(|(_, _, c)| c.as_str())
        .collect();
    assert_ne!(
        stdout[0],
        host_boot_id.trim(),
        "the container saw the node's kernel"
    );
    assert_eq!(stdout[1], "web", "the pod's hostname");
    // The guest's wall clock is the host's (kvm-clock), within a few seconds.
    let guest_now: u64 = stdout[2].parse().expect("date +%s");
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        host_now.abs_diff(guest_now) < 30,
        "guest clock {guest_now}, host {host_now}"
    );
    assert_eq!(stdout[3], "1", "the pod's DNS config");
    assert!(
        lines
            .iter()
            .any(|(s, t, c)| s == "stderr" && t == "F" && c == "to-stderr"),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|(s, _, c)| s == "stdout" && c == "partial"),
        "an unterminated last line is kept: {log}"
    );

    // A second container of the pod shares its IPC (shm) namespace.
    let reader = node
        .run_container(&pod, &config, "reader", "cat /dev/shm/token")
        .await;
    let status = node.wait_exited(&reader).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"));
    assert!(node.log_of("web", "reader").contains("stdout F shared"));

    let mut runtime = node.hulld.runtime().await;
    runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("stop");
    assert_eq!(
        node.pod_state(&pod).await,
        cri::PodSandboxState::SandboxNotready as i32
    );
    runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("remove");
    let left = runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
    assert!(!node.hulld.state_dir().join("pods").join(&pod).exists());
    // Both calls again: idempotent.
    runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("stop again");
    runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .expect("remove again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_pods_vmm_ends_that_pod_only() {
    let node = node().await;
    let run_dir = run_dir_of(&node.hulld);
    let (victim, victim_config) = node.run_pod("victim").await;
    let (survivor, survivor_config) = node.run_pod("survivor").await;
    let doomed = node
        .run_container(&victim, &victim_config, "sleeper", "sleep 3600")
        .await;
    let alive = node
        .run_container(
            &survivor,
            &survivor_config,
            "ticker",
            "while true; do echo tick; sleep 0.2; done",
        )
        .await;

    let pid = node.vmm_pid(&run_dir, &victim);
    // SAFETY: kill(2) with a pid read from the VMM's own pid file; the test
    // started that VMM (through hulld) and it is still running.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);

    let status = node.wait_exited(&doomed).await;
    assert_eq!(status.reason, "PodVMKilled", "{status:?}");
    assert!(
        status.message.contains(&pid.to_string()),
        "{}",
        status.message
    );
    assert_eq!(
        node.pod_state(&victim).await,
        cri::PodSandboxState::SandboxNotready as i32
    );

    // The other pod did not notice.
    assert_eq!(
        node.pod_state(&survivor).await,
        cri::PodSandboxState::SandboxReady as i32
    );
    let before = node.log_of("survivor", "ticker").lines().count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = node.container_status(&alive).await;
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    let after = node.log_of("survivor", "ticker").lines().count();
    assert!(
        after > before,
        "the survivor keeps logging ({before} -> {after})"
    );
}
