//! Writes the metadata of the merged tree after the file contents: assigns
//! every reachable node an inode slot (root first), lays out folders and
//! links (inline when they fit beside their inode), and writes the superblock.

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::FileExt;

use super::DataArea;
use super::format::{
    BLOCK_SIZE, DataLayout, DirEntry, EXTENDED_INODE_SIZE, FileType, INODE_SLOT, Inode, S_IFBLK,
    S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, SUPERBLOCK_OFFSET, Superblock, dir_blocks,
    encode_dev, encode_dir, encode_xattrs,
};
use crate::unpack::tree::{NodeId, NodeKind, ROOT, Tree};

/// Writing the EROFS metadata failed.
#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    /// Writing the image file failed.
    #[error("cannot write the EROFS image")]
    Write(#[source] io::Error),
    /// The image has more inodes or blocks than EROFS addresses.
    #[error("the image is too large for EROFS: {0}")]
    TooLarge(&'static str),
}

/// What [`finish`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSummary {
    /// Size of the image file in bytes.
    pub bytes: u64,
    /// Inodes in the image.
    pub inodes: u64,
}

/// Where a node's data lives.
enum Placement {
    /// Content right after the inode (and its xattrs).
    Inline(Vec<u8>),
    /// Content in blocks starting at this block (0 for empty files).
    Blocks(u64),
}

struct Planned {
    node: NodeId,
    parent: NodeId,
    xattrs: Vec<u8>,
    xattr_icount: u16,
    size: u64,
    placement: Placement,
    /// Byte offset of the inode in the metadata area.
    offset: u64,
}

fn file_type(kind: &NodeKind) -> (FileType, u16) {
    match kind {
        NodeKind::Dir(_) => (FileType::Dir, S_IFDIR),
        NodeKind::File { .. } => (FileType::Regular, S_IFREG),
        NodeKind::Symlink(_) => (FileType::Symlink, S_IFLNK),
        NodeKind::CharDev(..) => (FileType::CharDev, S_IFCHR),
        NodeKind::BlockDev(..) => (FileType::BlockDev, S_IFBLK),
        NodeKind::Fifo => (FileType::Fifo, S_IFIFO),
    }
}

/// Names of a folder's entries, `.` and `..` included, in EROFS order
/// (bytewise, which folder lookups binary-search).
fn dir_names(tree: &Tree, id: NodeId) -> Vec<&[u8]> {
    let children = tree.children(id).expect("a folder");
    let mut names: Vec<&[u8]> = children.keys().map(Vec::as_slice).collect();
    names.push(b".");
    names.push(b"..");
    names.sort_unstable();
    names
}

