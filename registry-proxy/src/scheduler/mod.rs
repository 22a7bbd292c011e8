//! The TTL scheduler: every cached blob and manifest of a repository is an
//! entry with its last access time, and an entry not accessed for the TTL
//! expires. Expiry removes the entry's link (and, for a manifest, the tags
//! pointing at it) and, once no entry of any repository uses the content,
//! its bytes.
//!
//! Unlike registry:2's scheduler: an access refreshes the entry, the TTL is
//! applied at expiry time (so a changed TTL applies to old entries), content
//! shared between repositories lives while any of them uses it, and the
//! state is a journal of small segments rather than one file rewritten per
//! change.
//!
//! Races: an access and the start of an expiry of the same content are
//! serialised under one lock. An access that finds the content being
//! deleted waits for the deletion to finish before the caller reads or
//! fills it, so an expiry never deletes what is served or just re-filled.

mod clock;
pub mod journal;
mod registry2;
pub mod table;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use driver_core::{StorageDriver, StoragePath};
use futures::StreamExt;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use clock::Clock;
use journal::SegmentKind;
use table::{Entry, Table};
pub use table::{EntryKind, Secs, Ttls};

use crate::cache::layout::{self, RepoKey};
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::{lock, wait_until};

/// Entries expired under the lock at once; requests wait at most for one batch.
const BATCH: usize = 256;

/// Deletions running at once during expiry.
const DELETE_CONCURRENCY: usize = 4;

/// Slots encoded per lock hold while a snapshot is written.
const SNAPSHOT_SLOTS: usize = 16 << 10;

/// A snapshot is written once the logs since the last one reach its size
/// (and at least this many bytes), so each change costs O(1) writes
/// amortised.
const MIN_LOG_BYTES: u64 = 256 << 10;

/// Or once this many logs accumulated, so that loading stays quick.
const MAX_LOGS: usize = 4096;

/// An entry whose deletion failed is tried again after this long.
const RETRY: Secs = 60;

/// How the scheduler behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Content not accessed for this long expires; zero disables expiry
    /// (access times are still kept).
    pub ttl: Duration,
    /// The lifetime of the content of namespaces stored in a directory of
    /// their own, by directory; others live `ttl`.
    pub namespace_ttls: HashMap<String, Duration>,
    /// How often changes are written to storage.
    pub flush_interval: Duration,
    /// Removal of abandoned writers; `None` turns it off.
    pub purge: Option<Purge>,
}

/// Removal of writers left behind by fills a crash cut short (their staged
/// bytes, S3 multipart uploads): distribution's `uploadpurging`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purge {
    /// Writers idle for longer than this are abandoned.
    pub age: Duration,
    /// How often to look for them (and once at start).
    pub interval: Duration,
}

/// What [`Scheduler::touch`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The entry is new.
    pub created: bool,
    /// Its link is known to exist in storage.
    pub linked: bool,
}

/// What one expiry pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// Entries expired.
    pub entries: u64,
    /// Bytes of content deleted.
    pub bytes_freed: u64,
}

/// The scheduler's state could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("scheduler state: {0}")]
pub struct LoadError(#[from] driver_core::Error);

struct Inner {
    table: Table,
    /// Records not yet written to storage.
    pending: Vec<u8>,
    /// Digests with an expiry in progress, and how many.
    expiring: HashMap<[u8; 32], u32>,
}

/// What is in storage, owned by whoever writes segments.
struct Persisted {
    next_seq: u64,
    /// Segments older than the next snapshot: deleted once it is written.
    segments: Vec<(u64, SegmentKind)>,
    logs: usize,
    log_bytes: u64,
    snapshot_bytes: u64,
    /// Records whose write failed, written with the next flush.
    retry: Vec<u8>,
}

/// What a load found, for logs and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Entries after loading.
    pub entries: usize,
    /// Segments read.
    pub segments: usize,
    /// Segments skipped because they were damaged.
    pub damaged: usize,
    /// Entries taken over from registry:2's `/scheduler-state.json`.
    pub imported: usize,
}

/// The TTL scheduler.
pub struct Scheduler {
    driver: Arc<dyn StorageDriver>,
    inner: Mutex<Inner>,
    persisted: tokio::sync::Mutex<Persisted>,
    /// The shortest lifetime; `None` when nothing ever expires.
    shortest_ttl: Option<Secs>,
    flush_interval: Duration,
    purge: Option<Purge>,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// Notified whenever an expiry of some content finished.
    released: Notify,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    loaded: Loaded,
}

