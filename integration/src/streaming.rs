//! A client for hulld's streaming URLs, as the kubelet, crictl and kubectl
//! use them: SPDY/3.1 (hull's own SPDY implementation in client role) and
//! WebSocket, for exec/attach and port-forward.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use cri_server::stream::spdy::{Headers, Role, Session, SessionLimits, Stream};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// What an exec or attach client sends and asks for.
#[derive(Clone, Debug, Default)]
pub struct CommandOptions {
    /// Sent on stdin, which is then closed; `None`: no stdin stream.
    pub stdin: Option<Vec<u8>>,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    /// Terminal sizes (width, height) sent before stdin.
    pub resize: Vec<(u16, u16)>,
    /// Keep stdin open until this much stdout arrived (for interactive
    /// sessions: a shell that must answer before it is told EOF).
    pub close_stdin_after_stdout: Option<usize>,
}

/// What an exec or attach session gave back.
#[derive(Default)]
pub struct CommandResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error stream's content: a JSON status from v4 on, text before.
    pub error: Vec<u8>,
}

impl std::fmt::Debug for CommandResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = |bytes: &[u8]| {
            let shown = &bytes[..bytes.len().min(2048)];
            format!(
                "{:?} ({} bytes)",
                String::from_utf8_lossy(shown),
                bytes.len()
            )
        };
        f.debug_struct("CommandResult")
            .field("stdout", &text(&self.stdout))
            .field("stderr", &text(&self.stderr))
            .field("error", &text(&self.error))
            .finish()
    }
}

impl CommandResult {
    /// The exit code the v4/v5 status carries: 0 on success.
    pub fn exit_code(&self) -> Result<i32> {
        let status: serde_json::Value = serde_json::from_slice(&self.error)
            .with_context(|| format!("status {:?}", String::from_utf8_lossy(&self.error)))?;
        if status["status"] == "Success" {
            return Ok(0);
        }
        status["details"]["causes"]
            .as_array()
            .and_then(|causes| causes.iter().find(|c| c["reason"] == "ExitCode"))
            .and_then(|cause| cause["message"].as_str())
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("no exit code in {status}"))
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// `http://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("not an http URL: {url}"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    Ok((authority.to_string(), path.to_string()))
}

/// Sends an HTTP/1.1 upgrade request and reads the response head. Returns
/// the connection (positioned after the head) and the status code and
/// headers, lower-cased.
pub async fn http_upgrade(
    url: &str,
    upgrade: &str,
    extra_headers: &[(&str, &str)],
) -> Result<(TcpStream, u16, Vec<(String, String)>)> {
    let (authority, path) = split_url(url)?;
    let mut connection = TcpStream::connect(&authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\nContent-Length: 0\r\n"
    );
    for (name, value) in extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    connection.write_all(head.as_bytes()).await?;
    // Byte by byte, so nothing after the head is consumed here.
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        let byte = connection
            .read_u8()
            .await
            .context("reading the response head")?;
        response.push(byte);
        if response.len() > 16 * 1024 {
            bail!("response head too long");
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Ok((connection, code, headers))
}

/// The body of a refused upgrade (for error messages in tests).
pub async fn refused_upgrade(url: &str, upgrade: &str) -> Result<(u16, String)> {
    let (mut connection, code, _) = http_upgrade(url, upgrade, &[]).await?;
    let mut body = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), connection.read(&mut body))
        .await
        .unwrap_or(Ok(0))
        .unwrap_or(0);
    Ok((code, String::from_utf8_lossy(&body[..n]).into_owned()))
}

fn stream_headers(pairs: &[(&str, &str)]) -> Result<Headers> {
    let mut headers = Headers::new();
    for (name, value) in pairs {
        headers.append(name, *value)?;
    }
    Ok(headers)
}

/// Opens a SPDY session on `url` speaking `protocol`.
pub async fn spdy_session(url: &str, protocol: &str) -> Result<Session> {
    let (connection, code, headers) =
        http_upgrade(url, "SPDY/3.1", &[("X-Stream-Protocol-Version", protocol)]).await?;
    if code != 101 {
        bail!("upgrade refused with {code}");
    }
    let agreed = headers
        .iter()
        .find(|(name, _)| name == "x-stream-protocol-version")
        .map(|(_, value)| value.as_str());
    if agreed != Some(protocol) {
        bail!("server agreed on {agreed:?}, not {protocol}");
    }
    Ok(Session::new(
        connection,
        Role::Client,
        SessionLimits::default(),
    ))
}

