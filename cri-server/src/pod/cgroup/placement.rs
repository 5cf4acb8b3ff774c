//! Where a pod's VMM cgroup goes: the kubelet's `cgroup_parent`, checked
//! and, for the systemd driver, expanded from slice names to a path.
//!
//! What the kubelet sends (`PodSandboxConfig.linux.cgroup_parent`):
//! - cgroupfs driver: the pod cgroup as a path, `/kubepods/burstable/pod<uid>`.
//! - systemd driver: the pod slice expanded to its cgroupfs form,
//!   `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`
//!   (the kubelet's `CgroupName.ToSystemd`); other clients send the bare
//!   slice name `kubepods-burstable-pod<uid>.slice`. Both are accepted, as
//!   containerd accepts both by keeping the last path element when it ends in
//!   `.slice`.
//!
//! containerd puts the sandbox at `<parent>/<id>` (cgroupfs) or in the scope
//! `cri-containerd-<id>.scope` under the slice (systemd); CRI-O uses
//! `crio-<id>` and `crio-<id>.scope`. hull does the same with its own prefix:
//! `<parent>/hull-<pod id>` and `<slice path>/hull-<pod id>.scope`.

use crate::config::CgroupDriver;

use super::CgroupError;

/// The parent hulld uses when neither the kubelet nor hulld's config names
/// one (crictl sends an empty `cgroup_parent`).
pub fn builtin_default_parent(driver: CgroupDriver) -> &'static str {
    match driver {
        CgroupDriver::Cgroupfs => "/hull",
        CgroupDriver::Systemd => "hull.slice",
    }
}

fn driver_name(driver: CgroupDriver) -> &'static str {
    match driver {
        CgroupDriver::Cgroupfs => "cgroupfs",
        CgroupDriver::Systemd => "systemd",
    }
}

/// The pod VMM's cgroup, as a path from the cgroup root with a leading `/`
/// (the form `/proc/<pid>/cgroup` shows), for the kubelet's `cgroup_parent`
/// (empty: `default_parent`; that empty too: [`builtin_default_parent`]).
pub fn pod_cgroup_path(
    driver: CgroupDriver,
    cgroup_parent: &str,
    default_parent: &str,
    pod_id: &str,
) -> Result<String, CgroupError> {
    validate_pod_id(pod_id)?;
    let parent = [cgroup_parent, default_parent]
        .into_iter()
        .find(|parent| !parent.is_empty())
        .unwrap_or(builtin_default_parent(driver));
    let invalid = |reason: String| CgroupError::InvalidParent {
        parent: parent.to_string(),
        driver: driver_name(driver),
        reason,
    };
    let (parent_path, leaf) = match driver {
        CgroupDriver::Cgroupfs => (
            cgroupfs_parent(parent).map_err(invalid)?,
            format!("hull-{pod_id}"),
        ),
        CgroupDriver::Systemd => (
            systemd_parent(parent).map_err(invalid)?,
            format!("hull-{pod_id}.scope"),
        ),
    };
    Ok(if parent_path == "/" {
        format!("/{leaf}")
    } else {
        format!("{parent_path}/{leaf}")
    })
}

/// A cgroupfs parent: absolute, no `.` or `..` elements, no control
/// characters. Returned without repeated or trailing slashes.
pub fn cgroupfs_parent(parent: &str) -> Result<String, String> {
    if !parent.starts_with('/') {
        return Err("a cgroupfs parent must be an absolute path such as /kubepods/pod<uid>".into());
    }
    if parent.chars().any(char::is_control) {
        return Err("it contains control characters".into());
    }
    let mut elements = Vec::new();
    for element in parent.split('/').filter(|element| !element.is_empty()) {
        if element == "." || element == ".." {
            return Err(format!("it contains a {element:?} element"));
        }
        elements.push(element);
    }
    Ok(format!("/{}", elements.join("/")))
}

