//! A pod's network: its named network namespace, CNI ADD and DEL, and the
//! tap that carries the CNI interface into the pod's VM.
//!
//! RunPodSandbox: record the namespace path → create the namespace → CNI
//! ADD → record the result → tap joined to the CNI interface → the VMM gets
//! the tap, the agent the interface's addresses and routes. Every step is
//! recorded before the next, so a hulld that dies in between finds what to
//! undo. Teardown (StopPodSandbox, a failed or interrupted start, a pod
//! found dead after a restart): CNI DEL exactly once — a failed DEL is
//! retried by the next stop — then the namespace goes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hull_proto::v1 as agent;
use k8s_cri::v1 as cri;

use super::CriService;
use crate::error::CriError;
use crate::network::cni::{
    Attachment, CheckOutcome, Cni, CniError, CniResult, NetworkConfigList, PortMapping, Protocol,
};
use crate::network::netns::{NetnsDir, NetnsError};
use crate::network::tap::{self, TapError};
use crate::pod::vm::{POD_NIC, PodNic};
use crate::store::sandbox::{CheckResult, NetworkCheckRecord, PodNetworkRecord};

/// The tap's name inside the pod's network namespace.
const TAP_NAME: &str = "tap0_hull";

/// Why a pod's network could not be set up or torn down.
#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(
        "the CNI result of network {network:?} has no interface {ifname} in the pod's namespace"
    )]
    NoPodInterface { network: String, ifname: String },
    #[error("a blocking network task ended abnormally: {0}")]
    Task(String),
}

/// What the VM and the agent get from the pod's network.
pub struct PodNetworkSetup {
    pub nic: PodNic,
    pub interfaces: Vec<agent::Interface>,
    pub routes: Vec<agent::Route>,
}

impl CriService {
    fn netns_dir(&self) -> NetnsDir {
        NetnsDir::new(self.config.cni.netns_dir.clone())
    }

    fn cni(&self) -> Cni {
        Cni {
            bin_dirs: self.config.cni.bin_dirs.clone(),
            timeout: Duration::from_secs(self.config.cni.plugin_timeout_secs),
        }
    }

    /// The pod network, as the CNI configuration directory says now.
    pub(super) fn network_config(&self) -> Result<Option<NetworkConfigList>, CniError> {
        NetworkConfigList::load(&self.config.cni.conf_dir)
    }

    /// Creates the pod's namespace, runs CNI ADD and joins a tap to the CNI
    /// interface. `None` when no CNI network is configured: the pod gets
    /// loopback only (Status says NetworkReady=false meanwhile).
    pub(super) async fn set_up_pod_network(
        self: &Arc<Self>,
        id: &str,
        config: &cri::PodSandboxConfig,
    ) -> Result<Option<PodNetworkSetup>, CriError> {
        let failed = |source: PodNetworkError| CriError::PodNetwork {
            pod: id.to_string(),
            source: Box::new(source),
        };
        let Some(network) = self
            .network_config()
            .map_err(|e| failed(PodNetworkError::Cni(e)))?
        else {
            tracing::warn!(
                pod = id,
                conf_dir = %self.config.cni.conf_dir.display(),
                "no CNI network configured: the pod gets loopback only"
            );
            return Ok(None);
        };
        let netns_dir = self.netns_dir();
        let netns_path = netns_dir
            .path_of(id)
            .map_err(|e| failed(PodNetworkError::Netns(e)))?;
        // Checked before anything is made.
        let attachment = attachment(id, config, netns_path.clone())?;
        self.sandboxes.update(id, |r| {
            r.status.network = Some(PodNetworkRecord {
                netns: netns_path.clone(),
                ..Default::default()
            })
        })?;
        let pod_id = id.to_string();
        let netns = blocking(move || netns_dir.create(&pod_id).map_err(PodNetworkError::from))
            .await
            .map_err(failed)?;

        let result = self
            .cni()
            .add(&network, &attachment)
            .await
            .map_err(|e| failed(PodNetworkError::Cni(e)))?;
        self.sandboxes.update(id, |r| {
            if let Some(record) = r.status.network.as_mut() {
                record.result = Some(result.clone());
            }
            let ips = result.pod_ips();
            r.status.ip = ips.first().map(|ip| ip.to_string());
            r.status.additional_ips = ips.iter().skip(1).map(|ip| ip.to_string()).collect();
        })?;
        if result.sandbox_interface(POD_NIC).is_none() {
            return Err(failed(PodNetworkError::NoPodInterface {
                network: network.name.clone(),
                ifname: POD_NIC.to_string(),
            }));
        }
        let link = blocking(move || {
            tap::connect(&netns, POD_NIC, TAP_NAME).map_err(PodNetworkError::from)
        })
        .await
        .map_err(failed)?;
        tracing::info!(
            pod = id,
            network = network.name,
            ips = ?result.pod_ips(),
            mac = link.guest_mac_string(),
            mtu = link.mtu,
            "pod network attached"
        );
        let (interfaces, routes) = guest_network(&result, &link.guest_mac_string(), link.mtu);
        Ok(Some(PodNetworkSetup {
            nic: PodNic {
                mac: link.guest_mac_string(),
                tap: link.fd,
            },
            interfaces,
            routes,
        }))
    }

