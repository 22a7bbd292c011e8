//! The lean read path: `HeadObject` and `GetObject` through `object_store`,
//! signed with credentials from the same aws-config chain the SDK client
//! uses. A small read through the SDK costs several times the CPU of the
//! request itself (its interceptor and endpoint-resolution pipeline); these
//! are the requests a cache makes on every hit, so they take the short road.
//! Writes, multipart uploads, copies, listings and presigning stay on the SDK.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::config::{ProvideCredentials, SharedCredentialsProvider};
use bytes::Bytes;
use driver_core::{ByteStream, Error, OpenFile, READ_CHUNK, Result, StoragePath};
use futures::{Stream, StreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsCredential};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, CredentialProvider, GetOptions, GetRange, ObjectStore,
    RetryConfig,
};
use tokio::sync::Mutex;

use crate::NAME;
use crate::config::S3Config;
use crate::error::store_error;

/// Credentials this close to their expiry are fetched again first.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(60);

/// `object_store`'s view of the SDK's credential chain (environment,
/// profile, web identity, container and instance roles, or the keys of the
/// configuration), cached until shortly before the credentials expire.
#[derive(Debug)]
struct ChainCredentials {
    chain: SharedCredentialsProvider,
    /// The last credentials and when they expire; the lock is held while
    /// fetching, so one refresh serves every request waiting for it.
    cached: Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

#[async_trait]
impl CredentialProvider for ChainCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        if let Some((credential, expiry)) = cached.as_ref() {
            let fresh = expiry.is_none_or(|at| SystemTime::now() + REFRESH_BEFORE_EXPIRY < at);
            if fresh {
                return Ok(Arc::clone(credential));
            }
        }
        let found = self.chain.provide_credentials().await.map_err(|e| {
            object_store::Error::Unauthenticated {
                path: String::new(),
                source: Box::new(e),
            }
        })?;
        let credential = Arc::new(AwsCredential {
            key_id: found.access_key_id().to_owned(),
            secret_key: found.secret_access_key().to_owned(),
            token: found.session_token().map(str::to_owned),
        });
        *cached = Some((Arc::clone(&credential), found.expiry()));
        Ok(credential)
    }
}

/// `HeadObject` and `GetObject` of the driver's bucket.
#[derive(Debug)]
pub(crate) struct Reads {
    store: AmazonS3,
}

impl Reads {
    /// A client for the bucket of `config`, signing with `chain`, retrying
    /// as the SDK client does (`maxattempts`, backoff from 100 ms). No
    /// request timeout: a reader may stream a large blob to a slow client.
    pub(crate) fn new(
        config: &S3Config,
        chain: SharedCredentialsProvider,
    ) -> std::result::Result<Self, object_store::Error> {
        let url = config.bucket_url();
        let store = AmazonS3Builder::new()
            .with_region(&config.region)
            .with_bucket_name(&config.bucket)
            .with_endpoint(&url)
            .with_virtual_hosted_style_request(true)
            .with_credentials(Arc::new(ChainCredentials {
                chain,
                cached: Mutex::new(None),
            }))
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    ..BackoffConfig::default()
                },
                max_retries: config.max_attempts.saturating_sub(1) as usize,
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(url.starts_with("http://"))
                    .with_timeout_disabled(),
            )
            .build()?;
        Ok(Self { store })
    }

    /// Size and modification time of the object at `key`, `None` if absent.
    pub(crate) async fn head(
        &self,
        key: &str,
        path: &StoragePath,
    ) -> Result<Option<(u64, SystemTime)>> {
        match self.store.head(&ObjectPath::from(key)).await {
            Ok(meta) => Ok(Some((meta.size, meta.last_modified.into()))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error("stat", path, e)),
        }
    }

    /// The whole object at `key`. A body that fails mid-stream is resumed by
    /// `object_store` only while the object's ETag is the same; a replaced
    /// object is fetched again whole, up to `max_attempts` times.
    pub(crate) async fn get(
        &self,
        key: &str,
        path: &StoragePath,
        max_attempts: u32,
    ) -> Result<Bytes> {
        let location = ObjectPath::from(key);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let answer = self
                .store
                .get(&location)
                .await
                .map_err(|e| store_error("get", path, e))?;
            match answer.bytes().await {
                Ok(data) => return Ok(data),
                Err(e) if attempt >= max_attempts => return Err(store_error("get", path, e)),
                Err(_) => continue,
            }
        }
    }

    /// The object at `key` from `offset` on, in one streaming request (a
    /// concurrent replace cannot mix two versions: the ETag is checked on
    /// any resumption). An offset at the end is an empty stream; past it,
    /// `InvalidOffset`.
    pub(crate) async fn open(
        &self,
        key: &str,
        path: &StoragePath,
        offset: u64,
    ) -> Result<OpenFile> {
        let location = ObjectPath::from(key);
        let options = GetOptions {
            range: (offset > 0).then_some(GetRange::Offset(offset)),
            ..GetOptions::default()
        };
        match self.store.get_opts(&location, options).await {
            Ok(answer) => Ok(OpenFile::streamed(
                answer.meta.size,
                body_stream(answer.into_stream(), path.clone()),
            )),
            Err(object_store::Error::NotFound { .. }) => Err(Error::not_found(NAME, path)),
            // S3 refuses a range that starts at or past the end (416); which
            // of the two it was takes the size.
            Err(e) if offset > 0 => match self.head(key, path).await? {
                Some((size, _)) if size == offset => {
                    Ok(OpenFile::streamed(size, Box::pin(futures::stream::empty())))
                }
                Some((size, _)) if size < offset => Err(Error::InvalidOffset {
                    driver: NAME,
                    path: path.to_string(),
                    offset,
                }),
                Some(_) => Err(store_error("read", path, e)),
                None => Err(Error::not_found(NAME, path)),
            },
            Err(e) => Err(store_error("read", path, e)),
        }
    }
}