/// A systemd parent: a slice name (`a-b.slice`) or its expanded path
/// (`/a.slice/a-b.slice`), returned as the expanded path.
pub fn systemd_parent(parent: &str) -> Result<String, String> {
    if !parent.starts_with('/') {
        return expand_slice(parent);
    }
    let normalized = cgroupfs_parent(parent)?;
    let last = normalized.rsplit('/').next().unwrap_or_default();
    if normalized == "/" {
        return Ok(normalized);
    }
    let expanded = expand_slice(last)?;
    if expanded != normalized {
        return Err(format!(
            "a systemd parent path must be its last slice expanded ({expanded})"
        ));
    }
    Ok(expanded)
}

/// The cgroup path of a systemd slice, as systemd lays slices out: every
/// `-` opens a level, `a-b-c.slice` → `/a.slice/a-b.slice/a-b-c.slice`, and
/// `-.slice` is the root. The name must be a valid unit name (letters,
/// digits, `:_.\-`, at most 255 bytes) with no empty level (no leading,
/// trailing or doubled `-`).
pub fn expand_slice(slice: &str) -> Result<String, String> {
    const SUFFIX: &str = ".slice";
    let Some(name) = slice.strip_suffix(SUFFIX) else {
        return Err("a systemd parent must be a slice name ending in .slice".into());
    };
    if name.is_empty() {
        return Err("the slice has no name before .slice".into());
    }
    if slice.len() > 255 {
        return Err("a systemd unit name has at most 255 bytes".into());
    }
    if let Some(bad) = slice
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":-_.\\".contains(*c)))
    {
        return Err(format!("{bad:?} is not allowed in a systemd unit name"));
    }
    if name == "-" {
        return Ok("/".to_string());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for level in name.split('-') {
        if level.is_empty() {
            return Err("a slice name has no empty level (leading, trailing or doubled -)".into());
        }
        prefix.push_str(level);
        path.push('/');
        path.push_str(&prefix);
        path.push_str(SUFFIX);
        prefix.push('-');
    }
    Ok(path)
}

