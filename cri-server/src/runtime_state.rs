//! Runtime-wide state set by the kubelet, kept across restarts
//! (`<state_dir>/runtime.json`): the node's pod CIDR(s).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::CriError;
use crate::store::StoreError;
use crate::store::atomic::write_atomic;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct RuntimeStateRecord {
    /// Comma-separated CIDRs, as the kubelet sends them (dual-stack: two).
    #[serde(default)]
    pod_cidr: String,
}

/// The kubelet-set runtime state.
pub struct RuntimeState {
    path: PathBuf,
    record: Mutex<RuntimeStateRecord>,
}

impl RuntimeState {
    /// Loads `path`; a missing or unreadable file starts empty (and says so).
    pub fn load(path: &Path) -> Self {
        let record = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::error!(path = %path.display(), %error, "cannot parse runtime state; starting without a pod CIDR");
                RuntimeStateRecord::default()
            }),
            Err(_) => RuntimeStateRecord::default(),
        };
        Self {
            path: path.to_path_buf(),
            record: Mutex::new(record),
        }
    }

    /// The pod CIDR(s) last set by the kubelet ("" if none).
    pub fn pod_cidr(&self) -> String {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pod_cidr
            .clone()
    }

    /// Validates and stores the kubelet's pod CIDR(s), durably.
    pub fn set_pod_cidr(&self, pod_cidr: &str) -> Result<(), CriError> {
        for cidr in pod_cidr.split(',') {
            validate_cidr(cidr.trim()).map_err(|reason| CriError::InvalidField {
                field: "runtime_config.network_config.pod_cidr",
                reason: format!("{cidr:?}: {reason}"),
            })?;
        }
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let next = RuntimeStateRecord {
            pod_cidr: pod_cidr.to_string(),
        };
        let bytes = serde_json::to_vec_pretty(&next).map_err(|source| StoreError::Encode {
            kind: "runtime state",
            id: "runtime".into(),
            source,
        })?;
        write_atomic(&self.path, &bytes).map_err(|source| StoreError::Write {
            path: self.path.clone(),
            source,
        })?;
        *record = next;
        Ok(())
    }
}

fn validate_cidr(cidr: &str) -> Result<(), &'static str> {
    let (address, prefix) = cidr.split_once('/').ok_or("not ADDRESS/PREFIX")?;
    let address: IpAddr = address.parse().map_err(|_| "not an IP address")?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| "prefix length is not a number")?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err("prefix length too long for the address family");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidr_is_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.json");
        let state = RuntimeState::load(&path);
        assert_eq!(state.pod_cidr(), "");
        state
            .set_pod_cidr("10.244.1.0/24,fd00:10:244:1::/64")
            .unwrap();
        let reloaded = RuntimeState::load(&path);
        assert_eq!(reloaded.pod_cidr(), "10.244.1.0/24,fd00:10:244:1::/64");
    }

    #[test]
    fn malformed_cidr_is_refused_and_the_old_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = RuntimeState::load(&dir.path().join("runtime.json"));
        state.set_pod_cidr("10.0.0.0/16").unwrap();
        for bad in ["10.0.0.0", "10.0.0.0/33", "nonsense/8", "10.0.0.0/x"] {
            let err = state.set_pod_cidr(bad).unwrap_err().to_string();
            assert!(err.contains("pod_cidr"), "{err}");
        }
        assert_eq!(state.pod_cidr(), "10.0.0.0/16");
    }
}
