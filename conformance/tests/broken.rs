//! The suite must catch faulty drivers. Each test plants one fault in a
//! wrapper around the in-memory driver, runs every case, and requires that
//! the cases aimed at that fault fail (and that the clean wrapper passes all).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use conformance::{Settings, failing_cases};
use driver_core::{
    Capabilities, Error, FileInfo, FileWriter, OpenFile, Result, StorageDriver, StoragePath,
    WalkControl, WalkFn, WalkOptions,
};
use driver_memory::MemoryDriver;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    DeleteNotRecursive,
    ListGrandchildren,
    VisibleBeforeCommit,
    CancelKeepsData,
    PutAppends,
    ReaderIgnoresOffset,
    MoveKeepsExistingDest,
    DeleteByStringPrefix,
    WalkIgnoresSkip,
    NonAtomicCommit,
    ResumedSizeZero,
    StatDirAsFile,
    StatFileFindsDirectories,
    MissingIsBackendError,
    PastEndReadsEmpty,
    OpenSizeIsRest,
    PurgeIgnoresCutoff,
}

#[derive(Debug)]
struct Broken {
    inner: MemoryDriver,
    fault: Fault,
    /// Counts reads, so that a non-atomic commit can keep its partial state
    /// visible until readers have had a chance to see it.
    reads: Arc<AtomicU64>,
}

impl Broken {
    fn has(&self, fault: Fault) -> bool {
        self.fault == fault
    }
}

#[async_trait]
impl StorageDriver for Broken {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn stat(&self, path: &StoragePath) -> Result<FileInfo> {
        let mut info = self.inner.stat(path).await?;
        if self.has(Fault::StatDirAsFile) {
            info.is_dir = false;
        }
        Ok(info)
    }

    async fn stat_file(&self, path: &StoragePath) -> Result<FileInfo> {
        if self.has(Fault::StatFileFindsDirectories) {
            return self.inner.stat(path).await;
        }
        self.inner.stat_file(path).await
    }

    async fn get_content(&self, path: &StoragePath) -> Result<Bytes> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        match self.inner.get_content(path).await {
            Err(e) if e.is_not_found() && self.has(Fault::MissingIsBackendError) => {
                Err(Error::backend(self.name(), "get", path, false, "lost"))
            }
            other => other,
        }
    }

    async fn put_content(&self, path: &StoragePath, content: Bytes) -> Result<()> {
        if self.has(Fault::PutAppends) {
            if let Ok(old) = self.inner.get_content(path).await {
                return self
                    .inner
                    .put_content(path, [old, content].concat().into())
                    .await;
            }
        }
        self.inner.put_content(path, content).await
    }

    async fn open(&self, path: &StoragePath, offset: u64) -> Result<OpenFile> {
        if self.has(Fault::ReaderIgnoresOffset) {
            return self.inner.open(path, 0).await;
        }
        if self.has(Fault::PastEndReadsEmpty) {
            let size = self.inner.stat(path).await?.size;
            return self.inner.open(path, offset.min(size)).await;
        }
        let mut file = self.inner.open(path, offset).await?;
        if self.has(Fault::OpenSizeIsRest) {
            file.size -= offset;
        }
        Ok(file)
    }

    async fn writer(&self, path: &StoragePath, append: bool) -> Result<Box<dyn FileWriter>> {
        Ok(Box::new(BrokenWriter {
            inner: self.inner.writer(path, append).await?,
            driver: self.inner.clone(),
            path: path.clone(),
            fault: self.fault,
            written: Vec::new(),
            reads: Arc::clone(&self.reads),
            ended: false,
        }))
    }

    async fn list(&self, path: &StoragePath) -> Result<Vec<StoragePath>> {
        if !self.has(Fault::ListGrandchildren) {
            return self.inner.list(path).await;
        }
        let mut all = Vec::new();
        let mut visit = |info: &FileInfo| {
            all.push(info.path.clone());
            WalkControl::Continue
        };
        self.inner
            .walk(path, &WalkOptions::default(), &mut visit)
            .await?;
        Ok(all)
    }

    async fn move_file(&self, source: &StoragePath, dest: &StoragePath) -> Result<()> {
        if self.has(Fault::MoveKeepsExistingDest) && self.inner.stat(dest).await.is_ok() {
            self.inner.stat(source).await?;
            return self.inner.delete(source).await;
        }
        self.inner.move_file(source, dest).await
    }

    async fn delete(&self, path: &StoragePath) -> Result<()> {
        if self.has(Fault::DeleteNotRecursive) && self.inner.stat(path).await?.is_dir {
            for child in self.inner.list(path).await? {
                if !self.inner.stat(&child).await?.is_dir {
                    self.inner.delete(&child).await?;
                }
            }
            return Ok(());
        }
        if self.has(Fault::DeleteByStringPrefix) {
            if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
                for sibling in self.inner.list(&parent).await.unwrap_or_default() {
                    if sibling != *path && sibling.file_name().is_some_and(|n| n.starts_with(name))
                    {
                        self.inner.delete(&sibling).await?;
                    }
                }
            }
        }
        self.inner.delete(path).await
    }

    async fn purge_writers(&self, before: SystemTime) -> Result<u64> {
        let before = if self.has(Fault::PurgeIgnoresCutoff) {
            SystemTime::now() + Duration::from_secs(86_400)
        } else {
            before
        };
        self.inner.purge_writers(before).await
    }

    async fn walk(
        &self,
        from: &StoragePath,
        options: &WalkOptions,
        visit: &mut WalkFn<'_>,
    ) -> Result<()> {
        if !self.has(Fault::WalkIgnoresSkip) {
            return self.inner.walk(from, options, visit).await;
        }
        let mut ignoring = |info: &FileInfo| match visit(info) {
            WalkControl::SkipDir => WalkControl::Continue,
            other => other,
        };
        self.inner.walk(from, options, &mut ignoring).await
    }
}

