//! Purges (`POST /admin/purge`): entries dropped now, as expiry would drop
//! them, chosen by repository, by namespace or everywhere, and by digest.

use super::{Deleted, SCAN_PIECE, Scheduler};
use crate::layout::{self, RepoKey};
use crate::metadata::table::Entry;
use crate::oci::{Digest, Kind};
use crate::sync::lock;

/// Whose entries a purge drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeScope<'a> {
    /// Every repository of every namespace.
    Everywhere,
    /// Every repository of the namespace stored in this directory (`None`:
    /// the one stored where registry:2 keeps repositories); no other
    /// namespace's.
    Namespace(Option<&'a str>),
    /// One repository of one namespace.
    Repository(&'a RepoKey),
}

impl PurgeScope<'_> {
    /// Whether the entries of `repo` (a [`RepoKey`]'s text) are in scope.
    fn admits(&self, repo: &str) -> bool {
        match self {
            Self::Everywhere => true,
            Self::Namespace(dir) => layout::namespace_dir_of(repo) == *dir,
            Self::Repository(key) => key.as_str() == repo,
        }
    }
}

/// What [`Scheduler::purge`] dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Entries removed, with their links.
    pub entries: u64,
    /// Blob bytes deleted (no entry used them any more).
    pub bytes_freed: u64,
    /// Entries another replica used meanwhile, so kept.
    pub kept: u64,
}

impl Scheduler {
    /// Drops entries now, as expiry would (their links and tags; the bytes
    /// once no entry of any repository uses them): those of the
    /// repositories `scope` admits, all of them or those of `digest`.
    /// Entries whose content is being expired are left to that expiry.
    pub async fn purge(&self, scope: PurgeScope<'_>, digest: Option<&Digest>) -> Purged {
        self.drop_entries(
            |r, d, _| scope.admits(r) && digest.is_none_or(|x| x == d),
            |_| false,
        )
        .await
    }

    /// The digests of every manifest entry (each once), read in pieces.
    pub fn manifest_digests(&self) -> Vec<Digest> {
        let mut digests = std::collections::HashSet::new();
        let mut from = 0;
        loop {
            let guard = lock(&self.inner);
            let end = from + SCAN_PIECE;
            digests.extend(
                guard
                    .table
                    .entries_in(from..end)
                    .filter(|(_, _, kind, _)| *kind == Kind::Manifest)
                    .map(|(_, d, _, _)| *d),
            );
            if end >= guard.table.slot_count() {
                break;
            }
            from = end;
        }
        digests.into_iter().collect()
    }

    /// Drops the entries `matches` picks (by repository key, digest and
    /// kind) now, as expiry would: their links and tags, and the bytes once
    /// no entry uses them, unless `leased` says they are in use.
    pub(super) async fn drop_entries(
        &self,
        matches: impl Fn(&str, &Digest, Kind) -> bool,
        leased: impl Fn(&Digest) -> bool,
    ) -> Purged {
        // The table is read in pieces, so requests are not held up.
        let mut batch = Vec::new();
        let mut from = 0;
        loop {
            let mut guard = lock(&self.inner);
            let inner = &mut *guard;
            let end = from + SCAN_PIECE;
            let matching: Vec<Entry> = inner
                .table
                .entries_in(from..end)
                .filter(|(r, d, kind, _)| matches(r, d, *kind))
                .map(|(r, d, kind, at)| Entry {
                    repo: r.into(),
                    digest: *d,
                    kind,
                    at,
                })
                .collect();
            for entry in matching {
                inner.table.remove(&entry.repo, &entry.digest, entry.kind);
                let (entry, unused) = inner.begin_expiry(entry);
                let data = unused && !leased(&entry.digest);
                batch.push((entry, data));
            }
            self.metrics.scheduler_entries(inner.table.len());
            if end >= inner.table.slot_count() {
                break;
            }
            from = end;
        }
        let mut report = Purged::default();
        for (entry, data) in batch {
            let deleted = self.delete(&entry, data).await;
            lock(&self.inner).end_expiry(&entry.digest);
            match deleted {
                Ok(Deleted::Freed(bytes)) => {
                    report.entries += 1;
                    report.bytes_freed += bytes;
                }
                Ok(Deleted::Kept(at)) => {
                    report.kept += 1;
                    lock(&self.inner)
                        .table
                        .upsert(&entry.repo, &entry.digest, entry.kind, at);
                }
                Err(e) => {
                    tracing::warn!(repo = %entry.repo, digest = %entry.digest, error = %e, "purge failed; the entry expires as usual");
                    report.kept += 1;
                }
            }
        }
        self.released.notify_waiters();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::RepoName;

    #[test]
    fn scopes_admit_their_repositories_only() {
        let name = RepoName::parse("team/app").expect("name");
        let dir = driver_core::Segment::parse("a.test").expect("dir");
        let plain = RepoKey::new(None, &name);
        let a = RepoKey::new(Some(&dir), &name);
        let b = RepoKey::new(
            Some(&driver_core::Segment::parse("b.test").expect("dir")),
            &name,
        );
        let everywhere = PurgeScope::Everywhere;
        let in_a = PurgeScope::Namespace(Some("a.test"));
        let in_plain = PurgeScope::Namespace(None);
        let one = PurgeScope::Repository(&a);
        for key in [&plain, &a, &b] {
            assert!(everywhere.admits(key.as_str()));
        }
        assert!(in_a.admits(a.as_str()));
        assert!(!in_a.admits(b.as_str()));
        assert!(!in_a.admits(plain.as_str()));
        assert!(in_plain.admits(plain.as_str()));
        assert!(!in_plain.admits(a.as_str()));
        assert!(one.admits(a.as_str()));
        assert!(!one.admits(b.as_str()));
    }
}
