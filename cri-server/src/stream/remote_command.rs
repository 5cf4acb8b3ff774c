//! Exec and attach sessions, whatever the transport: the transport (SPDY or
//! WebSocket) hands over [`CommandStreams`], and these functions drive the
//! pod's agent until the command ends or the client goes away.
//!
//! Backpressure runs end to end for exec: output is read from the agent only
//! as fast as the client's stream takes it (bounded channels here, HTTP/2
//! flow control over vsock, the pipe in the guest), and stdin is read from
//! the client only as fast as the agent takes it. Attach shares the
//! container's output with its log: the log never waits for an attach
//! client, and a client that falls more than a bounded backlog behind
//! misses output (logged).

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use hull_proto::v1 as agent;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::status::{Outcome, TerminalSize};
use super::{AttachTarget, ExecTarget};
use crate::error::CriError;
use crate::pod::live::LivePod;
use crate::server::{CriService, kill_exec, new_id};
use crate::store::container::ContainerRecord;

/// Largest stdin chunk sent to the agent in one message.
const STDIN_CHUNK: usize = hull_proto::limits::MAX_STDIO_CHUNK_BYTES;

/// The client's side of an exec or attach session, as the transport
/// delivers it. A `None` stream was not asked for.
pub struct CommandStreams {
    /// The client's stdin; the channel closes at the client's EOF.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
    /// Resolves when the client's connection has ended.
    pub client_gone: BoxFuture<'static, ()>,
}

impl CriService {
    /// The container a streaming session is about, if it runs now, and its
    /// pod. Checked when the URL is issued and again when it is used.
    pub fn running_container(
        &self,
        container_id: &str,
        action: &'static str,
    ) -> Result<(ContainerRecord, Arc<LivePod>), CriError> {
        let container = self.containers.lookup(container_id)?;
        if !container.status.state.can_exec() {
            return Err(CriError::WrongState {
                kind: "container",
                id: container.metadata.id.clone(),
                state: container.status.state.name(),
                action,
            });
        }
        let pod = self.ready_pod(&container.metadata.sandbox_id)?;
        Ok((container, pod))
    }
}

/// Runs `target`'s command in its container and relays its stdio until it
/// exits (its exit code is the outcome) or the client goes away (the
/// command is killed).
pub async fn run_exec(
    service: Arc<CriService>,
    target: ExecTarget,
    streams: CommandStreams,
) -> Outcome {
    let (container, pod) = match service.running_container(&target.container_id, "exec in it") {
        Ok(found) => found,
        Err(err) => return Outcome::Failure(err.to_string()),
    };
    let container_id = container.metadata.id;
    let exec_id = format!("stream-{}", &new_id()[..16]);
    let process = serde_json::json!({ "args": target.cmd, "terminal": target.tty });
    let started = pod
        .agent()
        .exec_process(agent::ExecProcessRequest {
            container_id: container_id.clone(),
            exec_id: exec_id.clone(),
            process_json: process.to_string().into_bytes(),
            stdin: target.stdin,
        })
        .await;
    if let Err(status) = started {
        return Outcome::Failure(format!(
            "cannot start {:?} in container {container_id}: {}",
            target.cmd,
            status.message()
        ));
    }
    tracing::info!(container = container_id, exec_id, cmd = ?target.cmd, tty = target.tty, "streaming exec started");
    let process = Process {
        pod: pod.clone(),
        container_id: container_id.clone(),
        exec_id: exec_id.clone(),
    };
    let helpers = process.spawn_input(streams.stdin, streams.resize, true);
    let relayed = match process.read_output().await {
        Ok(output) => {
            relay(
                output,
                streams.stdout,
                streams.stderr,
                streams.client_gone,
                &container_id,
            )
            .await
        }
        Err(message) => Relay::Failed(format!(
            "cannot read the output of {:?}: {message}",
            target.cmd
        )),
    };
    helpers.abort();
    let outcome = match relayed {
        Relay::Ended => process.exit_outcome(&target.cmd).await,
        Relay::ClientGone => {
            tracing::info!(
                container = container_id,
                exec_id,
                "streaming exec client went away; killing the command"
            );
            process.kill().await;
            Outcome::Failure("the client went away".to_string())
        }
        Relay::Failed(message) => {
            process.kill().await;
            Outcome::Failure(message)
        }
    };
    tracing::info!(container = container_id, exec_id, outcome = ?outcome, "streaming exec ended");
    outcome
}

