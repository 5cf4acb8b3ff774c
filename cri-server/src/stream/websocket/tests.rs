use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::*;

async fn pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = WebSocketStream::from_raw_socket(a, Role::Server, Some(config())).await;
    let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
    (server, client)
}

/// Every binary message until the server closes, as (channel, data).
async fn drain(client: &mut WebSocketStream<DuplexStream>) -> Vec<(u8, Vec<u8>)> {
    let mut messages = Vec::new();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(10), client.next())
        .await
        .expect("server never closed")
    {
        match message.unwrap() {
            Message::Binary(data) => messages.push((data[0], data[1..].to_vec())),
            Message::Close(_) => break,
            _ => {}
        }
    }
    messages
}

fn binary(channel: u8, data: &[u8]) -> Message {
    let mut message = vec![channel];
    message.extend_from_slice(data);
    Message::Binary(message.into())
}

/// An exec stand-in: echoes stdin to stdout (upper-cased) until EOF, then
/// exits 3.
fn echo_then_exit_3(streams: CommandStreams) -> BoxFuture<'static, Outcome> {
    async move {
        let mut stdin = streams.stdin.unwrap();
        let stdout = streams.stdout.unwrap();
        while let Some(data) = stdin.recv().await {
            stdout
                .send(Bytes::from(data.to_ascii_uppercase()))
                .await
                .unwrap();
        }
        Outcome::ExitCode {
            code: 3,
            cmd: vec!["cat".into()],
        }
    }
    .boxed()
}

#[tokio::test]
async fn v5_exec_relays_stdin_to_eof_and_reports_the_exit_code() {
    let (server, mut client) = pair().await;
    let wanted = Wanted {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let session = tokio::spawn(serve_command(server, 5, wanted, echo_then_exit_3));
    client.send(binary(STDIN, b"hello ")).await.unwrap();
    client.send(binary(STDIN, b"world")).await.unwrap();
    client.send(binary(CLOSE, &[STDIN])).await.unwrap();
    let messages = drain(&mut client).await;
    session.await.unwrap();
    assert_eq!(
        messages[0],
        (STDOUT, vec![]),
        "the ready message comes first"
    );
    let stdout: Vec<u8> = messages
        .iter()
        .filter(|(channel, _)| *channel == STDOUT)
        .flat_map(|(_, data)| data.clone())
        .collect();
    assert_eq!(stdout, b"HELLO WORLD");
    let (channel, status) = messages.last().unwrap();
    assert_eq!(*channel, ERROR);
    let status: serde_json::Value = serde_json::from_slice(status).unwrap();
    assert_eq!(status["details"]["causes"][0]["message"], "3");
}

#[tokio::test]
async fn v4_has_no_close_signal_and_ends_stdin_when_the_client_goes() {
    let (server, mut client) = pair().await;
    let wanted = Wanted {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: false,
    };
    let (outcome_sender, outcome) = tokio::sync::oneshot::channel();
    let session = tokio::spawn(serve_command(server, 4, wanted, move |streams| {
        async move {
            let mut stdin = streams.stdin.unwrap();
            let mut seen = Vec::new();
            // A v4 CLOSE byte is just an unknown channel: stdin stays open
            // until the connection ends.
            while let Some(data) = stdin.recv().await {
                seen.extend_from_slice(&data);
            }
            streams.client_gone.await;
            let _ = outcome_sender.send(seen);
            Outcome::Success
        }
        .boxed()
    }));
    client.send(binary(STDIN, b"abc")).await.unwrap();
    client.send(binary(CLOSE, &[STDIN])).await.unwrap();
    client.send(binary(STDIN, b"def")).await.unwrap();
    client.close(None).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), outcome)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, b"abcdef");
    session.await.unwrap();
}

