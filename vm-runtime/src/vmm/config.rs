//! What a VM is made of: the `config` of the control socket's `boot`
//! request, or of `hull-vmm --config-file`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::vstate::mptable::MAX_VCPUS;

/// Arguments hull always puts first on the guest kernel command line.
/// `reboot=k`: leave through the i8042 reset (the VMM ends the VM);
/// `panic=-1`: reboot at once on panic (the VMM reports it as a panic);
/// `i8042.*`: the keyboard (there for Ctrl+Alt+Del, the graceful stop) is
/// probed without the mouse port, multiplexer or PnP, and never configured.
pub const BASE_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// The whole VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: an ELF vmlinux or a bzImage.
    pub kernel: PathBuf,
    /// Initramfs (cpio, optionally compressed) to load next to the kernel.
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// Appended to [`BASE_CMDLINE`] and the devices' entries.
    #[serde(default)]
    pub cmdline_extra: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Block devices, in order: the guest sees them as vda, vdb, ...
    #[serde(default)]
    pub drives: Vec<DriveConfig>,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// Adds a virtio-rng device fed from the host's getrandom.
    #[serde(default)]
    pub rng: bool,
}

fn default_vcpus() -> u8 {
    1
}

fn default_memory_mib() -> u64 {
    128
}

/// A virtio-blk device, or an empty slot to fill later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// Name used by `set_drive` and in metrics; also the virtio-blk serial (GET_ID).
    pub id: String,
    /// Backing file; absent for an empty slot (capacity 0 until `set_drive`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Read-only devices refuse writes; fixed for the slot's lifetime.
    #[serde(default)]
    pub read_only: bool,
}

/// The virtio-vsock device and its host side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u32,
    /// Host side: hull connects here and says `CONNECT <port>`; the guest's
    /// connections to host port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// A virtio-net device on a tap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub id: String,
    pub tap: TapSource,
    /// Guest MAC address, `aa:bb:cc:dd:ee:ff`; random (locally administered) when absent.
    #[serde(default)]
    pub mac: Option<String>,
}

/// Where the tap comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TapSource {
    /// The VMM opens `/dev/net/tun` and attaches to (or creates) this tap.
    Name(String),
    /// The n-th file descriptor passed with the `boot` request (SCM_RIGHTS);
    /// it must be a tap opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR.
    PassedFd(usize),
}

/// Why a config is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("vcpus must be 1 to {MAX_VCPUS}, got {0}")]
    Vcpus(u8),
    #[error("memory_mib must be at least 64, got {0}")]
    Memory(u64),
    #[error("drive id {0:?} is empty, too long (max 20 bytes) or used twice")]
    DriveId(String),
    #[error("guest_cid must be at least 3, got {0}")]
    GuestCid(u32),
    #[error("invalid MAC address {0:?}")]
    Mac(String),
    #[error("too many devices: {0} virtio devices but only {1} interrupt lines")]
    TooManyDevices(usize, usize),
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(mac: &str) -> Result<[u8; 6], ConfigError> {
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for byte in out.iter_mut() {
        let part = parts.next().ok_or_else(|| ConfigError::Mac(mac.into()))?;
        if part.len() != 2 {
            return Err(ConfigError::Mac(mac.into()));
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| ConfigError::Mac(mac.into()))?;
    }
    if parts.next().is_some() {
        return Err(ConfigError::Mac(mac.into()));
    }
    Ok(out)
}

impl VmConfig {
    /// Number of virtio-mmio devices this config creates.
    pub fn virtio_device_count(&self) -> usize {
        self.drives.len()
            + self.net.len()
            + usize::from(self.vsock.is_some())
            + usize::from(self.rng)
    }

    /// Checks what can be checked without touching the host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if self.memory_mib < 64 {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        let mut ids = std::collections::HashSet::new();
        for drive in &self.drives {
            if drive.id.is_empty() || drive.id.len() > 20 || !ids.insert(drive.id.as_str()) {
                return Err(ConfigError::DriveId(drive.id.clone()));
            }
        }
        if let Some(vsock) = &self.vsock
            && vsock.guest_cid < 3
        {
            return Err(ConfigError::GuestCid(vsock.guest_cid));
        }
        for net in &self.net {
            if let Some(mac) = &net.mac {
                parse_mac(mac)?;
            }
        }
        let lines = crate::vstate::layout::virtio_irq_count();
        if self.virtio_device_count() > lines {
            return Err(ConfigError::TooManyDevices(
                self.virtio_device_count(),
                lines,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> VmConfig {
        serde_json::from_str(r#"{"kernel":"/k"}"#).unwrap()
    }

    #[test]
    fn defaults_fill_a_minimal_config() {
        let c = minimal();
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.memory_mib, 128);
        assert!(c.drives.is_empty());
        c.validate().unwrap();
    }

    #[test]
    fn full_config_parses() {
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","initramfs":"/i","cmdline_extra":"quiet","vcpus":2,"memory_mib":256,
                "drives":[{"id":"rootfs","path":"/r.img","read_only":true},{"id":"slot1"}],
                "vsock":{"guest_cid":3,"uds_path":"/run/v.sock"},
                "net":[{"id":"eth0","tap":{"passed_fd":0},"mac":"02:00:00:00:00:01"},
                       {"id":"eth1","tap":{"name":"tap1"}}],
                "rng":true}"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.drives[1].path, None);
        assert_eq!(c.net[0].tap, TapSource::PassedFd(0));
        assert_eq!(c.virtio_device_count(), 6);
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","vcpu":2}"#).is_err());
        assert!(
            serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","drives":[{"id":"a","ro":true}]}"#)
                .is_err()
        );
    }

    #[test]
    fn validation_names_the_problem() {
        let mut c = minimal();
        c.vcpus = 0;
        assert!(matches!(c.validate(), Err(ConfigError::Vcpus(0))));
        let mut c = minimal();
        c.memory_mib = 8;
        assert!(matches!(c.validate(), Err(ConfigError::Memory(8))));
        let mut c = minimal();
        c.drives = vec![
            DriveConfig {
                id: "a".into(),
                path: None,
                read_only: false,
            },
            DriveConfig {
                id: "a".into(),
                path: None,
                read_only: false,
            },
        ];
        assert!(matches!(c.validate(), Err(ConfigError::DriveId(_))));
        let mut c = minimal();
        c.vsock = Some(VsockConfig {
            guest_cid: 2,
            uds_path: "/v".into(),
        });
        assert!(matches!(c.validate(), Err(ConfigError::GuestCid(2))));
        let mut c = minimal();
        c.drives = (0..30)
            .map(|i| DriveConfig {
                id: format!("d{i}"),
                path: None,
                read_only: false,
            })
            .collect();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TooManyDevices(30, _))
        ));
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:0a:ff:00:01:10").unwrap(),
            [2, 10, 255, 0, 1, 16]
        );
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "zz:00:00:00:00:00",
            "2:00:00:00:00:000",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }
}
