//! Layer blob → filesystem image: each layer's bytes (from the registry, or
//! from the store when another image already brought them) are stored as a
//! blob, hashed, decompressed, hashed again and unpacked straight into the
//! image's data area, in one pass. Layers run in parallel on blocking
//! threads; their entries are merged in order afterwards.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use bytes::Bytes;

use crate::digest::{Digest, Hashing};
use crate::erofs::{self, DataArea, ErofsError};
use crate::error::ImageError;
use crate::registry::RegistryError;
use crate::registry::manifest::Compression;
use crate::store::{StoreError, fsync_dir};
use crate::unpack::tree::Tree;
use crate::unpack::{Budget, Entry, UnpackError, read_layer};

/// A piece of a blob download, sent from the async fetcher to the blocking
/// unpacker.
pub enum Chunk {
    /// More bytes.
    Data(Bytes),
    /// The download ended normally.
    End,
    /// The download failed.
    Failed(io::Error),
}

/// Where a layer's bytes come from.
pub enum BlobSource {
    /// Already in the store, verified when it was written.
    Stored(PathBuf),
    /// Arriving from the registry; written to `tmp` and renamed to `blob`
    /// once its digest is verified.
    Streamed {
        /// Chunks from the fetcher.
        chunks: tokio::sync::mpsc::Receiver<Chunk>,
        /// Temporary file in the store's tmp folder.
        tmp: PathBuf,
        /// Final blob path.
        blob: PathBuf,
    },
}

/// One layer to unpack.
#[derive(Debug, Clone)]
pub struct LayerJob {
    /// The image reference, for messages.
    pub reference: String,
    /// Blob digest from the manifest.
    pub digest: Digest,
    /// Blob size from the manifest.
    pub size: u64,
    /// Compression from the media type.
    pub compression: Compression,
    /// Expected digest of the uncompressed tar (`rootfs.diff_ids`).
    pub diff_id: Digest,
}

/// Reads chunks, writes them to the blob file, hashes them, and refuses more
/// bytes than the manifest declares.
struct ChannelReader {
    chunks: tokio::sync::mpsc::Receiver<Chunk>,
    current: Bytes,
    blob: Hashing<File>,
    declared: u64,
    ended: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.chunks.blocking_recv() {
                Some(Chunk::Data(bytes)) => {
                    if self.blob.byte_count() + bytes.len() as u64 > self.declared {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "the blob is longer than the {} bytes its descriptor declares",
                                self.declared
                            ),
                        ));
                    }
                    self.blob.write_all(&bytes)?;
                    self.current = bytes;
                }
                Some(Chunk::End) => self.ended = true,
                // Never `Interrupted`: readers retry that kind forever.
                Some(Chunk::Failed(err)) => return Err(io::Error::other(err)),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the download stopped before the blob ended",
                    ));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

fn unpack_err(job: &LayerJob, source: UnpackError) -> ImageError {
    ImageError::Unpack {
        reference: job.reference.clone(),
        layer: job.digest.to_string(),
        source,
    }
}

/// Decompresses and unpacks `reader`, returning the entries and the digest
/// of the uncompressed stream. The reader is read to its end.
fn unpack_stream<R: Read>(
    job: &LayerJob,
    reader: &mut R,
    data: &DataArea,
    budget: &Budget,
) -> Result<(Vec<Entry>, Digest), ImageError> {
    let (entries, diff_id) = match job.compression {
        Compression::None => {
            let mut hashed = Hashing::new(&mut *reader);
            let entries = read_layer(&mut hashed, data, budget).map_err(|e| unpack_err(job, e))?;
            (entries, hashed.finish().1)
        }
        Compression::Gzip => {
            let mut hashed = Hashing::new(flate2::read::MultiGzDecoder::new(&mut *reader));
            let entries = read_layer(&mut hashed, data, budget).map_err(|e| unpack_err(job, e))?;
            (entries, hashed.finish().1)
        }
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(&mut *reader)
                .map_err(|e| unpack_err(job, UnpackError::Archive(e)))?;
            let mut hashed = Hashing::new(decoder);
            let entries = read_layer(&mut hashed, data, budget).map_err(|e| unpack_err(job, e))?;
            (entries, hashed.finish().1)
        }
    };
    // Whatever follows the compressed stream still belongs to the blob.
    io::copy(reader, &mut io::sink()).map_err(|e| unpack_err(job, UnpackError::Archive(e)))?;
    Ok((entries, diff_id))
}

