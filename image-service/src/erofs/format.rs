//! EROFS on-disk structures (little endian), as Linux `fs/erofs/erofs_fs.h`
//! defines them. Only what hull writes: uncompressed images with extended
//! inodes and inline extended attributes.

/// Block size (`blkszbits` = 12); Linux 6.1 requires it to equal the page size.
pub const BLOCK_SIZE: u64 = 4096;
/// log2 of [`BLOCK_SIZE`].
pub const BLOCK_BITS: u8 = 12;
/// Byte offset of the superblock.
pub const SUPERBLOCK_OFFSET: usize = 1024;
/// Superblock magic.
pub const MAGIC: u32 = 0xE0F5_E1E2;
/// Inodes sit on 32-byte slots; a nid is (offset in the metadata area) / 32.
pub const INODE_SLOT: u64 = 32;
/// Size of an extended inode.
pub const EXTENDED_INODE_SIZE: usize = 64;
/// Size of a folder entry (before its name).
pub const DIRENT_SIZE: usize = 12;
/// Size of the inline xattr header.
pub const XATTR_HEADER_SIZE: usize = 12;

/// Data layouts (`i_format` bits 1..3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataLayout {
    /// Data in consecutive blocks starting at `raw_blkaddr`.
    FlatPlain = 0,
    /// Whole blocks at `raw_blkaddr`, the tail right after the inode.
    FlatInline = 2,
}

/// Folder entry file types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FileType {
    /// Regular file.
    Regular = 1,
    /// Folder.
    Dir = 2,
    /// Character device.
    CharDev = 3,
    /// Block device.
    BlockDev = 4,
    /// Named pipe.
    Fifo = 5,
    /// Symbolic link.
    Symlink = 7,
}

/// `S_IF*` file type bits of a mode.
pub const S_IFREG: u16 = 0o100_000;
/// Folder.
pub const S_IFDIR: u16 = 0o040_000;
/// Symbolic link.
pub const S_IFLNK: u16 = 0o120_000;
/// Character device.
pub const S_IFCHR: u16 = 0o020_000;
/// Block device.
pub const S_IFBLK: u16 = 0o060_000;
/// Named pipe.
pub const S_IFIFO: u16 = 0o010_000;

/// The superblock fields hull sets.
#[derive(Debug, Clone, Default)]
pub struct Superblock {
    /// nid of the root folder.
    pub root_nid: u16,
    /// Number of inodes.
    pub inodes: u64,
    /// Total blocks of the image.
    pub blocks: u32,
    /// First block of the metadata area.
    pub meta_blkaddr: u32,
    /// Volume UUID.
    pub uuid: [u8; 16],
    /// Volume name (up to 16 bytes).
    pub volume_name: [u8; 16],
}

impl Superblock {
    /// The 128-byte on-disk superblock.
    pub fn encode(&self) -> [u8; 128] {
        let mut b = [0u8; 128];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        // 4..8 checksum (feature SB_CHKSUM unset), 8..12 feature_compat = 0
        b[12] = BLOCK_BITS;
        // 13: sb_extslots = 0
        b[14..16].copy_from_slice(&self.root_nid.to_le_bytes());
        b[16..24].copy_from_slice(&self.inodes.to_le_bytes());
        // 24..32 build_time, 32..36 build_time_nsec: unused with extended inodes
        b[36..40].copy_from_slice(&self.blocks.to_le_bytes());
        b[40..44].copy_from_slice(&self.meta_blkaddr.to_le_bytes());
        // 44..48 xattr_blkaddr = 0: no shared xattrs
        b[48..64].copy_from_slice(&self.uuid);
        b[64..80].copy_from_slice(&self.volume_name);
        // 80..84 feature_incompat = 0, rest reserved
        b
    }
}

/// The fields of an extended inode.
#[derive(Debug, Clone, Default)]
pub struct Inode {
    /// Data layout.
    pub layout: u16,
    /// `i_xattr_icount`.
    pub xattr_icount: u16,
    /// Type and permission bits.
    pub mode: u16,
    /// Size in bytes.
    pub size: u64,
    /// `raw_blkaddr` for data, or the device number for devices.
    pub union: u32,
    /// Inode number reported by stat.
    pub ino: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time in seconds.
    pub mtime: u64,
    /// Link count.
    pub nlink: u32,
}

