//! Proofs of access: content that came in through an isolated or
//! access-restricted namespace, and any manifest or referrers index, is
//! served through the blobs endpoint of a repository that does not link it
//! only after that namespace's own upstream says its repository has it as
//! a blob. The one place this rule is written, for stored bytes and for
//! joining a running fill, and the one place stored content is marked for
//! it ([`mark`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use driver_core::StorageDriver;
use reqwest::StatusCode;

use super::error::CacheError;
use super::links::Links;
use crate::layout::{self, RepoKey};
use crate::namespace::Namespace;
use crate::oci::{Digest, Kind, RepoName};
use crate::upstream::UpstreamError;

/// Where the bytes a request would be served come from.
pub(crate) enum Source<'a> {
    /// Storage.
    Stored,
    /// A running fill through this namespace.
    Fill(&'a Arc<Namespace>),
}

/// Who proves access, and how.
pub(crate) struct Proofs {
    driver: Arc<dyn StorageDriver>,
    links: Links,
    /// How long a proof may wait for the upstream's answer.
    timeout: Duration,
}

impl Proofs {
    /// Proofs over `driver`'s content and `links`, each waiting at most
    /// `timeout` for the upstream.
    pub(crate) fn new(driver: Arc<dyn StorageDriver>, links: Links, timeout: Duration) -> Self {
        Self {
            driver,
            links,
            timeout,
        }
    }

    /// Whether `ns` must prove, through its own upstream, that repository
    /// `key` has `digest` before it is served the bytes from `source`: it
    /// has no link to it (`known`: its entry knows of one, else storage is
    /// asked), and the namespace is isolated or the bytes are marked
    /// ([`mark`]: private, or a manifest) or filled through a private
    /// namespace. Bytes its own upstream is sending need no proof. The
    /// one place this rule is written.
    pub(crate) async fn needed(
        &self,
        ns: &Arc<Namespace>,
        key: &RepoKey,
        digest: &Digest,
        known: bool,
        source: Source<'_>,
    ) -> bool {
        if known {
            return false;
        }
        let due = ns.isolated()
            || match source {
                Source::Fill(filler) if Arc::ptr_eq(filler, ns) => return false,
                Source::Fill(filler) => filler.private(),
                Source::Stored => self.marked(digest).await,
            };
        due && !self.links.linked(key, digest, Kind::Blob, false).await
    }

    /// Whether `digest` is marked ([`mark`]: it came in through a private
    /// namespace, or is a manifest), or storage cannot tell: then it is
    /// treated as marked.
    async fn marked(&self, digest: &Digest) -> bool {
        match self
            .driver
            .stat_file(&layout::blob_private_marker(digest))
            .await
        {
            Ok(_) => true,
            Err(e) => !e.is_not_found(),
        }
    }

    /// Asks the upstream of isolated namespace `ns` whether `repo` has
    /// `digest` (one HEAD with its credentials); the caller records a yes
    /// as the repository's link to the blob. A no is the upstream's answer
    /// as an OCI error.
    pub(crate) async fn prove(
        &self,
        ns: &Namespace,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(), CacheError> {
        ns.metrics.proof();
        let proven = ns.upstream.head_blob(repo, digest, self.timeout).await;
        if let Err(UpstreamError::Status { status, .. }) = &proven {
            if matches!(
                *status,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
            ) {
                ns.metrics.denial();
            }
            tracing::info!(namespace = %ns.name, %repo, %digest, %status, "access to a stored blob not proven");
        }
        Ok(proven?)
    }
}

/// Marks `digest`, about to be stored as `kind` through `ns` (call it
/// before the bytes become visible), so that a blobs endpoint proves access
/// before it serves them to a repository without a link to them: when it
/// comes through a private namespace, and always for a manifest (a
/// referrers index too), which a blobs endpoint serves only once the
/// asking repository's upstream has it as a blob. Blob fills, manifests
/// and referrers indexes all mark through here.
pub(crate) async fn mark(
    driver: &dyn StorageDriver,
    ns: &Namespace,
    digest: &Digest,
    kind: Kind,
) -> Result<(), CacheError> {
    if ns.private() || kind == Kind::Manifest {
        driver
            .put_content(&layout::blob_private_marker(digest), Bytes::new())
            .await?;
    }
    Ok(())
}