/// Pod ids become cgroup and unit names: letters, digits and `_.:-`,
/// 1 to 200 bytes (hulld's sandbox ids are 64 hex digits).
fn validate_pod_id(pod_id: &str) -> Result<(), CgroupError> {
    let reason = if pod_id.is_empty() {
        Some("it is empty")
    } else if pod_id.len() > 200 {
        Some("it is longer than 200 bytes")
    } else if !pod_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
    {
        Some("only letters, digits and _.:- may name a cgroup")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CgroupError::InvalidPodId {
            pod_id: pod_id.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1a2b3c4d_0000_1111_2222_333344445555";

    #[test]
    fn slices_expand_like_systemd() {
        assert_eq!(expand_slice("hull.slice").unwrap(), "/hull.slice");
        assert_eq!(
            expand_slice(&format!("kubepods-burstable-pod{UID}.slice")).unwrap(),
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice")
        );
        assert_eq!(
            expand_slice("kubepods-besteffort.slice").unwrap(),
            "/kubepods.slice/kubepods-besteffort.slice"
        );
        assert_eq!(expand_slice("-.slice").unwrap(), "/");
        assert_eq!(
            expand_slice("a\\x2db.slice").unwrap(),
            "/a\\x2db.slice",
            "an escaped dash is part of the name"
        );
    }

    #[test]
    fn malformed_slices_say_why() {
        for (slice, why) in [
            ("kubepods", "ending in .slice"),
            ("kubepods.scope", "ending in .slice"),
            (".slice", "no name"),
            ("-kubepods.slice", "empty level"),
            ("kubepods-.slice", "empty level"),
            ("kubepods--pod.slice", "empty level"),
            ("kube/pods.slice", "'/' is not allowed"),
            ("kube pods.slice", "' ' is not allowed"),
        ] {
            let err = expand_slice(slice).expect_err(slice);
            assert!(err.contains(why), "{slice}: {err}");
        }
        let long = format!("{}.slice", "a".repeat(250));
        assert!(expand_slice(&long).unwrap_err().contains("255"));
    }

    #[test]
    fn cgroupfs_parents() {
        assert_eq!(
            cgroupfs_parent(&format!("/kubepods/burstable/pod{UID}")).unwrap(),
            format!("/kubepods/burstable/pod{UID}")
        );
        assert_eq!(cgroupfs_parent("//hull//x/").unwrap(), "/hull/x");
        assert_eq!(cgroupfs_parent("/").unwrap(), "/");
        assert!(
            cgroupfs_parent("kubepods/pod1")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(
            cgroupfs_parent("/kubepods/../etc")
                .unwrap_err()
                .contains("\"..\"")
        );
        assert!(
            cgroupfs_parent("/kubepods/./x")
                .unwrap_err()
                .contains("\".\"")
        );
        assert!(
            cgroupfs_parent("/kube\npods")
                .unwrap_err()
                .contains("control")
        );
    }

    #[test]
    fn systemd_parents_by_name_or_expanded_path() {
        let expanded =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice");
        assert_eq!(
            systemd_parent(&format!("kubepods-burstable-pod{UID}.slice")).unwrap(),
            expanded
        );
        assert_eq!(systemd_parent(&expanded).unwrap(), expanded);
        let err = systemd_parent("/other.slice/kubepods-pod1.slice").unwrap_err();
        assert!(err.contains("/kubepods.slice/kubepods-pod1.slice"), "{err}");
        assert!(systemd_parent("/kubepods/pod1").is_err());
        assert!(systemd_parent("/kubepods.slice/../x.slice").is_err());
    }

    #[test]
    fn pod_cgroups_for_both_drivers() {
        use CgroupDriver::{Cgroupfs, Systemd};
        let id = "0123abcd";
        assert_eq!(
            pod_cgroup_path(Cgroupfs, &format!("/kubepods/burstable/pod{UID}"), "", id).unwrap(),
            format!("/kubepods/burstable/pod{UID}/hull-0123abcd")
        );
        assert_eq!(
            pod_cgroup_path(
                Systemd,
                &format!("kubepods-burstable-pod{UID}.slice"),
                "",
                id
            )
            .unwrap(),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice/hull-0123abcd.scope"
            )
        );
        // No parent from the kubelet: hulld's configured one, else built in.
        assert_eq!(
            pod_cgroup_path(Cgroupfs, "", "/pods", id).unwrap(),
            "/pods/hull-0123abcd"
        );
        assert_eq!(
            pod_cgroup_path(Cgroupfs, "", "", id).unwrap(),
            "/hull/hull-0123abcd"
        );
        assert_eq!(
            pod_cgroup_path(Systemd, "", "", id).unwrap(),
            "/hull.slice/hull-0123abcd.scope"
        );
        assert_eq!(
            pod_cgroup_path(Cgroupfs, "/", "", id).unwrap(),
            "/hull-0123abcd"
        );
        assert_eq!(
            pod_cgroup_path(Systemd, "-.slice", "", id).unwrap(),
            "/hull-0123abcd.scope"
        );
    }

    #[test]
    fn bad_parents_and_ids_are_named_in_the_error() {
        use CgroupDriver::{Cgroupfs, Systemd};
        let err = pod_cgroup_path(Cgroupfs, "/kubepods/../../etc", "", "p1").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, CgroupError::InvalidParent { .. }), "{text}");
        assert!(
            text.contains("/kubepods/../../etc") && text.contains("cgroupfs"),
            "{text}"
        );
        // A slice name given to the cgroupfs driver, and the other way round.
        let text = pod_cgroup_path(Cgroupfs, "kubepods.slice", "", "p1")
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("kubepods.slice") && text.contains("absolute"),
            "{text}"
        );
        let text = pod_cgroup_path(Systemd, "/kubepods/pod1", "", "p1")
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("/kubepods/pod1") && text.contains("systemd"),
            "{text}"
        );
        // A bad configured default is named too.
        let text = pod_cgroup_path(Systemd, "", "hull", "p1")
            .unwrap_err()
            .to_string();
        assert!(text.contains("\"hull\""), "{text}");

        for id in ["", "../x", "a/b", "a b", &"x".repeat(201)] {
            let err = pod_cgroup_path(Cgroupfs, "/kubepods", "", id).expect_err(id);
            assert!(
                matches!(err, CgroupError::InvalidPodId { .. }),
                "{id}: {err}"
            );
        }
    }
}
