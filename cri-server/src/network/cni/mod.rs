//! CNI: network configuration, plugin invocation and results.
//!
//! hulld is a CNI runtime in the specification's sense: it loads a network
//! configuration ([`NetworkConfigList::load`]), and for each pod runs the
//! network's plugins on the pod's network namespace ([`Cni::add`],
//! [`Cni::check`], [`Cni::del`]) the way containerd and CRI-O do, so the
//! same `/etc/cni/net.d` and plugin binaries work.
//!
//! - [`config`]: finding and validating the configuration file.
//! - [`invoke`]: running one plugin (environment, stdin, timeout, output).
//! - [`result`]: the typed, validated [`CniResult`] of an ADD.
//!
//! The ADD result is the caller's to keep: CHECK needs it, and DEL should get
//! it (persisted with the pod, so it survives a restart of hulld).

pub mod config;
mod error;
pub mod invoke;
pub mod result;

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use tracing::{Instrument, debug, info, info_span, warn};

pub use config::{DEFAULT_CONF_DIR, NetworkConfigList, PluginConfig, SUPPORTED_VERSIONS};
pub use error::{CniCommand, CniError, well_known_error_code};
pub use result::{CniResult, Dns, Interface, IpCidr, IpConfig, MacAddr, ResultError, Route};

use invoke::{PluginRun, plugin_env, plugin_stdin, run_plugin};

/// Plugin directories searched unless configured otherwise: the upstream
/// default, then where Debian's `containernetworking-plugins` installs.
pub const DEFAULT_BIN_DIRS: &[&str] = &["/opt/cni/bin", "/usr/lib/cni"];

/// How long one plugin invocation may take unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest interface name Linux accepts (`IFNAMSIZ` - 1).
const MAX_IFNAME_LEN: usize = 15;

/// Runs CNI plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cni {
    /// Directories plugins are looked up in, in order; also passed to
    /// plugins as `CNI_PATH` (they run IPAM plugins from there).
    pub bin_dirs: Vec<PathBuf>,
    /// How long each plugin invocation may take before it is killed.
    pub timeout: Duration,
}

impl Default for Cni {
    fn default() -> Self {
        Cni {
            bin_dirs: DEFAULT_BIN_DIRS.iter().map(PathBuf::from).collect(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// One pod's attachment to a network: what the plugins are told about the
/// pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// `CNI_CONTAINERID`: the pod sandbox id. Letters, digits, `_`, `.`
    /// and `-`.
    pub container_id: String,
    /// `CNI_NETNS`: the path of the pod's network namespace. May be empty
    /// for a DEL when the namespace is already gone.
    pub netns: PathBuf,
    /// `CNI_IFNAME`: the interface to create in the pod's namespace
    /// (`eth0`).
    pub ifname: String,
    /// The pod's Kubernetes namespace (`K8S_POD_NAMESPACE`).
    pub pod_namespace: String,
    /// The pod's name (`K8S_POD_NAME`).
    pub pod_name: String,
    /// The pod's UID (`K8S_POD_UID`).
    pub pod_uid: String,
    /// Host ports to forward to the pod (the `portMappings` capability).
    /// Only ports with a host port: a CRI port mapping without one is left
    /// out.
    pub port_mappings: Vec<PortMapping>,
}

/// A host port forwarded to the pod: an entry of the `portMappings`
/// capability, as the `portmap` plugin reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// The port on the host.
    pub host_port: u16,
    /// The port in the pod.
    pub container_port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// The host address to listen on; all addresses when `None`.
    #[serde(rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
}

/// A port mapping's protocol, written in lower case as plugins expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

/// What [`Cni::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Every plugin confirmed the attachment.
    Passed,
    /// CHECK was not run: the network's version predates it, or the
    /// network sets `disableCheck`.
    Skipped {
        /// Why.
        reason: String,
    },
}

impl Attachment {
    /// `CNI_ARGS`: the pod's identity, as containerd passes it.
    pub fn cni_args(&self) -> String {
        format!(
            "K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={};IgnoreUnknown=1",
            self.pod_namespace, self.pod_name, self.container_id, self.pod_uid
        )
    }