    /// CNI DEL (once) and the namespace's removal. A DEL that fails is
    /// reported and retried by the next call; the namespace then stays so
    /// that the retry has it.
    pub(super) async fn tear_down_pod_network(&self, id: &str) -> Result<(), CriError> {
        let failed = |source: PodNetworkError| CriError::PodNetwork {
            pod: id.to_string(),
            source: Box::new(source),
        };
        let Some(record) = self.sandboxes.get(id).and_then(|r| r.status.network) else {
            return Ok(());
        };
        if !record.deleted {
            match self
                .network_config()
                .map_err(|e| failed(PodNetworkError::Cni(e)))?
            {
                Some(network) => {
                    let config = self
                        .sandboxes
                        .get(id)
                        .map(|r| r.metadata.config)
                        .unwrap_or_default();
                    let attachment = attachment(id, &config, record.netns.clone())?;
                    self.cni()
                        .del(&network, &attachment, record.result.as_ref())
                        .await
                        .map_err(|e| failed(PodNetworkError::Cni(e)))?;
                }
                None => tracing::warn!(
                    pod = id,
                    "no CNI network configured any more: CNI DEL skipped, only the namespace is removed"
                ),
            }
            self.sandboxes.update(id, |r| {
                if let Some(network) = r.status.network.as_mut() {
                    network.deleted = true;
                }
            })?;
        }
        let netns_dir = self.netns_dir();
        let pod_id = id.to_string();
        blocking(move || netns_dir.remove(&pod_id).map_err(PodNetworkError::from))
            .await
            .map_err(failed)?;
        tracing::info!(pod = id, "pod network removed");
        Ok(())
    }

    /// CNI CHECK of the network of a pod hulld took back after a restart:
    /// are its interface, addresses, routes and port mappings still as ADD
    /// left them? The outcome goes into the sandbox record (PodSandboxStatus
    /// shows it in its verbose info) and a failure is logged as a warning.
    ///
    /// A failure does not make the pod NotReady: containerd and CRI-O run
    /// no CHECK at all, and Debian bookworm's portmap (1.1.1) fails CHECK of
    /// every pod with a host port on a host with ip6tables (it looks for the
    /// IPv4 rules in ip6tables), which would have the kubelet recreate such
    /// pods at every hulld restart.
    pub(super) async fn check_pod_network(&self, id: &str) {
        let Some(record) = self.sandboxes.get(id) else {
            return;
        };
        let Some(network_record) = record.status.network.as_ref() else {
            return;
        };
        let (Some(result), false) = (network_record.result.as_ref(), network_record.deleted) else {
            return;
        };
        let outcome = match self.network_config() {
            Ok(Some(network)) => {
                match attachment(id, &record.metadata.config, network_record.netns.clone()) {
                    Ok(attachment) => self
                        .cni()
                        .check(&network, &attachment, result)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Ok(None) => Ok(CheckOutcome::Skipped {
                reason: "no CNI network is configured any more".to_string(),
            }),
            Err(e) => Err(e.to_string()),
        };
        let (outcome, detail) = match outcome {
            Ok(CheckOutcome::Passed) => (CheckResult::Passed, String::new()),
            Ok(CheckOutcome::Skipped { reason }) => (CheckResult::Skipped, reason),
            Err(error) => {
                tracing::warn!(pod = id, %error, "CNI CHECK of an adopted pod's network failed; the pod keeps running");
                (CheckResult::Failed, error)
            }
        };
        let check = NetworkCheckRecord {
            unix_time_ms: (super::now_nanos() / 1_000_000) as u64,
            outcome,
            detail,
        };
        tracing::info!(pod = id, outcome = ?check.outcome, detail = check.detail, "CNI CHECK of the pod's network");
        let saved = self.sandboxes.update(id, |r| {
            if let Some(network) = r.status.network.as_mut() {
                network.last_check = Some(check.clone());
            }
        });
        if let Err(error) = saved {
            tracing::warn!(pod = id, %error, "cannot record the CNI CHECK outcome");
        }
    }

    /// Namespaces in `cni.netns_dir` that belong to no pod hulld knows
    /// (a RunPodSandbox cut short before its record said so) are removed.
    pub(super) async fn remove_stray_netns(&self) {
        let netns_dir = self.netns_dir();
        let known: std::collections::BTreeSet<String> = self
            .sandboxes
            .list()
            .into_iter()
            .map(|s| s.metadata.id)
            .collect();
        let result = blocking(move || {
            let mut removed = Vec::new();
            for id in netns_dir.list()? {
                if !known.contains(&id) {
                    netns_dir.remove(&id)?;
                    removed.push(id);
                }
            }
            Ok(removed)
        })
        .await;
        match result {
            Ok(removed) if !removed.is_empty() => {
                tracing::warn!(?removed, "removed network namespaces of unknown pods")
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %err, "cannot clean the network namespace directory")
            }
        }
    }
}

/// Runs blocking network work (netlink, mounts, setns threads) off the
/// async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PodNetworkError> + Send + 'static,
) -> Result<T, PodNetworkError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| PodNetworkError::Task(err.to_string()))?
}

