//! [`StoragePath`]: a driver path validated once, at the boundary.

use std::fmt;
use std::sync::Arc;

/// Longest accepted path segment, in bytes (the usual file-name limit).
pub const MAX_SEGMENT_LEN: usize = 255;
/// Longest accepted path, in bytes (S3 keys are limited to 1024 bytes, and a
/// driver may add a prefix of its own).
pub const MAX_PATH_LEN: usize = 900;

/// Why a string is not a valid [`StoragePath`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid storage path {path:?}: {reason}")]
pub struct PathError {
    /// The rejected input.
    pub path: String,
    /// What rule it broke.
    pub reason: &'static str,
}

/// An absolute storage path such as `/docker/registry/v2/blobs`.
///
/// The grammar is distribution's, `^(/[A-Za-z0-9._-]+)+$`, with two
/// restrictions that keep every backend safe: no segment is `.` or `..`, and
/// text parsed into segments and paths has length limits ([`MAX_SEGMENT_LEN`],
/// [`MAX_PATH_LEN`]). A path built from [`Segment`]s ([`StoragePath::child`],
/// [`StoragePath::descend`]) needs no parse: its grammar holds by
/// construction, and its length is what its builder makes it (a backend
/// refuses a name too long for it with an error). The root, `/`, is also a `StoragePath`; only
/// [`list`](crate::StorageDriver::list), [`stat`](crate::StorageDriver::stat)
/// and [`walk`](crate::StorageDriver::walk) accept it.
///
/// Ordering is the byte order of the path string. Cloning is cheap.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoragePath(Arc<str>);

impl StoragePath {
    /// The root directory, `/`.
    pub fn root() -> Self {
        Self(Arc::from("/"))
    }

    /// Parses and validates `s`.
    pub fn parse(s: &str) -> Result<Self, PathError> {
        let fail = |reason| {
            Err(PathError {
                path: s.to_owned(),
                reason,
            })
        };
        if s == "/" {
            return Ok(Self::root());
        }
        let Some(rest) = s.strip_prefix('/') else {
            return fail("must start with '/'");
        };
        if s.len() > MAX_PATH_LEN {
            return fail("too long");
        }
        for segment in rest.split('/') {
            if let Err(reason) = check_segment(segment) {
                return fail(reason);
            }
        }
        Ok(Self(Arc::from(s)))
    }

    /// The path as a string, always starting with `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the root, `/`.
    pub fn is_root(&self) -> bool {
        &*self.0 == "/"
    }

    /// Appends one or more `/`-separated segments: `"/a".join("b/c")` is `/a/b/c`.
    pub fn join(&self, relative: &str) -> Result<Self, PathError> {
        if self.is_root() {
            Self::parse(&format!("/{relative}"))
        } else {
            Self::parse(&format!("{}/{relative}", self.0))
        }
    }

    /// This path with `segment` appended: `/a` and `b` make `/a/b`.
    pub fn child(&self, segment: &Segment) -> Self {
        self.descend([segment])
    }

    /// This path with `segments` appended in order.
    pub fn descend<'a>(&self, segments: impl IntoIterator<Item = &'a Segment>) -> Self {
        let mut path = if self.is_root() {
            String::new()
        } else {
            self.0.to_string()
        };
        for segment in segments {
            path.push('/');
            path.push_str(segment.as_str());
        }
        if path.is_empty() {
            return self.clone();
        }
        Self(Arc::from(path))
    }

    /// The last segment; `None` for the root.
    pub fn last_segment(&self) -> Option<Segment> {
        self.file_name()
            .map(|name| Segment(Text::Shared(Arc::from(name))))
    }

    /// The directory holding this path; `None` for the root.
    pub fn parent(&self) -> Option<Self> {
        if self.is_root() {
            return None;
        }
        match self.0.rfind('/') {
            Some(0) => Some(Self::root()),
            Some(i) => Some(Self(Arc::from(&self.0[..i]))),
            None => None,
        }
    }

    /// The last segment; `None` for the root.
    pub fn file_name(&self) -> Option<&str> {
        if self.is_root() {
            None
        } else {
            self.0.rsplit('/').next()
        }
    }

    /// The segments, root first; empty for the root.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|s| !s.is_empty())
    }

    /// Whether `self` is `ancestor` or lies beneath it, segment-wise: `/a/b`
    /// is under `/a`, `/asuffix` is not.
    pub fn is_under(&self, ancestor: &StoragePath) -> bool {
        ancestor.is_root()
            || self.0 == ancestor.0
            || (self.0.starts_with(&*ancestor.0) && self.0.as_bytes()[ancestor.0.len()] == b'/')
    }

    /// The path with a trailing `/`, the form under which every descendant
    /// starts (`/` for the root).
    pub fn dir_prefix(&self) -> String {
        if self.is_root() {
            "/".to_owned()
        } else {
            format!("{}/", self.0)
        }
    }
}

/// One validated path segment, `[A-Za-z0-9._-]+` and not `.` or `..`: what
/// a [`StoragePath`] is made of. Paths built from segments cannot fail, so
/// code that builds paths from parts it validated (names, digests,
/// constants) never needs a fallback.
/// Cloning is cheap: a literal is borrowed, other text shared.
#[derive(Clone)]
pub struct Segment(Text);

