//! The image store: blobs by digest, one folder per image holding its record
//! and its filesystem image, one record per reference name. Loaded from disk
//! by [`ImageStore::open`], which also removes whatever an interrupted pull or
//! removal left behind.

mod layout;
mod records;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

pub use layout::{IMAGE_RECORD, Layout, ROOTFS_EROFS, fsync_dir, remove_any, write_atomic};
pub use records::{BlockImageFormat, Image, ImageRecord, LayerRecord, RefRecord};

use crate::config::{RegistryConfig, UnpackLimits};
use crate::digest::Digest;
use crate::error::ImageError;
use crate::gc;
use crate::reference::ImageRef;

/// The store on disk failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or folder operation failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done (`create`, `read`, `remove`, …).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A record could not be encoded.
    #[error("cannot encode the record for {what}")]
    Encode {
        /// The image or reference whose record it is.
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    /// Wraps an I/O error with what was being done and where.
    pub fn io<'a>(
        action: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> StoreError + 'a {
        move |source| StoreError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Bytes and inodes the store uses on disk (CRI ImageFsInfo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    /// The store root, reported as the filesystem identifier.
    pub mountpoint: PathBuf,
    /// Bytes of disk allocated to files and folders under the root.
    pub used_bytes: u64,
    /// Files and folders under the root, the root included.
    pub inodes_used: u64,
}

/// What the store holds in memory, mirrored from disk.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub images: HashMap<String, ImageRecord>,
    pub refs: BTreeMap<String, RefRecord>,
}

impl State {
    /// The id of the image `text` names: a full id (`sha256:<hex>` or bare
    /// hex), a reference name (normalized), or an unambiguous id prefix.
    pub fn resolve(&self, text: &str) -> Option<String> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        let as_id = if text.starts_with("sha256:") {
            text.to_string()
        } else {
            format!("sha256:{text}")
        };
        if self.images.contains_key(&as_id) {
            return Some(as_id);
        }
        if let Ok(reference) = ImageRef::parse(text)
            && let Some(r) = self.refs.get(&reference.to_string())
        {
            return Some(r.image_id.clone());
        }
        let hex_prefix = as_id.strip_prefix("sha256:").unwrap_or_default();
        if !hex_prefix.is_empty() && hex_prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut matches = self.images.keys().filter(|id| id.starts_with(&as_id));
            if let (Some(only), None) = (matches.next(), matches.next()) {
                return Some(only.clone());
            }
        }
        None
    }

    fn refs_of<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a RefRecord> + 'a {
        self.refs.values().filter(move |r| r.image_id == id)
    }
}

/// The image store. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct ImageStore {
    pub(crate) inner: Arc<StoreInner>,
}