/// Relays a running container's stdio until its output ends (it exited) or
/// the client goes away.
pub async fn run_attach(
    service: Arc<CriService>,
    target: AttachTarget,
    streams: CommandStreams,
) -> Outcome {
    let (container, pod) = match service.running_container(&target.container_id, "attach to it") {
        Ok(found) => found,
        Err(err) => return Outcome::Failure(err.to_string()),
    };
    let container_id = container.metadata.id.clone();
    let config = &container.metadata.config;
    let process = Process {
        pod: pod.clone(),
        container_id: container_id.clone(),
        exec_id: String::new(),
    };
    // The container's stdin stays open after this client's EOF unless the
    // container asked for stdin_once.
    let stdin = if config.stdin { streams.stdin } else { None };
    let helpers = process.spawn_input(stdin, streams.resize, config.stdin_once);
    tracing::info!(
        container = container_id,
        tty = config.tty,
        "streaming attach started"
    );
    // Subscribe through a strong sender held only for this statement: the
    // log pump's must stay the only one, or the channel would never close
    // when the container's output ends.
    let subscription = pod
        .with_container(&container_id, |c| c.output_tee.clone())
        .and_then(|tee| tee.upgrade())
        .map(|sender| sender.subscribe());
    let output: Result<OutputStream, String> = match subscription {
        // The log pump reads the output: share it.
        Some(receiver) => Ok(Box::pin(subscribe(receiver, container_id.clone()))),
        // No log file (or its pump is gone): read the output directly.
        None => process
            .read_output()
            .await
            .map_err(|message| format!("cannot read the container's output: {message}")),
    };
    let relayed = match output {
        Ok(output) => {
            relay(
                output,
                streams.stdout,
                streams.stderr,
                streams.client_gone,
                &container_id,
            )
            .await
        }
        Err(message) => Relay::Failed(message),
    };
    helpers.abort();
    let outcome = match relayed {
        Relay::Ended | Relay::ClientGone => Outcome::Success,
        Relay::Failed(message) => Outcome::Failure(message),
    };
    tracing::info!(container = container_id, outcome = ?outcome, "streaming attach ended");
    outcome
}

