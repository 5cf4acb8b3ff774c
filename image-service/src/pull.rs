//! `ImageStore::pull`: resolve the reference, fetch manifest and config, stream
//! every layer into the filesystem image, and commit the image and its
//! reference names — each step written to the tmp folder first and renamed
//! into place, so an interrupted pull leaves nothing `open()` would trust.
//!
//! A pull runs as its own task: a caller that gives up (the kubelet's
//! deadline) does not cancel it, and its retry finds the image done, as
//! cri-o does. Pulls of one reference, and conversions of one image, are
//! serialized so the work is done once.

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use crate::config::PullAuth;
use crate::convert::{self, BlobSource, Chunk, LayerJob};
use crate::digest::Digest;
use crate::erofs::DataArea;
use crate::error::ImageError;
use crate::gc::Lease;
use crate::reference::ImageRef;
use crate::registry::manifest::{self, ACCEPTED_CONFIGS, MAX_JSON_BYTES, Manifest, ManifestKind};
use crate::registry::{self, RegistryClient, RegistryError};
use crate::store::{
    BlockImageFormat, IMAGE_RECORD, Image, ImageRecord, ImageStore, LayerRecord, ROOTFS_EROFS,
    RefRecord, StoreError, StoreInner, fsync_dir, remove_any, write_atomic,
};
use crate::unpack::{Budget, Entry};

/// Layers fetched and unpacked at once.
const PARALLEL_LAYERS: usize = 4;
/// Chunks buffered between a layer's download and its unpacker.
const CHUNK_BUFFER: usize = 64;

impl ImageStore {
    /// Pulls `reference` (normalized as Docker does) and converts it into its
    /// filesystem image, unless the store already has it. `auth` carries the
    /// CRI request's credentials for the image's registry.
    pub async fn pull(&self, reference: &str, auth: Option<PullAuth>) -> Result<Image, ImageError> {
        let image_ref = ImageRef::parse(reference)?;
        let store = self.clone();
        let task = tokio::spawn(async move {
            let lock = store.flight_lock(&format!("ref:{image_ref}"));
            let _turn = lock.lock().await;
            let started = std::time::Instant::now();
            let result = store.pull_serialized(&image_ref, auth.as_ref()).await;
            match &result {
                Ok(image) => tracing::info!(
                    reference = %image_ref,
                    image_id = %image.id,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "image pulled"
                ),
                Err(err) => {
                    tracing::error!(reference = %image_ref, error = %err, "image pull failed")
                }
            }
            drop(_turn);
            store.release_flight_lock(&format!("ref:{image_ref}"), lock);
            result
        });
        task.await.map_err(|_| ImageError::PullAborted {
            reference: reference.to_string(),
        })?
    }

