//! hulld's Prometheus metrics, and the endpoint that serves them
//! (`[metrics] address`, off by default).
//!
//! Counters and histograms move as things happen (each CRI call, pod start,
//! VM boot, image pull); gauges of what runs now are read from hulld's
//! state at each scrape.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::server::CriService;
use crate::vm_config::VmShape;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub method: String,
    /// `OK`, or the gRPC code's name (`NotFound`, `Internal`, ...).
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Buckets for CRI calls: 1 ms to ~65 s.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Buckets for pod starts, VM boots and image pulls: 50 ms to ~14 min.
fn slow_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 15))
}

/// Every metric hulld exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<OutcomeLabels, Counter>,
    request_duration: HistogramFamily<MethodLabels>,
    pod_start_duration: Histogram,
    vm_boot_duration: Histogram,
    image_pull_duration: Histogram,
    image_pull_bytes: Counter,
    pods: Family<StateLabels, Gauge>,
    containers: Family<StateLabels, Gauge>,
    vms: Gauge,
    vmm_resident_bytes: Gauge,
    guest_memory_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hull");
        let requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "cri_requests",
            "CRI calls served, by method and outcome",
            requests.clone(),
        );
        let request_duration =
            HistogramFamily::<MethodLabels>::new_with_constructor(request_histogram as fn() -> _);
        registry.register_with_unit(
            "cri_request_duration",
            "Time to serve a CRI call, by method",
            Unit::Seconds,
            request_duration.clone(),
        );
        let pod_start_duration = slow_histogram();
        registry.register_with_unit(
            "pod_start_duration",
            "RunPodSandbox from request to a ready pod (VM booted, network and sandbox set up)",
            Unit::Seconds,
            pod_start_duration.clone(),
        );
        let vm_boot_duration = slow_histogram();
        registry.register_with_unit(
            "vm_boot_duration",
            "Pod VM start to its agent answering",
            Unit::Seconds,
            vm_boot_duration.clone(),
        );
        let image_pull_duration = slow_histogram();
        registry.register_with_unit(
            "image_pull_duration",
            "Image pulls that succeeded, from request to the image in the store",
            Unit::Seconds,
            image_pull_duration.clone(),
        );
        let image_pull_bytes = Counter::default();
        registry.register_with_unit(
            "image_pull",
            "Compressed size of the images pulled",
            Unit::Bytes,
            image_pull_bytes.clone(),
        );
        let pods = Family::<StateLabels, Gauge>::default();
        registry.register("pods", "Pod sandboxes, by state", pods.clone());
        let containers = Family::<StateLabels, Gauge>::default();
        registry.register("containers", "Containers, by state", containers.clone());
        let vms = Gauge::default();
        registry.register("vms", "Pod VMs running", vms.clone());
        let vmm_resident_bytes = Gauge::default();
        registry.register_with_unit(
            "vmm_resident_memory",
            "Resident memory of all pod VMMs (their own and the guest memory the guests touched)",
            Unit::Bytes,
            vmm_resident_bytes.clone(),
        );
        let guest_memory_bytes = Gauge::default();
        registry.register_with_unit(
            "vm_guest_memory",
            "Guest memory given to the running pod VMs",
            Unit::Bytes,
            guest_memory_bytes.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            pod_start_duration,
            vm_boot_duration,
            image_pull_duration,
            image_pull_bytes,
            pods,
            containers,
            vms,
            vmm_resident_bytes,
            guest_memory_bytes,
        }
    }

    /// Counts one CRI call and its duration.
    pub fn observe_request(&self, method: &str, code: tonic::Code, seconds: f64) {
        // `RunPodSandboxRequest` → `RunPodSandbox`.
        let method = method.strip_suffix("Request").unwrap_or(method);
        let code = match code {
            tonic::Code::Ok => "OK".to_string(),
            other => format!("{other:?}"),
        };
        self.requests
            .get_or_create(&OutcomeLabels {
                method: method.to_string(),
                code,
            })
            .inc();
        self.request_duration
            .get_or_create(&MethodLabels {
                method: method.to_string(),
            })
            .observe(seconds);
    }

    pub fn observe_pod_start(&self, seconds: f64) {
        self.pod_start_duration.observe(seconds);
    }

    pub fn observe_vm_boot(&self, seconds: f64) {
        self.vm_boot_duration.observe(seconds);
    }

    pub fn observe_image_pull(&self, seconds: f64, bytes: u64) {
        self.image_pull_duration.observe(seconds);
        self.image_pull_bytes.inc_by(bytes);
    }

    /// The exposition text, gauges read from `service` now.
    pub fn render(&self, service: &CriService) -> String {
        self.refresh(service);
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %err, "encoding the metrics failed");
        }
        text
    }

    fn refresh(&self, service: &CriService) {
        let count = |family: &Family<StateLabels, Gauge>, states: Vec<String>, all: &[&str]| {
            for state in all {
                let n = states.iter().filter(|s| s == state).count();
                family
                    .get_or_create(&StateLabels {
                        state: state.to_string(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        };
        let pod_states = service
            .sandboxes
            .list()
            .into_iter()
            .map(|pod| {
                match service.pods.get(&pod.metadata.id) {
                    Some(_) => "ready",
                    None => "notready",
                }
                .to_string()
            })
            .collect();
        count(&self.pods, pod_states, &["ready", "notready"]);
        let container_states = service
            .containers
            .list()
            .into_iter()
            .map(|c| c.status.state.name().to_string())
            .collect();
        count(
            &self.containers,
            container_states,
            &["created", "running", "exited", "unknown"],
        );
        let live = service.pods.all();
        self.vms.set(i64::try_from(live.len()).unwrap_or(i64::MAX));
        let resident: u64 = live
            .iter()
            .filter_map(|pod| resident_bytes(pod.process.pid))
            .sum();
        self.vmm_resident_bytes
            .set(i64::try_from(resident).unwrap_or(i64::MAX));
        let guest: u64 = live
            .iter()
            .filter_map(|pod| service.sandboxes.get(&pod.id))
            .map(|record| {
                let handler = service
                    .config
                    .runtime_handlers
                    .get(&record.metadata.runtime_handler);
                let resources = record
                    .metadata
                    .config
                    .linux
                    .as_ref()
                    .and_then(|l| l.resources.as_ref());
                VmShape::for_pod(&service.config.vm, handler, resources).memory_mib << 20
            })
            .sum();
        self.guest_memory_bytes
            .set(i64::try_from(guest).unwrap_or(i64::MAX));
    }
}

/// A process's resident memory, from `/proc/<pid>/status`.
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, service: Arc<CriService>) {
    loop {
        let (connection, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "metrics endpoint: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            let handler = service_fn(move |request: Request<Incoming>| {
                let service = service.clone();
                async move { Ok::<_, Infallible>(respond(&request, &service)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(connection), handler)
                .await;
        });
    }
}

fn respond(request: &Request<Incoming>, service: &CriService) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if request.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "hulld serves its metrics at /metrics\n".to_string(),
        )
    } else {
        (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            service.metrics.render(service),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_method_and_code_with_their_latency() {
        let metrics = Metrics::new();
        metrics.observe_request("VersionRequest", tonic::Code::Ok, 0.002);
        metrics.observe_request("VersionRequest", tonic::Code::Ok, 0.003);
        metrics.observe_request("ContainerStatusRequest", tonic::Code::NotFound, 0.001);
        metrics.observe_image_pull(1.5, 4096);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
        assert!(
            text.contains(r#"hull_cri_requests_total{method="Version",code="OK"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hull_cri_requests_total{method="ContainerStatus",code="NotFound"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hull_cri_request_duration_seconds_count{method="Version"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"hull_cri_request_duration_seconds_bucket{le="0.004",method="Version"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains("hull_image_pull_bytes_total 4096"), "{text}");
        assert!(
            text.contains("hull_image_pull_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE hull_pod_start_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn resident_memory_is_read_from_proc() {
        let own = resident_bytes(std::process::id()).unwrap();
        assert!(own > 1 << 20, "{own}");
        assert_eq!(resident_bytes(u32::MAX), None);
    }
}
