//! CNCF distribution's storage layout (all under `/docker/registry/v2`), so
//! that registry:2 and registry-proxy can read each other's content.

use bytes::Bytes;
use driver_core::StoragePath;

use crate::oci::{Digest, RepoName};

const ROOT: &str = "/docker/registry/v2";

fn path(s: String) -> StoragePath {
    // Names, tags and digests are validated before they reach the layout,
    // and their grammars are subsets of the storage path grammar.
    StoragePath::parse(&s).unwrap_or_else(|_| StoragePath::root())
}

/// `blobs/sha256/<2 hex>/<hex>/data`: the bytes of a blob or manifest.
pub fn blob_data(digest: &Digest) -> StoragePath {
    path(format!("{}/data", blob_dir(digest).as_str()))
}

/// `blobs/sha256/<2 hex>/<hex>`: the directory holding a blob's data.
pub fn blob_dir(digest: &Digest) -> StoragePath {
    let hex = digest.hex();
    path(format!("{ROOT}/blobs/sha256/{}/{hex}", &hex[..2]))
}

/// `repositories/<name>/_layers/sha256/<hex>`: the directory of a layer link.
pub fn layer_dir(repo: &RepoName, digest: &Digest) -> StoragePath {
    path(format!(
        "{ROOT}/repositories/{repo}/_layers/sha256/{}",
        digest.hex()
    ))
}

/// `repositories/<name>/_layers/sha256/<hex>/link`: the blob is in the repository.
pub fn layer_link(repo: &RepoName, digest: &Digest) -> StoragePath {
    path(format!("{}/link", layer_dir(repo, digest).as_str()))
}

/// `repositories/<name>/_manifests/revisions/sha256/<hex>`: the directory
/// of a revision link.
pub fn revision_dir(repo: &RepoName, digest: &Digest) -> StoragePath {
    path(format!(
        "{ROOT}/repositories/{repo}/_manifests/revisions/sha256/{}",
        digest.hex()
    ))
}

/// `repositories/<name>/_manifests/revisions/sha256/<hex>/link`.
pub fn revision_link(repo: &RepoName, digest: &Digest) -> StoragePath {
    path(format!("{}/link", revision_dir(repo, digest).as_str()))
}

/// `repositories/<name>/_manifests/revisions/sha256`: one directory per
/// manifest of the repository.
pub fn revisions_dir(repo: &RepoName) -> StoragePath {
    path(format!(
        "{ROOT}/repositories/{repo}/_manifests/revisions/sha256"
    ))
}

/// `repositories/<name>/_manifests/tags`: one directory per tag.
pub fn tags_dir(repo: &RepoName) -> StoragePath {
    path(format!("{ROOT}/repositories/{repo}/_manifests/tags"))
}

/// `…/tags/<tag>`: everything about one tag.
pub fn tag_dir(repo: &RepoName, tag: &str) -> StoragePath {
    path(format!("{ROOT}/repositories/{repo}/_manifests/tags/{tag}"))
}

/// `…/tags/<tag>/current/link`: the digest the tag points to.
pub fn tag_current_link(repo: &RepoName, tag: &str) -> StoragePath {
    path(format!("{}/current/link", tag_dir(repo, tag).as_str()))
}

/// `…/tags/<tag>/index/sha256/<hex>`: the directory of a digest the tag
/// pointed to.
pub fn tag_index_dir(repo: &RepoName, tag: &str, digest: &Digest) -> StoragePath {
    path(format!(
        "{}/index/sha256/{}",
        tag_dir(repo, tag).as_str(),
        digest.hex()
    ))
}

/// `…/tags/<tag>/index/sha256/<hex>/link`: a digest the tag pointed to.
pub fn tag_index_link(repo: &RepoName, tag: &str, digest: &Digest) -> StoragePath {
    path(format!(
        "{}/link",
        tag_index_dir(repo, tag, digest).as_str()
    ))
}

/// `repositories`: where the catalog is found.
pub fn repositories() -> StoragePath {
    path(format!("{ROOT}/repositories"))
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
        let repo = RepoName::parse("library/alpine").expect("name");
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
}