impl Inode {
    /// The 64-byte on-disk extended inode.
    pub fn encode(&self) -> [u8; EXTENDED_INODE_SIZE] {
        let mut b = [0u8; EXTENDED_INODE_SIZE];
        let format: u16 = 1 | (self.layout << 1);
        b[0..2].copy_from_slice(&format.to_le_bytes());
        b[2..4].copy_from_slice(&self.xattr_icount.to_le_bytes());
        b[4..6].copy_from_slice(&self.mode.to_le_bytes());
        b[8..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..20].copy_from_slice(&self.union.to_le_bytes());
        b[20..24].copy_from_slice(&self.ino.to_le_bytes());
        b[24..28].copy_from_slice(&self.uid.to_le_bytes());
        b[28..32].copy_from_slice(&self.gid.to_le_bytes());
        b[32..40].copy_from_slice(&self.mtime.to_le_bytes());
        // 40..44 mtime_nsec = 0
        b[44..48].copy_from_slice(&self.nlink.to_le_bytes());
        b
    }
}

/// Linux's `new_encode_dev`: the device number as EROFS stores it.
pub fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// EROFS xattr name prefixes and their indexes.
const XATTR_PREFIXES: &[(&[u8], u8)] = &[(b"user.", 1), (b"trusted.", 4), (b"security.", 6)];

/// The (index, suffix) EROFS stores for a full xattr name, or `None` for a
/// namespace EROFS cannot hold.
pub fn xattr_index(name: &[u8]) -> Option<(u8, &[u8])> {
    match name {
        b"system.posix_acl_access" => return Some((2, b"")),
        b"system.posix_acl_default" => return Some((3, b"")),
        _ => {}
    }
    XATTR_PREFIXES
        .iter()
        .find_map(|(prefix, index)| name.strip_prefix(*prefix).map(|suffix| (*index, suffix)))
        .filter(|(_, suffix)| !suffix.is_empty() && suffix.len() <= 255)
}

/// The inline xattr body of an inode and its `i_xattr_icount`; empty and 0
/// when there are no attributes. Attributes EROFS cannot hold are returned
/// by name in the third element.
pub fn encode_xattrs(xattrs: &[(Vec<u8>, Vec<u8>)]) -> (Vec<u8>, u16, Vec<Vec<u8>>) {
    let mut body = Vec::new();
    let mut dropped = Vec::new();
    for (name, value) in xattrs {
        let Some((index, suffix)) = xattr_index(name) else {
            dropped.push(name.clone());
            continue;
        };
        let Ok(value_len) = u16::try_from(value.len()) else {
            dropped.push(name.clone());
            continue;
        };
        body.push(u8::try_from(suffix.len()).expect("xattr_index bounds the suffix"));
        body.push(index);
        body.extend_from_slice(&value_len.to_le_bytes());
        body.extend_from_slice(suffix);
        body.extend_from_slice(value);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    if body.is_empty() {
        return (Vec::new(), 0, dropped);
    }
    let mut out = vec![0u8; XATTR_HEADER_SIZE];
    out.extend_from_slice(&body);
    // icount counts 4-byte units after the 12-byte header, plus one.
    match u16::try_from(body.len() / 4 + 1) {
        Ok(icount) => (out, icount, dropped),
        Err(_) => (
            Vec::new(),
            0,
            xattrs.iter().map(|(name, _)| name.clone()).collect(),
        ),
    }
}

/// Splits a folder's sorted entry names into blocks: each block holds
/// `(first, end)` index ranges such that 12 bytes per entry plus the names
/// fit in [`BLOCK_SIZE`]. Returns the ranges and the folder's size in bytes.
pub fn dir_blocks(name_lens: &[usize]) -> (Vec<(usize, usize)>, u64) {
    let mut blocks = Vec::new();
    let mut start = 0;
    let mut used = 0usize;
    for (i, len) in name_lens.iter().enumerate() {
        let need = DIRENT_SIZE + len;
        if used + need > BLOCK_SIZE as usize {
            blocks.push((start, i));
            start = i;
            used = 0;
        }
        used += need;
    }
    blocks.push((start, name_lens.len()));
    let size = (blocks.len() as u64 - 1) * BLOCK_SIZE + used as u64;
    (blocks, size)
}

/// One folder entry: name, nid, type.
pub struct DirEntry<'a> {
    /// The name.
    pub name: &'a [u8],
    /// The inode it names.
    pub nid: u64,
    /// Its type.
    pub file_type: FileType,
}

