//! The byte budget (`proxy.maxsize`): stored blob bytes are accounted per
//! digest, and while they exceed the budget the leader evicts by value
//! ([`S3Fifo`]): blob data only, under the digest's content lock, never
//! what is in use ([`Leases::in_use`](crate::metadata::Leases::in_use): a
//! response or fill reading it, a pull that has not fetched it yet) or
//! being expired. The links and entries stay, so an
//! evicted blob is a miss that fills again; they expire with their TTL.
//!
//! Accounting: fills report what they store and stored hits what they
//! serve (an in-memory counter bump, nothing written); at start a walk of
//! storage's blob data seeds the sizes, so content stored before (by an
//! earlier run, another replica, or registry:2) and content deleted behind
//! the cache's back are counted right.

use std::collections::HashSet;
use std::sync::Mutex;

use super::Scheduler;
use super::evict::S3Fifo;
use crate::layout;
use crate::metadata::{LockKind, MetadataError};
use crate::oci::Digest;
use crate::sync::lock;

/// How soon a pass that could not get within the budget is tried again.
const EVICT_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// The policy and what it is for.
pub(super) struct Budget {
    policy: Mutex<S3Fifo<Digest>>,
    /// Woken when stored bytes went over the budget.
    pub(super) over: tokio::sync::Notify,
}

impl Budget {
    /// An empty account of `bytes`.
    pub(super) fn new(bytes: u64) -> Self {
        Self {
            policy: Mutex::new(S3Fifo::new(bytes)),
            over: tokio::sync::Notify::new(),
        }
    }
}

/// What one eviction pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Blobs whose data was deleted.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Scheduler {
    /// Notes that blob `digest` of `size` bytes is stored and was just
    /// served or filled.
    pub fn stored(&self, digest: &Digest, size: u64) {
        let Some(budget) = &self.budget else {
            return;
        };
        let mut policy = lock(&budget.policy);
        if policy.access(digest) {
            return;
        }
        policy.insert(*digest, size);
        self.metrics.stored_bytes(policy.stored(), policy.budget());
        if policy.over() {
            budget.over.notify_one();
        }
    }

    /// Whether a blob of `size` bytes may be stored at all: not larger than
    /// the budget (without one, anything may).
    pub fn fits(&self, size: u64) -> bool {
        self.budget
            .as_ref()
            .is_none_or(|budget| size <= lock(&budget.policy).budget())
    }

    /// Forgets blob `digest`, deleted for another reason (expiry,
    /// collection, found corrupt).
    pub(super) fn forget(&self, digest: &Digest) {
        if let Some(budget) = &self.budget {
            let mut policy = lock(&budget.policy);
            policy.remove(digest);
            self.metrics.stored_bytes(policy.stored(), policy.budget());
        }
    }

    /// Seeds the account from storage: every blob's data and its size.
    pub(super) async fn reconcile(&self) -> Result<u64, MetadataError> {
        let Some(budget) = &self.budget else {
            return Ok(0);
        };
        let found = super::usage::stored_blobs(&*self.driver).await?;
        let mut policy = lock(&budget.policy);
        for (digest, size) in &found {
            if !policy.contains(digest) {
                policy.insert(*digest, *size);
            }
        }
        self.metrics.stored_bytes(policy.stored(), policy.budget());
        if policy.over() {
            budget.over.notify_one();
        }
        Ok(found.len() as u64)
    }

    /// Runs eviction passes whenever stored bytes go over the budget, while
    /// this replica leads. The walk of storage that seeds the account runs
    /// once this replica first leads: only the leader evicts. A pass that
    /// leaves the account over the budget (everything left in use) is tried
    /// again after [`EVICT_RETRY`], since leases end without a fill.
    pub(super) async fn evict_loop(&self) {
        let Some(budget) = &self.budget else {
            return;
        };
        let mut stopped = self.stopped();
        let mut seeded = false;
        let mut still_over = false;
        while self.lead(&mut stopped).await {
            if !seeded {
                seeded = true;
                match self.reconcile().await {
                    Ok(blobs) => tracing::info!(blobs, "byte budget: stored blobs accounted"),
                    Err(e) => tracing::warn!(error = %e, "byte budget: cannot walk stored blobs"),
                }
            }
            let woken = stopped.until(async {
                tokio::select! {
                    () = budget.over.notified() => {}
                    () = tokio::time::sleep(EVICT_RETRY), if still_over => {}
                }
            });
            if woken.await.is_none() {
                return;
            }
            let evicted = self.evict_over_budget().await;
            if evicted.blobs > 0 {
                tracing::info!(
                    blobs = evicted.blobs,
                    bytes = evicted.bytes,
                    "evicted over the byte budget"
                );
            }
            still_over = lock(&budget.policy).over();
        }
    }

    /// Evicts until stored bytes are within the budget or nothing more may
    /// go (everything left is in use).
    pub async fn evict_over_budget(&self) -> Evicted {
        let mut done = Evicted::default();
        let Some(budget) = &self.budget else {
            return done;
        };
        let remote = match self.store.remote_leases().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read other replicas' leases; eviction waits");
                return done;
            }
        };
        loop {
            let victim = {
                let expiring: HashSet<Digest> =
                    lock(&self.inner).expiring.keys().copied().collect();
                let mut policy = lock(&budget.policy);
                if !policy.over() {
                    break;
                }
                policy
                    .evict(|d| self.leases.in_use(d) || remote.contains(d) || expiring.contains(d))
            };
            let Some((digest, size)) = victim else {
                tracing::warn!("over the byte budget, and everything stored is in use");
                break;
            };
            match self.evict_data(&digest).await {
                Ok(Some(freed)) => {
                    done.blobs += 1;
                    done.bytes += freed;
                    self.metrics.evicted(freed);
                }
                Ok(None) => {
                    // Leased meanwhile: stays, looked at again later.
                    lock(&budget.policy).insert(digest, size);
                }
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "eviction failed; kept");
                    lock(&budget.policy).insert(digest, size);
                    break;
                }
            }
        }
        let policy = lock(&budget.policy);
        self.metrics.stored_bytes(policy.stored(), policy.budget());
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
            let size = match self.driver.stat(&layout::blob_data(digest)).await {
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