pub(crate) struct StoreInner {
    pub layout: Layout,
    pub registry: RegistryConfig,
    pub limits: UnpackLimits,
    pub state: RwLock<State>,
    /// Blob digests and image ids an in-flight pull is writing, with counts;
    /// garbage collection keeps them.
    pub leases: Mutex<HashMap<String, usize>>,
    /// One lock per reference or image being pulled, so concurrent pulls of
    /// one image do the work once.
    pub pulls_in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.inner.layout.root())
            .finish_non_exhaustive()
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store under `root`: loads the records,
    /// removes leftovers of interrupted pulls and removals, and deletes blobs
    /// and images no reference keeps.
    pub fn open(root: &Path, registry: RegistryConfig) -> Result<Self, ImageError> {
        Self::open_with_limits(root, registry, UnpackLimits::default())
    }

    /// [`ImageStore::open`] with explicit bounds on what an image may unpack to.
    pub fn open_with_limits(
        root: &Path,
        registry: RegistryConfig,
        limits: UnpackLimits,
    ) -> Result<Self, ImageError> {
        let layout = Layout::new(root);
        layout
            .create_dirs()
            .map_err(StoreError::io("create the store folders in", root))?;
        clear_dir(&layout.tmp_dir())?;
        let state = load_state(&layout)?;
        let store = ImageStore {
            inner: Arc::new(StoreInner {
                layout,
                registry,
                limits,
                state: RwLock::new(state),
                leases: Mutex::new(HashMap::new()),
                pulls_in_flight: Mutex::new(HashMap::new()),
            }),
        };
        let stats = gc::collect(&store.inner)?;
        tracing::info!(
            root = %root.display(),
            images = store.inner.state.read().expect("state lock").images.len(),
            removed_blobs = stats.blobs_removed,
            removed_images = stats.images_removed,
            "image store opened"
        );
        Ok(store)
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        self.inner.layout.root()
    }

    /// Every image that has at least one reference name.
    pub fn list(&self) -> Vec<Image> {
        let state = self.inner.state.read().expect("state lock");
        let mut images: Vec<Image> = state
            .images
            .values()
            .map(|record| self.view(&state, record))
            .collect();
        images.sort_by(|a, b| a.id.cmp(&b.id));
        images
    }

    /// The image named by `reference_or_id`: its id (`sha256:<hex>`, bare hex,
    /// or an unambiguous prefix), a repo tag (normalized: `busybox` is
    /// `docker.io/library/busybox:latest`) or a repo digest.
    pub fn get(&self, reference_or_id: &str) -> Option<Image> {
        let state = self.inner.state.read().expect("state lock");
        let id = state.resolve(reference_or_id)?;
        state
            .images
            .get(&id)
            .map(|record| self.view(&state, record))
    }

    /// Marks an image as pinned (or not): the kubelet's image GC skips pinned
    /// images. Absent is an error.
    pub fn set_pinned(&self, reference_or_id: &str, pinned: bool) -> Result<bool, ImageError> {
        let mut state = self.inner.state.write().expect("state lock");
        let Some(id) = state.resolve(reference_or_id) else {
            return Ok(false);
        };
        let record = state.images.get_mut(&id).expect("resolved ids exist");
        if record.pinned != pinned {
            let mut updated = record.clone();
            updated.pinned = pinned;
            self.write_image_record(&updated)?;
            *record = updated;
        }
        Ok(true)
    }

    /// Removes the image `reference_or_id` names, with all its reference
    /// names, then deletes blobs no other image uses. Absent is `Ok` (CRI
    /// RemoveImage is idempotent).
    pub async fn remove(&self, reference_or_id: &str) -> Result<(), ImageError> {
        let inner = Arc::clone(&self.inner);
        let text = reference_or_id.to_string();
        tokio::task::spawn_blocking(move || remove_blocking(&inner, &text))
            .await
            .map_err(|_| ImageError::PullAborted {
                reference: reference_or_id.to_string(),
            })?
    }

    /// Bytes and inodes used under the store root (CRI ImageFsInfo).
    pub fn fs_usage(&self) -> Result<FsUsage, ImageError> {
        let root = self.inner.layout.root();
        let mut usage = FsUsage {
            mountpoint: root.to_path_buf(),
            used_bytes: 0,
            inodes_used: 0,
        };
        let mut pending = vec![root.to_path_buf()];
        while let Some(path) = pending.pop() {
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                // Removed while walking (a pull or GC finished): not in use.
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(StoreError::io("inspect", &path)(err).into()),
            };
            usage.used_bytes += meta.blocks() * 512;
            usage.inodes_used += 1;
            if meta.is_dir() {
                let entries = match fs::read_dir(&path) {
                    Ok(entries) => entries,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                    Err(err) => return Err(StoreError::io("list", &path)(err).into()),
                };
                for entry in entries {
                    let entry = entry.map_err(StoreError::io("list", &path))?;
                    pending.push(entry.path());
                }
            }
        }
        Ok(usage)
    }

    fn view(&self, state: &State, record: &ImageRecord) -> Image {
        let id = Digest::parse(&record.id).expect("loaded records have valid ids");
        let block_image = self.inner.layout.image_dir(&id).join(ROOTFS_EROFS);
        Image::from_record(record, state.refs_of(&record.id), block_image)
    }

    pub(crate) fn write_image_record(&self, record: &ImageRecord) -> Result<(), StoreError> {
        let id = Digest::parse(&record.id).expect("records have valid ids");
        let path = self.inner.layout.image_dir(&id).join(IMAGE_RECORD);
        let data = serde_json::to_vec_pretty(record).map_err(|source| StoreError::Encode {
            what: record.id.clone(),
            source,
        })?;
        write_atomic(&path, &self.inner.layout.tmp_path("image-record"), &data)
            .map_err(StoreError::io("write", &path))
    }
}

