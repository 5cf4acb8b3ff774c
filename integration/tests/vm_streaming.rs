//! Exec, Attach and PortForward through hulld's streaming server, with the
//! clients the kubelet, crictl and kubectl use: SPDY/3.1 and WebSocket.
//!
//! One pod runs busybox httpd bound to 127.0.0.1 inside the pod; the test
//! execs into it (with and without a terminal, stdin piped and closed, exit
//! codes, 50 MB of output), attaches to a second container reading its
//! stdin and to a third with a terminal, forwards ports to the server on the pod's loopback (20
//! connections at once, over SPDY and WebSocket), and checks that a used or
//! unknown URL is refused.
//!
//! Needs a working KVM (`cargo xtask test` runs it in the test VM).

use std::sync::Arc;

use hull_integration::pod_node::Node;
use hull_integration::streaming::{
    self, CommandOptions, refused_upgrade, spdy_command, spdy_forward, spdy_session,
    websocket_command,
};
use k8s_cri::v1 as cri;

const PAGE: &str = "hello-from-the-pod-loopback";

/// Runs one step of the test, failing with hulld's latest log lines if it
/// hangs.
async fn step<T>(node: &Node, name: &str, work: impl std::future::Future<Output = T>) -> T {
    eprintln!("step: {name}");
    match tokio::time::timeout(std::time::Duration::from_secs(240), work).await {
        Ok(value) => value,
        Err(_) => {
            let log = node.hulld.log();
            let lines: Vec<&str> = log.lines().collect();
            panic!(
                "step {name:?} did not finish in 240 s; hulld's log ends:\n{}",
                lines[lines.len().saturating_sub(150)..].join("\n")
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_attach_and_port_forward_through_the_streaming_server() {
    let node = Node::start().await;
    let (pod, pod_config) = node.run_pod("stream").await;
    let server = node
        .run_container(
            &pod,
            &pod_config,
            "server",
            &format!(
                "mkdir -p /srv && echo {PAGE} > /srv/index.html && exec httpd -f -p 127.0.0.1:8080 -h /srv"
            ),
        )
        .await;
    let mut runtime = node.hulld.runtime().await;
    let exec_url = |cmd: &[&str], stdin: bool, tty: bool| cri::ExecRequest {
        container_id: server.clone(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    };

    // SPDY, no terminal: both streams and the exit code, non-zero.
    let url = runtime
        .exec(exec_url(
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            false,
            false,
        ))
        .await
        .expect("Exec")
        .into_inner()
        .url;
    let result = step(
        &node,
        "exec exit 3",
        spdy_command(
            &url,
            CommandOptions {
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("exec over SPDY");
    assert_eq!(result.stdout_text(), "out\n");
    assert_eq!(String::from_utf8_lossy(&result.stderr), "err\n");
    assert_eq!(result.exit_code().unwrap(), 3, "{result:?}");

    // A used URL is refused.
    let (code, body) = refused_upgrade(&url, "SPDY/3.1").await.unwrap();
    assert_eq!(code, 404, "{body}");

    // stdin piped and closed.
    let url = runtime
        .exec(exec_url(&["sh", "-c", "cat; echo eof"], true, false))
        .await
        .unwrap()
        .into_inner()
        .url;
    let result = step(
        &node,
        "exec with stdin",
        spdy_command(
            &url,
            CommandOptions {
                stdin: Some(b"piped through stdin\n".to_vec()),
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(result.stdout_text(), "piped through stdin\neof\n");
    assert_eq!(result.exit_code().unwrap(), 0);

    // A terminal: the resize is applied in the guest.
    let url = runtime
        .exec(exec_url(&["sh", "-c", "sleep 1; stty size"], false, true))
        .await
        .unwrap()
        .into_inner()
        .url;
    let result = step(
        &node,
        "exec with a terminal",
        spdy_command(
            &url,
            CommandOptions {
                stdout: true,
                tty: true,
                resize: vec![(123, 45)],
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(result.stdout_text().trim(), "45 123", "{result:?}");

    // 50 MB of output, nothing lost.
    let url = runtime
        .exec(exec_url(
            &["sh", "-c", "head -c 52428800 /dev/zero"],
            false,
            false,
        ))
        .await
        .unwrap()
        .into_inner()
        .url;
    let result = step(
        &node,
        "50 MB exec",
        spdy_command(
            &url,
            CommandOptions {
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        result.stdout.len(),
        52_428_800,
        "{result:?}\n{}",
        node.pod_diagnostics(&pod)
    );
    assert!(result.stdout.iter().all(|&b| b == 0));
    assert_eq!(result.exit_code().unwrap(), 0);

    // WebSocket v5: stdin closed with the close message, exit code 3.
    let url = runtime
        .exec(exec_url(&["sh", "-c", "cat; exit 3"], true, false))
        .await
        .unwrap()
        .into_inner()
        .url;
    let result = step(
        &node,
        "websocket exec",
        websocket_command(
            &url,
            CommandOptions {
                stdin: Some(b"over websocket".to_vec()),
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(result.stdout_text(), "over websocket");
    assert_eq!(result.exit_code().unwrap(), 3, "{result:?}");

    // Attach to a container that reads its stdin: it answers each line,
    // and the session ends when the container exits.
    let mut reader = node.container_config(
        "reader",
        "while read line; do echo got:$line; done; echo bye",
    );
    reader.stdin = true;
    reader.stdin_once = true;
    let reader = node.start_container(&pod, &pod_config, reader).await;
    let url = runtime
        .attach(cri::AttachRequest {
            container_id: reader.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .expect("Attach")
        .into_inner()
        .url;
    let result = step(
        &node,
        "attach",
        spdy_command(
            &url,
            CommandOptions {
                stdin: Some(b"one\ntwo\n".to_vec()),
                stdout: true,
                stderr: true,
                // Keep stdin open until both answers came back.
                close_stdin_after_stdout: Some("got:one\ngot:two\n".len()),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        result.stdout_text(),
        "got:one\ngot:two\nbye\n",
        "{result:?}"
    );
    assert_eq!(result.exit_code().unwrap(), 0);
    let status = node.wait_exited(&reader).await;
    assert_eq!(status.exit_code, 0);

    // Attach to a container with a terminal: input reaches its shell
    // through the pty, a resize reaches the terminal, and the session ends
    // when the container exits.
    let mut console = node.container_config(
        "console",
        "while read line; do case $line in \
           size) for i in $(seq 50); do s=$(stty size); [ \"$s\" = '30 100' ] && break; sleep 0.2; done; echo size:$s ;; \
           quit) echo bye; exit 0 ;; \
           *) echo got:$line ;; \
         esac; done",
    );
    console.stdin = true;
    console.tty = true;
    let console = node.start_container(&pod, &pod_config, console).await;
    let url = runtime
        .attach(cri::AttachRequest {
            container_id: console.clone(),
            stdin: true,
            tty: true,
            stdout: true,
            stderr: false,
        })
        .await
        .expect("Attach with a terminal")
        .into_inner()
        .url;
    let result = step(
        &node,
        "attach with a terminal",
        spdy_command(
            &url,
            CommandOptions {
                stdin: Some(b"one\nsize\nquit\n".to_vec()),
                stdout: true,
                tty: true,
                resize: vec![(100, 30)],
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    let text = result.stdout_text();
    for wanted in ["got:one", "size:30 100", "bye"] {
        assert!(text.contains(wanted), "{wanted:?} missing: {result:?}");
    }
    assert!(
        text.contains("\r\n"),
        "a terminal ends lines with CR LF: {result:?}"
    );
    assert_eq!(result.exit_code().unwrap(), 0, "{result:?}");
    assert_eq!(node.wait_exited(&console).await.exit_code, 0);

    // Port-forward over SPDY to the server on the pod's loopback: 20
    // connections at once on one session, then a closed port.
    let url = runtime
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    let session = Arc::new(spdy_session(&url, "portforward.k8s.io").await.unwrap());
    let mut connections = Vec::new();
    for n in 0..20 {
        let session = session.clone();
        connections.push(tokio::spawn(async move {
            let connection = spdy_forward(&session, 8080, n).await.unwrap();
            connection
                .round_trip(b"GET /index.html HTTP/1.0\r\n\r\n")
                .await
                .unwrap()
        }));
    }
    let answers = step(
        &node,
        "20 port-forward connections",
        futures::future::join_all(connections),
    )
    .await;
    for answer in answers {
        let (answer, error) = answer.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.contains(PAGE), "{answer}");
        assert!(error.is_empty(), "{error}");
    }
    let connection = spdy_forward(&session, 9, 100).await.unwrap();
    let (_, error) = step(&node, "closed port", connection.round_trip(b""))
        .await
        .unwrap();
    assert!(
        error.contains("port 9") && error.contains("refused"),
        "{error}"
    );
    session.close().await;

    // Port-forward over WebSocket, the port named in the URL.
    let url = runtime
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let answer = step(
        &node,
        "websocket port-forward",
        streaming::websocket_forward(&format!("{url}?port=8080"), b"GET / HTTP/1.0\r\n\r\n"),
    )
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&answer).contains(PAGE));

    // A made-up token is refused.
    let base = url.split("/portforward/").next().unwrap();
    let (code, _) = refused_upgrade(&format!("{base}/exec/{}", "f".repeat(64)), "SPDY/3.1")
        .await
        .unwrap();
    assert_eq!(code, 404);

    // The metrics saw the pod start, its VM boot and the calls above.
    let metrics = node.metrics().await;
    for line in [
        "hull_pod_start_duration_seconds_count 1",
        "hull_vm_boot_duration_seconds_count 1",
        "hull_vms 1",
        r#"hull_pods{state="ready"} 1"#,
        r#"hull_containers{state="running"} 1"#,
        r#"hull_containers{state="exited"} 2"#,
        r#"hull_cri_requests_total{method="Exec",code="OK"} 5"#,
        r#"hull_cri_requests_total{method="Attach",code="OK"} 2"#,
        r#"hull_cri_requests_total{method="PortForward",code="OK"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    let resident: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hull_vmm_resident_memory_bytes "))
        .and_then(|v| v.parse().ok())
        .expect("VMM resident memory");
    assert!(resident > 1e6, "{resident}");

    node.hulld
        .runtime()
        .await
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
}
