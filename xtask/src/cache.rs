//! Where xtask keeps build products that outlive a checkout: the guest kernel
//! and the test VM's initramfs. Both are expensive to make and depend only on
//! their inputs, so a second clone (or a second CI run) on the same machine
//! reuses them.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// `$HULL_CACHE_DIR`, else `$HOME/.cache/hull`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("HULL_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::home_dir().unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache").join("hull")
}

/// Holds an exclusive `flock` on a file until dropped, so two xtask processes
/// never build into the same cache folder at once.
pub struct CacheLock {
    _file: File,
}

impl CacheLock {
    /// Blocks until the lock on `path` (created if missing) is ours.
    pub fn acquire(path: &Path) -> Result<CacheLock> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        if file.try_lock().is_err() {
            eprintln!(
                "xtask: waiting for another xtask holding {}",
                path.display()
            );
            file.lock()
                .with_context(|| format!("cannot lock {}", path.display()))?;
        }
        Ok(CacheLock { _file: file })
    }
}

/// Hex SHA-256 of the parts, each followed by a NUL so that moving bytes from
/// one part to the next changes the digest.
pub fn digest_hex(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
        hasher.update([0u8]);
    }
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_separates_parts() {
        assert_ne!(digest_hex(&[b"ab", b"c"]), digest_hex(&[b"a", b"bc"]));
        assert_eq!(digest_hex(&[b"x"]), digest_hex(&[b"x"]));
        assert_eq!(digest_hex(&[b"x"]).len(), 64);
    }
}
