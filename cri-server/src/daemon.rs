//! Start-up and shutdown of hulld.

use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::host::HostCheck;
use crate::runtime_state::RuntimeState;
use crate::server::{CriService, ImageApi, RuntimeApi};
use crate::store::{RecordStore, StoreError};

/// The kubelet sends and accepts CRI messages up to 16 MiB.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Why hulld could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot open the state store")]
    State(#[from] StoreError),
    #[error("cannot open the image store")]
    Images(#[from] image_service::ImageError),
    #[error(transparent)]
    Socket(#[from] crate::socket::SocketError),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("the gRPC server failed")]
    Serve(#[from] tonic::transport::Error),
    #[error(
        "cannot listen on {address} for the streaming server (config key stream.address/stream.port)"
    )]
    StreamListen {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {address} for the metrics endpoint (config key metrics.address)")]
    MetricsListen {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Opens hulld's state from disk and the services over it.
pub fn open_service(config: Arc<Config>) -> Result<CriService, DaemonError> {
    let sandboxes = RecordStore::open(&config.sandboxes_dir())?;
    let containers = RecordStore::open(&config.containers_dir())?;
    let images = image_service::ImageStore::open_with_limits(
        &config.images_dir(),
        config.registry.clone(),
        config.image.clone(),
    )?;
    let runtime_state = RuntimeState::load(&config.runtime_state_path());
    tracing::info!(
        sandboxes = sandboxes.len(),
        containers = containers.len(),
        images = images.list().len(),
        "state loaded"
    );
    Ok(CriService::new(
        config,
        sandboxes,
        containers,
        images,
        HostCheck::detect(),
        runtime_state,
    ))
}

/// Serves the CRI on the configured socket until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> Result<(), DaemonError> {
    let config = Arc::new(config);
    let service = Arc::new(open_service(config.clone())?);
    service.adopt_pods().await;

    let stream_listener = crate::stream::http::bind(&config.stream)
        .await
        .map_err(|source| DaemonError::StreamListen {
            address: std::net::SocketAddr::new(config.stream.address, config.stream.port),
            source,
        })?;
    if let Ok(address) = stream_listener.local_addr() {
        service.streaming.set_listening(address);
        tracing::info!(%address, "streaming server (exec, attach, port-forward) listening");
    }
    let stream_server = tokio::spawn(crate::stream::http::serve(stream_listener, service.clone()));
    let metrics_server = match config.metrics.socket_address() {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|source| DaemonError::MetricsListen { address, source })?;
            tracing::info!(%address, "metrics served at /metrics");
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                service.clone(),
            )))
        }
        None => None,
    };

    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let listener = crate::socket::bind(&config.socket_path)?;
    tracing::info!(socket = %config.socket_path.display(), version = env!("CARGO_PKG_VERSION"), "hulld serving the CRI");

    let notifier = crate::notify::Notifier::from_env();
    let stopping = notifier.clone();
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = sigint.recv() => tracing::info!("SIGINT received; shutting down"),
        }
        stopping.stopping();
    };
    let runtime = RuntimeServiceServer::new(RuntimeApi(service.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let images = ImageServiceServer::new(ImageApi(service.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // The socket is bound and listening: a client connecting from now on is
    // answered by the server below.
    notifier.ready(&format!(
        "serving the CRI on {}",
        config.socket_path.display()
    ));
    let result = tonic::transport::Server::builder()
        .add_service(runtime)
        .add_service(images)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    // The socket goes with the server, so the next start finds no stale file.
    let _ = std::fs::remove_file(&config.socket_path);
    stream_server.abort();
    if let Some(server) = metrics_server {
        server.abort();
    }
    service.release_pods().await;
    result?;
    tracing::info!("hulld stopped");
    Ok(())
}
