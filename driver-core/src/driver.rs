//! The [`StorageDriver`] trait and the values it exchanges.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::Result;
use crate::path::StoragePath;

/// A stream of an object's bytes, as returned by [`StorageDriver::reader`].
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// A file opened for reading by [`StorageDriver::open`].
pub struct OpenFile {
    /// The whole file's size in bytes (not what is left after the offset),
    /// of the version being streamed.
    pub size: u64,
    /// The bytes from the offset on, as [`StorageDriver::reader`] yields them.
    pub stream: ByteStream,
    /// The file itself, when the backend keeps it on this machine's
    /// filesystem (driver-fs): the version `stream` reads, open before any
    /// byte is read, for a caller that sends it without copying it through
    /// memory (`sendfile`) instead of polling `stream`. `None` elsewhere.
    pub local: Option<Arc<std::fs::File>>,
}

impl OpenFile {
    /// A file of `size` bytes read through `stream` only (no local file).
    pub fn streamed(size: u64, stream: ByteStream) -> Self {
        Self {
            size,
            stream,
            local: None,
        }
    }
}

impl Debug for OpenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenFile")
            .field("size", &self.size)
            .field("local", &self.local.is_some())
            .finish_non_exhaustive()
    }
}

/// The chunk size readers aim for: large enough for throughput, small enough
/// that a reader holds a bounded amount of memory.
pub const READ_CHUNK: usize = 1 << 20;

/// What [`StorageDriver::stat`] and [`StorageDriver::walk`] report of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// The path described.
    pub path: StoragePath,
    /// Size in bytes; 0 for directories.
    pub size: u64,
    /// Last modification (for a file, its last put or commit). Drivers that
    /// keep no time for directories report [`SystemTime::UNIX_EPOCH`] there.
    pub modified: SystemTime,
    /// Whether the path is a directory (has something beneath it).
    pub is_dir: bool,
}

impl FileInfo {
    /// The info of a directory that keeps no modification time.
    pub fn directory(path: StoragePath) -> Self {
        Self {
            path,
            size: 0,
            modified: SystemTime::UNIX_EPOCH,
            is_dir: true,
        }
    }
}

/// Optional features of a driver. The conformance suite reads them to skip,
/// with a printed reason, the cases a driver does not claim to support.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// [`StorageDriver::redirect_url`] returns URLs clients can fetch.
    pub redirect: bool,
}

/// The HTTP method a redirect URL will be used with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectMethod {
    /// `GET`: the client downloads the object.
    Get,
    /// `HEAD`: the client asks for the object's headers.
    Head,
}

/// Options of [`StorageDriver::walk`].
#[derive(Debug, Clone, Default)]
pub struct WalkOptions {
    /// Report only entries that come after this path in walk order. A hint
    /// for resuming a walk: drivers may use it to skip listing work.
    pub start_after: Option<StoragePath>,
}

/// What a walk callback tells the walk to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkControl {
    /// Go on.
    Continue,
    /// When returned for a directory: do not report anything beneath it.
    /// For a file it means the same as `Continue`.
    SkipDir,
    /// End the walk now; `walk` returns `Ok(())`.
    Stop,
}

/// The callback [`StorageDriver::walk`] calls for each entry.
pub type WalkFn<'a> = dyn FnMut(&FileInfo) -> WalkControl + Send + 'a;

