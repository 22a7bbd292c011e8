//! The driver's shared state: files, staged writers, and their lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use driver_core::{Error, Result, StoragePath};

use crate::NAME;
use crate::rope::Rope;

/// A committed file.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) data: Rope,
    pub(crate) modified: SystemTime,
}

/// Data of a writer that has not committed yet.
pub(crate) struct Staged {
    pub(crate) id: u64,
    pub(crate) data: Rope,
    /// `Some(n)` once closed, `n` ordering closes; only closed writers resume.
    pub(crate) closed_seq: Option<u64>,
    /// The last sign of life: creation, a write or a close.
    pub(crate) touched: SystemTime,
}

#[derive(Default)]
pub(crate) struct State {
    /// Committed files keyed by path; the map's order is walk order for files.
    pub(crate) files: BTreeMap<String, Entry>,
    /// Uncommitted writers per path.
    pub(crate) staged: HashMap<String, Vec<Staged>>,
    pub(crate) next_seq: u64,
}

impl State {
    pub(crate) fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Whether some file lies beneath `path`.
    pub(crate) fn is_dir(&self, path: &StoragePath) -> bool {
        let prefix = path.dir_prefix();
        self.files
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix))
    }

    /// Fails when a file cannot be placed at `path`: a directory is there, or
    /// a file is above it.
    pub(crate) fn check_placeable(&self, path: &StoragePath) -> Result<()> {
        if self.is_dir(path) {
            return Err(Error::invalid_path(NAME, path, "a directory is there"));
        }
        let mut parent = path.parent();
        while let Some(p) = parent {
            if self.files.contains_key(p.as_str()) {
                return Err(Error::invalid_path(NAME, path, format!("{p} is a file")));
            }
            parent = p.parent();
        }
        Ok(())
    }

    pub(crate) fn insert(&mut self, path: &StoragePath, data: Rope) -> Result<()> {
        self.check_placeable(path)?;
        self.files.insert(
            path.as_str().to_owned(),
            Entry {
                data,
                modified: SystemTime::now(),
            },
        );
        Ok(())
    }

    /// Files beneath `dir`, in byte order.
    pub(crate) fn beneath(&self, dir: &StoragePath) -> impl Iterator<Item = (&String, &Entry)> {
        let prefix = dir.dir_prefix();
        self.files
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
    }
}

/// Locks the state; a panic while it was held cannot leave it half-updated
/// (every update is a single map operation), so poisoning is ignored.
pub(crate) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}
