//! Bounds on stored bytes: the byte budget (`proxy.maxsize`), per-namespace
//! budgets (`upstreams[].maxsize`), the volume's free-space watermarks
//! (`proxy.highwatermark`/`lowwatermark`, filesystem storage) and a full
//! disk. While one is exceeded the leader evicts by value ([`S3Fifo`]),
//! under the digest's content lock, never what is in use
//! ([`Leases::in_use`](crate::metadata::Leases::in_use): a response or fill
//! reading it, a pull that has not fetched it yet) or being expired. For
//! the byte budget, the watermarks and a full disk it deletes blob data
//! only: the links and entries stay, so an evicted blob is a miss that
//! fills again; they expire with their TTL.
//!
//! Accounting: fills reserve their announced size before they start and
//! report what they store; stored hits report what they serve (an
//! in-memory counter bump, nothing written). The walk of storage when a
//! replica first leads, and again every [`RECONCILE_INTERVAL`], makes the
//! account what storage holds (content stored by an earlier run, another
//! replica or registry:2 counted; content deleted behind the cache's back
//! forgotten), ordered by the access times the metadata store keeps and
//! valued by how many repositories link each blob. Other replicas' fills
//! reach the leader through the metadata store's changes (batched, as
//! access times are), never through a request on a warm hit.
//!
//! A blob counts once against `proxy.maxsize`. A namespace's budget counts
//! the blobs its fills stored and, when storage is walked, those it alone
//! links; a hit on a blob another namespace brought in charges nothing to
//! the namespace reading it. Over its budget, a namespace loses its own
//! entries and links of the blobs chosen, and their bytes go only where no
//! entry of another namespace uses them ([`namespace`]).

mod namespace;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Scheduler;
use crate::evict::{Keyed, Records, S3Fifo};
use crate::layout;
use crate::metadata::digests::Digests;
use crate::metadata::{LockKind, MetadataError};
use crate::metrics::EvictReason;
use crate::oci::{Digest, Kind};
use crate::sync::lock;

/// How soon a pass that could not get within bounds is tried again, and
/// how often the watermarks are checked.
const EVICT_RETRY: Duration = Duration::from_secs(10);

/// How soon blobs other replicas are still storing are looked at again.
const SIZE_RETRY: Duration = Duration::from_secs(1);

/// How often the leader walks storage to make the account what it holds.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(3600);

/// The most blobs other replicas stored that wait for their size.
const UNSIZED_MAX: usize = 100_000;

/// Free-space watermarks of the volume the cache stores on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermarks {
    /// A directory on the volume (the filesystem's root directory).
    pub volume: PathBuf,
    /// Eviction starts once the volume is fuller than this, in percent.
    pub high: u8,
    /// And stops once it is no fuller than this, in percent.
    pub low: u8,
}

impl Watermarks {
    /// The bytes to free to bring the volume down to the low watermark,
    /// when it is above the high one.
    fn excess(&self) -> Option<u64> {
        let stats = rustix::fs::statvfs(&self.volume).ok()?;
        let total = stats.f_blocks.saturating_mul(stats.f_frsize);
        let free = stats.f_bavail.saturating_mul(stats.f_frsize);
        let used = total.saturating_sub(free);
        let percent = |p: u8| u128::from(total) * u128::from(p) / 100;
        (u128::from(used) > percent(self.high))
            .then(|| u64::try_from(u128::from(used) - percent(self.low)).unwrap_or(u64::MAX))
    }
}

/// What bounds stored bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bounds {
    /// The most blob bytes stored (`proxy.maxsize`).
    pub max_size: Option<u64>,
    /// Per namespace directory (`""`: registry:2's namespace), its most.
    pub namespaces: HashMap<String, u64>,
    /// The volume's watermarks.
    pub watermarks: Option<Watermarks>,
    /// Whether a write that finds the disk full evicts and tries again
    /// (filesystem storage: the account is kept for that even without a
    /// budget).
    pub when_full: bool,
}

impl Bounds {
    /// Whether anything bounds stored bytes.
    pub fn any(&self) -> bool {
        self.max_size.is_some()
            || !self.namespaces.is_empty()
            || self.watermarks.is_some()
            || self.when_full
    }
}

