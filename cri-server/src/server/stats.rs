//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats.
//!
//! Containers are measured inside their pod's VM, from their cgroup in the
//! guest (the agent reads it). A pod's own CPU and memory are what the node
//! pays for it: the host cgroup of its VMM (vCPU threads, device emulation
//! and every guest page the VM touched), next to its containers' figures
//! from the guest.

use std::collections::{BTreeMap, HashMap};

use hull_proto::v1 as agent;
use k8s_cri::v1 as cri;

use super::sandbox_lifecycle::agent_error;
use super::{CriService, now_nanos, required};
use crate::error::CriError;
use crate::pod::cgroup::CgroupStats;
use crate::pod::live::LivePod;
use crate::store::container::{ContainerRecord, ContainerState};
use crate::store::sandbox::SandboxRecord;

fn value(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

/// A container's figures from its cgroup in the guest.
fn container_stats(
    record: &ContainerRecord,
    stats: Option<&agent::CgroupStats>,
) -> cri::ContainerStats {
    let config = &record.metadata.config;
    let attributes = Some(cri::ContainerAttributes {
        id: record.metadata.id.clone(),
        metadata: config.metadata.clone(),
        labels: config.labels.clone(),
        annotations: config.annotations.clone(),
    });
    let Some(stats) = stats else {
        return cri::ContainerStats {
            attributes,
            ..Default::default()
        };
    };
    let timestamp = stats.timestamp_unix_nanos;
    let cpu = stats.cpu.unwrap_or_default();
    let memory = stats.memory.unwrap_or_default();
    cri::ContainerStats {
        attributes,
        cpu: Some(cri::CpuUsage {
            timestamp,
            usage_core_nano_seconds: value(cpu.usage_usec.saturating_mul(1000)),
            // Left to the kubelet, which derives it from two samples.
            usage_nano_cores: None,
        }),
        memory: Some(cri::MemoryUsage {
            timestamp,
            working_set_bytes: value(memory.working_set_bytes),
            available_bytes: (memory.limit_bytes > 0)
                .then(|| memory.limit_bytes.saturating_sub(memory.working_set_bytes))
                .and_then(value),
            usage_bytes: value(memory.usage_bytes),
            rss_bytes: value(memory.rss_bytes),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod's cost on the node, from its VMM's host cgroup.
fn host_usage(stats: &CgroupStats) -> (cri::CpuUsage, cri::MemoryUsage) {
    let timestamp = stats.timestamp_ns;
    (
        cri::CpuUsage {
            timestamp,
            usage_core_nano_seconds: value(stats.cpu_usage_ns()),
            usage_nano_cores: None,
        },
        cri::MemoryUsage {
            timestamp,
            working_set_bytes: value(stats.working_set_bytes),
            available_bytes: stats.available_bytes().and_then(value),
            usage_bytes: value(stats.memory_current),
            rss_bytes: value(stats.rss_bytes()),
            ..Default::default()
        },
    )
}

impl CriService {
    /// The guest's figures for a live pod: its containers' cgroups.
    async fn guest_stats(
        &self,
        pod: &LivePod,
    ) -> Result<HashMap<String, agent::CgroupStats>, CriError> {
        let reply = pod
            .agent()
            .sandbox_stats(agent::SandboxStatsRequest {})
            .await
            .map_err(|status| agent_error(&pod.id, "read the pod's stats", status))?
            .into_inner();
        hull_proto::validate::sandbox_stats_reply(&reply).map_err(|err| CriError::Agent {
            pod: pod.id.clone(),
            action: "read the pod's stats",
            code: tonic::Code::Internal,
            message: err.to_string(),
        })?;
        Ok(reply.containers)
    }

    /// Stats of the running containers of one pod, in the order given.
    async fn pod_container_stats(
        &self,
        sandbox_id: &str,
        containers: &[ContainerRecord],
    ) -> Result<Vec<cri::ContainerStats>, CriError> {
        if containers.is_empty() {
            return Ok(Vec::new());
        }
        let Some(pod) = self.pods.get(sandbox_id) else {
            return Ok(Vec::new());
        };
        let guest = self.guest_stats(&pod).await?;
        Ok(containers
            .iter()
            .map(|c| container_stats(c, guest.get(&c.metadata.id)))
            .collect())
    }

    /// The running containers a filter selects, grouped by pod.
    async fn running_containers(
        &self,
        id: String,
        pod_sandbox_id: String,
        label_selector: HashMap<String, String>,
    ) -> Result<BTreeMap<String, Vec<ContainerRecord>>, CriError> {
        let listed = self
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    id,
                    pod_sandbox_id,
                    label_selector,
                    state: Some(cri::ContainerStateValue {
                        state: cri::ContainerState::ContainerRunning as i32,
                    }),
                }),
            })
            .await?;
        let mut by_pod: BTreeMap<String, Vec<ContainerRecord>> = BTreeMap::new();
        for container in listed.containers {
            if let Some(record) = self.containers.get(&container.id) {
                by_pod
                    .entry(container.pod_sandbox_id)
                    .or_default()
                    .push(record);
            }
        }
        for records in by_pod.values_mut() {
            records.sort_by(|a, b| a.metadata.id.cmp(&b.metadata.id));
        }
        Ok(by_pod)
    }

    pub async fn container_stats(
        &self,
        request: cri::ContainerStatsRequest,
    ) -> Result<cri::ContainerStatsResponse, CriError> {
        required(&request.container_id, "container_id")?;
        let container = self.containers.lookup(&request.container_id)?;
        let id = container.metadata.id.clone();
        let stats = match self.pods.get(&container.metadata.sandbox_id) {
            Some(pod) if container.status.state == ContainerState::Running => {
                let reply = pod
                    .agent()
                    .container_stats(agent::ContainerStatsRequest {
                        container_id: id.clone(),
                    })
                    .await
                    .map_err(|status| agent_error(&pod.id, "read the container's stats", status))?
                    .into_inner();
                hull_proto::validate::container_stats_reply(&reply).map_err(|err| {
                    CriError::Agent {
                        pod: pod.id.clone(),
                        action: "read the container's stats",
                        code: tonic::Code::Internal,
                        message: err.to_string(),
                    }
                })?;
                container_stats(&container, reply.stats.as_ref())
            }
            // Not running: nothing to measure, the attributes say which.
            _ => container_stats(&container, None),
        };
        Ok(cri::ContainerStatsResponse { stats: Some(stats) })
    }

    pub async fn list_container_stats(
        &self,
        request: cri::ListContainerStatsRequest,
    ) -> Result<cri::ListContainerStatsResponse, CriError> {
        let filter = request.filter.unwrap_or_default();
        let by_pod = self
            .running_containers(filter.id, filter.pod_sandbox_id, filter.label_selector)
            .await?;
        let mut stats = Vec::new();
        for (sandbox_id, containers) in &by_pod {
            match self.pod_container_stats(sandbox_id, containers).await {
                Ok(found) => stats.extend(found),
                // One pod that cannot answer does not hide the others.
                Err(err) => {
                    tracing::warn!(pod = sandbox_id, error = %err, "no container stats from the pod")
                }
            }
        }
        Ok(cri::ListContainerStatsResponse { stats })
    }

    /// The stats of one sandbox: the VM's host usage and its containers.
    async fn sandbox_stats(
        &self,
        sandbox: &SandboxRecord,
    ) -> Result<cri::PodSandboxStats, CriError> {
        let id = &sandbox.metadata.id;
        let config = &sandbox.metadata.config;
        let attributes = Some(cri::PodSandboxAttributes {
            id: id.clone(),
            metadata: config.metadata.clone(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
        });
        let Some(pod) = self.pods.get(id) else {
            return Ok(cri::PodSandboxStats {
                attributes,
                ..Default::default()
            });
        };
        let host = match &pod.cgroup {
            Some(cgroup) => {
                let cgroup = cgroup.clone();
                tokio::task::spawn_blocking(move || cgroup.stats())
                    .await
                    .map_err(|_| CriError::Internal {
                        what: "reading the pod's host cgroup",
                    })?
                    .map_err(|source| CriError::Cgroup {
                        pod: id.clone(),
                        source,
                    })
                    .map(Some)?
            }
            None => None,
        };
        let running = self
            .running_containers(String::new(), id.clone(), HashMap::new())
            .await?
            .remove(id)
            .unwrap_or_default();
        let containers = self.pod_container_stats(id, &running).await?;
        let (cpu, memory) = match &host {
            Some(stats) => {
                let (cpu, memory) = host_usage(stats);
                (Some(cpu), Some(memory))
            }
            None => (None, None),
        };
        let process = host
            .as_ref()
            .and_then(|h| h.pids_current)
            .map(|count| cri::ProcessUsage {
                timestamp: now_nanos(),
                process_count: value(count),
            });
        Ok(cri::PodSandboxStats {
            attributes,
            linux: Some(cri::LinuxPodSandboxStats {
                cpu,
                memory,
                process,
                containers,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    pub async fn pod_sandbox_stats(
        &self,
        request: cri::PodSandboxStatsRequest,
    ) -> Result<cri::PodSandboxStatsResponse, CriError> {
        required(&request.pod_sandbox_id, "pod_sandbox_id")?;
        let sandbox = self.sandboxes.lookup(&request.pod_sandbox_id)?;
        Ok(cri::PodSandboxStatsResponse {
            stats: Some(self.sandbox_stats(&sandbox).await?),
        })
    }

    pub async fn list_pod_sandbox_stats(
        &self,
        request: cri::ListPodSandboxStatsRequest,
    ) -> Result<cri::ListPodSandboxStatsResponse, CriError> {
        let filter = request.filter.unwrap_or_default();
        let listed = self
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    id: filter.id,
                    label_selector: filter.label_selector,
                    state: Some(cri::PodSandboxStateValue {
                        state: cri::PodSandboxState::SandboxReady as i32,
                    }),
                }),
            })
            .await?;
        let mut stats = Vec::new();
        for item in listed.items {
            let Some(sandbox) = self.sandboxes.get(&item.id) else {
                continue;
            };
            match self.sandbox_stats(&sandbox).await {
                Ok(found) => stats.push(found),
                Err(err) => tracing::warn!(pod = item.id, error = %err, "no stats from the pod"),
            }
        }
        Ok(cri::ListPodSandboxStatsResponse { stats })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_memory_is_left_out_without_a_limit() {
        let record = ContainerRecord {
            metadata: crate::store::container::ContainerMetadata {
                id: "c1".into(),
                sandbox_id: "p1".into(),
                config: Default::default(),
                image_id: String::new(),
                image_ref: String::new(),
                log_path: String::new(),
                created_at: 0,
            },
            status: Default::default(),
        };
        let mut stats = agent::CgroupStats {
            cpu: Some(agent::CpuStats {
                usage_usec: 1500,
                ..Default::default()
            }),
            memory: Some(agent::MemoryStats {
                usage_bytes: 10 << 20,
                working_set_bytes: 8 << 20,
                rss_bytes: 6 << 20,
                oom_kills: 0,
                limit_bytes: 0,
            }),
            timestamp_unix_nanos: 42,
            ..Default::default()
        };
        let out = container_stats(&record, Some(&stats));
        let memory = out.memory.unwrap();
        assert_eq!(memory.available_bytes, None);
        assert_eq!(memory.working_set_bytes.unwrap().value, 8 << 20);
        assert_eq!(memory.timestamp, 42);
        assert_eq!(
            out.cpu.unwrap().usage_core_nano_seconds.unwrap().value,
            1_500_000
        );

        stats.memory.as_mut().unwrap().limit_bytes = 32 << 20;
        let memory = container_stats(&record, Some(&stats)).memory.unwrap();
        assert_eq!(memory.available_bytes.unwrap().value, 24 << 20);

        let bare = container_stats(&record, None);
        assert_eq!(bare.attributes.unwrap().id, "c1");
        assert!(bare.cpu.is_none() && bare.memory.is_none());
    }
}
