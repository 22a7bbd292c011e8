//! Online garbage collection: mark what is in use, sweep the rest, while
//! the cache serves.
//!
//! Roots: every entry of the table (content inside its TTL, in every
//! namespace and repository; a fill creates its entry before it starts),
//! every live lease here, and every lease other replicas published.
//! Swept: blob bytes no root references, repository links (layer and
//! revision links, tags) without an entry, and abandoned writers (staged
//! fills, S3 multipart uploads). Nothing younger than the grace period is
//! swept, so a write racing the walk is never taken for garbage.
//!
//! Requests never wait on the whole collection: each blob is deleted under
//! the same per-digest exclusion as an expiry (a request for it waits for
//! that one deletion, then fills it again).

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use driver_core::{FileInfo, Segment, StoragePath, WalkControl, WalkOptions};

use super::{Scheduler, delete_missing_ok};
use crate::layout::{self, RepoKey};
use crate::metadata::MetadataError;
pub use crate::metrics::Collected;
use crate::oci::Digest;
use crate::oci::Kind;
use crate::sync::lock;

/// When and how collection runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// How often the leader collects; `None`: never on a schedule.
    pub interval: Option<Duration>,
    /// Whether the leader collects after each expiry pass that expired
    /// something.
    pub after_expiry: bool,
    /// Nothing modified more recently than this is swept.
    pub grace: Duration,
}

impl Default for GcOptions {
    /// The configuration's defaults (`gc.interval: 1h`, `gc.afterexpiry:
    /// true`, `gc.grace: 10m`), defined here only.
    fn default() -> Self {
        Self {
            interval: Some(Duration::from_secs(3600)),
            after_expiry: true,
            grace: Duration::from_secs(600),
        }
    }
}

/// A repository file the sweep looks at.
pub(super) enum Found {
    Link(RepoKey, Digest, Kind),
    Tag(RepoKey, Segment),
    /// The stored referrers index of a subject.
    Referrers(RepoKey, Digest),
}