/// A broadcast subscription as a stream of chunks; a lagging subscriber
/// skips what it missed.
fn subscribe(
    mut receiver: broadcast::Receiver<Arc<agent::OutputChunk>>,
    container_id: String,
) -> impl futures::Stream<Item = Result<Arc<agent::OutputChunk>, tonic::Status>> + Send + Unpin {
    async_stream_from(move |sender| async move {
        loop {
            match receiver.recv().await {
                Ok(chunk) => {
                    if sender.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        container = container_id,
                        missed,
                        "attach client too slow: output chunks skipped (the log has them)"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

/// A stream fed by a task through a small channel.
fn async_stream_from<T, F, Fut>(producer: F) -> ReceiverStream<T>
where
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = mpsc::channel(4);
    tokio::spawn(producer(sender));
    ReceiverStream::new(receiver)
}

/// Output chunks of a process, from the agent or the log pump's tee.
type OutputStream =
    futures::stream::BoxStream<'static, Result<Arc<agent::OutputChunk>, tonic::Status>>;

/// How relaying output ended.
enum Relay {
    /// The process's output ended.
    Ended,
    ClientGone,
    Failed(String),
}

/// Copies output chunks to the client's stdout and stderr. Output of a
/// stream the client did not ask for is read and dropped.
async fn relay<S>(
    mut output: S,
    stdout: Option<mpsc::Sender<Bytes>>,
    stderr: Option<mpsc::Sender<Bytes>>,
    client_gone: BoxFuture<'static, ()>,
    container_id: &str,
) -> Relay
where
    S: futures::Stream<Item = Result<Arc<agent::OutputChunk>, tonic::Status>> + Unpin,
{
    let mut client_gone = client_gone;
    loop {
        let next = tokio::select! {
            next = output.next() => next,
            () = &mut client_gone => return Relay::ClientGone,
        };
        let chunk = match next {
            None => return Relay::Ended,
            Some(Ok(chunk)) => chunk,
            Some(Err(status)) => {
                return Relay::Failed(format!("reading output failed: {}", status.message()));
            }
        };
        let stream = match hull_proto::validate::output_chunk(&chunk) {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(
                    container = container_id,
                    error = %err,
                    "the agent sent a bad output chunk"
                );
                return Relay::Failed(format!("the pod's agent sent bad output: {err}"));
            }
        };
        let sink = match stream {
            agent::OutputStream::Stderr => &stderr,
            _ => &stdout,
        };
        let Some(sink) = sink else { continue };
        if chunk.data.is_empty() {
            continue;
        }
        let data = Bytes::copy_from_slice(&chunk.data);
        tokio::select! {
            sent = sink.send(data) => {
                if sent.is_err() {
                    return Relay::ClientGone;
                }
            }
            () = &mut client_gone => return Relay::ClientGone,
        }
    }
}

/// The process a session drives: an exec'd process, or the container's own
/// (empty exec id).
struct Process {
    pod: Arc<LivePod>,
    container_id: String,
    exec_id: String,
}

/// The tasks feeding a process's stdin and terminal size.
struct InputTasks(Vec<tokio::task::JoinHandle<()>>);

impl InputTasks {
    fn abort(self) {
        for task in self.0 {
            task.abort();
        }
    }
}

impl Process {
    /// Starts copying the client's stdin (closing the process's stdin at
    /// the client's EOF if `close_at_eof`) and terminal sizes to the agent.
    fn spawn_input(
        &self,
        stdin: Option<mpsc::Receiver<Bytes>>,
        resize: Option<mpsc::Receiver<TerminalSize>>,
        close_at_eof: bool,
    ) -> InputTasks {
        let mut tasks = Vec::new();
        if let Some(stdin) = stdin {
            let mut agent = self.pod.agent();
            let (container_id, exec_id) = (self.container_id.clone(), self.exec_id.clone());
            tasks.push(tokio::spawn(async move {
                let ids = (container_id.clone(), exec_id.clone());
                let pieces = futures::StreamExt::flat_map(ReceiverStream::new(stdin), |data| {
                    let pieces: Vec<Bytes> = (0..data.len())
                        .step_by(STDIN_CHUNK)
                        .map(|at| data.slice(at..(at + STDIN_CHUNK).min(data.len())))
                        .collect();
                    futures::stream::iter(pieces)
                });
                let chunks = pieces.map(move |data| agent::StdinChunk {
                    container_id: ids.0.clone(),
                    exec_id: ids.1.clone(),
                    data: data.to_vec(),
                });
                if let Err(status) = agent.write_stdin(chunks).await {
                    tracing::debug!(
                        container = container_id,
                        exec_id,
                        error = status.message(),
                        "writing stdin ended with an error"
                    );
                }
                if close_at_eof {
                    let closed = agent
                        .close_stdin(agent::CloseStdinRequest {
                            container_id: container_id.clone(),
                            exec_id: exec_id.clone(),
                        })
                        .await;
                    if let Err(status) = closed {
                        tracing::debug!(
                            container = container_id,
                            exec_id,
                            error = status.message(),
                            "closing stdin failed"
                        );
                    }
                }
            }));
        }
        if let Some(mut resize) = resize {
            let mut agent = self.pod.agent();
            let (container_id, exec_id) = (self.container_id.clone(), self.exec_id.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(size) = resize.recv().await {
                    let resized = agent
                        .resize_tty(agent::ResizeTtyRequest {
                            container_id: container_id.clone(),
                            exec_id: exec_id.clone(),
                            rows: u32::from(size.height),
                            columns: u32::from(size.width),
                        })
                        .await;
                    if let Err(status) = resized {
                        tracing::debug!(
                            container = container_id,
                            exec_id,
                            error = status.message(),
                            "terminal resize failed"
                        );
                    }
                }
            }));
        }
        InputTasks(tasks)
    }

    /// The process's output straight from the agent (for a process whose
    /// output nobody else reads); the error is the agent's message.
    async fn read_output(&self) -> Result<OutputStream, String> {
        let output = self
            .pod
            .agent()
            .read_output(agent::ReadOutputRequest {
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
                ..Default::default()
            })
            .await
            .map_err(|status| status.message().to_string())?;
        Ok(Box::pin(output.into_inner().map(|item| item.map(Arc::new))))
    }

    /// Waits for the exec'd process and describes its exit.
    async fn exit_outcome(&self, cmd: &[String]) -> Outcome {
        let waited = self
            .pod
            .agent()
            .wait_process(agent::WaitProcessRequest {
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
            })
            .await;
        let reply = match waited {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                return Outcome::Failure(format!("cannot wait for {cmd:?}: {}", status.message()));
            }
        };
        match hull_proto::validate::wait_reply(&reply) {
            Ok(exit) if exit.exit_code == 0 => Outcome::Success,
            Ok(exit) => Outcome::ExitCode {
                code: exit.exit_code,
                cmd: cmd.to_vec(),
            },
            Err(err) => Outcome::Failure(format!("the pod's agent sent a bad exit status: {err}")),
        }
    }

    /// Kills the exec'd process and reaps it in the agent.
    async fn kill(&self) {
        kill_exec(&self.pod, &self.container_id, &self.exec_id).await;
    }
}
