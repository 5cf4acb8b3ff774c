//! hull's guest agent, as PID 1 of a real guest, driven over vsock.
//!
//! Boots hull's guest kernel with the agent's initramfs (`cargo xtask
//! initramfs`) under QEMU `-M microvm` with a vhost-vsock device (the
//! reference VMM until hull's own lands) and a busybox image disk (erofs,
//! built here), then drives the agent through hull-proto's client: sandbox
//! setup, image mount, containers (stdout, exec, SIGTERM/SIGKILL exit codes,
//! OOM kill, named user, seccomp RuntimeDefault), PortForward to servers
//! bound to the pod's loopback, stats, shutdown.
//! Needs a working KVM and /dev/vhost-vsock: run it with `cargo xtask test`,
//! or under `cargo xtask vm-run` with HULL_GUEST_BZIMAGE set.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hull_integration::disk::make_erofs;
use hull_integration::guest::{guest_kernel, require_kvm};
use hull_integration::qemu::{Disk, MicrovmConfig};
use hull_proto::client::{AgentAddress, AgentClient, connect};
use hull_proto::spec::{self, ContainerSpecInput, Resources, SeccompProfile};
use hull_proto::{v1, validate};
// tonic's own re-export: the crate needs no tokio-stream dependency for one
// request stream.
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

/// Where `cargo xtask initramfs` writes the uncompressed archive; the
/// variable overrides it.
const INITRAMFS_ENV: &str = "HULL_AGENT_INITRAMFS";
const AGENT_PORT: u32 = 1024;
const IMAGE_SERIAL: &str = "hull-busybox";
const IMAGE_MOUNT: &str = "/run/hull/images/busybox";
/// The MAC of the guest's virtio-net device, as a CNI result would give it.
const GUEST_MAC: &str = "52:54:00:12:34:56";
/// Generous: a guest boots in ~2-3 s in the test VM; CI hosts are slower.
const DEADLINE: Duration = Duration::from_secs(120);
const PATH_ENV: &str = "PATH=/bin";

fn agent_initramfs() -> Result<PathBuf> {
    let path = std::env::var_os(INITRAMFS_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/agent-static/hull-agent-initramfs.cpio")
        });
    if !path.is_file() {
        bail!(
            "the agent initramfs {} does not exist: run `cargo xtask initramfs` first (or set {INITRAMFS_ENV})",
            path.display()
        );
    }
    Ok(path)
}

/// An erofs image: static busybox with applet links, and users/groups for
/// the named-user check.
fn busybox_image(dir: &Path) -> Result<PathBuf> {
    let tree = dir.join("image");
    for sub in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
        std::fs::create_dir_all(tree.join(sub))?;
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox"))
        .context("copying /bin/busybox (Debian package busybox-static)")?;
    for applet in [
        "sh", "echo", "cat", "id", "sleep", "dd", "unshare", "grep", "hostname", "true", "ls",
        "httpd", "nc", "seq", "mkdir",
    ] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet))?;
    }
    std::fs::write(
        tree.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234:app:/tmp:/bin/sh\n",
    )?;
    std::fs::write(
        tree.join("etc/group"),
        "root:x:0:\napp:x:1234:\nextra:x:555:app\nmore:x:556:root,app\n",
    )?;
    let image = dir.join("busybox.erofs");
    make_erofs(&tree, &image)?;
    Ok(image)
}

fn spec_json(args: &[&str], tweak: impl FnOnce(&mut ContainerSpecInput)) -> Result<Vec<u8>> {
    let mut input = ContainerSpecInput {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: vec![PATH_ENV.to_owned()],
        share_pod_namespaces: true,
        pod_dns_and_hosts: true,
        ..Default::default()
    };
    tweak(&mut input);
    Ok(serde_json::to_vec(&spec::build(&input)?)?)
}