/// The policies and what they are for.
pub(super) struct Budget {
    /// `proxy.maxsize`, if set. The policy over every stored blob lives in
    /// the scheduler's table, beside the entries' digests.
    max: Option<u64>,
    /// Per namespace directory with a budget, the blobs it links.
    namespaces: HashMap<String, Mutex<S3Fifo<Keyed<Digest>>>>,
    watermarks: Option<Watermarks>,
    /// Bytes fills in flight reserved and have not stored yet.
    reserved: AtomicU64,
    /// Blobs other replicas stored, by a namespace linking them, whose
    /// size the leader has yet to learn.
    to_size: Mutex<HashMap<Digest, String>>,
    /// When storage was last walked.
    reconciled: Mutex<Option<tokio::time::Instant>>,
    /// Woken when stored bytes went over a bound, or blobs need sizing.
    pub(super) wake: tokio::sync::Notify,
}

impl Budget {
    /// An empty account within `bounds`; `None` when nothing bounds it.
    pub(super) fn new(bounds: &Bounds) -> Option<Self> {
        bounds.any().then(|| Self {
            max: bounds.max_size,
            namespaces: bounds
                .namespaces
                .iter()
                .map(|(dir, max)| (dir.clone(), Mutex::new(S3Fifo::new(*max))))
                .collect(),
            watermarks: bounds.watermarks.clone(),
            reserved: AtomicU64::new(0),
            to_size: Mutex::new(HashMap::new()),
            reconciled: Mutex::new(None),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Whether stored and reserved bytes exceed `proxy.maxsize`.
    fn over(&self, policy: &S3Fifo<Digests>) -> bool {
        self.max
            .is_some_and(|max| policy.stored() + self.reserved.load(Ordering::SeqCst) > max)
    }

    /// Whether any bound is exceeded now; `policy` is the table's.
    fn exceeded(&self, policy: &S3Fifo<Digests>) -> bool {
        self.over(policy)
            || self.namespaces.values().any(|p| lock(p).over())
            || self
                .watermarks
                .as_ref()
                .is_some_and(|w| w.excess().is_some())
    }
}

/// What the walk of storage does to a policy, whatever keeps its records.
trait Seeded {
    fn names(&self) -> Vec<Digest>;
    fn forget(&mut self, digest: &Digest);
    fn contains(&self, digest: &Digest) -> bool;
    /// Adds `digest` of `size` bytes, linked `links` times.
    fn seed(&mut self, digest: Digest, size: u64, links: u8);
}

impl<R: Records<Name = Digest>> Seeded for S3Fifo<R> {
    fn names(&self) -> Vec<Digest> {
        S3Fifo::names(self)
    }

    fn forget(&mut self, digest: &Digest) {
        self.remove(digest);
    }

    fn contains(&self, digest: &Digest) -> bool {
        S3Fifo::contains(self, digest)
    }

    fn seed(&mut self, digest: Digest, size: u64, links: u8) {
        self.insert(digest, size);
        for _ in 1..links.min(4) {
            self.access(&digest);
        }
    }
}

/// The namespace directory of a repository key (`""`: registry:2's).
fn namespace_of(repo: &str) -> &str {
    layout::namespace_dir_of(repo).unwrap_or("")
}

/// Room a fill reserved against the byte budget, returned when dropped
/// (once the blob is stored, or the fill failed).
pub struct Reservation {
    scheduler: Option<std::sync::Arc<Scheduler>>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(budget) = self.scheduler.as_ref().and_then(|s| s.budget.as_ref()) {
            let left = budget.reserved.fetch_sub(self.bytes, Ordering::SeqCst) - self.bytes;
            if let Some(s) = &self.scheduler {
                s.metrics.reserved_bytes(left);
            }
        }
    }
}

/// A fill refused room: everything stored that could make room is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoom {
    /// The bytes asked for.
    pub wanted: u64,
    /// The bytes in use or reserved by other fills.
    pub held: u64,
    /// The budget.
    pub budget: u64,
}

/// The account as the running cache keeps it (`/debug/budget`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BudgetView {
    /// Stored blob bytes accounted.
    pub stored: u64,
    /// `proxy.maxsize`, if set.
    pub budget: Option<u64>,
    /// Bytes fills in flight reserved.
    pub reserved: u64,
    /// What eviction would choose next, first first, if nothing were asked
    /// for or in use meanwhile.
    pub next: Vec<NextOut>,
}

/// A blob eviction would choose next.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NextOut {
    /// Its digest.
    pub digest: String,
    /// Its bytes.
    pub size: u64,
}