impl Scheduler {
    /// Loads the state from `driver` (taking over registry:2's on a first
    /// start). Call [`Self::start`] to run flushes and expiry.
    pub async fn open(
        driver: Arc<dyn StorageDriver>,
        options: Options,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, LoadError> {
        let secs = |d: Duration| Secs::try_from(d.as_secs()).unwrap_or(Secs::MAX);
        let ttls = Ttls {
            default: secs(options.ttl),
            namespaces: options
                .namespace_ttls
                .iter()
                .map(|(dir, ttl)| (dir.clone(), secs(*ttl)))
                .collect(),
        };
        let (ttl, shortest_ttl) = (ttls.default, ttls.shortest());
        let mut table = Table::new(ttls);
        let segments = journal::list(driver.as_ref()).await?;
        let mut loaded = Loaded::default();
        // The newest intact snapshot, then the logs after it.
        let (mut base, mut snapshot_bytes, mut log_bytes, mut logs) = (None, 0, 0, 0);
        for &(seq, kind) in segments.iter().rev() {
            if kind != SegmentKind::Snapshot {
                continue;
            }
            match read_segment(driver.as_ref(), seq, kind, &mut table).await? {
                Some(size) => {
                    (base, snapshot_bytes) = (Some(seq), size);
                    loaded.segments += 1;
                    break;
                }
                None => loaded.damaged += 1,
            }
        }
        for &(seq, kind) in &segments {
            if kind == SegmentKind::Log && base.is_none_or(|b| seq > b) {
                match read_segment(driver.as_ref(), seq, kind, &mut table).await? {
                    Some(size) => {
                        log_bytes += size;
                        logs += 1;
                        loaded.segments += 1;
                    }
                    None => loaded.damaged += 1,
                }
            }
        }
        let mut pending = Vec::new();
        if segments.is_empty() {
            loaded.imported =
                registry2::import(driver.as_ref(), ttl, &mut table, &mut pending).await?;
        }
        loaded.entries = table.len();
        metrics.scheduler_entries(table.len());
        let (stop, _) = watch::channel(false);
        Ok(Arc::new(Self {
            driver,
            inner: Mutex::new(Inner {
                table,
                pending,
                expiring: HashMap::new(),
            }),
            persisted: tokio::sync::Mutex::new(Persisted {
                next_seq: segments.last().map_or(1, |&(seq, _)| seq + 1),
                logs,
                segments,
                log_bytes,
                snapshot_bytes,
                retry: Vec::new(),
            }),
            shortest_ttl,
            flush_interval: options.flush_interval,
            purge: options.purge,
            clock,
            metrics,
            released: Notify::new(),
            stop,
            tasks: Mutex::new(Vec::new()),
            loaded,
        }))
    }

    /// What [`Self::open`] found.
    pub fn loaded(&self) -> Loaded {
        self.loaded
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        lock(&self.inner).table.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes of the in-memory table (capacities).
    pub fn allocated_bytes(&self) -> usize {
        lock(&self.inner).table.allocated_bytes()
    }

    /// The last access of an entry, if it exists.
    pub fn access_time(&self, repo: &RepoKey, digest: &Digest, kind: EntryKind) -> Option<Secs> {
        lock(&self.inner)
            .table
            .access_time(repo.as_str(), &digest.raw(), kind)
    }

    /// Runs the flusher and (unless no content ever expires) the expirer in
    /// the background until [`Self::shutdown`].
    pub fn start(self: &Arc<Self>) {
        let mut tasks = lock(&self.tasks);
        let this = Arc::clone(self);
        tasks.push(tokio::spawn(async move { this.flush_loop().await }));
        if self.shortest_ttl.is_some() {
            let this = Arc::clone(self);
            tasks.push(tokio::spawn(async move { this.expiry_loop().await }));
        }
        if let Some(purge) = self.purge {
            let this = Arc::clone(self);
            tasks.push(tokio::spawn(async move {
                this.purge_loop(purge.interval).await
            }));
        }
    }

    /// Removes the writers idle for longer than the purge age: what fills
    /// cut short by a crash left in storage. Returns how many went.
    pub async fn purge_writers(&self) -> u64 {
        let Some(purge) = self.purge else {
            return 0;
        };
        let before = self
            .clock
            .now()
            .checked_sub(purge.age)
            .unwrap_or(std::time::UNIX_EPOCH);
        match self.driver.purge_writers(before).await {
            Ok(purged) => {
                if purged > 0 {
                    tracing::info!(purged, "removed abandoned writers");
                }
                self.metrics.writers_purged(purged);
                purged
            }
            Err(e) => {
                tracing::warn!(error = %e, "purging abandoned writers failed");
                0
            }
        }
    }

    async fn purge_loop(&self, interval: Duration) {
        let mut stopped = self.stop.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            self.purge_writers().await;
        }
    }

    /// Stops the background tasks (letting a running flush or expiry batch
    /// finish) and writes what is pending.
    pub async fn shutdown(&self) -> Result<(), driver_core::Error> {
        self.stop.send_replace(true);
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            let _ = task.await;
        }
        self.flush().await
    }