/// The storage contract every backend implements.
///
/// # Model
///
/// Storage is a tree of files addressed by [`StoragePath`]. Directories are
/// implicit: a directory exists exactly while some file lies beneath it, so
/// deleting or moving the last file out of a directory makes the directory
/// (and any parents left empty) disappear. A path is never both a file and a
/// directory; writing a file where a directory is, or beneath a file, fails
/// with [`Error::InvalidPath`](crate::Error::InvalidPath) on drivers that can
/// tell, and callers must not rely on it working on those that cannot (object
/// stores).
///
/// Readers never see a partially written object: `put_content` and
/// [`FileWriter::commit`] replace an object atomically.
///
/// # Errors
///
/// A missing path is [`Error::PathNotFound`](crate::Error::PathNotFound);
/// the root passed where a file is needed is
/// [`Error::InvalidPath`](crate::Error::InvalidPath). Backend failures are
/// [`Error::Backend`](crate::Error::Backend), with `temporary` set when a
/// retry may succeed. Every error names the driver.
#[async_trait]
pub trait StorageDriver: Send + Sync + Debug + 'static {
    /// A short, stable name for logs and errors (`filesystem`, `inmemory`, `s3`).
    fn name(&self) -> &'static str;

    /// The optional features this driver offers.
    fn capabilities(&self) -> Capabilities;

    /// Describes `path`: a file (its size and modification time) or a
    /// directory (size 0). `PathNotFound` when neither exists. The root may
    /// be reported as a directory or as `PathNotFound`.
    async fn stat(&self, path: &StoragePath) -> Result<FileInfo>;

    /// Describes the file at `path`: as [`Self::stat`], except that a
    /// directory (and the root) is `PathNotFound`. For callers that only
    /// ever look for files: where a directory is not an object of its own
    /// (S3), telling one apart from nothing takes a second request, which
    /// this saves when the file is missing. The default asks `stat`.
    async fn stat_file(&self, path: &StoragePath) -> Result<FileInfo> {
        match self.stat(path).await? {
            info if info.is_dir => Err(crate::Error::not_found(self.name(), path)),
            info => Ok(info),
        }
    }

    /// Returns the whole content of the file at `path`. `PathNotFound` when
    /// there is no file there (a directory is not a file).
    async fn get_content(&self, path: &StoragePath) -> Result<Bytes>;

    /// Replaces the file at `path` with `content`, atomically: readers see the
    /// old content or the new, never a mix, and a shorter second put
    /// truncates. Parents are created as needed.
    async fn put_content(&self, path: &StoragePath, content: Bytes) -> Result<()>;

    /// Opens the file at `path` for reading from byte `offset`: its whole
    /// size with the stream of [`Self::reader`], both of one version of the
    /// file. Where a backend answers a read with the size (S3), this is one
    /// request where [`Self::stat`] then [`Self::reader`] make two. Errors
    /// as for [`Self::reader`].
    async fn open(&self, path: &StoragePath, offset: u64) -> Result<OpenFile>;

    /// Streams the file at `path` from byte `offset`. The stream holds a
    /// bounded amount of memory whatever the file size and yields chunks of
    /// at most [`READ_CHUNK`] bytes. `offset` equal to the size gives an empty
    /// stream; past it, `InvalidOffset`; a missing file (or a directory),
    /// `PathNotFound`. The default is [`Self::open`]'s stream.
    async fn reader(&self, path: &StoragePath, offset: u64) -> Result<ByteStream> {
        Ok(self.open(path, offset).await?.stream)
    }

    /// Opens a streaming writer for `path`.
    ///
    /// With `append == false` the writer starts empty; nothing is visible at
    /// `path` until [`FileWriter::commit`], which replaces any existing file.
    /// Several writers for one path may be open at once; each commit replaces
    /// the file whole.
    ///
    /// With `append == true` the writer continues where a previous one left
    /// off: it resumes the most recent writer for `path` that was closed
    /// without commit (even by another process, after a crash), or, when
    /// there is none, it starts from the committed file's content. Its
    /// [`FileWriter::size`] tells where writing resumes. `PathNotFound` when
    /// there is neither.
    async fn writer(&self, path: &StoragePath, append: bool) -> Result<Box<dyn FileWriter>>;

    /// Lists the direct children of the directory `path`, as full paths in
    /// byte order. `PathNotFound` when `path` is not a directory (missing, or
    /// a file). The root always lists, even when storage is empty.
    async fn list(&self, path: &StoragePath) -> Result<Vec<StoragePath>>;

    /// Moves the file `source` to `dest`, replacing any file there and
    /// creating parents. It may be a copy then a delete, but `dest` never
    /// shows partial content. `PathNotFound` when `source` is not a file;
    /// `dest` is then left as it was.
    async fn move_file(&self, source: &StoragePath, dest: &StoragePath) -> Result<()>;

    /// Deletes the file at `path`, or the directory at `path` with everything
    /// beneath it. Siblings sharing a name prefix (`/a` and `/asuffix`) are
    /// never touched. `PathNotFound` when nothing is there.
    async fn delete(&self, path: &StoragePath) -> Result<()>;

    /// Walks everything beneath the directory `from`, calling `visit` for
    /// each file and directory.
    ///
    /// Order: files in byte order of their paths; each directory just before
    /// the first entry beneath it. Equivalently, entries sorted by their path,
    /// with `/` appended to directory paths. With
    /// [`WalkOptions::start_after`], only entries sorting after that path (in
    /// this order) are reported. `visit` steers the walk with
    /// [`WalkControl`]. `PathNotFound` when `from` is not a directory.
    async fn walk(
        &self,
        from: &StoragePath,
        options: &WalkOptions,
        visit: &mut WalkFn<'_>,
    ) -> Result<()>;

    /// An unnamed file on this machine's filesystem, beside the stored
    /// files, for a caller to write a whole file into and then hand to
    /// [`Self::adopt`], so that storing it copies nothing. `None` (the
    /// default) where the backend keeps no local files. The file vanishes
    /// when its last handle closes unless adopted (nothing is left behind
    /// by a crash).
    async fn local_scratch(&self) -> Result<Option<std::fs::File>> {
        Ok(None)
    }

    /// Makes the whole content of `file`, a file [`Self::local_scratch`]
    /// gave, the file at `path`: atomically, as a committed writer, and as
    /// durably as the driver's writes. The caller must not change `file`
    /// afterwards. Fails (and changes nothing) where the driver gives no
    /// scratch files.
    async fn adopt(&self, path: &StoragePath, file: Arc<std::fs::File>) -> Result<()> {
        let _ = file;
        Err(crate::Error::backend(
            self.name(),
            "adopt",
            path,
            false,
            "this driver keeps no local files",
        ))
    }

    /// A URL from which a client can fetch `path` directly, or `None` when the
    /// driver does not redirect (the default). Only drivers whose
    /// [`Capabilities::redirect`] is set return URLs.
    async fn redirect_url(
        &self,
        path: &StoragePath,
        method: RedirectMethod,
    ) -> Result<Option<String>> {
        let _ = (path, method);
        Ok(None)
    }

    /// Removes every uncommitted writer whose last sign of life came before
    /// `before`, with its staged bytes, and returns how many it removed.
    ///
    /// These are writers closed and never resumed, and writers whose process
    /// died (a crash leaves them behind). A writer's sign of life is its
    /// creation or its last close; drivers may also count writes, but need
    /// not, so `before` must lie further back than any live writer's age. An
    /// open writer that is purged fails on its next call; committed files
    /// are never touched. Other temporary leftovers of interrupted
    /// operations that are older than `before` go too.
    async fn purge_writers(&self, before: SystemTime) -> Result<u64>;
}

/// A streaming writer returned by [`StorageDriver::writer`].
///
/// Exactly one of `commit`, `close` and `cancel` ends a writer; any call
/// after that fails with
/// [`Error::WriterFinished`](crate::Error::WriterFinished). Dropping a writer
/// without ending it is like `close`, except that bytes not yet flushed may
/// be lost; [`size`](FileWriter::size) after reopening tells what was kept.
#[async_trait]
pub trait FileWriter: Send {
    /// Appends `data`. Nothing becomes visible at the path.
    async fn write(&mut self, data: Bytes) -> Result<()>;

    /// Bytes written so far, including those of a resumed writer.
    fn size(&self) -> u64;

    /// Flushes and ends the writer without making anything visible; a later
    /// [`StorageDriver::writer`] with `append` resumes from here.
    async fn close(&mut self) -> Result<()>;

    /// Makes everything written visible at the path, atomically replacing
    /// any file there, and ends the writer.
    async fn commit(&mut self) -> Result<()>;

    /// Discards everything written and ends the writer: nothing is visible
    /// and nothing is left to resume.
    async fn cancel(&mut self) -> Result<()>;
}