/// Adapts a `GetObject` body: one streaming request per reader, so a
/// concurrent replace of the object cannot mix two versions (the server
/// either finishes the old one or fails the stream). Chunks larger than
/// [`READ_CHUNK`] are split; a failure mid-body is a temporary error.
fn body_stream<E>(
    body: impl Stream<Item = Result<Bytes, E>> + Send + 'static,
    path: StoragePath,
) -> ByteStream
where
    E: std::error::Error + Send + Sync + 'static,
{
    let chunks =
        body.map(move |chunk| chunk.map_err(|e| Error::backend(NAME, "read", &path, true, e)));
    Box::pin(chunks.flat_map(|chunk| {
        let pieces: Vec<_> = match chunk {
            Ok(chunk) if chunk.len() > READ_CHUNK => (0..chunk.len())
                .step_by(READ_CHUNK)
                .map(|i| Ok(chunk.slice(i..(i + READ_CHUNK).min(chunk.len()))))
                .collect(),
            other => vec![other],
        };
        futures::stream::iter(pieces)
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use aws_credential_types::credential_fn::provide_credentials_fn;
    use aws_sdk_s3::config::Credentials;

    use super::*;

    /// A chain that counts its calls and hands out credentials valid for
    /// `lifetime` from now (`None`: they never expire).
    fn counting_chain(lifetime: Option<Duration>) -> (ChainCredentials, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let chain = provide_credentials_fn(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let expiry = lifetime.map(|l| SystemTime::now() + l);
                Ok(Credentials::new(
                    format!("key{n}"),
                    "secret",
                    Some("token".into()),
                    expiry,
                    "test",
                ))
            }
        });
        let provider = ChainCredentials {
            chain: SharedCredentialsProvider::new(chain),
            cached: Mutex::new(None),
        };
        (provider, calls)
    }

    #[tokio::test]
    async fn credentials_are_cached_until_shortly_before_they_expire() {
        let (lasting, calls) = counting_chain(Some(Duration::from_secs(3600)));
        for _ in 0..3 {
            let credential = lasting.get_credential().await.expect("credential");
            assert_eq!(credential.key_id, "key0");
            assert_eq!(credential.token.as_deref(), Some("token"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let (forever, calls) = counting_chain(None);
        for _ in 0..3 {
            forever.get_credential().await.expect("credential");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Within a minute of expiry: fetched again every time.
        let (expiring, calls) = counting_chain(Some(Duration::from_secs(30)));
        for n in 0..3 {
            let credential = expiring.get_credential().await.expect("credential");
            assert_eq!(credential.key_id, format!("key{n}"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