/// The folder's content: blocks of entries, then names; every block but the
/// last padded with zeros to [`BLOCK_SIZE`].
pub fn encode_dir(entries: &[DirEntry<'_>]) -> Vec<u8> {
    let lens: Vec<usize> = entries.iter().map(|e| e.name.len()).collect();
    let (blocks, size) = dir_blocks(&lens);
    let mut out = Vec::with_capacity(usize::try_from(size).expect("folders fit in memory"));
    for (i, (first, end)) in blocks.iter().enumerate() {
        let block_start = out.len();
        let mut name_off = (end - first) * DIRENT_SIZE;
        for e in &entries[*first..*end] {
            out.extend_from_slice(&e.nid.to_le_bytes());
            out.extend_from_slice(
                &u16::try_from(name_off)
                    .expect("within a block")
                    .to_le_bytes(),
            );
            out.push(e.file_type as u8);
            out.push(0);
            name_off += e.name.len();
        }
        for e in &entries[*first..*end] {
            out.extend_from_slice(e.name);
        }
        if i + 1 < blocks.len() {
            out.resize(block_start + BLOCK_SIZE as usize, 0);
        }
    }
    debug_assert_eq!(out.len() as u64, size);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_fields_sit_at_their_offsets() {
        let sb = Superblock {
            root_nid: 0x1234,
            inodes: 5,
            blocks: 9,
            meta_blkaddr: 7,
            uuid: [0xab; 16],
            volume_name: *b"hull\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        let b = sb.encode();
        assert_eq!(&b[0..4], &[0xe2, 0xe1, 0xf5, 0xe0]);
        assert_eq!(b[12], 12);
        assert_eq!(u16::from_le_bytes([b[14], b[15]]), 0x1234);
        assert_eq!(u32::from_le_bytes(b[36..40].try_into().unwrap()), 9);
        assert_eq!(u32::from_le_bytes(b[40..44].try_into().unwrap()), 7);
        assert_eq!(&b[64..68], b"hull");
    }

    #[test]
    fn inode_format_marks_extended_and_layout() {
        let inode = Inode {
            layout: DataLayout::FlatInline as u16,
            mode: S_IFDIR | 0o755,
            nlink: 2,
            ..Default::default()
        };
        let b = inode.encode();
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), 1 | (2 << 1));
        assert_eq!(u16::from_le_bytes([b[4], b[5]]), 0o040_755);
        assert_eq!(u32::from_le_bytes(b[44..48].try_into().unwrap()), 2);
    }

    #[test]
    fn device_numbers_use_the_new_encoding() {
        assert_eq!(encode_dev(1, 3), 0x103);
        assert_eq!(encode_dev(8, 0x1234), 0x34 | (8 << 8) | (0x1200 << 12));
    }

    #[test]
    fn xattrs_encode_with_name_indexes_and_padding() {
        let (body, icount, dropped) = encode_xattrs(&[
            (b"user.a".to_vec(), b"xyz".to_vec()),
            (b"system.posix_acl_access".to_vec(), vec![2, 0, 0, 0]),
            (b"system.nfs4_acl".to_vec(), vec![1]),
        ]);
        // header 12 + (4+1+3 → 8) + (4+0+4 → 8)
        assert_eq!(body.len(), 28);
        assert_eq!(icount, (28 - 12) / 4 + 1);
        assert_eq!(&body[12..16], &[1, 1, 3, 0]);
        assert_eq!(&body[16..20], b"axyz");
        assert_eq!(&body[20..24], &[0, 2, 4, 0]);
        assert_eq!(dropped, vec![b"system.nfs4_acl".to_vec()]);
        assert_eq!(encode_xattrs(&[]).1, 0);
    }

    #[test]
    fn folders_split_into_blocks_with_exact_tail_size() {
        let (blocks, size) = dir_blocks(&[1, 2]);
        assert_eq!(blocks, vec![(0, 2)]);
        assert_eq!(size, 24 + 3);
        // 300 names of 10 bytes: 22 bytes each, 186 fit in a block.
        let (blocks, size) = dir_blocks(&[10; 300]);
        assert_eq!(blocks, vec![(0, 186), (186, 300)]);
        assert_eq!(size, 4096 + 114 * 22);
    }

    #[test]
    fn folder_entries_point_at_their_names() {
        let entries = [
            DirEntry {
                name: b".",
                nid: 0,
                file_type: FileType::Dir,
            },
            DirEntry {
                name: b"..",
                nid: 0,
                file_type: FileType::Dir,
            },
            DirEntry {
                name: b"bin",
                nid: 3,
                file_type: FileType::Dir,
            },
        ];
        let b = encode_dir(&entries);
        assert_eq!(b.len(), 36 + 1 + 2 + 3);
        let nameoff = |i: usize| u16::from_le_bytes([b[i * 12 + 8], b[i * 12 + 9]]) as usize;
        assert_eq!(nameoff(0), 36);
        assert_eq!(&b[nameoff(2)..], b"bin");
        assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), 3);
        assert_eq!(b[24 + 10], FileType::Dir as u8);
    }
}
