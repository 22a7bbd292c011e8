use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use cap_std::fs::OpenOptions;
use driver_core::{FileWriter, Result, StoragePath, WriterState};

use crate::NAME;
use crate::core::{Inner, nonce, run_blocking};
use crate::error::io_error;

/// Bytes buffered in memory before a write to the staged file.
const WRITE_BUFFER: usize = 1 << 20;

/// A writer staging its bytes in `<root>/@writers/<hash of path>/<nonce>`.
pub(crate) struct FsWriter {
    inner: Arc<Inner>,
    path: StoragePath,
    /// The staged file, relative to the root.
    staged: PathBuf,
    file: Arc<std::fs::File>,
    pending: Vec<u8>,
    size: u64,
    state: WriterState,
}

fn append_options(create_new: bool) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.append(true);
    if create_new {
        options.create_new(true);
    }
    options
}

impl FsWriter {
    /// Opens a writer for `path`: a fresh staged file, or with `append` the
    /// most recently modified staged file of `path`, or a staged copy of the
    /// committed file.
    pub(crate) async fn open(inner: Arc<Inner>, path: StoragePath, append: bool) -> Result<Self> {
        let (staged, file, size) = run_blocking(&inner, {
            let path = path.clone();
            move |inner| {
                let dir = Inner::staging_dir(&path);
                inner
                    .root
                    .create_dir_all(&dir)
                    .map_err(|e| io_error("mkdir", &path, e))?;
                if append {
                    if let Some((_, latest)) = latest_staged(inner, &dir, &path, None)? {
                        let file = inner
                            .root
                            .open_with(&latest, &append_options(false))
                            .map_err(|e| io_error("open", &path, e))?
                            .into_std();
                        let size = file
                            .metadata()
                            .map_err(|e| io_error("stat", &path, e))?
                            .len();
                        return Ok((latest, file, size));
                    }
                }
                let staged = dir.join(nonce());
                // Another writer of the path that ends removes the staging
                // directory once it looks empty, possibly between the mkdir
                // above and this create: make it again then.
                let mut attempts = 0;
                let file = loop {
                    match inner.root.open_with(&staged, &append_options(true)) {
                        Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 8 => {
                            attempts += 1;
                            inner
                                .root
                                .create_dir_all(&dir)
                                .map_err(|e| io_error("mkdir", &path, e))?;
                        }
                        opened => break opened.map_err(|e| io_error("create", &path, e))?,
                    }
                }
                .into_std();
                if !append {
                    return Ok((staged, file, 0));
                }
                // Continue from the committed file, or fail as not found.
                let copied = inner.open_file(&path).and_then(|(mut committed, _)| {
                    io::copy(&mut committed, &mut &file).map_err(|e| io_error("copy", &path, e))
                });
                match copied {
                    Ok(size) => Ok((staged, file, size)),
                    Err(e) => {
                        let _ = inner.root.remove_file(&staged);
                        let _ = inner.root.remove_dir(&dir);
                        Err(e)
                    }
                }
            }
        })
        .await?;
        Ok(Self {
            inner,
            path,
            staged,
            file: Arc::new(file),
            pending: Vec::new(),
            size,
            state: WriterState::Open,
        })
    }

    /// Writes `pending` then `extra` to the staged file.
    async fn write_through(&mut self, extra: Bytes) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let file = Arc::clone(&self.file);
        let path = self.path.clone();
        self.pending = run_blocking(&self.inner, move |_| {
            let mut out = &*file;
            out.write_all(&pending)
                .and_then(|()| out.write_all(&extra))
                .map_err(|e| io_error("write", &path, e))?;
            let mut pending = pending;
            pending.clear();
            Ok(pending)
        })
        .await?;
        Ok(())
    }

    /// Flushes buffered bytes and, per the fsync policy, syncs the file.
    /// With `mark_latest` (a close), the file's modification time is also
    /// set after every other staged file's of the path, even within the
    /// clock's granularity, so that a resume picks this writer's bytes.
    async fn flush_and_sync(&mut self, mark_latest: bool) -> Result<()> {
        self.write_through(Bytes::new()).await?;
        let file = Arc::clone(&self.file);
        let (path, staged) = (self.path.clone(), self.staged.clone());
        run_blocking(&self.inner, move |inner| {
            if mark_latest {
                let dir = staged.parent().unwrap_or(std::path::Path::new(""));
                let now = SystemTime::now();
                let mark = match latest_staged(inner, dir, &path, Some(&staged))? {
                    Some((other, _)) => now.max(other + Duration::from_micros(1)),
                    None => now,
                };
                file.set_modified(mark)
                    .map_err(|e| io_error("touch", &path, e))?;
            }
            inner.sync_file(&file, &path)
        })
        .await
    }

    /// Removes the staged file (if `remove_file`) and the staging directory
    /// of the path when no other writer uses it.
    fn cleanup(inner: &Inner, staged: &std::path::Path, remove_file: bool) {
        if remove_file {
            let _ = inner.root.remove_file(staged);
        }
        if let Some(dir) = staged.parent() {
            let _ = inner.root.remove_dir(dir);
        }
    }
}

/// The most recently modified staged file in `dir` other than `except`, with
/// its modification time, if any.
fn latest_staged(
    inner: &Inner,
    dir: &std::path::Path,
    path: &StoragePath,
    except: Option<&std::path::Path>,
) -> Result<Option<(SystemTime, PathBuf)>> {
    let mut best: Option<(SystemTime, PathBuf)> = None;
    for entry in inner
        .root
        .read_dir(dir)
        .map_err(|e| io_error("list", path, e))?
    {
        let entry = entry.map_err(|e| io_error("list", path, e))?;
        let meta = entry.metadata().map_err(|e| io_error("stat", path, e))?;
        let modified = meta
            .modified()
            .map(|t| t.into_std())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let candidate = dir.join(entry.file_name());
        if except == Some(candidate.as_path()) {
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|(t, p)| (modified, &candidate) > (*t, p))
        {
            best = Some((modified, candidate));
        }
    }
    Ok(best)
}

#[async_trait]
impl FileWriter for FsWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.state.check_open(NAME, &self.path)?;
        self.size += data.len() as u64;
        if self.pending.len() + data.len() < WRITE_BUFFER {
            self.pending.extend_from_slice(&data);
            return Ok(());
        }
        self.write_through(data).await
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn close(&mut self) -> Result<()> {
        self.state.check_open(NAME, &self.path)?;
        self.flush_and_sync(true).await?;
        self.state = WriterState::Closed;
        Ok(())
    }

    async fn commit(&mut self) -> Result<()> {
        self.state.check_open(NAME, &self.path)?;
        self.flush_and_sync(false).await?;
        let (staged, path) = (self.staged.clone(), self.path.clone());
        run_blocking(&self.inner, move |inner| {
            inner.place(&staged, &path)?;
            Self::cleanup(inner, &staged, false);
            Ok(())
        })
        .await?;
        self.state = WriterState::Committed;
        Ok(())
    }

    async fn cancel(&mut self) -> Result<()> {
        self.state.check_open(NAME, &self.path)?;
        self.state = WriterState::Cancelled;
        self.pending = Vec::new();
        let staged = self.staged.clone();
        run_blocking(&self.inner, move |inner| {
            Self::cleanup(inner, &staged, true);
            Ok(())
        })
        .await
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        // Dropped without an end: behave like close as far as a synchronous
        // write of the (at most one buffer of) pending bytes allows.
        if self.state == WriterState::Open && !self.pending.is_empty() {
            let _ = (&*self.file).write_all(&self.pending);
        }
    }
}
