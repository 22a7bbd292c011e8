//! Manifests and tags. By digest: served from storage, fetched once on a
//! miss. By tag: resolved upstream (one HEAD) at most once per freshness
//! window; when the upstream fails, the cached tag is served, stale. Tags
//! and links are per namespace and repository; a stored manifest is
//! served only where it is linked as a revision of the asking repository
//! ([`Access::manifest`]). Stored manifests (and referrers indexes) are
//! marked ([`Access::mark`]): no blobs endpoint serves their bytes without
//! a proof of access.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use driver_core::StorageDriver;
use futures::StreamExt;

use super::access::Access;
use super::error::CacheError;
use super::links::Links;
use crate::layout::{self, RepoKey};
use crate::metrics::Metrics;
use crate::namespace::Namespace;
use crate::oci::{self, Digest, ErrorCode, Kind, OciError, Reference, RepoName, Tag};
use crate::scheduler::Tracker;
use crate::sync::{Fifo, Swept, lock};
use crate::upstream::UpstreamError;

mod referrers;
pub use referrers::Referrers;

/// A manifest to serve.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The exact bytes.
    pub bytes: Bytes,
    /// Its media type.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Whether it came from the upstream for this request (a miss).
    pub fetched: bool,
}

impl Manifest {
    /// `bytes` of manifest `digest`, typed by their shape; `fetched` when
    /// they came from the upstream for this request.
    fn new(bytes: Bytes, digest: Digest, fetched: bool) -> Self {
        Self {
            media_type: oci::manifest_media_type(&bytes),
            bytes,
            digest,
            fetched,
        }
    }
}

/// The manifest store.
pub struct Manifests {
    driver: Arc<dyn StorageDriver>,
    freshness: Duration,
    request_timeout: Duration,
    metrics: Arc<Metrics>,
    tracker: Tracker,
    links: Links,
    /// What requests may read, and the marker of stored manifests.
    access: Arc<Access>,
    /// When each tag (or referrers list) was last confirmed upstream, and
    /// the digest it then named, if any (a fresh tag's hit reads no link
    /// from storage).
    confirmed: Mutex<Swept<TagKey, (Instant, Option<Digest>)>>,
    /// One turn per tag being resolved upstream: concurrent requests for a
    /// stale tag wait for one resolution instead of each asking.
    resolving: Mutex<HashMap<TagKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Verified stored manifests, by digest (their bytes never change).
    memory: Mutex<Fifo<Digest, Bytes>>,
}

/// Verified manifests kept in memory at most, in bytes (the oldest are
/// forgotten first): a hit by tag or digest then reads only the tag's
/// link from storage.
const REMEMBERED_BYTES: usize = 16 << 20;

/// A tag of a repository.
type TagKey = (RepoKey, String);

/// One waiter's hold on a tag's turn to resolve; the last one to go
/// removes the turn from the map.
struct LeaveTurn<'a> {
    resolving: &'a Mutex<HashMap<TagKey, Arc<tokio::sync::Mutex<()>>>>,
    key: TagKey,
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for LeaveTurn<'_> {
    fn drop(&mut self) {
        let mut resolving = lock(self.resolving);
        // The map's reference, this guard's, and the caller's: nobody else
        // waits for this turn.
        if Arc::strong_count(&self.turn) <= 3 {
            resolving.remove(&self.key);
        }
    }
}

