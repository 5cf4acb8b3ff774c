//! GetContainerEvents: a stream of container lifecycle events.

use std::pin::Pin;

use futures::Stream;
use k8s_cri::v1 as cri;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::CriService;

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
