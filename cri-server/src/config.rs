//! hulld's configuration: `/etc/hull/config.toml`.
//!
//! Every field has a default, unknown keys are refused with their name, and
//! `hulld config default` prints [`DEFAULT_CONFIG_TOML`], the documented file
//! whose values are exactly the defaults (a unit test keeps the two equal).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::vm_config::{MAX_VCPUS, RuntimeHandlers, VmSettings};

/// Where hulld looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hull/config.toml";

/// The default configuration file, with a comment for every key.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default_config.toml");

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Unix socket on which the CRI is served.
    pub socket_path: PathBuf,
    /// Root of hulld's persistent state: pod and container records, images.
    pub state_dir: PathBuf,
    /// The cgroup driver reported to the kubelet (RuntimeConfig) and used for
    /// the host cgroups of pod VMs.
    pub cgroup_driver: CgroupDriver,
    pub log: LogConfig,
    /// Registry mirrors, credentials and plain-HTTP hosts.
    pub registry: image_service::RegistryConfig,
    /// Limits on what one pulled image may unpack to.
    pub image: image_service::UnpackLimits,
    /// Pod VMs: kernel, agent, default size, slots, scratch disk.
    pub vm: VmSettings,
    /// RuntimeClass handlers and the VM size each selects.
    pub runtime_handlers: RuntimeHandlers,
    /// Pod networking: CNI configuration, plugins, network namespaces.
    pub cni: CniSettings,
    /// The streaming server behind Exec, Attach and PortForward.
    pub stream: StreamSettings,
    /// The Prometheus endpoint.
    pub metrics: MetricsSettings,
}

/// hulld's Prometheus endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// `IP:PORT` serving `GET /metrics`; empty: no endpoint.
    pub address: String,
}

impl MetricsSettings {
    /// The address to serve on, if any (checked when the config loads).
    pub fn socket_address(&self) -> Option<std::net::SocketAddr> {
        self.address.parse().ok()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket_path: PathBuf::from("/run/hull/hull.sock"),
            state_dir: PathBuf::from("/var/lib/hull"),
            cgroup_driver: CgroupDriver::Cgroupfs,
            log: LogConfig::default(),
            registry: image_service::RegistryConfig::default(),
            image: image_service::UnpackLimits::default(),
            vm: VmSettings::default(),
            runtime_handlers: RuntimeHandlers::new(),
            cni: CniSettings::default(),
            stream: StreamSettings::default(),
            metrics: MetricsSettings::default(),
        }
    }
}

/// hulld's streaming server: where it listens, how long its URLs live, and
/// what one session may hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSettings {
    /// IP address to listen on; the URLs handed to the kubelet carry it.
    pub address: std::net::IpAddr,
    /// TCP port; 0 picks a free port at each start.
    pub port: u16,
    /// How long a URL from Exec, Attach or PortForward may wait for its one
    /// use.
    pub token_ttl_secs: u64,
    /// Streaming sessions open at once, all kinds together.
    pub max_sessions: usize,
    /// A session with no traffic either way for this long is closed.
    pub idle_timeout_secs: u64,
    /// How long a client may take to open the streams of a session after
    /// the upgrade.
    pub stream_creation_timeout_secs: u64,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            address: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            port: 0,
            token_ttl_secs: 60,
            max_sessions: 64,
            idle_timeout_secs: 4 * 3600,
            stream_creation_timeout_secs: 30,
        }
    }
}

/// Pod networking through CNI plugins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniSettings {
    /// Network configurations: the first `.conflist`, `.conf` or `.json`
    /// file in lexical order is the pod network.
    pub conf_dir: PathBuf,
    /// Where plugins are looked up, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// One named network namespace per pod: `<netns_dir>/<pod id>`.
    pub netns_dir: PathBuf,
    /// How long one plugin call may take before it is killed.
    pub plugin_timeout_secs: u64,
}

impl Default for CniSettings {
    fn default() -> Self {
        Self {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            netns_dir: PathBuf::from("/run/hull/netns"),
            plugin_timeout_secs: 60,
        }
    }
}

/// How pod VM cgroups are managed on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

