//! Failure containment and restart safety through hulld's CRI socket: the
//! end of one pod's VM (its guest kernel panics, its VMM is killed) ends
//! that pod only; a crash of hulld loses no pod, container or log line; a
//! RunPodSandbox cut short by the crash leaves nothing behind.
//!
//! Needs a working KVM (`cargo xtask test` runs it in the test VM); see
//! `hull_integration::pod_node`.

use std::time::{Duration, Instant};

use hull_integration::pod_node::{
    DEADLINE, Node, assert_consecutive, numbered_lines, process_gone,
};
use k8s_cri::v1 as cri;

const TICKER: &str = "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.1; done";

/// Waits until the log of `container` grows by some ticks.
async fn assert_ticking(node: &Node, pod: &str, container: &str) {
    let before = numbered_lines(&node.log_of(pod, container), "tick-").len();
    let start = Instant::now();
    while numbered_lines(&node.log_of(pod, container), "tick-").len() < before + 5 {
        assert!(
            start.elapsed() < DEADLINE,
            "{container} stopped logging at {before} ticks\n{}",
            node.hulld.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_panic_or_a_killed_vmm_ends_that_pod_only() {
    let node = Node::start().await;
    let (crasher, crasher_config) = node.run_pod("crasher").await;
    let (victim, victim_config) = node.run_pod("victim").await;
    let (survivor, survivor_config) = node.run_pod("survivor").await;
    let ticker = node
        .run_container(&survivor, &survivor_config, "ticker", TICKER)
        .await;
    let doomed = node
        .run_container(&victim, &victim_config, "sleeper", "sleep 3600")
        .await;

    // A privileged container may crash its own pod's kernel, nothing more.
    let mut panic = node.container_config(
        "panic",
        "echo about to panic; sleep 1; echo c > /proc/sysrq-trigger; sleep 60",
    );
    panic.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let panicked = node.start_container(&crasher, &crasher_config, panic).await;
    let status = node.wait_exited(&panicked).await;
    assert_eq!(status.reason, "PodVMKernelPanic", "{status:?}");
    assert_eq!(
        node.pod_state(&crasher).await,
        cri::PodSandboxState::SandboxNotready as i32
    );
    assert_eq!(
        node.pod_state(&survivor).await,
        cri::PodSandboxState::SandboxReady as i32
    );
    assert_ticking(&node, "survivor", "ticker").await;

    // kill -9 of another pod's VMM: that pod only, reported as killed.
    let pid = node.vmm_pid(&victim);
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

    assert_eq!(
        node.pod_state(&survivor).await,
        cri::PodSandboxState::SandboxReady as i32
    );
    let status = node.container_status(&ticker).await;
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    assert_ticking(&node, "survivor", "ticker").await;
    assert_consecutive(
        &numbered_lines(&node.log_of("survivor", "ticker"), "tick-"),
        "the survivor's log",
    );

    // The ended pods are cleaned up as usual.
    let mut runtime = node.hulld.runtime().await;
    for pod in [&crasher, &victim] {
        runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.to_string(),
            })
            .await
            .expect("stop an ended pod");
        runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.to_string(),
            })
            .await
            .expect("remove an ended pod");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hulld_crash_readopts_running_pods_and_drops_an_interrupted_start() {
    let mut node = Node::start().await;
    let (pod, config) = node.run_pod("keeper").await;
    let ticker = node.run_container(&pod, &config, "ticker", TICKER).await;
    let waiter = node
        .run_container(&pod, &config, "waiter", "sleep 4; exit 7")
        .await;
    node.wait_for_log("keeper", "ticker", "tick-10\n").await;

    // kill -9 of hulld; the waiter exits while no hulld runs.
    node.hulld.crash_and_restart().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        node.pod_state(&pod).await,
        cri::PodSandboxState::SandboxReady as i32
    );
    let status = node.container_status(&ticker).await;
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    let status = node.wait_exited(&waiter).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (7, "Error"));
    assert_ticking(&node, "keeper", "ticker").await;
    let reply = node
        .exec_sync(&ticker, &["echo", "still here"], 30)
        .await
        .expect("ExecSync after the restart");
    assert_eq!(String::from_utf8_lossy(&reply.stdout), "still here\n");

    // A RunPodSandbox cut short: hulld dies once the new pod's VMM runs.
    let pods_before = node.vmm_pids();
    let socket = node.hulld.socket_path();
    let config = node.pod_config("interrupted");
    let start_request = tokio::spawn(async move {
        let channel = hull_integration::hulld::connect_unix(socket).await;
        cri::runtime_service_client::RuntimeServiceClient::new(channel)
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
    });
    let start = Instant::now();
    let new_vmm = loop {
        if let Some(pid) = node
            .vmm_pids()
            .into_iter()
            .find(|p| !pods_before.contains(p))
        {
            break pid;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the new pod's VMM did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    node.hulld.crash_and_restart().await;
    assert!(
        start_request.await.unwrap().is_err(),
        "the interrupted start reported success"
    );
    let pods = node
        .hulld
        .runtime()
        .await
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(
        pods.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        [pod.as_str()]
    );
    let start = Instant::now();
    while !process_gone(new_vmm) {
        assert!(
            start.elapsed() < DEADLINE,
            "the interrupted pod's VMM {new_vmm} still runs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Stop works on the adopted pod; the log holds every tick once.
    let mut runtime = node.hulld.runtime().await;
    runtime
        .stop_container(cri::StopContainerRequest {
            container_id: ticker.clone(),
            timeout: 1,
        })
        .await
        .expect("StopContainer after two crashes");
    node.wait_exited(&ticker).await;
    assert_consecutive(
        &numbered_lines(&node.log_of("keeper", "ticker"), "tick-"),
        "the ticker's log across two hulld crashes",
    );
    runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("stop");
    assert!(process_gone(node.vmm_pid(&pod)));
}
