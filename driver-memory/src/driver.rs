//! The [`StorageDriver`] implementation over [`State`].

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use driver_core::{
    Capabilities, Error, FileInfo, FileWriter, FlatWalk, OpenFile, Result, StorageDriver,
    StoragePath, WalkFn, WalkOptions, finish_listing, require_file_path,
};
use futures::stream;

use crate::NAME;
use crate::core::{Entry, Staged, State, lock};
use crate::rope::Rope;
use crate::writer::MemoryWriter;

/// The in-memory driver. Clones share the same storage.
#[derive(Clone, Default)]
pub struct MemoryDriver {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for MemoryDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDriver").finish_non_exhaustive()
    }
}

impl MemoryDriver {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn file_info(path: StoragePath, entry: &Entry) -> FileInfo {
    FileInfo {
        path,
        size: entry.data.len(),
        modified: entry.modified,
        is_dir: false,
    }
}

#[async_trait]
impl StorageDriver for MemoryDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    async fn stat(&self, path: &StoragePath) -> Result<FileInfo> {
        let state = self.lock();
        if let Some(entry) = state.files.get(path.as_str()) {
            return Ok(file_info(path.clone(), entry));
        }
        if path.is_root() || state.is_dir(path) {
            return Ok(FileInfo::directory(path.clone()));
        }
        Err(Error::not_found(NAME, path))
    }

    async fn get_content(&self, path: &StoragePath) -> Result<Bytes> {
        require_file_path(NAME, path)?;
        let state = self.lock();
        state
            .files
            .get(path.as_str())
            .map(|e| e.data.to_bytes())
            .ok_or_else(|| Error::not_found(NAME, path))
    }

    async fn put_content(&self, path: &StoragePath, content: Bytes) -> Result<()> {
        require_file_path(NAME, path)?;
        self.lock().insert(path, Rope::from_bytes(content))
    }

    async fn open(&self, path: &StoragePath, offset: u64) -> Result<OpenFile> {
        require_file_path(NAME, path)?;
        let data = self
            .lock()
            .files
            .get(path.as_str())
            .map(|e| e.data.clone())
            .ok_or_else(|| Error::not_found(NAME, path))?;
        if offset > data.len() {
            return Err(Error::InvalidOffset {
                driver: NAME,
                path: path.to_string(),
                offset,
            });
        }
        Ok(OpenFile::streamed(
            data.len(),
            Box::pin(stream::iter(data.slices_from(offset).into_iter().map(Ok))),
        ))
    }

    async fn writer(&self, path: &StoragePath, append: bool) -> Result<Box<dyn FileWriter>> {
        require_file_path(NAME, path)?;
        let mut state = self.lock();
        let id = state.seq();
        let staged = state.staged.entry(path.as_str().to_owned()).or_default();
        let resumable = staged
            .iter_mut()
            .filter(|s| s.closed_seq.is_some())
            .max_by_key(|s| s.closed_seq);
        let (id, size) = match (append, resumable) {
            (true, Some(s)) => {
                s.closed_seq = None;
                s.touched = SystemTime::now();
                (s.id, s.data.len())
            }
            (true, None) => {
                let Some(entry) = state.files.get(path.as_str()) else {
                    return Err(Error::not_found(NAME, path));
                };
                let data = entry.data.clone();
                let size = data.len();
                state
                    .staged
                    .entry(path.as_str().to_owned())
                    .or_default()
                    .push(Staged {
                        id,
                        data,
                        closed_seq: None,
                        touched: SystemTime::now(),
                    });
                (id, size)
            }
            (false, _) => {
                staged.push(Staged {
                    id,
                    data: Rope::default(),
                    closed_seq: None,
                    touched: SystemTime::now(),
                });
                (id, 0)
            }
        };
        Ok(Box::new(MemoryWriter::new(
            Arc::clone(&self.state),
            path.clone(),
            id,
            size,
        )))
    }

    async fn purge_writers(&self, before: SystemTime) -> Result<u64> {
        let mut state = self.lock();
        let mut purged = 0;
        state.staged.retain(|_, writers| {
            let count = writers.len();
            writers.retain(|w| w.touched >= before);
            purged += (count - writers.len()) as u64;
            !writers.is_empty()
        });
        Ok(purged)
    }

    async fn list(&self, path: &StoragePath) -> Result<Vec<StoragePath>> {
        let state = self.lock();
        let prefix = path.dir_prefix();
        let mut children: Vec<StoragePath> = Vec::new();
        for (key, _) in state.beneath(path) {
            let name = key[prefix.len()..].split('/').next().unwrap_or_default();
            let child = format!("{prefix}{name}");
            if children.last().is_none_or(|last| last.as_str() != child) {
                let child =
                    StoragePath::parse(&child).map_err(|e| Error::from_path_error(NAME, e))?;
                children.push(child);
            }
        }
        finish_listing(NAME, path, children)
    }

    async fn move_file(&self, source: &StoragePath, dest: &StoragePath) -> Result<()> {
        require_file_path(NAME, source)?;
        require_file_path(NAME, dest)?;
        let mut state = self.lock();
        let Some(entry) = state.files.get(source.as_str()).cloned() else {
            return Err(Error::not_found(NAME, source));
        };
        if source == dest {
            return Ok(());
        }
        state.check_placeable(dest)?;
        state.files.remove(source.as_str());
        state.files.insert(dest.as_str().to_owned(), entry);
        Ok(())
    }

    async fn delete(&self, path: &StoragePath) -> Result<()> {
        require_file_path(NAME, path)?;
        let mut state = self.lock();
        if state.files.remove(path.as_str()).is_some() {
            return Ok(());
        }
        let doomed: Vec<String> = state.beneath(path).map(|(k, _)| k.clone()).collect();
        if doomed.is_empty() {
            return Err(Error::not_found(NAME, path));
        }
        for key in doomed {
            state.files.remove(&key);
        }
        Ok(())
    }

    async fn walk(
        &self,
        from: &StoragePath,
        options: &WalkOptions,
        visit: &mut WalkFn<'_>,
    ) -> Result<()> {
        let files: Vec<FileInfo> = {
            let state = self.lock();
            if !from.is_root() && !state.is_dir(from) {
                return Err(Error::not_found(NAME, from));
            }
            state
                .beneath(from)
                .map(|(k, e)| {
                    StoragePath::parse(k)
                        .map(|p| file_info(p, e))
                        .map_err(|err| Error::from_path_error(NAME, err))
                })
                .collect::<Result<_>>()?
        };
        let mut walk = FlatWalk::new(from, options, visit);
        for file in files {
            if !walk.file(file) {
                break;
            }
        }
        Ok(())
    }
}