async fn connect_until_up(address: &AgentAddress) -> Result<AgentClient> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match connect(address, Duration::from_secs(2)).await {
            Ok(mut client) => {
                if let Ok(reply) = client.health(v1::HealthRequest {}).await {
                    validate::health_reply(reply.get_ref())?;
                    return Ok(client);
                }
            }
            Err(err) if Instant::now() >= deadline => {
                return Err(err).context("the agent did not answer in time");
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads a process's output in the background.
fn collect_output(client: &AgentClient, container_id: &str, exec_id: &str) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let mut client = client.clone();
    let request = v1::ReadOutputRequest {
        container_id: container_id.to_owned(),
        exec_id: exec_id.to_owned(),
        ..Default::default()
    };
    let sink = text.clone();
    tokio::spawn(async move {
        let Ok(response) = client.read_output(request).await else {
            return;
        };
        let mut stream = response.into_inner();
        while let Ok(Some(chunk)) = stream.message().await {
            if validate::output_chunk(&chunk).is_err() {
                return;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk.data));
        }
    });
    text
}

async fn wait_for_text(text: &Arc<Mutex<String>>, needle: &str) -> Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while !text.lock().unwrap().contains(needle) {
        if Instant::now() >= deadline {
            bail!("{needle:?} not in the output: {:?}", text.lock().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn wait(
    client: &mut AgentClient,
    container_id: &str,
    exec_id: &str,
) -> Result<v1::ExitStatus> {
    let reply = client
        .wait_process(v1::WaitProcessRequest {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
        })
        .await?;
    Ok(*validate::wait_reply(reply.get_ref())?)
}

async fn create_and_start(
    client: &mut AgentClient,
    id: &str,
    spec: Vec<u8>,
    user: &str,
) -> Result<Arc<Mutex<String>>> {
    client
        .create_container(v1::CreateContainerRequest {
            container_id: id.to_owned(),
            oci_spec_json: spec,
            rootfs_lower_dirs: vec![IMAGE_MOUNT.to_owned()],
            user: user.to_owned(),
            stdin: false,
        })
        .await
        .with_context(|| format!("creating {id}"))?;
    let output = collect_output(client, id, "");
    client
        .start_container(v1::StartContainerRequest {
            container_id: id.to_owned(),
        })
        .await
        .with_context(|| format!("starting {id}"))?;
    Ok(output)
}

/// Runs a container to its end; returns its output and exit status.
async fn run_to_end(
    client: &mut AgentClient,
    id: &str,
    spec: Vec<u8>,
    user: &str,
) -> Result<(String, v1::ExitStatus)> {
    let output = create_and_start(client, id, spec, user).await?;
    let status = wait(client, id, "").await?;
    // The output stream ends with the process; give the reader a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .delete_container(v1::DeleteContainerRequest {
            container_id: id.to_owned(),
            force: false,
        })
        .await?;
    let text = output.lock().unwrap().clone();
    Ok((text, status))
}

/// One PortForward call: sends `request` in the first message, half-closes
/// if asked (else keeps the input open to the end), and returns the bytes
/// the server sent, or the status the call ended with.
async fn port_forward(
    client: &AgentClient,
    port: u32,
    request: &[u8],
    half_close: bool,
) -> Result<Result<Vec<u8>, tonic::Status>> {
    let mut client = client.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::PortForwardInput {
        port,
        data: request.to_vec(),
    })
    .await?;
    let input = if half_close {
        drop(tx);
        None
    } else {
        Some(tx)
    };
    let mut output = match client.port_forward(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Ok(Err(status)),
    };
    match output.message().await {
        Ok(Some(first)) => validate::port_forward_connected(&first)?,
        Ok(None) => bail!("the forward to port {port} ended before it was connected"),
        Err(status) => return Ok(Err(status)),
    }
    let mut bytes = Vec::new();
    loop {
        match output.message().await {
            Ok(Some(message)) => bytes.extend_from_slice(validate::port_forward_data(&message)?),
            Ok(None) => break,
            Err(status) => return Ok(Err(status)),
        }
    }
    drop(input);
    Ok(Ok(bytes))
}

