//! CNCF distribution's storage layout (all under `/docker/registry/v2`), so
//! that registry:2 and registry-proxy can read each other's content.

use bytes::Bytes;
use driver_core::StoragePath;

use crate::oci::{Digest, Kind, RepoName};

const ROOT: &str = "/docker/registry/v2";

/// The directory under `repositories/` holding the namespaces that are not
/// registry:2's: `_` starts no repository name, so it never collides.
const NAMESPACES: &str = "_namespaces";

/// A repository as stored: its name, under its namespace's directory unless
/// it belongs to the namespace registry:2 would see (`repositories/<name>`).
/// Different namespaces' repositories of one name are different keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoKey(String);

impl RepoKey {
    /// `name` in the namespace stored under `dir` (`None`: registry:2's).
    pub fn new(dir: Option<&str>, name: &RepoName) -> Self {
        match dir {
            None => Self(name.as_str().to_owned()),
            Some(dir) => Self(format!("{NAMESPACES}/{dir}/{name}")),
        }
    }

    /// Parses a key [`Self::as_str`] gave (the scheduler's journal).
    pub fn parse(s: &str) -> Option<Self> {
        let name = match s.strip_prefix(NAMESPACES).and_then(|r| r.strip_prefix('/')) {
            Some(rest) => {
                let (dir, name) = rest.split_once('/')?;
                if !is_namespace_dir(dir) {
                    return None;
                }
                name
            }
            None => s,
        };
        RepoName::parse(name).ok().map(|_| Self(s.to_owned()))
    }

    /// The namespace's directory, `None` for registry:2's namespace.
    pub fn namespace_dir(&self) -> Option<&str> {
        namespace_dir_of(&self.0)
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RepoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
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
    !dir.is_empty()
        && dir != "."
        && dir != ".."
        && dir
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn path(s: String) -> StoragePath {
    // Names, tags and digests are validated before they reach the layout,
    // and their grammars are subsets of the storage path grammar.
    StoragePath::parse(&s).unwrap_or_else(|_| StoragePath::root())
}

/// `blobs/sha256/<2 hex>/<hex>/data`: the bytes of a blob or manifest.
pub fn blob_data(digest: &Digest) -> StoragePath {
    path(format!("{}/data", blob_dir(digest).as_str()))
}

/// `blobs/sha256/<2 hex>/<hex>/private`: present when the blob came in
/// through a namespace that is isolated or restricted to some users, so
/// that other namespaces prove access before they are served it. Our own
/// file, next to registry:2's `data`.
pub fn blob_private_marker(digest: &Digest) -> StoragePath {
    path(format!("{}/private", blob_dir(digest).as_str()))
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
    path(format!("{ROOT}/blobs"))
}

/// `repositories`: every namespace's repositories are beneath it.
pub fn repositories_root() -> StoragePath {
    repositories(None)
}

/// `blobs/sha256/<2 hex>/<hex>`: the directory holding a blob's data.
pub fn blob_dir(digest: &Digest) -> StoragePath {
    let hex = digest.hex();
    path(format!("{ROOT}/blobs/sha256/{}/{hex}", &hex[..2]))
}

/// `repositories/<name>/_layers/sha256/<hex>`: the directory of a layer link.
pub fn layer_dir(repo: &RepoKey, digest: &Digest) -> StoragePath {
    path(format!(
        "{ROOT}/repositories/{repo}/_layers/sha256/{}",
        digest.hex()
    ))
}

/// `repositories/<name>/_layers/sha256/<hex>/link`: the blob is in the repository.
pub fn layer_link(repo: &RepoKey, digest: &Digest) -> StoragePath {
    path(format!("{}/link", layer_dir(repo, digest).as_str()))
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
    path(format!(
        "{ROOT}/repositories/{repo}/_manifests/revisions/sha256/{}",
        digest.hex()
    ))
}

/// `repositories/<name>/_manifests/revisions/sha256/<hex>/link`.
pub fn revision_link(repo: &RepoKey, digest: &Digest) -> StoragePath {
    path(format!("{}/link", revision_dir(repo, digest).as_str()))
}

/// `repositories/<name>/_manifests/revisions/sha256`: one directory per
/// manifest of the repository.
pub fn revisions_dir(repo: &RepoKey) -> StoragePath {
    path(format!(
        "{ROOT}/repositories/{repo}/_manifests/revisions/sha256"
    ))
}

/// `repositories/<name>/_manifests/tags`: one directory per tag.
pub fn tags_dir(repo: &RepoKey) -> StoragePath {
    path(format!("{ROOT}/repositories/{repo}/_manifests/tags"))
}

/// `…/tags/<tag>`: everything about one tag.
pub fn tag_dir(repo: &RepoKey, tag: &str) -> StoragePath {
    path(format!("{ROOT}/repositories/{repo}/_manifests/tags/{tag}"))
}

/// `…/tags/<tag>/current/link`: the digest the tag points to.
pub fn tag_current_link(repo: &RepoKey, tag: &str) -> StoragePath {
    path(format!("{}/current/link", tag_dir(repo, tag).as_str()))
}

/// `…/tags/<tag>/index/sha256/<hex>`: the directory of a digest the tag
/// pointed to.
pub fn tag_index_dir(repo: &RepoKey, tag: &str, digest: &Digest) -> StoragePath {
    path(format!(
        "{}/index/sha256/{}",
        tag_dir(repo, tag).as_str(),
        digest.hex()
    ))
}

/// `…/tags/<tag>/index/sha256/<hex>/link`: a digest the tag pointed to.
pub fn tag_index_link(repo: &RepoKey, tag: &str, digest: &Digest) -> StoragePath {
    path(format!(
        "{}/link",
        tag_index_dir(repo, tag, digest).as_str()
    ))
}

/// `repositories`, or `repositories/_namespaces/<dir>` for a namespace
/// stored in `dir`: where its catalog is found.
pub fn repositories(dir: Option<&str>) -> StoragePath {
    match dir {
        None => path(format!("{ROOT}/repositories")),
        Some(dir) => path(format!("{ROOT}/repositories/{NAMESPACES}/{dir}")),
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
            tag_current_link(&repo, "3.20").as_str(),
            "/docker/registry/v2/repositories/library/alpine/_manifests/tags/3.20/current/link"
        );
        assert_eq!(
            layer_link(&repo, &d).as_str(),
            format!("/docker/registry/v2/repositories/library/alpine/_layers/sha256/{hex}/link")
        );
        assert_eq!(link_content(&d), format!("sha256:{hex}"));
    }

    #[test]
    fn namespaces_keep_apart() {
        let name = RepoName::parse("org/app").expect("name");
        let plain = RepoKey::new(None, &name);
        let ghcr = RepoKey::new(Some("ghcr.io"), &name);
        assert_ne!(plain, ghcr);
        assert_eq!(plain.namespace_dir(), None);
        assert_eq!(ghcr.namespace_dir(), Some("ghcr.io"));
        assert_eq!(
            tag_current_link(&ghcr, "v1").as_str(),
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