/// hulld's own logs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `debug`, `cri_server=debug,info`, ...
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration file {path}: key `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

impl Config {
    /// Reads `path`. A missing file at the default path means "all defaults";
    /// a missing file named explicitly is an error.
    pub fn load(path: &Path, explicitly_named: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !explicitly_named => {
                return Ok(Config::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_path_buf(),
            message: err.to_string().trim_end().replace('\n', " "),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            reason: reason.to_string(),
        };
        if !self.socket_path.is_absolute() {
            return Err(invalid("socket_path", "must be an absolute path"));
        }
        if !self.state_dir.is_absolute() {
            return Err(invalid("state_dir", "must be an absolute path"));
        }
        for (key, value) in [
            ("vm.kernel", &self.vm.kernel),
            ("vm.initramfs", &self.vm.initramfs),
            ("vm.run_dir", &self.vm.run_dir),
            ("cni.conf_dir", &self.cni.conf_dir),
            ("cni.netns_dir", &self.cni.netns_dir),
        ] {
            if !value.is_absolute() {
                return Err(invalid(key, "must be an absolute path"));
            }
        }
        if self.vm.vcpus == 0 || self.vm.vcpus > MAX_VCPUS {
            return Err(invalid("vm.vcpus", "must be between 1 and 32"));
        }
        if self.vm.memory_mib < 64 || self.vm.base_memory_mib < 64 {
            return Err(invalid(
                "vm.memory_mib",
                "memory_mib and base_memory_mib must be at least 64",
            ));
        }
        if self.vm.drive_slots == 0 || self.vm.drive_slots > 16 {
            return Err(invalid(
                "vm.drive_slots",
                "must be between 1 and 16 (each slot is a virtio-mmio device)",
            ));
        }
        for handler in self.runtime_handlers.values() {
            if handler.vcpus.is_some_and(|v| v == 0 || v > MAX_VCPUS) {
                return Err(invalid(
                    "runtime_handlers.*.vcpus",
                    "must be between 1 and 32",
                ));
            }
            if handler.memory_mib.is_some_and(|m| m < 64) {
                return Err(invalid(
                    "runtime_handlers.*.memory_mib",
                    "must be at least 64",
                ));
            }
        }
        if self.cni.bin_dirs.is_empty() || self.cni.bin_dirs.iter().any(|d| !d.is_absolute()) {
            return Err(invalid(
                "cni.bin_dirs",
                "must list at least one directory, each an absolute path",
            ));
        }
        if self.cni.plugin_timeout_secs == 0 {
            return Err(invalid("cni.plugin_timeout_secs", "must be at least 1"));
        }
        if self.stream.address.is_unspecified() {
            return Err(invalid(
                "stream.address",
                "must be an address clients can connect to (it goes into the URLs), not 0.0.0.0 or ::",
            ));
        }
        for (key, value) in [
            ("stream.token_ttl_secs", self.stream.token_ttl_secs),
            ("stream.max_sessions", self.stream.max_sessions as u64),
            ("stream.idle_timeout_secs", self.stream.idle_timeout_secs),
            (
                "stream.stream_creation_timeout_secs",
                self.stream.stream_creation_timeout_secs,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if !self.metrics.address.is_empty()
            && self
                .metrics
                .address
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(invalid(
                "metrics.address",
                "must be IP:PORT (e.g. \"127.0.0.1:9464\"), or empty for no endpoint",
            ));
        }
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", &err.to_string()));
        }
        Ok(())
    }

    /// Directory of pod sandbox records.
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.state_dir.join("sandboxes")
    }

    /// Directory of container records.
    pub fn containers_dir(&self) -> PathBuf {
        self.state_dir.join("containers")
    }

    /// Root of the image store.
    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }

    /// Per-pod files that must survive a hulld restart: scratch disk, VM
    /// console log, exit record.
    pub fn pods_dir(&self) -> PathBuf {
        self.state_dir.join("pods")
    }

    /// Runtime-wide state the kubelet sets (UpdateRuntimeConfig).
    pub fn runtime_state_path(&self) -> PathBuf {
        self.state_dir.join("runtime.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/hull/config.toml"))
    }

    #[test]
    fn documented_default_file_equals_the_defaults() {
        assert_eq!(parse(DEFAULT_CONFIG_TOML).unwrap(), Config::default());
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_refused_with_its_name_and_the_file() {
        let err = parse("socket_pth = \"/run/x.sock\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("socket_pth"), "{err}");
        assert!(err.contains("/etc/hull/config.toml"), "{err}");
        let err = parse("[log]\nlevle = \"debug\"\n").unwrap_err().to_string();
        assert!(err.contains("levle"), "{err}");
    }

    #[test]
    fn wrong_value_type_names_the_key() {
        let err = parse("cgroup_driver = \"cgroupv3\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cgroup"), "{err}");
    }

    #[test]
    fn relative_paths_are_refused() {
        let err = parse("state_dir = \"var/lib/hull\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("state_dir") && err.contains("absolute"),
            "{err}"
        );
    }

    #[test]
    fn cni_settings_are_checked() {
        let err = parse("[cni]\nbin_dirs = []\n").unwrap_err().to_string();
        assert!(err.contains("cni.bin_dirs"), "{err}");
        let err = parse("[cni]\nbin_dirs = [\"opt/cni\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cni.bin_dirs"), "{err}");
        let err = parse("[cni]\nplugin_timeout_secs = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cni.plugin_timeout_secs"), "{err}");
        let config = parse("[cni]\nconf_dir = \"/etc/hull/net.d\"\n").unwrap();
        assert_eq!(config.cni.conf_dir, PathBuf::from("/etc/hull/net.d"));
        assert_eq!(config.cni.bin_dirs, CniSettings::default().bin_dirs);
    }

    #[test]
    fn values_are_read() {
        let config = parse(
            "socket_path = \"/tmp/h.sock\"\ncgroup_driver = \"systemd\"\n[log]\nformat = \"json\"\n",
        )
        .unwrap();
        assert_eq!(config.socket_path, PathBuf::from("/tmp/h.sock"));
        assert_eq!(config.cgroup_driver, CgroupDriver::Systemd);
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.log.level, "info");
    }

    #[test]
    fn missing_default_file_is_all_defaults_but_a_named_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        assert_eq!(Config::load(&path, false).unwrap(), Config::default());
        assert!(matches!(
            Config::load(&path, true),
            Err(ConfigError::Read { .. })
        ));
    }
}
