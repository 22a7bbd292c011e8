//! State shared by the driver, its readers and writers: the root
//! directory, placement of finished files, listing, and the blocking pool.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use cap_std::fs::{Dir, Metadata};
use driver_core::{Error, FileInfo, Result, StoragePath, require_file_path, walk_key};
use sha2::{Digest, Sha256};

use crate::NAME;
use crate::config::Fsync;
use crate::error::io_error;

/// Directory for in-progress writers; `@` cannot appear in a storage path.
pub(crate) const WRITERS_DIR: &str = "@writers";
/// Directory for `put_content`'s write-aside files.
pub(crate) const TMP_DIR: &str = "@tmp";
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
pub(crate) enum Entry {
    File(FileInfo),
    Dir(StoragePath),
}

impl Entry {
    pub(crate) fn key(&self) -> String {
        match self {
            Entry::File(info) => walk_key(&info.path, false),
            Entry::Dir(path) => walk_key(path, true),
        }
    }

    pub(crate) fn path(&self) -> &StoragePath {
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

pub(crate) fn modified(meta: &Metadata) -> SystemTime {
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

    /// Opens the file at `path`, with its size: the size of the file
    /// opened (`fstat`), so that both are of one version even while the
    /// path is replaced.
    pub(crate) fn open_file(&self, path: &StoragePath) -> Result<(std::fs::File, u64)> {
        require_file_path(NAME, path)?;
        let file = self
            .root
            .open(rel(path))
            .map_err(|e| io_error("open", path, e))?;
        let meta = file.metadata().map_err(|e| io_error("stat", path, e))?;
        if meta.is_dir() {
            return Err(Error::not_found(NAME, path));
        }
        Ok((file.into_std(), meta.len()))
    }

    /// An unnamed file (`O_TMPFILE`) in the write-aside directory: gone
    /// when its last handle closes unless [`Self::adopt`]ed. `None` where
    /// the filesystem cannot make one.
    pub(crate) fn scratch(&self) -> Result<Option<std::fs::File>> {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
        match rustix::fs::openat(&self.root, TMP_DIR, flags, Mode::from_raw_mode(0o644)) {
            Ok(fd) => Ok(Some(std::fs::File::from(fd))),
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR) => Ok(None),
            Err(e) => Err(io_error("scratch", StoragePath::root(), e.into())),
        }
    }

    /// Makes the unnamed `file` the file at `path`: synced (per the fsync
    /// policy), linked into the write-aside directory, then renamed into
    /// place as a committed writer is.
    pub(crate) fn adopt(&self, path: &StoragePath, file: &std::fs::File) -> Result<()> {
        use std::os::fd::AsRawFd as _;
        require_file_path(NAME, path)?;
        self.sync_file(file, path)?;
        let name = Path::new(TMP_DIR).join(nonce());
        // Through /proc: linking an unnamed file by its descriptor alone
        // (AT_EMPTY_PATH) needs a capability this process may lack.
        let by_fd = format!("/proc/self/fd/{}", file.as_raw_fd());
        rustix::fs::linkat(
            rustix::fs::CWD,
            by_fd.as_str(),
            &self.root,
            &name,
            rustix::fs::AtFlags::SYMLINK_FOLLOW,
        )
        .map_err(|e| io_error("link", path, e.into()))?;
        if let Err(e) = self.place(&name, path) {
            let _ = self.root.remove_file(&name);
            return Err(e);
        }
        Ok(())
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
    pub(crate) fn entries(&self, dir: &StoragePath) -> Result<Vec<Entry>> {
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

impl Inner {
    /// Removes staged writer files and temporary puts last modified before
    /// `before`, and the staging directories they leave empty.
    pub(crate) fn purge(&self, before: SystemTime) -> Result<u64> {
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