async fn read_all(stream: &mut Stream) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    while let Some(chunk) = stream.recv().await? {
        data.extend_from_slice(&chunk);
    }
    Ok(data)
}

/// Runs an exec or attach session over SPDY with `v4.channel.k8s.io`, the
/// way client-go does: error stream first, then stdin, stdout, stderr and
/// resize.
pub async fn spdy_command(url: &str, options: CommandOptions) -> Result<CommandResult> {
    let session = spdy_session(url, "v4.channel.k8s.io").await?;
    let mut error = session
        .open(stream_headers(&[("streamtype", "error")])?, false)
        .await?;
    let stdin = match &options.stdin {
        Some(_) => Some(
            session
                .open(stream_headers(&[("streamtype", "stdin")])?, false)
                .await?,
        ),
        None => None,
    };
    let mut stdout = match options.stdout {
        true => Some(
            session
                .open(stream_headers(&[("streamtype", "stdout")])?, true)
                .await?,
        ),
        false => None,
    };
    let mut stderr = match options.stderr && !options.tty {
        true => Some(
            session
                .open(stream_headers(&[("streamtype", "stderr")])?, true)
                .await?,
        ),
        false => None,
    };
    // The resize stream stays open for the session, as in kubectl.
    let _resize = match options.tty {
        true => {
            let mut resize = session
                .open(stream_headers(&[("streamtype", "resize")])?, false)
                .await?;
            for (width, height) in &options.resize {
                let message = serde_json::json!({ "Width": width, "Height": height });
                resize.send(message.to_string().as_bytes()).await?;
            }
            Some(resize)
        }
        false => None,
    };
    let (stdout_done, stdout_seen) = tokio::sync::watch::channel(0usize);
    let stdin_task = stdin.map(|mut stdin| {
        let data = options.stdin.clone().unwrap_or_default();
        let wait_for = options.close_stdin_after_stdout;
        let mut seen = stdout_seen.clone();
        tokio::spawn(async move {
            stdin.send(&data).await?;
            if let Some(wanted) = wait_for {
                let _ = seen.wait_for(|n| *n >= wanted).await;
            }
            stdin.finish()?;
            anyhow::Ok(stdin)
        })
    });
    let stdout_task = async {
        let mut data = Vec::new();
        if let Some(stream) = stdout.as_mut() {
            while let Some(chunk) = stream.recv().await? {
                data.extend_from_slice(&chunk);
                stdout_done.send_replace(data.len());
            }
        }
        anyhow::Ok(data)
    };
    let stderr_task = async {
        match stderr.as_mut() {
            Some(stream) => read_all(stream).await,
            None => Ok(Vec::new()),
        }
    };
    let (stdout, stderr, error) = tokio::join!(stdout_task, stderr_task, read_all(&mut error));
    if let Some(task) = stdin_task {
        task.abort();
    }
    session.close().await;
    Ok(CommandResult {
        stdout: stdout?,
        stderr: stderr?,
        error: error?,
    })
}

/// Opens a WebSocket on `url` (`http://` becomes `ws://`) offering
/// `protocols`; returns it with the protocol the server chose.
pub async fn websocket(
    url: &str,
    protocols: &[&str],
) -> Result<(WebSocketStream<TcpStream>, Option<String>)> {
    let (authority, _) = split_url(url)?;
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut request = ws_url.into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocols.join(", ").parse()?);
    let connection = TcpStream::connect(&authority).await?;
    let (socket, response) = tokio_tungstenite::client_async(request, connection)
        .await
        .context("WebSocket handshake")?;
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    Ok((socket, chosen))
}

fn binary(channel: u8, data: &[u8]) -> Message {
    let mut message = Vec::with_capacity(data.len() + 1);
    message.push(channel);
    message.extend_from_slice(data);
    Message::Binary(message.into())
}

