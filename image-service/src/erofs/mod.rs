//! hull's EROFS writer: the read-only filesystem image a pod VM attaches.
//!
//! The image is written in one pass over the layers, with no extraction to a
//! host folder: while layers stream in, [`DataArea`] hands each regular file a
//! run of blocks and its content is written there at once (layers unpack in
//! parallel, each into its own blocks). When every layer is merged,
//! [`writer::finish`] appends the metadata — inodes, extended attributes,
//! folders, symbolic links — and writes the superblock.
//!
//! On-disk format (Linux `fs/erofs/erofs_fs.h`, as supported since Linux 5.4):
//! 4 KiB blocks, no compression, extended (64-byte) inodes, inline xattrs,
//! `FLAT_PLAIN` file data and `FLAT_INLINE` (tail-packed) folders and links.
//!
//! ```text
//! block 0            superblock at byte 1024
//! blocks 1..M        file contents, in the order layers delivered them
//! blocks M..N        folder and link blocks too big to inline
//! blocks N..         metadata area (meta_blkaddr = N): inodes, root first (nid 0)
//! ```

pub mod format;
pub mod writer;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

pub use format::BLOCK_SIZE;
pub use writer::{ErofsError, finish};

/// The file being written and its block allocator. Shared by the threads
/// unpacking layers in parallel.
#[derive(Debug)]
pub struct DataArea {
    file: File,
    next_block: AtomicU64,
}

impl DataArea {
    /// Creates the image file at `path` (which must not exist). Block 0 is
    /// kept for the superblock.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)?;
        Ok(DataArea {
            file,
            next_block: AtomicU64::new(1),
        })
    }

    /// Reserves whole blocks for `size` bytes and returns the first block
    /// (0 for an empty file, which owns no block).
    pub fn allocate(&self, size: u64) -> io::Result<u64> {
        if size == 0 {
            return Ok(0);
        }
        let blocks = size.div_ceil(BLOCK_SIZE);
        let first = self.next_block.fetch_add(blocks, Ordering::Relaxed);
        if first + blocks > u64::from(u32::MAX) {
            return Err(io::Error::other(
                "the filesystem image would exceed 16 TiB (2^32 blocks)",
            ));
        }
        Ok(first)
    }

    /// Writes `data` at byte `offset` of the content that starts at `block`.
    pub fn write_at(&self, block: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, block * BLOCK_SIZE + offset)
    }

    /// The first block not yet allocated.
    pub fn next_block(&self) -> u64 {
        self.next_block.load(Ordering::Relaxed)
    }

    /// The image file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_block_aligned_and_never_overlaps() {
        let dir = tempfile::tempdir().unwrap();
        let area = DataArea::create(&dir.path().join("img")).unwrap();
        assert_eq!(area.allocate(0).unwrap(), 0);
        assert_eq!(area.allocate(1).unwrap(), 1);
        assert_eq!(area.allocate(4096).unwrap(), 2);
        assert_eq!(area.allocate(4097).unwrap(), 3);
        assert_eq!(area.next_block(), 5);
        area.write_at(3, 4096, b"x").unwrap();
        let mut byte = [0u8; 1];
        area.file().read_exact_at(&mut byte, 4 * 4096).unwrap();
        assert_eq!(&byte, b"x");
    }
}