/// PortForward (protocol 5) reaches servers bound to the pod's loopback:
/// busybox httpd on 127.0.0.1:8080 (a response while the input stays open,
/// ten at once) and an `nc -e cat` echo on 8081 (the half-close reaches
/// it); a closed port is UNAVAILABLE.
async fn check_port_forward(client: &mut AgentClient) -> Result<()> {
    let script = "mkdir -p /tmp/www && seq 1 200000 > /tmp/www/big.txt && \
                  echo small-file > /tmp/www/small.txt && \
                  { nc -l -p 8081 -e cat & } && \
                  exec httpd -f -p 127.0.0.1:8080 -h /tmp/www";
    let output = create_and_start(
        client,
        "c-forward",
        spec_json(&["sh", "-c", script], |_| {})?,
        "",
    )
    .await?;

    let refused = port_forward(client, 9, b"", true)
        .await?
        .expect_err("nothing listens on port 9");
    ensure!(
        refused.code() == tonic::Code::Unavailable
            && refused
                .message()
                .starts_with("cannot connect to port 9 in the pod: ")
            && refused.message().contains("Connection refused"),
        "{refused:?}"
    );

    // Retried until the servers listen.
    let get_big = b"GET /big.txt HTTP/1.0\r\n\r\n";
    let deadline = Instant::now() + DEADLINE;
    let (response, took) = loop {
        let started = Instant::now();
        match port_forward(client, 8080, get_big, false).await? {
            Ok(bytes) => break (bytes, started.elapsed()),
            Err(status)
                if status.code() == tonic::Code::Unavailable && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => {
                bail!("{status:?}; container output {:?}", output.lock().unwrap())
            }
        }
    };
    let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP header in {:?}", &text[..text.len().min(200)]))?;
    ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head:?}"
    );
    ensure!(
        body == expected,
        "the body differs: {} bytes, {} expected",
        body.len(),
        expected.len()
    );
    eprintln!(
        "port forward: {} bytes from 127.0.0.1:8080 in {took:?}",
        response.len()
    );

    // Ten at once.
    let gets: Vec<_> = (0..10)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                port_forward(&client, 8080, b"GET /small.txt HTTP/1.0\r\n\r\n", true).await
            })
        })
        .collect();
    for get in gets {
        let response = get
            .await??
            .map_err(|status| anyhow::anyhow!("{status:?}"))?;
        let text = String::from_utf8_lossy(&response);
        ensure!(
            text.contains(" 200 ") && text.ends_with("\r\n\r\nsmall-file\n"),
            "{text:?}"
        );
    }

    // The echo sends back everything and closes after the half-close.
    let deadline = Instant::now() + DEADLINE;
    let echoed = loop {
        match port_forward(client, 8081, b"hello through the agent", true).await? {
            Ok(bytes) => break bytes,
            Err(status)
                if status.code() == tonic::Code::Unavailable && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => bail!("{status:?}"),
        }
    };
    ensure!(
        echoed == b"hello through the agent",
        "{:?}",
        String::from_utf8_lossy(&echoed)
    );

    client
        .delete_container(v1::DeleteContainerRequest {
            container_id: "c-forward".into(),
            force: true,
        })
        .await?;
    Ok(())
}

