//! Blobs: served from storage on a hit; on a miss, from the one fill of the
//! digest ([`super::fill`]) that every waiting client streams from (a HEAD
//! miss, from the upstream's HEAD: it starts no fill). Blob
//! bytes are shared by every namespace; what a namespace may read of them,
//! stored, copied on this machine or filling, and when its upstream must
//! prove access first, is [`super::access`]'s decision.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use driver_core::{OpenFile, RedirectMethod, StorageDriver};
use futures::{Stream, StreamExt, TryStreamExt};

use super::access::{Access, Filler, Read};
use super::error::CacheError;
use super::fill::spool::{Body, spool_stream};
use super::fill::{Fill, FillLimits, FillParts, FillSize, Fills};
use super::links::Links;
use super::tier::Tier;
use super::verify::{Verifier, VerifyReads};
use crate::layout;
use crate::metadata::Lease;
use crate::metrics::{Metrics, NamespaceMetrics};
use crate::namespace::Namespace;
use crate::oci::{Digest, ErrorCode, Kind, OciError, RepoName};
use crate::scheduler::Tracker;
use crate::sync::{Fifo, lock};
use crate::zerocopy::ZeroCopy;

/// What a blob request gets: the blob's size and, for GET, the bytes of the
/// requested range.
pub struct BlobReply {
    /// Size of the whole blob.
    pub size: u64,
    /// The range served, `[start, end)`.
    pub range: (u64, u64),
    /// The bytes (absent for HEAD).
    pub body: Option<Body>,
    /// The file on this machine that holds what `body` streams, when there
    /// is one and nothing checks the bytes on the way: it may be sent
    /// instead, without copying.
    pub(crate) local: Option<Local>,
    /// Where the client fetches the blob itself (a presigned URL of the
    /// stored object), instead of `body`.
    pub redirect: Option<String>,
}

/// A file on this machine holding a reply's bytes.
pub(crate) enum Local {
    /// The stored file (driver-fs, the local tier), whose `range` the body
    /// streams unchanged.
    File(Arc<std::fs::File>),
    /// The spool of the fill the body streams, read as it is written.
    Spool(Arc<Fill>),
}

impl BlobReply {
    /// The body, counting the bytes sent into `metrics`: the local file
    /// sent with `sendfile` where `zero_copy` is given and the reply has
    /// one, else the stream.
    pub fn counted_body(
        self,
        metrics: Arc<NamespaceMetrics>,
        zero_copy: Option<&ZeroCopy>,
    ) -> Option<Body> {
        let body = self.body?;
        let (start, end) = self.range;
        let count = {
            let metrics = Arc::clone(&metrics);
            move |n| {
                metrics.pushed(Kind::Blob, n);
                metrics.sent_zero_copy(n);
            }
        };
        Some(match (zero_copy, self.local) {
            // The stream, never polled, keeps its lease until the file is
            // sent.
            (Some(zero_copy), Some(Local::File(file))) => {
                Box::pin(zero_copy.body(file, start, end - start, body, count))
            }
            // The stream, never polled, keeps the client counted as
            // reading the fill.
            (Some(zero_copy), Some(Local::Spool(fill))) => Box::pin(
                spool_stream(fill, start, end, Some(zero_copy.clone())).inspect_ok(move |chunk| {
                    let _ = &body;
                    count(chunk.len() as u64);
                }),
            ),
            _ => Box::pin(
                body.inspect_ok(move |chunk| metrics.pushed(Kind::Blob, chunk.len() as u64)),
            ),
        })
    }
}

/// A requested byte range, as in `Range: bytes=start-end` (end inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=start-` or `bytes=start-end`.
    From(u64, Option<u64>),
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

impl RangeSpec {
    /// Parses a single-range `Range` header value.
    pub fn parse(value: &str) -> Option<Self> {
        let spec = value.trim().strip_prefix("bytes=")?;
        let (start, end) = spec.split_once('-')?;
        if start.is_empty() {
            return end.parse().ok().map(Self::Suffix);
        }
        let start = start.parse().ok()?;
        let end = if end.is_empty() {
            None
        } else {
            Some(end.parse().ok()?)
        };
        Some(Self::From(start, end))
    }