/// Appends the metadata of `tree` to the image in `data` and writes the
/// superblock. File contents must already be in place.
pub fn finish(tree: &Tree, data: &DataArea, uuid: [u8; 16]) -> Result<ImageSummary, ErofsError> {
    let write = ErofsError::Write;
    // Reachable nodes, breadth first from the root; hard links share a slot.
    let mut seen: Vec<bool> = vec![false; tree.nodes.len()];
    let mut nlink: Vec<u32> = vec![0; tree.nodes.len()];
    let mut planned: Vec<Planned> = Vec::new();
    let mut queue = VecDeque::from([(ROOT, ROOT)]);
    seen[ROOT] = true;
    while let Some((id, parent)) = queue.pop_front() {
        planned.push(Planned {
            node: id,
            parent,
            xattrs: Vec::new(),
            xattr_icount: 0,
            size: 0,
            placement: Placement::Blocks(0),
            offset: 0,
        });
        if let Some(children) = tree.children(id) {
            nlink[id] = 2;
            for &child in children.values() {
                if matches!(tree.nodes[child].kind, NodeKind::Dir(_)) {
                    nlink[id] += 1;
                } else {
                    nlink[child] += 1;
                }
                if !seen[child] {
                    seen[child] = true;
                    queue.push_back((child, id));
                }
            }
        }
    }
    let mut index_of: Vec<Option<usize>> = vec![None; tree.nodes.len()];
    for (pos, plan) in planned.iter().enumerate() {
        index_of[plan.node] = Some(pos);
    }
    let inode_count = planned.len() as u64;
    if inode_count > u64::from(u32::MAX) {
        return Err(ErofsError::TooLarge("more than 2^32 inodes"));
    }

    // Sizes, xattrs, and where each node's data goes.
    for plan in &mut planned {
        let node = &tree.nodes[plan.node];
        let (body, icount, dropped) = encode_xattrs(&node.meta.xattrs);
        for name in dropped {
            tracing::warn!(
                xattr = %String::from_utf8_lossy(&name),
                "dropping an extended attribute EROFS cannot hold"
            );
        }
        plan.xattrs = body;
        plan.xattr_icount = icount;
        let inline_room = BLOCK_SIZE - (EXTENDED_INODE_SIZE + plan.xattrs.len()) as u64;
        match &node.kind {
            NodeKind::File { block, size } => {
                plan.size = *size;
                plan.placement = Placement::Blocks(*block);
            }
            NodeKind::Dir(_) => {
                let lens: Vec<usize> = dir_names(tree, plan.node).iter().map(|n| n.len()).collect();
                let (_, size) = dir_blocks(&lens);
                plan.size = size;
                plan.placement = if size <= inline_room {
                    // Filled in once nids are known.
                    Placement::Inline(Vec::new())
                } else {
                    Placement::Blocks(data.allocate(size).map_err(write)?)
                };
            }
            NodeKind::Symlink(target) => {
                plan.size = target.len() as u64;
                plan.placement = if plan.size <= inline_room {
                    Placement::Inline(target.clone())
                } else {
                    let block = data.allocate(plan.size).map_err(write)?;
                    data.write_at(block, 0, target).map_err(write)?;
                    Placement::Blocks(block)
                };
            }
            NodeKind::CharDev(..) | NodeKind::BlockDev(..) | NodeKind::Fifo => {}
        }
    }

    // Inode slots: 32-byte aligned; an inode with its xattrs and inline data
    // never straddles a block boundary (the kernel requires it for inline data).
    let meta_block = data.next_block();
    let mut cursor = 0u64;
    for plan in &mut planned {
        let inline_len = match &plan.placement {
            Placement::Inline(_) => plan.size,
            Placement::Blocks(_) => 0,
        };
        let record = (EXTENDED_INODE_SIZE + plan.xattrs.len()) as u64 + inline_len;
        cursor = cursor.next_multiple_of(INODE_SLOT);
        if cursor % BLOCK_SIZE + record > BLOCK_SIZE && record <= BLOCK_SIZE {
            cursor = cursor.next_multiple_of(BLOCK_SIZE);
        }
        plan.offset = cursor;
        cursor += record;
    }
    let nid = |id: NodeId| planned[index_of[id].expect("reachable")].offset / INODE_SLOT;

    // Folder contents now that every nid is known.
    let mut meta = vec![0u8; usize::try_from(cursor).expect("metadata fits in memory")];
    for (ino, plan) in planned.iter().enumerate() {
        let node = &tree.nodes[plan.node];
        let (_, type_bits) = file_type(&node.kind);
        let dir_content = if let NodeKind::Dir(children) = &node.kind {
            let entries: Vec<DirEntry<'_>> = dir_names(tree, plan.node)
                .into_iter()
                .map(|name| {
                    let target = match name {
                        b"." => plan.node,
                        b".." => plan.parent,
                        _ => children[name],
                    };
                    DirEntry {
                        name,
                        nid: nid(target),
                        file_type: file_type(&tree.nodes[target].kind).0,
                    }
                })
                .collect();
            Some(encode_dir(&entries))
        } else {
            None
        };
        let (layout, union, inline): (DataLayout, u32, &[u8]) = match (&plan.placement, &node.kind)
        {
            (_, NodeKind::CharDev(major, minor) | NodeKind::BlockDev(major, minor)) => {
                (DataLayout::FlatPlain, encode_dev(*major, *minor), &[])
            }
            (Placement::Inline(target), _) => (
                DataLayout::FlatInline,
                0,
                dir_content.as_deref().unwrap_or(target.as_slice()),
            ),
            (Placement::Blocks(block), _) => {
                if let Some(content) = &dir_content {
                    data.write_at(*block, 0, content).map_err(write)?;
                }
                (
                    DataLayout::FlatPlain,
                    u32::try_from(*block)
                        .map_err(|_| ErofsError::TooLarge("more than 2^32 blocks"))?,
                    &[],
                )
            }
        };
        let inode = Inode {
            layout: layout as u16,
            xattr_icount: plan.xattr_icount,
            mode: type_bits | (node.meta.mode & 0o7777),
            size: plan.size,
            union,
            ino: u32::try_from(ino + 1).expect("checked against 2^32 above"),
            uid: node.meta.uid,
            gid: node.meta.gid,
            mtime: node.meta.mtime,
            nlink: nlink[plan.node].max(1),
        };
        let at = usize::try_from(plan.offset).expect("within the metadata buffer");
        meta[at..at + EXTENDED_INODE_SIZE].copy_from_slice(&inode.encode());
        let x_end = at + EXTENDED_INODE_SIZE + plan.xattrs.len();
        meta[at + EXTENDED_INODE_SIZE..x_end].copy_from_slice(&plan.xattrs);
        meta[x_end..x_end + inline.len()].copy_from_slice(inline);
    }

    let meta_blocks = cursor.div_ceil(BLOCK_SIZE).max(1);
    let total_blocks = meta_block + meta_blocks;
    let blocks =
        u32::try_from(total_blocks).map_err(|_| ErofsError::TooLarge("more than 2^32 blocks"))?;
    let file = data.file();
    file.write_all_at(&meta, meta_block * BLOCK_SIZE)
        .map_err(write)?;
    let superblock = Superblock {
        root_nid: u16::try_from(nid(ROOT)).expect("the root is placed first"),
        inodes: inode_count,
        blocks,
        meta_blkaddr: u32::try_from(meta_block)
            .map_err(|_| ErofsError::TooLarge("more than 2^32 blocks"))?,
        uuid,
        volume_name: *b"hull-image\0\0\0\0\0\0",
    };
    file.write_all_at(&superblock.encode(), SUPERBLOCK_OFFSET as u64)
        .map_err(write)?;
    let bytes = total_blocks * BLOCK_SIZE;
    file.set_len(bytes).map_err(write)?;
    file.sync_all().map_err(write)?;
    Ok(ImageSummary {
        bytes,
        inodes: inode_count,
    })
}