/// What eviction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Blobs evicted: their data deleted or, for a namespace's budget, that
    /// namespace's entries and links of them dropped.
    pub blobs: u64,
    /// The bytes deleted.
    pub bytes: u64,
}

impl Evicted {
    fn add(&mut self, other: Self) {
        self.blobs += other.blobs;
        self.bytes += other.bytes;
    }
}

impl Scheduler {
    /// Notes that blob `digest` of `size` bytes, linked in `repo`, is
    /// stored and was just served. A hit is not charged to `repo`'s
    /// namespace: it only counts as an access where that namespace's budget
    /// already holds the blob (another namespace may have brought it in).
    pub fn stored(&self, repo: &str, digest: &Digest, size: u64) {
        self.account(namespace_of(repo), digest, size, false);
    }

    /// Notes that a fill through `repo` just stored blob `digest` of `size`
    /// bytes: charged to `repo`'s namespace.
    pub fn filled(&self, repo: &str, digest: &Digest, size: u64) {
        self.account(namespace_of(repo), digest, size, true);
    }

    /// [`Self::stored`] (or, when `charge`, [`Self::filled`]) for a blob
    /// linked in namespace directory `ns`.
    fn account(&self, ns: &str, digest: &Digest, size: u64, charge: bool) {
        let Some(budget) = &self.budget else {
            return;
        };
        let (new, over) = {
            let mut inner = lock(&self.inner);
            let policy = inner.table.budget();
            let new = !policy.access(digest);
            if new {
                policy.insert(*digest, size);
                self.metrics.stored_bytes(policy.stored(), policy.budget());
            }
            (new, new && budget.over(policy))
        };
        let ns_over = budget.namespaces.get(ns).is_some_and(|p| {
            let mut p = lock(p);
            if charge {
                p.insert(*digest, size);
            } else {
                p.access(digest);
            }
            p.over()
        });
        // New bytes on the volume: one statvfs per blob stored.
        let full = new
            && budget
                .watermarks
                .as_ref()
                .is_some_and(|w| w.excess().is_some());
        if over || ns_over || full {
            budget.wake.notify_one();
        }
    }

    /// Per namespace directory (`""`: registry:2's namespace), the stored
    /// blobs its entries name and their bytes, as the account knows them
    /// (a blob linked from several namespaces counts in each); `None`
    /// without an account. Reads the table in pieces, as purge does.
    pub fn namespace_sizes(&self) -> Option<HashMap<String, (u64, u64)>> {
        self.budget.as_ref()?;
        // Namespaces by index, with their blobs and bytes, so that a blob counted is two words, not a
        // string per entry.
        let mut names: Vec<(String, (u64, u64))> = Vec::new();
        let mut counted: std::collections::HashSet<(usize, Digest)> =
            std::collections::HashSet::new();
        let mut from = 0;
        loop {
            let inner = lock(&self.inner);
            let policy = inner.table.budget_ref();
            let end = from + super::SCAN_PIECE;
            for (repo, digest, kind, _) in inner.table.entries_in(from..end) {
                if kind != Kind::Blob {
                    continue;
                }
                let Some(size) = policy.size_of(digest) else {
                    continue;
                };
                let ns = namespace_of(repo);
                let index = names.iter().position(|(n, _)| n == ns).unwrap_or_else(|| {
                    names.push((ns.to_owned(), (0, 0)));
                    names.len() - 1
                });
                if counted.insert((index, *digest)) {
                    let entry = &mut names[index].1;
                    entry.0 += 1;
                    entry.1 += size;
                }
            }
            if end >= inner.table.slot_count() {
                return Some(names.into_iter().collect());
            }
            from = end;
        }
    }

    /// The account, with the next `n` blobs eviction would choose; `None`
    /// without one.
    pub fn budget_view(&self, n: usize) -> Option<BudgetView> {
        let budget = self.budget.as_ref()?;
        let inner = lock(&self.inner);
        let policy = inner.table.budget_ref();
        Some(BudgetView {
            stored: policy.stored(),
            budget: budget.max,
            reserved: budget.reserved.load(Ordering::SeqCst),
            next: policy
                .next_out(n)
                .into_iter()
                .map(|(digest, size)| NextOut {
                    digest: digest.to_string(),
                    size,
                })
                .collect(),
        })
    }