#[tokio::test]
async fn tty_sessions_get_resizes_and_no_stderr_channel() {
    let (server, mut client) = pair().await;
    let wanted = Wanted {
        stdin: false,
        stdout: true,
        stderr: true,
        tty: true,
    };
    let session = tokio::spawn(serve_command(server, 5, wanted, |streams| {
        async move {
            assert!(streams.stderr.is_none(), "a terminal has one output stream");
            let mut resize = streams.resize.unwrap();
            let stdout = streams.stdout.unwrap();
            for _ in 0..2 {
                let size = resize.recv().await.unwrap();
                let line = format!("{} {}\n", size.height, size.width);
                stdout.send(Bytes::from(line)).await.unwrap();
            }
            Outcome::Success
        }
        .boxed()
    }));
    client
        .send(binary(RESIZE, br#"{"Width":80,"Height":24}{"Width":1"#))
        .await
        .unwrap();
    client
        .send(binary(RESIZE, br#"20,"Height":40}"#))
        .await
        .unwrap();
    let messages = drain(&mut client).await;
    session.await.unwrap();
    let stdout: Vec<u8> = messages
        .iter()
        .filter(|(channel, _)| *channel == STDOUT)
        .flat_map(|(_, data)| data.clone())
        .collect();
    assert_eq!(String::from_utf8(stdout).unwrap(), "24 80\n40 120\n");
    assert_eq!(
        messages.last().unwrap(),
        &(ERROR, br#"{"metadata":{},"status":"Success"}"#.to_vec())
    );
}

#[tokio::test]
async fn v1_sends_no_status_on_success_and_the_text_on_failure() {
    for (outcome, expected) in [
        (Outcome::Success, None),
        (
            Outcome::Failure("no such container".into()),
            Some(b"Internal error occurred: no such container".to_vec()),
        ),
    ] {
        let (server, mut client) = pair().await;
        let wanted = Wanted {
            stdin: false,
            stdout: true,
            stderr: false,
            tty: false,
        };
        let session = tokio::spawn(serve_command(server, 1, wanted, move |_| {
            async move { outcome }.boxed()
        }));
        let messages = drain(&mut client).await;
        session.await.unwrap();
        let errors: Vec<_> = messages.iter().filter(|(c, _)| *c == ERROR).collect();
        match expected {
            None => assert!(errors.is_empty(), "{errors:?}"),
            Some(text) => assert_eq!(errors, vec![&(ERROR, text)]),
        }
    }
}

#[tokio::test]
async fn port_forward_names_each_port_then_relays_and_reports_errors() {
    let (server, mut client) = pair().await;
    let session = tokio::spawn(serve_port_forward(
        server,
        vec![8080, 9090],
        |port, streams| {
            async move {
                if port == 9090 {
                    return Err("cannot connect to port 9090 in the pod: Connection refused".into());
                }
                let PortStreams {
                    mut from_client,
                    to_client,
                } = streams;
                while let Some(data) = from_client.recv().await {
                    to_client.send(data).await.unwrap();
                }
                Ok(())
            }
            .boxed()
        },
    ));
    // Channel 0 is port 8080's data, 3 is port 9090's errors.
    let mut seen = Vec::new();
    while seen.len() < 5 {
        match client.next().await.unwrap().unwrap() {
            Message::Binary(data) => seen.push((data[0], data[1..].to_vec())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        &seen[..4],
        &[
            (0, 8080u16.to_le_bytes().to_vec()),
            (1, 8080u16.to_le_bytes().to_vec()),
            (2, 9090u16.to_le_bytes().to_vec()),
            (3, 9090u16.to_le_bytes().to_vec()),
        ]
    );
    assert_eq!(seen[4].0, 3);
    assert!(String::from_utf8_lossy(&seen[4].1).contains("Connection refused"));
    client.send(binary(0, b"ping")).await.unwrap();
    // A message on a server-only or unknown channel is ignored.
    client.send(binary(1, b"ignored")).await.unwrap();
    client.send(binary(9, b"ignored")).await.unwrap();
    match client.next().await.unwrap().unwrap() {
        Message::Binary(data) => assert_eq!(&data[..], b"\x00ping"),
        other => panic!("unexpected {other:?}"),
    }
    client.close(None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("the session ends when the client goes")
        .unwrap();
}

#[test]
fn ports_come_from_the_query() {
    assert_eq!(
        ports_from_query(Some("port=80&port=8080,9090&x=1")).unwrap(),
        vec![80, 8080, 9090]
    );
    assert_eq!(ports_from_query(None).unwrap(), Vec::<u16>::new());
    assert!(ports_from_query(Some("port=0")).is_err());
    assert!(ports_from_query(Some("port=70000")).is_err());
    assert!(ports_from_query(Some("port=")).is_err());
}
