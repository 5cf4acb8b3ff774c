//! GetContainerEvents: a stream of container lifecycle events.

use std::pin::Pin;

use futures::Stream;
use k8s_cri::v1 as cri;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::{CriService, now_nanos};

/// The stream type GetContainerEvents returns.
pub type ContainerEventStream =
    Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, tonic::Status>> + Send>>;

impl CriService {
    /// Subscribes to every container event published from now on. A client
    /// that falls too far behind is told how many events it missed.
    pub fn container_events(&self, _: cri::GetEventsRequest) -> ContainerEventStream {
        let stream = BroadcastStream::new(self.events.subscribe()).map(|item| match item {
            Ok(event) => Ok(event),
            Err(BroadcastStreamRecvError::Lagged(missed)) => Err(tonic::Status::data_loss(
                format!("the client fell behind and missed {missed} container events; list containers to resynchronize"),
            )),
        });
        Box::pin(stream)
    }
}

impl CriService {
    /// Tells GetContainerEvents subscribers that a container changed, with
    /// its pod's and its siblings' current status (what the kubelet's
    /// evented PLEG reads).
    pub fn publish_container_event(&self, container_id: &str, kind: cri::ContainerEventType) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let sandbox_id = self
            .containers
            .get(container_id)
            .map(|c| c.metadata.sandbox_id)
            .unwrap_or_default();
        let pod_sandbox_status = self.sandboxes.get(&sandbox_id).map(|s| s.to_cri_status());
        let containers_statuses = self
            .containers
            .list()
            .into_iter()
            .filter(|c| c.metadata.sandbox_id == sandbox_id)
            .map(|c| c.to_cri_status())
            .collect();
        let _ = self.events.send(cri::ContainerEventResponse {
            container_id: container_id.to_string(),
            container_event_type: kind as i32,
            created_at: now_nanos(),
            pod_sandbox_status,
            containers_statuses,
        });
    }
}