    /// Heap bytes the byte budget's account holds (capacities).
    pub fn budget_allocated_bytes(&self) -> usize {
        self.budget.as_ref().map_or(0, |budget| {
            lock(&self.inner).table.budget_ref().allocated_bytes()
                + budget
                    .namespaces
                    .values()
                    .map(|p| lock(p).allocated_bytes())
                    .sum::<usize>()
        })
    }

    /// Whether a blob of `size` bytes may be stored at all: not larger than
    /// the budget (without one, anything may).
    pub fn fits(&self, size: u64) -> bool {
        self.budget
            .as_ref()
            .and_then(|b| b.max)
            .is_none_or(|max| size <= max)
    }

    /// Reserves room for a fill of `size` bytes until the reservation is
    /// dropped, waking eviction when stored and reserved bytes then exceed
    /// the budget. Refused only when even evicting everything not in use
    /// could not make the room. A blob that does not [`Self::fits`]
    /// reserves nothing: it is not stored.
    pub fn reserve(self: &std::sync::Arc<Self>, size: u64) -> Result<Reservation, NoRoom> {
        let unreserved = Reservation {
            scheduler: None,
            bytes: 0,
        };
        let Some(budget) = &self.budget else {
            return Ok(unreserved);
        };
        let Some(max) = budget.max.filter(|max| size <= *max) else {
            return Ok(unreserved);
        };
        let inner = lock(&self.inner);
        let policy = inner.table.budget_ref();
        let reserved = budget.reserved.load(Ordering::SeqCst);
        if policy.stored() + reserved + size > max {
            let pinned: u64 = self
                .leases
                .using()
                .iter()
                .filter_map(|d| policy.size_of(d))
                .sum();
            if pinned + reserved + size > max {
                return Err(NoRoom {
                    wanted: size,
                    held: pinned + reserved,
                    budget: max,
                });
            }
            budget.wake.notify_one();
        }
        let now = budget.reserved.fetch_add(size, Ordering::SeqCst) + size;
        self.metrics.reserved_bytes(now);
        Ok(Reservation {
            scheduler: Some(std::sync::Arc::clone(self)),
            bytes: size,
        })
    }

    /// Forgets blob `digest`, deleted for another reason (expiry,
    /// collection, found corrupt, evicted).
    pub(super) fn forget(&self, digest: &Digest) {
        if let Some(budget) = &self.budget {
            for p in budget.namespaces.values() {
                lock(p).remove(digest);
            }
            let mut inner = lock(&self.inner);
            let policy = inner.table.budget();
            policy.remove(digest);
            self.metrics.stored_bytes(policy.stored(), policy.budget());
        }
    }

    /// Notes an entry another replica created or accessed (the metadata
    /// store's change): an access of a blob known, or a blob to size (which
    /// that replica's fill stored: charged to the entry's namespace).
    pub(super) fn accessed_elsewhere(&self, repo: &str, digest: &Digest, kind: Kind) {
        let Some(budget) = &self.budget else {
            return;
        };
        if kind != Kind::Blob {
            return;
        }
        let size = {
            let mut inner = lock(&self.inner);
            let policy = inner.table.budget();
            policy.access(digest);
            policy.size_of(digest)
        };
        match size {
            Some(_) => {
                if let Some(p) = budget.namespaces.get(namespace_of(repo)) {
                    lock(p).access(digest);
                }
            }
            // Only the leader evicts; a replica that leads later walks
            // storage first.
            None if *self.store.leader().borrow() => {
                let mut to_size = lock(&budget.to_size);
                if to_size.len() < UNSIZED_MAX {
                    to_size.insert(*digest, namespace_of(repo).to_owned());
                    budget.wake.notify_one();
                }
            }
            None => {}
        }
    }

    /// Learns the sizes of blobs other replicas stored; those not stored
    /// yet (their fill runs) stay while an entry uses them.
    async fn size_unsized(&self, budget: &Budget) {
        let waiting: Vec<(Digest, String)> = lock(&budget.to_size).drain().collect();
        for (digest, ns) in waiting {
            match self.driver.stat_file(&layout::blob_data(&digest)).await {
                Ok(info) if !info.is_dir => self.account(&ns, &digest, info.size, true),
                Err(e) if !e.is_not_found() => {
                    tracing::warn!(%digest, error = %e, "cannot size a blob another replica stored");
                    lock(&budget.to_size).insert(digest, ns);
                }
                _ => {
                    if lock(&self.inner).table.uses(&digest) {
                        lock(&budget.to_size).insert(digest, ns);
                    }
                }
            }
        }
    }