    /// The runtime's values of the capabilities it implements, by
    /// capability name. Each plugin gets those it declares in
    /// `runtimeConfig`.
    ///
    /// `portMappings` is always present (an empty list when there is
    /// none), as containerd passes it. Further capabilities (`bandwidth`,
    /// `ipRanges`, `dns`) become further fields of the attachment and
    /// entries here.
    pub fn runtime_values(&self) -> Map<String, Value> {
        let mut values = Map::new();
        values.insert(
            "portMappings".to_owned(),
            serde_json::to_value(&self.port_mappings).unwrap_or(Value::Array(Vec::new())),
        );
        values
    }

    /// Checks that every field can be passed to plugins.
    pub fn validate(&self) -> Result<(), CniError> {
        let invalid = |field, value: &str, reason| CniError::InvalidAttachment {
            field,
            value: value.to_owned(),
            reason,
        };
        let id = &self.container_id;
        if id.is_empty() {
            return Err(invalid("container_id", id, "empty"));
        }
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(invalid(
                "container_id",
                id,
                "may only hold ASCII letters, digits, '_', '.' and '-'",
            ));
        }
        let ifname = &self.ifname;
        if ifname.is_empty() || ifname.len() > MAX_IFNAME_LEN {
            return Err(invalid("ifname", ifname, "must be 1 to 15 bytes long"));
        }
        if ifname == "."
            || ifname == ".."
            || ifname
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(invalid("ifname", ifname, "is not a valid interface name"));
        }
        if !self.netns.as_os_str().is_empty() && !self.netns.is_absolute() {
            return Err(invalid(
                "netns",
                &self.netns.display().to_string(),
                "must be an absolute path",
            ));
        }
        for (field, value) in [
            ("pod_namespace", &self.pod_namespace),
            ("pod_name", &self.pod_name),
            ("pod_uid", &self.pod_uid),
        ] {
            if value.contains([';', '=', '\0']) {
                return Err(invalid(
                    field,
                    value,
                    "cannot hold ';', '=' or NUL (CNI_ARGS syntax)",
                ));
            }
        }
        Ok(())
    }
}

