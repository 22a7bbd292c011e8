//! What the cache holds, read from storage itself: every stored blob's
//! bytes once (what the byte budget counts), and per repository the blobs
//! and manifests it links (`registry-proxy du`; a blob shared by several
//! repositories counts in each of them, and once in the total).

use std::collections::{BTreeMap, HashMap};

use driver_core::{StorageDriver, WalkControl};

use super::gc::{Found, repository_file, walk};
use crate::layout;
use crate::metadata::MetadataError;
use crate::oci::{Digest, Kind};

/// One repository's share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RepoUsage {
    /// Blobs (layers, configs) it links that are stored.
    pub blobs: u64,
    /// Manifests it links that are stored.
    pub manifests: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// What storage holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Stored blob data (layers, configs and manifests), each once.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Per repository, by its storage key (`_namespaces/<dir>/<name>`, or
    /// the name in registry:2's namespace).
    pub repositories: BTreeMap<String, RepoUsage>,
    /// Links to content whose data is gone (evicted, or deleted behind the
    /// cache's back): fetched again when asked for.
    pub dangling: u64,
}

/// Every stored blob's digest and size (none when `blobs/` is absent).
pub async fn stored_blobs(driver: &dyn StorageDriver) -> driver_core::Result<HashMap<Digest, u64>> {
    let mut sizes = HashMap::new();
    walk(driver, &layout::blobs_root(), |info| {
        if let Some(digest) = layout::blob_digest(&info.path) {
            sizes.insert(digest, info.size);
        }
        WalkControl::Continue
    })
    .await?;
    Ok(sizes)
}

/// What `driver` holds.
pub async fn usage(driver: &dyn StorageDriver) -> Result<Usage, MetadataError> {
    let sizes = stored_blobs(driver).await?;
    let mut links = Vec::new();
    walk(driver, &layout::repositories_root(), |info| {
        if info.is_dir {
            // registry:2's upload sessions hold no cached content.
            return if info.path.file_name() == Some("_uploads") {
                WalkControl::SkipDir
            } else {
                WalkControl::Continue
            };
        }
        if let Some(Found::Link(repo, digest, kind)) = repository_file(&info.path) {
            links.push((repo, digest, kind));
        }
        WalkControl::Continue
    })
    .await?;
    let mut usage = Usage {
        blobs: sizes.len() as u64,
        bytes: sizes.values().sum(),
        ..Usage::default()
    };
    for (repo, digest, kind) in links {
        let Some(size) = sizes.get(&digest) else {
            usage.dangling += 1;
            continue;
        };
        let share = usage
            .repositories
            .entry(repo.as_str().to_owned())
            .or_default();
        match kind {
            Kind::Blob => share.blobs += 1,
            Kind::Manifest => share.manifests += 1,
        }
        share.bytes += size;
    }
    Ok(usage)
}