    pub(crate) fn flight_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.inner.pulls_in_flight.lock().expect("flight lock");
        Arc::clone(map.entry(key.to_string()).or_default())
    }

    pub(crate) fn release_flight_lock(&self, key: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut map = self.inner.pulls_in_flight.lock().expect("flight lock");
        // Ours and the map's: nobody else waits on it.
        if Arc::strong_count(&lock) == 2 {
            map.remove(key);
        }
    }

    async fn pull_serialized(
        &self,
        image_ref: &ImageRef,
        auth: Option<&PullAuth>,
    ) -> Result<Image, ImageError> {
        if image_ref.digest.is_some()
            && let Some(image) = self.get(&image_ref.to_string())
        {
            tracing::debug!(reference = %image_ref, "image already present");
            return Ok(image);
        }
        let endpoints = registry::endpoints(&self.inner.registry, &image_ref.registry, auth)?;
        let client = Arc::new(RegistryClient::new(image_ref, endpoints));
        let reference = image_ref.to_string();

        let (top_body, top_digest) = client.fetch_manifest(image_ref).await?;
        let parse = |body: &[u8]| {
            manifest::parse(body).map_err(|source| RegistryError::Manifest {
                reference: reference.clone(),
                source,
            })
        };
        let mut blobs = vec![(top_digest.clone(), top_body.clone())];
        let (manifest, manifest_digest) = match parse(&top_body)? {
            ManifestKind::Image(m) => (m, top_digest.clone()),
            ManifestKind::Index(index) => {
                let chosen = manifest::choose_linux_amd64(&index).ok_or_else(|| {
                    RegistryError::NoPlatform {
                        reference: reference.clone(),
                        platforms: manifest::platforms(&index),
                    }
                })?;
                let digest = self.digest(&reference, &chosen.digest)?;
                let (body, digest) = client
                    .fetch_manifest(&image_ref.with_digest(digest.as_str()))
                    .await?;
                let ManifestKind::Image(m) = parse(&body)? else {
                    return Err(RegistryError::Manifest {
                        reference: reference.clone(),
                        source: manifest::ManifestError::Unsupported(
                            "an index inside an index".into(),
                        ),
                    }
                    .into());
                };
                blobs.push((digest.clone(), body));
                (m, digest)
            }
        };
        let config_digest = self.digest(&reference, &manifest.config.digest)?;
        if !ACCEPTED_CONFIGS.contains(&manifest.config.media_type.as_str()) {
            return Err(RegistryError::UnsupportedMediaType {
                reference,
                what: "the config".into(),
                media_type: manifest.config.media_type.clone(),
            }
            .into());
        }

        let image_id = config_digest.to_string();
        // Keeps the image from garbage collection until its names are written.
        let mut image_lease = Lease::new(Arc::clone(&self.inner));
        image_lease.add_image(&image_id);
        if self
            .inner
            .state
            .read()
            .expect("state lock")
            .images
            .contains_key(&image_id)
        {
            tracing::debug!(reference = %image_ref, image_id, "image already converted; updating names only");
        } else {
            let lock = self.flight_lock(&format!("image:{image_id}"));
            let turn = lock.lock().await;
            let present = self
                .inner
                .state
                .read()
                .expect("state lock")
                .images
                .contains_key(&image_id);
            let result = if present {
                Ok(())
            } else {
                self.fetch_and_convert(
                    &client,
                    &reference,
                    &manifest,
                    &manifest_digest,
                    &config_digest,
                    blobs,
                )
                .await
            };
            drop(turn);
            self.release_flight_lock(&format!("image:{image_id}"), lock);
            if let Err(err) = result {
                // Blobs this pull stored belong to no image: delete them now
                // (its lease is gone), so a refused image leaves nothing.
                if let Err(gc_err) = crate::gc::collect(&self.inner) {
                    tracing::warn!(error = %gc_err, "cannot collect the blobs of a failed pull");
                }
                return Err(err);
            }
        }
        self.commit_refs(image_ref, &image_id, &top_digest)?;
        drop(image_lease);
        self.get(&image_id)
            .ok_or_else(|| ImageError::PullAborted { reference })
    }

    fn digest(&self, reference: &str, text: &str) -> Result<Digest, RegistryError> {
        Digest::parse(text).map_err(|source| RegistryError::InvalidDigest {
            reference: reference.to_string(),
            source,
        })
    }

    async fn fetch_and_convert(
        &self,
        client: &Arc<RegistryClient>,
        reference: &str,
        manifest: &Manifest,
        manifest_digest: &Digest,
        config_digest: &Digest,
        mut json_blobs: Vec<(Digest, bytes::Bytes)>,
    ) -> Result<(), ImageError> {
        let inner = &self.inner;
        let mut lease = Lease::new(Arc::clone(inner));
        lease.add(config_digest.as_str());
        for (digest, _) in &json_blobs {
            lease.add(digest.as_str());
        }

        let config_body = fetch_json_blob(
            client,
            reference,
            config_digest,
            manifest.config.size,
            &manifest.config.media_type,
        )
        .await?;
        let config: serde_json::Value =
            serde_json::from_slice(&config_body).map_err(|source| RegistryError::Manifest {
                reference: reference.to_string(),
                source: manifest::ManifestError::Invalid(source),
            })?;
        json_blobs.push((config_digest.clone(), config_body));

        let diff_ids: Vec<String> = config
            .pointer("/rootfs/diff_ids")
            .and_then(|v| v.as_array())
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| id.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if diff_ids.len() != manifest.layers.len() {
            return Err(RegistryError::Manifest {
                reference: reference.to_string(),
                source: manifest::ManifestError::Unsupported(format!(
                    "a config with {} diff ids for {} layers",
                    diff_ids.len(),
                    manifest.layers.len()
                )),
            }
            .into());
        }
        let mut jobs = Vec::new();
        for (layer, diff_id) in manifest.layers.iter().zip(&diff_ids) {
            let compression = manifest::layer_compression(&layer.media_type).ok_or_else(|| {
                RegistryError::UnsupportedMediaType {
                    reference: reference.to_string(),
                    what: format!("layer {}", layer.digest),
                    media_type: layer.media_type.clone(),
                }
            })?;
            let digest = self.digest(reference, &layer.digest)?;
            lease.add(digest.as_str());
            jobs.push((
                LayerJob {
                    reference: reference.to_string(),
                    digest,
                    size: layer.size,
                    compression,
                    diff_id: self.digest(reference, diff_id)?,
                },
                layer.urls.clone(),
                layer.media_type.clone(),
            ));
        }

        for (digest, body) in &json_blobs {
            let path = inner.layout.blob(digest);
            if !path.exists() {
                write_atomic(&path, &inner.layout.tmp_path("blob"), body)
                    .map_err(StoreError::io("store", &path))?;
            }
        }

        // The image folder is built in tmp and renamed into place whole.
        let work_dir = inner.layout.tmp_path("image");
        fs::create_dir(&work_dir).map_err(StoreError::io("create", &work_dir))?;
        let result = self
            .convert_into(client, reference, &jobs, &work_dir, config_digest)
            .await
            .and_then(|image_size| {
                let record = ImageRecord {
                    id: config_digest.to_string(),
                    manifest_digest: manifest_digest.to_string(),
                    blobs: json_blobs
                        .iter()
                        .map(|(d, _)| d.to_string())
                        .chain(jobs.iter().map(|(job, _, _)| job.digest.to_string()))
                        .collect(),
                    layers: jobs
                        .iter()
                        .map(|(job, _, media_type)| LayerRecord {
                            digest: job.digest.to_string(),
                            size: job.size,
                            media_type: media_type.clone(),
                            diff_id: job.diff_id.to_string(),
                        })
                        .collect(),
                    size: manifest.config.size
                        + manifest.layers.iter().map(|l| l.size).sum::<u64>(),
                    config,
                    block_image_format: BlockImageFormat::Erofs,
                    block_image_size: image_size,
                    pinned: false,
                };
                self.commit_image(&work_dir, record)
            });
        if result.is_err() {
            let _ = remove_any(&work_dir);
        }
        result
    }

    async fn convert_into(
        &self,
        client: &Arc<RegistryClient>,
        reference: &str,
        jobs: &[(LayerJob, Option<Vec<String>>, String)],
        work_dir: &std::path::Path,
        config_digest: &Digest,
    ) -> Result<u64, ImageError> {
        let inner = &self.inner;
        let image_path = work_dir.join(ROOTFS_EROFS);
        let data =
            Arc::new(DataArea::create(&image_path).map_err(StoreError::io("create", &image_path))?);
        let budget = Arc::new(Budget::new(
            inner.limits.max_image_bytes,
            inner.limits.max_entries,
        ));

        // Every layer task runs to its end, even after one fails (the others
        // are told to stop early): a blob must never be renamed into the
        // store after the failed pull has cleaned up.
        let cancel = Arc::new(AtomicBool::new(false));
        let first_error: Arc<Mutex<Option<ImageError>>> = Arc::new(Mutex::new(None));
        let results: Vec<Option<Vec<Entry>>> = futures::stream::iter(jobs.iter().cloned())
            .map(|(job, urls, media_type)| {
                let client = Arc::clone(client);
                let data = Arc::clone(&data);
                let budget = Arc::clone(&budget);
                let inner = Arc::clone(inner);
                let cancel = Arc::clone(&cancel);
                let first_error = Arc::clone(&first_error);
                async move {
                    if cancel.load(Ordering::Acquire) {
                        return None;
                    }
                    let layer = LayerFetch {
                        inner: &inner,
                        client: &client,
                        cancel: &cancel,
                    };
                    match layer.unpack(job, urls, &media_type, data, budget).await {
                        Ok(entries) => Some(entries),
                        Err(err) => {
                            if !cancel.swap(true, Ordering::AcqRel) {
                                *first_error.lock().expect("error slot") = Some(err);
                            }
                            None
                        }
                    }
                }
            })
            .buffered(PARALLEL_LAYERS)
            .collect()
            .await;
        if let Some(err) = first_error.lock().expect("error slot").take() {
            return Err(err);
        }
        let layers: Vec<Vec<Entry>> = results
            .into_iter()
            .map(|entries| entries.expect("without an error every layer is unpacked"))
            .collect();
        let digests: Vec<Digest> = jobs.iter().map(|(job, _, _)| job.digest.clone()).collect();
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&hex::decode(&config_digest.hex()[..32]).expect("digests are hex"));
        let shown = reference.to_string();
        let summary = tokio::task::spawn_blocking(move || {
            convert::build_image(&shown, &digests, layers, &data, uuid)
        })
        .await
        .map_err(|_| ImageError::PullAborted {
            reference: reference.to_string(),
        })??;
        tracing::debug!(
            bytes = summary.bytes,
            inodes = summary.inodes,
            "filesystem image written"
        );
        Ok(summary.bytes)
    }

    fn commit_image(
        &self,
        work_dir: &std::path::Path,
        record: ImageRecord,
    ) -> Result<(), ImageError> {
        let layout = &self.inner.layout;
        let record_path = work_dir.join(IMAGE_RECORD);
        let data = serde_json::to_vec_pretty(&record).map_err(|source| StoreError::Encode {
            what: record.id.clone(),
            source,
        })?;
        write_atomic(&record_path, &layout.tmp_path("image-record"), &data)
            .map_err(StoreError::io("write", &record_path))?;
        fsync_dir(work_dir).map_err(StoreError::io("sync", work_dir))?;
        let id = Digest::parse(&record.id).expect("records carry digests");
        let final_dir = layout.image_dir(&id);
        fs::rename(work_dir, &final_dir).map_err(StoreError::io("store", &final_dir))?;
        fsync_dir(&layout.images_dir()).map_err(StoreError::io("sync", &layout.images_dir()))?;
        self.inner
            .state
            .write()
            .expect("state lock")
            .images
            .insert(record.id.clone(), record);
        Ok(())
    }

    fn commit_refs(
        &self,
        image_ref: &ImageRef,
        image_id: &str,
        target: &Digest,
    ) -> Result<(), ImageError> {
        let layout = &self.inner.layout;
        let mut names = vec![image_ref.repo_digest(target.as_str())];
        if let Some(tag) = image_ref.repo_tag() {
            names.push(tag);
        }
        let mut state = self.inner.state.write().expect("state lock");
        for name in names {
            let record = RefRecord {
                name: name.clone(),
                image_id: image_id.to_string(),
                target_digest: target.to_string(),
            };
            if state.refs.get(&name) == Some(&record) {
                continue;
            }
            let path = layout.ref_record(&name);
            let data = serde_json::to_vec_pretty(&record).map_err(|source| StoreError::Encode {
                what: name.clone(),
                source,
            })?;
            write_atomic(&path, &layout.tmp_path("ref"), &data)
                .map_err(StoreError::io("write", &path))?;
            if let Some(old) = state.refs.insert(name.clone(), record)
                && old.image_id != image_id
            {
                tracing::info!(name, from = %old.image_id, to = image_id, "tag moved to a new image");
            }
        }
        Ok(())
    }
}

