//! Access to cached content: the one place that decides whether a request,
//! through a namespace, may read or learn of what the cache holds, and the
//! one place content is marked for that decision. Every reader asks here:
//!
//! - stored blob bytes ([`Access::stored`]): blob GET, HEAD and Range, the
//!   presigned redirect, the copies on this machine (small blobs in
//!   memory, the local tier), a fill that finds the blob stored by another
//!   replica, and what an admin warm counts as missing
//!   ([`Access::missing`]);
//! - a running fill ([`Access::join`]);
//! - stored manifests, by digest or named by a tag ([`Access::manifest`]);
//! - what listings and operator pages may name: repositories in
//!   `_catalog` ([`lists`]), repositories and fills on `/status`
//!   ([`names`]), digests on `/debug/budget` ([`Access::redact`]);
//! - who may pull through a namespace, and which repositories
//!   ([`permit`], [`permit_repository`]).
//!
//! The rules. Blob bytes are stored once for every namespace; tags,
//! referrers lists and links are per namespace and repository (their
//! storage keys, [`Namespace::repo`]), so tag lists, referrers and the
//! catalog read only what came through the asking namespace. A
//! repository's link to a blob (written by its own fill, by a proof, or by
//! a read that needed none) lets it read the blob at once. Without one, a
//! namespace proves through its own upstream, with its own credentials,
//! that its repository has the blob (one HEAD, [`Access::prove`], recorded
//! as the link) when it is isolated, or when the blob is marked
//! ([`Access::mark`]: it came in through a private namespace, or it is a
//! manifest or referrers index). A running fill is joined by the same
//! rule, its namespace being private standing for the marker; the fill's
//! own namespace and repository need nothing. A manifest is read from the
//! cache only where it is linked as a revision of the asking repository.
//! A refused proof is answered as the upstream answered, as for content
//! never stored. A HEAD that misses is answered by the asking namespace's
//! own upstream, which is what a proof would ask: it needs no decision.
//!
//! Cost: a hit whose entry knows its link is decided without a storage
//! read, a lock or an allocation.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use driver_core::StorageDriver;
use reqwest::StatusCode;

use super::error::CacheError;
use super::links::Links;
use crate::layout::{self, RepoKey};
use crate::namespace::Namespace;
use crate::oci::{Digest, ErrorCode, Kind, OciError, RepoName};
use crate::scheduler::NextOut;
use crate::upstream::UpstreamError;

/// Who a running fill fetches for: its namespace and repository.
#[derive(Clone, Copy)]
pub(crate) struct Filler<'a> {
    /// The namespace whose upstream the fill asks.
    pub namespace: &'a Arc<Namespace>,
    /// The repository it asks for.
    pub repo: &'a RepoName,
}

impl Filler<'_> {
    /// Whether the fill fetches for repository `repo` of `ns` itself.
    pub(crate) fn is(&self, ns: &Arc<Namespace>, repo: &RepoName) -> bool {
        Arc::ptr_eq(self.namespace, ns) && self.repo == repo
    }
}

/// What a digest named on an operator page without credentials is
/// replaced by when it may not be named ([`Access::redact`]).
pub const REDACTED: &str = "withheld";

/// What a read of content needs before anything of it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Linked into the asking repository, as its entry knows: served at
    /// once, from any copy (small blobs in memory, the local tier,
    /// storage, a presigned URL).
    Linked,
    /// Served without a proof, from storage or the running fill; the
    /// repository's link is written as it is served.
    Open,
    /// Served only once the namespace's own upstream proved access
    /// ([`Access::prove`]): until then not a byte, a size or a URL.
    Prove,
}

/// The access decisions over one storage.
pub struct Access {
    driver: Arc<dyn StorageDriver>,
    links: Links,
    /// How long a proof may wait for the upstream's answer.
    timeout: Duration,
}

impl Access {
    /// Decisions over `driver`'s content and `links`, each proof waiting
    /// at most `timeout` for the upstream.
    pub fn new(driver: Arc<dyn StorageDriver>, links: Links, timeout: Duration) -> Self {
        Self {
            driver,
            links,
            timeout,
        }
    }