impl Manifests {
    /// A store over `driver` resolving tags upstream at most once per
    /// `freshness`; upstream manifest requests time out after `request_timeout`;
    /// accesses are recorded through `tracker`; served as `access` allows.
    pub fn new(
        driver: Arc<dyn StorageDriver>,
        freshness: Duration,
        request_timeout: Duration,
        tracker: Tracker,
        access: Arc<Access>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            links: Links::new(Arc::clone(&driver), tracker.clone()),
            access,
            driver,
            metrics,
            tracker,
            freshness,
            request_timeout,
            confirmed: Mutex::new(Swept::new(1024)),
            resolving: Mutex::new(HashMap::new()),
            memory: Mutex::new(Fifo::new(REMEMBERED_BYTES)),
        }
    }

    /// The manifest `reference` names in `repo` of namespace `ns`.
    pub async fn get(
        &self,
        ns: &Namespace,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Manifest, CacheError> {
        let got = self.find(ns, repo, reference).await;
        match &got {
            Ok(m) => {
                ns.metrics.request(Kind::Manifest, !m.fetched);
                if m.fetched {
                    ns.metrics.pulled(Kind::Manifest, m.bytes.len() as u64);
                }
                self.refresh_references(&ns.repo(repo), m).await;
            }
            Err(_) => ns.metrics.failed_request(Kind::Manifest),
        }
        got
    }

    /// A manifest's access keeps what it references alive: the blobs it
    /// names and, for an index, its manifests (those already cached). The
    /// pull that follows holds a lease on them and on the manifest.
    async fn refresh_references(&self, repo: &RepoKey, m: &Manifest) {
        let references = oci::manifest_references(&m.bytes);
        self.tracker
            .extend_leases(references.iter().map(|(d, _)| *d).chain([m.digest]));
        for (digest, is_manifest) in references {
            let kind = if is_manifest {
                Kind::Manifest
            } else {
                Kind::Blob
            };
            self.tracker.access_reference(repo, &digest, kind).await;
        }
    }

    /// The cached manifest `digest` of `repo` in `ns`, its access recorded:
    /// only one linked into that repository ([`Access::manifest`]).
    async fn cached_in(
        &self,
        ns: &Namespace,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<Manifest>, CacheError> {
        let key = ns.repo(repo);
        let entry = self
            .tracker
            .access_known(&key, digest, Kind::Manifest)
            .await;
        // Only a manifest is served by digest here: one linked as a revision
        // of this repository (it came through its namespace's upstream).
        // Any other stored blob (a 3 GB layer, an HTML page) is a miss, and
        // the upstream decides.
        let known = entry.is_some_and(|a| a.linked);
        if !self.access.manifest(&key, digest, known).await {
            return Ok(None);
        }
        let found = self.cached(digest).await?;
        if found.is_some() && entry.is_none() {
            // Linked and stored, without an entry (a registry:2 root taken
            // over, an entry expired while its link stayed): recorded now.
            self.tracker.access(&key, digest, Kind::Manifest).await;
            self.links.ensure(&key, digest, Kind::Manifest, false).await;
        }
        Ok(found)
    }

    async fn find(
        &self,
        ns: &Namespace,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Manifest, CacheError> {
        match reference {
            Reference::Digest(digest) => match self.cached_in(ns, repo, digest).await? {
                Some(m) => Ok(m),
                None => {
                    self.fetch(ns, repo, &digest.to_string(), Some(digest))
                        .await
                }
            },
            Reference::Tag(tag) => self.by_tag(ns, repo, tag).await,
        }
    }

    /// Keeps the verified manifest `digest` in memory.
    fn remember(&self, digest: &Digest, bytes: &Bytes) {
        lock(&self.memory).insert(*digest, bytes.clone(), bytes.len());
    }

    /// The stored manifest `digest`, if it is one: one storage request
    /// gives its size, checked before any byte is read, so nothing larger
    /// than a manifest is read into memory. Bytes that no longer match the
    /// digest (bit rot) are deleted and count as a miss.
    async fn cached(&self, digest: &Digest) -> Result<Option<Manifest>, CacheError> {
        let remembered = lock(&self.memory).get(digest).cloned();
        if let Some(bytes) = remembered {
            return Ok(Some(Manifest::new(bytes, *digest, false)));
        }
        let path = layout::blob_data(digest);
        let file = match self.driver.open(&path, 0).await {
            Ok(file) => file,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if file.size > oci::MAX_MANIFEST_BYTES as u64 {
            return Ok(None);
        }
        let mut bytes = Vec::with_capacity(file.size as usize);
        let mut stream = file.stream;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if bytes.len() + chunk.len() > oci::MAX_MANIFEST_BYTES {
                return Ok(None);
            }
            bytes.extend_from_slice(&chunk);
        }
        let bytes = Bytes::from(bytes);
        if &Digest::of(&bytes) != digest {
            tracing::warn!(%digest, "a stored manifest does not match its digest; deleting it");
            self.metrics.corrupt_blob();
            if let Err(e) = self.driver.delete(&path).await {
                tracing::warn!(%digest, error = %e, "could not delete a corrupt manifest");
            }
            return Ok(None);
        }
        self.remember(digest, &bytes);
        Ok(Some(Manifest::new(bytes, *digest, false)))
    }

    async fn cached_tag(
        &self,
        ns: &Namespace,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<Manifest>, CacheError> {
        let link = layout::tag_current_link(&ns.repo(repo), tag.segment());
        match self.read_link(&link).await? {
            Some(digest) => self.cached_in(ns, repo, &digest).await,
            None => Ok(None),
        }
    }

    /// The digest the link file `path` holds; `None` when there is no such
    /// file or it holds no digest.
    async fn read_link(
        &self,
        path: &driver_core::StoragePath,
    ) -> Result<Option<Digest>, CacheError> {
        match self.driver.get_content(path).await {
            Ok(link) => Ok(Digest::parse(String::from_utf8_lossy(&link).trim()).ok()),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Drops `tag` of `repo` from storage and from what is known fresh:
    /// the next pull by that tag asks the upstream. Whether it was there.
    /// Other replicas learn of it from the caller (through the metadata
    /// store) and [`Self::forget_tag`].
    pub async fn purge_tag(&self, repo: &RepoKey, tag: &Tag) -> Result<bool, driver_core::Error> {
        self.forget_tag(repo, tag.as_str());
        match self
            .driver
            .delete(&layout::tag_dir(repo, tag.segment()))
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Forgets that `tag` of `repo` was confirmed upstream (it was purged,
    /// here or on another replica): the next pull by it asks the upstream.
    pub fn forget_tag(&self, repo: &RepoKey, tag: &str) {
        lock(&self.confirmed).remove(&(repo.clone(), tag.to_owned()));
    }

    /// `Some` when `key` was confirmed upstream within `ns`'s tag
    /// freshness (longer while its upstream's pull budget is low), with the
    /// digest it then named, if any.
    fn fresh(&self, ns: &Namespace, key: &TagKey) -> Option<Option<Digest>> {
        let freshness = ns.upstream.tag_freshness(self.freshness);
        lock(&self.confirmed)
            .get(key)
            .filter(|(at, _)| at.elapsed() < freshness)
            .map(|(_, digest)| *digest)
    }

    /// Notes `key` confirmed upstream now, naming `digest` (if any).
    fn confirm(&self, ns: &Namespace, key: TagKey, digest: Option<Digest>) {
        let keep = ns.upstream.longest_tag_freshness(self.freshness);
        lock(&self.confirmed).insert(key, (Instant::now(), digest), |(at, _)| at.elapsed() < keep);
    }

    async fn by_tag(
        &self,
        ns: &Namespace,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Manifest, CacheError> {
        if let Some(m) = self.fresh_tag(ns, repo, tag).await? {
            return Ok(m);
        }
        let key = (ns.repo(repo), tag.as_str().to_owned());
        let turn = Arc::clone(lock(&self.resolving).entry(key.clone()).or_default());
        // Leaves the map when its last waiter is done, even one whose
        // client went away mid-resolution (its future dropped).
        let _leave = LeaveTurn {
            resolving: &self.resolving,
            key,
            turn: Arc::clone(&turn),
        };
        let _turn = turn.lock().await;
        self.resolve_tag(ns, repo, tag).await
    }

    /// The cached manifest of `tag` if it was confirmed upstream within the
    /// freshness window.
    async fn fresh_tag(
        &self,
        ns: &Namespace,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<Manifest>, CacheError> {
        match self.fresh(ns, &(ns.repo(repo), tag.as_str().to_owned())) {
            Some(Some(digest)) => self.cached_in(ns, repo, &digest).await,
            Some(None) => self.cached_tag(ns, repo, tag).await,
            None => Ok(None),
        }
    }

    /// Resolves `tag` upstream (one at a time per tag): unless a request
    /// before this one just did, one HEAD confirms the cached manifest, or
    /// a GET fetches the new one; an unavailable upstream serves the cache.
    async fn resolve_tag(
        &self,
        ns: &Namespace,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Manifest, CacheError> {
        if let Some(m) = self.fresh_tag(ns, repo, tag).await? {
            return Ok(m);
        }
        let key = ns.repo(repo);
        let cached = self.cached_tag(ns, repo, tag).await?;
        // One HEAD tells whether the cached digest is still current.
        if let Some(m) = &cached {
            match ns
                .upstream
                .head_manifest(repo, tag.as_str(), self.request_timeout)
                .await
            {
                Ok(Some(current)) if current == m.digest => {
                    self.confirm(ns, (key.clone(), tag.as_str().to_owned()), Some(m.digest));
                    return Ok(m.clone());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%key, %tag, error = %e, "upstream unavailable; serving the cached tag");
                    self.metrics.stale_serve();
                    return Ok(m.clone());
                }
            }
        }
        match self.fetch(ns, repo, tag.as_str(), None).await {
            Ok(m) => {
                self.store_tag(&key, tag, &m.digest).await?;
                self.confirm(ns, (key.clone(), tag.as_str().to_owned()), Some(m.digest));
                Ok(m)
            }
            Err(CacheError::Upstream(e)) if e.is_outage() => match cached {
                Some(m) => {
                    tracing::warn!(%key, %tag, error = %e, "upstream unavailable; serving the cached tag");
                    self.metrics.stale_serve();
                    Ok(m)
                }
                None => Err(e.into()),
            },
            Err(e) => Err(e),
        }
    }

    /// GETs a manifest from upstream, checks its digest (against `expected`,
    /// and the upstream's `Docker-Content-Digest`), and stores it.
    async fn fetch(
        &self,
        ns: &Namespace,
        repo: &RepoName,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<Manifest, CacheError> {
        let fetched = match ns
            .upstream
            .manifest(repo, reference, self.request_timeout)
            .await
        {
            Ok(fetched) => fetched,
            Err(UpstreamError::TooLarge(message)) => {
                return Err(OciError::new(ErrorCode::ManifestInvalid, message).into());
            }
            Err(e) => return Err(e.into()),
        };
        let (bytes, claimed) = (fetched.bytes, fetched.claimed);
        let digest = Digest::of(&bytes);
        for want in expected.into_iter().chain(claimed.as_ref()) {
            if want != &digest {
                return Err(OciError::new(
                    // The upstream is at fault, and a retry may succeed.
                    ErrorCode::Unavailable,
                    format!("the upstream sent {digest} for {want}"),
                )
                .into());
            }
        }
        // Recorded first: an expiry of this content in progress finishes
        // before the bytes are stored again. Leased while it is stored.
        let _lease = self.tracker.lease(&[digest]);
        let key = ns.repo(repo);
        self.tracker.access(&key, &digest, Kind::Manifest).await;
        let path = layout::blob_data(&digest);
        // Marked before the bytes become visible: no blobs endpoint serves
        // them unproven.
        self.access.mark(ns, &digest, Kind::Manifest).await?;
        self.driver.put_content(&path, bytes.clone()).await?;
        self.remember(&digest, &bytes);
        self.links
            .ensure(&key, &digest, Kind::Manifest, false)
            .await;
        Ok(Manifest::new(bytes, digest, true))
    }

    async fn store_tag(
        &self,
        repo: &RepoKey,
        tag: &Tag,
        digest: &Digest,
    ) -> Result<(), CacheError> {
        let link = layout::link_content(digest);
        self.driver
            .put_content(
                &layout::tag_index_link(repo, tag.segment(), digest),
                link.clone(),
            )
            .await?;
        self.driver
            .put_content(&layout::tag_current_link(repo, tag.segment()), link)
            .await
            .map_err(CacheError::from)
    }

    /// The tags of `repo`, sorted: the upstream's list (every page) when
    /// the upstream answers, the cached tags when it is unreachable or
    /// answers 5xx/429.
    pub async fn tags(&self, ns: &Namespace, repo: &RepoName) -> Result<Vec<String>, CacheError> {
        match ns.upstream.tags(repo, self.request_timeout).await {
            Ok(tags) => Ok(tags),
            Err(e) if e.is_outage() => {
                let key = ns.repo(repo);
                tracing::warn!(%key, error = %e, "upstream unavailable; listing the cached tags");
                self.cached_tags(&key).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The cached tags of `repo`, sorted.
    async fn cached_tags(&self, repo: &RepoKey) -> Result<Vec<String>, CacheError> {
        match self.driver.list(&layout::tags_dir(repo)).await {
            Ok(paths) => Ok(paths
                .iter()
                .filter_map(|p| p.file_name().map(str::to_owned))
                .collect()),
            Err(e) if e.is_not_found() => Err(OciError::new(
                ErrorCode::NameUnknown,
                format!("repository {repo} is not known here"),
            )
            .into()),
            Err(e) => Err(e.into()),
        }
    }
}
