use std::time::Duration;

use futures::FutureExt;
use tokio::io::DuplexStream;

use super::*;
use crate::stream::spdy::Role;

fn headers(pairs: &[(&str, &str)]) -> Headers {
    let mut headers = Headers::new();
    for (name, value) in pairs {
        headers.append(name, *value).unwrap();
    }
    headers
}

fn client() -> (Session, DuplexStream) {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    (
        Session::new(ours, Role::Client, SessionLimits::default()),
        theirs,
    )
}

async fn read_all(stream: &mut Stream) -> Vec<u8> {
    let mut data = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), stream.recv())
        .await
        .expect("stream never ended")
        .unwrap()
    {
        data.extend_from_slice(&chunk);
    }
    data
}

/// Echoes stdin upper-cased to stdout, writes the terminal sizes it sees
/// to stderr (without a terminal) and exits 7.
fn echo_then_exit_7(streams: CommandStreams) -> BoxFuture<'static, Outcome> {
    async move {
        let mut stdin = streams.stdin.unwrap();
        let stdout = streams.stdout.unwrap();
        if let Some(stderr) = &streams.stderr {
            stderr.send(Bytes::from_static(b"to stderr")).await.unwrap();
        }
        while let Some(data) = stdin.recv().await {
            stdout
                .send(Bytes::from(data.to_ascii_uppercase()))
                .await
                .unwrap();
        }
        Outcome::ExitCode {
            code: 7,
            cmd: vec!["cat".into()],
        }
    }
    .boxed()
}

#[tokio::test]
async fn a_v4_exec_runs_once_its_streams_are_open_and_reports_the_exit_code() {
    let (client, server_io) = client();
    let wanted = Wanted {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let server = tokio::spawn(serve_command(
        server_io,
        4,
        wanted,
        Duration::from_secs(10),
        echo_then_exit_7,
    ));
    let mut error = client
        .open(headers(&[("streamtype", "error")]), false)
        .await
        .unwrap();
    let mut stdin = client
        .open(headers(&[("streamtype", "stdin")]), false)
        .await
        .unwrap();
    let mut stdout = client
        .open(headers(&[("streamtype", "stdout")]), true)
        .await
        .unwrap();
    let mut stderr = client
        .open(headers(&[("streamtype", "stderr")]), true)
        .await
        .unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let writer = tokio::spawn(async move {
        stdin.send(&big).await.unwrap();
        stdin.finish().unwrap();
        stdin
    });
    let (out, err, status) = tokio::join!(
        read_all(&mut stdout),
        read_all(&mut stderr),
        read_all(&mut error)
    );
    writer.await.unwrap();
    server.await.unwrap();
    assert_eq!(out.len(), 3_000_000);
    assert!(
        out.iter()
            .enumerate()
            .all(|(i, &b)| b == b'A' + (i % 26) as u8)
    );
    assert_eq!(err, b"to stderr");
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "7");
}