/// Unpacks one layer (blocking). A streamed blob is verified against its
/// digest and size before it is renamed into the store; the uncompressed
/// stream is verified against the diff id.
pub fn unpack_layer(
    job: &LayerJob,
    source: BlobSource,
    data: &DataArea,
    budget: &Budget,
) -> Result<Vec<Entry>, ImageError> {
    let (entries, diff_id) = match source {
        BlobSource::Stored(path) => {
            let mut file = File::open(&path).map_err(StoreError::io("open", &path))?;
            unpack_stream(job, &mut file, data, budget)?
        }
        BlobSource::Streamed { chunks, tmp, blob } => {
            let result = (|| -> Result<(Vec<Entry>, Digest), ImageError> {
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&tmp)
                    .map_err(StoreError::io("create", &tmp))?;
                let mut reader = ChannelReader {
                    chunks,
                    current: Bytes::new(),
                    blob: Hashing::new(file),
                    declared: job.size,
                    ended: false,
                };
                let unpacked = unpack_stream(job, &mut reader, data, budget);
                let received = reader.blob.byte_count();
                let (file, digest) = reader.blob.finish();
                let (entries, diff_id) = unpacked?;
                if received != job.size {
                    return Err(RegistryError::SizeMismatch {
                        reference: job.reference.clone(),
                        what: format!("layer {}", job.digest),
                        expected: job.size,
                        actual: received,
                    }
                    .into());
                }
                if digest != job.digest {
                    return Err(RegistryError::DigestMismatch {
                        reference: job.reference.clone(),
                        what: format!("layer {}", job.digest),
                        expected: job.digest.to_string(),
                        actual: digest.to_string(),
                    }
                    .into());
                }
                file.sync_all().map_err(StoreError::io("sync", &tmp))?;
                fs::rename(&tmp, &blob).map_err(StoreError::io("store", &blob))?;
                let blobs_dir = blob.parent().expect("blobs live in a folder");
                fsync_dir(blobs_dir).map_err(StoreError::io("sync", blobs_dir))?;
                Ok((entries, diff_id))
            })();
            if result.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            result?
        }
    };
    if diff_id != job.diff_id {
        return Err(unpack_err(
            job,
            UnpackError::DiffIdMismatch {
                expected: job.diff_id.to_string(),
                actual: diff_id.to_string(),
            },
        ));
    }
    tracing::debug!(layer = %job.digest, entries = entries.len(), "layer unpacked");
    Ok(entries)
}

/// Merges the layers (lowest first) and writes the EROFS metadata and
/// superblock (blocking). Returns the image size in bytes.
pub fn build_image(
    reference: &str,
    layer_digests: &[Digest],
    layers: Vec<Vec<Entry>>,
    data: &DataArea,
    uuid: [u8; 16],
) -> Result<erofs::writer::ImageSummary, ImageError> {
    let mut tree = Tree::new();
    for (entries, digest) in layers.into_iter().zip(layer_digests) {
        tree.apply_layer(entries)
            .map_err(|source| ImageError::Unpack {
                reference: reference.to_string(),
                layer: digest.to_string(),
                source,
            })?;
    }
    erofs::finish(&tree, data, uuid).map_err(|source: ErofsError| ImageError::Convert {
        reference: reference.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(
        dir: &std::path::Path,
        declared: u64,
    ) -> (tokio::sync::mpsc::Sender<Chunk>, ChannelReader) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let file = File::create(dir.join("blob")).unwrap();
        let reader = ChannelReader {
            chunks: rx,
            current: Bytes::new(),
            blob: Hashing::new(file),
            declared,
            ended: false,
        };
        (tx, reader)
    }

    #[test]
    fn chunks_are_read_hashed_and_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut r) = reader(dir.path(), 6);
        tx.try_send(Chunk::Data(Bytes::from_static(b"abc")))
            .unwrap();
        tx.try_send(Chunk::Data(Bytes::from_static(b"def")))
            .unwrap();
        tx.try_send(Chunk::End).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abcdef");
        let (_, digest) = r.blob.finish();
        assert_eq!(digest, Digest::of(b"abcdef"));
        assert_eq!(fs::read(dir.path().join("blob")).unwrap(), b"abcdef");
    }

    #[test]
    fn a_stopped_download_is_an_error_readers_do_not_retry() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut r) = reader(dir.path(), 100);
        tx.try_send(Chunk::Data(Bytes::from_static(b"abc")))
            .unwrap();
        drop(tx);
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        let err = r.read(&mut buf).unwrap_err();
        assert_ne!(err.kind(), io::ErrorKind::Interrupted);
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        let (tx, mut r) = reader(dir.path(), 100);
        tx.try_send(Chunk::Failed(io::Error::new(
            io::ErrorKind::Interrupted,
            "reset",
        )))
        .unwrap();
        assert_ne!(
            r.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::Interrupted
        );
    }

    #[test]
    fn more_bytes_than_declared_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut r) = reader(dir.path(), 2);
        tx.try_send(Chunk::Data(Bytes::from_static(b"abc")))
            .unwrap();
        let err = r.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