/// A segment's text.
#[derive(Clone)]
enum Text {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Segment {
    /// Parses and validates one segment (at most [`MAX_SEGMENT_LEN`] bytes).
    pub fn parse(s: &str) -> Result<Self, PathError> {
        check_segment(s).map_err(|reason| PathError {
            path: s.to_owned(),
            reason,
        })?;
        Ok(Self(Text::Shared(Arc::from(s))))
    }

    /// A segment from a literal, checked when the program is compiled:
    /// `const DATA: Segment = Segment::from_static("data");` does not
    /// compile if the literal is not a segment.
    pub const fn from_static(s: &'static str) -> Self {
        assert!(
            segment_problem(s.as_bytes()).is_none(),
            "not a storage path segment"
        );
        Self(Text::Static(s))
    }

    /// `bytes` in lowercase hex (two characters a byte).
    pub fn hex(bytes: &[u8]) -> Self {
        Self(Text::Shared(Arc::from(hex::encode(bytes))))
    }

    /// `self-other`: two segments joined by a dash are one segment.
    pub fn dashed(&self, other: &Segment) -> Self {
        Self(Text::Shared(Arc::from(format!(
            "{}-{}",
            self.as_str(),
            other.as_str()
        ))))
    }

    /// The segment as a string.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Text::Static(s) => s,
            Text::Shared(s) => s,
        }
    }
}

impl PartialEq for Segment {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Segment {}

impl std::hash::Hash for Segment {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for Segment {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Segment {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Why `s` is not a segment, or `None` when it is: the one statement of
/// the segment grammar, `const` so that [`Segment::from_static`] checks
/// literals when the program is compiled.
const fn segment_problem(s: &[u8]) -> Option<&'static str> {
    if s.is_empty() {
        return Some("empty segment (\"//\" or trailing '/')");
    }
    if (s.len() == 1 && s[0] == b'.') || (s.len() == 2 && s[0] == b'.' && s[1] == b'.') {
        return Some("'.' and '..' segments are not allowed");
    }
    if s.len() > MAX_SEGMENT_LEN {
        return Some("segment too long");
    }
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if !(b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
            return Some("segments may only contain A-Z, a-z, 0-9, '.', '_' and '-'");
        }
        i += 1;
    }
    None
}

fn check_segment(segment: &str) -> Result<(), &'static str> {
    match segment_problem(segment.as_bytes()) {
        None => Ok(()),
        Some(reason) => Err(reason),
    }
}

impl fmt::Display for StoragePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StoragePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::str::FromStr for StoragePath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, PathError> {
        Self::parse(s)
    }
}

impl AsRef<str> for StoragePath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built paths are what parsing their text gives; a static segment is
    /// checked when compiled; hex spells bytes.
    #[test]
    fn paths_built_from_segments_are_the_parsed_ones() {
        const A: Segment = Segment::from_static("a");
        let b = Segment::parse("b.c_d-e").expect("segment");
        let built = StoragePath::root()
            .descend([&A, &b])
            .child(&Segment::hex(&[0, 0xab]));
        assert_eq!(built, StoragePath::parse("/a/b.c_d-e/00ab").expect("path"));
        assert_eq!(StoragePath::root().descend([]), StoragePath::root());
        assert_eq!(A.dashed(&b).as_str(), "a-b.c_d-e");
        assert_eq!(built.last_segment().expect("last").as_str(), "00ab");
        for bad in ["", ".", "..", "a/b", "a b", "\u{e9}"] {
            assert!(Segment::parse(bad).is_err(), "{bad:?}");
            assert!(segment_problem(bad.as_bytes()).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn accepts_distribution_valid_paths() {
        for p in [
            "/a",
            "/2",
            "/aa",
            "/a.a",
            "/0-9/abcdefg",
            "/abcdefg/z.75",
            "/abc/1.2.3.4.5-6_zyx/123.z/4",
            "/docker/docker-registry",
            "/123.abc",
            "/abc./abc",
            "/.abc",
            "/a--b",
            "/a-.b",
            "/_.abc",
            "/Docker/docker-registry",
            "/Abc/Cba",
        ] {
            let parsed = StoragePath::parse(p).expect(p);
            assert_eq!(parsed.as_str(), p);
        }
    }

    #[test]
    fn rejects_invalid_paths() {
        for p in [
            "",
            "abc",
            "123.abc",
            "//bcd",
            "/abc_123/",
            "/a/../b",
            "/.",
            "/a b",
            "/a//b",
            "/é",
            &format!("/{}", "x".repeat(MAX_SEGMENT_LEN + 1)),
        ] {
            assert!(StoragePath::parse(p).is_err(), "{p:?} accepted");
        }
    }

    #[test]
    fn navigation() {
        let p = StoragePath::parse("/a/b/c").expect("valid");
        assert_eq!(p.parent().expect("parent").as_str(), "/a/b");
        assert_eq!(
            StoragePath::parse("/a").expect("valid").parent(),
            Some(StoragePath::root())
        );
        assert_eq!(StoragePath::root().parent(), None);
        assert_eq!(p.file_name(), Some("c"));
        assert_eq!(p.segments().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(
            StoragePath::root().join("x/y").expect("join").as_str(),
            "/x/y"
        );
        assert!(p.is_under(&StoragePath::parse("/a").expect("valid")));
        assert!(
            !StoragePath::parse("/asuffix")
                .expect("valid")
                .is_under(&StoragePath::parse("/a").expect("valid"))
        );
        assert!(p.is_under(&StoragePath::root()));
        assert_eq!(p.dir_prefix(), "/a/b/c/");
    }
}
