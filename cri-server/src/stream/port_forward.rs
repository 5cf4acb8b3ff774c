//! Port-forward, whatever the transport: one client connection to a port
//! becomes one `PortForward` call to the pod's agent, which connects to the
//! port inside the pod's network namespace (the VM's), so servers bound to
//! the pod's loopback are reachable and the node's network plays no part.
//!
//! Backpressure runs end to end: the client's bytes are read only as fast as
//! the agent takes them (gRPC flow control over vsock, then the socket in
//! the guest), and the pod's bytes only as fast as the client's stream
//! takes them.

use std::sync::Arc;

use bytes::Bytes;
use hull_proto::limits::MAX_PORT_FORWARD_INPUT_BYTES;
use hull_proto::v1 as agent;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::server::CriService;

/// One forwarded connection's streams, as the transport hands them over.
pub struct PortStreams {
    /// Bytes from the client; the channel closes at the client's end of
    /// data (its half-close).
    pub from_client: mpsc::Receiver<Bytes>,
    /// Bytes for the client.
    pub to_client: mpsc::Sender<Bytes>,
}

/// Connects `streams` to `port` in pod `pod_id` until the pod's server
/// closes, the connection breaks or the client goes away. The error, if
/// any, is the text for the client's error stream.
pub async fn forward_to_pod(
    service: Arc<CriService>,
    pod_id: String,
    port: u16,
    streams: PortStreams,
) -> Result<(), String> {
    let failed = |why: String| format!("error forwarding port {port} to pod {pod_id}: {why}");
    let pod = service
        .ready_pod(&pod_id)
        .map_err(|err| failed(err.to_string()))?;
    let PortStreams {
        from_client,
        to_client,
    } = streams;
    let first = agent::PortForwardInput {
        port: u32::from(port),
        data: Vec::new(),
    };
    let rest = futures::StreamExt::flat_map(ReceiverStream::new(from_client), |data| {
        let pieces: Vec<Bytes> = (0..data.len())
            .step_by(MAX_PORT_FORWARD_INPUT_BYTES)
            .map(|at| data.slice(at..(at + MAX_PORT_FORWARD_INPUT_BYTES).min(data.len())))
            .collect();
        futures::stream::iter(pieces)
    })
    .map(move |data| agent::PortForwardInput {
        port: u32::from(port),
        data: data.to_vec(),
    });
    let input = tokio_stream::once(first).chain(rest);
    let mut output = pod
        .agent()
        .port_forward(input)
        .await
        .map_err(|status| failed(status.message().to_string()))?
        .into_inner();
    match output.next().await {
        Some(Ok(first)) => hull_proto::validate::port_forward_connected(&first)
            .map_err(|err| failed(format!("the pod's agent answered badly: {err}")))?,
        Some(Err(status)) => return Err(failed(status.message().to_string())),
        None => {
            return Err(failed(
                "the pod's agent ended the call before connecting".into(),
            ));
        }
    }
    tracing::debug!(pod = pod_id, port, "port-forward connected");
    while let Some(message) = output.next().await {
        let message = message.map_err(|status| failed(status.message().to_string()))?;
        let data = hull_proto::validate::port_forward_data(&message)
            .map_err(|err| failed(format!("the pod's agent sent bad data: {err}")))?;
        if to_client.send(Bytes::copy_from_slice(data)).await.is_err() {
            // The client is gone; dropping the call closes the connection
            // in the pod.
            tracing::debug!(pod = pod_id, port, "port-forward client went away");
            return Ok(());
        }
    }
    tracing::debug!(
        pod = pod_id,
        port,
        "port-forward connection closed by the pod"
    );
    Ok(())
}