async fn drive_agent(address: AgentAddress) -> Result<()> {
    let mut client = connect_until_up(&address).await?;
    let health = client.health(v1::HealthRequest {}).await?.into_inner();
    ensure!(
        health.protocol_version == hull_proto::PROTOCOL_VERSION,
        "{health:?}"
    );
    eprintln!("agent up: {health:?}");

    client
        .setup_sandbox(v1::SetupSandboxRequest {
            hostname: "hull-pod".into(),
            dns: Some(v1::DnsConfig {
                servers: vec!["10.96.0.10".into()],
                ..Default::default()
            }),
            interfaces: vec![v1::Interface {
                // Upper case: the agent matches MACs in either case.
                mac_address: GUEST_MAC.to_uppercase(),
                name: "eth0".into(),
                addresses: vec!["10.0.2.15/24".into(), "fd00:88::5/64".into()],
                mtu: 1400,
            }],
            routes: vec![
                v1::Route {
                    destination: "0.0.0.0/0".into(),
                    gateway: "10.0.2.2".into(),
                    device: String::new(),
                },
                v1::Route {
                    destination: "10.96.0.0/12".into(),
                    gateway: String::new(),
                    device: "eth0".into(),
                },
            ],
            ..Default::default()
        })
        .await
        .context("SetupSandbox")?;
    client
        .mount_image(v1::MountImageRequest {
            device: Some(v1::BlockDevice {
                source: Some(v1::block_device::Source::Serial(IMAGE_SERIAL.into())),
            }),
            fs_type: "erofs".into(),
            mount_point: IMAGE_MOUNT.into(),
        })
        .await
        .context("MountImage")?;

    // A container sees the network SetupSandbox made: the pod's network
    // namespace is the VM's.
    let probe = "cat /sys/class/net/eth0/mtu /sys/class/net/eth0/address; \
                 ip -o addr show dev eth0; ip route; ip -o link show dev lo";
    let (text, status) = run_to_end(
        &mut client,
        "c-net",
        spec_json(&["sh", "-c", probe], |_| {})?,
        "",
    )
    .await?;
    ensure!(status.exit_code == 0, "{status:?} {text:?}");
    for expected in [
        "1400\n",
        &format!("{GUEST_MAC}\n"),
        "inet 10.0.2.15/24",
        "inet6 fd00:88::5/64",
        "default via 10.0.2.2 dev eth0",
        "10.96.0.0/12 dev eth0",
        "LOOPBACK,UP",
    ] {
        ensure!(text.contains(expected), "{expected:?} missing in {text:?}");
    }
    // A MAC the guest lacks is refused, naming the field and what is there.
    let refused = client
        .setup_sandbox(v1::SetupSandboxRequest {
            interfaces: vec![v1::Interface {
                mac_address: "52:54:00:00:00:99".into(),
                name: "eth1".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect_err("an unknown MAC is refused");
    ensure!(
        refused.code() == tonic::Code::NotFound
            && refused.message().contains("interfaces[0]")
            && refused.message().contains(GUEST_MAC),
        "{refused:?}"
    );

    check_port_forward(&mut client)
        .await
        .context("PortForward")?;

    // stdout, hostname and resolv.conf from the pod, exec, SIGTERM.
    let script = "trap 'echo got-term; exit 42' TERM; echo hello-from-container; hostname; \
                  cat /etc/resolv.conf; while true; do sleep 1; done";
    let output = create_and_start(
        &mut client,
        "c-main",
        spec_json(&["sh", "-c", script], |_| {})?,
        "",
    )
    .await?;
    wait_for_text(
        &output,
        "hello-from-container\nhull-pod\nnameserver 10.96.0.10",
    )
    .await?;

    let exec = serde_json::json!({
        "args": ["sh", "-c", "echo exec-ok; exit 3"],
        "env": [PATH_ENV],
        "cwd": "/",
        "user": {"uid": 0, "gid": 0},
    });
    client
        .exec_process(v1::ExecProcessRequest {
            container_id: "c-main".into(),
            exec_id: "e1".into(),
            process_json: serde_json::to_vec(&exec)?,
            stdin: false,
        })
        .await
        .context("ExecProcess")?;
    let exec_output = collect_output(&client, "c-main", "e1");
    let exec_status = wait(&mut client, "c-main", "e1").await?;
    ensure!(
        exec_status.exit_code == 3 && exec_status.signal == 0,
        "{exec_status:?}"
    );
    wait_for_text(&exec_output, "exec-ok").await?;

    let stats = client
        .container_stats(v1::ContainerStatsRequest {
            container_id: "c-main".into(),
        })
        .await?
        .into_inner();
    let stats = validate::container_stats_reply(&stats)?;
    ensure!(stats.pids.unwrap_or_default().current >= 2, "{stats:?}");
    ensure!(
        stats.memory.unwrap_or_default().usage_bytes > 0,
        "{stats:?}"
    );

    client
        .signal_process(v1::SignalProcessRequest {
            container_id: "c-main".into(),
            exec_id: String::new(),
            signal: 15,
            all: false,
        })
        .await?;
    let status = wait(&mut client, "c-main", "").await?;
    ensure!(
        status.exit_code == 42 && status.signal == 0 && !status.oom_killed,
        "{status:?}"
    );
    wait_for_text(&output, "got-term").await?;
    client
        .delete_container(v1::DeleteContainerRequest {
            container_id: "c-main".into(),
            force: false,
        })
        .await?;

    // SIGKILL: 128 + 9, reported as a signal.
    let output = create_and_start(
        &mut client,
        "c-kill",
        spec_json(&["sleep", "600"], |_| {})?,
        "",
    )
    .await?;
    client
        .signal_process(v1::SignalProcessRequest {
            container_id: "c-kill".into(),
            exec_id: String::new(),
            signal: 9,
            all: false,
        })
        .await?;
    let status = wait(&mut client, "c-kill", "").await?;
    ensure!(
        status.exit_code == 137 && status.signal == 9 && !status.oom_killed,
        "{status:?}"
    );
    drop(output);
    client
        .delete_container(v1::DeleteContainerRequest {
            container_id: "c-kill".into(),
            force: false,
        })
        .await?;

    // A process that needs 64 MiB in a 16 MiB container is OOM-killed.
    let oom_spec = spec_json(
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        |input| {
            input.resources = Resources {
                memory_limit_bytes: 16 << 20,
                ..Default::default()
            };
        },
    )?;
    let (text, status) = run_to_end(&mut client, "c-oom", oom_spec, "").await?;
    ensure!(
        status.oom_killed && status.signal == 9 && status.exit_code == 137,
        "{status:?} output {text:?}"
    );

    // An OOM kill of a child process is reported while the container's
    // init goes on running.
    let mut events = client
        .events(v1::EventsRequest {})
        .await
        .context("Events")?
        .into_inner();
    let child_oom_spec = spec_json(
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/null bs=64M count=1; echo dd-ended; sleep 30",
        ],
        |input| {
            input.resources = Resources {
                memory_limit_bytes: 16 << 20,
                ..Default::default()
            };
        },
    )?;
    let child_oom_output = create_and_start(&mut client, "c-child-oom", child_oom_spec, "").await?;
    let oom_event = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match events.message().await? {
                Some(v1::Event {
                    kind: Some(v1::event::Kind::OomKilled(k)),
                    ..
                }) if k.container_id == "c-child-oom" => return Ok(()),
                Some(_) => continue,
                None => anyhow::bail!("the event stream ended"),
            }
        }
    })
    .await;
    ensure!(
        matches!(oom_event, Ok(Ok(()))),
        "no OomKilled event for the child's OOM kill: {oom_event:?}; output {:?}",
        child_oom_output.lock().unwrap()
    );
    let state = client
        .container_status(v1::ContainerStatusRequest {
            container_id: "c-child-oom".into(),
        })
        .await?
        .into_inner();
    ensure!(
        state.state == v1::ContainerState::Running as i32,
        "the OOM event came while the init runs: {state:?}"
    );
    client
        .delete_container(v1::DeleteContainerRequest {
            container_id: "c-child-oom".into(),
            force: true,
        })
        .await?;

    // A named user gets its uid, gid and supplementary groups from the image.
    let (text, status) = run_to_end(
        &mut client,
        "c-user",
        spec_json(&["sh", "-c", "id -u; id -g; id -G"], |_| {})?,
        "app",
    )
    .await?;
    ensure!(status.exit_code == 0, "{status:?} {text:?}");
    let lines: Vec<&str> = text.lines().collect();
    ensure!(
        lines.len() >= 3 && lines[0] == "1234" && lines[1] == "1234",
        "{text:?}"
    );
    let mut groups: Vec<&str> = lines[2].split_whitespace().collect();
    groups.sort_unstable();
    ensure!(groups == ["1234", "555", "556"], "{text:?}");

    // RuntimeDefault blocks unshare even with CAP_SYS_ADMIN; unconfined, the
    // same call works, so it is the filter that refuses it.
    let probe = "grep Seccomp: /proc/self/status; unshare -u true; echo rc=$?";
    let with_admin = |profile: SeccompProfile| {
        move |input: &mut ContainerSpecInput| {
            input.capabilities_add = vec!["CAP_SYS_ADMIN".into()];
            input.seccomp = profile;
        }
    };
    let (text, _) = run_to_end(
        &mut client,
        "c-seccomp",
        spec_json(
            &["sh", "-c", probe],
            with_admin(SeccompProfile::RuntimeDefault),
        )?,
        "",
    )
    .await?;
    ensure!(
        text.contains("Seccomp:\t2") && text.contains("rc=1"),
        "{text:?}"
    );
    ensure!(text.contains("Operation not permitted"), "{text:?}");
    let (text, _) = run_to_end(
        &mut client,
        "c-unconfined",
        spec_json(&["sh", "-c", probe], with_admin(SeccompProfile::Unconfined))?,
        "",
    )
    .await?;
    ensure!(
        text.contains("Seccomp:\t0") && text.contains("rc=0"),
        "{text:?}"
    );

    let sandbox = client
        .sandbox_stats(v1::SandboxStatsRequest {})
        .await?
        .into_inner();
    validate::sandbox_stats_reply(&sandbox)?;
    ensure!(sandbox.vm_memory_total_bytes > 0, "{sandbox:?}");

    client
        .shutdown(v1::ShutdownRequest { reboot: false })
        .await?;
    Ok(())
}

