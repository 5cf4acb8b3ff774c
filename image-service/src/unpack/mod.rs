//! Reading layers: a tar stream becomes a list of entries whose file contents
//! are already written into the filesystem image's data area; [`tree`] then
//! applies the entries of every layer in order, with OCI whiteouts.
//!
//! Nothing here touches the host filesystem by path: entries are checked and
//! merged in memory, so an entry cannot reach outside the image by any link.

pub mod path;
pub mod tree;

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::erofs::DataArea;
use crate::error::ErrorKind;
use path::{WhiteoutName, components, whiteout_name};

/// A layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry is hostile or impossible; the message names it.
    #[error("layer entry {entry:?} {reason}")]
    Hostile {
        /// The entry's path as written in the layer.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The tar stream (or its compression) is corrupt.
    #[error("the layer is not a valid (compressed) tar archive")]
    Archive(#[source] io::Error),
    /// The uncompressed layer does not hash to the config's diff id.
    #[error(
        "the uncompressed layer does not match the image config's diff id: expected {expected}, got {actual}"
    )]
    DiffIdMismatch {
        /// Digest named in `rootfs.diff_ids`.
        expected: String,
        /// Digest of the uncompressed stream.
        actual: String,
    },
    /// The image has more entries than allowed.
    #[error("the image holds more than {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// Writing the filesystem image failed.
    #[error("cannot write the filesystem image")]
    Write(#[source] io::Error),
}

impl UnpackError {
    /// The class of this error, for the gRPC status.
    pub fn kind(&self) -> ErrorKind {
        match self {
            UnpackError::Write(_) => ErrorKind::Internal,
            _ => ErrorKind::FailedPrecondition,
        }
    }

    pub(crate) fn hostile(entry: &[u8], reason: impl Into<String>) -> Self {
        UnpackError::Hostile {
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason: reason.into(),
        }
    }
}

/// Ownership, permissions, time and extended attributes of an entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits, with setuid, setgid and sticky (`0o7777`).
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
    /// Extended attributes, full names (`user.x`, `security.capability`).
    pub xattrs: Xattrs,
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file whose content starts at `block` of the image.
    File {
        /// First block of the content in the image (meaningless when empty).
        block: u64,
        /// Size in bytes.
        size: u64,
    },
    /// A folder.
    Dir,
    /// A symbolic link with this target.
    Symlink(Vec<u8>),
    /// A hard link to this path (components from the root).
    Hardlink(Vec<Vec<u8>>),
    /// A character device.
    CharDev(u32, u32),
    /// A block device.
    BlockDev(u32, u32),
    /// A named pipe.
    Fifo,
    /// `.wh.<name>`: the path (parent + name) is deleted from lower layers.
    Whiteout,
    /// `.wh..wh..opq`: the folder at the path loses its lower-layer children.
    Opaque,
}

/// Extended attributes: full name and value.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Components from the root.
    pub path: Vec<Vec<u8>>,
    /// The path as written in the layer, for messages.
    pub raw_path: Vec<u8>,
    /// What it is.
    pub kind: EntryKind,
    /// Its metadata.
    pub meta: Meta,
}

/// What all layers of one image may still unpack to; shared by the layers
/// unpacked in parallel.
#[derive(Debug)]
pub struct Budget {
    bytes_left: AtomicU64,
    entries_left: AtomicU64,
    max_bytes: u64,
    max_entries: u64,
}

impl Budget {
    /// A budget of `max_bytes` of file content and `max_entries` entries.
    pub fn new(max_bytes: u64, max_entries: u64) -> Self {
        Budget {
            bytes_left: AtomicU64::new(max_bytes),
            entries_left: AtomicU64::new(max_entries),
            max_bytes,
            max_entries,
        }
    }

    fn take(counter: &AtomicU64, amount: u64) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(amount)
            })
            .is_ok()
    }
}

const COPY_CHUNK: usize = 256 << 10;

/// Reads one layer's tar stream. File contents go to `data`; the entries come
/// back in archive order. The stream is read to its end (so that whoever
/// hashes it sees every byte).
pub fn read_layer<R: Read>(
    stream: R,
    data: &DataArea,
    budget: &Budget,
) -> Result<Vec<Entry>, UnpackError> {
    let mut archive = tar::Archive::new(stream);
    let mut entries = Vec::new();
    let mut buf = vec![0u8; COPY_CHUNK];
    for item in archive.entries().map_err(UnpackError::Archive)? {
        let mut tar_entry = item.map_err(UnpackError::Archive)?;
        let raw_path = tar_entry.path_bytes().into_owned();
        if let Some(entry) = read_entry(&mut tar_entry, raw_path, data, budget, &mut buf)? {
            if !Budget::take(&budget.entries_left, 1) {
                return Err(UnpackError::TooManyEntries {
                    limit: budget.max_entries,
                });
            }
            entries.push(entry);
        }
    }
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(UnpackError::Archive)?;
    Ok(entries)
}

