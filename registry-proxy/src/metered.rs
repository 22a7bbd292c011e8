//! A driver that times every operation of the driver it wraps into
//! [`Metrics`] (per driver and operation), and changes nothing else.

use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use driver_core::{
    ByteStream, Capabilities, FileInfo, FileWriter, OpenFile, RedirectMethod, Result,
    StorageDriver, StoragePath, WalkFn, WalkOptions,
};

use crate::metrics::Metrics;

/// `inner`, timed.
#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn StorageDriver>,
    metrics: Arc<Metrics>,
}

impl Metered {
    /// Times the operations of `inner` into `metrics`.
    pub fn new(inner: Arc<dyn StorageDriver>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

async fn timed<T>(
    metrics: &Metrics,
    driver: &'static str,
    op: &'static str,
    work: impl Future<Output = T>,
) -> T {
    let started = Instant::now();
    let out = work.await;
    metrics.storage_op(driver, op, started.elapsed());
    out
}

#[async_trait]
impl StorageDriver for Metered {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn stat(&self, path: &StoragePath) -> Result<FileInfo> {
        timed(&self.metrics, self.name(), "stat", self.inner.stat(path)).await
    }

    /// Counted as a `stat`, the operation registry:2's metrics name.
    async fn stat_file(&self, path: &StoragePath) -> Result<FileInfo> {
        let work = self.inner.stat_file(path);
        timed(&self.metrics, self.name(), "stat", work).await
    }

    async fn get_content(&self, path: &StoragePath) -> Result<Bytes> {
        let work = self.inner.get_content(path);
        timed(&self.metrics, self.name(), "get_content", work).await
    }

    async fn put_content(&self, path: &StoragePath, content: Bytes) -> Result<()> {
        let work = self.inner.put_content(path, content);
        timed(&self.metrics, self.name(), "put_content", work).await
    }

    async fn open(&self, path: &StoragePath, offset: u64) -> Result<OpenFile> {
        let work = self.inner.open(path, offset);
        timed(&self.metrics, self.name(), "open", work).await
    }

    async fn reader(&self, path: &StoragePath, offset: u64) -> Result<ByteStream> {
        let work = self.inner.reader(path, offset);
        timed(&self.metrics, self.name(), "reader", work).await
    }

    async fn writer(&self, path: &StoragePath, append: bool) -> Result<Box<dyn FileWriter>> {
        let work = self.inner.writer(path, append);
        let inner = timed(&self.metrics, self.name(), "writer", work).await?;
        Ok(Box::new(MeteredWriter {
            inner,
            driver: self.name(),
            metrics: Arc::clone(&self.metrics),
        }))
    }

    async fn list(&self, path: &StoragePath) -> Result<Vec<StoragePath>> {
        timed(&self.metrics, self.name(), "list", self.inner.list(path)).await
    }

    async fn move_file(&self, source: &StoragePath, dest: &StoragePath) -> Result<()> {
        let work = self.inner.move_file(source, dest);
        timed(&self.metrics, self.name(), "move", work).await
    }

    async fn delete(&self, path: &StoragePath) -> Result<()> {
        timed(
            &self.metrics,
            self.name(),
            "delete",
            self.inner.delete(path),
        )
        .await
    }

    async fn walk(
        &self,
        from: &StoragePath,
        options: &WalkOptions,
        visit: &mut WalkFn<'_>,
    ) -> Result<()> {
        let work = self.inner.walk(from, options, visit);
        timed(&self.metrics, self.name(), "walk", work).await
    }

    async fn redirect_url(
        &self,
        path: &StoragePath,
        method: RedirectMethod,
    ) -> Result<Option<String>> {
        let work = self.inner.redirect_url(path, method);
        timed(&self.metrics, self.name(), "redirect_url", work).await
    }

    async fn purge_writers(&self, before: SystemTime) -> Result<u64> {
        let work = self.inner.purge_writers(before);
        timed(&self.metrics, self.name(), "purge_writers", work).await
    }

    async fn local_scratch(&self) -> Result<Option<std::fs::File>> {
        let work = self.inner.local_scratch();
        timed(&self.metrics, self.name(), "local_scratch", work).await
    }

    async fn adopt(&self, path: &StoragePath, file: Arc<std::fs::File>) -> Result<()> {
        timed(
            &self.metrics,
            self.name(),
            "adopt",
            self.inner.adopt(path, file),
        )
        .await
    }
}

struct MeteredWriter {
    inner: Box<dyn FileWriter>,
    driver: &'static str,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl FileWriter for MeteredWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let work = self.inner.write(data);
        timed(&self.metrics, self.driver, "write", work).await
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    async fn close(&mut self) -> Result<()> {
        timed(&self.metrics, self.driver, "close", self.inner.close()).await
    }

    async fn commit(&mut self) -> Result<()> {
        timed(&self.metrics, self.driver, "commit", self.inner.commit()).await
    }

    async fn cancel(&mut self) -> Result<()> {
        timed(&self.metrics, self.driver, "cancel", self.inner.cancel()).await
    }
}