impl Scheduler {
    /// Marks and sweeps once; with `dry_run`, only counts what would go.
    pub async fn gc(&self, dry_run: bool) -> Result<Collected, MetadataError> {
        let mut stats = Collected::default();
        let started = Instant::now();
        let remote = self.store.remote_leases().await?;
        let mut marked: HashSet<Digest> = {
            let inner = lock(&self.inner);
            let table = &inner.table;
            table
                .entries_in(0..table.slot_count())
                .map(|(_, digest, _, _)| *digest)
                .collect()
        };
        marked.extend(self.leases.live());
        marked.extend(remote);
        stats.marked = marked.len() as u64;
        stats.mark = started.elapsed();

        let started = Instant::now();
        let old = self
            .clock
            .now()
            .checked_sub(self.gc.grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.sweep_blobs(&marked, old, dry_run, &mut stats).await?;
        self.sweep_repositories(old, dry_run, &mut stats).await?;
        if !dry_run {
            // Writers idle past the purge age (not the grace: another
            // replica's fill may be writing one).
            stats.writers = self.purge_writers().await;
        }
        stats.sweep = started.elapsed();
        self.metrics.collected(&stats, dry_run);
        tracing::info!(
            dry_run,
            marked = stats.marked,
            blobs = stats.blobs,
            links = stats.links,
            tags = stats.tags,
            writers = stats.writers,
            bytes_freed = stats.bytes_freed,
            mark_ms = stats.mark.as_millis() as u64,
            sweep_ms = stats.sweep.as_millis() as u64,
            "garbage collection done"
        );
        Ok(stats)
    }

    /// Deletes the bytes of every blob older than `old` that nothing marked.
    async fn sweep_blobs(
        &self,
        marked: &HashSet<Digest>,
        old: SystemTime,
        dry_run: bool,
        stats: &mut Collected,
    ) -> Result<(), MetadataError> {
        let mut found = Vec::new();
        walk(&*self.driver, &layout::blobs_root(), |info| {
            if let Some(digest) = layout::blob_digest(&info.path) {
                if info.modified < old && !marked.contains(&digest) {
                    found.push((digest, info.size));
                }
            }
            WalkControl::Continue
        })
        .await?;
        for (digest, size) in found {
            let raw = digest;
            {
                // In use since the mark: kept, and not counted by a dry run.
                let mut inner = lock(&self.inner);
                if inner.table.uses(&raw)
                    || inner.expiring.contains_key(&raw)
                    || self.leases.is_held(&raw)
                {
                    continue;
                }
                if dry_run {
                    stats.blobs += 1;
                    stats.bytes_freed += size;
                    continue;
                }
                *inner.expiring.entry(raw).or_default() += 1;
            }
            let freed = self.delete_data(&raw).await;
            lock(&self.inner).end_expiry(&raw);
            self.released.notify_waiters();
            match freed {
                Ok(0) => {}
                Ok(bytes) => {
                    stats.blobs += 1;
                    stats.bytes_freed += bytes;
                }
                Err(e) => tracing::warn!(%digest, error = %e, "could not collect a blob"),
            }
        }
        Ok(())
    }

    /// Deletes links and tags older than `old` whose content no entry of
    /// their repository keeps.
    async fn sweep_repositories(
        &self,
        old: SystemTime,
        dry_run: bool,
        stats: &mut Collected,
    ) -> Result<(), MetadataError> {
        let mut found = Vec::new();
        walk(&*self.driver, &layout::repositories_root(), |info| {
            if info.is_dir {
                // registry:2's upload sessions are not ours to judge.
                return if info.path.file_name() == Some("_uploads") {
                    WalkControl::SkipDir
                } else {
                    WalkControl::Continue
                };
            }
            if info.modified < old {
                if let Some(f) = repository_file(&info.path) {
                    found.push(f);
                }
            }
            WalkControl::Continue
        })
        .await?;
        for f in found {
            let (path, counter) = match &f {
                Found::Link(repo, digest, kind) => {
                    if self.keeps(repo, digest, *kind) {
                        continue;
                    }
                    let dir = match kind {
                        Kind::Blob => layout::layer_dir(repo, digest),
                        Kind::Manifest => layout::revision_dir(repo, digest),
                    };
                    (dir, &mut stats.links)
                }
                Found::Tag(..) | Found::Referrers(..) => {
                    let (repo, link, dir) = match &f {
                        Found::Tag(repo, tag) => (
                            repo,
                            layout::tag_current_link(repo, tag),
                            layout::tag_dir(repo, tag),
                        ),
                        Found::Referrers(repo, subject) => (
                            repo,
                            layout::referrers_link(repo, subject),
                            layout::referrers_dir(repo, subject),
                        ),
                        Found::Link(..) => continue,
                    };
                    let current = match self.driver.get_content(&link).await {
                        Ok(c) => c,
                        Err(e) if e.is_not_found() => continue,
                        Err(e) => return Err(e.into()),
                    };
                    let target = std::str::from_utf8(current.trim_ascii())
                        .ok()
                        .and_then(|d| Digest::parse(d).ok());
                    if target.is_some_and(|d| self.keeps(repo, &d, Kind::Manifest)) {
                        continue;
                    }
                    (dir, &mut stats.tags)
                }
            };
            if !dry_run {
                delete_missing_ok(&*self.driver, &path).await?;
            }
            *counter += 1;
        }
        Ok(())
    }

    /// Whether an entry of `repo` keeps `digest` as `kind` (or a lease the
    /// digest).
    fn keeps(&self, repo: &RepoKey, digest: &Digest, kind: Kind) -> bool {
        let raw = digest;
        lock(&self.inner).table.contains(repo.as_str(), raw, kind) || self.leases.is_held(raw)
    }

    /// Collects on the schedule and after expiries, while this replica
    /// leads.
    pub(super) async fn gc_loop(&self) {
        if self.gc.interval.is_none() && !self.gc.after_expiry {
            return;
        }
        let mut stopped = self.stopped();
        // Without a schedule (or with a huge one), a deadline far enough
        // to never come, and never past what an instant holds.
        let interval = self
            .gc
            .interval
            .unwrap_or(Duration::MAX)
            .min(Duration::from_secs(1 << 30));
        let mut next = tokio::time::Instant::now() + interval;
        while self.lead(&mut stopped).await {
            let woke = stopped.until(async {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {
                        next = tokio::time::Instant::now() + interval;
                    }
                    _ = self.expired.notified(), if self.gc.after_expiry => {}
                }
            });
            if woke.await.is_none() {
                return;
            }
            if !*self.store.leader().borrow() {
                continue;
            }
            if let Err(e) = self.gc(false).await {
                tracing::warn!(error = %e, "garbage collection failed");
            }
        }
    }
}

