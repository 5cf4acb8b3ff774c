//! The gRPC service: validates each request, calls the module that does the
//! work, and maps its error to a status (in `status`).

mod status;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use hull_proto::limits::MAX_STDIO_CHUNK_BYTES;
use hull_proto::v1::agent_server::Agent;
use hull_proto::{PROTOCOL_VERSION, v1, validate};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::container::Containers;
use crate::files::FileTree;
use crate::pid1::{self, PowerAction};
use crate::{output, port_forward, sandbox, storage};

/// How long an exec'd process stays known after its exit was returned.
const WAITED_EXEC_GRACE: Duration = Duration::from_secs(60);

/// The agent's gRPC service.
pub struct AgentService {
    containers: Arc<Containers>,
}

impl AgentService {
    pub fn new(containers: Arc<Containers>) -> Self {
        Self { containers }
    }
}

fn invalid(err: validate::ValidationError) -> Status {
    Status::invalid_argument(err.to_string())
}

fn ids(container_id: &str, exec_id: &str) -> Result<(), Status> {
    validate::container_id(container_id).map_err(invalid)?;
    validate::exec_id(exec_id).map_err(invalid)
}

fn uptime_seconds() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn health(
        &self,
        _: Request<v1::HealthRequest>,
    ) -> Result<Response<v1::HealthResponse>, Status> {
        Ok(Response::new(v1::HealthResponse {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol_version: PROTOCOL_VERSION,
            uptime_seconds: uptime_seconds(),
        }))
    }

    async fn setup_sandbox(
        &self,
        request: Request<v1::SetupSandboxRequest>,
    ) -> Result<Response<v1::SetupSandboxResponse>, Status> {
        sandbox::setup(request.get_ref())?;
        Ok(Response::new(v1::SetupSandboxResponse {}))
    }

    async fn mount_image(
        &self,
        request: Request<v1::MountImageRequest>,
    ) -> Result<Response<v1::MountImageResponse>, Status> {
        let target = storage::mount_image(request.get_ref())?;
        tracing::info!(mount_point = %target.display(), fs_type = %request.get_ref().fs_type, "image mounted");
        Ok(Response::new(v1::MountImageResponse {}))
    }

    async fn unmount_image(
        &self,
        request: Request<v1::UnmountImageRequest>,
    ) -> Result<Response<v1::UnmountImageResponse>, Status> {
        storage::unmount_image(&request.get_ref().mount_point)?;
        Ok(Response::new(v1::UnmountImageResponse {}))
    }

    async fn copy_file(
        &self,
        request: Request<v1::CopyFileRequest>,
    ) -> Result<Response<v1::CopyFileResponse>, Status> {
        FileTree::guest().copy(request.get_ref())?;
        Ok(Response::new(v1::CopyFileResponse {}))
    }

    async fn read_file(
        &self,
        request: Request<v1::ReadFileRequest>,
    ) -> Result<Response<v1::ReadFileResponse>, Status> {
        Ok(Response::new(FileTree::guest().read(request.get_ref())?))
    }

    async fn remove_file(
        &self,
        request: Request<v1::RemoveFileRequest>,
    ) -> Result<Response<v1::RemoveFileResponse>, Status> {
        FileTree::guest().remove(&request.get_ref().path)?;
        Ok(Response::new(v1::RemoveFileResponse {}))
    }

    async fn create_container(
        &self,
        request: Request<v1::CreateContainerRequest>,
    ) -> Result<Response<v1::CreateContainerResponse>, Status> {
        let pid = self.containers.create(request.get_ref())?;
        Ok(Response::new(v1::CreateContainerResponse { pid }))
    }

    async fn start_container(
        &self,
        request: Request<v1::StartContainerRequest>,
    ) -> Result<Response<v1::StartContainerResponse>, Status> {
        let id = &request.get_ref().container_id;
        ids(id, "")?;
        self.containers.start(id)?;
        Ok(Response::new(v1::StartContainerResponse {}))
    }

    async fn signal_process(
        &self,
        request: Request<v1::SignalProcessRequest>,
    ) -> Result<Response<v1::SignalProcessResponse>, Status> {
        let r = request.get_ref();
        ids(&r.container_id, &r.exec_id)?;
        self.containers
            .signal(&r.container_id, &r.exec_id, r.signal, r.all)?;
        Ok(Response::new(v1::SignalProcessResponse {}))
    }

    async fn wait_process(
        &self,
        request: Request<v1::WaitProcessRequest>,
    ) -> Result<Response<v1::WaitProcessResponse>, Status> {
        let r = request.get_ref();
        ids(&r.container_id, &r.exec_id)?;
        let process = self.containers.process(&r.container_id, &r.exec_id)?;
        let status = process.wait().await;
        if !r.exec_id.is_empty() {
            // Forgetting a waited-for exec keeps a container probed every
            // few seconds from growing the agent's tables; the grace lets
            // a reader that attaches after the wait still drain its output.
            let containers = self.containers.clone();
            let (container_id, exec_id) = (r.container_id.clone(), r.exec_id.clone());
            tokio::spawn(async move {
                tokio::time::sleep(WAITED_EXEC_GRACE).await;
                containers.forget_exec(&container_id, &exec_id);
            });
        }
        Ok(Response::new(v1::WaitProcessResponse {
            status: Some(status),
        }))
    }

    async fn delete_container(
        &self,
        request: Request<v1::DeleteContainerRequest>,
    ) -> Result<Response<v1::DeleteContainerResponse>, Status> {
        let r = request.get_ref();
        ids(&r.container_id, "")?;
        self.containers.delete(&r.container_id, r.force)?;
        Ok(Response::new(v1::DeleteContainerResponse {}))
    }

    async fn update_container(
        &self,
        request: Request<v1::UpdateContainerRequest>,
    ) -> Result<Response<v1::UpdateContainerResponse>, Status> {
        let r = request.get_ref();
        ids(&r.container_id, "")?;
        self.containers.update(&r.container_id, &r.resources_json)?;
        Ok(Response::new(v1::UpdateContainerResponse {}))
    }

    async fn container_status(
        &self,
        request: Request<v1::ContainerStatusRequest>,
    ) -> Result<Response<v1::ContainerStatusResponse>, Status> {
        let id = &request.get_ref().container_id;
        ids(id, "")?;
        Ok(Response::new(self.containers.status(id)?))
    }

    async fn exec_process(
        &self,
        request: Request<v1::ExecProcessRequest>,
    ) -> Result<Response<v1::ExecProcessResponse>, Status> {
        let pid = self.containers.exec(request.get_ref())?;
        Ok(Response::new(v1::ExecProcessResponse { pid }))
    }

    type ReadOutputStream = ReceiverStream<Result<v1::OutputChunk, Status>>;

    async fn read_output(
        &self,
        request: Request<v1::ReadOutputRequest>,
    ) -> Result<Response<Self::ReadOutputStream>, Status> {
        let r = request.get_ref();
        ids(&r.container_id, &r.exec_id)?;
        let process = self.containers.process(&r.container_id, &r.exec_id)?;
        let output = process.stdio.attach_output()?;
        let held = process.stdio.held_output();
        let next = held.resume([r.stdout_offset, r.stderr_offset])?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(output::pump(output, held, next, r.acknowledges, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn acknowledge_output(
        &self,
        request: Request<v1::AcknowledgeOutputRequest>,
    ) -> Result<Response<v1::AcknowledgeOutputResponse>, Status> {
        let r = request.get_ref();
        ids(&r.container_id, &r.exec_id)?;
        let process = self.containers.process(&r.container_id, &r.exec_id)?;
        process
            .stdio
            .held_output()
            .acknowledge([r.stdout_offset, r.stderr_offset])?;
        Ok(Response::new(v1::AcknowledgeOutputResponse {}))
    }

    async fn write_stdin(
        &self,
        request: Request<Streaming<v1::StdinChunk>>,
    ) -> Result<Response<v1::WriteStdinResponse>, Status> {
        let mut stream = request.into_inner();
        let Some(first) = stream.message().await? else {
            return Err(Status::invalid_argument("the stdin stream is empty"));
        };
        ids(&first.container_id, &first.exec_id)?;
        let process = self
            .containers
            .process(&first.container_id, &first.exec_id)?;
        let mut written = 0u64;
        let mut next = Some(first);
        while let Some(chunk) = next {
            if chunk.data.len() > MAX_STDIO_CHUNK_BYTES {
                return Err(Status::invalid_argument(format!(
                    "stdin chunk of {} bytes is more than {MAX_STDIO_CHUNK_BYTES}",
                    chunk.data.len()
                )));
            }
            process.stdio.write_stdin(&chunk.data).await?;
            written += chunk.data.len() as u64;
            next = stream.message().await?;
        }
        Ok(Response::new(v1::WriteStdinResponse {
            bytes_written: written,
        }))
    }

    async fn close_stdin(
        &self,
        request: Request<v1::CloseStdinRequest>,
    ) -> Result<Response<v1::CloseStdinResponse>, Status> {
        let r = request.get_ref();
        ids(&r.container_id, &r.exec_id)?;
        let process = self.containers.process(&r.container_id, &r.exec_id)?;
        process.stdio.close_stdin().await?;
        Ok(Response::new(v1::CloseStdinResponse {}))
    }

    async fn resize_tty(
        &self,
        request: Request<v1::ResizeTtyRequest>,
    ) -> Result<Response<v1::ResizeTtyResponse>, Status> {
        let r = request.get_ref();
        ids(&r.container_id, &r.exec_id)?;
        let rows = u16::try_from(r.rows)
            .map_err(|_| Status::invalid_argument("rows is more than 65535"))?;
        let columns = u16::try_from(r.columns)
            .map_err(|_| Status::invalid_argument("columns is more than 65535"))?;
        let process = self.containers.process(&r.container_id, &r.exec_id)?;
        process.stdio.resize(rows, columns)?;
        Ok(Response::new(v1::ResizeTtyResponse {}))
    }

    async fn container_stats(
        &self,
        request: Request<v1::ContainerStatsRequest>,
    ) -> Result<Response<v1::ContainerStatsResponse>, Status> {
        let id = &request.get_ref().container_id;
        ids(id, "")?;
        let stats = self.containers.stats(id)?;
        Ok(Response::new(v1::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn sandbox_stats(
        &self,
        _: Request<v1::SandboxStatsRequest>,
    ) -> Result<Response<v1::SandboxStatsResponse>, Status> {
        Ok(Response::new(self.containers.sandbox_stats()?))
    }

    type EventsStream = ResponseStream<v1::Event>;

    async fn events(
        &self,
        _: Request<v1::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let stream =
            BroadcastStream::new(self.containers.subscribe()).filter_map(|event| match event {
                Ok(event) => Some(Ok(event)),
                Err(lagged) => {
                    // The reader fell behind; WaitProcess still has every exit.
                    tracing::warn!(error = %lagged, "an events reader lagged; events were dropped");
                    None
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }

    type PortForwardStream = port_forward::Output;

    async fn port_forward(
        &self,
        request: Request<Streaming<v1::PortForwardInput>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        let output = port_forward::start(request.into_inner()).await?;
        Ok(Response::new(output))
    }

    async fn shutdown(
        &self,
        request: Request<v1::ShutdownRequest>,
    ) -> Result<Response<v1::ShutdownResponse>, Status> {
        let action = if request.get_ref().reboot {
            PowerAction::Reboot
        } else {
            PowerAction::PowerOff
        };
        tracing::info!(?action, "shutdown requested");
        // Give the reply a moment to leave before the VM goes down.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            pid1::power(action);
        });
        Ok(Response::new(v1::ShutdownResponse {}))
    }
}
