//! The merged filesystem tree: layers applied in order, with OCI whiteouts and
//! opaque folders, in memory.
//!
//! Every path is resolved component by component inside the tree. A symbolic
//! link met on the way is followed only while it stays inside the root: an
//! absolute target, or a `..` that climbs above the root, refuses the entry
//! that tried to go through it. Nothing is ever looked up on the host.

use std::collections::{BTreeMap, VecDeque};

use super::{Entry, EntryKind, Meta, UnpackError};

/// Index of a node in [`Tree::nodes`].
pub type NodeId = usize;

/// How many symbolic links one lookup may follow (Linux's limit).
const MAX_LINK_FOLLOWS: usize = 40;

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A folder and its children by name.
    Dir(BTreeMap<Vec<u8>, NodeId>),
    /// A regular file whose content starts at `block` of the image.
    File {
        /// First block of the content.
        block: u64,
        /// Size in bytes.
        size: u64,
    },
    /// A symbolic link.
    Symlink(Vec<u8>),
    /// A character device (major, minor).
    CharDev(u32, u32),
    /// A block device (major, minor).
    BlockDev(u32, u32),
    /// A named pipe.
    Fifo,
}

/// One file, folder, link or device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// What it is.
    pub kind: NodeKind,
    /// Its metadata.
    pub meta: Meta,
}

/// The merged tree. Node 0 is the root folder. Nodes that lost every name
/// stay in `nodes` but are unreachable.
#[derive(Debug, Clone)]
pub struct Tree {
    /// Every node ever created.
    pub nodes: Vec<Node>,
}

