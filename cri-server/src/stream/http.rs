//! The streaming server's HTTP/1.1 side: `/<kind>/<token>` URLs, the token
//! check, protocol negotiation and the upgrade to SPDY/3.1 or WebSocket.
//!
//! Answers before an upgrade: 404 for an unknown, used or expired token (or
//! a path that is not a streaming URL), 400 for a request that asks for no
//! known upgrade or protocol, 409 when the container or pod is no longer
//! running, 503 when `max_sessions` sessions are open already.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::Instrument;

use super::idle::{Activity, Watched};
use super::status::{self, Outcome};
use super::websocket::{self, Wanted};
use super::{StreamKind, StreamRequest, over_spdy, port_forward, remote_command};
use crate::config::StreamSettings;
use crate::server::CriService;

/// The header SPDY clients name their protocols in (one value each, or
/// comma-separated).
const STREAM_PROTOCOL_HEADER: &str = "x-stream-protocol-version";

/// Binds the streaming server's listener as configured.
pub async fn bind(settings: &StreamSettings) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::new(settings.address, settings.port)).await
}

/// Serves streaming sessions on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, service: Arc<CriService>) {
    let settings = service.config.stream.clone();
    let sessions = Arc::new(Semaphore::new(settings.max_sessions));
    loop {
        let (connection, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "streaming server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = service.clone();
        let sessions = sessions.clone();
        let settings = settings.clone();
        tokio::spawn(async move {
            let handler = service_fn(move |request| {
                let service = service.clone();
                let sessions = sessions.clone();
                let settings = settings.clone();
                async move {
                    Ok::<_, Infallible>(handle(request, service, sessions, settings, peer).await)
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(connection), handler)
                .with_upgrades()
                .await;
            if let Err(err) = served {
                tracing::debug!(%peer, error = %err, "streaming connection ended with an error");
            }
        });
    }
}

fn plain(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    let mut message = message.into();
    message.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(message)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Every value of `name`, comma-separated lists split.
fn header_list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
        .collect()
}

enum Transport {
    Spdy,
    WebSocket,
}

fn transport_of(headers: &HeaderMap) -> Option<Transport> {
    let upgrade = header_list(headers, "upgrade");
    if upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket")) {
        Some(Transport::WebSocket)
    } else if upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1")) {
        Some(Transport::Spdy)
    } else {
        None
    }
}

async fn handle(
    mut request: Request<Incoming>,
    service: Arc<CriService>,
    sessions: Arc<Semaphore>,
    settings: StreamSettings,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let (Some(kind), Some(token)) = (
        segments.next().and_then(StreamKind::from_path_segment),
        segments.next(),
    ) else {
        return plain(StatusCode::NOT_FOUND, "not a streaming URL");
    };
    let Ok(permit) = sessions.clone().try_acquire_owned() else {
        tracing::warn!(%peer, max = settings.max_sessions, "streaming session refused: too many open");
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "hulld serves {} streaming sessions already; try again later",
                settings.max_sessions
            ),
        );
    };
    let stream_request = match service.streaming.tokens.redeem(token, kind) {
        Ok(stream_request) => stream_request,
        Err(err) => {
            tracing::info!(%peer, path = kind.path_segment(), "streaming URL refused: {err}");
            return plain(StatusCode::NOT_FOUND, err.to_string());
        }
    };
    let Some(transport) = transport_of(request.headers()) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "a streaming URL must be opened with an upgrade to SPDY/3.1 or websocket",
        );
    };
    // The object may have gone since the URL was handed out.
    let still_there = match &stream_request {
        StreamRequest::Exec(target) => service
            .running_container(&target.container_id, "exec in it")
            .map(drop),
        StreamRequest::Attach(target) => service
            .running_container(&target.container_id, "attach to it")
            .map(drop),
        StreamRequest::PortForward(target) => service.ready_pod(&target.pod_id).map(drop),
    };
    if let Err(err) = still_there {
        return plain(StatusCode::CONFLICT, err.to_string());
    }
    let upgrade = hyper::upgrade::on(&mut request);
    let span = session_span(&stream_request, peer);
    let session = Session {
        service,
        settings,
        permit,
        upgrade,
    };
    match transport {
        Transport::Spdy => session.spdy(request.headers(), stream_request, span),
        Transport::WebSocket => session.websocket(
            request.headers(),
            request.uri().query(),
            stream_request,
            span,
        ),
    }
}

