//! Status: whether the runtime and the pod network are ready, and why not.

use std::collections::HashMap;

use k8s_cri::v1 as cri;

use super::CriService;
use crate::error::CriError;

/// Reason given while hull cannot give pods a network.
const NETWORK_NOT_READY_REASON: &str = "NetworkPluginNotReady";
/// Reason given when this host's KVM cannot run a standard guest.
const RUNTIME_NOT_READY_REASON: &str = "KVMUnusable";

impl CriService {
    pub async fn status(
        &self,
        request: cri::StatusRequest,
    ) -> Result<cri::StatusResponse, CriError> {
        let runtime_ready = match self.host.kvm_problem() {
            None => cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                ..Default::default()
            },
            Some(reason) => cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: false,
                reason: RUNTIME_NOT_READY_REASON.into(),
                message: reason.to_string(),
            },
        };
        let network_problem = match self.network_config() {
            Ok(Some(_)) => None,
            Ok(None) => Some(format!(
                "no CNI network config found in {}",
                self.config.cni.conf_dir.display()
            )),
            Err(err) => Some(crate::error::error_chain(&err)),
        };
        let network_ready = cri::RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: network_problem.is_none(),
            reason: if network_problem.is_some() {
                NETWORK_NOT_READY_REASON.into()
            } else {
                String::new()
            },
            message: network_problem.unwrap_or_default(),
        };
        let mut info = HashMap::new();
        if request.verbose {
            let config = serde_json::to_string(self.config.as_ref())
                .unwrap_or_else(|err| format!("cannot encode the configuration: {err}"));
            info.insert("config".to_string(), config);
        }
        Ok(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![runtime_ready, network_ready],
            }),
            info,
            // The default handler ("") and every configured RuntimeClass
            // handler: all run pods in VMs, with the same features.
            runtime_handlers: std::iter::once(String::new())
                .chain(self.config.runtime_handlers.keys().cloned())
                .map(|name| cri::RuntimeHandler {
                    name,
                    features: Some(cri::RuntimeHandlerFeatures {
                        recursive_read_only_mounts: false,
                        user_namespaces: false,
                    }),
                })
                .collect(),
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: false,
            }),
        })
    }
}
