//! The [`StorageDriver`] implementation over [`Inner`].

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use cap_std::fs::{Dir, OpenOptions};
use driver_core::{
    Capabilities, Error, FileInfo, FileWriter, FlatWalk, OpenFile, Result, StorageDriver,
    StoragePath, WalkFn, WalkOptions, finish_listing, require_file_path,
};

use crate::NAME;
use crate::config::FsConfig;
use crate::core::{Entry, Inner, TMP_DIR, WRITERS_DIR, modified, nonce, rel, run_blocking};
use crate::error::io_error;
use crate::reader::stream_file;
use crate::writer::FsWriter;

/// The filesystem driver. Clones share the same root.
#[derive(Debug, Clone)]
pub struct FsDriver {
    inner: Arc<Inner>,
}

impl FsDriver {
    /// Opens (creating it if needed) the root directory of `config`.
    pub fn open(config: &FsConfig) -> Result<Self> {
        let root_display = config.root_directory.display().to_string();
        let fail = |e: io::Error| Error::backend(NAME, "open", &root_display, false, e);
        std::fs::create_dir_all(&config.root_directory).map_err(fail)?;
        let root = Dir::open_ambient_dir(&config.root_directory, cap_std::ambient_authority())
            .map_err(fail)?;
        for dir in [WRITERS_DIR, TMP_DIR] {
            root.create_dir_all(dir).map_err(fail)?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                fsync: config.fsync,
            }),
        })
    }

    /// Runs blocking filesystem work off the async threads.
    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        run_blocking(&self.inner, f).await
    }
}

#[async_trait]
impl StorageDriver for FsDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    async fn stat(&self, path: &StoragePath) -> Result<FileInfo> {
        let path = path.clone();
        self.run(move |inner| {
            let meta = inner
                .root
                .metadata(rel(&path))
                .map_err(|e| io_error("stat", &path, e))?;
            Ok(FileInfo {
                size: if meta.is_dir() { 0 } else { meta.len() },
                modified: modified(&meta),
                is_dir: meta.is_dir(),
                path,
            })
        })
        .await
    }

    async fn get_content(&self, path: &StoragePath) -> Result<Bytes> {
        let path = path.clone();
        self.run(move |inner| {
            let (mut file, len) = inner.open_file(&path)?;
            let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            io::Read::read_to_end(&mut file, &mut data).map_err(|e| io_error("read", &path, e))?;
            Ok(Bytes::from(data))
        })
        .await
    }

    async fn put_content(&self, path: &StoragePath, content: Bytes) -> Result<()> {
        require_file_path(NAME, path)?;
        let path = path.clone();
        self.run(move |inner| {
            let tmp = Path::new(TMP_DIR).join(nonce());
            let written = (|| {
                let mut options = OpenOptions::new();
                options.write(true).create_new(true);
                let file = inner
                    .root
                    .open_with(&tmp, &options)
                    .map_err(|e| io_error("create", &path, e))?
                    .into_std();
                io::Write::write_all(&mut &file, &content)
                    .map_err(|e| io_error("write", &path, e))?;
                inner.sync_file(&file, &path)?;
                inner.place(&tmp, &path)
            })();
            if written.is_err() {
                let _ = inner.root.remove_file(&tmp);
            }
            written
        })
        .await
    }

    async fn open(&self, path: &StoragePath, offset: u64) -> Result<OpenFile> {
        let path = path.clone();
        let (file, len) = self
            .run({
                let path = path.clone();
                move |inner| inner.open_file(&path)
            })
            .await?;
        if offset > len {
            return Err(Error::InvalidOffset {
                driver: NAME,
                path: path.to_string(),
                offset,
            });
        }
        let file = Arc::new(file);
        Ok(OpenFile {
            size: len,
            stream: stream_file(Arc::clone(&file), path, offset, len),
            local: Some(file),
        })
    }

    async fn writer(&self, path: &StoragePath, append: bool) -> Result<Box<dyn FileWriter>> {
        require_file_path(NAME, path)?;
        let writer = FsWriter::open(Arc::clone(&self.inner), path.clone(), append).await?;
        Ok(Box::new(writer))
    }

    async fn list(&self, path: &StoragePath) -> Result<Vec<StoragePath>> {
        let path = path.clone();
        self.run(move |inner| {
            let children: Vec<StoragePath> = inner
                .entries(&path)?
                .iter()
                .map(|e| e.path().clone())
                .collect();
            finish_listing(NAME, &path, children)
        })
        .await
    }

    async fn move_file(&self, source: &StoragePath, dest: &StoragePath) -> Result<()> {
        require_file_path(NAME, dest)?;
        let (source, dest) = (source.clone(), dest.clone());
        self.run(move |inner| {
            inner.file_metadata(&source)?;
            if source == dest {
                return Ok(());
            }
            inner.place(rel(&source), &dest)?;
            inner.prune(rel(&source));
            Ok(())
        })
        .await
    }

    async fn delete(&self, path: &StoragePath) -> Result<()> {
        require_file_path(NAME, path)?;
        let path = path.clone();
        self.run(move |inner| {
            let meta = inner
                .root
                .symlink_metadata(rel(&path))
                .map_err(|e| io_error("delete", &path, e))?;
            let removed = if meta.is_dir() {
                inner.root.remove_dir_all(rel(&path))
            } else {
                inner.root.remove_file(rel(&path))
            };
            removed.map_err(|e| io_error("delete", &path, e))?;
            inner.prune(rel(&path));
            Ok(())
        })
        .await
    }

    async fn walk(
        &self,
        from: &StoragePath,
        options: &WalkOptions,
        visit: &mut WalkFn<'_>,
    ) -> Result<()> {
        let mut walk = FlatWalk::new(from, options, visit);
        let mut stack = vec![Entry::Dir(from.clone())];
        while let Some(entry) = stack.pop() {
            match entry {
                Entry::File(info) => {
                    if !walk.file(info) {
                        break;
                    }
                }
                Entry::Dir(dir) if &dir == from || walk.wants_dir(&dir) => {
                    let listed = {
                        let dir = dir.clone();
                        self.run(move |inner| inner.entries(&dir)).await
                    };
                    match listed {
                        Ok(entries) => stack.extend(entries.into_iter().rev()),
                        // Removed while we walked: nothing left to report there.
                        Err(e) if e.is_not_found() && &dir != from => {}
                        Err(e) => return Err(e),
                    }
                }
                Entry::Dir(_) => {}
            }
        }
        Ok(())
    }

    async fn purge_writers(&self, before: SystemTime) -> Result<u64> {
        self.run(move |inner| inner.purge(before)).await
    }

    async fn local_scratch(&self) -> Result<Option<std::fs::File>> {
        self.run(Inner::scratch).await
    }

    async fn adopt(&self, path: &StoragePath, file: Arc<std::fs::File>) -> Result<()> {
        let path = path.clone();
        self.run(move |inner| inner.adopt(&path, &file)).await
    }
}
