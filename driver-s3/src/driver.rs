use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    retry::RetryConfig,
};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream as SdkStream, DateTime};
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, ObjectCannedAcl, ObjectIdentifier,
    ServerSideEncryption, StorageClass,
};
use bytes::Bytes;
use driver_core::{
    Capabilities, Error, FileInfo, FileWriter, FlatWalk, OpenFile, RedirectMethod, Result,
    StorageDriver, StoragePath, WalkFn, WalkOptions, finish_listing, require_file_path,
};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, MAX_SINGLE_COPY, S3Config};
use crate::error::{is_not_found, sdk_error};
use crate::reader::{body_stream, whole_size};
use crate::writer::{S3Writer, UPLOAD_ID};

pub(crate) const NAME: &str = "s3";
/// Directory (under the root directory) of writer records; `@` cannot occur
/// in a storage path.
const WRITERS_DIR: &str = "@writers";

/// State shared by the driver and its writers.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) bucket: String,
    /// Key prefix without leading or trailing `/`; may be empty.
    prefix: String,
    pub(crate) config: S3Config,
    /// Settings of every object written.
    pub(crate) object: ObjectSettings,
}

/// Encryption, storage class and ACL of the objects the driver writes.
#[derive(Debug, Default)]
pub(crate) struct ObjectSettings {
    pub(crate) encryption: Option<ServerSideEncryption>,
    pub(crate) kms_key: Option<String>,
    pub(crate) storage_class: Option<StorageClass>,
    pub(crate) acl: Option<ObjectCannedAcl>,
}

impl ObjectSettings {
    fn new(config: &S3Config) -> Self {
        Self {
            encryption: config.encrypt.then(|| {
                if config.key_id.is_some() {
                    ServerSideEncryption::AwsKms
                } else {
                    ServerSideEncryption::Aes256
                }
            }),
            kms_key: config.key_id.clone(),
            storage_class: (config.storage_class != "NONE")
                .then(|| StorageClass::from(config.storage_class.as_str())),
            acl: (config.object_acl != "private")
                .then(|| ObjectCannedAcl::from(config.object_acl.as_str())),
        }
    }
}

/// Applies [`ObjectSettings`] to a request that creates an object
/// (`PutObject`, `CreateMultipartUpload`, `CopyObject`: the same setters).
macro_rules! with_object_settings {
    ($request:expr, $settings:expr) => {
        $request
            .set_server_side_encryption($settings.encryption.clone())
            .set_ssekms_key_id($settings.kms_key.clone())
            .set_storage_class($settings.storage_class.clone())
            .set_acl($settings.acl.clone())
    };
}
pub(crate) use with_object_settings;