/// Fetches a small JSON blob (config) into memory, verifying size and digest.
async fn fetch_json_blob(
    client: &RegistryClient,
    reference: &str,
    digest: &Digest,
    size: u64,
    media_type: &str,
) -> Result<bytes::Bytes, ImageError> {
    let what = format!("config {digest}");
    if size > MAX_JSON_BYTES {
        return Err(RegistryError::TooLarge {
            reference: reference.to_string(),
            what,
            limit: MAX_JSON_BYTES,
        }
        .into());
    }
    let mut stream = client.blob_stream(digest, size, media_type, None).await?;
    let mut body = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| RegistryError::Unreachable {
            reference: reference.to_string(),
            what: what.clone(),
            endpoint: "the registry".into(),
            source: Box::new(e.into()),
        })?;
        body.extend_from_slice(&chunk);
        if body.len() as u64 > size {
            break;
        }
    }
    if body.len() as u64 != size {
        return Err(RegistryError::SizeMismatch {
            reference: reference.to_string(),
            what,
            expected: size,
            actual: body.len() as u64,
        }
        .into());
    }
    let actual = Digest::of(&body);
    if actual != *digest {
        return Err(RegistryError::DigestMismatch {
            reference: reference.to_string(),
            what,
            expected: digest.to_string(),
            actual: actual.to_string(),
        }
        .into());
    }
    Ok(body.into())
}