impl Cni {
    /// The executable of plugin `plugin_type`: the first regular,
    /// executable file of that name in [`bin_dirs`](Self::bin_dirs).
    pub fn find_plugin(&self, plugin_type: &str) -> Result<PathBuf, CniError> {
        self.bin_dirs
            .iter()
            .map(|dir| dir.join(plugin_type))
            .find(|path| is_executable_file(path))
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: plugin_type.to_owned(),
                dirs: self.bin_dirs.clone(),
            })
    }

    /// ADD: attaches the pod to the network. Runs the plugins in order,
    /// each getting the previous one's result as `prevResult`, and returns
    /// the last plugin's result.
    ///
    /// Every plugin is looked up before the first runs. When a plugin
    /// fails, earlier plugins may have done their part: the caller should
    /// run [`del`](Self::del) (without a cached result) before giving up
    /// on the pod.
    pub async fn add(
        &self,
        list: &NetworkConfigList,
        attachment: &Attachment,
    ) -> Result<CniResult, CniError> {
        attachment.validate()?;
        let paths = self.find_plugins(list)?;
        let runtime_values = attachment.runtime_values();
        let mut prev: Option<CniResult> = None;
        for (plugin, path) in list.plugins.iter().zip(&paths) {
            let output = self
                .invoke(
                    CniCommand::Add,
                    list,
                    plugin,
                    path,
                    attachment,
                    prev.as_ref().map(CniResult::raw),
                    &runtime_values,
                )
                .await?;
            let invalid = |field: String, reason: String| CniError::InvalidResult {
                plugin: plugin.plugin_type().to_owned(),
                command: CniCommand::Add,
                field,
                reason,
            };
            let Some(output) = output else {
                return Err(invalid(
                    "(result)".to_owned(),
                    "no result on stdout".to_owned(),
                ));
            };
            let result = CniResult::from_json(output).map_err(|e| invalid(e.field, e.reason))?;
            prev = Some(result);
        }
        // `plugins` is never empty, so some plugin produced a result.
        let result = prev.ok_or_else(|| CniError::InvalidResult {
            plugin: String::new(),
            command: CniCommand::Add,
            field: "(result)".to_owned(),
            reason: "the network has no plugins".to_owned(),
        })?;
        info!(
            container_id = %attachment.container_id,
            network = %list.name,
            ips = ?result.pod_ips(),
            "CNI ADD done"
        );
        Ok(result)
    }

    /// CHECK: asks every plugin, in order, whether the attachment is still
    /// as ADD left it, each getting ADD's `result` as `prevResult`.
    ///
    /// Skipped (not an error) for networks older than 0.4.0 and for
    /// networks with `disableCheck`.
    pub async fn check(
        &self,
        list: &NetworkConfigList,
        attachment: &Attachment,
        result: &CniResult,
    ) -> Result<CheckOutcome, CniError> {
        if list.disable_check {
            return Ok(CheckOutcome::Skipped {
                reason: format!("network {} sets disableCheck", list.name),
            });
        }
        if !list.check_enabled() {
            return Ok(CheckOutcome::Skipped {
                reason: format!(
                    "network {} has cniVersion {}, CHECK needs 0.4.0 or later",
                    list.name, list.cni_version
                ),
            });
        }
        attachment.validate()?;
        let paths = self.find_plugins(list)?;
        let runtime_values = attachment.runtime_values();
        for (plugin, path) in list.plugins.iter().zip(&paths) {
            self.invoke(
                CniCommand::Check,
                list,
                plugin,
                path,
                attachment,
                Some(result.raw()),
                &runtime_values,
            )
            .await?;
        }
        debug!(container_id = %attachment.container_id, network = %list.name, "CNI CHECK passed");
        Ok(CheckOutcome::Passed)
    }

    /// DEL: detaches the pod from the network. Runs the plugins in reverse
    /// order, each getting `cached` (ADD's result, when known) as
    /// `prevResult`.
    ///
    /// Plugins tolerate a DEL of what is already gone, so a DEL can be
    /// repeated. When plugins fail, the others still run, and the error
    /// ([`CniError::Delete`]) lists every failure: the caller should keep
    /// the pod's network state and retry the DEL later.
    pub async fn del(
        &self,
        list: &NetworkConfigList,
        attachment: &Attachment,
        cached: Option<&CniResult>,
    ) -> Result<(), CniError> {
        attachment.validate()?;
        let runtime_values = attachment.runtime_values();
        let mut failures = Vec::new();
        for plugin in list.plugins.iter().rev() {
            let outcome = match self.find_plugin(plugin.plugin_type()) {
                Ok(path) => {
                    self.invoke(
                        CniCommand::Del,
                        list,
                        plugin,
                        &path,
                        attachment,
                        cached.map(CniResult::raw),
                        &runtime_values,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                warn!(
                    container_id = %attachment.container_id,
                    network = %list.name,
                    error = %e,
                    "CNI DEL failed for a plugin; running the others"
                );
                failures.push(e);
            }
        }
        if failures.is_empty() {
            info!(container_id = %attachment.container_id, network = %list.name, "CNI DEL done");
            Ok(())
        } else {
            Err(CniError::Delete {
                network: list.name.clone(),
                failures,
            })
        }
    }

    /// Every plugin's executable, in the network's order.
    fn find_plugins(&self, list: &NetworkConfigList) -> Result<Vec<PathBuf>, CniError> {
        list.plugins
            .iter()
            .map(|plugin| self.find_plugin(plugin.plugin_type()))
            .collect()
    }

    /// Runs one plugin with the stdin and environment the specification
    /// gives it.
    #[allow(clippy::too_many_arguments)]
    async fn invoke(
        &self,
        command: CniCommand,
        list: &NetworkConfigList,
        plugin: &PluginConfig,
        path: &Path,
        attachment: &Attachment,
        prev_result: Option<&Value>,
        runtime_values: &Map<String, Value>,
    ) -> Result<Option<Value>, CniError> {
        let stdin = plugin_stdin(list, plugin, prev_result, runtime_values);
        let env = plugin_env(command, attachment, &self.bin_dirs);
        let span = info_span!(
            "cni_plugin",
            container_id = %attachment.container_id,
            network = %list.name,
            plugin = plugin.plugin_type(),
            %command,
        );
        debug!(parent: &span, path = %path.display(), "running CNI plugin");
        run_plugin(PluginRun {
            plugin: plugin.plugin_type(),
            path,
            command,
            env: &env,
            stdin: &stdin,
            timeout: self.timeout,
        })
        .instrument(span)
        .await
    }
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod real_plugin_tests;
