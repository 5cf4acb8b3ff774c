//! hulld's RuntimeService through its CRI socket: version, status, runtime
//! config, state that survives restarts, clear errors, socket handling.

use hull_integration::hulld::Hulld;
use k8s_cri::v1 as cri;
use tonic::Code;

fn is_pvm_host() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

#[tokio::test]
async fn version_names_hull_and_the_cri_version() {
    let hulld = Hulld::start().await;
    let version = hulld
        .runtime()
        .await
        .version(cri::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.runtime_name, "hull");
    assert_eq!(version.runtime_api_version, "v1");
    assert_eq!(version.version, "0.1.0");
    assert!(!version.runtime_version.is_empty());
}

#[tokio::test]
async fn status_tells_the_truth_about_kvm_and_network() {
    let hulld = Hulld::start().await;
    let status = hulld
        .runtime()
        .await
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let conditions = status.status.unwrap().conditions;
    let runtime = conditions
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .expect("RuntimeReady condition");
    let network = conditions
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("NetworkReady condition");
    if is_pvm_host() {
        assert!(!runtime.status, "a PVM host cannot run pod VMs");
        assert!(runtime.message.contains("PVM"), "{}", runtime.message);
    }
    if !runtime.status {
        assert!(!runtime.reason.is_empty() && !runtime.message.is_empty());
    }
    assert!(!network.status);
    assert_eq!(network.reason, "NetworkPluginNotReady");
    assert!(
        network.message.contains("no CNI network config")
            && network
                .message
                .contains(&hulld.cni_conf_dir().display().to_string()),
        "{}",
        network.message
    );
    assert!(status.info["config"].contains("socket_path"));

    // A broken network config: not ready, the file named.
    let conf_dir = hulld.cni_conf_dir();
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::write(
        conf_dir.join("10-broken.conflist"),
        "{\"cniVersion\": \"1.0.0\"",
    )
    .unwrap();
    let network = network_condition(&hulld).await;
    assert!(!network.status);
    assert!(
        network.message.contains("10-broken.conflist"),
        "{}",
        network.message
    );

    // A good one comes first in lexical order: ready.
    std::fs::write(
        conf_dir.join("05-pods.conflist"),
        r#"{"cniVersion": "1.0.0", "name": "pods", "plugins": [{"type": "bridge"}]}"#,
    )
    .unwrap();
    let network = network_condition(&hulld).await;
    assert!(network.status, "{network:?}");
    assert!(network.reason.is_empty() && network.message.is_empty());
}

async fn network_condition(hulld: &Hulld) -> cri::RuntimeCondition {
    let status = hulld
        .runtime()
        .await
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    status
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("NetworkReady condition")
}

#[tokio::test]
async fn run_pod_sandbox_on_a_pvm_host_is_refused_with_the_reason() {
    let hulld = Hulld::start().await;
    let mut runtime = hulld.runtime().await;
    let request = cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "demo".into(),
                uid: "uid-1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            ..Default::default()
        }),
        runtime_handler: String::new(),
    };
    let err = runtime.run_pod_sandbox(request).await.unwrap_err();
    if is_pvm_host() {
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message().contains("cannot run pod VMs"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("PVM"), "{}", err.message());
    } else {
        assert!(
            matches!(err.code(), Code::FailedPrecondition | Code::Unimplemented),
            "{err:?}"
        );
    }
    // Nothing half-made is left behind.
    let pods = runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(pods.items.is_empty());
}

/// The Prometheus endpoint counts CRI calls by method and outcome, with
/// their latency.
#[tokio::test]
async fn the_metrics_endpoint_counts_calls_by_method_and_outcome() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hulld =
        Hulld::start_with_config(&format!("[metrics]\naddress = \"127.0.0.1:{port}\"\n")).await;
    let mut runtime = hulld.runtime().await;
    for _ in 0..2 {
        runtime
            .version(cri::VersionRequest::default())
            .await
            .unwrap();
    }
    let missing = runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: "missing".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let response = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    for line in [
        r#"hull_cri_requests_total{method="Version",code="OK"} 2"#,
        r#"hull_cri_requests_total{method="ContainerStatus",code="NotFound"} 1"#,
        r#"hull_cri_request_duration_seconds_count{method="Version"} 2"#,
        r#"hull_pods{state="ready"} 0"#,
        "hull_vms 0",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    let other = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}

