//! State shared by the driver, its readers and writers: the client, the
//! bucket and prefix, object settings, and the object operations.

use std::time::SystemTime;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::{ByteStream as SdkStream, DateTime};
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, ObjectCannedAcl, ObjectIdentifier,
    ServerSideEncryption, StorageClass,
};
use bytes::Bytes;
use driver_core::{Error, Result, StoragePath};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use crate::NAME;
use crate::config::S3Config;
use crate::error::{is_not_found, sdk_error};
use crate::reads::Reads;

/// Directory (under the root directory) of writer records; `@` cannot occur
/// in a storage path.
pub(crate) const WRITERS_DIR: &str = "@writers";

/// State shared by the driver and its writers.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) bucket: String,
    /// Key prefix without leading or trailing `/`; may be empty.
    pub(crate) prefix: String,
    pub(crate) config: S3Config,
    /// `HeadObject` and `GetObject`, through the lean client.
    pub(crate) reads: Reads,
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
    pub(crate) fn new(config: &S3Config) -> Self {
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

pub(crate) fn to_system_time(t: Option<&DateTime>) -> SystemTime {
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
    pub(crate) fn dir_key(&self, path: &StoragePath) -> String {
        let key = self.key(path);
        if key.is_empty() {
            key
        } else {
            format!("{key}/")
        }
    }

    /// The storage path of `key`, if it is one (writer records are not).
    pub(crate) fn path_of(&self, key: &str) -> Option<StoragePath> {
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

    /// Whether any object's key starts with `prefix`.
    pub(crate) async fn any_under(&self, prefix: &str, path: &StoragePath) -> Result<bool> {
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
    pub(crate) async fn delete_batch(&self, keys: Vec<String>, path: &StoragePath) -> Result<()> {
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
    pub(crate) fn list_pages(
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
    pub(crate) async fn copy_object(
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

#[cfg(test)]
mod object_settings_tests {
    use super::*;
    use aws_sdk_s3::types::{ObjectCannedAcl, ServerSideEncryption, StorageClass};

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
