//! CNCF distribution's storage layout (all under `/docker/registry/v2`), so
//! that registry:2 and registry-proxy can read each other's content.

use bytes::Bytes;
use driver_core::{Segment, StoragePath};

use crate::oci::{Digest, Kind, RepoName};

/// The directory under `repositories/` holding the namespaces that are not
/// registry:2's: `_` starts no repository name, so it never collides.
const NAMESPACES: &str = "_namespaces";

static DOCKER: Segment = Segment::from_static("docker");
static REGISTRY: Segment = Segment::from_static("registry");
static V2: Segment = Segment::from_static("v2");
static BLOBS: Segment = Segment::from_static("blobs");
static SHA256: Segment = Segment::from_static("sha256");
static DATA: Segment = Segment::from_static("data");
static PRIVATE: Segment = Segment::from_static("private");
static REPOSITORIES: Segment = Segment::from_static("repositories");
static NAMESPACES_DIR: Segment = Segment::from_static(NAMESPACES);
static LAYERS: Segment = Segment::from_static("_layers");
static MANIFESTS: Segment = Segment::from_static("_manifests");
static REVISIONS: Segment = Segment::from_static("revisions");
static TAGS: Segment = Segment::from_static("tags");
static CURRENT: Segment = Segment::from_static("current");
static INDEX: Segment = Segment::from_static("index");
static REFERRERS: Segment = Segment::from_static("referrers");
static LINK: Segment = Segment::from_static("link");

/// `/docker/registry/v2`, followed by `rest`. Every path here is built from
/// segments (constants, and the segments of validated names, tags and
/// digests), so none can fail to build or fall back to anything.
fn under_root<'a>(rest: impl IntoIterator<Item = &'a Segment>) -> StoragePath {
    StoragePath::root().descend([&DOCKER, &REGISTRY, &V2].into_iter().chain(rest))
}

/// A repository as stored: its name, under its namespace's directory unless
/// it belongs to the namespace registry:2 would see (`repositories/<name>`).
/// Different namespaces' repositories of one name are different keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoKey {
    text: String,
    /// The key's segments below `repositories/`.
    segments: std::sync::Arc<[Segment]>,
}

impl RepoKey {
    /// `name` in the namespace stored under `dir` (`None`: registry:2's).
    pub fn new(dir: Option<&Segment>, name: &RepoName) -> Self {
        match dir {
            None => Self {
                text: name.as_str().to_owned(),
                segments: name.segments().into(),
            },
            Some(dir) => Self {
                text: format!("{NAMESPACES}/{dir}/{name}"),
                segments: [NAMESPACES_DIR.clone(), dir.clone()]
                    .into_iter()
                    .chain(name.segments().iter().cloned())
                    .collect(),
            },
        }
    }

    /// Parses a key [`Self::as_str`] gave (the scheduler's journal).
    pub fn parse(s: &str) -> Option<Self> {
        match s.strip_prefix(NAMESPACES).and_then(|r| r.strip_prefix('/')) {
            Some(rest) => {
                let (dir, name) = rest.split_once('/')?;
                if !is_namespace_dir(dir) {
                    return None;
                }
                let dir = Segment::parse(dir).ok()?;
                Some(Self::new(Some(&dir), &RepoName::parse(name).ok()?))
            }
            None => Some(Self::new(None, &RepoName::parse(s).ok()?)),
        }
    }

    /// The namespace's directory, `None` for registry:2's namespace.
    pub fn namespace_dir(&self) -> Option<&str> {
        namespace_dir_of(&self.text)
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `repositories/<key>`, followed by `rest`.
    fn dir<'a>(&'a self, rest: impl IntoIterator<Item = &'a Segment>) -> StoragePath {
        under_root(
            std::iter::once(&REPOSITORIES)
                .chain(self.segments.iter())
                .chain(rest),
        )
    }
}

impl std::fmt::Display for RepoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The namespace directory of a key's text ([`RepoKey::as_str`]).
pub fn namespace_dir_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(NAMESPACES)?.strip_prefix('/')?;
    rest.split_once('/').map(|(dir, _)| dir)
}

/// Whether `dir` is a namespace directory: a storage path component
/// (`[A-Za-z0-9._-]+`, not `.` or `..`).
pub fn is_namespace_dir(dir: &str) -> bool {
    Segment::parse(dir).is_ok()
}