fn session_span(request: &StreamRequest, peer: SocketAddr) -> tracing::Span {
    match request {
        StreamRequest::Exec(target) => {
            tracing::info_span!("exec", container = target.container_id, %peer)
        }
        StreamRequest::Attach(target) => {
            tracing::info_span!("attach", container = target.container_id, %peer)
        }
        StreamRequest::PortForward(target) => {
            tracing::info_span!("port_forward", pod = target.pod_id, %peer)
        }
    }
}

/// One session between its token check and its upgrade.
struct Session {
    service: Arc<CriService>,
    settings: StreamSettings,
    permit: OwnedSemaphorePermit,
    upgrade: hyper::upgrade::OnUpgrade,
}

/// The upgraded connection, with its traffic watched for the idle timeout.
type Upgraded = Watched<TokioIo<hyper::upgrade::Upgraded>>;

impl Session {
    fn spdy(
        self,
        headers: &HeaderMap,
        request: StreamRequest,
        span: tracing::Span,
    ) -> Response<Full<Bytes>> {
        let offered = header_list(headers, STREAM_PROTOCOL_HEADER);
        let protocol = match &request {
            StreamRequest::PortForward(_) => {
                status::negotiate(&offered, &[status::PORT_FORWARD_V1])
            }
            // A client that names no protocol speaks the first one.
            _ if offered.is_empty() => Some(status::CHANNEL_V1),
            _ => status::negotiate(&offered, &status::SPDY_COMMAND_PROTOCOLS),
        };
        let Some(protocol) = protocol else {
            return plain(
                StatusCode::FORBIDDEN,
                format!("unable to upgrade: none of the protocols {offered:?} is supported"),
            );
        };
        let creation_timeout = Duration::from_secs(self.settings.stream_creation_timeout_secs);
        let service = self.service.clone();
        self.start(span, move |io| match request {
            StreamRequest::PortForward(target) => over_spdy::serve_port_forward(
                io,
                creation_timeout,
                pod_forwarder(service, target.pod_id),
            )
            .boxed(),
            command => {
                let (wanted, run) = command_runner(service, command);
                over_spdy::serve_command(
                    io,
                    status::command_protocol_version(protocol),
                    wanted,
                    creation_timeout,
                    run,
                )
                .boxed()
            }
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        headers.insert(STREAM_PROTOCOL_HEADER, HeaderValue::from_static(protocol));
        response
    }

    fn websocket(
        self,
        headers: &HeaderMap,
        query: Option<&str>,
        request: StreamRequest,
        span: tracing::Span,
    ) -> Response<Full<Bytes>> {
        let Some(key) = headers.get("sec-websocket-key") else {
            return plain(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing");
        };
        let accept = derive_accept_key(key.as_bytes());
        let offered = header_list(headers, "sec-websocket-protocol");
        let creation_timeout = Duration::from_secs(self.settings.stream_creation_timeout_secs);
        let service = self.service.clone();
        // (protocol answered, how the session runs)
        let (protocol, runner): (Option<&'static str>, SessionRunner) = match request {
            StreamRequest::PortForward(target) => {
                if offered
                    .iter()
                    .any(|p| p == status::SPDY_OVER_WEBSOCKET_PORT_FORWARD)
                {
                    let runner: SessionRunner = Box::new(move |io| {
                        async move {
                            let socket = accept_websocket(io).await;
                            let bytes = websocket::byte_stream(socket);
                            over_spdy::serve_port_forward(
                                bytes,
                                creation_timeout,
                                pod_forwarder(service, target.pod_id),
                            )
                            .await;
                        }
                        .boxed()
                    });
                    (Some(status::SPDY_OVER_WEBSOCKET_PORT_FORWARD), runner)
                } else {
                    let ports = match websocket::ports_from_query(query) {
                        Ok(ports) if ports.is_empty() => target.ports.clone(),
                        Ok(ports) => ports,
                        Err(message) => return plain(StatusCode::BAD_REQUEST, message),
                    };
                    if ports.is_empty() {
                        return plain(
                            StatusCode::BAD_REQUEST,
                            "query parameter \"port\" is required",
                        );
                    }
                    let protocol =
                        status::negotiate(&offered, &[status::CHANNEL_V4, status::PORT_FORWARD_V1]);
                    if protocol.is_none() && !offered.is_empty() {
                        return plain(
                            StatusCode::BAD_REQUEST,
                            format!("none of the WebSocket protocols {offered:?} is supported"),
                        );
                    }
                    let runner: SessionRunner = Box::new(move |io| {
                        async move {
                            let socket = accept_websocket(io).await;
                            websocket::serve_port_forward(
                                socket,
                                ports,
                                pod_forwarder(service, target.pod_id),
                            )
                            .await;
                        }
                        .boxed()
                    });
                    (protocol, runner)
                }
            }
            command => {
                let protocol = status::negotiate(&offered, &status::WEBSOCKET_COMMAND_PROTOCOLS);
                if protocol.is_none() && !offered.is_empty() {
                    return plain(
                        StatusCode::BAD_REQUEST,
                        format!("none of the WebSocket protocols {offered:?} is supported"),
                    );
                }
                let version =
                    status::command_protocol_version(protocol.unwrap_or(status::CHANNEL_V1));
                let runner: SessionRunner = Box::new(move |io| {
                    async move {
                        let socket = accept_websocket(io).await;
                        let (wanted, run) = command_runner(service, command);
                        websocket::serve_command(socket, version, wanted, run).await;
                    }
                    .boxed()
                });
                (protocol, runner)
            }
        };
        self.start(span, runner);
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert("sec-websocket-accept", accept);
        }
        if let Some(protocol) = protocol {
            headers.insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
        }
        response
    }

    /// Runs the session once hyper has sent the 101 and handed the
    /// connection over; ends it when idle for too long.
    fn start<R>(self, span: tracing::Span, runner: R)
    where
        R: FnOnce(Upgraded) -> futures::future::BoxFuture<'static, ()> + Send + 'static,
    {
        let idle_timeout = Duration::from_secs(self.settings.idle_timeout_secs);
        let Session {
            permit, upgrade, ..
        } = self;
        tokio::spawn(
            async move {
                let _permit = permit;
                let upgraded = match upgrade.await {
                    Ok(upgraded) => upgraded,
                    Err(err) => {
                        tracing::debug!(error = %err, "the connection was not upgraded");
                        return;
                    }
                };
                let activity = Activity::new();
                let io = Watched::new(TokioIo::new(upgraded), activity.clone());
                tracing::debug!("streaming session started");
                tokio::select! {
                    () = runner(io) => tracing::debug!("streaming session ended"),
                    () = activity.idle(idle_timeout) => {
                        tracing::info!(idle_secs = idle_timeout.as_secs(), "streaming session closed: idle");
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// The upgraded connection as the server end of a WebSocket.
async fn accept_websocket(io: Upgraded) -> WebSocketStream<Upgraded> {
    WebSocketStream::from_raw_socket(io, Role::Server, Some(websocket::config())).await
}

/// Connects each forwarded connection to its port in pod `pod_id`, through
/// the pod's agent.
fn pod_forwarder(
    service: Arc<CriService>,
    pod_id: String,
) -> impl Fn(u16, port_forward::PortStreams) -> futures::future::BoxFuture<'static, Result<(), String>>
{
    move |port, streams| {
        port_forward::forward_to_pod(service.clone(), pod_id.clone(), port, streams).boxed()
    }
}

type SessionRunner = Box<dyn FnOnce(Upgraded) -> futures::future::BoxFuture<'static, ()> + Send>;

/// What an exec or attach session asks for, and the function that runs it.
#[allow(clippy::type_complexity)]
fn command_runner(
    service: Arc<CriService>,
    request: StreamRequest,
) -> (
    Wanted,
    impl FnOnce(remote_command::CommandStreams) -> futures::future::BoxFuture<'static, Outcome>,
) {
    let wanted = match &request {
        StreamRequest::Exec(t) => Wanted {
            stdin: t.stdin,
            stdout: t.stdout,
            stderr: t.stderr,
            tty: t.tty,
        },
        StreamRequest::Attach(t) => Wanted {
            stdin: t.stdin,
            stdout: t.stdout,
            stderr: t.stderr,
            tty: t.tty,
        },
        StreamRequest::PortForward(_) => Wanted {
            stdin: false,
            stdout: false,
            stderr: false,
            tty: false,
        },
    };
    let run = move |streams| match request {
        StreamRequest::Exec(target) => remote_command::run_exec(service, target, streams).boxed(),
        StreamRequest::Attach(target) => {
            remote_command::run_attach(service, target, streams).boxed()
        }
        StreamRequest::PortForward(_) => {
            async { Outcome::Failure("not a remote command".to_string()) }.boxed()
        }
    };
    (wanted, run)
}

#[cfg(test)]
mod tests;
