use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream as SdkStream;
use aws_sdk_s3::types::CompletedPart;
use bytes::{Bytes, BytesMut};
use driver_core::{Error, FileWriter, Result, StoragePath, WriterState};
use tokio::task::JoinSet;

use crate::NAME;
use crate::core::{Inner, with_object_settings};
use crate::error::sdk_error;

/// Object metadata key holding a record's multipart upload id.
pub(crate) const UPLOAD_ID: &str = "upload-id";

/// A streaming writer.
///
/// Bytes are buffered until a chunk is full, then uploaded as a part of a
/// multipart upload created on the first full chunk (several parts in
/// flight). A writer that never fills a chunk commits with one `PutObject`.
///
/// Closing, or creating the upload, writes a record object
/// `<root>/@writers/<sha256 of path>/<time>-<id>` whose body is the tail not
/// yet uploaded and whose metadata names the upload; the latest record of a
/// path is what `append` resumes.
pub(crate) struct S3Writer {
    inner: Arc<Inner>,
    path: StoragePath,
    key: String,
    id: String,
    record: Option<String>,
    upload: Option<String>,
    parts: Vec<CompletedPart>,
    next_part: i32,
    in_flight: JoinSet<Result<CompletedPart>>,
    buffer: BytesMut,
    size: u64,
    state: WriterState,
}

impl S3Writer {
    /// A fresh, empty writer; nothing is sent until a chunk fills or it ends.
    pub(crate) fn new(inner: Arc<Inner>, path: StoragePath) -> Self {
        Self {
            key: inner.key(&path),
            inner,
            path,
            id: format!("{:032x}", rand::random::<u128>()),
            record: None,
            upload: None,
            parts: Vec::new(),
            next_part: 1,
            in_flight: JoinSet::new(),
            buffer: BytesMut::new(),
            size: 0,
            state: WriterState::Open,
        }
    }

    /// Resumes the latest record of `path`, or continues its committed
    /// object, or fails with `PathNotFound`.
    pub(crate) async fn resume(inner: Arc<Inner>, path: StoragePath) -> Result<Self> {
        let mut writer = Self::new(Arc::clone(&inner), path.clone());
        if let Some(record) = writer.latest_record().await? {
            writer.load_record(record).await?;
            return Ok(writer);
        }
        let Some((size, _)) = inner.reads.head(&writer.key, &path).await? else {
            return Err(Error::not_found(NAME, &path));
        };
        writer.continue_committed(size).await?;
        Ok(writer)
    }