/// `blobs/sha256/<2 hex>/<hex>/data`: the bytes of a blob or manifest.
pub fn blob_data(digest: &Digest) -> StoragePath {
    blob_dir(digest).child(&DATA)
}

/// `blobs/sha256/<2 hex>/<hex>/private`: present when the content came in
/// through a namespace that is isolated or restricted to some users, or is
/// a manifest or referrers index, so that a blobs endpoint proves access
/// before it serves the bytes to a repository that does not link them
/// (`cache::access::Access::mark` writes it). Our own file, next to registry:2's
/// `data`.
pub fn blob_private_marker(digest: &Digest) -> StoragePath {
    blob_dir(digest).child(&PRIVATE)
}

/// The digest whose data `path` is (`blobs/sha256/<2 hex>/<hex>/data`).
pub fn blob_digest(path: &StoragePath) -> Option<Digest> {
    let mut parts = path.as_str().rsplit('/');
    (parts.next()? == "data")
        .then(|| parts.next())
        .flatten()
        .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
}

/// `blobs`: every blob's directory is beneath it.
pub fn blobs_root() -> StoragePath {
    under_root([&BLOBS])
}

/// `repositories`: every namespace's repositories are beneath it.
pub fn repositories_root() -> StoragePath {
    repositories(None)
}

/// `blobs/sha256/<2 hex>/<hex>`: the directory holding a blob's data.
pub fn blob_dir(digest: &Digest) -> StoragePath {
    under_root([
        &BLOBS,
        &SHA256,
        &digest.prefix_segment(),
        &digest.hex_segment(),
    ])
}

/// `repositories/<name>/_layers/sha256/<hex>`: the directory of a layer link.
pub fn layer_dir(repo: &RepoKey, digest: &Digest) -> StoragePath {
    repo.dir([&LAYERS, &SHA256, &digest.hex_segment()])
}

/// `repositories/<name>/_layers/sha256/<hex>/link`: the blob is in the repository.
pub fn layer_link(repo: &RepoKey, digest: &Digest) -> StoragePath {
    layer_dir(repo, digest).child(&LINK)
}

/// The link of `digest` as `kind` in `repo`: its layer link for a blob,
/// its revision link for a manifest.
pub fn link(repo: &RepoKey, digest: &Digest, kind: Kind) -> StoragePath {
    match kind {
        Kind::Blob => layer_link(repo, digest),
        Kind::Manifest => revision_link(repo, digest),
    }
}

/// `repositories/<name>/_manifests/revisions/sha256/<hex>`: the directory
/// of a revision link.
pub fn revision_dir(repo: &RepoKey, digest: &Digest) -> StoragePath {
    repo.dir([&MANIFESTS, &REVISIONS, &SHA256, &digest.hex_segment()])
}

/// `repositories/<name>/_manifests/revisions/sha256/<hex>/link`.
pub fn revision_link(repo: &RepoKey, digest: &Digest) -> StoragePath {
    revision_dir(repo, digest).child(&LINK)
}

/// `repositories/<name>/_manifests/revisions/sha256`: one directory per
/// manifest of the repository.
pub fn revisions_dir(repo: &RepoKey) -> StoragePath {
    repo.dir([&MANIFESTS, &REVISIONS, &SHA256])
}

/// `repositories/<name>/_manifests/tags`: one directory per tag.
pub fn tags_dir(repo: &RepoKey) -> StoragePath {
    repo.dir([&MANIFESTS, &TAGS])
}

/// `…/tags/<tag>`: everything about one tag.
pub fn tag_dir(repo: &RepoKey, tag: &Segment) -> StoragePath {
    repo.dir([&MANIFESTS, &TAGS, tag])
}

/// `…/tags/<tag>/current/link`: the digest the tag points to.
pub fn tag_current_link(repo: &RepoKey, tag: &Segment) -> StoragePath {
    repo.dir([&MANIFESTS, &TAGS, tag, &CURRENT, &LINK])
}

/// `…/tags/<tag>/index/sha256/<hex>`: the directory of a digest the tag
/// pointed to.
pub fn tag_index_dir(repo: &RepoKey, tag: &Segment, digest: &Digest) -> StoragePath {
    repo.dir([
        &MANIFESTS,
        &TAGS,
        tag,
        &INDEX,
        &SHA256,
        &digest.hex_segment(),
    ])
}

