//! The repository link files: a layer link (`_layers/sha256/<hex>/link`)
//! says a blob is in a repository, a revision link
//! (`_manifests/revisions/sha256/<hex>/link`) says a manifest is. They are
//! written only here; a link found or written is noted in the entry, so
//! that the next access knows without asking storage.

use std::sync::Arc;

use driver_core::StorageDriver;

use crate::layout::{self, RepoKey};
use crate::oci::{Digest, Kind};
use crate::scheduler::Tracker;

/// The link files of every repository.
pub struct Links {
    driver: Arc<dyn StorageDriver>,
    tracker: Tracker,
}

impl Links {
    /// The links in `driver`, noted through `tracker`.
    pub fn new(driver: Arc<dyn StorageDriver>, tracker: Tracker) -> Self {
        Self { driver, tracker }
    }

    /// Whether `repo` has `digest` as `kind`: `known` when its entry says
    /// so, else storage is asked (and a link found is noted). The one
    /// place the "linked into this repository" rule is written: for
    /// isolated namespaces and private content it stands for a proof of
    /// access.
    pub async fn linked(&self, repo: &RepoKey, digest: &Digest, kind: Kind, known: bool) -> bool {
        if known {
            return true;
        }
        if self
            .driver
            .stat_file(&layout::link(repo, digest, kind))
            .await
            .is_err()
        {
            return false;
        }
        self.tracker.mark_linked(repo, digest, kind);
        true
    }

    /// Makes sure `repo` links `digest` as `kind`, unless it is `known` to.
    /// A failure is logged: the content is served all the same, and the
    /// next access tries again.
    pub async fn ensure(&self, repo: &RepoKey, digest: &Digest, kind: Kind, known: bool) {
        if known {
            return;
        }
        let link = layout::link(repo, digest, kind);
        if self.driver.stat_file(&link).await.is_err() {
            if let Err(e) = self
                .driver
                .put_content(&link, layout::link_content(digest))
                .await
            {
                tracing::warn!(%repo, %digest, error = %e, "could not link content into its repository");
                return;
            }
        }
        self.tracker.mark_linked(repo, digest, kind);
    }
}
