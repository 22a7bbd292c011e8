//! Fills: one per digest, streaming a missing blob from the upstream into
//! a spool every waiting client reads, hashing it as it arrives, and
//! committing it to storage once verified (nothing half-written becomes
//! visible). Bounded in number, size and spool room.

pub(crate) mod spool;

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use driver_core::StorageDriver;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::sync::{Notify, Semaphore, watch};

use self::spool::{HashQueue, Recent, SpoolRoom, read_spool};
use super::access::{Access, Read};
use super::error::CacheError;
use super::links::Links;
use crate::layout;
use crate::metrics::Metrics;
use crate::namespace::Namespace;
use crate::oci::{Digest, ErrorCode, Kind, OciError, RepoName};
use crate::scheduler::{Reservation, Tracker};
use crate::sync::{lock, wait_until};
use crate::upstream::BlobBody;

/// Bytes the storage writer gets at once.
const STORE_CHUNK: u64 = 1 << 20;

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

/// Progress of a fill, published to its waiters.
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
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

/// What [`Blobs::fill_size`] found.
pub(crate) enum FillSize {
    /// The fill streams this many bytes.
    Streaming(u64),
    /// Another replica had stored the blob, of this size: read storage.
    Stored(u64),
}

/// One fill in progress.
pub(crate) struct Fill {
    /// The namespace whose upstream it pulls from.
    pub(crate) namespace: Arc<Namespace>,
    /// The repository it pulls through.
    pub(crate) repo: RepoName,
    progress: watch::Receiver<Progress>,
    /// The spool file, unnamed (deleted when the last waiter drops the
    /// fill, and by the OS when the process dies).
    spool: Arc<std::fs::File>,
    /// Whether the spool is the storage driver's scratch file: stored by
    /// adopting it, without a copy.
    adoptable: bool,
    /// The newest bytes, in memory.
    recent: Mutex<Recent>,
}

/// A fill running, as the status page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillView {
    /// The namespace it pulls through.
    pub namespace: String,
    /// The repository.
    pub repo: String,
    /// The blob.
    pub digest: Digest,
    /// Bytes received so far.
    pub received: u64,
    /// The blob's size, once the upstream said it.
    pub size: Option<u64>,
}

/// The fills running, and what they need.
pub(crate) struct Fills {
    driver: Arc<dyn StorageDriver>,
    fills: Mutex<HashMap<Digest, Arc<Fill>>>,
    /// Notified whenever a fill ends.
    fill_ended: Notify,
    /// Accesses, leases and fill locks.
    tracker: Tracker,
    /// The repositories' links.
    links: Links,
    /// What may be read (a blob another replica stored meanwhile), and the
    /// marker of private content.
    access: Arc<Access>,
    spool_dir: PathBuf,
    fill_timeout: Duration,
    limits: FillLimits,
    /// One permit per fill that may run (`limits.max_fills`).
    slots: Arc<Semaphore>,
    /// Bytes announced by the fills running now and not yet in their
    /// spools: a fill starts only if the spool's volume has room for it too.
    spooling: Arc<std::sync::atomic::AtomicU64>,
    metrics: Arc<Metrics>,
}

/// What [`Fills::new`] needs.
pub(crate) struct FillParts {
    /// The storage blobs are committed to.
    pub(crate) driver: Arc<dyn StorageDriver>,
    /// Accesses, leases and fill locks.
    pub(crate) tracker: Tracker,
    /// The repositories' links.
    pub(crate) links: Links,
    /// What may be read, proofs of access, and the marker.
    pub(crate) access: Arc<Access>,
    /// Where spool files go.
    pub(crate) spool_dir: PathBuf,
    /// A fill that receives nothing for this long is abandoned.
    pub(crate) fill_timeout: Duration,
    /// How many fills run at once, and how large a blob may be.
    pub(crate) limits: FillLimits,
    /// The counters.
    pub(crate) metrics: Arc<Metrics>,
}

impl Fills {
    /// The fills running now, largest first.
    pub(crate) fn running(&self) -> Vec<FillView> {
        let mut views: Vec<FillView> = lock(&self.fills)
            .iter()
            .map(|(digest, fill)| {
                let progress = fill.progress.borrow();
                FillView {
                    namespace: fill.namespace.name.clone(),
                    repo: fill.repo.to_string(),
                    digest: *digest,
                    received: progress.written,
                    size: progress.size,
                }
            })
            .collect();
        views.sort_by(|a, b| b.size.cmp(&a.size).then(a.digest.cmp(&b.digest)));
        views
    }

