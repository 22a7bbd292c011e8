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
//! Where the entries persist is a [`MetadataStore`]: the embedded journal
//! for one node, etcd for several replicas. With a shared store an access
//! that creates an entry, or finds it close to expiry, is written through
//! at once; other accesses are written with the next flush, at most one
//! per [`GRANULARITY`] of the TTL, so that a warm hit costs the store
//! nothing. Only the leader expires and collects ([`gc`]), and nothing
//! under a live lease ([`Leases`]) is expired or collected.
//!
//! Races: an access and the start of an expiry of the same content are
//! serialised under one lock. An access that finds the content being
//! deleted waits for the deletion to finish before the caller reads or
//! fills it, so an expiry never deletes what is served or just re-filled.

mod budget;
mod feed;
pub mod gc;
mod purge;
pub mod usage;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use driver_core::{StorageDriver, StoragePath};
use futures::StreamExt;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use crate::clock::Clock;
use crate::metadata::table::{Entry, Table};
pub use crate::metadata::table::{Secs, Ttls};
use crate::oci::Kind;
pub use budget::{
    Bounds, BudgetView, Evicted, NextOut, NoRoom, RECONCILE_INTERVAL, Reservation, Watermarks,
};
pub use gc::{Collected, GcOptions};
pub use purge::{PurgeScope, Purged};

use crate::layout::{self, RepoKey};
use crate::metadata::embedded::Embedded;
use crate::metadata::{
    Change, DigestLock, Lease, Leases, LockKind, MetadataError, MetadataStore, SnapshotSource,
};
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::sync::{lock, wait_until};

pub use crate::metadata::Loaded;

/// Entries expired under the lock at once; requests wait at most for one batch.
const BATCH: usize = 256;

/// Table slots a scan of the whole table reads under one hold of its lock.
const SCAN_PIECE: usize = 16_384;

/// Deletions running at once during expiry.
const DELETE_CONCURRENCY: usize = 4;

/// An entry whose deletion failed, or whose content is leased, is tried
/// again after this long.
const RETRY: Secs = 60;

/// With a shared store, an access is written only once the entry's access
/// time is this fraction of its lifetime old (1/16: expiry may come up to
/// that much early).
pub const GRANULARITY: Secs = 16;

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
    /// The longest life of a lease (a pull's, after its manifest was
    /// served; or one whose holder hangs).
    pub lease_timeout: Duration,
    /// Garbage collection.
    pub gc: GcOptions,
    /// What bounds stored blob bytes (`proxy.maxsize`, namespaces'
    /// `maxsize`, the watermarks); nothing by default.
    pub bounds: Bounds,
}

impl Default for Options {
    /// The configuration's defaults, defined here only: a week's TTL
    /// (`proxy.ttl`), ten-minute leases (`gc.leasetimeout`), collection as
    /// [`GcOptions::default`]; flushes every second, and no purge (the
    /// configuration turns it on with [`Purge::default`]).
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(168 * 3600),
            namespace_ttls: HashMap::new(),
            flush_interval: Duration::from_secs(1),
            purge: None,
            lease_timeout: Duration::from_secs(600),
            gc: GcOptions::default(),
            bounds: Bounds::default(),
        }
    }
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