/// RuntimeClass handlers from the config are reported in Status, and a pod
/// naming one that is not configured is refused, naming it.
#[tokio::test]
async fn runtime_handlers_are_reported_and_unknown_ones_refused() {
    let hulld =
        Hulld::start_with_config("[runtime_handlers.large]\nvcpus = 2\nmemory_mib = 1024\n").await;
    let mut runtime = hulld.runtime().await;
    let status = runtime
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, ["", "large"]);
    let err = runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "demo".into(),
                    uid: "uid-1".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                ..Default::default()
            }),
            runtime_handler: "gvisor".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("\"gvisor\"") && err.message().contains("large"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn bad_requests_name_the_missing_field() {
    let hulld = Hulld::start().await;
    let mut runtime = hulld.runtime().await;
    let err = runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "config is required");

    let err = runtime
        .container_status(cri::ContainerStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("container_id"));

    let err = runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: "0123abcd".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("0123abcd"));

    let err = runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: "feedbeef".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn stop_and_remove_of_a_missing_pod_succeed() {
    let hulld = Hulld::start().await;
    let mut runtime = hulld.runtime().await;
    runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: "does-not-exist".into(),
        })
        .await
        .unwrap();
    runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: "does-not-exist".into(),
        })
        .await
        .unwrap();
    runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: "does-not-exist".into(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn runtime_config_reports_the_configured_cgroup_driver() {
    let hulld = Hulld::start_with_config("cgroup_driver = \"systemd\"").await;
    let config = hulld
        .runtime()
        .await
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        config.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Systemd as i32
    );
}

#[tokio::test]
async fn pod_cidr_survives_a_crash_and_bad_cidrs_are_refused() {
    let mut hulld = Hulld::start().await;
    let update = |cidr: &str| cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    };
    let mut runtime = hulld.runtime().await;
    runtime
        .update_runtime_config(update("10.244.0.0/24"))
        .await
        .unwrap();
    let err = runtime
        .update_runtime_config(update("10.244.0.0/99"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("pod_cidr"));

    hulld.crash_and_restart().await;
    let state = std::fs::read_to_string(hulld.state_dir().join("runtime.json")).unwrap();
    assert!(state.contains("10.244.0.0/24"), "{state}");
}

#[tokio::test]
async fn list_filters_on_an_empty_node_return_nothing_not_errors() {
    let hulld = Hulld::start().await;
    let mut runtime = hulld.runtime().await;
    let pods = runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                id: "abc".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(pods.items.is_empty());
    let containers = runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(containers.containers.is_empty());
    let stats = runtime
        .list_container_stats(cri::ListContainerStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(stats.stats.is_empty());
}

#[tokio::test]
async fn a_live_socket_is_not_stolen_and_a_stale_one_is_replaced() {
    let mut first = Hulld::start().await;
    // A second hulld on the same socket must refuse to start.
    let output = std::process::Command::new(hull_integration::hulld::hulld_binary())
        .arg("--config")
        .arg(first.config_path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already serving"), "{stderr}");
    // The first one still answers.
    first
        .runtime()
        .await
        .version(cri::VersionRequest::default())
        .await
        .unwrap();

    // After a crash the socket file stays; the next start replaces it.
    first.crash_and_restart().await;
    first
        .runtime()
        .await
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_removes_the_socket() {
    let mut hulld = Hulld::start().await;
    let status = hulld.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}\n{}", hulld.log());
    assert!(!hulld.socket_path().exists());
    assert!(hulld.log().contains("shutting down"));
}

#[test]
fn an_unknown_config_key_stops_hulld_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "socket_path = \"/tmp/x.sock\"\n[log]\nlevle = \"debug\"\n",
    )
    .unwrap();
    let output = std::process::Command::new(hull_integration::hulld::hulld_binary())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("levle"), "{stderr}");
    assert!(stderr.contains(config.to_str().unwrap()), "{stderr}");
}

#[test]
fn config_default_prints_a_file_that_hulld_accepts() {
    let output = std::process::Command::new(hull_integration::hulld::hulld_binary())
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, &output.stdout).unwrap();
    let check = std::process::Command::new(hull_integration::hulld::hulld_binary())
        .arg("--config")
        .arg(&config)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("socket_path = \"/run/hull/hull.sock\"")
    );
}