#[test]
fn agent_runs_containers_in_a_guest() -> Result<()> {
    let kernel = guest_kernel()?;
    require_kvm()?;
    ensure!(
        Path::new("/dev/vhost-vsock").exists(),
        "/dev/vhost-vsock is missing: load vhost_vsock (the test VM has it)"
    );
    let initramfs = agent_initramfs()?;
    let dir = tempfile::tempdir()?;
    let image = busybox_image(dir.path())?;
    // A guest CID no other test VM on this host uses at the same time.
    let cid = 1000 + std::process::id() % 100_000;

    let mut config = MicrovmConfig::new(&kernel.bzimage);
    config.initramfs = Some(initramfs);
    config.memory_mib = 256;
    config.cmdline.push_str(&format!(
        " quiet hull.vsock_port={AGENT_PORT} hull.log=info"
    ));
    config.disks = vec![Disk {
        path: image,
        read_only: true,
        serial: IMAGE_SERIAL.into(),
    }];
    // The pod's network device: user networking restricted to the guest
    // (nothing reaches the host or beyond); the agent configures it.
    config.extra_args = vec![
        "-device".into(),
        format!("vhost-vsock-device,guest-cid={cid}"),
        "-netdev".into(),
        "user,id=pod0,restrict=on".into(),
        "-device".into(),
        format!("virtio-net-device,netdev=pod0,mac={GUEST_MAC}"),
    ];
    let started = Instant::now();
    let mut vm = config.spawn()?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(drive_agent(AgentAddress::Vsock {
        cid,
        port: AGENT_PORT,
    }));
    let console = vm.console().text();
    if let Err(err) = result {
        bail!("{err:#}\nguest console:\n{console}");
    }
    let status = vm.wait_exit(DEADLINE)?;
    eprintln!("whole run {:?}", started.elapsed());
    ensure!(
        status.success(),
        "QEMU exited with {status}; console:\n{}",
        vm.console().text()
    );
    Ok(())
}
