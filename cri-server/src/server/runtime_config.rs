//! RuntimeConfig (what the kubelet should know about hull) and
//! UpdateRuntimeConfig (what the kubelet tells hull: the node's pod CIDR).

use k8s_cri::v1 as cri;

use super::CriService;
use crate::config::CgroupDriver;
use crate::error::CriError;

impl CriService {
    pub async fn runtime_config(
        &self,
        _: cri::RuntimeConfigRequest,
    ) -> Result<cri::RuntimeConfigResponse, CriError> {
        let cgroup_driver = match self.config.cgroup_driver {
            CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
            CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
        };
        Ok(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cgroup_driver as i32,
            }),
        })
    }

    pub async fn update_runtime_config(
        &self,
        request: cri::UpdateRuntimeConfigRequest,
    ) -> Result<cri::UpdateRuntimeConfigResponse, CriError> {
        let pod_cidr = request
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        // The kubelet sends an empty CIDR when it has none; keep what we had.
        if !pod_cidr.is_empty() {
            self.runtime_state.set_pod_cidr(&pod_cidr)?;
            tracing::info!(pod_cidr, "pod CIDR updated by the kubelet");
        }
        Ok(cri::UpdateRuntimeConfigResponse {})
    }
}
