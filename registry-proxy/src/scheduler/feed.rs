//! Other replicas' changes, from the metadata store's feed: their entries
//! applied to the table, and the tags they purged handed to whatever keeps
//! tags confirmed in memory ([`Scheduler::on_untag`]), so that a purge on
//! one replica holds on every one.

use tokio::sync::mpsc::UnboundedReceiver;

use super::Scheduler;
use crate::layout::RepoKey;
use crate::metadata::Change;
use crate::sync::lock;

/// What is told of a tag (of a repository) another replica purged.
pub(super) type Untagged = Box<dyn Fn(&RepoKey, &str) + Send + Sync>;

impl Scheduler {
    /// Tells `forget` of every tag another replica purges from now on (the
    /// manifest store forgets it confirmed the tag upstream). Set once; a
    /// later call changes nothing.
    pub fn on_untag(&self, forget: impl Fn(&RepoKey, &str) + Send + Sync + 'static) {
        let _ = self.untagged.set(Box::new(forget));
    }

    /// Applies other replicas' changes until the stream ends.
    pub(super) async fn apply_changes(&self, mut changes: UnboundedReceiver<Change>) {
        let mut stopped = self.stopped();
        loop {
            let Some(Some(change)) = stopped.until(changes.recv()).await else {
                return;
            };
            let mut inner = lock(&self.inner);
            match change {
                Change::Upsert(e) => {
                    let newer = inner
                        .table
                        .access_time(&e.repo, &e.digest, e.kind)
                        .is_none_or(|at| at < e.at);
                    if newer {
                        inner.table.upsert(&e.repo, &e.digest, e.kind, e.at);
                        drop(inner);
                        self.accessed_elsewhere(&e.repo, &e.digest, e.kind);
                        inner = lock(&self.inner);
                    }
                }
                Change::Remove { repo, digest, kind } => {
                    inner.table.remove(&repo, &digest, kind);
                }
                Change::Untag { repo, tag } => {
                    drop(inner);
                    let forget = self.untagged.get().zip(RepoKey::parse(&repo));
                    if let Some((forget, repo)) = forget {
                        forget(&repo, &tag);
                    }
                    continue;
                }
            }
            self.metrics.scheduler_entries(inner.table.len());
        }
    }
}