    /// `[start, end)` within a blob of `size` bytes, or `None` when unsatisfiable.
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        match self {
            Self::From(start, end) => {
                let end = end.map_or(size, |e| e.saturating_add(1).min(size));
                (start < size && start < end).then_some((start, end))
            }
            Self::Suffix(n) => (n > 0 && size > 0).then(|| (size - n.min(size), size)),
        }
    }
}

/// A client reading a fill, counted in the metrics while it lives.
struct FillClient(Arc<Metrics>);

impl FillClient {
    fn attach(metrics: &Arc<Metrics>) -> Self {
        metrics.fill_client(true);
        Self(Arc::clone(metrics))
    }
}

impl Drop for FillClient {
    fn drop(&mut self) {
        self.0.fill_client(false);
    }
}

/// How many fills a request joins or starts before it gives up, when the
/// ones it joined failed for other repositories' requests.
const FILL_ATTEMPTS: usize = 3;

/// Blobs up to this size are kept in memory once read whole and checked
/// against their digest: their hits touch no storage.
const SMALL_BLOB: u64 = 64 << 10;

/// Bytes of small blobs kept in memory at most (the oldest go first).
const SMALL_BLOBS_BYTES: usize = 64 << 20;

/// A stored blob already open for a whole read.
enum Opened {
    /// From storage (or the local tier), from the start.
    File(OpenFile),
    /// Kept in memory (a small blob).
    Memory(Bytes),
}

impl Opened {
    /// The blob's size.
    fn size(&self) -> u64 {
        match self {
            Self::File(file) => file.size,
            Self::Memory(bytes) => bytes.len() as u64,
        }
    }
}

fn resolve(range: Option<RangeSpec>, size: u64) -> Result<(u64, u64), OciError> {
    match range {
        None => Ok((0, size)),
        Some(spec) => spec.resolve(size).ok_or_else(|| {
            OciError::new(
                ErrorCode::RangeInvalid,
                format!("range not satisfiable for {size} bytes"),
            )
        }),
    }
}

/// At most `len` bytes of `stream`.
fn limit(
    stream: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    len: u64,
) -> Body {
    Box::pin(stream.scan(len, |left, chunk| {
        let out = match chunk {
            _ if *left == 0 => None,
            Ok(mut bytes) => {
                if bytes.len() as u64 > *left {
                    bytes.truncate(*left as usize);
                }
                *left -= bytes.len() as u64;
                Some(Ok(bytes))
            }
            Err(e) => Some(Err(e)),
        };
        futures::future::ready(out)
    }))
}

/// A reply of `range` of `bytes` (the whole blob, `size` bytes), holding
/// `lease` while its body lives.
fn in_memory(bytes: Bytes, size: u64, (start, end): (u64, u64), lease: Lease) -> BlobReply {
    let part = bytes.slice(start as usize..end as usize);
    let body = futures::stream::once(async move {
        let _ = &lease;
        Ok(part)
    });
    BlobReply {
        size,
        range: (start, end),
        body: Some(Box::pin(body)),
        local: None,
        redirect: None,
    }
}

