//! The dev node's helper (`cargo xtask node` runs it on the host):
//!
//! - `hull-node-demo push-busybox HOST:PORT REPO:TAG` builds a busybox image
//!   from this machine's busybox and pushes it to the registry at HOST:PORT.
//! - `hull-node-demo wait SOCKET SECONDS` waits until hulld answers there.
//! - `hull-node-demo run SOCKET IMAGE LOG_DIR` drives hulld through its CRI
//!   socket only, as the kubelet or crictl would: pulls IMAGE, runs a pod
//!   with one container that prints where it runs, waits for its exit,
//!   prints the container's CRI log, and removes the pod.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hull_integration::hulld::{connect_unix, pull_request};
use k8s_cri::v1 as cri;

const DEADLINE: Duration = Duration::from_secs(300);

const SCRIPT: &str = "echo \"hello from pod $(hostname)\"; \
echo \"kernel: $(uname -r) ($(cat /proc/sys/kernel/random/boot_id))\"; \
echo \"memory: $(grep MemTotal /proc/meminfo)\"; \
echo \"cpus: $(nproc)\"; \
echo \"eth0: $(ip -o -4 addr show dev eth0 2>/dev/null | awk '{print $4}')\"";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["push-busybox", registry, repo_tag] => {
            let digest = hull_integration::test_image::push_busybox(
                &format!("http://{registry}"),
                None,
                repo_tag,
            )
            .await
            .with_context(|| format!("pushing busybox to {registry}"))?;
            println!("pushed {registry}/{repo_tag} ({digest})");
            Ok(())
        }
        ["wait", socket, seconds] => {
            let seconds: u64 = seconds.parse().context("wait: SECONDS")?;
            wait_serving(Path::new(socket), Duration::from_secs(seconds)).await
        }
        ["run", socket, image, log_dir] => {
            run_demo(Path::new(socket), image, Path::new(log_dir)).await
        }
        _ => bail!(
            "usage: hull-node-demo push-busybox HOST:PORT REPO:TAG | wait SOCKET SECONDS | run SOCKET IMAGE LOG_DIR"
        ),
    }
}