    /// Makes the account what storage holds: every blob's data and size,
    /// ordered by the entries' access times (oldest first) and valued by
    /// how many repositories link it; blobs no longer stored forgotten. A
    /// namespace's budget keeps what it holds and adds what only that
    /// namespace links (who brought in a blob several link is not known).
    pub async fn reconcile(&self) -> Result<u64, MetadataError> {
        let Some(budget) = &self.budget else {
            return Ok(0);
        };
        *lock(&budget.reconciled) = Some(tokio::time::Instant::now());
        let found = super::usage::stored_blobs(&*self.driver).await?;
        // The namespaces with a budget, by index.
        let budgeted: Vec<&str> = budget.namespaces.keys().map(String::as_str).collect();
        // Per stored blob: its last access, the entries linking it, the
        // budgeted namespaces among theirs, and whether a namespace without
        // a budget links it too. The table is read in pieces so requests are
        // not held up.
        let mut seen: HashMap<Digest, (super::Secs, u8, Vec<u16>, bool)> = HashMap::new();
        let mut from = 0;
        loop {
            let inner = lock(&self.inner);
            let end = from + super::SCAN_PIECE;
            for (repo, digest, _, at) in inner.table.entries_in(from..end) {
                if found.contains_key(digest) {
                    let (last, links, namespaces, others) = seen.entry(*digest).or_default();
                    *last = (*last).max(at);
                    *links = links.saturating_add(1);
                    let ns = namespace_of(repo);
                    match budgeted.iter().position(|b| *b == ns) {
                        Some(i) if !namespaces.contains(&(i as u16)) => namespaces.push(i as u16),
                        Some(_) => {}
                        None => *others = true,
                    }
                }
            }
            if end >= inner.table.slot_count() {
                break;
            }
            from = end;
        }
        let mut order: Vec<(&Digest, &u64)> = found.iter().collect();
        order.sort_by_key(|(d, _)| seen.get(*d).map_or(0, |s| s.0));
        // Every blob in the whole account; a namespace's, those it alone
        // links.
        let seed = |ns: Option<u16>, policy: &mut dyn Seeded| {
            for digest in policy.names() {
                if !found.contains_key(&digest) {
                    policy.forget(&digest);
                }
            }
            for (digest, size) in &order {
                let links = seen.get(*digest);
                let counted = ns.is_none_or(|ns| links.is_some_and(|l| l.2 == [ns] && !l.3));
                if counted && !policy.contains(digest) {
                    // Linked by several repositories: worth more (an
                    // access each, as many as the policy counts).
                    policy.seed(**digest, **size, links.map_or(1, |l| l.1));
                }
            }
        };
        for (i, ns) in budgeted.iter().enumerate() {
            seed(Some(i as u16), &mut *lock(&budget.namespaces[*ns]));
        }
        let mut inner = lock(&self.inner);
        seed(None, inner.table.budget());
        let policy = inner.table.budget_ref();
        self.metrics.stored_bytes(policy.stored(), policy.budget());
        if budget.exceeded(policy) {
            budget.wake.notify_one();
        }
        Ok(found.len() as u64)
    }

    /// Runs eviction whenever a bound is exceeded, while this replica
    /// leads. The walk of storage that makes the account right runs when
    /// this replica first leads and every [`RECONCILE_INTERVAL`] after:
    /// only the leader evicts. A pass that leaves a bound exceeded
    /// (everything left in use) is tried again after [`EVICT_RETRY`], since
    /// leases end without a fill.
    pub(super) async fn evict_loop(&self) {
        let Some(budget) = &self.budget else {
            return;
        };
        let mut stopped = self.stopped();
        let mut retry = false;
        while self.lead(&mut stopped).await {
            let last = *lock(&budget.reconciled);
            if last.is_none_or(|at| at.elapsed() >= RECONCILE_INTERVAL) {
                match self.reconcile().await {
                    Ok(blobs) => tracing::info!(blobs, "byte budget: stored blobs accounted"),
                    Err(e) => tracing::warn!(error = %e, "byte budget: cannot walk stored blobs"),
                }
            }
            let sizing = !lock(&budget.to_size).is_empty();
            let poll = retry || sizing || budget.watermarks.is_some();
            let pause = if sizing { SIZE_RETRY } else { EVICT_RETRY };
            let woken = stopped.until(async {
                tokio::select! {
                    () = budget.wake.notified() => {}
                    () = tokio::time::sleep(pause), if poll => {}
                }
            });
            if woken.await.is_none() {
                return;
            }
            self.size_unsized(budget).await;
            let evicted = self.evict_over_bounds().await;
            if evicted.blobs > 0 {
                tracing::info!(
                    blobs = evicted.blobs,
                    bytes = evicted.bytes,
                    "evicted over the byte budget"
                );
            }
            retry = budget.exceeded(lock(&self.inner).table.budget_ref());
        }
    }