fn to_system_time(t: Option<&DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Inner {
    /// The key of the file at `path`.
    pub(crate) fn key(&self, path: &StoragePath) -> String {
        let rest = path.as_str().trim_start_matches('/');
        match (self.prefix.is_empty(), rest.is_empty()) {
            (true, _) => rest.to_owned(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{rest}", self.prefix),
        }
    }

    /// The key prefix everything beneath `path` starts with.
    fn dir_key(&self, path: &StoragePath) -> String {
        let key = self.key(path);
        if key.is_empty() {
            key
        } else {
            format!("{key}/")
        }
    }

    /// The storage path of `key`, if it is one (writer records are not).
    fn path_of(&self, key: &str) -> Option<StoragePath> {
        let rest = if self.prefix.is_empty() {
            key
        } else {
            key.strip_prefix(self.prefix.as_str())?.strip_prefix('/')?
        };
        StoragePath::parse(&format!("/{rest}")).ok()
    }

    /// Key prefix of the writer records of `path`.
    pub(crate) fn records_prefix(&self, path: &StoragePath) -> String {
        let hash = hex::encode(Sha256::digest(path.as_str().as_bytes()));
        let root = StoragePath::root();
        format!("{}{WRITERS_DIR}/{hash}/", self.dir_key(&root))
    }

    /// Size and modification time of the object at `key`, `None` if absent.
    pub(crate) async fn head(
        &self,
        key: &str,
        path: &StoragePath,
    ) -> Result<Option<(u64, SystemTime)>> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some((
                out.content_length().unwrap_or(0).max(0) as u64,
                to_system_time(out.last_modified()),
            ))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(sdk_error("stat", path, e)),
        }
    }

    /// Whether any object's key starts with `prefix`.
    async fn any_under(&self, prefix: &str, path: &StoragePath) -> Result<bool> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| sdk_error("list", path, e))?;
        Ok(!out.contents().is_empty())
    }

    pub(crate) async fn put(&self, key: &str, path: &StoragePath, body: Bytes) -> Result<()> {
        with_object_settings!(self.client.put_object(), self.object)
            .bucket(&self.bucket)
            .key(key)
            .body(SdkStream::from(body))
            .send()
            .await
            .map_err(|e| sdk_error("put", path, e))?;
        Ok(())
    }

    /// The whole object at `key`. A body that fails mid-stream (the object
    /// was replaced while being read: some servers drop the old version's
    /// data at once) is fetched again, up to `max_attempts` times.
    pub(crate) async fn get(&self, key: &str, path: &StoragePath) -> Result<Bytes> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| sdk_error("get", path, e))?;
            match out.body.collect().await {
                Ok(data) => return Ok(data.into_bytes()),
                Err(e) if attempt >= self.config.max_attempts => {
                    return Err(Error::backend(NAME, "get", path, true, e));
                }
                Err(_) => continue,
            }
        }
    }

    pub(crate) async fn delete_key(&self, key: &str, path: &StoragePath) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_error("delete", path, e))?;
        Ok(())
    }

    /// Deletes `keys` (at most 1000) in one request.
    async fn delete_batch(&self, keys: Vec<String>, path: &StoragePath) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let objects = keys
            .into_iter()
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::backend(NAME, "delete", path, false, e))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| Error::backend(NAME, "delete", path, false, e))?;
        let out = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| sdk_error("delete", path, e))?;
        if let Some(failed) = out.errors().first() {
            let why = format!("{:?}: {:?}", failed.key(), failed.message());
            return Err(Error::backend(NAME, "delete", path, false, why));
        }
        Ok(())
    }

    /// Keys (with sizes and times) starting with `prefix` and sorting after
    /// `start_after`, page by page, in byte order.
    fn list_pages(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        start_after: Option<String>,
    ) -> impl futures::Stream<
        Item = Result<
            aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output,
            aws_sdk_s3::error::SdkError<
                aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error,
                aws_sdk_s3::config::http::HttpResponse,
            >,
        >,
    > + use<> {
        let pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_delimiter(delimiter.map(str::to_owned))
            .set_start_after(start_after)
            .into_paginator()
            .send();
        futures::stream::unfold(pages, |mut pages| async move {
            pages.next().await.map(|p| (p, pages))
        })
    }

    /// Copies `ranges` of the object `source` into parts of the upload
    /// `upload_id` of `dest`, numbered from `first_part`, a few at a time.
    pub(crate) async fn copy_parts(
        &self,
        source: &str,
        dest: &str,
        upload_id: &str,
        ranges: Vec<(u64, u64)>,
        first_part: i32,
        path: &StoragePath,
    ) -> Result<Vec<CompletedPart>> {
        let copy_source = format!("{}/{source}", self.bucket);
        let mut parts: Vec<CompletedPart> = futures::stream::iter(ranges.into_iter().enumerate())
            .map(|(i, (start, end))| {
                let number = first_part + i as i32;
                let request = self
                    .client
                    .upload_part_copy()
                    .bucket(&self.bucket)
                    .key(dest)
                    .upload_id(upload_id)
                    .part_number(number)
                    .copy_source(&copy_source)
                    .copy_source_range(format!("bytes={start}-{}", end - 1));
                async move {
                    let out = request
                        .send()
                        .await
                        .map_err(|e| sdk_error("copy", path, e))?;
                    let etag = out
                        .copy_part_result()
                        .and_then(|r| r.e_tag())
                        .map(str::to_owned);
                    Ok::<_, Error>(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(etag)
                            .build(),
                    )
                }
            })
            .buffer_unordered(self.config.copy_concurrency)
            .try_collect()
            .await?;
        parts.sort_by_key(|p| p.part_number());
        Ok(parts)
    }

    pub(crate) async fn create_upload(&self, key: &str, path: &StoragePath) -> Result<String> {
        let out = with_object_settings!(self.client.create_multipart_upload(), self.object)
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_error("create upload", path, e))?;
        out.upload_id().map(str::to_owned).ok_or_else(|| {
            Error::backend(
                NAME,
                "create upload",
                path,
                false,
                "no upload id in the answer",
            )
        })
    }

    pub(crate) async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
        path: &StoragePath,
    ) -> Result<()> {
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_error("commit", path, e))?;
        Ok(())
    }

    pub(crate) async fn abort_upload(
        &self,
        key: &str,
        upload_id: &str,
        path: &StoragePath,
    ) -> Result<()> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(sdk_error("abort upload", path, e)),
        }
    }

    /// Copies the object `source` (of `size` bytes) to `dest` server-side.
    async fn copy_object(
        &self,
        source: &str,
        dest: &str,
        size: u64,
        path: &StoragePath,
    ) -> Result<()> {
        if size <= self.config.copy_threshold {
            with_object_settings!(self.client.copy_object(), self.object)
                .bucket(&self.bucket)
                .key(dest)
                .copy_source(format!("{}/{source}", self.bucket))
                .send()
                .await
                .map_err(|e| sdk_error("copy", path, e))?;
            return Ok(());
        }
        let chunk = self.config.copy_chunk_size;
        let ranges = (0..size.div_ceil(chunk))
            .map(|i| (i * chunk, ((i + 1) * chunk).min(size)))
            .collect();
        let upload_id = self.create_upload(dest, path).await?;
        let copied = match self
            .copy_parts(source, dest, &upload_id, ranges, 1, path)
            .await
        {
            Ok(parts) => self.complete_upload(dest, &upload_id, parts, path).await,
            Err(e) => Err(e),
        };
        if copied.is_err() {
            let _ = self.abort_upload(dest, &upload_id, path).await;
        }
        copied
    }
}