/// Retries the CRI `Version` call until it answers or `limit` passes.
async fn wait_serving(socket: &Path, limit: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let error = if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            let channel = connect_unix(socket.to_owned()).await;
            match cri::runtime_service_client::RuntimeServiceClient::new(channel)
                .version(cri::VersionRequest::default())
                .await
            {
                Ok(_) => return Ok(()),
                Err(status) => status.message().to_owned(),
            }
        } else {
            "nothing listens".to_owned()
        };
        if started.elapsed() > limit {
            bail!(
                "{} does not answer CRI calls after {limit:?}: {error}",
                socket.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn run_demo(socket: &Path, image: &str, log_dir: &Path) -> Result<()> {
    if std::os::unix::net::UnixStream::connect(socket).is_err() {
        bail!(
            "nothing serves the CRI at {}: is the node up (`cargo xtask node`)?",
            socket.display()
        );
    }
    let channel = connect_unix(socket.to_owned()).await;
    let mut runtime = cri::runtime_service_client::RuntimeServiceClient::new(channel.clone());
    let mut images = cri::image_service_client::ImageServiceClient::new(channel);

    let version = runtime
        .version(cri::VersionRequest::default())
        .await
        .context("Version")?
        .into_inner();
    println!(
        "CRI runtime: {} {} (CRI {})",
        version.runtime_name, version.runtime_version, version.runtime_api_version
    );

    let started = Instant::now();
    let pulled = images
        .pull_image(pull_request(image))
        .await
        .with_context(|| format!("PullImage {image}"))?
        .into_inner();
    println!(
        "pulled {image} in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        pulled.image_ref
    );

    let name = "hull-demo";
    let pod_log_dir: PathBuf = log_dir.join(format!("default_{name}_{}", std::process::id()));
    std::fs::create_dir_all(&pod_log_dir)
        .with_context(|| format!("creating {}", pod_log_dir.display()))?;
    let pod_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("demo-{}", std::process::id()),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: pod_log_dir.display().to_string(),
        ..Default::default()
    };
    let started = Instant::now();
    let pod = runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    let elapsed = started.elapsed();
    let network = runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .context("PodSandboxStatus")?
        .into_inner()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .filter(|ip| !ip.is_empty())
        .map(|ip| format!(", pod IP {ip}"))
        .unwrap_or_else(|| ", no pod network".to_string());
    println!(
        "pod {} running in its own VM after {:.1} s{network}",
        short(&pod),
        elapsed.as_secs_f64()
    );
    let mut result = run_container(&mut runtime, &pod, &pod_config, image, &pod_log_dir).await;
    if result.is_ok() {
        result = exec_demo(&mut runtime, &pod, &pod_config, image).await;
    }
    // The pod goes whatever happened to the container.
    let stopped = runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await;
    let removed = runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await;
    let _ = std::fs::remove_dir_all(&pod_log_dir);
    result?;
    stopped.context("StopPodSandbox")?;
    removed.context("RemovePodSandbox")?;
    println!("pod {} stopped and removed", short(&pod));
    Ok(())
}

async fn run_container(
    runtime: &mut cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    image: &str,
    pod_log_dir: &Path,
) -> Result<()> {
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "hello".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), SCRIPT.into()],
        log_path: "hello/0.log".into(),
        ..Default::default()
    };
    std::fs::create_dir_all(pod_log_dir.join("hello"))?;
    let id = create_and_start(runtime, pod, pod_config, config).await?;
    let started = Instant::now();
    let status = loop {
        let status = runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .context("ContainerStatus")?
            .into_inner()
            .status
            .context("ContainerStatus without a status")?;
        if status.state == cri::ContainerState::ContainerExited as i32 {
            break status;
        }
        if started.elapsed() > DEADLINE {
            bail!("container {} did not exit within {DEADLINE:?}", short(&id));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "container {} exited: code {} ({})",
        short(&id),
        status.exit_code,
        status.reason
    );
    let log_path = pod_log_dir.join("hello/0.log");
    let log = std::fs::read_to_string(&log_path)
        .with_context(|| format!("reading the container log {}", log_path.display()))?;
    println!("its CRI log ({}):", log_path.display());
    for line in log.lines() {
        println!("  {line}");
    }
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("(this host's kernel: {})", host_kernel.trim());
    if status.exit_code != 0 {
        bail!("the demo container failed");
    }
    Ok(())
}

/// `crictl exec` without crictl: a container that keeps running, an Exec
/// through the streaming server (whose URL works from this host even when
/// hulld runs in the test VM), its output and exit code.
async fn exec_demo(
    runtime: &mut cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    image: &str,
) -> Result<()> {
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "shell".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "600".into()],
        ..Default::default()
    };
    let id = create_and_start(runtime, pod, pod_config, config).await?;
    let url = runtime
        .exec(cri::ExecRequest {
            container_id: id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo exec in $(hostname): $(uname -r)".into(),
            ],
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await
        .context("Exec")?
        .into_inner()
        .url;
    let result = hull_integration::streaming::spdy_command(
        &url,
        hull_integration::streaming::CommandOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        },
    )
    .await
    .with_context(|| format!("exec through the streaming server at {url}"))?;
    println!(
        "{} (through the streaming server, {}; exit code {})",
        result.stdout_text().trim(),
        url.split("/exec/").next().unwrap_or_default(),
        result.exit_code()?
    );
    Ok(())
}

/// CreateContainer and StartContainer; returns the container's id.
async fn create_and_start(
    runtime: &mut cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> Result<String> {
    let id = runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.to_owned(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .context("StartContainer")?;
    Ok(id)
}

fn short(id: &str) -> &str {
    &id[..id.len().min(13)]
}