/// The CNI attachment of a pod, with the arguments containerd sends. A
/// port mapping without a host port is not the network's business.
fn attachment(
    id: &str,
    config: &cri::PodSandboxConfig,
    netns: PathBuf,
) -> Result<Attachment, CriError> {
    let metadata = config.metadata.clone().unwrap_or_default();
    let mut port_mappings = Vec::new();
    for mapping in config.port_mappings.iter().filter(|m| m.host_port > 0) {
        let port = |value: i32, field: &'static str| {
            u16::try_from(value).map_err(|_| CriError::InvalidField {
                field,
                reason: format!("{value} is not a port number"),
            })
        };
        let host_ip = if mapping.host_ip.is_empty() {
            None
        } else {
            Some(
                mapping
                    .host_ip
                    .parse()
                    .map_err(|_| CriError::InvalidField {
                        field: "config.port_mappings.host_ip",
                        reason: format!("{:?} is not an IP address", mapping.host_ip),
                    })?,
            )
        };
        port_mappings.push(PortMapping {
            host_port: port(mapping.host_port, "config.port_mappings.host_port")?,
            container_port: port(
                mapping.container_port,
                "config.port_mappings.container_port",
            )?,
            protocol: match cri::Protocol::try_from(mapping.protocol) {
                Ok(cri::Protocol::Udp) => Protocol::Udp,
                Ok(cri::Protocol::Sctp) => Protocol::Sctp,
                _ => Protocol::Tcp,
            },
            host_ip,
        });
    }
    Ok(Attachment {
        container_id: id.to_string(),
        netns,
        ifname: POD_NIC.to_string(),
        pod_namespace: metadata.namespace,
        pod_name: metadata.name,
        pod_uid: metadata.uid,
        port_mappings,
    })
}

/// The guest's view of the CNI interface: its addresses (CIDR), MTU and
/// the result's routes. A route without a gateway goes through the
/// gateway of its family the result gives for the interface, else on link.
fn guest_network(
    result: &CniResult,
    mac: &str,
    mtu: u32,
) -> (Vec<agent::Interface>, Vec<agent::Route>) {
    let index = result
        .interfaces()
        .iter()
        .position(|i| i.name == POD_NIC && i.sandbox.is_some());
    let ips: Vec<_> = result
        .ips()
        .iter()
        .filter(|ip| ip.interface.is_none() || ip.interface == index)
        .collect();
    let interface = agent::Interface {
        mac_address: mac.to_string(),
        name: POD_NIC.to_string(),
        addresses: ips
            .iter()
            .map(|ip| format!("{}/{}", ip.address.addr, ip.address.prefix_len))
            .collect(),
        mtu,
    };
    let routes = result
        .routes()
        .iter()
        .map(|route| {
            let gateway = route.gw.or_else(|| {
                ips.iter()
                    .filter_map(|ip| ip.gateway)
                    .find(|gw| gw.is_ipv4() == route.dst.addr.is_ipv4())
            });
            agent::Route {
                destination: format!("{}/{}", route.dst.addr, route.dst.prefix_len),
                gateway: gateway.map(|g| g.to_string()).unwrap_or_default(),
                device: POD_NIC.to_string(),
            }
        })
        .collect();
    (vec![interface], routes)
}