/// The S3 driver. Clones share one client.
#[derive(Debug, Clone)]
pub struct S3Driver {
    inner: Arc<Inner>,
}

impl S3Driver {
    /// Builds a client for `config` (validated first). No request is sent.
    pub async fn new(config: S3Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()));
        if let (Some(access), Some(secret)) = (&config.access_key, &config.secret_key) {
            loader = loader.credentials_provider(Credentials::new(
                access,
                secret.expose(),
                config.session_token.as_ref().map(|t| t.expose().to_owned()),
                None,
                "registry-proxy config",
            ));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.force_path_style)
            .use_dual_stack(config.use_dual_stack)
            .accelerate(config.accelerate)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(config.max_attempts)
                    .with_initial_backoff(Duration::from_millis(100)),
            )
            // Checksums only where S3 requires them: S3-compatible servers
            // differ in the flexible checksums they accept.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = config.endpoint_url() {
            builder = builder.endpoint_url(endpoint);
        }
        let prefix = config.root_directory.trim_matches('/').to_owned();
        Ok(Self {
            inner: Arc::new(Inner {
                client: Client::from_conf(builder.build()),
                bucket: config.bucket.clone(),
                prefix,
                object: ObjectSettings::new(&config),
                config,
            }),
        })
    }

    /// The SDK client, for tools that need S3 operations the trait does not
    /// offer (listing multipart uploads left by crashed writers).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}