fn remove_blocking(inner: &StoreInner, text: &str) -> Result<(), ImageError> {
    let layout = &inner.layout;
    {
        let mut state = inner.state.write().expect("state lock");
        let Some(id) = state.resolve(text) else {
            tracing::debug!(image = text, "image to remove is not present");
            return Ok(());
        };
        let names: Vec<String> = state.refs_of(&id).map(|r| r.name.clone()).collect();
        for name in &names {
            let path = layout.ref_record(name);
            remove_any(&path).map_err(StoreError::io("remove", &path))?;
            state.refs.remove(name);
        }
        fsync_dir(&layout.refs_dir()).map_err(StoreError::io("sync", &layout.refs_dir()))?;
        state.images.remove(&id);
        let digest = Digest::parse(&id).expect("ids are digests");
        let dir = layout.image_dir(&digest);
        let doomed = layout.tmp_path("removed-image");
        match fs::rename(&dir, &doomed) {
            Ok(()) => remove_any(&doomed).map_err(StoreError::io("remove", &doomed))?,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(StoreError::io("remove", &dir)(err).into()),
        }
        tracing::info!(image_id = %id, names = ?names, "image removed");
    }
    gc::collect(inner)?;
    Ok(())
}

/// Removes everything inside `dir`.
fn clear_dir(dir: &Path) -> Result<(), StoreError> {
    for entry in fs::read_dir(dir).map_err(StoreError::io("list", dir))? {
        let path = entry.map_err(StoreError::io("list", dir))?.path();
        tracing::info!(path = %path.display(), "removing leftover of an interrupted pull");
        remove_any(&path).map_err(StoreError::io("remove", &path))?;
    }
    Ok(())
}