/// The blob store.
pub struct Blobs {
    driver: Arc<dyn StorageDriver>,
    /// Accesses and leases.
    tracker: Tracker,
    /// The repositories' links.
    links: Links,
    /// What requests may read, and proofs of access.
    access: Arc<Access>,
    /// The fills running.
    fills: Arc<Fills>,
    /// Checks whole reads of stored blobs.
    verifier: Arc<Verifier>,
    /// Small blobs read whole and checked, by digest. Content-addressed
    /// bytes never change; a hit uses them only where the blob's entry is
    /// known and linked, so what expiry, eviction or a purge removed (they
    /// drop the entry) is looked up in storage again.
    small: Mutex<Fifo<Digest, Bytes>>,
    /// Whether GET hits answer with the driver's presigned URL.
    redirects: bool,
    /// Local copies of blobs stored remotely (`proxy.localtier`).
    tier: Option<Arc<Tier>>,
    /// How long a HEAD miss waits for the upstream's answer.
    head_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Blobs {
    /// The store with the local tier `tier` in front of its storage.
    pub(crate) fn with_tier(mut self, tier: Option<Arc<Tier>>) -> Self {
        self.tier = tier;
        self
    }

    /// The fills running now, largest first.
    pub fn fills_running(&self) -> Vec<super::fill::FillView> {
        self.fills.running()
    }

    /// A store over `driver`, spooling misses in `spool_dir`, abandoning
    /// fills idle for `fill_timeout` (and HEAD misses unanswered for as
    /// long), recording accesses through `tracker`, serving what `access`
    /// allows.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        driver: Arc<dyn StorageDriver>,
        spool_dir: PathBuf,
        fill_timeout: Duration,
        limits: FillLimits,
        verify: VerifyReads,
        tracker: Tracker,
        access: Arc<Access>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let verifier = Arc::new(Verifier::new(
            verify,
            Arc::clone(&driver),
            Arc::clone(&metrics),
        ));
        let links = || Links::new(Arc::clone(&driver), tracker.clone());
        let fills = Arc::new(Fills::new(FillParts {
            driver: Arc::clone(&driver),
            tracker: tracker.clone(),
            links: links(),
            access: Arc::clone(&access),
            spool_dir,
            fill_timeout,
            limits,
            metrics: Arc::clone(&metrics),
        }));
        Self {
            verifier,
            small: Mutex::new(Fifo::new(SMALL_BLOBS_BYTES)),
            redirects: driver.capabilities().redirect,
            tier: None,
            head_timeout: fill_timeout,
            links: links(),
            access,
            fills,
            metrics,
            driver,
            tracker,
        }
    }

    /// Serves `digest` in `repo` of namespace `ns`: `range` (if any) of its
    /// bytes, or only its size when `head`.
    pub async fn get(
        self: &Arc<Self>,
        ns: &Arc<Namespace>,
        repo: &RepoName,
        digest: &Digest,
        range: Option<RangeSpec>,
        head: bool,
    ) -> Result<BlobReply, CacheError> {
        let got = self.find(ns, repo, digest, range, head).await;
        match &got {
            Ok((_, hit)) => ns.metrics.request(Kind::Blob, *hit),
            Err(_) => ns.metrics.failed_request(Kind::Blob),
        }
        got.map(|(reply, _)| reply)
    }

    /// [`Self::get`], and whether storage had the blob.
    async fn find(
        self: &Arc<Self>,
        ns: &Arc<Namespace>,
        repo: &RepoName,
        digest: &Digest,
        range: Option<RangeSpec>,
        head: bool,
    ) -> Result<(BlobReply, bool), CacheError> {
        let key = ns.repo(repo);
        // What is served is leased until the response body is dropped.
        let lease = self.tracker.lease(&[*digest]);
        // An access of content not known to exist creates no entry: that
        // waits until storage or the upstream shows the blob exists.
        let entry = self.tracker.access_known(&key, digest, Kind::Blob).await;
        let known_linked = entry.is_some_and(|a| a.linked);
        let path = layout::blob_data(digest);
        // A whole read opens the blob at once: one storage request, not a
        // stat then a read (on S3, one request per warm hit instead of two).
        // Content that needs a proof of access (an isolated namespace, or
        // private content, without a link) is stated first: the proof comes
        // before any byte is read.
        let read = self.access.stored(ns, &key, digest, known_linked).await;
        let unproven = read == Read::Prove;
        // Where the blob's entry is known and linked, a copy on this
        // machine answers without asking storage.
        let local = if read == Read::Linked {
            self.local_copy(digest, range.is_none()).await
        } else {
            None
        };
        // A redirect needs to know the blob is there, not its bytes.
        let redirect = self.redirects && !head;
        let found = if let Some(opened) = local {
            Ok(Some((opened.size(), Some(opened))))
        } else if head || range.is_some() || unproven || redirect {
            let info = self.driver.stat_file(&path).await;
            info.map(|i| Some((i.size, None)))
        } else {
            let file = self.driver.open(&path, 0).await;
            file.map(|f| Some((f.size, Some(Opened::File(f)))))
        };
        let found = match found {
            Ok(found) => found,
            Err(e) if e.is_not_found() => None,
            // Storage is failing: the client is served from the upstream
            // (one fill per digest, whose store fails and is logged) rather
            // than refused while the upstream could answer.
            Err(e) => {
                tracing::warn!(%digest, error = %e, "storage failing; serving the blob from upstream");
                None
            }
        };
        let Some((size, opened)) = found else {
            if head {
                if let Some(reply) = self.head_miss(ns, repo, digest, range).await? {
                    return Ok((reply, false));
                }
            }
            let reply = self.from_fill(ns, repo, digest, range, head, known_linked);
            return Ok((reply.await?, false));
        };
        if unproven {
            self.access.prove(ns, repo, digest).await?;
        }
        if entry.is_none() {
            self.tracker.access(&key, digest, Kind::Blob).await;
        }
        self.tracker.stored(&key, digest, size);
        self.links
            .ensure(&key, digest, Kind::Blob, known_linked)
            .await;
        if redirect && opened.is_none() {
            let url = self.driver.redirect_url(&path, RedirectMethod::Get).await?;
            if let Some(url) = url {
                // The client reads the object after this answer: its lease
                // outlives the request by the lease timeout.
                self.tracker.extend_leases([*digest]);
                let reply = BlobReply {
                    size,
                    range: (0, size),
                    body: None,
                    local: None,
                    redirect: Some(url),
                };
                return Ok((reply, true));
            }
        }
        let reply = self.stored(digest, size, range, head, opened, lease);
        Ok((reply.await?, true))
    }

