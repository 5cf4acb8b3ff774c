//! What to send the agent to turn one tree into another: a pure function of
//! two snapshots, ordered so that the guest copy never shows a dangling
//! `..data` or key link.
//!
//! Order: removals that must come first (a directory replaced by a file or
//! link, or the reverse: a rename cannot replace a directory), then
//! directories (parents first), regular files, symlinks (each after the
//! links it resolves through, so `..data` is swapped before a new key's
//! `key -> ..data/key` appears), and last the removal of what the host no
//! longer has (a dropped key's link, then the old timestamped directory).
//! That is the kubelet's own order for its atomic writer. A dropped key's
//! link dangles between the `..data` swap and its removal, as it does on
//! the host: to a reader, that key is simply gone.

use super::scan::{Entry, EntryKind, Snapshot, is_within, parent_components, relative_components};

/// One agent request on a mount's guest copy, by path relative to the
/// mount root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `CopyFile` of the host entry.
    Copy { rel: String, entry: Entry },
    /// `RemoveFile` of the path and everything under it.
    Remove { rel: String },
}

impl Op {
    pub fn rel(&self) -> &str {
        match self {
            Op::Copy { rel, .. } | Op::Remove { rel } => rel,
        }
    }
}

fn under_any(rel: &str, roots: &[String]) -> bool {
    roots.iter().any(|root| is_within(rel, root))
}

/// The requests that turn `held` (what the guest copy holds) into `host`.
pub fn diff(held: &Snapshot, host: &Snapshot) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut removed: Vec<String> = Vec::new();

    // A directory cannot be renamed over, nor renamed over a file or link.
    for (rel, new) in host.iter() {
        if let Some(old) = held.get(rel)
            && old.is_dir() != new.is_dir()
            && !under_any(rel, &removed)
        {
            ops.push(Op::Remove {
                rel: rel.to_owned(),
            });
            removed.push(rel.to_owned());
        }
    }

    let needs_copy = |rel: &str, new: &Entry| match held.get(rel) {
        None => true,
        Some(old) => under_any(rel, &removed) || !old.same_copy(new),
    };
    let changed = |want: fn(&EntryKind) -> bool| {
        host.iter()
            .filter(|(rel, entry)| want(&entry.kind) && needs_copy(rel, entry))
            .map(|(rel, entry)| Op::Copy {
                rel: rel.to_owned(),
                entry: entry.clone(),
            })
            .collect::<Vec<_>>()
    };
    ops.extend(changed(|k| *k == EntryKind::Directory));
    ops.extend(changed(|k| *k == EntryKind::Regular));
    ops.extend(in_link_order(changed(|k| {
        matches!(k, EntryKind::Symlink { .. })
    })));

    // What the host no longer has, each subtree once: links and files
    // first (a dropped key's link, which dangles since the swap), then
    // directories (the old timestamped one).
    let mut gone = Vec::new();
    for (rel, entry) in held.iter() {
        if host.get(rel).is_none() && !under_any(rel, &removed) {
            gone.push((entry.is_dir(), rel.to_owned()));
            removed.push(rel.to_owned());
        }
    }
    gone.sort_by_key(|(is_dir, _)| *is_dir);
    ops.extend(gone.into_iter().map(|(_, rel)| Op::Remove { rel }));
    ops
}

/// The other links of `links` that the link at `rel` resolves through: the
/// ones its target, read as a path from the link's directory, passes.
fn resolves_through<'a>(rel: &str, target: &str, links: &'a [Op]) -> Vec<&'a str> {
    let Some(parts) = relative_components(target) else {
        return Vec::new();
    };
    let mut path = parent_components(rel);
    let mut passed = Vec::new();
    for part in parts {
        match part {
            "" | "." => continue,
            ".." => {
                if path.pop().is_none() {
                    break;
                }
                continue;
            }
            name => path.push(name),
        }
        let here = path.join("/");
        if let Some(link) = links.iter().find(|op| op.rel() == here && here != rel) {
            passed.push(link.rel());
        }
    }
    passed
}