    async fn latest_record(&self) -> Result<Option<String>> {
        let prefix = self.inner.records_prefix(&self.path);
        let mut pages = self
            .inner
            .client
            .list_objects_v2()
            .bucket(&self.inner.bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        let mut latest = None;
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error("list", &self.path, e))?;
            if let Some(key) = page.contents().iter().filter_map(|o| o.key()).max() {
                latest = latest.max(Some(key.to_owned()));
            }
        }
        Ok(latest)
    }

    /// Takes over the record `key`: its tail, its upload and the upload's parts.
    async fn load_record(&mut self, key: String) -> Result<()> {
        let out = self
            .inner
            .client
            .get_object()
            .bucket(&self.inner.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| sdk_error("resume", &self.path, e))?;
        self.upload = out.metadata().and_then(|m| m.get(UPLOAD_ID)).cloned();
        let tail = out
            .body
            .collect()
            .await
            .map_err(|e| Error::backend(NAME, "resume", &self.path, true, e))?
            .into_bytes();
        if let Some(id) = key.rsplit('-').next() {
            self.id = id.to_owned();
        }
        self.record = Some(key);
        if let Some(upload) = self.upload.clone() {
            let mut pages = self
                .inner
                .client
                .list_parts()
                .bucket(&self.inner.bucket)
                .key(&self.key)
                .upload_id(upload)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| sdk_error("resume", &self.path, e))?;
                for part in page.parts() {
                    self.size += part.size().unwrap_or(0).max(0) as u64;
                    let number = part.part_number().unwrap_or(0);
                    self.next_part = self.next_part.max(number + 1);
                    self.parts.push(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(part.e_tag().map(str::to_owned))
                            .build(),
                    );
                }
            }
        }
        self.size += tail.len() as u64;
        self.buffer.extend_from_slice(&tail);
        Ok(())
    }

    /// Starts from the committed object of `size` bytes: whole chunks are
    /// copied server-side into parts, the rest is read into the buffer.
    async fn continue_committed(&mut self, size: u64) -> Result<()> {
        let chunk = self.inner.config.chunk_size;
        let copied = size / chunk * chunk;
        if copied > 0 {
            let ranges = (0..copied / chunk)
                .map(|i| (i * chunk, (i + 1) * chunk))
                .collect();
            self.ensure_upload().await?;
            let upload = self.upload.clone().unwrap_or_default();
            self.parts = self
                .inner
                .copy_parts(&self.key, &self.key, &upload, ranges, 1, &self.path)
                .await?;
            self.next_part = self.parts.len() as i32 + 1;
        }
        if copied < size {
            let out = self
                .inner
                .client
                .get_object()
                .bucket(&self.inner.bucket)
                .key(&self.key)
                .range(format!("bytes={copied}-{}", size - 1))
                .send()
                .await
                .map_err(|e| sdk_error("resume", &self.path, e))?;
            let tail = out
                .body
                .collect()
                .await
                .map_err(|e| Error::backend(NAME, "resume", &self.path, true, e))?;
            self.buffer.extend_from_slice(&tail.into_bytes());
        }
        self.size = size;
        Ok(())
    }

    /// Writes a new record holding `tail` (and the upload id), replacing the
    /// previous one. Record names sort by the time they were written.
    async fn write_record(&mut self, tail: Bytes) -> Result<()> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let key = format!(
            "{}{nanos:024}-{}",
            self.inner.records_prefix(&self.path),
            self.id
        );
        with_object_settings!(self.inner.client.put_object(), self.inner.object)
            .bucket(&self.inner.bucket)
            .key(&key)
            .set_metadata(
                self.upload
                    .as_ref()
                    .map(|u| [(UPLOAD_ID.to_owned(), u.clone())].into()),
            )
            .body(SdkStream::from(tail))
            .send()
            .await
            .map_err(|e| sdk_error("close", &self.path, e))?;
        if let Some(old) = self.record.replace(key) {
            self.inner.delete_key(&old, &self.path).await?;
        }
        Ok(())
    }

    async fn delete_record(&mut self) -> Result<()> {
        match self.record.take() {
            Some(key) => self.inner.delete_key(&key, &self.path).await,
            None => Ok(()),
        }
    }

    /// Creates the multipart upload on first need, recording it at once so
    /// that a crashed process leaves a resumable writer.
    async fn ensure_upload(&mut self) -> Result<()> {
        if self.upload.is_none() {
            self.upload = Some(self.inner.create_upload(&self.key, &self.path).await?);
            self.write_record(Bytes::new()).await?;
        }
        Ok(())
    }

    /// Starts uploading `part`; waits for one upload when too many are in flight.
    async fn upload_part(&mut self, part: Bytes) -> Result<()> {
        self.ensure_upload().await?;
        let (inner, key, path) = (Arc::clone(&self.inner), self.key.clone(), self.path.clone());
        let upload = self.upload.clone().unwrap_or_default();
        let number = self.next_part;
        self.next_part += 1;
        self.in_flight.spawn(async move {
            let out = inner
                .client
                .upload_part()
                .bucket(&inner.bucket)
                .key(&key)
                .upload_id(upload)
                .part_number(number)
                .body(SdkStream::from(part))
                .send()
                .await
                .map_err(|e| sdk_error("write", &path, e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build())
        });
        if self.in_flight.len() >= self.inner.config.upload_concurrency {
            self.join_one().await?;
        }
        Ok(())
    }

    async fn join_one(&mut self) -> Result<bool> {
        match self.in_flight.join_next().await {
            None => Ok(false),
            Some(joined) => {
                let part =
                    joined.map_err(|e| Error::backend(NAME, "write", &self.path, false, e))??;
                self.parts.push(part);
                Ok(true)
            }
        }
    }

    /// Waits for every part in flight.
    async fn drain(&mut self) -> Result<()> {
        while self.join_one().await? {}
        Ok(())
    }
}

#[async_trait]
impl FileWriter for S3Writer {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.state.check_open(NAME, &self.path)?;
        self.size += data.len() as u64;
        self.buffer.extend_from_slice(&data);
        let chunk = self.inner.config.chunk_size as usize;
        while self.buffer.len() >= chunk {
            let part = self.buffer.split_to(chunk).freeze();
            self.upload_part(part).await?;
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn close(&mut self) -> Result<()> {
        self.state.check_open(NAME, &self.path)?;
        self.drain().await?;
        let tail = self.buffer.clone().freeze();
        self.write_record(tail).await?;
        self.state = WriterState::Closed;
        Ok(())
    }

    async fn commit(&mut self) -> Result<()> {
        self.state.check_open(NAME, &self.path)?;
        self.drain().await?;
        let tail = self.buffer.split().freeze();
        match self.upload.clone() {
            None => self.inner.put(&self.key, &self.path, tail).await?,
            Some(upload) => {
                if !tail.is_empty() || self.parts.is_empty() {
                    // The last part may be smaller than 5 MiB.
                    self.upload_part(tail).await?;
                    self.drain().await?;
                }
                let mut parts = std::mem::take(&mut self.parts);
                parts.sort_by_key(|p| p.part_number());
                self.inner
                    .complete_upload(&self.key, &upload, parts, &self.path)
                    .await?;
            }
        }
        self.state = WriterState::Committed;
        self.delete_record().await
    }

    async fn cancel(&mut self) -> Result<()> {
        self.state.check_open(NAME, &self.path)?;
        self.state = WriterState::Cancelled;
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if let Some(upload) = self.upload.take() {
            self.inner
                .abort_upload(&self.key, &upload, &self.path)
                .await?;
        }
        self.delete_record().await
    }
}