    /// A HEAD of `digest`, neither stored nor filling, answered by the
    /// upstream's HEAD (through `ns`'s own upstream and credentials, which
    /// is what a proof would ask: nothing stored is read, and nothing is
    /// recorded) on a small request's turn: HEADs of large uncached layers
    /// start no fills and hold no blob-body turns. `None` when the upstream
    /// gives no size that way, or a fill of the digest runs: the fill
    /// answers then, joined as [`Access::join`] allows.
    async fn head_miss(
        &self,
        ns: &Namespace,
        repo: &RepoName,
        digest: &Digest,
        range: Option<RangeSpec>,
    ) -> Result<Option<BlobReply>, CacheError> {
        if self.fills.is_running(digest) {
            return Ok(None);
        }
        let Some(size) = ns
            .upstream
            .blob_size(repo, digest, self.head_timeout)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(BlobReply {
            size,
            range: resolve(range, size)?,
            body: None,
            local: None,
            redirect: None,
        }))
    }

    /// The copy of `digest` kept on this machine: a small blob in memory,
    /// else (for a whole read or HEAD, `whole`) the local tier's.
    async fn local_copy(&self, digest: &Digest, whole: bool) -> Option<Opened> {
        let remembered = lock(&self.small).get(digest).cloned();
        if let Some(bytes) = remembered {
            return Some(Opened::Memory(bytes));
        }
        let tier = self.tier.as_ref().filter(|_| whole)?;
        tier.open_blob(digest).await.map(Opened::File)
    }

    /// The stored bytes of `digest` (`size` of them): `range` of them, or
    /// none for `head`. `opened` is the blob opened for a whole read, if it
    /// is already open. A small blob read whole is checked and kept in
    /// memory. The body holds `lease` until it is dropped.
    async fn stored(
        &self,
        digest: &Digest,
        size: u64,
        range: Option<RangeSpec>,
        head: bool,
        opened: Option<Opened>,
        lease: Lease,
    ) -> Result<BlobReply, CacheError> {
        let (start, end) = resolve(range, size)?;
        if head {
            return Ok(BlobReply {
                size,
                range: (start, end),
                body: None,
                local: None,
                redirect: None,
            });
        }
        let whole = start == 0 && end == size;
        let file = match opened {
            Some(Opened::Memory(bytes)) => {
                return Ok(in_memory(bytes, size, (start, end), lease));
            }
            Some(Opened::File(file)) if start == 0 => file,
            _ => self.driver.open(&layout::blob_data(digest), start).await?,
        };
        if let Some(tier) = self.tier.as_ref().filter(|_| whole && file.local.is_none()) {
            // Served from remote storage: copied for the next hit.
            tier.copy_in(*digest, Arc::clone(&self.driver));
        }
        let stream = file.stream.map(|r| r.map_err(std::io::Error::other));
        if whole && size <= SMALL_BLOB {
            let checked: Vec<Bytes> = self
                .verifier
                .check(digest, stream)
                .try_collect()
                .await
                .map_err(|e| {
                    driver_core::Error::backend("cache", "read", digest.to_string(), false, e)
                })?;
            let bytes = Bytes::from(checked.concat());
            lock(&self.small).insert(*digest, bytes.clone(), bytes.len());
            return Ok(in_memory(bytes, size, (start, end), lease));
        }
        let (body, local) = if whole && self.verifier.wants(digest) {
            (limit(self.verifier.check(digest, stream), size), None)
        } else {
            (limit(stream, end - start), file.local.map(Local::File))
        };
        let body = Box::pin(body.inspect(move |_| {
            let _ = &lease;
        }));
        Ok(BlobReply {
            size,
            range: (start, end),
            body: Some(body),
            local,
            redirect: None,
        })
    }

    /// Returns once no fill is running (fills started meanwhile included).
    pub async fn fills_done(&self) {
        self.fills.done().await;
    }

    /// Joins the fill of `digest`, starting it if none runs, and streams
    /// from it once [`Access::join`] allows (after a proof where one is
    /// due; `linked`: its entry knows of the link). A joined fill that
    /// fails for someone else's request (another repository or namespace)
    /// is no answer for this one: it fills again through its own
    /// repository, a few times at most.
    async fn from_fill(
        self: &Arc<Self>,
        ns: &Arc<Namespace>,
        repo: &RepoName,
        digest: &Digest,
        range: Option<RangeSpec>,
        head: bool,
        linked: bool,
    ) -> Result<BlobReply, CacheError> {
        let key = ns.repo(repo);
        let mut proven = linked;
        let mut attempts = 0;
        let (fill, size, client) = loop {
            attempts += 1;
            let fill = self.fills.join(ns, repo, digest).await?;
            let filler = Filler {
                namespace: &fill.namespace,
                repo: &fill.repo,
            };
            let own = filler.is(ns, repo);
            let read = self
                .access
                .join(ns, &key, repo, digest, proven, filler)
                .await;
            if read == Read::Prove {
                self.access.prove(ns, repo, digest).await?;
                // The proof's record, before the fill commits the bytes.
                self.links.ensure(&key, digest, Kind::Blob, false).await;
                proven = true;
            }
            let client = FillClient::attach(&self.metrics);
            match self.fills.size(&fill, ns, repo, digest).await {
                Ok(FillSize::Streaming(size)) => break (fill, size, client),
                Ok(FillSize::Stored(size)) => {
                    let lease = self.tracker.lease(&[*digest]);
                    return self.stored(digest, size, range, head, None, lease).await;
                }
                Err(e) if own || attempts >= FILL_ATTEMPTS => return Err(e),
                Err(e) => {
                    tracing::info!(%digest, error = %e, "a fill started for another repository failed; filling through this one");
                }
            }
        };
        let (start, end) = resolve(range, size)?;
        let body = (!head).then(|| -> Body {
            // The client counts as reading the fill until its body is dropped.
            Box::pin(
                spool_stream(Arc::clone(&fill), start, end, None).inspect(move |_| {
                    let _ = &client;
                }),
            )
        });
        Ok(BlobReply {
            size,
            range: (start, end),
            body,
            local: Some(Local::Spool(fill)),
            redirect: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::RangeSpec;

    #[test]
    fn ranges() {
        assert_eq!(
            RangeSpec::parse("bytes=0-9").and_then(|r| r.resolve(100)),
            Some((0, 10))
        );
        assert_eq!(
            RangeSpec::parse("bytes=90-").and_then(|r| r.resolve(100)),
            Some((90, 100))
        );
        assert_eq!(
            RangeSpec::parse("bytes=90-200").and_then(|r| r.resolve(100)),
            Some((90, 100))
        );
        assert_eq!(
            RangeSpec::parse("bytes=-10").and_then(|r| r.resolve(100)),
            Some((90, 100))
        );
        assert_eq!(
            RangeSpec::parse("bytes=100-").and_then(|r| r.resolve(100)),
            None
        );
        assert_eq!(
            RangeSpec::parse("bytes=5-2").and_then(|r| r.resolve(100)),
            None
        );
        // The largest end there is does not overflow: it means "to the end".
        assert_eq!(
            RangeSpec::parse("bytes=0-18446744073709551615").and_then(|r| r.resolve(100)),
            Some((0, 100))
        );
        assert_eq!(RangeSpec::parse("items=0-1"), None);
        assert_eq!(RangeSpec::parse("bytes=a-b"), None);
    }
}
