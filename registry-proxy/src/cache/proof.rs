//! Proofs of access: content that came in through an isolated or
//! access-restricted namespace is served to another namespace only after
//! that namespace's own upstream says its repository has it. The one place
//! this rule is written, for stored bytes and for joining a running fill.

use std::sync::Arc;
use std::time::Duration;

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
    /// asked), and the namespace is isolated or the bytes are private
    /// (stored with the private marker, or filled through a private
    /// namespace). Bytes its own upstream is sending need no proof. The
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
                Source::Stored => self.came_privately(digest).await,
            };
        due && !self.links.linked(key, digest, Kind::Blob, false).await
    }

    /// Whether blob `digest` came in through a private namespace (its
    /// marker exists, or storage cannot tell: then it is treated as private).
    async fn came_privately(&self, digest: &Digest) -> bool {
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