    /// Records an access of `digest` as `kind` in `repo` now, creating the
    /// entry if needed. If the content is being deleted by an expiry, waits
    /// until the deletion is over (the caller then finds it absent).
    pub async fn touch(&self, repo: &RepoKey, digest: &Digest, kind: EntryKind) -> Access {
        self.record(repo.as_str(), &digest.raw(), kind, self.clock.now_secs())
            .await
    }

    async fn record(&self, repo: &str, digest: &[u8; 32], kind: EntryKind, at: Secs) -> Access {
        wait_until(&self.released, || {
            let mut inner = lock(&self.inner);
            if inner.expiring.contains_key(digest) {
                return None;
            }
            let up = inner.table.upsert(repo, digest, kind, at);
            if up.changed {
                journal::encode_upsert(&mut inner.pending, repo, digest, kind, at);
            }
            if up.created {
                self.metrics.scheduler_entries(inner.table.len());
            }
            Some(Access {
                created: up.created,
                linked: up.linked,
            })
        })
        .await
    }

    /// Refreshes the entry of `digest` as `kind` in `repo` if it exists (a
    /// manifest's access keeps the content it references alive).
    pub fn refresh(&self, repo: &RepoKey, digest: &Digest, kind: EntryKind) {
        let raw = digest.raw();
        let mut inner = lock(&self.inner);
        if inner.table.contains(repo.as_str(), &raw, kind) && !inner.expiring.contains_key(&raw) {
            let at = self.clock.now_secs();
            if inner.table.upsert(repo.as_str(), &raw, kind, at).changed {
                journal::encode_upsert(&mut inner.pending, repo.as_str(), &raw, kind, at);
            }
        }
    }

    /// Whether the link of an entry exists in storage (noted in the entry,
    /// so that [`Self::touch`] reports it linked from then on).
    pub async fn link_exists(&self, repo: &RepoKey, digest: &Digest, kind: EntryKind) -> bool {
        if self
            .driver
            .stat(&link_path(repo, digest, kind))
            .await
            .is_err()
        {
            return false;
        }
        lock(&self.inner)
            .table
            .set_linked(repo.as_str(), &digest.raw(), kind);
        true
    }

    /// Makes sure the link of an entry exists in storage (a layer link for a
    /// blob, a revision link for a manifest), unless it is `known` to.
    pub async fn ensure_link(&self, repo: &RepoKey, digest: &Digest, kind: EntryKind, known: bool) {
        if known {
            return;
        }
        let link = link_path(repo, digest, kind);
        if self.driver.stat(&link).await.is_err() {
            if let Err(e) = self
                .driver
                .put_content(&link, layout::link_content(digest))
                .await
            {
                tracing::warn!(%repo, %digest, error = %e, "could not link content into its repository");
                return;
            }
        }
        lock(&self.inner)
            .table
            .set_linked(repo.as_str(), &digest.raw(), kind);
    }

    /// Writes the changes made since the last flush as one log segment, and
    /// a snapshot when the logs have grown as large as the last one.
    pub async fn flush(&self) -> Result<(), driver_core::Error> {
        let mut persisted = self.persisted.lock().await;
        let pending = std::mem::take(&mut lock(&self.inner).pending);
        let mut records = std::mem::take(&mut persisted.retry);
        if records.is_empty() {
            records = pending;
        } else {
            records.extend_from_slice(&pending);
        }
        if records.is_empty() {
            return Ok(());
        }
        let seq = persisted.next_seq;
        let segment = journal::frame(&records);
        let size = segment.len() as u64;
        if let Err(e) = self
            .driver
            .put_content(&journal::segment_path(seq, SegmentKind::Log), segment)
            .await
        {
            persisted.retry = records;
            return Err(e);
        }
        persisted.next_seq += 1;
        persisted.segments.push((seq, SegmentKind::Log));
        persisted.logs += 1;
        persisted.log_bytes += size;
        if persisted.log_bytes >= persisted.snapshot_bytes.max(MIN_LOG_BYTES)
            || persisted.logs >= MAX_LOGS
        {
            self.snapshot(&mut persisted).await?;
        }
        Ok(())
    }

