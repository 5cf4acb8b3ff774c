use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::config::Config;
use crate::stream::{ExecTarget, PortForwardTarget};

/// hulld's service over a fresh state directory, with its streaming server
/// listening on a free loopback port.
async fn service() -> (Arc<CriService>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        state_dir: dir.path().join("state"),
        socket_path: dir.path().join("hull.sock"),
        ..Config::default()
    };
    let service = Arc::new(crate::daemon::open_service(Arc::new(config)).unwrap());
    let listener = bind(&service.config.stream).await.unwrap();
    service
        .streaming
        .set_listening(listener.local_addr().unwrap());
    tokio::spawn(serve(listener, service.clone()));
    (service, dir)
}

/// Sends one request head to `url` and returns the status code and body.
async fn request(url: &str, extra: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let mut connection = TcpStream::connect(authority).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: 0\r\n{extra}\r\n"
    );
    connection.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        connection.read_to_end(&mut response),
    )
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (code, body)
}

fn exec_of(container: &str) -> StreamRequest {
    StreamRequest::Exec(ExecTarget {
        container_id: container.into(),
        cmd: vec!["true".into()],
        tty: false,
        stdin: false,
        stdout: true,
        stderr: false,
    })
}

const SPDY: &str =
    "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n";

#[tokio::test]
async fn urls_are_single_use_and_bound_to_their_path() {
    let (service, _dir) = service().await;
    let url = service.streaming.url_for(exec_of("gone"), "Exec").unwrap();
    assert!(url.contains("/exec/"), "{url}");
    // The container went away after the URL was issued: 409, and the token
    // is used up.
    let (code, body) = request(&url, SPDY).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("gone"), "{body}");
    let (code, body) = request(&url, SPDY).await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("unknown or expired"), "{body}");

    // A token on another kind's path is refused (and burnt).
    let url = service.streaming.url_for(exec_of("gone"), "Exec").unwrap();
    let (code, _) = request(&url.replace("/exec/", "/attach/"), SPDY).await;
    assert_eq!(code, 404);
    let (code, _) = request(&url, SPDY).await;
    assert_eq!(code, 404);

    let base = url.split("/exec/").next().unwrap();
    let (code, _) = request(&format!("{base}/exec/{}", "0".repeat(64)), SPDY).await;
    assert_eq!(code, 404);
    let (code, body) = request(&format!("{base}/metrics"), "").await;
    assert_eq!(code, 404, "{body}");
}

#[tokio::test]
async fn a_url_opened_without_an_upgrade_is_refused() {
    let (service, _dir) = service().await;
    let url = service
        .streaming
        .url_for(
            StreamRequest::PortForward(PortForwardTarget {
                pod_id: "p".into(),
                ports: vec![80],
            }),
            "PortForward",
        )
        .unwrap();
    let (code, body) = request(&url, "").await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("SPDY/3.1 or websocket"), "{body}");
}

#[tokio::test]
async fn the_rpcs_check_their_requests_and_what_they_name() {
    let (service, _dir) = service().await;
    let err = service
        .exec(k8s_cri::v1::ExecRequest {
            container_id: "nope".into(),
            cmd: vec!["sh".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::NotFound);
    let err = service
        .exec(k8s_cri::v1::ExecRequest {
            container_id: "nope".into(),
            cmd: vec!["sh".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::InvalidArgument
    );
    let err = service
        .port_forward(k8s_cri::v1::PortForwardRequest {
            pod_sandbox_id: "nope".into(),
            port: vec![80],
        })
        .await
        .unwrap_err();
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::NotFound);
    let err = service
        .attach(k8s_cri::v1::AttachRequest {
            container_id: String::new(),
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::InvalidArgument
    );
}
