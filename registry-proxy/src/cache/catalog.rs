//! The repository catalog: the repositories of a namespace that hold
//! manifests in storage, a page at a time. A page walks storage from just
//! after the last name the client saw and stops once full, so a request
//! never lists all of storage (on S3, all of the bucket).

use std::sync::Arc;

use driver_core::{FileInfo, Segment, StorageDriver, WalkControl, WalkOptions};

use super::error::CacheError;
use crate::layout;

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
    /// registry:2's) that come after `last` in [`walk_order`], sorted so.
    pub async fn page(
        &self,
        dir: Option<&Segment>,
        last: Option<&str>,
        want: usize,
    ) -> Result<Vec<String>, CacheError> {
        let root = layout::repositories(dir);
        let prefix = root.dir_prefix();
        let start_after = last.and_then(|last| root.join(last).ok());
        let mut repos = Vec::new();
        let mut visit = |info: &FileInfo| {
            if !info.is_dir {
                return WalkControl::Continue;
            }
            match info.path.file_name() {
                Some("_manifests") => {
                    if let Some(parent) = info.path.parent() {
                        let repo = &parent.as_str()[prefix.len()..];
                        if last.is_none_or(|last| walk_order(repo, last).is_gt()) {
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
