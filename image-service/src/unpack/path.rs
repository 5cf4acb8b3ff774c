//! Layer entry paths: normalization and the refusal of paths that leave the
//! root, and recognition of OCI whiteouts.

/// Why an entry path is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathProblem {
    /// Starts with `/`.
    Absolute,
    /// Has a `..` component.
    DotDot,
    /// Has a component longer than 255 bytes (Linux's `NAME_MAX`).
    NameTooLong,
}

impl PathProblem {
    /// A sentence fragment for error messages.
    pub fn describe(&self) -> &'static str {
        match self {
            PathProblem::Absolute => "has an absolute path",
            PathProblem::DotDot => "has a \"..\" component that climbs out of its folder",
            PathProblem::NameTooLong => "has a name longer than 255 bytes",
        }
    }
}

/// The longest file name (Linux's `NAME_MAX`, also EROFS's limit).
pub const MAX_NAME: usize = 255;

/// The components of a layer path: `./a//b/` is `[a, b]`; `.` and `./` are
/// the root (no components). Absolute paths and `..` are refused.
pub fn components(raw: &[u8]) -> Result<Vec<Vec<u8>>, PathProblem> {
    if raw.first() == Some(&b'/') {
        return Err(PathProblem::Absolute);
    }
    let mut parts = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(PathProblem::DotDot),
            name if name.len() > MAX_NAME => return Err(PathProblem::NameTooLong),
            name => parts.push(name.to_vec()),
        }
    }
    Ok(parts)
}

/// Prefix of a whiteout file name.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Prefix of AUFS metadata names (`.wh..wh.plnk`), which carry nothing for us.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// What a file name means under the OCI whiteout rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhiteoutName<'a> {
    /// An ordinary name.
    Plain,
    /// `.wh.<name>`: delete `<name>` of the lower layers.
    Whiteout(&'a [u8]),
    /// `.wh..wh..opq`: hide every lower-layer child of the folder.
    Opaque,
    /// `.wh..wh.*` other than the opaque marker: ignored.
    AufsMeta,
}

/// Classifies `name` (one path component).
pub fn whiteout_name(name: &[u8]) -> WhiteoutName<'_> {
    if name == OPAQUE_MARKER {
        WhiteoutName::Opaque
    } else if name.starts_with(AUFS_META_PREFIX) {
        WhiteoutName::AufsMeta
    } else if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
        WhiteoutName::Whiteout(target)
    } else {
        WhiteoutName::Plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(raw: &str) -> Vec<String> {
        components(raw.as_bytes())
            .unwrap()
            .into_iter()
            .map(|p| String::from_utf8(p).unwrap())
            .collect()
    }

    #[test]
    fn normalizes_dots_and_slashes() {
        assert_eq!(parts("./usr//bin/./sh"), ["usr", "bin", "sh"]);
        assert_eq!(parts("etc/"), ["etc"]);
        assert!(parts("./").is_empty());
        assert!(parts(".").is_empty());
        assert_eq!(parts("a/...b/..c"), ["a", "...b", "..c"]);
    }

    #[test]
    fn refuses_absolute_and_dotdot() {
        assert_eq!(components(b"/etc/passwd"), Err(PathProblem::Absolute));
        assert_eq!(components(b"../x"), Err(PathProblem::DotDot));
        assert_eq!(components(b"a/../../x"), Err(PathProblem::DotDot));
        assert_eq!(components(b"a/b/.."), Err(PathProblem::DotDot));
        let long = format!("a/{}", "n".repeat(256));
        assert_eq!(components(long.as_bytes()), Err(PathProblem::NameTooLong));
    }

    #[test]
    fn whiteout_names() {
        assert_eq!(whiteout_name(b".wh.foo"), WhiteoutName::Whiteout(b"foo"));
        assert_eq!(whiteout_name(b".wh..wh..opq"), WhiteoutName::Opaque);
        assert_eq!(whiteout_name(b".wh..wh.plnk"), WhiteoutName::AufsMeta);
        assert_eq!(whiteout_name(b"wh.foo"), WhiteoutName::Plain);
        assert_eq!(whiteout_name(b".whfoo"), WhiteoutName::Plain);
    }
}