/// Orders link copies so that each comes after the links it resolves
/// through; otherwise by path. A cycle keeps path order.
fn in_link_order(links: Vec<Op>) -> Vec<Op> {
    let deps: Vec<Vec<&str>> = links
        .iter()
        .map(|op| match op {
            Op::Copy {
                rel,
                entry:
                    Entry {
                        kind: EntryKind::Symlink { target },
                        ..
                    },
            } => resolves_through(rel, target, &links),
            _ => Vec::new(),
        })
        .collect();
    let mut done = vec![false; links.len()];
    let mut order = Vec::with_capacity(links.len());
    while order.len() < links.len() {
        let ready = (0..links.len()).find(|&i| {
            !done[i]
                && deps[i].iter().all(|dep| {
                    links
                        .iter()
                        .position(|op| op.rel() == *dep)
                        .is_none_or(|j| done[j])
                })
        });
        let next = ready.unwrap_or_else(|| (0..links.len()).find(|&i| !done[i]).expect("one left"));
        done[next] = true;
        order.push(next);
    }
    let mut slots: Vec<Option<Op>> = links.into_iter().map(Some).collect();
    order
        .into_iter()
        .map(|i| slots[i].take().expect("each index once"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: EntryKind) -> Entry {
        Entry {
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            mtime_ns: 1,
            ctime_ns: 1,
            dev: 1,
            ino: 1,
        }
    }
    fn dir() -> Entry {
        entry(EntryKind::Directory)
    }
    fn file(size: u64, ino: u64) -> Entry {
        Entry {
            size,
            ino,
            mode: 0o644,
            ..entry(EntryKind::Regular)
        }
    }
    fn link(target: &str) -> Entry {
        entry(EntryKind::Symlink {
            target: target.into(),
        })
    }

    fn tree(entries: &[(&str, Entry)]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (rel, e) in entries {
            snapshot.insert((*rel).to_owned(), e.clone());
        }
        snapshot
    }

    /// Ops as short strings: "+path" copy, "-path" remove.
    fn show(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                Op::Copy { rel, .. } => format!("+{rel}"),
                Op::Remove { rel } => format!("-{rel}"),
            })
            .collect()
    }

    /// A projected volume at one timestamped directory.
    fn volume(ts: &str, keys: &[(&str, u64)]) -> Vec<(String, Entry)> {
        let mut entries = vec![
            (String::new(), dir()),
            (ts.to_owned(), dir()),
            ("..data".to_owned(), link(ts)),
        ];
        for (key, ino) in keys {
            entries.push((format!("{ts}/{key}"), file(10, *ino)));
            entries.push(((*key).to_owned(), link(&format!("..data/{key}"))));
        }
        entries
    }

    fn snapshot(entries: &[(String, Entry)]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (rel, e) in entries {
            snapshot.insert(rel.clone(), e.clone());
        }
        snapshot
    }

    #[test]
    fn a_first_copy_goes_dirs_files_then_links_in_resolution_order() {
        let host = tree(&[
            ("", dir()),
            ("b", dir()),
            ("b/c", dir()),
            ("b/c/f", file(3, 2)),
            ("a", file(1, 3)),
            // '-' sorts before '.', so path order alone would put this
            // key's link before the `..data` it goes through.
            ("-key", link("..data/-key")),
            ("..data", link("b")),
            ("zalias", link("-key")),
        ]);
        let ops = diff(&Snapshot::default(), &host);
        assert_eq!(
            show(&ops),
            [
                "+", "+b", "+b/c", "+a", "+b/c/f", "+..data", "+-key", "+zalias"
            ]
        );
    }

    #[test]
    fn nothing_changed_nothing_sent() {
        let host = snapshot(&volume("..2026_01", &[("token", 2)]));
        assert!(diff(&host, &host).is_empty());
    }

    #[test]
    fn a_kubelet_update_swaps_data_after_writing_and_before_removing() {
        let old = snapshot(&volume("..2026_01", &[("token", 2), ("gone", 3)]));
        let new = snapshot(&volume("..2026_02", &[("token", 4), ("-new", 5)]));
        let ops = diff(&old, &new);
        assert_eq!(
            show(&ops),
            [
                "+..2026_02",
                "+..2026_02/-new",
                "+..2026_02/token",
                "+..data",
                "+-new",
                "-gone",
                "-..2026_01",
            ]
        );
        // The unchanged `token -> ..data/token` link is not sent again, and
        // the old directory goes as one request, not file by file.
        assert!(!show(&ops).contains(&"+token".to_owned()));
    }

    #[test]
    fn changed_files_and_owners_are_sent_again() {
        let old = tree(&[("", dir()), ("f", file(3, 2)), ("d", dir())]);
        let mut chowned = dir();
        chowned.gid = 2000;
        let mut touched = file(3, 2);
        touched.ctime_ns = 2;
        let new = tree(&[("", dir()), ("f", touched), ("d", chowned)]);
        assert_eq!(show(&diff(&old, &new)), ["+d", "+f"]);
        // A directory's times alone do not matter (they move with every
        // entry added or removed in it).
        let mut busy = dir();
        busy.mtime_ns = 99;
        let new = tree(&[("", busy), ("f", file(3, 2)), ("d", dir())]);
        assert!(diff(&old, &new).is_empty());
    }

    #[test]
    fn a_directory_replaced_by_a_file_is_removed_first_and_once() {
        let old = tree(&[
            ("", dir()),
            ("x", dir()),
            ("x/a", file(1, 2)),
            ("x/b", dir()),
            ("x/b/c", file(1, 3)),
            ("y", link("x")),
        ]);
        let new = tree(&[
            ("", dir()),
            ("x", file(5, 4)),
            ("y", dir()),
            ("y/a", file(1, 2)),
        ]);
        assert_eq!(show(&diff(&old, &new)), ["-x", "-y", "+y", "+x", "+y/a"]);
    }

    #[test]
    fn a_file_replaced_by_a_link_needs_no_removal() {
        let old = tree(&[("", dir()), ("x", file(1, 2))]);
        let new = tree(&[("", dir()), ("x", link("elsewhere"))]);
        assert_eq!(show(&diff(&old, &new)), ["+x"]);
    }

    #[test]
    fn entries_under_a_removed_directory_are_not_removed_one_by_one() {
        let old = tree(&[
            ("", dir()),
            ("a", dir()),
            ("a/b", dir()),
            ("a/b/c", file(1, 2)),
            ("a-sibling", file(1, 3)),
        ]);
        let new = tree(&[("", dir()), ("a-sibling", file(1, 3))]);
        assert_eq!(show(&diff(&old, &new)), ["-a"]);
    }

    #[test]
    fn a_link_cycle_still_gets_every_link_once() {
        let host = tree(&[("", dir()), ("p", link("q/x")), ("q", link("p/y"))]);
        let ops = diff(&Snapshot::default(), &host);
        assert_eq!(show(&ops), ["+", "+p", "+q"]);
    }

    #[test]
    fn links_through_parent_directories_are_ordered_too() {
        let host = tree(&[
            ("", dir()),
            ("d", dir()),
            ("d/a", link("../z/k")),
            ("z", link("real")),
            ("real", dir()),
            ("real/k", file(1, 2)),
        ]);
        let ops = diff(&Snapshot::default(), &host);
        assert_eq!(show(&ops), ["+", "+d", "+real", "+real/k", "+z", "+d/a"]);
    }
}
