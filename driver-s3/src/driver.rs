//! The [`StorageDriver`] implementation over [`Inner`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    retry::RetryConfig,
};
use aws_sdk_s3::presigning::PresigningConfig;
use bytes::Bytes;
use driver_core::{
    Capabilities, Error, ErrorKind, FileInfo, FileWriter, FlatWalk, OpenFile, RedirectMethod,
    Result, StorageDriver, StoragePath, WalkFn, WalkOptions, finish_listing, require_file_path,
};
use futures::StreamExt;

use crate::NAME;
use crate::config::{ConfigError, MAX_SINGLE_COPY, S3Config};
use crate::core::{Inner, ObjectSettings, WRITERS_DIR, to_system_time};
use crate::error::{is_not_found, sdk_error};
use crate::reads::Reads;
use crate::writer::{S3Writer, UPLOAD_ID};

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
        let chain = shared.credentials_provider().ok_or_else(|| ConfigError {
            key: "accesskey",
            reason: "no AWS credential chain could be built".into(),
        })?;
        let reads = Reads::new(&config, chain).map_err(|e| ConfigError {
            key: "regionendpoint",
            reason: format!("the read client: {e}"),
        })?;
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
                reads,
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
        match self.stat_file(path).await {
            Err(e) if e.kind() == ErrorKind::PathNotFound => {}
            found => return found,
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

    /// One `HeadObject`, whether the file is there or not.
    async fn stat_file(&self, path: &StoragePath) -> Result<FileInfo> {
        if path.is_root() {
            return Err(Error::not_found(NAME, path));
        }
        match self.inner.reads.head(&self.inner.key(path), path).await? {
            Some((size, modified)) => Ok(FileInfo {
                path: path.clone(),
                size,
                modified,
                is_dir: false,
            }),
            None => Err(Error::not_found(NAME, path)),
        }
    }

    async fn get_content(&self, path: &StoragePath) -> Result<Bytes> {
        require_file_path(NAME, path)?;
        let max_attempts = self.inner.config.max_attempts;
        self.inner
            .reads
            .get(&self.inner.key(path), path, max_attempts)
            .await
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
        self.inner
            .reads
            .open(&self.inner.key(path), path, offset)
            .await
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
        let Some((size, _)) = self.inner.reads.head(&source_key, source).await? else {
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
        let is_file = self.inner.reads.head(&key, path).await?.is_some();
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