    /// May `ns` read the stored bytes of blob `digest` in its repository
    /// `key`? For blob GET, HEAD and Range, the presigned redirect, the
    /// copies on this machine, and a fill that finds the blob stored by
    /// another replica. `known_linked`: the entry knows the repository's
    /// link, [`Read::Linked`] at once (no storage read). Otherwise a proof
    /// is due when `ns` is isolated or the blob is marked ([`Self::mark`]),
    /// and the repository has no link in storage.
    pub(crate) async fn stored(
        &self,
        ns: &Namespace,
        key: &RepoKey,
        digest: &Digest,
        known_linked: bool,
    ) -> Read {
        if known_linked {
            return Read::Linked;
        }
        if !(ns.isolated() || self.marked(digest).await) {
            return Read::Open;
        }
        self.unless_linked(key, digest).await
    }

    /// May `ns`, asking for `digest` in its repository `repo` (stored as
    /// `key`), stream it from the running `fill`? `proven`: the
    /// repository's link is known (its entry's, or a proof made for this
    /// request). The fill's own namespace and repository need nothing;
    /// otherwise a proof is due as for stored bytes ([`Self::stored`]),
    /// the fill's namespace being private standing for the marker, unless
    /// the repository links the blob in storage.
    pub(crate) async fn join(
        &self,
        ns: &Arc<Namespace>,
        key: &RepoKey,
        repo: &RepoName,
        digest: &Digest,
        proven: bool,
        fill: Filler<'_>,
    ) -> Read {
        if proven {
            return Read::Linked;
        }
        if fill.is(ns, repo) || !(ns.isolated() || fill.namespace.private()) {
            return Read::Open;
        }
        self.unless_linked(key, digest).await
    }

    /// [`Read::Prove`], unless repository `key` links blob `digest` in
    /// storage (a link found is noted in its entry).
    async fn unless_linked(&self, key: &RepoKey, digest: &Digest) -> Read {
        if self.links.linked(key, digest, Kind::Blob, false).await {
            Read::Open
        } else {
            Read::Prove
        }
    }

    /// May a request read stored manifest `digest`, by digest or named by
    /// a tag, in repository `key`? Only where it is linked as a revision
    /// of that repository (it came through the namespace's upstream for
    /// it): any other stored blob, and another namespace's or repository's
    /// manifest, is a miss the upstream answers. `known`: the entry knows
    /// the link (no storage read).
    pub(crate) async fn manifest(&self, key: &RepoKey, digest: &Digest, known: bool) -> bool {
        self.links.linked(key, digest, Kind::Manifest, known).await
    }

    /// Whether a warm through `ns` must fetch blob `digest` for its
    /// repository `key`: it is not stored, or it is and a proof is due
    /// (the warm proves it). What other namespaces brought in and `ns` may
    /// not read counts as missing: the answer tells nothing of them.
    pub(crate) async fn missing(&self, ns: &Namespace, key: &RepoKey, digest: &Digest) -> bool {
        self.stored(ns, key, digest, false).await == Read::Prove
            || self
                .driver
                .stat_file(&layout::blob_data(digest))
                .await
                .is_err()
    }

    /// Replaces by [`REDACTED`] the digests of `next` that an operator
    /// page without credentials (`/debug/budget`) may not name: those of
    /// marked content ([`Self::mark`]: private, or a manifest). Sizes are
    /// kept. One storage request per digest, asked together.
    pub(crate) async fn redact(&self, next: &mut [NextOut]) {
        let marked = futures::future::join_all(next.iter().map(|out| async move {
            match Digest::parse(&out.digest) {
                Ok(digest) => self.marked(&digest).await,
                Err(_) => true,
            }
        }))
        .await;
        for (out, marked) in next.iter_mut().zip(marked) {
            if marked {
                out.digest = REDACTED.to_owned();
            }
        }
    }