/// Runs an exec or attach session over WebSocket with `v5.channel.k8s.io`
/// (stdin closed with the v5 close message).
pub async fn websocket_command(url: &str, options: CommandOptions) -> Result<CommandResult> {
    let (socket, chosen) = websocket(url, &["v5.channel.k8s.io", "v4.channel.k8s.io"]).await?;
    if chosen.as_deref() != Some("v5.channel.k8s.io") {
        bail!("server chose {chosen:?}");
    }
    let (mut sink, mut source) = socket.split();
    for (width, height) in &options.resize {
        let message = serde_json::json!({ "Width": width, "Height": height });
        sink.send(binary(4, message.to_string().as_bytes())).await?;
    }
    let mut stdin_pending = options.stdin.clone();
    if let Some(data) = &stdin_pending
        && options.close_stdin_after_stdout.is_none()
    {
        for piece in data.chunks(32 * 1024) {
            sink.send(binary(0, piece)).await?;
        }
        sink.send(binary(255, &[0])).await?;
        stdin_pending = None;
    } else if let Some(data) = &stdin_pending {
        sink.send(binary(0, data)).await?;
    }
    let mut result = CommandResult::default();
    while let Some(message) = source.next().await {
        match message? {
            Message::Binary(data) if !data.is_empty() => {
                match data[0] {
                    1 => result.stdout.extend_from_slice(&data[1..]),
                    2 => result.stderr.extend_from_slice(&data[1..]),
                    3 => result.error.extend_from_slice(&data[1..]),
                    _ => {}
                }
                if let (Some(_), Some(wanted)) = (&stdin_pending, options.close_stdin_after_stdout)
                    && result.stdout.len() >= wanted
                {
                    sink.send(binary(255, &[0])).await?;
                    stdin_pending = None;
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(result)
}

/// One port-forward connection over a SPDY session (`portforward.k8s.io`):
/// its data and error streams.
pub struct ForwardedConnection {
    pub data: Stream,
    pub error: Stream,
}

/// Opens the n-th connection to `port` on a port-forward session, the way
/// client-go does (error stream, then data stream, same requestID).
pub async fn spdy_forward(
    session: &Session,
    port: u16,
    request_id: u32,
) -> Result<ForwardedConnection> {
    let port = port.to_string();
    let id = request_id.to_string();
    let error = session
        .open(
            stream_headers(&[("streamtype", "error"), ("port", &port), ("requestid", &id)])?,
            false,
        )
        .await?;
    let data = session
        .open(
            stream_headers(&[("streamtype", "data"), ("port", &port), ("requestid", &id)])?,
            false,
        )
        .await?;
    Ok(ForwardedConnection { data, error })
}

impl ForwardedConnection {
    /// Sends `request`, half-closes, and reads the answer until the pod's
    /// server closes; returns it with the error stream's text.
    pub async fn round_trip(mut self, request: &[u8]) -> Result<(Vec<u8>, String)> {
        if !request.is_empty() {
            self.data.send(request).await?;
        }
        self.data.finish()?;
        let (answer, error) = tokio::join!(read_all(&mut self.data), read_all(&mut self.error));
        Ok((
            answer.unwrap_or_default(),
            String::from_utf8_lossy(&error.unwrap_or_default()).into_owned(),
        ))
    }
}

/// Forwards one connection over WebSocket (`v4.channel.k8s.io`, the ports
/// in the URL's query): sends `request` to the first port and returns what
/// came back until the session closed. Fails on text on the error channel.
pub async fn websocket_forward(url: &str, request: &[u8]) -> Result<Vec<u8>> {
    let (socket, _) = websocket(url, &["v4.channel.k8s.io"]).await?;
    let (mut sink, mut source) = socket.split();
    let mut answer = Vec::new();
    let mut greeted = [false, false];
    while let Some(message) = source.next().await {
        let Message::Binary(data) = message? else {
            continue;
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        match channel {
            // The first message on each channel names the port.
            0 | 1 if !greeted[usize::from(channel)] => {
                greeted[usize::from(channel)] = true;
                if greeted == [true, true] {
                    sink.send(binary(0, request)).await?;
                }
            }
            0 => answer.extend_from_slice(payload),
            1 => bail!("port-forward error: {}", String::from_utf8_lossy(payload)),
            _ => {}
        }
    }
    Ok(answer)
}
