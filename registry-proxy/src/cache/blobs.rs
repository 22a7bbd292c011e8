//! Blobs: served from storage on a hit; on a miss, one fill per digest
//! streams from upstream into storage and into a local spool file that every
//! waiting client reads at its own pace. Blob bytes are shared by every
//! namespace; an isolated namespace is served stored bytes (or joins
//! another namespace's fill) only once its upstream proved access.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::FileExt;

use rustix::buffer::spare_capacity;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use driver_core::{ByteStream, StorageDriver};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::error::CacheError;
use super::links::Links;
use super::verify::{Verifier, VerifyReads};
use crate::layout::{self, RepoKey};
use crate::metadata::Lease;
use crate::metrics::{Metrics, NamespaceMetrics};
use crate::namespace::Namespace;
use crate::oci::{Digest, ErrorCode, Kind, OciError, RepoName};
use crate::scheduler::Tracker;
use crate::sync::{lock, wait_until};
use crate::upstream::{BlobBody, UpstreamError};

/// Bytes a client stream reads from the spool at once.
const SPOOL_READ: u64 = 256 << 10;

/// Bytes the storage writer gets at once.
const STORE_CHUNK: u64 = 1 << 20;

/// The newest bytes of a fill kept in memory, so that clients keeping pace
/// with the upstream are served without reading the spool back.
const RECENT_WINDOW: usize = 4 << 20;

/// Bounds on the fills a cache runs (`proxy.maxfills`, `proxy.maxblobsize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillLimits {
    /// Fills running at once; a miss beyond them waits up to `slot_wait`
    /// for one to end, then is answered 503 with `Retry-After` (requests
    /// joining a running fill are not counted).
    pub max_fills: usize,
    /// How long a miss waits for a fill slot.
    pub slot_wait: Duration,
    /// The largest blob filled, announced or (for a chunked answer)
    /// received; a larger one is refused, and nothing spooled or stored.
    pub max_blob_size: u64,
}

impl Default for FillLimits {
    fn default() -> Self {
        Self {
            max_fills: 64,
            slot_wait: Duration::from_secs(10),
            max_blob_size: 64 << 30,
        }
    }
}

/// Bytes received but not yet hashed, at most.
const HASH_QUEUE: usize = 8 << 20;

/// A body stream for an HTTP response.
pub type Body = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// What a blob request gets: the blob's size and, for GET, the bytes of the
/// requested range.
pub struct BlobReply {
    /// Size of the whole blob.
    pub size: u64,
    /// The range served, `[start, end)`.
    pub range: (u64, u64),
    /// The bytes (absent for HEAD).
    pub body: Option<Body>,
}