    /// Whether `digest` is marked ([`Self::mark`]: it came in through a
    /// private namespace, or is a manifest), or storage cannot tell: then
    /// it is treated as marked.
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

    /// Asks the upstream of `ns` whether `repo` has `digest` (one HEAD
    /// with its credentials); the caller records a yes as the repository's
    /// link to the blob. A no is the upstream's answer as an OCI error.
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

    /// Marks `digest`, about to be stored as `kind` through `ns` (call it
    /// before the bytes become visible), so that a blobs endpoint proves
    /// access before it serves them to a repository without a link to
    /// them: when it comes through a private namespace, and always for a
    /// manifest (a referrers index too), which a blobs endpoint serves only
    /// once the asking repository's upstream has it as a blob. Blob fills,
    /// manifests and referrers indexes all mark through here.
    pub(crate) async fn mark(
        &self,
        ns: &Namespace,
        digest: &Digest,
        kind: Kind,
    ) -> Result<(), CacheError> {
        if ns.private() || kind == Kind::Manifest {
            self.driver
                .put_content(&layout::blob_private_marker(digest), Bytes::new())
                .await?;
        }
        Ok(())
    }
    /// Marks every manifest in `digests` that storage holds unmarked
    /// (stored before manifests were marked, or imported from a registry:2
    /// root), a few at a time, so that a blobs endpoint proves access
    /// before it serves them; returns how many it marked. Run once at
    /// start, in the background.
    pub async fn mark_stored_manifests(&self, digests: Vec<Digest>) -> usize {
        use futures::StreamExt as _;
        futures::stream::iter(digests)
            .map(|digest| async move {
                let marker = layout::blob_private_marker(&digest);
                let unmarked = self
                    .driver
                    .stat_file(&marker)
                    .await
                    .is_err_and(|e| e.is_not_found());
                let stored = unmarked
                    && self
                        .driver
                        .stat_file(&layout::blob_data(&digest))
                        .await
                        .is_ok();
                stored && self.driver.put_content(&marker, Bytes::new()).await.is_ok()
            })
            .buffer_unordered(8)
            .filter(|marked| futures::future::ready(*marked))
            .count()
            .await
    }
}

/// Checks that `user` may pull through `ns` (`None`: anonymous, or client
/// authentication is off): its `users`, if listed, name them (`*`:
/// anyone). 403 `DENIED` when not, before anything of the namespace is
/// read.
pub(crate) fn permit(ns: &Namespace, user: Option<&str>) -> Result<(), OciError> {
    if ns.allows(user) {
        return Ok(());
    }
    tracing::info!(namespace = %ns.name, user, "user not allowed in the namespace");
    ns.metrics.denial();
    Err(OciError::new(
        ErrorCode::Denied,
        format!("not allowed to pull through namespace {}", ns.name),
    ))
}

/// Checks that `ns` serves repository `repo` (canonical): its allow and
/// deny lists admit it. 403 `DENIED` when not, before anything of the
/// repository is read or asked upstream.
pub(crate) fn permit_repository(ns: &Namespace, repo: &RepoName) -> Result<(), OciError> {
    if ns.permits(repo) {
        return Ok(());
    }
    tracing::info!(namespace = %ns.name, %repo, "repository not allowed in the namespace");
    ns.metrics.repository_denial();
    Err(OciError::new(
        ErrorCode::Denied,
        format!(
            "repository {repo} is not allowed through namespace {}",
            ns.name
        ),
    ))
}

/// Whether `_catalog` through `ns` names its stored repository `repo`:
/// only one its lists admit (a repository it refuses to serve is not
/// named either). Other namespaces' repositories are never under its
/// directory's walk.
pub(crate) fn lists(ns: &Namespace, repo: &RepoName) -> bool {
    ns.permits(repo)
}

/// Whether the debug listener's pages, which ask for no credentials, may
/// name the repositories, fills and digests of namespace `ns`: not when it
/// is private (isolated, or with `users`), nor when it is unknown.
pub(crate) fn names(ns: Option<&Namespace>) -> bool {
    ns.is_some_and(|ns| !ns.private())
}
