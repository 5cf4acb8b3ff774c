//! Pods end to end through hulld's CRI socket: each pod sandbox boots its
//! own microVM (hull-vmm + hull's guest kernel + the agent), containers run
//! from images pulled from a real registry, logs land in the kubelet's
//! format, exec, stats and resource updates reach the container in its VM.
//!
//! Needs a working KVM (`cargo xtask test` runs it in the test VM); see
//! `hull_integration::pod_node`.

use std::time::{Duration, Instant};

use hull_integration::pod_node::{DEADLINE, Node, assert_consecutive, log_records, numbered_lines};
use k8s_cri::v1 as cri;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_its_containers_in_its_own_kernel() {
    let node = Node::start().await;
    let mut events = node
        .hulld
        .runtime()
        .await
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("GetContainerEvents")
        .into_inner();
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
    assert!(status.image_ref.contains("@sha256:"), "{status:?}");
    assert!(status.log_path.ends_with("web/writer.log"), "{status:?}");
    let log = node.log_of("web", "writer");
    let lines = log_records(&log);
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

    // The kubelet's event stream saw the writer's life.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(DEADLINE, events.message())
            .await
            .expect("a container event")
            .expect("the event stream")
            .expect("an open event stream");
        if event.container_id == writer {
            seen.push(event.container_event_type);
        }
    }
    assert_eq!(
        seen,
        [
            cri::ContainerEventType::ContainerCreatedEvent as i32,
            cri::ContainerEventType::ContainerStartedEvent as i32,
            cri::ContainerEventType::ContainerStoppedEvent as i32,
        ]
    );

    // A second container of the pod shares its IPC (shm) namespace.
    let reader = node
        .run_container(&pod, &config, "reader", "cat /dev/shm/token")
        .await;
    let status = node.wait_exited(&reader).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"));
    assert!(node.log_of("web", "reader").contains("stdout F shared"));

    // Host mounts as the kubelet passes them: a read-only directory
    // (configmap) kept in sync while the container runs, and the
    // termination-message file written back when it exits.
    let host = tempfile::tempdir().unwrap();
    let configmap = host.path().join("configmap");
    std::fs::create_dir(&configmap).unwrap();
    std::fs::write(configmap.join("key"), "v1").unwrap();
    let termination = host.path().join("termination-log");
    std::fs::write(&termination, "").unwrap();
    let mut mounter = node.container_config(
        "mounter",
        "cat /etc/cfg/key; echo; until [ \"$(cat /etc/cfg/key)\" = v2 ]; do sleep 0.2; done; \
         echo saw-v2; echo bye from the container > /dev/termination-log",
    );
    mounter.mounts = vec![
        cri::Mount {
            container_path: "/etc/cfg".into(),
            host_path: configmap.display().to_string(),
            readonly: true,
            ..Default::default()
        },
        cri::Mount {
            container_path: "/dev/termination-log".into(),
            host_path: termination.display().to_string(),
            ..Default::default()
        },
    ];
    let mounter = node.start_container(&pod, &config, mounter).await;
    node.wait_for_log("web", "mounter", "stdout F v1").await;
    std::fs::write(configmap.join("key"), "v2").unwrap();
    let status = node.wait_exited(&mounter).await;
    assert_eq!(status.exit_code, 0, "{status:?}");
    assert!(node.log_of("web", "mounter").contains("stdout F saw-v2"));
    assert_eq!(
        std::fs::read_to_string(&termination).unwrap(),
        "bye from the container\n"
    );
    // A host directory too large to copy is refused, naming it.
    let big = host.path().join("big");
    std::fs::create_dir(&big).unwrap();
    std::fs::write(big.join("blob"), vec![7u8; 9 << 20]).unwrap();
    let mut too_big = node.container_config("too-big", "true");
    too_big.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: big.display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let err = node
        .hulld
        .runtime()
        .await
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(too_big),
            sandbox_config: Some(config.clone()),
        })
        .await
        .expect_err("a 9 MiB host directory");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(&big.display().to_string()),
        "{}",
        err.message()
    );

    // Over its memory limit, a container is OOM-killed in its own cgroup
    // and reported so; the pod goes on.
    let mut hog = node.container_config("hog", "dd if=/dev/zero of=/dev/null bs=64M count=1");
    hog.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let hog = node.start_container(&pod, &config, hog).await;
    let status = node.wait_exited(&hog).await;
    assert_eq!(status.reason, "OOMKilled", "{status:?}");
    assert_eq!(status.exit_code, 137, "{status:?}");
    assert_eq!(
        node.pod_state(&pod).await,
        cri::PodSandboxState::SandboxReady as i32
    );

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
    let pid = node.vmm_pid(&pod);
    assert!(
        hull_integration::pod_node::process_gone(pid),
        "the pod's VMM {pid} still runs"
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
async fn exec_stats_resources_and_log_rotation_of_a_running_container() {
    let node = Node::start().await;
    let (pod, config) = node.run_pod("ops").await;
    let mut counter = node.container_config(
        "counter",
        "i=0; while true; do i=$((i+1)); echo line-$i; \
         if [ $((i % 200)) = 0 ]; then sleep 0.05; fi; done",
    );
    counter.envs = vec![cri::KeyValue {
        key: "GREETING".into(),
        value: "hello from the container".into(),
    }];
    let counter = node.start_container(&pod, &config, counter).await;

    // ExecSync: output, exit code, the container's own environment, and
    // the guest's kernel.
    let reply = node
        .exec_sync(
            &counter,
            &["sh", "-c", "echo $GREETING; echo err >&2; exit 3"],
            30,
        )
        .await
        .expect("ExecSync");
    assert_eq!(reply.exit_code, 3);
    assert_eq!(
        String::from_utf8_lossy(&reply.stdout),
        "hello from the container\n"
    );
    assert_eq!(String::from_utf8_lossy(&reply.stderr), "err\n");
    let version = node
        .exec_sync(&counter, &["cat", "/proc/version"], 30)
        .await
        .expect("cat /proc/version");
    let host_version = std::fs::read_to_string("/proc/version").unwrap();
    assert_ne!(String::from_utf8_lossy(&version.stdout), host_version);
    assert!(String::from_utf8_lossy(&version.stdout).contains("-hull"));
    // A command past its timeout is killed and reported as a deadline.
    let started = Instant::now();
    let err = node
        .exec_sync(&counter, &["sleep", "60"], 1)
        .await
        .expect_err("sleep 60 with a 1 s timeout");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let err = node.exec_sync(&counter, &["/no/such/binary"], 10).await;
    assert!(
        err.as_ref().map(|r| r.exit_code != 0).unwrap_or(true),
        "a missing binary is not a success: {err:?}"
    );

    // The kubelet's rotation: rename the file, ask for a reopen; every line
    // is in one of the two files, in order, once.
    let path = node.log_path("ops", "counter");
    node.wait_for_log("ops", "counter", "line-3000\n").await;
    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated).unwrap();
    let mut runtime = node.hulld.runtime().await;
    runtime
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: counter.clone(),
        })
        .await
        .expect("ReopenContainerLog");
    let start = Instant::now();
    while numbered_lines(&node.log_of("ops", "counter"), "line-").len() < 1000 {
        assert!(start.elapsed() < DEADLINE, "no output after the reopen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Stats: the container from its cgroup in the guest, the pod from the
    // host cgroup of its VMM.
    let stats = runtime
        .container_stats(cri::ContainerStatsRequest {
            container_id: counter.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
    assert_eq!(stats.attributes.as_ref().unwrap().id, counter);
    assert!(stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    assert!(stats.memory.unwrap().working_set_bytes.unwrap().value > 0);
    let listed = runtime
        .list_container_stats(cri::ListContainerStatsRequest::default())
        .await
        .expect("ListContainerStats")
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let pod_stats = runtime
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .expect("stats");
    let linux = pod_stats.linux.expect("linux stats");
    let host_memory = linux.memory.unwrap().working_set_bytes.unwrap().value;
    assert!(
        host_memory > 16 << 20,
        "the VM's host memory: {host_memory}"
    );
    assert!(linux.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    assert_eq!(linux.containers.len(), 1);
    let all_pods = runtime
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default())
        .await
        .expect("ListPodSandboxStats")
        .into_inner()
        .stats;
    assert_eq!(all_pods.len(), 1);

    // New limits apply in the guest and show in the status.
    runtime
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: counter.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdateContainerResources");
    let memory = runtime
        .container_stats(cri::ContainerStatsRequest {
            container_id: counter.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
        .memory
        .unwrap();
    let available = memory.available_bytes.expect("a limit is set").value;
    assert!(available <= 64 << 20, "available {available}");
    let status = node.container_status(&counter).await;
    assert_eq!(
        status
            .resources
            .and_then(|r| r.linux)
            .map(|l| l.memory_limit_in_bytes),
        Some(64 << 20)
    );

    // Stop: sh as PID 1 ignores SIGTERM, so SIGKILL after the timeout.
    runtime
        .stop_container(cri::StopContainerRequest {
            container_id: counter.clone(),
            timeout: 1,
        })
        .await
        .expect("StopContainer");
    let status = node.wait_exited(&counter).await;
    assert_eq!(status.exit_code, 137, "{status:?}");
    let mut numbers = numbered_lines(&std::fs::read_to_string(&rotated).unwrap(), "line-");
    numbers.extend(numbered_lines(&node.log_of("ops", "counter"), "line-"));
    assert!(numbers.len() > 4000, "{} lines", numbers.len());
    assert_consecutive(&numbers, "the rotated and the new log");
    // Exec in a stopped container is refused with the reason.
    let err = node
        .exec_sync(&counter, &["true"], 5)
        .await
        .expect_err("exec in an exited container");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
}
