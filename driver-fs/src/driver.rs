use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use cap_std::fs::{Dir, Metadata, OpenOptions};
use driver_core::{
    Capabilities, Error, FileInfo, FileWriter, FlatWalk, OpenFile, Result, StorageDriver,
    StoragePath, WalkFn, WalkOptions, finish_listing, require_file_path, walk_key,
};
use sha2::{Digest, Sha256};

use crate::config::{FsConfig, Fsync};
use crate::error::io_error;
use crate::reader::stream_file;
use crate::writer::FsWriter;

pub(crate) const NAME: &str = "filesystem";

/// Directory for in-progress writers; `@` cannot appear in a storage path.
const WRITERS_DIR: &str = "@writers";
/// Directory for `put_content`'s write-aside files.
const TMP_DIR: &str = "@tmp";
/// How often a placement is retried when a concurrent delete removes the
/// parent directory it just created.
const PLACE_ATTEMPTS: usize = 16;

/// State shared by the driver, its readers and writers.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) root: Dir,
    pub(crate) fsync: Fsync,
}

/// An entry found while listing a directory.
enum Entry {
    File(FileInfo),
    Dir(StoragePath),
}

impl Entry {
    fn key(&self) -> String {
        match self {
            Entry::File(info) => walk_key(&info.path, false),
            Entry::Dir(path) => walk_key(path, true),
        }
    }

    fn path(&self) -> &StoragePath {
        match self {
            Entry::File(info) => &info.path,
            Entry::Dir(path) => path,
        }
    }
}

/// The path of `path` relative to the root directory.
pub(crate) fn rel(path: &StoragePath) -> &Path {
    if path.is_root() {
        Path::new(".")
    } else {
        Path::new(&path.as_str()[1..])
    }
}

pub(crate) fn nonce() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn modified(meta: &Metadata) -> SystemTime {
    meta.modified()
        .map(|t| t.into_std())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Inner {
    /// Where the in-progress writers of `path` keep their bytes.
    pub(crate) fn staging_dir(path: &StoragePath) -> PathBuf {
        let digest = Sha256::digest(path.as_str().as_bytes());
        Path::new(WRITERS_DIR).join(hex::encode(digest))
    }

    pub(crate) fn sync_file(&self, file: &std::fs::File, path: &StoragePath) -> Result<()> {
        if self.fsync == Fsync::Always {
            file.sync_all().map_err(|e| io_error("fsync", path, e))?;
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path, path: &StoragePath) -> Result<()> {
        if self.fsync == Fsync::Always {
            // A directory opened for reading (not cap-std's O_PATH handle) can be synced.
            let dir = self
                .root
                .open(dir)
                .map_err(|e| io_error("fsync", path, e))?;
            dir.sync_all().map_err(|e| io_error("fsync", path, e))?;
        }
        Ok(())
    }

    /// Metadata of the file at `path`; `PathNotFound` for a directory.
    pub(crate) fn file_metadata(&self, path: &StoragePath) -> Result<Metadata> {
        require_file_path(NAME, path)?;
        let meta = self
            .root
            .metadata(rel(path))
            .map_err(|e| io_error("stat", path, e))?;
        if meta.is_dir() {
            return Err(Error::not_found(NAME, path));
        }
        Ok(meta)
    }

    pub(crate) fn open_file(&self, path: &StoragePath) -> Result<(std::fs::File, u64)> {
        let meta = self.file_metadata(path)?;
        let file = self
            .root
            .open(rel(path))
            .map_err(|e| io_error("open", path, e))?;
        Ok((file.into_std(), meta.len()))
    }

    /// Renames the file `from` (relative to the root) to `to`, creating
    /// parents, then flushes the directory entry.
    pub(crate) fn place(&self, from: &Path, to: &StoragePath) -> Result<()> {
        let parent = to.parent().unwrap_or_else(StoragePath::root);
        let mut attempt = 0;
        loop {
            attempt += 1;
            if !parent.is_root() {
                self.root
                    .create_dir_all(rel(&parent))
                    .map_err(|e| io_error("mkdir", to, e))?;
            }
            match self.root.rename(from, &self.root, rel(to)) {
                Ok(()) => return self.sync_dir(rel(&parent), to),
                // The parent may have been pruned by a concurrent delete: retry.
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < PLACE_ATTEMPTS => {
                    if self.root.metadata(from).is_err() {
                        return Err(io_error("rename", to, e));
                    }
                }
                Err(e) => return Err(io_error("rename", to, e)),
            }
        }
    }

    /// Removes the directories above `path` that its removal left empty.
    pub(crate) fn prune(&self, path: &Path) {
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            if self.root.remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }

    /// The visible entries of directory `dir`, in walk order. Names that are
    /// not valid path segments (the staging areas, `lost+found`) are hidden,
    /// as are symbolic links that lead outside the root.
    fn entries(&self, dir: &StoragePath) -> Result<Vec<Entry>> {
        let read = self.root.read_dir(rel(dir)).map_err(|e| match e.kind() {
            io::ErrorKind::NotADirectory => Error::not_found(NAME, dir),
            _ => io_error("list", dir, e),
        })?;
        let mut entries = Vec::new();
        for entry in read {
            let entry = entry.map_err(|e| io_error("list", dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(path) = dir.join(&name) else { continue };
            let Ok(meta) = self.root.metadata(rel(&path)) else {
                continue;
            };
            entries.push(if meta.is_dir() {
                Entry::Dir(path)
            } else {
                Entry::File(FileInfo {
                    size: meta.len(),
                    modified: modified(&meta),
                    is_dir: false,
                    path,
                })
            });
        }
        entries.sort_by_cached_key(Entry::key);
        Ok(entries)
    }
}

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

/// Runs `f` on a blocking thread with the shared state.
pub(crate) async fn run_blocking<T, F>(inner: &Arc<Inner>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Inner) -> Result<T> + Send + 'static,
{
    let inner = Arc::clone(inner);
    tokio::task::spawn_blocking(move || f(&inner))
        .await
        .map_err(|e| Error::backend(NAME, "blocking task", "", false, e))?
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
        Ok(OpenFile {
            size: len,
            stream: stream_file(file, path, offset, len),
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
}

impl Inner {
    /// Removes staged writer files and temporary puts last modified before
    /// `before`, and the staging directories they leave empty.
    fn purge(&self, before: SystemTime) -> Result<u64> {
        let root = StoragePath::root();
        let root = &root;
        let fail = |op: &'static str| move |e: io::Error| io_error(op, root, e);
        let mut purged = 0;
        let mut dirs = vec![PathBuf::from(TMP_DIR)];
        for entry in self.root.read_dir(WRITERS_DIR).map_err(fail("list"))? {
            dirs.push(Path::new(WRITERS_DIR).join(entry.map_err(fail("list"))?.file_name()));
        }
        for dir in &dirs {
            let entries = match self.root.read_dir(dir) {
                Ok(entries) => entries,
                // Emptied and removed by its last writer meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(fail("list")(e)),
            };
            for entry in entries {
                let entry = entry.map_err(fail("list"))?;
                let file = dir.join(entry.file_name());
                let stale = match entry.metadata() {
                    Ok(meta) => modified(&meta) < before,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                    Err(e) => return Err(fail("stat")(e)),
                };
                if stale {
                    match self.root.remove_file(&file) {
                        Ok(()) => purged += 1,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(fail("delete")(e)),
                    }
                }
            }
            if dir.starts_with(WRITERS_DIR) {
                // Fails harmlessly while a writer still stages there.
                let _ = self.root.remove_dir(dir);
            }
        }
        Ok(purged)
    }
}