fn read_entry<R: Read>(
    tar_entry: &mut tar::Entry<'_, R>,
    raw_path: Vec<u8>,
    data: &DataArea,
    budget: &Budget,
    buf: &mut [u8],
) -> Result<Option<Entry>, UnpackError> {
    use tar::EntryType;
    let header = tar_entry.header();
    let entry_type = header.entry_type();
    if matches!(
        entry_type,
        EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink
    ) {
        return Ok(None);
    }
    let mut path =
        components(&raw_path).map_err(|p| UnpackError::hostile(&raw_path, p.describe()))?;
    let archive_err = UnpackError::Archive;
    let meta = Meta {
        mode: (header.mode().map_err(archive_err)? & 0o7777) as u16,
        uid: u32::try_from(header.uid().map_err(UnpackError::Archive)?)
            .map_err(|_| UnpackError::hostile(&raw_path, "has an owner id above 2^32"))?,
        gid: u32::try_from(header.gid().map_err(UnpackError::Archive)?)
            .map_err(|_| UnpackError::hostile(&raw_path, "has a group id above 2^32"))?,
        mtime: header.mtime().map_err(UnpackError::Archive)?,
        xattrs: xattrs(tar_entry)?,
    };

    if let Some(name) = path.last() {
        match whiteout_name(name) {
            WhiteoutName::Plain => {}
            WhiteoutName::AufsMeta => return Ok(None),
            WhiteoutName::Opaque => {
                path.pop();
                return Ok(Some(Entry {
                    path,
                    raw_path,
                    kind: EntryKind::Opaque,
                    meta,
                }));
            }
            WhiteoutName::Whiteout(target) => {
                if matches!(target, b"" | b"." | b"..") {
                    return Err(UnpackError::hostile(
                        &raw_path,
                        "is a whiteout of no valid name",
                    ));
                }
                let target = target.to_vec();
                path.pop();
                path.push(target);
                return Ok(Some(Entry {
                    path,
                    raw_path,
                    kind: EntryKind::Whiteout,
                    meta,
                }));
            }
        }
    }

    let device = |entry: &tar::Entry<'_, R>| -> Result<(u32, u32), UnpackError> {
        let h = entry.header();
        Ok((
            h.device_major().map_err(UnpackError::Archive)?.unwrap_or(0),
            h.device_minor().map_err(UnpackError::Archive)?.unwrap_or(0),
        ))
    };
    let kind = match entry_type {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            let size = tar_entry.size();
            if !Budget::take(&budget.bytes_left, size) {
                return Err(UnpackError::hostile(
                    &raw_path,
                    format!(
                        "declares {size} bytes, more than the {} bytes an image may unpack to",
                        budget.max_bytes
                    ),
                ));
            }
            let block = data.allocate(size).map_err(UnpackError::Write)?;
            copy_content(tar_entry, data, block, size, buf)?;
            EntryKind::File { block, size }
        }
        EntryType::Directory => EntryKind::Dir,
        EntryType::Symlink => {
            let target = tar_entry
                .link_name_bytes()
                .map(|t| t.into_owned())
                .unwrap_or_default();
            if target.is_empty() {
                return Err(UnpackError::hostile(
                    &raw_path,
                    "is a symbolic link without a target",
                ));
            }
            EntryKind::Symlink(target)
        }
        EntryType::Link => {
            let target = tar_entry
                .link_name_bytes()
                .map(|t| t.into_owned())
                .unwrap_or_default();
            let target_path = components(&target).map_err(|p| {
                UnpackError::hostile(
                    &raw_path,
                    format!(
                        "is a hard link to {:?}, outside the root: the target {}",
                        String::from_utf8_lossy(&target),
                        p.describe()
                    ),
                )
            })?;
            if target_path.is_empty() {
                return Err(UnpackError::hostile(
                    &raw_path,
                    "is a hard link to the root folder",
                ));
            }
            EntryKind::Hardlink(target_path)
        }
        EntryType::Char => {
            let (major, minor) = device(tar_entry)?;
            EntryKind::CharDev(major, minor)
        }
        EntryType::Block => {
            let (major, minor) = device(tar_entry)?;
            EntryKind::BlockDev(major, minor)
        }
        EntryType::Fifo => EntryKind::Fifo,
        other => {
            return Err(UnpackError::hostile(
                &raw_path,
                format!(
                    "has tar entry type {:?}, which an image layer cannot hold",
                    other.as_byte() as char
                ),
            ));
        }
    };
    Ok(Some(Entry {
        path,
        raw_path,
        kind,
        meta,
    }))
}

fn copy_content<R: Read>(
    reader: &mut R,
    data: &DataArea,
    block: u64,
    size: u64,
    buf: &mut [u8],
) -> Result<(), UnpackError> {
    let mut offset = 0u64;
    while offset < size {
        let want = usize::try_from((size - offset).min(buf.len() as u64))
            .expect("bounded by the buffer size");
        let n = reader
            .read(&mut buf[..want])
            .map_err(UnpackError::Archive)?;
        if n == 0 {
            return Err(UnpackError::Archive(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside a file's content",
            )));
        }
        data.write_at(block, offset, &buf[..n])
            .map_err(UnpackError::Write)?;
        offset += n as u64;
    }
    Ok(())
}

/// Extended attributes from the entry's PAX records (`SCHILY.xattr.<name>`).
fn xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Xattrs, UnpackError> {
    let mut found = Vec::new();
    if let Some(extensions) = entry.pax_extensions().map_err(UnpackError::Archive)? {
        for ext in extensions {
            let ext = ext.map_err(UnpackError::Archive)?;
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                found.push((name.to_vec(), ext.value_bytes().to_vec()));
            }
        }
    }
    found.sort();
    found.dedup_by(|a, b| a.0 == b.0);
    Ok(found)
}