/// Fetches (unless stored) and unpacks one layer, stopping early when
/// another layer of the pull failed.
struct LayerFetch<'a> {
    inner: &'a Arc<StoreInner>,
    client: &'a RegistryClient,
    cancel: &'a AtomicBool,
}

impl LayerFetch<'_> {
    async fn unpack(
        &self,
        job: LayerJob,
        urls: Option<Vec<String>>,
        media_type: &str,
        data: Arc<DataArea>,
        budget: Arc<Budget>,
    ) -> Result<Vec<Entry>, ImageError> {
        let reference = job.reference.clone();
        let aborted = || ImageError::PullAborted {
            reference: reference.clone(),
        };
        let blob_path = self.inner.layout.blob(&job.digest);
        if blob_path.exists() {
            tracing::debug!(layer = %job.digest, "layer blob already stored");
            return tokio::task::spawn_blocking(move || {
                convert::unpack_layer(&job, BlobSource::Stored(blob_path), &data, &budget)
            })
            .await
            .map_err(|_| aborted())?;
        }
        let mut stream = self
            .client
            .blob_stream(&job.digest, job.size, media_type, urls)
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNK_BUFFER);
        let source = BlobSource::Streamed {
            chunks: rx,
            tmp: self.inner.layout.tmp_path("layer"),
            blob: blob_path,
        };
        let worker = tokio::task::spawn_blocking(move || {
            convert::unpack_layer(&job, source, &data, &budget)
        });
        let mut complete = true;
        while let Some(item) = stream.next().await {
            if self.cancel.load(Ordering::Acquire) {
                complete = false;
                break;
            }
            let message = match item {
                Ok(bytes) => Chunk::Data(bytes),
                Err(err) => Chunk::Failed(err),
            };
            let failed = matches!(message, Chunk::Failed(_));
            if tx.send(message).await.is_err() || failed {
                // The unpacker stopped (it reports why) or the download failed.
                complete = false;
                break;
            }
        }
        if complete {
            let _ = tx.send(Chunk::End).await;
        }
        // Dropping the sender without `End` makes the unpacker stop and
        // delete its temporary blob.
        drop(tx);
        worker.await.map_err(|_| aborted())?
    }
}