fn load_state(layout: &Layout) -> Result<State, StoreError> {
    let mut state = State::default();
    let images_dir = layout.images_dir();
    for entry in fs::read_dir(&images_dir).map_err(StoreError::io("list", &images_dir))? {
        let dir = entry.map_err(StoreError::io("list", &images_dir))?.path();
        let record_path = dir.join(IMAGE_RECORD);
        let loaded = fs::read(&record_path)
            .ok()
            .and_then(|data| serde_json::from_slice::<ImageRecord>(&data).ok())
            .filter(|rec| {
                Digest::parse(&rec.id)
                    .is_ok_and(|id| Some(id.hex()) == dir.file_name().and_then(|n| n.to_str()))
                    && dir.join(ROOTFS_EROFS).is_file()
            });
        match loaded {
            Some(record) => {
                state.images.insert(record.id.clone(), record);
            }
            None => {
                tracing::warn!(path = %dir.display(), "removing an image folder without a valid record");
                remove_any(&dir).map_err(StoreError::io("remove", &dir))?;
            }
        }
    }
    let refs_dir = layout.refs_dir();
    for entry in fs::read_dir(&refs_dir).map_err(StoreError::io("list", &refs_dir))? {
        let path = entry.map_err(StoreError::io("list", &refs_dir))?.path();
        let loaded = fs::read(&path)
            .ok()
            .and_then(|data| serde_json::from_slice::<RefRecord>(&data).ok())
            .filter(|r| {
                layout.ref_record(&r.name) == path && state.images.contains_key(&r.image_id)
            });
        match loaded {
            Some(r) => {
                state.refs.insert(r.name.clone(), r);
            }
            None => {
                tracing::warn!(path = %path.display(), "removing a reference record that is invalid or names no image");
                remove_any(&path).map_err(StoreError::io("remove", &path))?;
            }
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &Digest) -> ImageRecord {
        ImageRecord {
            id: id.to_string(),
            manifest_digest: Digest::of(b"manifest").to_string(),
            blobs: vec![id.to_string()],
            layers: vec![],
            config: serde_json::json!({}),
            size: 0,
            block_image_format: BlockImageFormat::Erofs,
            block_image_size: 0,
            pinned: false,
        }
    }

    fn state_with(ids: &[&Digest], refs: &[(&str, &Digest)]) -> State {
        let mut state = State::default();
        for id in ids {
            state.images.insert(id.to_string(), record(id));
        }
        for (name, id) in refs {
            state.refs.insert(
                name.to_string(),
                RefRecord {
                    name: name.to_string(),
                    image_id: id.to_string(),
                    target_digest: String::new(),
                },
            );
        }
        state
    }

    #[test]
    fn resolve_by_id_hex_prefix_and_normalized_reference() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let state = state_with(&[&a, &b], &[("docker.io/library/busybox:latest", &a)]);
        assert_eq!(state.resolve(a.as_str()), Some(a.to_string()));
        assert_eq!(state.resolve(a.hex()), Some(a.to_string()));
        assert_eq!(state.resolve(&a.hex()[..12]), Some(a.to_string()));
        assert_eq!(state.resolve("busybox"), Some(a.to_string()));
        assert_eq!(
            state.resolve("docker.io/library/busybox:latest"),
            Some(a.to_string())
        );
        assert_eq!(state.resolve("busybox:other"), None);
        assert_eq!(state.resolve(""), None);
    }

    #[test]
    fn ambiguous_prefix_resolves_to_nothing() {
        // Find two digests sharing their first hex digit.
        let a = Digest::of(b"a");
        let b = (0u32..)
            .map(|i| Digest::of(&i.to_le_bytes()))
            .find(|d| d.hex()[..1] == a.hex()[..1] && *d != a)
            .unwrap();
        let state = state_with(&[&a, &b], &[]);
        assert_eq!(state.resolve(&a.hex()[..1]), None);
    }

    #[test]
    fn open_removes_tmp_leftovers_and_records_without_images() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.create_dirs().unwrap();
        fs::write(layout.tmp_dir().join("layer-1-0"), b"half a layer").unwrap();
        let orphan = Digest::of(b"orphan blob");
        fs::write(layout.blob(&orphan), b"orphan blob").unwrap();
        let dangling = RefRecord {
            name: "docker.io/library/gone:latest".into(),
            image_id: Digest::of(b"gone").to_string(),
            target_digest: String::new(),
        };
        fs::write(
            layout.ref_record(&dangling.name),
            serde_json::to_vec(&dangling).unwrap(),
        )
        .unwrap();
        let half_image = layout.image_dir(&Digest::of(b"half"));
        fs::create_dir_all(&half_image).unwrap();

        let store = ImageStore::open(dir.path(), RegistryConfig::default()).unwrap();
        assert!(store.list().is_empty());
        assert_eq!(fs::read_dir(layout.tmp_dir()).unwrap().count(), 0);
        assert!(!layout.blob(&orphan).exists());
        assert!(!layout.ref_record(&dangling.name).exists());
        assert!(!half_image.exists());
    }

    #[test]
    fn fs_usage_counts_real_bytes_and_inodes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path(), RegistryConfig::default()).unwrap();
        let before = store.fs_usage().unwrap();
        // root, blobs, blobs/sha256, images, refs, tmp
        assert_eq!(before.inodes_used, 6);
        fs::write(dir.path().join("tmp").join("x"), vec![1u8; 1 << 20]).unwrap();
        let after = store.fs_usage().unwrap();
        assert_eq!(after.inodes_used, 7);
        assert!(after.used_bytes >= before.used_bytes + (1 << 20));
        assert_eq!(after.mountpoint, dir.path());
    }
}
