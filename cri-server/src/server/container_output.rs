//! A container's output into its log file: the pump, where it resumes, and
//! the acknowledgements that let the agent forget what the file holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use hull_proto::client::AgentClient;
use hull_proto::v1 as agent;
use tokio::sync::{broadcast, watch};

use super::CriService;
use super::sandbox_lifecycle::agent_error;
use crate::error::CriError;
use crate::pod::live::{LivePod, OutputTee};
use crate::pod::logs::{self, LogError, OutputCursor, StreamOffsets};
use crate::store::container::ContainerRecord;

/// How long a new reader waits for the agent to let go of a dead one.
const PREVIOUS_READER_GRACE: Duration = Duration::from_secs(5);

impl CriService {
    /// Starts writing the container's output to its log file, if it has
    /// one, from where the file ends (see [`OutputCursor`]): output the
    /// process wrote while no hulld read it, or that a killed hulld had
    /// received but not written, waits in the guest for this reader.
    pub(super) async fn attach_log(
        &self,
        pod: &LivePod,
        container: &ContainerRecord,
    ) -> Result<(), CriError> {
        let id = &container.metadata.id;
        if container.metadata.log_path.is_empty() {
            return Ok(());
        }
        let cursor_path = self.pod_paths(&pod.id).output_offsets(id);
        let cursor = OutputCursor::open(&cursor_path).map_err(|source| CriError::Log {
            container: id.clone(),
            source: LogError::Offsets {
                path: cursor_path.clone(),
                source,
            },
        })?;
        let [stdout_offset, stderr_offset] = cursor.written();
        let request = agent::ReadOutputRequest {
            container_id: id.clone(),
            exec_id: String::new(),
            stdout_offset,
            stderr_offset,
            acknowledges: true,
        };
        // After a crash of hulld the agent may not have noticed yet that
        // the previous reader's connection is gone (FAILED_PRECONDITION:
        // another reader is attached).
        let deadline = Instant::now() + PREVIOUS_READER_GRACE;
        let output = loop {
            match pod.agent().read_output(request.clone()).await {
                Ok(response) => break response.into_inner(),
                Err(status)
                    if status.code() == tonic::Code::FailedPrecondition
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) => {
                    return Err(agent_error(
                        &pod.id,
                        "attach to the container's output",
                        status,
                    ));
                }
            }
        };
        let (acknowledgements, written) = watch::channel(cursor.written());
        let cursor = cursor.acknowledging_to(acknowledgements);
        let (output, tee) = tee_output(output);
        let pump = logs::spawn_log_pump(container.metadata.log_path.clone().into(), output, cursor)
            .map_err(|source| CriError::Log {
                container: id.clone(),
                source,
            })?;
        spawn_acknowledger(pod.agent(), id.clone(), written);
        pod.with_container(id, |c| {
            c.log = Some(Arc::new(pump));
            c.output_tee = Some(tee);
        });
        Ok(())
    }
}

/// Chunks of the container's output the log pump may be ahead of a slow
/// attach client before that client misses some (the log never waits for
/// an attach client).
const ATTACH_BACKLOG: usize = 256;

/// Passes `output` through, copying each chunk to attach sessions while any
/// is subscribed.
fn tee_output<S>(
    output: S,
) -> (
    impl futures::Stream<Item = Result<agent::OutputChunk, tonic::Status>> + Send + Unpin + 'static,
    OutputTee,
)
where
    S: futures::Stream<Item = Result<agent::OutputChunk, tonic::Status>> + Send + Unpin + 'static,
{
    let (sender, _) = broadcast::channel(ATTACH_BACKLOG);
    let tee = sender.downgrade();
    let output = output.inspect(move |item| {
        if let Ok(chunk) = item
            && sender.receiver_count() > 0
        {
            let _ = sender.send(Arc::new(chunk.clone()));
        }
    });
    (output, tee)
}

/// Tells the agent each new position the log file has reached, the latest
/// one when several came meanwhile, until the pump ends.
fn spawn_acknowledger(
    mut agent: AgentClient,
    container_id: String,
    mut written: watch::Receiver<StreamOffsets>,
) {
    tokio::spawn(async move {
        while written.changed().await.is_ok() {
            let [stdout_offset, stderr_offset] = *written.borrow_and_update();
            let acknowledged = agent
                .acknowledge_output(agent::AcknowledgeOutputRequest {
                    container_id: container_id.clone(),
                    exec_id: String::new(),
                    stdout_offset,
                    stderr_offset,
                })
                .await;
            if let Err(status) = acknowledged {
                // The next reader resumes from the recorded offsets anyway.
                tracing::debug!(
                    container = container_id,
                    error = status.message(),
                    "acknowledging container output failed"
                );
                if status.code() == tonic::Code::NotFound {
                    return;
                }
            }
        }
    });
}
