//! A namespace's budget (`upstreams[].maxsize`) evicts that namespace's use
//! of blobs, not the blobs: its entries and links of the blobs chosen go,
//! as a purge would drop them, and their bytes only where no entry of any
//! other namespace (here or on another replica) uses them and nothing
//! leases them. What one namespace reads of another's content is not
//! charged to it ([`Scheduler::stored`]), so requests through one
//! namespace can neither push another's content out nor delete it.

use std::collections::HashSet;
use std::sync::Mutex;

use super::{Evicted, namespace_of};
use crate::evict::{Keyed, S3Fifo};
use crate::metrics::EvictReason;
use crate::oci::{Digest, Kind};
use crate::scheduler::Scheduler;
use crate::sync::lock;

impl Scheduler {
    /// Brings namespace directory `ns` back within its budget `policy`: the
    /// blobs chosen by value, none in use or being expired, lose the
    /// namespace's entries and links; bytes no entry uses any more go.
    pub(super) async fn evict_namespace(
        &self,
        ns: &str,
        policy: &Mutex<S3Fifo<Keyed<Digest>>>,
    ) -> Evicted {
        let mut done = Evicted::default();
        if !lock(policy).over() {
            return done;
        }
        let Some(remote) = self.remote_leases().await else {
            return done;
        };
        let leased = |d: &Digest| self.leases.in_use(d) || remote.contains(d);
        let mut chosen = HashSet::new();
        loop {
            let inner = lock(&self.inner);
            let mut held = lock(policy);
            if !held.over() {
                break;
            }
            match held.evict(|d| leased(d) || inner.expiring.contains_key(d)) {
                Some((digest, _)) => {
                    chosen.insert(digest);
                }
                None => {
                    tracing::warn!(
                        namespace = ns,
                        "over the namespace's budget, and everything it holds is in use"
                    );
                    break;
                }
            }
        }
        if chosen.is_empty() {
            return done;
        }
        let dropped = self
            .drop_entries(
                |repo, digest, kind| {
                    kind == Kind::Blob && namespace_of(repo) == ns && chosen.contains(digest)
                },
                &leased,
            )
            .await;
        done.blobs = chosen.len() as u64;
        done.bytes = dropped.bytes_freed;
        // One eviction per blob; the bytes freed counted with the first.
        let mut bytes = dropped.bytes_freed;
        for _ in &chosen {
            self.metrics
                .evicted(EvictReason::Namespace, std::mem::take(&mut bytes));
        }
        done
    }
}
