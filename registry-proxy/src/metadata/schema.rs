//! The key schema of the shared store, in the spirit of containerd's
//! metadata buckets: `<prefix>/v1/<namespace>/<object>/<key>`.
//!
//! - `<prefix>/version`: the schema version, `1`.
//! - `<prefix>/v1/<ns>/refs/<blob|manifest>/<hex>/<repository>`: a
//!   repository of namespace `<ns>` references content `sha256:<hex>`; the
//!   value is its last access (seconds since the epoch).
//! - `<prefix>/v1/<ns>/untags/<repository>/<tag>`: put (and deleted at
//!   once) when a replica purges that tag; the value names the replica.
//!   Every other replica's watch sees the put.
//! - `<prefix>/v1/_all/ingests/<hex>`: the lock of a fill (or a deletion)
//!   of that digest, held on the holder's session lease.
//! - `<prefix>/v1/_all/leases/<replica>`: the digests a replica holds
//!   leases on, on its session lease (gone when the replica is).
//! - `<prefix>/v1/_all/leader`: the election of the replica that expires
//!   and collects.
//!
//! `<ns>` is the namespace's storage directory, or `_` for the namespace
//! registry:2 would see; `_all` holds what all namespaces share. Neither
//! can be a namespace directory's name (those are host names).

use crate::layout::{RepoKey, namespace_dir_of};
use crate::oci::{Digest, Kind};

/// The namespace registry:2's repositories are keyed under.
pub const PLAIN: &str = "_";

/// The namespace of what every namespace shares (content, fills, leases).
pub const ALL: &str = "_all";

/// The key holding the schema version.
pub fn version_key(prefix: &str) -> String {
    format!("{prefix}/version")
}

/// The start of every key of this schema version.
pub fn root(prefix: &str) -> String {
    format!("{prefix}/v{}/", super::SCHEMA_VERSION)
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Blob => "blob",
        Kind::Manifest => "manifest",
    }
}

/// The namespace key of a repository key, and its name within it.
fn split(repo: &str) -> (&str, &str) {
    match namespace_dir_of(repo) {
        // `_namespaces/<dir>/<name>`
        Some(dir) => (dir, &repo["_namespaces/".len() + dir.len() + 1..]),
        None => (PLAIN, repo),
    }
}

/// The key recording that `repo` references `digest` as `kind`.
pub fn ref_key(prefix: &str, repo: &str, digest: &Digest, kind: Kind) -> String {
    let (ns, name) = split(repo);
    format!("{}{}", digest_refs(prefix, ns, kind, digest), name)
}

/// The start of the keys of every repository of namespace `ns` that
/// references `digest` as `kind`.
pub fn digest_refs(prefix: &str, ns: &str, kind: Kind, digest: &Digest) -> String {
    format!(
        "{}{ns}/refs/{}/{}/",
        root(prefix),
        kind_name(kind),
        hex::encode(digest)
    )
}

/// Every kind of entry.
pub const KINDS: [Kind; 2] = [Kind::Blob, Kind::Manifest];

/// The repository key, digest and kind a reference key names.
pub fn parse_ref_key(prefix: &str, key: &str) -> Option<(RepoKey, Digest, Kind)> {
    let rest = key.strip_prefix(&root(prefix))?;
    let (ns, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("refs/")?;
    let (kind, rest) = rest.split_once('/')?;
    let kind = match kind {
        "blob" => Kind::Blob,
        "manifest" => Kind::Manifest,
        _ => return None,
    };
    let (hex, name) = rest.split_once('/')?;
    let mut digest = [0; 32];
    hex::decode_to_slice(hex, &mut digest).ok()?;
    let repo = if ns == PLAIN {
        RepoKey::parse(name)?
    } else {
        RepoKey::parse(&format!("_namespaces/{ns}/{name}"))?
    };
    Some((repo, Digest::from_raw(digest), kind))
}

/// The key announcing that `tag` of `repo` was purged.
pub fn untag_key(prefix: &str, repo: &str, tag: &str) -> String {
    let (ns, name) = split(repo);
    format!("{}{ns}/untags/{name}/{tag}", root(prefix))
}

/// The repository key and tag an untag key names.
pub fn parse_untag_key(prefix: &str, key: &str) -> Option<(RepoKey, String)> {
    let rest = key.strip_prefix(&root(prefix))?;
    let (ns, rest) = rest.split_once('/')?;
    let (name, tag) = rest.strip_prefix("untags/")?.rsplit_once('/')?;
    let repo = if ns == PLAIN {
        RepoKey::parse(name)?
    } else {
        RepoKey::parse(&format!("_namespaces/{ns}/{name}"))?
    };
    Some((repo, tag.to_owned()))
}

/// The first key after every key starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The lock of fills and deletions of `digest`.
pub fn lock_key(prefix: &str, digest: &Digest) -> String {
    format!("{}{ALL}/ingests/{}", root(prefix), hex::encode(digest))
}

/// The start of every replica's published leases.
pub fn leases_root(prefix: &str) -> String {
    format!("{}{ALL}/leases/", root(prefix))
}

/// The election of the leader.
pub fn leader_key(prefix: &str) -> String {
    format!("{}{ALL}/leader", root(prefix))
}

/// The namespace key of the namespace stored under `dir` (`None`:
/// registry:2's).
pub fn namespace_key(dir: Option<&str>) -> &str {
    dir.unwrap_or(PLAIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::RepoName;

    #[test]
    fn reference_keys_round_trip_in_every_namespace() {
        let name = RepoName::parse("library/alpine").expect("name");
        for dir in [None, Some("ghcr.io"), Some("localhost_5000")] {
            let dir = dir.map(|d| driver_core::Segment::parse(d).expect("dir"));
            let repo = RepoKey::new(dir.as_ref(), &name);
            for kind in KINDS {
                let key = ref_key("/rp", repo.as_str(), &Digest::from_raw([9; 32]), kind);
                assert!(key.starts_with(&digest_refs(
                    "/rp",
                    namespace_key(dir.as_ref().map(driver_core::Segment::as_str)),
                    kind,
                    &Digest::from_raw([9; 32])
                )));
                assert_eq!(
                    parse_ref_key("/rp", &key),
                    Some((repo.clone(), Digest::from_raw([9; 32]), kind))
                );
            }
        }
        assert_eq!(
            ref_key("/rp", "a/b", &Digest::from_raw([1; 32]), Kind::Blob),
            format!("/rp/v1/_/refs/blob/{}/a/b", hex::encode([1; 32]))
        );
        assert_eq!(parse_ref_key("/rp", "/rp/v1/_all/leases/x"), None);
        let untag = untag_key("/rp", "_namespaces/ghcr.io/team/app", "v1");
        assert_eq!(untag, "/rp/v1/ghcr.io/untags/team/app/v1");
        assert_eq!(parse_ref_key("/rp", &untag), None);
        assert_eq!(
            parse_untag_key("/rp", &untag),
            Some((
                RepoKey::parse("_namespaces/ghcr.io/team/app").expect("key"),
                "v1".to_owned()
            ))
        );
        assert_eq!(
            parse_ref_key(
                "/other",
                &ref_key("/rp", "a", &Digest::from_raw([1; 32]), Kind::Blob)
            ),
            None
        );
    }
}