    /// Writes every entry as one snapshot segment, then deletes the
    /// segments before it.
    async fn snapshot(&self, persisted: &mut Persisted) -> Result<(), driver_core::Error> {
        let seq = persisted.next_seq;
        persisted.next_seq += 1;
        let path = journal::segment_path(seq, SegmentKind::Snapshot);
        let mut writer = self.driver.writer(&path, false).await?;
        let (mut framer, header) = journal::Framer::start();
        let mut written = writer.write(header).await;
        let mut slot = 0;
        while written.is_ok() {
            let mut records = Vec::new();
            let done = {
                let inner = lock(&self.inner);
                for (repo, digest, kind, at) in inner.table.entries_in(slot..slot + SNAPSHOT_SLOTS)
                {
                    journal::encode_upsert(&mut records, repo, digest, kind, at);
                }
                slot += SNAPSHOT_SLOTS;
                slot >= inner.table.slot_count()
            };
            framer.piece(&records);
            written = writer.write(records.into()).await;
            if done {
                break;
            }
        }
        if written.is_ok() {
            written = writer.write(framer.finish()).await;
        }
        let size = writer.size();
        if let Err(e) = written {
            let _ = writer.cancel().await;
            return Err(e);
        }
        writer.commit().await?;
        for (old, kind) in std::mem::take(&mut persisted.segments) {
            match self.driver.delete(&journal::segment_path(old, kind)).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => tracing::warn!(error = %e, "could not delete an old scheduler segment"),
            }
        }
        persisted.segments.push((seq, SegmentKind::Snapshot));
        persisted.logs = 0;
        persisted.log_bytes = 0;
        persisted.snapshot_bytes = size;
        Ok(())
    }

    async fn flush_loop(&self) {
        let mut stopped = self.stop.subscribe();
        let mut tick = tokio::time::interval(self.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            if let Err(e) = self.flush().await {
                tracing::warn!(error = %e, "could not write the scheduler state; retrying");
            }
        }
    }

    async fn expiry_loop(&self) {
        let mut stopped = self.stop.subscribe();
        loop {
            let next = lock(&self.inner).table.next_due();
            let wake = match next {
                Some(due) => self.clock.instant_at(due),
                // Anything added from now on is due the shortest TTL from
                // now at the earliest.
                None => self.clock.instant_at(
                    self.clock
                        .now_secs()
                        .saturating_add(self.shortest_ttl.unwrap_or(Secs::MAX)),
                ),
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            self.expire_due().await;
        }
    }

    /// Expires every entry due now, and returns once the expiries that
    /// other callers started are finished too.
    pub async fn expire_due(&self) -> Expired {
        let mut total = Expired::default();
        if self.shortest_ttl.is_none() {
            return total;
        }
        loop {
            let batch = self.take_due();
            if batch.is_empty() {
                break;
            }
            let done: Vec<_> = futures::stream::iter(batch)
                .map(|(entry, data)| async move {
                    let freed = self.delete(&entry, data).await;
                    (entry, freed)
                })
                .buffer_unordered(DELETE_CONCURRENCY)
                .collect()
                .await;
            let mut inner = lock(&self.inner);
            for (entry, freed) in done {
                if let Some(n) = inner.expiring.get_mut(&entry.digest) {
                    *n -= 1;
                    if *n == 0 {
                        inner.expiring.remove(&entry.digest);
                    }
                }
                match freed {
                    Ok(bytes) => {
                        total.entries += 1;
                        total.bytes_freed += bytes;
                    }
                    Err(e) => {
                        tracing::warn!(repo = %entry.repo, digest = %Digest::from_raw(&entry.digest), error = %e, "expiry failed; trying again later");
                        let ttl = inner.table.ttl_of(&entry.repo);
                        let at = self.clock.now_secs().saturating_sub(ttl) + RETRY;
                        inner
                            .table
                            .upsert(&entry.repo, &entry.digest, entry.kind, at);
                        journal::encode_upsert(
                            &mut inner.pending,
                            &entry.repo,
                            &entry.digest,
                            entry.kind,
                            at,
                        );
                    }
                }
            }
            self.metrics.scheduler_entries(inner.table.len());
            drop(inner);
            self.released.notify_waiters();
        }
        self.metrics.expired(total.entries, total.bytes_freed);
        // Wait for deletions other callers started.
        wait_until(&self.released, || {
            lock(&self.inner).expiring.is_empty().then_some(())
        })
        .await;
        total
    }

    /// Takes up to [`BATCH`] due entries out of the table, marking their
    /// content as being deleted; `true` where no other entry uses the
    /// content, so its bytes go too.
    fn take_due(&self) -> Vec<(Entry, bool)> {
        let now = self.clock.now_secs();
        let mut inner = lock(&self.inner);
        let mut batch = Vec::new();
        while batch.len() < BATCH {
            let Some(entry) = inner.table.pop_due(now) else {
                break;
            };
            journal::encode_remove(&mut inner.pending, &entry.repo, &entry.digest, entry.kind);
            *inner.expiring.entry(entry.digest).or_default() += 1;
            let unused = !inner.table.uses(&entry.digest);
            batch.push((entry, unused));
        }
        batch
    }

    /// Deletes what an expired entry kept alive; the bytes freed.
    async fn delete(&self, entry: &Entry, data: bool) -> Result<u64, driver_core::Error> {
        let digest = Digest::from_raw(&entry.digest);
        // Names come from requests or from our own journal, both validated.
        if let Some(repo) = RepoKey::parse(&entry.repo) {
            match entry.kind {
                EntryKind::Blob => {
                    delete_missing_ok(&*self.driver, &layout::layer_dir(&repo, &digest)).await?
                }
                EntryKind::Manifest => {
                    delete_missing_ok(&*self.driver, &layout::revision_dir(&repo, &digest)).await?;
                    self.untag(&repo, &digest).await?;
                }
            }
        }
        if !data {
            return Ok(0);
        }
        let size = match self.driver.stat(&layout::blob_data(&digest)).await {
            Ok(info) => info.size,
            Err(e) if e.is_not_found() => 0,
            Err(e) => return Err(e),
        };
        delete_missing_ok(&*self.driver, &layout::blob_dir(&digest)).await?;
        Ok(size)
    }

    /// Removes `digest` from the tags of `repo`: its index entries, and the
    /// tags currently pointing at it.
    async fn untag(&self, repo: &RepoKey, digest: &Digest) -> Result<(), driver_core::Error> {
        let tags = match self.driver.list(&layout::tags_dir(repo)).await {
            Ok(tags) => tags,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        let want = layout::link_content(digest);
        for tag in tags.iter().filter_map(StoragePath::file_name) {
            match self
                .driver
                .get_content(&layout::tag_current_link(repo, tag))
                .await
            {
                Ok(current) if current.trim_ascii() == want => {
                    delete_missing_ok(&*self.driver, &layout::tag_dir(repo, tag)).await?;
                }
                Ok(_) => {
                    delete_missing_ok(&*self.driver, &layout::tag_index_dir(repo, tag, digest))
                        .await?;
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The link that puts content of `kind` into `repo`: a layer link for a
/// blob, a revision link for a manifest.
fn link_path(repo: &RepoKey, digest: &Digest, kind: EntryKind) -> StoragePath {
    match kind {
        EntryKind::Blob => layout::layer_link(repo, digest),
        EntryKind::Manifest => layout::revision_link(repo, digest),
    }
}

async fn delete_missing_ok(
    driver: &dyn StorageDriver,
    path: &StoragePath,
) -> Result<(), driver_core::Error> {
    match driver.delete(path).await {
        Err(e) if !e.is_not_found() => Err(e),
        _ => Ok(()),
    }
}

/// Applies one segment to `table`; its size, or `None` (logged) when it is
/// damaged.
async fn read_segment(
    driver: &dyn StorageDriver,
    seq: u64,
    kind: SegmentKind,
    table: &mut Table,
) -> Result<Option<u64>, driver_core::Error> {
    let path = journal::segment_path(seq, kind);
    let bytes = match driver.get_content(&path).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    match journal::apply(path.as_str(), &bytes, table) {
        Ok(_) => Ok(Some(bytes.len() as u64)),
        Err(e) => {
            tracing::warn!(error = %e, "skipping a damaged scheduler segment");
            Ok(None)
        }
    }
}