struct BrokenWriter {
    inner: Box<dyn FileWriter>,
    driver: MemoryDriver,
    path: StoragePath,
    fault: Fault,
    written: Vec<u8>,
    reads: Arc<AtomicU64>,
    ended: bool,
}

#[async_trait]
impl FileWriter for BrokenWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.written.extend_from_slice(&data);
        self.inner.write(data).await?;
        if self.fault == Fault::VisibleBeforeCommit {
            self.driver
                .put_content(&self.path, self.written.clone().into())
                .await?;
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        if self.fault == Fault::ResumedSizeZero {
            self.written.len() as u64
        } else {
            self.inner.size()
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.ended = true;
        self.inner.close().await
    }

    async fn commit(&mut self) -> Result<()> {
        if self.fault == Fault::NonAtomicCommit && !self.ended {
            // Expose a truncated object until readers have looked (bounded,
            // for when nobody reads), then the real one.
            self.driver
                .put_content(&self.path, Bytes::from_static(b"partial"))
                .await?;
            let seen = self.reads.load(Ordering::SeqCst);
            for _ in 0..100_000 {
                if self.reads.load(Ordering::SeqCst) > seen + 2 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        self.ended = true;
        self.inner.commit().await
    }

    async fn cancel(&mut self) -> Result<()> {
        self.ended = true;
        if self.fault == Fault::CancelKeepsData {
            return self.inner.close().await;
        }
        self.inner.cancel().await
    }
}

/// Runs the suite against `fault` and returns the failing case names.
async fn failures(fault: Fault) -> Vec<&'static str> {
    let driver = Arc::new(Broken {
        inner: MemoryDriver::new(),
        fault,
        reads: Arc::default(),
    });
    let failed = failing_cases(driver, Settings::small()).await;
    for (name, why) in &failed {
        println!(
            "{fault:?} caught by {name}: {}",
            why.lines().next().unwrap_or_default()
        );
    }
    failed.into_iter().map(|(name, _)| name).collect()
}

async fn assert_caught(fault: Fault, by: &[&str]) {
    let failed = failures(fault).await;
    assert!(
        !failed.is_empty(),
        "{fault:?} went unnoticed by the whole suite"
    );
    for case in by {
        assert!(
            failed.contains(case),
            "{fault:?} not caught by {case}; failing cases: {failed:?}"
        );
    }
}

macro_rules! broken {
    ($($test:ident: $fault:ident caught by [$($case:literal),*];)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            assert_caught(Fault::$fault, &[$($case),*]).await;
        }
    )*};
}

broken! {
    delete_not_recursive: DeleteNotRecursive caught by ["delete_folder_keeps_siblings"];
    list_returns_grandchildren: ListGrandchildren caught by ["list_direct_children_only", "list_root_shows_top_dirs_only"];
    data_visible_before_commit: VisibleBeforeCommit caught by ["close_is_not_visible", "cancel_leaves_nothing", "append_after_commit"];
    cancel_keeps_data: CancelKeepsData caught by ["cancel_leaves_nothing"];
    put_appends_instead_of_replacing: PutAppends caught by ["put_truncates_on_reput", "put_is_atomic"];
    reader_ignores_offset: ReaderIgnoresOffset caught by ["reader_offsets", "reader_last_byte", "concurrent_readers"];
    move_keeps_existing_dest: MoveKeepsExistingDest caught by ["move_overwrites"];
    delete_by_string_prefix: DeleteByStringPrefix caught by ["delete_prefix_trap"];
    walk_ignores_skip_dir: WalkIgnoresSkip caught by ["walk_skip_dir"];
    commit_not_atomic: NonAtomicCommit caught by ["racing_writers_one_path"];
    resumed_writer_reports_size_zero: ResumedSizeZero caught by ["append_resumes_small_chunks", "append_after_commit"];
    stat_reports_directory_as_file: StatDirAsFile caught by ["stat_directory"];
    stat_file_reports_directories: StatFileFindsDirectories caught by ["stat_file_only_files"];
    missing_reported_as_backend_error: MissingIsBackendError caught by ["get_missing_not_found"];
    read_past_end_is_empty: PastEndReadsEmpty caught by ["reader_past_end_invalid_offset"];
    open_reports_the_rest_as_size: OpenSizeIsRest caught by ["open_reports_whole_size"];
}

/// The wrapper without a fault passes everything: the failures above come
/// from the faults, not from the wrapper.
/// The purge check runs on a driver of its own, outside the case list.
#[tokio::test]
async fn purge_ignoring_its_cutoff_is_caught() {
    let check = |fault| {
        tokio::spawn(async move {
            let driver = Broken {
                inner: MemoryDriver::new(),
                fault,
                reads: Arc::default(),
            };
            conformance::exclusive::purge_writers(&driver).await;
        })
    };
    assert!(check(Fault::None).await.is_ok(), "the clean wrapper passes");
    assert!(
        check(Fault::PurgeIgnoresCutoff).await.is_err(),
        "a purge of fresh writers went unnoticed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_wrapper_passes() {
    assert_eq!(failures(Fault::None).await, Vec::<&str>::new());
}