    /// Whether a fill of `digest` runs now.
    pub(crate) fn is_running(&self, digest: &Digest) -> bool {
        lock(&self.fills).contains_key(digest)
    }

    /// No fill running yet.
    pub(crate) fn new(parts: FillParts) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(parts.limits.max_fills)),
            driver: parts.driver,
            fills: Mutex::new(HashMap::new()),
            fill_ended: Notify::new(),
            tracker: parts.tracker,
            links: parts.links,
            access: parts.access,
            spool_dir: parts.spool_dir,
            fill_timeout: parts.fill_timeout,
            limits: parts.limits,
            spooling: Arc::default(),
            metrics: parts.metrics,
        }
    }

    /// Returns once no fill is running (fills started meanwhile included).
    pub async fn done(&self) {
        wait_until(&self.fill_ended, || {
            lock(&self.fills).is_empty().then_some(())
        })
        .await;
    }

    /// Waits until `fill` knows the blob's size (or failed); records the
    /// access of `repo` in `ns` once the blob is known to exist.
    pub(crate) async fn size(
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
    pub(crate) async fn join(
        self: &Arc<Self>,
        ns: &Arc<Namespace>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Arc<Fill>, CacheError> {
        if let Some(fill) = lock(&self.fills).get(digest) {
            return Ok(Arc::clone(fill));
        }
        // The storage driver's scratch file where it has one (driver-fs),
        // so that storing the blob copies nothing; else one in spool_dir.
        let scratch = match self.driver.local_scratch().await {
            Ok(scratch) => scratch,
            Err(e) => {
                tracing::warn!(error = %e, "no scratch file from storage; spooling aside");
                None
            }
        };
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
        let adoptable = scratch.is_some();
        let spool = match scratch {
            Some(file) => file,
            None => tempfile::tempfile_in(&self.spool_dir).map_err(|e| {
                OciError::new(
                    ErrorCode::Unavailable,
                    format!("cannot create a spool file: {e}"),
                )
            })?,
        };
        let (publish, progress) = watch::channel(Progress::default());
        let fill = Arc::new(Fill {
            namespace: Arc::clone(ns),
            repo: repo.clone(),
            progress,
            spool: Arc::new(spool),
            adoptable,
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
        // The fill's own span, under the request's, lasts as long as the
        // fill; upstream requests made within it are its children.
        let span = tracing::info_span!(
            "fill",
            otel.name = "blob fill",
            namespace = %ns.name,
            %repo,
            %digest,
        );
        tokio::spawn(async move {
            let _slot = slot;
            let outcome = this
                .run_fill(&repo, &digest, &running, &publish, &span)
                .await;
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
        span: &tracing::Span,
    ) -> Result<(), CacheError> {
        let _lease = self.tracker.lease(&[*digest]);
        // One fill per digest across replicas sharing the storage.
        let held = self.tracker.fill_lock(digest).await;
        let filled = self.fill_locked(repo, digest, fill, publish, span).await;
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
        span: &tracing::Span,
    ) -> Result<(), CacheError> {
        let ns = &fill.namespace;
        let key = ns.repo(repo);
        if self.tracker.shared() {
            if let Ok(info) = self.driver.stat_file(&layout::blob_data(digest)).await {
                if !info.is_dir {
                    // Stored by another replica: served only as a stored hit
                    // would be, after a proof of access where one is due.
                    if self.access.stored(ns, &key, digest, false).await == Read::Prove {
                        self.access.prove(ns, repo, digest).await?;
                    }
                    self.tracker.access(&key, digest, Kind::Blob).await;
                    self.tracker.stored(&key, digest, info.size);
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
        let response = {
            use tracing::Instrument as _;
            // Entered while the upstream answers, not per chunk of body.
            (ns.upstream.blob(repo, digest, self.fill_timeout))
                .instrument(span.clone())
                .await?
        };
        // The blob exists: its access is recorded before its bytes are
        // stored (an expiry of the digest in progress finishes first).
        self.tracker.access(&key, digest, Kind::Blob).await;
        // Without a Content-Length (a chunked answer), clients learn the
        // size, and get the bytes, once the whole blob is verified.
        let announced = response.announced();
        let mut room = self.spool_room(announced, fill.adoptable, digest)?;
        // Room in the byte budget, before a byte arrives (a chunked answer
        // reserves once its size is known).
        let mut reserved = announced
            .map(|size| self.reserve(size, digest))
            .transpose()?;
        publish.send_modify(|p| p.size = announced);
        // Clients are served from the spool at the upstream's pace. Storage
        // only ever sees verified bytes: they are stored after the last one
        // arrived, while late clients still read the spool.
        let size = self
            .receive(response, fill, publish, announced, digest, &mut room)
            .await?;
        if !self.tracker.fits(size) {
            // Storing it would evict everything else and then itself.
            self.metrics.unstored();
            tracing::info!(%digest, size, "larger than the byte budget: served to its clients, not stored");
            return Ok(());
        }
        if reserved.is_none() {
            reserved = Some(self.reserve(size, digest)?);
        }
        // Marked before the bytes become visible: no other namespace is
        // ever served private bytes unproven.
        self.access.mark(ns, digest, Kind::Blob).await?;
        match self.store(digest, fill, size).await {
            // A full disk: evict, then try once more.
            Err(CacheError::Storage(e)) if e.is_storage_full() => {
                let made = self.tracker.make_room(size).await;
                tracing::warn!(%digest, size, evicted = made.bytes, error = %e, "storage full; evicted to make room, storing again");
                self.store(digest, fill, size).await?;
            }
            stored => stored?,
        }
        drop(reserved);
        self.tracker.filled(&key, digest, size);
        self.links
            .ensure(&ns.repo(repo), digest, Kind::Blob, false)
            .await;
        Ok(())
    }

    /// Reserves `size` bytes of the byte budget for `digest`'s fill: a 503
    /// with `Retry-After` when even eviction cannot make the room (what is
    /// stored is in use by pulls and other fills).
    fn reserve(&self, size: u64, digest: &Digest) -> Result<Reservation, CacheError> {
        self.tracker.reserve(size).map_err(|no| {
            self.metrics.fill_refused();
            let mut error = OciError::new(
                ErrorCode::Unavailable,
                format!(
                    "no room in the byte budget for blob {digest} ({} bytes): {} of its {} bytes are in use by pulls and fills",
                    no.wanted, no.held, no.budget
                ),
            );
            error.retry_after = Some(reqwest::header::HeaderValue::from_static("30"));
            error.into()
        })
    }

    /// Makes sure a blob of `announced` bytes may be filled: not larger
    /// than the limit, and, for a spool in the spool directory, with room
    /// on its volume beside what the running fills have still to write
    /// (held until written or the guard is dropped). A spool that is the
    /// storage's scratch file (`adoptable`) takes the blob's place in
    /// storage, whose room is the byte budget's and eviction's: a full
    /// volume evicts rather than refuses.
    fn spool_room(
        &self,
        announced: Option<u64>,
        adoptable: bool,
        digest: &Digest,
    ) -> Result<SpoolRoom, CacheError> {
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
        if adoptable {
            return Ok(SpoolRoom {
                spooling: Arc::clone(&self.spooling),
                remaining: 0,
            });
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

    /// Stores the verified spool of `fill`: adopted as the stored file
    /// where it is the driver's scratch file, else copied to a writer and
    /// committed. On any failure nothing becomes visible.
    async fn store(&self, digest: &Digest, fill: &Fill, size: u64) -> Result<(), CacheError> {
        let path = layout::blob_data(digest);
        if fill.adoptable {
            match self.driver.adopt(&path, Arc::clone(&fill.spool)).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_storage_full() => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "could not adopt the spool; copying it");
                }
            }
        }
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

    /// Writes `chunk` at `at` in the spool of `fill`. A spool that is the
    /// storage's scratch file shares the storage's volume: when that is
    /// full, eviction makes room for the blob (`announced` bytes, else what
    /// has arrived) and the write is tried once more.
    async fn spool_write(
        &self,
        fill: &Fill,
        chunk: &[u8],
        at: u64,
        announced: Option<u64>,
        digest: &Digest,
    ) -> Result<(), CacheError> {
        let failed = |e: std::io::Error| -> CacheError {
            OciError::new(ErrorCode::Unavailable, format!("spool write failed: {e}")).into()
        };
        match fill.spool.write_all_at(chunk, at) {
            Err(e) if fill.adoptable && e.kind() == std::io::ErrorKind::StorageFull => {
                let size = announced.unwrap_or(at + chunk.len() as u64);
                let made = self.tracker.make_room(size).await;
                tracing::warn!(%digest, size, evicted = made.bytes, "storage full while spooling; evicted to make room, writing again");
                fill.spool.write_all_at(chunk, at).map_err(failed)
            }
            written => written.map_err(failed),
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
            self.spool_write(fill, &chunk, written, announced, digest)
                .await?;
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