    /// Evicts until every bound holds or nothing more may go (everything
    /// left is in use): the byte budget, each namespace's, the watermarks.
    pub async fn evict_over_bounds(&self) -> Evicted {
        let mut done = Evicted::default();
        let Some(budget) = &self.budget else {
            return done;
        };
        done.add(
            self.evict_while(EvictReason::Budget, |_| {
                budget.over(lock(&self.inner).table.budget_ref())
            })
            .await,
        );
        for (ns, policy) in &budget.namespaces {
            done.add(self.evict_namespace(ns, policy).await);
        }
        if let Some(need) = budget.watermarks.as_ref().and_then(Watermarks::excess) {
            done.add(
                self.evict_while(EvictReason::Watermark, |freed| freed < need)
                    .await,
            );
        }
        done
    }

    /// Evicts at least `bytes` now, whoever leads: a write found the disk
    /// full. Returns what went.
    pub async fn make_room(&self, bytes: u64) -> Evicted {
        self.evict_while(EvictReason::Full, |freed| freed < bytes)
            .await
    }

    /// The blobs other replicas lease now; `None` (logged) when the store
    /// cannot tell, and eviction waits.
    pub(super) async fn remote_leases(&self) -> Option<HashSet<Digest>> {
        match self.store.remote_leases().await {
            Ok(remote) => Some(remote),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read other replicas' leases; eviction waits");
                None
            }
        }
    }

    /// Evicts blob data by the policy over every stored blob while
    /// `more(bytes freed so far)` says so.
    async fn evict_while(&self, reason: EvictReason, more: impl Fn(u64) -> bool) -> Evicted {
        let mut done = Evicted::default();
        if self.budget.is_none() || !more(0) {
            return done;
        }
        let Some(remote) = self.remote_leases().await else {
            return done;
        };
        // Put back into the policy: kept.
        let keep =
            |digest: Digest, size: u64| lock(&self.inner).table.budget().insert(digest, size);
        while more(done.bytes) {
            let victim = {
                let mut guard = lock(&self.inner);
                let inner = &mut *guard;
                let expiring = &inner.expiring;
                let in_use = |d: &Digest| {
                    self.leases.in_use(d) || remote.contains(d) || expiring.contains_key(d)
                };
                inner.table.budget().evict(in_use)
            };
            let Some((digest, size)) = victim else {
                tracing::warn!(?reason, "over a bound, and everything stored is in use");
                break;
            };
            match self.evict_data(&digest).await {
                Ok(Some(freed)) => {
                    done.blobs += 1;
                    done.bytes += freed;
                    self.forget(&digest);
                    self.metrics.evicted(reason, freed);
                }
                // Leased meanwhile: stays, looked at again later.
                Ok(None) => keep(digest, size),
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "eviction failed; kept");
                    keep(digest, size);
                    break;
                }
            }
        }
        done
    }

    /// Deletes the data of `digest` under its content lock: the bytes
    /// freed, or `None` when it was leased meanwhile (kept).
    async fn evict_data(&self, digest: &Digest) -> Result<Option<u64>, MetadataError> {
        let held = self.store.lock(digest, LockKind::Content).await?;
        let deleted = async {
            if self.leases.in_use(digest) || self.store.remote_leases().await?.contains(digest) {
                return Ok(None);
            }
            let size = match self.driver.stat_file(&layout::blob_data(digest)).await {
                Ok(info) => info.size,
                Err(e) if e.is_not_found() => 0,
                Err(e) => return Err(e.into()),
            };
            super::delete_missing_ok(&*self.driver, &layout::blob_dir(digest)).await?;
            Ok(Some(size))
        }
        .await;
        held.release().await;
        deleted
    }
}