/// Walks `from` (absent: nothing), calling `visit` for every entry.
pub(super) async fn walk(
    driver: &dyn driver_core::StorageDriver,
    from: &StoragePath,
    mut visit: impl FnMut(&FileInfo) -> WalkControl + Send,
) -> driver_core::Result<()> {
    match driver.walk(from, &WalkOptions::default(), &mut visit).await {
        Err(e) if !e.is_not_found() => Err(e),
        _ => Ok(()),
    }
}

/// What a file under `repositories/` is, if the sweep cares.
pub(super) fn repository_file(path: &StoragePath) -> Option<Found> {
    let rest = path
        .as_str()
        .strip_prefix(layout::repositories_root().as_str())?
        .strip_prefix('/')?;
    let key = |end: usize| RepoKey::parse(&rest[..end]);
    if let Some(at) = rest.find("/_layers/sha256/") {
        let hex = rest[at + "/_layers/sha256/".len()..].strip_suffix("/link")?;
        let digest = Digest::parse(&format!("sha256:{hex}")).ok()?;
        return Some(Found::Link(key(at)?, digest, Kind::Blob));
    }
    if let Some(at) = rest.find("/_manifests/revisions/sha256/") {
        let hex = rest[at + "/_manifests/revisions/sha256/".len()..].strip_suffix("/link")?;
        let digest = Digest::parse(&format!("sha256:{hex}")).ok()?;
        return Some(Found::Link(key(at)?, digest, Kind::Manifest));
    }
    if let Some(at) = rest.find("/_manifests/referrers/sha256/") {
        let hex = rest[at + "/_manifests/referrers/sha256/".len()..].strip_suffix("/link")?;
        let subject = Digest::parse(&format!("sha256:{hex}")).ok()?;
        return Some(Found::Referrers(key(at)?, subject));
    }
    let at = rest.find("/_manifests/tags/")?;
    let tag = rest[at + "/_manifests/tags/".len()..].strip_suffix("/current/link")?;
    if tag.contains('/') {
        return None;
    }
    Some(Found::Tag(key(at)?, Segment::parse(tag).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> StoragePath {
        StoragePath::parse(s).expect("path")
    }

    #[test]
    fn the_sweep_recognises_blobs_links_and_tags() {
        let hex = "ab".repeat(32);
        let root = "/docker/registry/v2";
        assert_eq!(
            layout::blob_digest(&path(&format!("{root}/blobs/sha256/ab/{hex}/data"))),
            Some(Digest::from_raw([0xab; 32]))
        );
        assert!(
            layout::blob_digest(&path(&format!("{root}/blobs/sha256/ab/{hex}/other"))).is_none()
        );
        let layer = path(&format!(
            "{root}/repositories/a/b/_layers/sha256/{hex}/link"
        ));
        assert!(matches!(
            repository_file(&layer),
            Some(Found::Link(r, _, Kind::Blob)) if r.as_str() == "a/b"
        ));
        let revision = path(&format!(
            "{root}/repositories/_namespaces/ghcr.io/x/_manifests/revisions/sha256/{hex}/link"
        ));
        assert!(matches!(
            repository_file(&revision),
            Some(Found::Link(r, _, Kind::Manifest)) if r.as_str() == "_namespaces/ghcr.io/x"
        ));
        let tag = path(&format!(
            "{root}/repositories/a/_manifests/tags/v1/current/link"
        ));
        assert!(
            matches!(repository_file(&tag), Some(Found::Tag(r, t)) if r.as_str() == "a" && t.as_str() == "v1")
        );
        let index = path(&format!(
            "{root}/repositories/a/_manifests/tags/v1/index/sha256/{hex}/link"
        ));
        assert!(repository_file(&index).is_none());
        let referrers = path(&format!(
            "{root}/repositories/a/_manifests/referrers/sha256/{hex}/link"
        ));
        assert!(
            matches!(repository_file(&referrers), Some(Found::Referrers(r, s)) if r.as_str() == "a" && s == Digest::from_raw([0xab; 32]))
        );
    }
}
