//! The repository catalog: the repositories of a namespace that hold
//! manifests in storage, a page at a time. A page walks storage from just
//! after the last name the client saw and stops once full, so a request
//! never lists all of storage (on S3, all of the bucket). Only names that
//! parse as repository names are listed: registry:2's namespace never
//! lists the other namespaces' directories (`_namespaces/...`), wherever
//! the walk starts; and only those the caller keeps (the namespace's
//! lists, [`crate::cache::access::lists`]).

use std::sync::Arc;

use driver_core::{FileInfo, Segment, StorageDriver, WalkControl, WalkOptions};

use super::error::CacheError;
use crate::layout;
use crate::oci::RepoName;

/// The catalog of the repositories in storage.
pub struct Catalog {
    driver: Arc<dyn StorageDriver>,
}

/// Repository names in storage's walk order: component by component.
pub fn walk_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/').cmp(b.split('/'))
}

impl Catalog {
    /// The catalog of `driver`'s content.
    pub fn new(driver: Arc<dyn StorageDriver>) -> Self {
        Self { driver }
    }

    /// Up to `want` repositories of the namespace stored in `dir` (`None`:
    /// registry:2's) that come after `last` in [`walk_order`] and that
    /// `keep` admits, sorted so. `last` is a repository name, so the walk
    /// starts at a repository's place, never inside another namespace's
    /// directory; and a path whose name does not parse as a repository
    /// name (`_namespaces/<ns>/...` under registry:2's namespace) is never
    /// listed.
    pub async fn page(
        &self,
        dir: Option<&Segment>,
        last: Option<&RepoName>,
        want: usize,
        keep: impl Fn(&RepoName) -> bool + Send + Sync,
    ) -> Result<Vec<String>, CacheError> {
        let root = layout::repositories(dir);
        let prefix = root.dir_prefix();
        let start_after = last.map(|last| root.descend(last.segments()));
        let mut repos = Vec::new();
        let mut visit = |info: &FileInfo| {
            if !info.is_dir {
                return WalkControl::Continue;
            }
            match info.path.file_name() {
                Some("_manifests") => {
                    let parent = info.path.parent();
                    let repo = parent.as_ref().and_then(|p| p.as_str().get(prefix.len()..));
                    let listed = |repo: &&str| RepoName::parse(repo).is_ok_and(|name| keep(&name));
                    if let Some(repo) = repo.filter(listed) {
                        if last.is_none_or(|last| walk_order(repo, last.as_str()).is_gt()) {
                            repos.push(repo.to_owned());
                        }
                    }
                    if repos.len() >= want {
                        WalkControl::Stop
                    } else {
                        WalkControl::SkipDir
                    }
                }
                Some(name) if name.starts_with('_') => WalkControl::SkipDir,
                _ => WalkControl::Continue,
            }
        };
        let options = WalkOptions { start_after };
        match self.driver.walk(&root, &options, &mut visit).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        repos.sort_by(|a, b| walk_order(a, b));
        Ok(repos)
    }
}