#[async_trait]
impl StorageDriver for S3Driver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            redirect: self.inner.config.redirect_expiry().is_some(),
        }
    }

    async fn stat(&self, path: &StoragePath) -> Result<FileInfo> {
        if path.is_root() {
            return Ok(FileInfo::directory(path.clone()));
        }
        if let Some((size, modified)) = self.inner.head(&self.inner.key(path), path).await? {
            return Ok(FileInfo {
                path: path.clone(),
                size,
                modified,
                is_dir: false,
            });
        }
        if self
            .inner
            .any_under(&self.inner.dir_key(path), path)
            .await?
        {
            return Ok(FileInfo::directory(path.clone()));
        }
        Err(Error::not_found(NAME, path))
    }

    async fn get_content(&self, path: &StoragePath) -> Result<Bytes> {
        require_file_path(NAME, path)?;
        self.inner.get(&self.inner.key(path), path).await
    }

    async fn put_content(&self, path: &StoragePath, content: Bytes) -> Result<()> {
        require_file_path(NAME, path)?;
        if content.len() as u64 > MAX_SINGLE_COPY {
            let mut writer = self.writer(path, false).await?;
            writer.write(content).await?;
            return writer.commit().await;
        }
        self.inner.put(&self.inner.key(path), path, content).await
    }

    async fn open(&self, path: &StoragePath, offset: u64) -> Result<OpenFile> {
        require_file_path(NAME, path)?;
        let key = self.inner.key(path);
        let mut request = self
            .inner
            .client
            .get_object()
            .bucket(&self.inner.bucket)
            .key(&key);
        if offset > 0 {
            request = request.range(format!("bytes={offset}-"));
        }
        match request.send().await {
            Ok(out) => Ok(OpenFile {
                size: whole_size(out.content_range(), out.content_length(), offset),
                stream: body_stream(out.body, path.clone()),
            }),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) => {
                // The range starts at or past the end: empty at the end, invalid past it.
                match self.inner.head(&key, path).await? {
                    Some((size, _)) if size == offset => Ok(OpenFile {
                        size,
                        stream: Box::pin(futures::stream::empty()),
                    }),
                    Some(_) => Err(Error::InvalidOffset {
                        driver: NAME,
                        path: path.to_string(),
                        offset,
                    }),
                    None => Err(Error::not_found(NAME, path)),
                }
            }
            Err(e) => Err(sdk_error("read", path, e)),
        }
    }

    async fn writer(&self, path: &StoragePath, append: bool) -> Result<Box<dyn FileWriter>> {
        require_file_path(NAME, path)?;
        let writer = if append {
            S3Writer::resume(Arc::clone(&self.inner), path.clone()).await?
        } else {
            S3Writer::new(Arc::clone(&self.inner), path.clone())
        };
        Ok(Box::new(writer))
    }

    async fn list(&self, path: &StoragePath) -> Result<Vec<StoragePath>> {
        let prefix = self.inner.dir_key(path);
        let mut children = Vec::new();
        let mut pages = std::pin::pin!(self.inner.list_pages(&prefix, Some("/"), None));
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error("list", path, e))?;
            let dirs = page
                .common_prefixes()
                .iter()
                .filter_map(|p| p.prefix())
                .map(|p| p.trim_end_matches('/'));
            let files = page.contents().iter().filter_map(|o| o.key());
            for key in dirs.chain(files) {
                let name = &key[prefix.len().min(key.len())..];
                if let Ok(child) = path.join(name) {
                    children.push(child);
                }
            }
        }
        finish_listing(NAME, path, children)
    }

    async fn move_file(&self, source: &StoragePath, dest: &StoragePath) -> Result<()> {
        require_file_path(NAME, source)?;
        require_file_path(NAME, dest)?;
        let source_key = self.inner.key(source);
        let Some((size, _)) = self.inner.head(&source_key, source).await? else {
            return Err(Error::not_found(NAME, source));
        };
        if source == dest {
            return Ok(());
        }
        self.inner
            .copy_object(&source_key, &self.inner.key(dest), size, dest)
            .await?;
        self.inner.delete_key(&source_key, source).await
    }

    async fn delete(&self, path: &StoragePath) -> Result<()> {
        require_file_path(NAME, path)?;
        let key = self.inner.key(path);
        let is_file = self.inner.head(&key, path).await?.is_some();
        if is_file {
            self.inner.delete_key(&key, path).await?;
        }
        // Everything beneath, page by page; `dir_key` ends in '/', so a
        // sibling sharing the name as a prefix (`/asuffix`) is never listed.
        let mut any = false;
        let mut pages =
            std::pin::pin!(self.inner.list_pages(&self.inner.dir_key(path), None, None));
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error("list", path, e))?;
            let keys: Vec<String> = page
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned))
                .collect();
            any |= !keys.is_empty();
            self.inner.delete_batch(keys, path).await?;
        }
        if !is_file && !any {
            return Err(Error::not_found(NAME, path));
        }
        Ok(())
    }

    async fn walk(
        &self,
        from: &StoragePath,
        options: &WalkOptions,
        visit: &mut WalkFn<'_>,
    ) -> Result<()> {
        let prefix = self.inner.dir_key(from);
        let start_after = options
            .start_after
            .as_ref()
            .map(|p| self.inner.key(p))
            .filter(|k| k.as_str() > prefix.as_str());
        let resumed = start_after.is_some();
        let mut walk = FlatWalk::new(from, options, visit);
        let mut listed_any = false;
        let mut pages = std::pin::pin!(self.inner.list_pages(&prefix, None, start_after));
        'pages: while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error("walk", from, e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                listed_any = true;
                let Some(path) = self.inner.path_of(key) else {
                    continue;
                };
                let info = FileInfo {
                    path,
                    size: object.size().unwrap_or(0).max(0) as u64,
                    modified: to_system_time(object.last_modified()),
                    is_dir: false,
                };
                if !walk.file(info) {
                    break 'pages;
                }
            }
        }
        if !listed_any
            && !from.is_root()
            && (!resumed || !self.inner.any_under(&prefix, from).await?)
        {
            return Err(Error::not_found(NAME, from));
        }
        Ok(())
    }

    async fn purge_writers(&self, before: SystemTime) -> Result<u64> {
        let root = StoragePath::root();
        let inner = &self.inner;
        // Records: stale ones go; the uploads of fresh ones stay.
        let records = format!("{}{WRITERS_DIR}/", inner.dir_key(&root));
        let (mut stale, mut recorded, mut live) = (Vec::new(), Vec::new(), Vec::new());
        let mut pages = std::pin::pin!(inner.list_pages(&records, None, None));
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error("list", &root, e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let upload = match inner
                    .client
                    .head_object()
                    .bucket(&inner.bucket)
                    .key(key)
                    .send()
                    .await
                {
                    Ok(head) => head.metadata().and_then(|m| m.get(UPLOAD_ID)).cloned(),
                    Err(e) if is_not_found(&e) => continue,
                    Err(e) => return Err(sdk_error("stat", &root, e)),
                };
                if to_system_time(object.last_modified()) < before {
                    stale.push(key.to_owned());
                    recorded.extend(upload);
                } else {
                    live.extend(upload);
                }
            }
        }
        let mut purged = stale.len() as u64;
        inner.delete_batch(stale, &root).await?;
        // Uploads: those of stale records, and old ones no record names (a
        // crash between creating an upload and recording it).
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let page = inner
                .client
                .list_multipart_uploads()
                .bucket(&inner.bucket)
                .prefix(inner.dir_key(&root))
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| sdk_error("list uploads", &root, e))?;
            for upload in page.uploads() {
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                let id = id.to_owned();
                let old = to_system_time(upload.initiated()) < before;
                if recorded.contains(&id) || (old && !live.contains(&id)) {
                    inner.abort_upload(key, &id, &root).await?;
                    purged += u64::from(!recorded.contains(&id));
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() {
                break;
            }
        }
        Ok(purged)
    }

    async fn redirect_url(
        &self,
        path: &StoragePath,
        method: RedirectMethod,
    ) -> Result<Option<String>> {
        require_file_path(NAME, path)?;
        let Some(expiry) = self.inner.config.redirect_expiry() else {
            return Ok(None);
        };
        let presign = PresigningConfig::expires_in(expiry)
            .map_err(|e| Error::backend(NAME, "presign", path, false, e))?;
        let key = self.inner.key(path);
        let request = match method {
            RedirectMethod::Get => self
                .inner
                .client
                .get_object()
                .bucket(&self.inner.bucket)
                .key(key)
                .presigned(presign)
                .await
                .map_err(|e| sdk_error("presign", path, e))?,
            RedirectMethod::Head => self
                .inner
                .client
                .head_object()
                .bucket(&self.inner.bucket)
                .key(key)
                .presigned(presign)
                .await
                .map_err(|e| sdk_error("presign", path, e))?,
        };
        Ok(Some(request.uri().to_owned()))
    }
}

#[cfg(test)]
mod object_settings_tests {
    use super::*;

    fn settings(config: S3Config) -> ObjectSettings {
        ObjectSettings::new(&config)
    }

    #[test]
    fn distribution_keys_become_request_settings() {
        let plain = settings(S3Config::default());
        assert_eq!(plain.encryption, None);
        assert_eq!(plain.storage_class, Some(StorageClass::Standard));
        assert_eq!(plain.acl, None, "private is S3's default: no header");
        let sse_s3 = settings(S3Config {
            encrypt: true,
            ..S3Config::default()
        });
        assert_eq!(sse_s3.encryption, Some(ServerSideEncryption::Aes256));
        let kms = settings(S3Config {
            encrypt: true,
            key_id: Some("alias/k".into()),
            storage_class: "NONE".into(),
            object_acl: "bucket-owner-full-control".into(),
            ..S3Config::default()
        });
        assert_eq!(kms.encryption, Some(ServerSideEncryption::AwsKms));
        assert_eq!(kms.kms_key.as_deref(), Some("alias/k"));
        assert_eq!(kms.storage_class, None, "NONE sends no storage class");
        assert_eq!(kms.acl, Some(ObjectCannedAcl::BucketOwnerFullControl));
    }
}