impl Default for Purge {
    /// Distribution's defaults: writers idle for an hour, looked for hourly.
    fn default() -> Self {
        Self {
            age: Duration::from_secs(3600),
            interval: Duration::from_secs(3600),
        }
    }
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
pub struct LoadError(#[from] pub MetadataError);

struct Inner {
    table: Table,
    /// Records not yet written to the store.
    pending: Vec<Change>,
    /// Digests with an expiry or collection in progress, and how many.
    expiring: HashMap<Digest, u32>,
}

impl Inner {
    /// One expiry or collection of `digest` ended.
    /// Starts the expiry of `entry`, out of the table already: its removal
    /// journalled, its digest marked expiring. Returns it with whether its
    /// data is unused now (no entry uses the digest).
    fn begin_expiry(&mut self, entry: Entry) -> (Entry, bool) {
        self.pending.push(Change::Remove {
            repo: entry.repo.clone(),
            digest: entry.digest,
            kind: entry.kind,
        });
        *self.expiring.entry(entry.digest).or_default() += 1;
        let unused = !self.table.uses(&entry.digest);
        (entry, unused)
    }

    fn end_expiry(&mut self, digest: &Digest) {
        if let Some(n) = self.expiring.get_mut(digest) {
            *n -= 1;
            if *n == 0 {
                self.expiring.remove(digest);
            }
        }
    }
}

/// What an access must write.
enum WriteThrough {
    /// Record it; it goes with the next flush (always, on one node).
    Flush,
    /// Nothing: a shared store's entry accessed within the granularity.
    Skip,
    /// The entry is new: write it under the digest's lock.
    Create,
    /// The entry is close to expiry: refresh it if it still exists.
    Refresh,
}

/// The TTL scheduler.
pub struct Scheduler {
    driver: Arc<dyn StorageDriver>,
    store: Arc<dyn MetadataStore>,
    leases: Arc<Leases>,
    inner: Mutex<Inner>,
    /// Serialises flushes.
    flushing: tokio::sync::Mutex<()>,
    /// The shortest lifetime; `None` when nothing ever expires.
    shortest_ttl: Option<Secs>,
    /// An entry due within this long of an access is written through.
    guard: Secs,
    flush_interval: Duration,
    purge: Option<Purge>,
    /// The byte budget, when there is one.
    budget: Option<budget::Budget>,
    gc: GcOptions,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// Notified whenever an expiry of some content finished.
    released: Notify,
    /// Notified when an expiry pass removed something (collection follows).
    expired: Notify,
    /// The leases last published (shared stores).
    published: Mutex<HashSet<Digest>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    loaded: Loaded,
    /// Told of the tags other replicas purged ([`Self::on_untag`]).
    untagged: std::sync::OnceLock<feed::Untagged>,
}

/// The cache's narrow handle on the scheduler: it records accesses, notes
/// links, holds leases and takes a digest's fill lock, and reaches nothing
/// else (not the metadata store, not expiry).
#[derive(Clone)]
pub struct Tracker(Arc<Scheduler>);

impl Tracker {
    /// A handle on `scheduler`.
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        Self(scheduler)
    }

    /// See [`Scheduler::access`].
    pub async fn access(&self, repo: &RepoKey, digest: &Digest, kind: Kind) -> Access {
        self.0.access(repo, digest, kind).await
    }

    /// See [`Scheduler::access_known`].
    pub async fn access_known(
        &self,
        repo: &RepoKey,
        digest: &Digest,
        kind: Kind,
    ) -> Option<Access> {
        self.0.access_known(repo, digest, kind).await
    }

    /// See [`Scheduler::access_reference`].
    pub async fn access_reference(&self, repo: &RepoKey, digest: &Digest, kind: Kind) {
        self.0.access_reference(repo, digest, kind).await;
    }

    /// See [`Scheduler::mark_linked`].
    pub fn mark_linked(&self, repo: &RepoKey, digest: &Digest, kind: Kind) {
        self.0.mark_linked(repo, digest, kind);
    }

    /// See [`Scheduler::stored`].
    pub fn stored(&self, repo: &RepoKey, digest: &Digest, size: u64) {
        self.0.stored(repo.as_str(), digest, size);
    }

    /// See [`Scheduler::filled`].
    pub fn filled(&self, repo: &RepoKey, digest: &Digest, size: u64) {
        self.0.filled(repo.as_str(), digest, size);
    }

    /// See [`Scheduler::reserve`].
    pub fn reserve(&self, size: u64) -> Result<Reservation, NoRoom> {
        self.0.reserve(size)
    }

    /// See [`Scheduler::make_room`].
    pub async fn make_room(&self, bytes: u64) -> Evicted {
        self.0.make_room(bytes).await
    }

    /// See [`Scheduler::fits`].
    pub fn fits(&self, size: u64) -> bool {
        self.0.fits(size)
    }

    /// Leases `digests` (nothing expires or collects them) until the lease
    /// is dropped.
    pub fn lease(&self, digests: &[Digest]) -> Lease {
        self.0.leases.hold(digests)
    }

    /// Extends the leases of `digests` by the lease timeout (the pull that
    /// follows a manifest).
    pub fn extend_leases(&self, digests: impl IntoIterator<Item = Digest>) {
        self.0.leases.extend(digests);
    }

    /// Whether replicas share the storage (content may appear that this
    /// replica did not fill).
    pub fn shared(&self) -> bool {
        self.0.store.shared()
    }

    /// The lock of the one fill of `digest` across replicas; when the
    /// store cannot lock, that is logged and the fill goes ahead unlocked.
    pub async fn fill_lock(&self, digest: &Digest) -> DigestLock {
        match self.0.store.lock(digest, LockKind::Fill).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot lock the fill across replicas; filling anyway");
                DigestLock::none()
            }
        }
    }
}