/// The root node.
pub const ROOT: NodeId = 0;

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// An empty root folder (`0755`, owned by root).
    pub fn new() -> Self {
        Tree {
            nodes: vec![Node {
                kind: NodeKind::Dir(BTreeMap::new()),
                meta: Meta {
                    mode: 0o755,
                    ..Meta::default()
                },
            }],
        }
    }

    /// The children of a folder node.
    pub fn children(&self, id: NodeId) -> Option<&BTreeMap<Vec<u8>, NodeId>> {
        match &self.nodes[id].kind {
            NodeKind::Dir(children) => Some(children),
            _ => None,
        }
    }

    fn children_mut(&mut self, id: NodeId) -> &mut BTreeMap<Vec<u8>, NodeId> {
        match &mut self.nodes[id].kind {
            NodeKind::Dir(children) => children,
            _ => unreachable!("resolve_dir returns folders only"),
        }
    }

    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Applies one layer's entries on top of the tree: first its whiteouts and
    /// opaque markers (which hide lower layers only), then its other entries
    /// in order.
    pub fn apply_layer(&mut self, entries: Vec<Entry>) -> Result<(), UnpackError> {
        for entry in entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Whiteout | EntryKind::Opaque))
        {
            self.apply_hide(entry)?;
        }
        for entry in entries {
            if !matches!(entry.kind, EntryKind::Whiteout | EntryKind::Opaque) {
                self.apply_entry(entry)?;
            }
        }
        Ok(())
    }

    fn apply_hide(&mut self, entry: &Entry) -> Result<(), UnpackError> {
        match entry.kind {
            EntryKind::Whiteout => {
                let (name, parent_path) = entry.path.split_last().expect("whiteouts name a child");
                if let Some(parent) = self.resolve_dir(parent_path, false, &entry.raw_path)? {
                    self.children_mut(parent).remove(name);
                }
            }
            EntryKind::Opaque => {
                if let Some(dir) = self.resolve_dir(&entry.path, false, &entry.raw_path)? {
                    self.children_mut(dir).clear();
                }
            }
            _ => unreachable!("only whiteouts and opaque markers are hides"),
        }
        Ok(())
    }

    fn apply_entry(&mut self, entry: Entry) -> Result<(), UnpackError> {
        let Some((name, parent_path)) = entry.path.split_last() else {
            return match entry.kind {
                EntryKind::Dir => {
                    self.nodes[ROOT].meta = entry.meta;
                    Ok(())
                }
                _ => Err(UnpackError::hostile(
                    &entry.raw_path,
                    "replaces the root folder with a non-folder",
                )),
            };
        };
        let parent = self
            .resolve_dir(parent_path, true, &entry.raw_path)?
            .expect("created when missing");
        let existing = self.children(parent).expect("a folder").get(name).copied();
        let new_id = match entry.kind {
            EntryKind::Dir => match existing {
                Some(id) if matches!(self.nodes[id].kind, NodeKind::Dir(_)) => {
                    self.nodes[id].meta = entry.meta;
                    return Ok(());
                }
                _ => self.push(Node {
                    kind: NodeKind::Dir(BTreeMap::new()),
                    meta: entry.meta,
                }),
            },
            EntryKind::Hardlink(ref target) => self.resolve_link_target(target, &entry.raw_path)?,
            EntryKind::File { block, size } => self.push(Node {
                kind: NodeKind::File { block, size },
                meta: entry.meta,
            }),
            EntryKind::Symlink(target) => self.push(Node {
                kind: NodeKind::Symlink(target),
                meta: entry.meta,
            }),
            EntryKind::CharDev(major, minor) => self.push(Node {
                kind: NodeKind::CharDev(major, minor),
                meta: entry.meta,
            }),
            EntryKind::BlockDev(major, minor) => self.push(Node {
                kind: NodeKind::BlockDev(major, minor),
                meta: entry.meta,
            }),
            EntryKind::Fifo => self.push(Node {
                kind: NodeKind::Fifo,
                meta: entry.meta,
            }),
            EntryKind::Whiteout | EntryKind::Opaque => unreachable!("hides are applied first"),
        };
        self.children_mut(parent).insert(name.clone(), new_id);
        Ok(())
    }

    /// The existing non-folder node a hard link names.
    fn resolve_link_target(
        &mut self,
        target: &[Vec<u8>],
        raw: &[u8],
    ) -> Result<NodeId, UnpackError> {
        let shown = || String::from_utf8_lossy(&target.join(&b'/')).into_owned();
        let (name, parent_path) = target.split_last().expect("checked non-empty when read");
        let found = self
            .resolve_dir(parent_path, false, raw)?
            .and_then(|parent| self.children(parent).and_then(|c| c.get(name)).copied());
        match found {
            None => Err(UnpackError::hostile(
                raw,
                format!(
                    "is a hard link to {:?}, which no earlier entry created",
                    shown()
                ),
            )),
            Some(id) if matches!(self.nodes[id].kind, NodeKind::Dir(_)) => Err(
                UnpackError::hostile(raw, format!("is a hard link to the folder {:?}", shown())),
            ),
            Some(id) => Ok(id),
        }
    }

    /// Resolves `path` to a folder, following symbolic links only while they
    /// stay inside the root. Missing folders are created when `create`,
    /// otherwise the answer is `None`.
    fn resolve_dir(
        &mut self,
        path: &[Vec<u8>],
        create: bool,
        raw: &[u8],
    ) -> Result<Option<NodeId>, UnpackError> {
        let mut ancestors: Vec<NodeId> = vec![ROOT];
        let mut pending: VecDeque<Vec<u8>> = path.iter().cloned().collect();
        let mut follows = 0;
        while let Some(component) = pending.pop_front() {
            let current = *ancestors.last().expect("the root is never popped");
            match component.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if ancestors.len() == 1 {
                        return Err(UnpackError::hostile(
                            raw,
                            "is written through a symbolic link that climbs out of the root",
                        ));
                    }
                    ancestors.pop();
                    continue;
                }
                _ => {}
            }
            let child = self
                .children(current)
                .expect("ancestors are folders")
                .get(&component)
                .copied();
            let Some(child) = child else {
                if !create {
                    return Ok(None);
                }
                let id = self.push(Node {
                    kind: NodeKind::Dir(BTreeMap::new()),
                    meta: Meta {
                        mode: 0o755,
                        ..Meta::default()
                    },
                });
                self.children_mut(current).insert(component, id);
                ancestors.push(id);
                continue;
            };
            match &self.nodes[child].kind {
                NodeKind::Dir(_) => ancestors.push(child),
                NodeKind::Symlink(target) => {
                    follows += 1;
                    if follows > MAX_LINK_FOLLOWS {
                        return Err(UnpackError::hostile(
                            raw,
                            "is written through a loop of symbolic links",
                        ));
                    }
                    if target.first() == Some(&b'/') {
                        return Err(UnpackError::hostile(
                            raw,
                            format!(
                                "is written through the symbolic link {:?} -> {:?}, whose absolute target is outside the layer's root",
                                String::from_utf8_lossy(&component),
                                String::from_utf8_lossy(target)
                            ),
                        ));
                    }
                    let target_parts: Vec<Vec<u8>> =
                        target.split(|b| *b == b'/').map(<[u8]>::to_vec).collect();
                    for part in target_parts.into_iter().rev() {
                        pending.push_front(part);
                    }
                }
                _ => {
                    return Err(UnpackError::hostile(
                        raw,
                        format!(
                            "needs {:?} to be a folder, but it is not",
                            String::from_utf8_lossy(&component)
                        ),
                    ));
                }
            }
        }
        Ok(Some(*ancestors.last().expect("the root is never popped")))
    }

    /// The node at `path` without following a final symbolic link (for tests
    /// and inspection); intermediate links inside the root are followed.
    pub fn lookup(&mut self, path: &str) -> Option<NodeId> {
        let parts: Vec<Vec<u8>> = path
            .split('/')
            .filter(|p| !p.is_empty())
            .map(|p| p.as_bytes().to_vec())
            .collect();
        let Some((name, parent_path)) = parts.split_last() else {
            return Some(ROOT);
        };
        let parent = self
            .resolve_dir(parent_path, false, path.as_bytes())
            .ok()??;
        self.children(parent)?.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path
                .split('/')
                .filter(|p| !p.is_empty())
                .map(|p| p.as_bytes().to_vec())
                .collect(),
            raw_path: path.as_bytes().to_vec(),
            kind,
            meta: Meta {
                mode: 0o644,
                ..Meta::default()
            },
        }
    }

    fn file(path: &str, block: u64) -> Entry {
        entry(path, EntryKind::File { block, size: 1 })
    }

    fn names(tree: &Tree, id: NodeId) -> Vec<String> {
        tree.children(id)
            .unwrap()
            .keys()
            .map(|k| String::from_utf8(k.clone()).unwrap())
            .collect()
    }

    fn hostile_reason(err: UnpackError) -> (String, String) {
        match err {
            UnpackError::Hostile { entry, reason } => (entry, reason),
            other => panic!("expected a hostile entry error, got {other:?}"),
        }
    }

    #[test]
    fn whiteout_removes_lower_file_and_opaque_hides_lower_children_only() {
        let mut tree = Tree::new();
        tree.apply_layer(vec![
            entry("etc", EntryKind::Dir),
            file("etc/a", 1),
            file("etc/b", 2),
            entry("var", EntryKind::Dir),
            file("var/old", 3),
        ])
        .unwrap();
        tree.apply_layer(vec![
            entry("etc/a", EntryKind::Whiteout),
            // The opaque marker comes after a same-layer entry: that entry stays.
            file("var/new", 4),
            entry("var", EntryKind::Opaque),
        ])
        .unwrap();
        let etc = tree.lookup("etc").unwrap();
        assert_eq!(names(&tree, etc), ["b"]);
        let var = tree.lookup("var").unwrap();
        assert_eq!(names(&tree, var), ["new"]);
    }

    #[test]
    fn whiteout_of_a_folder_removes_its_subtree_and_it_can_be_recreated() {
        let mut tree = Tree::new();
        tree.apply_layer(vec![file("d/x/y", 1)]).unwrap();
        tree.apply_layer(vec![entry("d", EntryKind::Whiteout), file("d/z", 2)])
            .unwrap();
        let d = tree.lookup("d").unwrap();
        assert_eq!(names(&tree, d), ["z"]);
    }

    #[test]
    fn folders_merge_and_files_replace() {
        let mut tree = Tree::new();
        tree.apply_layer(vec![file("a/one", 1), file("f", 2)])
            .unwrap();
        let mut dir = entry("a", EntryKind::Dir);
        dir.meta.mode = 0o700;
        tree.apply_layer(vec![dir, file("a/two", 3), entry("f", EntryKind::Dir)])
            .unwrap();
        let a = tree.lookup("a").unwrap();
        assert_eq!(names(&tree, a), ["one", "two"]);
        assert_eq!(tree.nodes[a].meta.mode, 0o700);
        let f = tree.lookup("f").unwrap();
        assert!(matches!(tree.nodes[f].kind, NodeKind::Dir(_)));
    }

    #[test]
    fn hard_links_share_the_node() {
        let mut tree = Tree::new();
        tree.apply_layer(vec![
            file("bin/busybox", 7),
            entry(
                "bin/sh",
                EntryKind::Hardlink(vec![b"bin".to_vec(), b"busybox".to_vec()]),
            ),
        ])
        .unwrap();
        assert_eq!(tree.lookup("bin/sh"), tree.lookup("bin/busybox"));
    }

    #[test]
    fn relative_symlinks_inside_the_root_are_followed() {
        let mut tree = Tree::new();
        tree.apply_layer(vec![
            entry("usr/lib", EntryKind::Dir),
            entry("lib", EntryKind::Symlink(b"usr/lib".to_vec())),
            entry("usr/lib64", EntryKind::Symlink(b"../lib/./".to_vec())),
        ])
        .unwrap();
        tree.apply_layer(vec![file("lib/libc.so", 1), file("usr/lib64/ld.so", 2)])
            .unwrap();
        let usr_lib = tree.lookup("usr/lib").unwrap();
        assert_eq!(names(&tree, usr_lib), ["ld.so", "libc.so"]);
    }

    #[test]
    fn writing_through_an_absolute_symlink_is_refused() {
        let mut tree = Tree::new();
        tree.apply_layer(vec![entry("escape", EntryKind::Symlink(b"/etc".to_vec()))])
            .unwrap();
        let err = tree
            .apply_layer(vec![file("escape/passwd", 1)])
            .unwrap_err();
        let (name, reason) = hostile_reason(err);
        assert_eq!(name, "escape/passwd");
        assert!(reason.contains("absolute target"), "{reason}");
    }

    #[test]
    fn writing_through_a_symlink_that_climbs_out_is_refused() {
        let mut tree = Tree::new();
        tree.apply_layer(vec![entry(
            "a/up",
            EntryKind::Symlink(b"../../..".to_vec()),
        )])
        .unwrap();
        let (name, reason) = hostile_reason(tree.apply_layer(vec![file("a/up/x", 1)]).unwrap_err());
        assert_eq!(name, "a/up/x");
        assert!(reason.contains("climbs out"), "{reason}");
        // A whiteout through it is refused too.
        let err = tree
            .apply_layer(vec![entry("a/up/x", EntryKind::Whiteout)])
            .unwrap_err();
        assert_eq!(hostile_reason(err).0, "a/up/x");
    }

    #[test]
    fn symlink_loops_are_refused() {
        let mut tree = Tree::new();
        tree.apply_layer(vec![
            entry("a", EntryKind::Symlink(b"b".to_vec())),
            entry("b", EntryKind::Symlink(b"a".to_vec())),
        ])
        .unwrap();
        let (_, reason) = hostile_reason(tree.apply_layer(vec![file("a/x", 1)]).unwrap_err());
        assert!(reason.contains("loop"), "{reason}");
    }

    #[test]
    fn hard_links_to_missing_or_folder_targets_are_refused() {
        let mut tree = Tree::new();
        let err = tree
            .apply_layer(vec![entry(
                "x",
                EntryKind::Hardlink(vec![b"missing".to_vec()]),
            )])
            .unwrap_err();
        assert!(hostile_reason(err).1.contains("no earlier entry"));
        tree.apply_layer(vec![entry("d", EntryKind::Dir)]).unwrap();
        let err = tree
            .apply_layer(vec![entry("y", EntryKind::Hardlink(vec![b"d".to_vec()]))])
            .unwrap_err();
        assert!(hostile_reason(err).1.contains("folder"));
    }

    #[test]
    fn a_file_used_as_a_folder_is_refused() {
        let mut tree = Tree::new();
        tree.apply_layer(vec![file("f", 1)]).unwrap();
        let (entry, _) = hostile_reason(tree.apply_layer(vec![file("f/x", 2)]).unwrap_err());
        assert_eq!(entry, "f/x");
    }
}
