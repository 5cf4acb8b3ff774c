//! Resolving `user[:group]` against an image's /etc/passwd and /etc/group,
//! as containerd does for CRI `run_as_username` and image `User`.

use std::path::Path;

/// The ids a process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the groups of /etc/group that list the user by
    /// name, sorted, without the primary group.
    pub additional_gids: Vec<u32>,
}

/// A user or group could not be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user {0:?} is not in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} is not in the image's /etc/group")]
    UnknownGroup(String),
    #[error("user spec {0:?} is empty or malformed")]
    Malformed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Parses /etc/passwd (`name:x:uid:gid:gecos:home:shell`), skipping
/// comments and lines that do not parse.
fn parse_passwd(content: &str) -> Vec<PasswdEntry> {
    content
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?.trim();
            let _password = fields.next()?;
            let uid = fields.next()?.trim().parse().ok()?;
            let gid = fields.next()?.trim().parse().ok()?;
            (!name.is_empty()).then(|| PasswdEntry {
                name: name.to_owned(),
                uid,
                gid,
            })
        })
        .collect()
}

/// Parses /etc/group (`name:x:gid:member,member`).
fn parse_group(content: &str) -> Vec<GroupEntry> {
    content
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?.trim();
            let _password = fields.next()?;
            let gid = fields.next()?.trim().parse().ok()?;
            let members = fields
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect();
            (!name.is_empty()).then(|| GroupEntry {
                name: name.to_owned(),
                gid,
                members,
            })
        })
        .collect()
}

/// Resolves `spec` (`user`, `user:group`, each a name or a number) given
/// the contents of /etc/passwd and /etc/group. A numeric user absent from
/// passwd runs with gid 0 (or the given group) and no supplementary groups,
/// as runc does.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<ResolvedUser, UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part == Some("") {
        return Err(UserError::Malformed(spec.to_owned()));
    }
    let users = parse_passwd(passwd);
    let groups = parse_group(group);

    let entry = match user_part.parse::<u32>() {
        Ok(uid) => users.iter().find(|u| u.uid == uid).cloned(),
        Err(_) => Some(
            users
                .iter()
                .find(|u| u.name == user_part)
                .cloned()
                .ok_or_else(|| UserError::UnknownUser(user_part.to_owned()))?,
        ),
    };
    let uid = entry
        .as_ref()
        .map_or_else(|| user_part.parse().unwrap_or(0), |e| e.uid);

    let gid = match group_part {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError::UnknownGroup(g.to_owned()))?,
        },
        None => entry.as_ref().map_or(0, |e| e.gid),
    };

    let mut additional_gids: Vec<u32> = match &entry {
        Some(e) => groups
            .iter()
            .filter(|g| g.members.contains(&e.name))
            .map(|g| g.gid)
            .filter(|g| *g != gid)
            .collect(),
        None => Vec::new(),
    };
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

/// Reads `<rootfs>/etc/passwd` and `<rootfs>/etc/group` (missing files are
/// empty) and resolves `spec`. The files are read through the rootfs path
/// but must not be symlinks that leave it: they are opened with
/// `O_NOFOLLOW`.
pub fn resolve_in_rootfs(rootfs: &Path, spec: &str) -> Result<ResolvedUser, UserError> {
    let read = |name: &str| -> String {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut content = String::new();
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(rootfs.join("etc").join(name));
        if let Ok(file) = opened {
            // An image's passwd file is small; bound what a hostile one costs.
            let _ = file.take(4 << 20).read_to_string(&mut content);
        }
        content
    };
    resolve(spec, &read("passwd"), &read("group"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:1000:Alice:/home/alice:/bin/sh
broken line
bob:x:1001:100::/home/bob:/bin/sh
";
    const GROUP: &str = "\
root:x:0:
users:x:100:alice
alice:x:1000:
wheel:x:10:alice,bob
audio:x:29: bob , alice
";

    #[test]
    fn resolves_names_with_supplementary_groups() {
        let alice = resolve("alice", PASSWD, GROUP).unwrap();
        assert_eq!(
            alice,
            ResolvedUser {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10, 29, 100]
            }
        );
        let bob = resolve("bob", PASSWD, GROUP).unwrap();
        assert_eq!(bob.gid, 100);
        assert_eq!(bob.additional_gids, vec![10, 29]);
    }

    #[test]
    fn resolves_explicit_groups_by_name_or_number() {
        let r = resolve("alice:wheel", PASSWD, GROUP).unwrap();
        assert_eq!((r.uid, r.gid), (1000, 10));
        assert_eq!(
            r.additional_gids,
            vec![29, 100],
            "the primary group is not repeated"
        );
        let r = resolve("1001:5000", PASSWD, GROUP).unwrap();
        assert_eq!((r.uid, r.gid), (1001, 5000));
    }

    #[test]
    fn numeric_users_need_not_exist() {
        let r = resolve("4242", PASSWD, GROUP).unwrap();
        assert_eq!(
            r,
            ResolvedUser {
                uid: 4242,
                gid: 0,
                additional_gids: vec![]
            }
        );
        let r = resolve("1000", PASSWD, GROUP).unwrap();
        assert_eq!(r.gid, 1000, "a known uid takes its passwd gid");
    }

    #[test]
    fn unknown_names_and_malformed_specs_fail() {
        assert_eq!(
            resolve("mallory", PASSWD, GROUP),
            Err(UserError::UnknownUser("mallory".into()))
        );
        assert_eq!(
            resolve("alice:nogroup", PASSWD, GROUP),
            Err(UserError::UnknownGroup("nogroup".into()))
        );
        assert!(matches!(
            resolve("", PASSWD, GROUP),
            Err(UserError::Malformed(_))
        ));
        assert!(matches!(
            resolve("alice:", PASSWD, GROUP),
            Err(UserError::Malformed(_))
        ));
    }

    #[test]
    fn reads_files_from_a_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        assert_eq!(resolve_in_rootfs(dir.path(), "bob").unwrap().uid, 1001);
        let empty = tempfile::tempdir().unwrap();
        assert!(resolve_in_rootfs(empty.path(), "bob").is_err());
        assert_eq!(resolve_in_rootfs(empty.path(), "0").unwrap().uid, 0);
    }
}