#[tokio::test]
async fn a_v3_tty_session_gets_resizes_and_a_text_status() {
    let (client, server_io) = client();
    let wanted = Wanted {
        stdin: false,
        stdout: true,
        stderr: false,
        tty: true,
    };
    let server = tokio::spawn(serve_command(
        server_io,
        3,
        wanted,
        Duration::from_secs(10),
        |streams| {
            async move {
                let mut resize = streams.resize.unwrap();
                let size = resize.recv().await.unwrap();
                let stdout = streams.stdout.unwrap();
                let text = format!("{}x{}", size.width, size.height);
                stdout.send(Bytes::from(text)).await.unwrap();
                Outcome::Failure("the agent is gone".into())
            }
            .boxed()
        },
    ));
    let mut error = client
        .open(headers(&[("streamtype", "error")]), false)
        .await
        .unwrap();
    let mut stdout = client
        .open(headers(&[("streamtype", "stdout")]), true)
        .await
        .unwrap();
    let mut resize = client
        .open(headers(&[("streamtype", "resize")]), false)
        .await
        .unwrap();
    resize.send(br#"{"Width":132,"Height":43}"#).await.unwrap();
    assert_eq!(read_all(&mut stdout).await, b"132x43");
    assert_eq!(
        read_all(&mut error).await,
        b"Internal error occurred: the agent is gone"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_client_that_never_opens_its_streams_is_dropped_after_the_timeout() {
    let (client, server_io) = client();
    let wanted = Wanted {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: false,
    };
    let server = tokio::spawn(serve_command(
        server_io,
        4,
        wanted,
        Duration::from_millis(200),
        |_| async { panic!("must not run without its streams") }.boxed(),
    ));
    let _error = client
        .open(headers(&[("streamtype", "error")]), false)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the session must end")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), client.closed())
        .await
        .expect("the client sees the session end");
}

#[tokio::test]
async fn port_forward_serves_many_connections_and_reports_failures_per_connection() {
    let (client, server_io) = client();
    let server = tokio::spawn(serve_port_forward(
        server_io,
        Duration::from_secs(10),
        |port, streams| {
            async move {
                if port == 81 {
                    return Err("error forwarding port 81 to pod p: Connection refused".into());
                }
                // Echo with the port in front, until the client half-closes.
                let PortStreams {
                    mut from_client,
                    to_client,
                } = streams;
                to_client
                    .send(Bytes::from(format!("{port}:")))
                    .await
                    .unwrap();
                while let Some(data) = from_client.recv().await {
                    to_client.send(data).await.unwrap();
                }
                Ok(())
            }
            .boxed()
        },
    ));
    let client = std::sync::Arc::new(client);
    let mut connections = Vec::new();
    for n in 0..20u32 {
        let client = client.clone();
        connections.push(tokio::spawn(async move {
            let (port, id) = ("8080".to_string(), n.to_string());
            let mut error = client
                .open(
                    headers(&[("streamtype", "error"), ("port", &port), ("requestid", &id)]),
                    false,
                )
                .await
                .unwrap();
            let mut data = client
                .open(
                    headers(&[("streamtype", "data"), ("port", &port), ("requestid", &id)]),
                    false,
                )
                .await
                .unwrap();
            let payload = format!("connection {n}").repeat(1000);
            data.send(payload.as_bytes()).await.unwrap();
            data.finish().unwrap();
            let answer = read_all(&mut data).await;
            assert_eq!(answer, format!("8080:{payload}").into_bytes());
            assert!(read_all(&mut error).await.is_empty());
        }));
    }
    for connection in connections {
        connection.await.unwrap();
    }
    // A refused port: the text arrives on the error stream.
    let mut error = client
        .open(
            headers(&[("streamtype", "error"), ("port", "81"), ("requestid", "99")]),
            false,
        )
        .await
        .unwrap();
    let _data = client
        .open(
            headers(&[("streamtype", "data"), ("port", "81"), ("requestid", "99")]),
            false,
        )
        .await
        .unwrap();
    let text = String::from_utf8(read_all(&mut error).await).unwrap();
    assert!(text.contains("Connection refused"), "{text}");
    // A bad port header is answered on the error stream too.
    let mut error = client
        .open(
            headers(&[
                ("streamtype", "error"),
                ("port", "http"),
                ("requestid", "100"),
            ]),
            false,
        )
        .await
        .unwrap();
    let text = String::from_utf8(read_all(&mut error).await).unwrap();
    assert!(text.contains("invalid port"), "{text}");
    client.close().await;
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the session ends with the client")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_of_output_arrive_whole() {
    let (client, server_io) = client();
    let wanted = Wanted {
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
    };
    const TOTAL: usize = 50 << 20;
    let server = tokio::spawn(serve_command(
        server_io,
        4,
        wanted,
        Duration::from_secs(10),
        |streams| {
            async move {
                let stdout = streams.stdout.unwrap();
                let chunk = Bytes::from(vec![7u8; 32 * 1024]);
                for _ in 0..TOTAL / chunk.len() {
                    stdout.send(chunk.clone()).await.unwrap();
                }
                Outcome::Success
            }
            .boxed()
        },
    ));
    let mut error = client
        .open(headers(&[("streamtype", "error")]), false)
        .await
        .unwrap();
    let mut stdout = client
        .open(headers(&[("streamtype", "stdout")]), true)
        .await
        .unwrap();
    let mut stderr = client
        .open(headers(&[("streamtype", "stderr")]), true)
        .await
        .unwrap();
    let (out, _, status) = tokio::join!(
        read_all(&mut stdout),
        read_all(&mut stderr),
        read_all(&mut error)
    );
    server.await.unwrap();
    assert_eq!(out.len(), TOTAL);
    assert_eq!(status, br#"{"metadata":{},"status":"Success"}"#);
}