/// A background loop's view of [`Scheduler::shutdown`].
struct Stopped(watch::Receiver<bool>);

impl Stopped {
    /// `work`'s output, or `None` once the scheduler stops first.
    async fn until<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            done = work => Some(done),
            _ = self.0.wait_for(|s| *s) => None,
        }
    }
}

fn secs(d: Duration) -> Secs {
    Secs::try_from(d.as_secs()).unwrap_or(Secs::MAX)
}

impl Scheduler {
    /// Loads the state from `driver`'s embedded store (taking over the
    /// version before on a first start). Call [`Self::start`] to run
    /// flushes and expiry.
    pub async fn open(
        driver: Arc<dyn StorageDriver>,
        options: Options,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, LoadError> {
        let store = Arc::new(Embedded::new(Arc::clone(&driver), secs(options.ttl)));
        Self::open_with_store(driver, store, options, clock, metrics).await
    }

    /// Loads the state from `store`, for content in `driver`.
    pub async fn open_with_store(
        driver: Arc<dyn StorageDriver>,
        store: Arc<dyn MetadataStore>,
        options: Options,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, LoadError> {
        let ttls = Ttls {
            default: secs(options.ttl),
            namespaces: options
                .namespace_ttls
                .iter()
                .map(|(dir, ttl)| (dir.clone(), secs(*ttl)))
                .collect(),
        };
        let shortest_ttl = ttls.shortest();
        let mut table = Table::new(ttls);
        table
            .budget()
            .set_budget(options.bounds.max_size.unwrap_or(u64::MAX));
        let loaded = store.load(&mut table).await?;
        metrics.scheduler_entries(table.len());
        let (stop, _) = watch::channel(false);
        Ok(Arc::new(Self {
            driver,
            leases: Leases::new(clock, options.lease_timeout),
            store,
            inner: Mutex::new(Inner {
                table,
                pending: Vec::new(),
                expiring: HashMap::new(),
            }),
            flushing: tokio::sync::Mutex::new(()),
            shortest_ttl,
            guard: secs(options.flush_interval)
                .saturating_mul(2)
                .saturating_add(RETRY),
            flush_interval: options.flush_interval,
            purge: options.purge,
            budget: budget::Budget::new(&options.bounds),
            gc: options.gc,
            clock,
            metrics,
            released: Notify::new(),
            expired: Notify::new(),
            published: Mutex::new(HashSet::new()),
            stop,
            tasks: Mutex::new(Vec::new()),
            loaded,
            untagged: std::sync::OnceLock::new(),
        }))
    }

    /// What [`Self::open`] found.
    pub fn loaded(&self) -> Loaded {
        self.loaded
    }

    /// Where the entries persist, for logs.
    pub fn store(&self) -> &Arc<dyn MetadataStore> {
        &self.store
    }

    /// The leases of this process.
    pub fn leases(&self) -> &Arc<Leases> {
        &self.leases
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
    pub fn access_time(&self, repo: &RepoKey, digest: &Digest, kind: Kind) -> Option<Secs> {
        lock(&self.inner)
            .table
            .access_time(repo.as_str(), digest, kind)
    }

    /// Runs the flusher, the expirer (unless no content ever expires) and
    /// the collector (when scheduled) in the background until
    /// [`Self::shutdown`]; with a shared store, also applies other
    /// replicas' changes. Expiry and collection run while this replica
    /// leads.
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
        let this = Arc::clone(self);
        tasks.push(tokio::spawn(async move { this.gc_loop().await }));
        if self.budget.is_some() {
            let this = Arc::clone(self);
            tasks.push(tokio::spawn(async move { this.evict_loop().await }));
        }
        let this = Arc::clone(self);
        tasks.push(tokio::spawn(async move { this.report_leadership().await }));
        if let Some(changes) = self.store.changes() {
            let this = Arc::clone(self);
            tasks.push(tokio::spawn(
                async move { this.apply_changes(changes).await },
            ));
        }
    }

    /// Keeps the leadership metric current.
    async fn report_leadership(&self) {
        let mut stopped = self.stopped();
        let mut leader = self.store.leader();
        loop {
            let leads = *leader.borrow_and_update();
            self.metrics.leading(leads);
            let Some(Ok(())) = stopped.until(leader.changed()).await else {
                return;
            };
        }
    }

    /// Waits until this replica leads (or the scheduler stops: `false`).
    async fn lead(&self, stopped: &mut Stopped) -> bool {
        let mut leader = self.store.leader();
        let led = stopped.until(leader.wait_for(|l| *l)).await;
        led.is_some_and(|led| led.is_ok())
    }

    /// A watch on [`Self::shutdown`], for the background loops.
    fn stopped(&self) -> Stopped {
        Stopped(self.stop.subscribe())
    }

    /// Removes the writers idle for longer than the purge age: what fills
    /// cut short by a crash left in storage. Returns how many went.
    pub async fn purge_writers(&self) -> u64 {
        let Some(purge) = self.purge else {
            return 0;
        };
        let age = purge.age;
        let before = self
            .clock
            .now()
            .checked_sub(age)
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
        let mut stopped = self.stopped();
        while stopped.until(tokio::time::sleep(interval)).await.is_some() {
            self.purge_writers().await;
        }
    }

    /// Stops the background tasks (letting a running flush or expiry batch
    /// finish), writes what is pending and closes the store.
    pub async fn shutdown(&self) -> Result<(), MetadataError> {
        self.stop.send_replace(true);
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            let _ = task.await;
        }
        let flushed = self.flush().await;
        self.store.close().await;
        flushed
    }

    /// Records an access of `digest` as `kind` in `repo` now, creating the
    /// entry if needed. If the content is being deleted by an expiry, waits
    /// until the deletion is over (the caller then finds it absent).
    pub async fn access(&self, repo: &RepoKey, digest: &Digest, kind: Kind) -> Access {
        let access = self.note(repo.as_str(), digest, kind, self.clock.now_secs(), true);
        access.await.unwrap_or(Access {
            created: false,
            linked: false,
        })
    }

    /// [`Self::access`] of an entry that exists; `None` (and nothing
    /// created) when there is none. Content not known to exist gets no
    /// entry: a request for a digest nobody has must not grow the table.
    pub async fn access_known(
        &self,
        repo: &RepoKey,
        digest: &Digest,
        kind: Kind,
    ) -> Option<Access> {
        let now = self.clock.now_secs();
        self.note(repo.as_str(), digest, kind, now, false).await
    }

    /// Records an access at `at`, creating the entry if `create`; `None`
    /// when there is no entry and none was created.
    async fn note(
        &self,
        repo: &str,
        digest: &Digest,
        kind: Kind,
        at: Secs,
        create: bool,
    ) -> Option<Access> {
        let (access, through) = wait_until(&self.released, || {
            let mut inner = lock(&self.inner);
            if inner.expiring.contains_key(digest) {
                return None;
            }
            if !create && !inner.table.contains(repo, digest, kind) {
                return Some((None, WriteThrough::Skip));
            }
            let through = self.write_through(&inner.table, repo, digest, kind, at);
            if let WriteThrough::Skip = through {
                let linked = inner.table.is_linked(repo, digest, kind);
                let access = Access {
                    created: false,
                    linked,
                };
                return Some((Some(access), through));
            }
            let up = inner.table.upsert(repo, digest, kind, at);
            if up.changed && matches!(through, WriteThrough::Flush) {
                inner.pending.push(Change::Upsert(Entry {
                    repo: repo.into(),
                    digest: *digest,
                    kind,
                    at,
                }));
            }
            if up.created {
                self.metrics.scheduler_entries(inner.table.len());
            }
            let access = Access {
                created: up.created,
                linked: up.linked,
            };
            Some((Some(access), through))
        })
        .await;
        let entry = Entry {
            repo: repo.into(),
            digest: *digest,
            kind,
            at,
        };
        match through {
            WriteThrough::Flush | WriteThrough::Skip => {}
            WriteThrough::Refresh => match self.store.put_now(&entry, true).await {
                Ok(true) => {}
                // The leader expired it meanwhile: it is created again.
                Ok(false) => self.create(&entry).await,
                Err(e) => self.write_later(&entry, e),
            },
            WriteThrough::Create => self.create(&entry).await,
        }
        access
    }

    /// What an access at `now` must write.
    fn write_through(
        &self,
        table: &Table,
        repo: &str,
        digest: &Digest,
        kind: Kind,
        now: Secs,
    ) -> WriteThrough {
        if !self.store.shared() {
            return WriteThrough::Flush;
        }
        let Some(last) = table.access_time(repo, digest, kind) else {
            return WriteThrough::Create;
        };
        let ttl = table.ttl_of(repo);
        if ttl != 0 && last.saturating_add(ttl) <= now.saturating_add(self.guard) {
            return WriteThrough::Refresh;
        }
        if now >= last.saturating_add(ttl.max(GRANULARITY) / GRANULARITY) {
            return WriteThrough::Flush;
        }
        WriteThrough::Skip
    }

    /// Writes a new entry through under its digest's lock, so that a
    /// leader deleting the digest's bytes either sees the entry or has
    /// finished before the caller looks for the bytes.
    async fn create(&self, entry: &Entry) {
        let held = match self.store.lock(&entry.digest, LockKind::Content).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "could not lock a digest to record its use");
                None
            }
        };
        if let Err(e) = self.store.put_now(entry, false).await {
            self.write_later(entry, e);
        }
        if let Some(held) = held {
            held.release().await;
        }
    }

    /// A write-through failed: the access goes with the next flush.
    fn write_later(&self, entry: &Entry, error: MetadataError) {
        tracing::warn!(error = %error, "could not record an access now; it goes with the next flush");
        let mut inner = lock(&self.inner);
        inner.pending.push(Change::Upsert(entry.clone()));
    }

    /// An access of content a manifest references, if it has an entry in
    /// `repo` (a manifest's access keeps what it names alive). Content being
    /// expired is not waited for: it is going anyway.
    pub async fn access_reference(&self, repo: &RepoKey, digest: &Digest, kind: Kind) {
        if !lock(&self.inner).expiring.contains_key(digest) {
            self.note(repo.as_str(), digest, kind, self.clock.now_secs(), false)
                .await;
        }
    }

    /// Notes in the entry that its link exists in storage, so that
    /// [`Self::access`] reports it linked from then on.
    pub fn mark_linked(&self, repo: &RepoKey, digest: &Digest, kind: Kind) {
        lock(&self.inner)
            .table
            .set_linked(repo.as_str(), digest, kind);
    }

    /// Writes the changes made since the last flush to the store (and,
    /// with a shared store, the leases held long enough to matter).
    pub async fn flush(&self) -> Result<(), MetadataError> {
        let _flushing = self.flushing.lock().await;
        let pending = std::mem::take(&mut lock(&self.inner).pending);
        self.store.persist(pending, self).await?;
        if self.store.shared() {
            self.publish_leases().await?;
        }
        Ok(())
    }

    /// Publishes the digests under a lasting lease, when they changed:
    /// timed ones, and those held longer than the write-through guard
    /// (younger ones are protected by their fresh access time).
    async fn publish_leases(&self) -> Result<(), MetadataError> {
        let live = self.leases.lasting(self.guard);
        if *lock(&self.published) == live {
            return Ok(());
        }
        self.store.publish_leases(&live).await?;
        *lock(&self.published) = live;
        Ok(())
    }

    async fn flush_loop(&self) {
        let mut stopped = self.stopped();
        let mut tick = tokio::time::interval(self.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while stopped.until(tick.tick()).await.is_some() {
            if let Err(e) = self.flush().await {
                tracing::warn!(error = %e, "could not write the scheduler state; retrying");
            }
        }
    }

    async fn expiry_loop(&self) {
        let mut stopped = self.stopped();
        while self.lead(&mut stopped).await {
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
            let mut leader = self.store.leader();
            // Wake early now and then: other replicas add entries.
            let check = self.flush_interval.max(Duration::from_secs(1)) * 10;
            let due = stopped.until(async {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => true,
                    _ = tokio::time::sleep(check), if self.store.shared() => false,
                    _ = leader.wait_for(|l| !*l) => false,
                }
            });
            match due.await {
                None => return,
                Some(false) => continue,
                Some(true) => {}
            }
            if self.expire_due().await.entries > 0 {
                self.expired.notify_one();
            }
        }
    }

    /// Expires every entry due now (but those whose content is leased), and
    /// returns once the expiries that other callers started are finished
    /// too.
    pub async fn expire_due(&self) -> Expired {
        let mut total = Expired::default();
        if self.shortest_ttl.is_none() {
            return total;
        }
        let remote = match self.store.remote_leases().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read other replicas' leases; expiry waits");
                return total;
            }
        };
        loop {
            let batch = self.take_due(&remote);
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
                inner.end_expiry(&entry.digest);
                match freed {
                    Ok(Deleted::Freed(bytes)) => {
                        total.entries += 1;
                        total.bytes_freed += bytes;
                    }
                    Ok(Deleted::Kept(at)) => {
                        // Another replica accessed it: its time, not ours.
                        inner
                            .table
                            .upsert(&entry.repo, &entry.digest, entry.kind, at);
                    }
                    Err(e) => {
                        tracing::warn!(repo = %entry.repo, digest = %entry.digest, error = %e, "expiry failed; trying again later");
                        let ttl = inner.table.ttl_of(&entry.repo);
                        let at = self.clock.now_secs().saturating_sub(ttl) + RETRY;
                        inner
                            .table
                            .upsert(&entry.repo, &entry.digest, entry.kind, at);
                        inner.pending.push(Change::Upsert(Entry {
                            at,
                            ..entry.clone()
                        }));
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
    /// content, so its bytes go too. Entries whose content is leased (here
    /// or in `remote`) are put off.
    fn take_due(&self, remote: &HashSet<Digest>) -> Vec<(Entry, bool)> {
        let now = self.clock.now_secs();
        let mut inner = lock(&self.inner);
        let mut batch = Vec::new();
        while batch.len() < BATCH {
            let Some(entry) = inner.table.pop_due(now) else {
                break;
            };
            if self.leases.is_held(&entry.digest) || remote.contains(&entry.digest) {
                // In use: looked at again later; not journalled, so a
                // restart (which ends every lease) expires it.
                let ttl = inner.table.ttl_of(&entry.repo);
                let at = now.saturating_sub(ttl).saturating_add(RETRY);
                inner
                    .table
                    .upsert(&entry.repo, &entry.digest, entry.kind, at);
                continue;
            }
            batch.push(inner.begin_expiry(entry));
        }
        batch
    }

    /// Deletes what an expired entry kept alive.
    async fn delete(&self, entry: &Entry, data: bool) -> Result<Deleted, MetadataError> {
        if let Some(at) = self.store.remove(entry).await? {
            return Ok(Deleted::Kept(at));
        }
        let digest = entry.digest;
        // Names come from requests or from our own journal, both validated.
        if let Some(repo) = RepoKey::parse(&entry.repo) {
            match entry.kind {
                Kind::Blob => {
                    delete_missing_ok(&*self.driver, &layout::layer_dir(&repo, &digest)).await?
                }
                Kind::Manifest => {
                    delete_missing_ok(&*self.driver, &layout::revision_dir(&repo, &digest)).await?;
                    self.untag(&repo, &digest).await?;
                }
            }
        }
        if !data {
            return Ok(Deleted::Freed(0));
        }
        Ok(Deleted::Freed(self.delete_data(&entry.digest).await?))
    }

    /// Deletes the bytes of `digest` under its lock, unless another replica
    /// references or leases it; the bytes freed.
    async fn delete_data(&self, digest: &Digest) -> Result<u64, MetadataError> {
        let held = self.store.lock(digest, LockKind::Content).await?;
        let deleted = async {
            if self.store.referenced(digest).await?
                || self.store.remote_leases().await?.contains(digest)
            {
                return Ok(0);
            }
            let path = layout::blob_data(&*digest);
            let size = match self.driver.stat_file(&path).await {
                Ok(info) => info.size,
                Err(e) if e.is_not_found() => 0,
                Err(e) => return Err(e.into()),
            };
            delete_missing_ok(&*self.driver, &layout::blob_dir(&*digest)).await?;
            self.forget(digest);
            Ok(size)
        }
        .await;
        held.release().await;
        deleted
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
        for tag in tags.iter().filter_map(StoragePath::last_segment) {
            let tag = &tag;
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

/// What an expiry did to an entry.
enum Deleted {
    /// Expired; the bytes freed.
    Freed(u64),
    /// Another replica accessed it at this time: not expired.
    Kept(Secs),
}

impl SnapshotSource for Scheduler {
    fn entries(&self, from: usize, count: usize) -> (Vec<Entry>, bool) {
        lock(&self.inner).table.slots(from, count)
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
