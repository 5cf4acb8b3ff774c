//! Garbage collection: images no reference name keeps, and blobs no image
//! keeps, are deleted. In-flight pulls hold leases on what they write, so a
//! removal that runs beside a pull never deletes the pull's blobs.

use std::collections::HashSet;
use std::fs;
use std::sync::{Arc, MutexGuard};

use crate::digest::Digest;
use crate::store::{StoreError, StoreInner, remove_any};

/// What one collection removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcStats {
    /// Images (record + filesystem image) deleted.
    pub images_removed: usize,
    /// Blobs deleted.
    pub blobs_removed: usize,
}

/// Deletes images without reference names and blobs no image names, except
/// what in-flight pulls lease.
pub(crate) fn collect(inner: &StoreInner) -> Result<GcStats, StoreError> {
    let mut stats = GcStats::default();
    let layout = &inner.layout;
    let mut state = inner.state.write().expect("state lock");
    let leases = inner.leases.lock().expect("lease lock");

    let referenced: HashSet<String> = state.refs.values().map(|r| r.image_id.clone()).collect();
    let unreferenced: Vec<String> = state
        .images
        .keys()
        .filter(|id| !referenced.contains(*id) && !leased(&leases, &image_key(id)))
        .cloned()
        .collect();
    for id in unreferenced {
        state.images.remove(&id);
    }

    let images_dir = layout.images_dir();
    for entry in fs::read_dir(&images_dir).map_err(StoreError::io("list", &images_dir))? {
        let path = entry.map_err(StoreError::io("list", &images_dir))?.path();
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(|hex| format!("sha256:{hex}"))
            .unwrap_or_default();
        if !state.images.contains_key(&id) && !leased(&leases, &image_key(&id)) {
            let doomed = layout.tmp_path("gc-image");
            fs::rename(&path, &doomed).map_err(StoreError::io("remove", &path))?;
            remove_any(&doomed).map_err(StoreError::io("remove", &doomed))?;
            stats.images_removed += 1;
        }
    }

    let live_blobs: HashSet<&str> = state
        .images
        .values()
        .flat_map(|rec| rec.blobs.iter().map(String::as_str))
        .collect();
    let blobs_dir = layout.blobs_dir();
    for entry in fs::read_dir(&blobs_dir).map_err(StoreError::io("list", &blobs_dir))? {
        let path = entry.map_err(StoreError::io("list", &blobs_dir))?.path();
        let digest = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(|hex| format!("sha256:{hex}"))
            .unwrap_or_default();
        let valid = Digest::parse(&digest).is_ok();
        if !valid || (!live_blobs.contains(digest.as_str()) && !leased(&leases, &digest)) {
            remove_any(&path).map_err(StoreError::io("remove", &path))?;
            stats.blobs_removed += 1;
        }
    }
    if stats != GcStats::default() {
        tracing::info!(
            images_removed = stats.images_removed,
            blobs_removed = stats.blobs_removed,
            "garbage collected the image store"
        );
    }
    Ok(stats)
}

/// Lease key of an image (its id is also its config blob's digest).
fn image_key(id: &str) -> String {
    format!("image:{id}")
}

fn leased(leases: &MutexGuard<'_, std::collections::HashMap<String, usize>>, key: &str) -> bool {
    leases.contains_key(key)
}

/// Keeps blobs and images from garbage collection while a pull writes them;
/// released on drop.
pub(crate) struct Lease {
    inner: Arc<StoreInner>,
    keys: Vec<String>,
}

impl Lease {
    /// An empty lease.
    pub fn new(inner: Arc<StoreInner>) -> Self {
        Lease {
            inner,
            keys: Vec::new(),
        }
    }

    /// Adds an image (by id) to the lease.
    pub fn add_image(&mut self, id: &str) {
        self.add(&image_key(id));
    }

    /// Adds a blob (by digest) to the lease.
    pub fn add(&mut self, key: &str) {
        *self
            .inner
            .leases
            .lock()
            .expect("lease lock")
            .entry(key.to_string())
            .or_default() += 1;
        self.keys.push(key.to_string());
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut leases = self.inner.leases.lock().expect("lease lock");
        for key in self.keys.drain(..) {
            if let Some(count) = leases.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    leases.remove(&key);
                }
            }
        }
    }
}