/// `…/tags/<tag>/index/sha256/<hex>/link`: a digest the tag pointed to.
pub fn tag_index_link(repo: &RepoKey, tag: &Segment, digest: &Digest) -> StoragePath {
    tag_index_dir(repo, tag, digest).child(&LINK)
}

/// `…/_manifests/referrers/sha256/<hex>`: what the cache knows of the
/// manifests that name `subject` as theirs (registry:2 has no such
/// directory and ignores it).
pub fn referrers_dir(repo: &RepoKey, subject: &Digest) -> StoragePath {
    repo.dir([&MANIFESTS, &REFERRERS, &SHA256, &subject.hex_segment()])
}

/// `…/_manifests/referrers/sha256/<hex>/link`: the digest of the stored
/// referrers index of `subject`.
pub fn referrers_link(repo: &RepoKey, subject: &Digest) -> StoragePath {
    referrers_dir(repo, subject).child(&LINK)
}

/// `repositories`, or `repositories/_namespaces/<dir>` for a namespace
/// stored in `dir`: where its catalog is found.
pub fn repositories(dir: Option<&Segment>) -> StoragePath {
    match dir {
        None => under_root([&REPOSITORIES]),
        Some(dir) => under_root([&REPOSITORIES, &NAMESPACES_DIR, dir]),
    }
}

/// The content of a link file.
pub fn link_content(digest: &Digest) -> Bytes {
    Bytes::from(digest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_distribution() {
        let d = Digest::of(b"x");
        let repo = RepoKey::new(None, &RepoName::parse("library/alpine").expect("name"));
        let hex = d.hex();
        assert_eq!(
            blob_data(&d).as_str(),
            format!("/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2])
        );
        assert_eq!(
            tag_current_link(&repo, &Segment::parse("3.20").expect("tag")).as_str(),
            "/docker/registry/v2/repositories/library/alpine/_manifests/tags/3.20/current/link"
        );
        assert_eq!(
            layer_link(&repo, &d).as_str(),
            format!("/docker/registry/v2/repositories/library/alpine/_layers/sha256/{hex}/link")
        );
        assert_eq!(link_content(&d), format!("sha256:{hex}"));
    }

    /// The longest path built here (a 255-byte namespace directory, a
    /// 255-byte name, a 128-byte tag) still parses: within the whole-path
    /// limit that keeps S3 keys legal, though nothing here parses it.
    #[test]
    fn the_longest_path_is_within_the_limit() {
        let dir = Segment::parse(&"d".repeat(driver_core::MAX_SEGMENT_LEN)).expect("dir");
        let name = RepoName::parse(&["a".repeat(127), "b".repeat(127)].join("/")).expect("name");
        let tag = Segment::parse(&"t".repeat(128)).expect("tag");
        let longest = tag_index_link(&RepoKey::new(Some(&dir), &name), &tag, &Digest::of(b""));
        assert_eq!(StoragePath::parse(longest.as_str()), Ok(longest));
    }

    #[test]
    fn namespaces_keep_apart() {
        let name = RepoName::parse("org/app").expect("name");
        let plain = RepoKey::new(None, &name);
        let ghcr = RepoKey::new(Some(&Segment::parse("ghcr.io").expect("dir")), &name);
        assert_ne!(plain, ghcr);
        assert_eq!(plain.namespace_dir(), None);
        assert_eq!(ghcr.namespace_dir(), Some("ghcr.io"));
        assert_eq!(
            tag_current_link(&ghcr, &Segment::parse("v1").expect("tag")).as_str(),
            "/docker/registry/v2/repositories/_namespaces/ghcr.io/org/app/_manifests/tags/v1/current/link"
        );
        for key in [&plain, &ghcr] {
            assert_eq!(RepoKey::parse(key.as_str()).as_ref(), Some(key));
        }
        for bad in [
            "_namespaces/ghcr.io",
            "_namespaces/../x",
            "_namespaces//x",
            "Bad/Name",
            "",
        ] {
            assert_eq!(RepoKey::parse(bad), None, "{bad}");
        }
    }
}