impl BlobReply {
    /// The body, counting the bytes sent into `metrics`.
    pub fn counted_body(self, metrics: Arc<NamespaceMetrics>) -> Option<Body> {
        self.body.map(|body| -> Body {
            Box::pin(body.inspect_ok(move |chunk| metrics.pushed(Kind::Blob, chunk.len() as u64)))
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

/// Progress of a fill, published to its waiters.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// The blob's size, once the upstream said it.
    size: Option<u64>,
    /// Bytes in the spool file.
    written: u64,
    /// Whether all bytes arrived and match the digest (the commit to storage
    /// may still be running: clients need not wait for it).
    verified: bool,
    /// `Some(Ok)` once verified and committed; `Some(Err)` when failed.
    outcome: Option<Result<(), CacheError>>,
    /// Another replica stored the blob while this fill waited for the
    /// digest's lock: clients read it from storage.
    stored: bool,
}

/// The newest received bytes of a fill: whole chunks as the upstream sent
/// them, covering `[start, start + len)`, at most about [`RECENT_WINDOW`].
#[derive(Default)]
struct Recent {
    start: u64,
    len: usize,
    chunks: VecDeque<Bytes>,
}

impl Recent {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push_back(chunk);
        while let Some(front) = self.chunks.front() {
            if self.len - front.len() < RECENT_WINDOW {
                break;
            }
            self.start += front.len() as u64;
            self.len -= front.len();
            self.chunks.pop_front();
        }
    }

    /// The bytes from `pos` to the end of the chunk holding it (at most up
    /// to `limit`), if the window still holds `pos`.
    fn get(&self, pos: u64, limit: u64) -> Option<Bytes> {
        let mut end = self.start + self.len as u64;
        for chunk in self.chunks.iter().rev() {
            let begin = end - chunk.len() as u64;
            if pos >= begin && pos < end {
                let to = end.min(limit);
                return Some(chunk.slice((pos - begin) as usize..(to - begin) as usize));
            }
            end = begin;
        }
        None
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

/// Where the bytes a request would be served come from.
enum Source<'a> {
    /// Storage.
    Stored,
    /// A running fill through this namespace.
    Fill(&'a Arc<Namespace>),
}

/// What [`Blobs::fill_size`] found.
enum FillSize {
    /// The fill streams this many bytes.
    Streaming(u64),
    /// Another replica had stored the blob, of this size: read storage.
    Stored(u64),
}

/// One fill in progress.
struct Fill {
    /// The namespace whose upstream it pulls from.
    namespace: Arc<Namespace>,
    /// The repository it pulls through.
    repo: RepoName,
    progress: watch::Receiver<Progress>,
    /// The spool file, unnamed (deleted when the last waiter drops the
    /// fill, and by the OS when the process dies).
    spool: Arc<std::fs::File>,
    /// The newest bytes, in memory.
    recent: Mutex<Recent>,
}

/// The blob store.
pub struct Blobs {
    driver: Arc<dyn StorageDriver>,
    fills: Mutex<HashMap<Digest, Arc<Fill>>>,
    /// Notified whenever a fill ends.
    fill_ended: Notify,
    /// Accesses, leases and fill locks.
    tracker: Tracker,
    /// The repositories' links.
    links: Links,
    spool_dir: PathBuf,
    fill_timeout: Duration,
    limits: FillLimits,
    /// Checks whole reads of stored blobs.
    verifier: Arc<Verifier>,
    /// One permit per fill that may run (`limits.max_fills`).
    slots: Arc<Semaphore>,
    /// Bytes announced by the fills running now and not yet in their
    /// spools: a fill starts only if the spool's volume has room for it too.
    spooling: Arc<std::sync::atomic::AtomicU64>,
    metrics: Arc<Metrics>,
}

impl Blobs {
    /// A store over `driver`, spooling misses in `spool_dir`, abandoning
    /// fills idle for `fill_timeout` (and proofs of access unanswered for
    /// as long), recording accesses through `tracker`.
    pub fn new(
        driver: Arc<dyn StorageDriver>,
        spool_dir: PathBuf,
        fill_timeout: Duration,
        limits: FillLimits,
        verify: VerifyReads,
        tracker: Tracker,
        metrics: Arc<Metrics>,
    ) -> Self {
        let verifier = Arc::new(Verifier::new(
            verify,
            Arc::clone(&driver),
            Arc::clone(&metrics),
        ));
        Self {
            verifier,
            slots: Arc::new(Semaphore::new(limits.max_fills)),
            metrics,
            links: Links::new(Arc::clone(&driver), tracker.clone()),
            driver,
            fills: Mutex::new(HashMap::new()),
            fill_ended: Notify::new(),
            tracker,
            spool_dir,
            fill_timeout,
            limits,
            spooling: Arc::default(),
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
        let access = self.tracker.access_known(&key, digest, Kind::Blob).await;
        let known_linked = access.is_some_and(|a| a.linked);
        let path = layout::blob_data(digest);
        // A whole read opens the blob at once: one storage request, not a
        // stat then a read (on S3, one request per warm hit instead of two).
        // Content that needs a proof of access (an isolated namespace, or
        // private content, without a link) is stated first: the proof comes
        // before any byte is read.
        let unproven = self
            .needs_proof(ns, &key, digest, known_linked, Source::Stored)
            .await;
        let found = if head || range.is_some() || unproven {
            let info = self.driver.stat(&path).await;
            info.map(|i| (!i.is_dir).then_some((i.size, None)))
        } else {
            let file = self.driver.open(&path, 0).await;
            file.map(|f| Some((f.size, Some(f.stream))))
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
            let reply = self.from_fill(ns, repo, digest, range, head, known_linked);
            return Ok((reply.await?, false));
        };
        if unproven {
            self.prove(ns, repo, digest).await?;
        }
        if access.is_none() {
            self.tracker.access(&key, digest, Kind::Blob).await;
        }
        self.links
            .ensure(&key, digest, Kind::Blob, known_linked)
            .await;
        let reply = self.stored(digest, size, range, head, opened, lease);
        Ok((reply.await?, true))
    }

    /// The stored bytes of `digest` (`size` of them): `range` of them, or
    /// none for `head`. `opened` is the bytes from the start, if they are
    /// already open. The body holds `lease` until it is dropped.
    async fn stored(
        &self,
        digest: &Digest,
        size: u64,
        range: Option<RangeSpec>,
        head: bool,
        opened: Option<ByteStream>,
        lease: Lease,
    ) -> Result<BlobReply, CacheError> {
        let (start, end) = resolve(range, size)?;
        let body = if head {
            None
        } else {
            let stream = match opened {
                Some(stream) if start == 0 => stream,
                _ => {
                    self.driver
                        .reader(&layout::blob_data(digest), start)
                        .await?
                }
            };
            let stream = stream.map(|r| r.map_err(std::io::Error::other));
            let whole = start == 0 && end == size;
            let body = if whole && self.verifier.wants(digest) {
                limit(self.verifier.check(digest, stream), size)
            } else {
                limit(stream, end - start)
            };
            Some(Box::pin(body.inspect(move |_| {
                let _ = &lease;
            })) as Body)
        };
        Ok(BlobReply {
            size,
            range: (start, end),
            body,
        })
    }

    /// Whether `ns` must prove, through its own upstream, that repository
    /// `key` has `digest` before it is served the bytes from `source`: it
    /// has no link to it (`known`: its entry knows of one, else storage is
    /// asked), and the namespace is isolated or the bytes are private
    /// (stored with the private marker, or filled through a private
    /// namespace). Bytes its own upstream is sending need no proof. The
    /// one place this rule is written.
    async fn needs_proof(
        &self,
        ns: &Arc<Namespace>,
        key: &RepoKey,
        digest: &Digest,
        known: bool,
        source: Source<'_>,
    ) -> bool {
        if known {
            return false;
        }
        let due = ns.isolated()
            || match source {
                Source::Fill(filler) if Arc::ptr_eq(filler, ns) => return false,
                Source::Fill(filler) => filler.private(),
                Source::Stored => self.came_privately(digest).await,
            };
        due && !self.links.linked(key, digest, Kind::Blob, false).await
    }

    /// Whether blob `digest` came in through a private namespace (its
    /// marker exists, or storage cannot tell: then it is treated as private).
    async fn came_privately(&self, digest: &Digest) -> bool {
        match self.driver.stat(&layout::blob_private_marker(digest)).await {
            Ok(_) => true,
            Err(e) => !e.is_not_found(),
        }
    }

    /// Asks the upstream of isolated namespace `ns` whether `repo` has
    /// `digest` (one HEAD with its credentials); the caller records a yes
    /// as the repository's link to the blob. A no is the upstream's answer
    /// as an OCI error.
    async fn prove(
        &self,
        ns: &Namespace,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(), CacheError> {
        ns.metrics.proof();
        let proven = ns.upstream.head_blob(repo, digest, self.fill_timeout).await;
        if let Err(UpstreamError::Status { status, .. }) = &proven {
            if matches!(
                *status,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
            ) {
                ns.metrics.denial();
            }
            tracing::info!(namespace = %ns.name, %repo, %digest, %status, "access to a stored blob not proven");
        }
        Ok(proven?)
    }

    /// Returns once no fill is running (fills started meanwhile included).
    pub async fn fills_done(&self) {
        wait_until(&self.fill_ended, || {
            lock(&self.fills).is_empty().then_some(())
        })
        .await;
    }

    /// Joins the fill of `digest`, starting it if none runs, and streams
    /// from it. A namespace joins another namespace's fill without a proof
    /// of access only if it is shared and that fill's namespace is not
    /// private (`linked`: its entry knows of a proof). A joined fill that
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
            let fill = self.fill(ns, repo, digest).await?;
            let own = Arc::ptr_eq(&fill.namespace, ns) && fill.repo == *repo;
            let source = Source::Fill(&fill.namespace);
            if self.needs_proof(ns, &key, digest, proven, source).await {
                self.prove(ns, repo, digest).await?;
                // The proof's record, before the fill commits the bytes.
                self.links.ensure(&key, digest, Kind::Blob, false).await;
                proven = true;
            }
            let client = FillClient::attach(&self.metrics);
            match self.fill_size(&fill, ns, repo, digest).await {
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
                spool_stream(Arc::clone(&fill), start, end).inspect(move |_| {
                    let _ = &client;
                }),
            )
        });
        Ok(BlobReply {
            size,
            range: (start, end),
            body,
        })
    }

    /// Waits until `fill` knows the blob's size (or failed); records the
    /// access of `repo` in `ns` once the blob is known to exist.
    async fn fill_size(
        &self,
        fill: &Fill,
        ns: &Namespace,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<FillSize, CacheError> {
        let mut progress = fill.progress.clone();
        loop {
            let now = progress.borrow_and_update().clone();
            match (now.size, now.outcome) {
                (_, Some(Err(e))) => return Err(e),
                (Some(size), _) => {
                    // The upstream has it: now the access is recorded.
                    self.tracker
                        .access(&ns.repo(repo), digest, Kind::Blob)
                        .await;
                    return Ok(if now.stored {
                        FillSize::Stored(size)
                    } else {
                        FillSize::Streaming(size)
                    });
                }
                (None, _) => {}
            }
            if progress.changed().await.is_err() {
                return Err(
                    OciError::new(ErrorCode::Unavailable, "the fill ended unexpectedly").into(),
                );
            }
        }
    }

    /// The running fill of `digest`, or a new one through `repo` of `ns`
    /// once one of the `maxfills` slots is free (waiting at most
    /// `slot_wait` for it, then 503 with `Retry-After`).
    async fn fill(
        self: &Arc<Self>,
        ns: &Arc<Namespace>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Arc<Fill>, CacheError> {
        if let Some(fill) = lock(&self.fills).get(digest) {
            return Ok(Arc::clone(fill));
        }
        let slot = Arc::clone(&self.slots).acquire_owned();
        let Ok(Ok(slot)) = tokio::time::timeout(self.limits.slot_wait, slot).await else {
            self.metrics.fill_refused();
            let mut error = OciError::new(
                ErrorCode::Unavailable,
                format!(
                    "{} fills are running, the most this cache runs at once",
                    self.limits.max_fills
                ),
            );
            error.retry_after = Some(reqwest::header::HeaderValue::from_static("1"));
            return Err(error.into());
        };
        let mut fills = lock(&self.fills);
        if let Some(fill) = fills.get(digest) {
            return Ok(Arc::clone(fill));
        }
        let spool = tempfile::tempfile_in(&self.spool_dir).map_err(|e| {
            OciError::new(
                ErrorCode::Unavailable,
                format!("cannot create a spool file: {e}"),
            )
        })?;
        let (publish, progress) = watch::channel(Progress::default());
        let fill = Arc::new(Fill {
            namespace: Arc::clone(ns),
            repo: repo.clone(),
            progress,
            spool: Arc::new(spool),
            recent: Mutex::default(),
        });
        fills.insert(*digest, Arc::clone(&fill));
        let (this, repo, digest, running) =
            (Arc::clone(self), repo.clone(), *digest, Arc::clone(&fill));
        // The fill runs on its own task: a client that goes away does not stop it.
        self.metrics.fill_running(true);
        // It logs in the span of the request that started it. The span is
        // entered only to log: instrumenting the task (entering the span on
        // every poll) made a cold 256 MiB pull 50% slower.
        let span = tracing::Span::current();
        tokio::spawn(async move {
            let _slot = slot;
            let outcome = this.run_fill(&repo, &digest, &running, &publish).await;
            if let Err(e) = &outcome {
                let ns = &running.namespace.name;
                span.in_scope(|| tracing::warn!(namespace = %ns, %repo, %digest, error = %e, "blob fill failed"));
            }
            lock(&this.fills).remove(&digest);
            publish.send_modify(|p| p.outcome = Some(outcome));
            this.metrics.fill_running(false);
            this.fill_ended.notify_waiters();
        });
        Ok(fill)
    }

    /// Streams the blob from upstream into storage and the spool, verifies
    /// its digest, and commits it (or cancels: nothing becomes visible).
    async fn run_fill(
        &self,
        repo: &RepoName,
        digest: &Digest,
        fill: &Fill,
        publish: &watch::Sender<Progress>,
    ) -> Result<(), CacheError> {
        let _lease = self.tracker.lease(&[*digest]);
        // One fill per digest across replicas sharing the storage.
        let held = self.tracker.fill_lock(digest).await;
        let filled = self.fill_locked(repo, digest, fill, publish).await;
        held.release().await;
        filled
    }

    /// [`Self::run_fill`] under the digest's lock: a blob another replica
    /// stored meanwhile is served from storage.
    async fn fill_locked(
        &self,
        repo: &RepoName,
        digest: &Digest,
        fill: &Fill,
        publish: &watch::Sender<Progress>,
    ) -> Result<(), CacheError> {
        let ns = &fill.namespace;
        let key = ns.repo(repo);
        if self.tracker.shared() {
            if let Ok(info) = self.driver.stat(&layout::blob_data(digest)).await {
                if !info.is_dir {
                    // Stored by another replica: served only as a stored hit
                    // would be, after a proof of access where one is due.
                    if self
                        .needs_proof(ns, &key, digest, false, Source::Stored)
                        .await
                    {
                        self.prove(ns, repo, digest).await?;
                    }
                    self.tracker.access(&key, digest, Kind::Blob).await;
                    publish.send_modify(|p| {
                        p.size = Some(info.size);
                        p.stored = true;
                    });
                    self.links
                        .ensure(&ns.repo(repo), digest, Kind::Blob, false)
                        .await;
                    return Ok(());
                }
            }
        }
        let response = ns.upstream.blob(repo, digest, self.fill_timeout).await?;
        // The blob exists: its access is recorded before its bytes are
        // stored (an expiry of the digest in progress finishes first).
        self.tracker.access(&key, digest, Kind::Blob).await;
        // Without a Content-Length (a chunked answer), clients learn the
        // size, and get the bytes, once the whole blob is verified.
        let announced = response.announced();
        let mut room = self.spool_room(announced, digest)?;
        publish.send_modify(|p| p.size = announced);
        // Clients are served from the spool at the upstream's pace. Storage
        // only ever sees verified bytes: they are stored after the last one
        // arrived, while late clients still read the spool.
        let size = self
            .receive(response, fill, publish, announced, digest, &mut room)
            .await?;
        if ns.private() {
            // Marked before the bytes become visible: no other namespace
            // is ever served them unproven.
            self.driver
                .put_content(&layout::blob_private_marker(digest), Bytes::new())
                .await?;
        }
        self.store(digest, fill, size).await?;
        self.links
            .ensure(&ns.repo(repo), digest, Kind::Blob, false)
            .await;
        Ok(())
    }

    /// Makes sure a blob of `announced` bytes may be filled: not larger
    /// than the limit, and with room on the spool's volume beside what the
    /// running fills have still to write. The room is held until written
    /// or the guard is dropped.
    fn spool_room(&self, announced: Option<u64>, digest: &Digest) -> Result<SpoolRoom, CacheError> {
        let size = announced.unwrap_or(0);
        if size > self.limits.max_blob_size {
            self.metrics.fill_refused();
            return Err(OciError::new(
                ErrorCode::BlobTooLarge,
                format!(
                    "blob {digest} is {size} bytes; this cache fills blobs of at most {} bytes",
                    self.limits.max_blob_size
                ),
            )
            .into());
        }
        let held = self
            .spooling
            .fetch_add(size, std::sync::atomic::Ordering::SeqCst)
            + size;
        let room = SpoolRoom {
            spooling: Arc::clone(&self.spooling),
            remaining: size,
        };
        let free = rustix::fs::statvfs(&self.spool_dir)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
            .unwrap_or(u64::MAX);
        if held > free {
            self.metrics.fill_refused();
            let mut error = OciError::new(
                ErrorCode::Unavailable,
                format!("no room to spool blob {digest} ({size} bytes; {free} free)"),
            );
            error.retry_after = Some(reqwest::header::HeaderValue::from_static("30"));
            return Err(error.into());
        }
        Ok(room)
    }

    /// Copies the verified spool of `fill` to storage and commits it; on
    /// any failure nothing becomes visible.
    async fn store(&self, digest: &Digest, fill: &Fill, size: u64) -> Result<(), CacheError> {
        let mut writer = self
            .driver
            .writer(&layout::blob_data(digest), false)
            .await?;
        let mut copied = Ok(());
        let mut pos = 0;
        while pos < size && copied.is_ok() {
            copied = match read_spool(fill, pos, (size - pos).min(STORE_CHUNK)).await {
                Ok(chunk) => {
                    pos += chunk.len() as u64;
                    writer.write(chunk).await.map_err(CacheError::from)
                }
                Err(e) => Err(OciError::new(
                    ErrorCode::Unavailable,
                    format!("spool read failed: {e}"),
                )
                .into()),
            };
        }
        match copied {
            Ok(()) => writer.commit().await.map_err(CacheError::from),
            Err(e) => {
                let _ = writer.cancel().await;
                Err(e)
            }
        }
    }

    /// Receives the body into the spool and the in-memory window, queueing
    /// it for a hashing task; marks the fill verified when every byte arrived
    /// (`announced` of them, if the upstream said) and matches `digest`.
    /// Returns the size.
    async fn receive(
        &self,
        response: BlobBody,
        fill: &Fill,
        publish: &watch::Sender<Progress>,
        announced: Option<u64>,
        digest: &Digest,
        room: &mut SpoolRoom,
    ) -> Result<u64, CacheError> {
        let most = announced.unwrap_or(self.limits.max_blob_size);
        let (to_hash, mut hashed) = HashQueue::new();
        let hashing = tokio::spawn(async move {
            let mut hasher = Sha256::new();
            while let Some((chunk, _room)) = hashed.recv().await {
                hasher.update(&chunk);
            }
            Digest::from_hasher(hasher)
        });
        let mut body = std::pin::pin!(response.into_stream());
        let mut written = 0u64;
        loop {
            let next = tokio::time::timeout(self.fill_timeout, body.next())
                .await
                .map_err(|_| {
                    OciError::new(
                        ErrorCode::Unavailable,
                        format!("the upstream stalled sending {digest}"),
                    )
                })?;
            let Some(chunk) = next else { break };
            let chunk = chunk?;
            if written + chunk.len() as u64 > most {
                return Err(OciError::new(
                    ErrorCode::Unavailable,
                    format!("the upstream sent more than {most} bytes for {digest}"),
                )
                .into());
            }
            fill.spool.write_all_at(&chunk, written).map_err(|e| {
                OciError::new(ErrorCode::Unavailable, format!("spool write failed: {e}"))
            })?;
            room.wrote(chunk.len() as u64);
            fill.namespace
                .metrics
                .pulled(Kind::Blob, chunk.len() as u64);
            to_hash.send(chunk.clone()).await;
            written += chunk.len() as u64;
            lock(&fill.recent).push(chunk);
            publish.send_modify(|p| p.written = written);
        }
        if announced.is_some_and(|size| written != size) {
            return Err(OciError::new(
                ErrorCode::Unavailable,
                format!("the upstream sent {written} of {most} bytes for {digest}"),
            )
            .into());
        }
        drop(to_hash);
        let got = hashing
            .await
            .map_err(|e| OciError::new(ErrorCode::Unavailable, format!("hashing failed: {e}")))?;
        if &got != digest {
            return Err(OciError::new(
                // The upstream is at fault, and a retry may succeed.
                ErrorCode::Unavailable,
                format!("the upstream sent {got} for {digest}"),
            )
            .into());
        }
        publish.send_modify(|p| {
            p.verified = true;
            p.size = Some(written);
        });
        Ok(written)
    }
}

/// Spool room a running fill holds: the bytes it announced and has not
/// written yet (what it wrote, the volume's free space already shows).
struct SpoolRoom {
    spooling: Arc<std::sync::atomic::AtomicU64>,
    remaining: u64,
}

impl SpoolRoom {
    /// `n` more bytes are in the spool.
    fn wrote(&mut self, n: u64) {
        let n = n.min(self.remaining);
        self.remaining -= n;
        self.spooling
            .fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for SpoolRoom {
    fn drop(&mut self) {
        self.spooling
            .fetch_sub(self.remaining, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A chunk queued for hashing, holding its share of the queue's room.
type Queued = (Bytes, OwnedSemaphorePermit);

/// The queue of chunks from a fill's receiver to its hashing task, bounded
/// to [`HASH_QUEUE`] bytes.
struct HashQueue {
    queue: mpsc::UnboundedSender<Queued>,
    room: Arc<Semaphore>,
}

impl HashQueue {
    fn new() -> (Self, mpsc::UnboundedReceiver<Queued>) {
        let (queue, receive) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(HASH_QUEUE));
        (Self { queue, room }, receive)
    }

    /// Queues `chunk`, waiting for room. If the hashing task is gone, the
    /// chunk is dropped: awaiting that task reports why.
    async fn send(&self, chunk: Bytes) {
        let want = chunk.len().clamp(1, HASH_QUEUE) as u32;
        if let Ok(permit) = Arc::clone(&self.room).acquire_many_owned(want).await {
            let _ = self.queue.send((chunk, permit));
        }
    }
}

/// Reads `len` bytes at `pos` of the fill's spool (they must be there).
async fn read_spool(fill: &Fill, pos: u64, len: u64) -> std::io::Result<Bytes> {
    let spool = Arc::clone(&fill.spool);
    let want = usize::try_from(len).unwrap_or(usize::MAX);
    tokio::task::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(want);
        while buf.len() < want {
            let at = pos + buf.len() as u64;
            let read = rustix::io::pread(&*spool, spare_capacity(&mut buf), at)?;
            if read == 0 {
                return Err(std::io::Error::other("the spool file is short"));
            }
        }
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(std::io::Error::other)?
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

/// Reads `[start, end)` from a fill's spool as the fill writes it. The last
/// byte is held back until the digest is verified, so a client never gets a
/// complete body that failed verification: on failure its stream errors.
/// Verified bytes are served even if the commit to storage then fails.
fn spool_stream(fill: Arc<Fill>, start: u64, end: u64) -> Body {
    let progress = fill.progress.clone();
    Box::pin(futures::stream::try_unfold(
        (fill, progress, start),
        move |(fill, mut progress, pos)| async move {
            loop {
                if pos >= end {
                    return Ok(None);
                }
                let now = progress.borrow_and_update().clone();
                match &now.outcome {
                    Some(Err(e)) if !now.verified => {
                        return Err(std::io::Error::other(e.to_string()));
                    }
                    _ => {}
                }
                let readable = if now.verified {
                    now.written
                } else {
                    now.written.min(end.saturating_sub(1))
                };
                let limit = readable.min(end);
                if pos < limit {
                    let recent = lock(&fill.recent).get(pos, limit);
                    if let Some(chunk) = recent {
                        let next = pos + chunk.len() as u64;
                        return Ok(Some((chunk, (fill, progress, next))));
                    }
                    let chunk = read_spool(&fill, pos, (limit - pos).min(SPOOL_READ)).await?;
                    let next = pos + chunk.len() as u64;
                    return Ok(Some((chunk, (fill, progress, next))));
                }
                if progress.changed().await.is_err() {
                    return Err(std::io::Error::other("the fill ended unexpectedly"));
                }
            }
        },
    ))
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
