//! A local tier in front of remote storage (`proxy.localtier`): each
//! replica keeps copies of the blobs it served from S3 on its own
//! filesystem, within a byte budget, so that their warm hits do not reach
//! the bucket (and go out with `sendfile`).
//!
//! - A copy is made in the background after a blob is served whole from
//!   storage: read again from storage, hashed as it is written, committed
//!   (renamed into place) only when it matches its digest. One copy per
//!   digest at a time, two at once, 64 waiting or running at most (past
//!   that, a hit copies nothing: a later one will).
//! - Copies are used only where the blob's cache entry is known and linked
//!   (as for small blobs in memory), so expiry, eviction and purges, which
//!   drop the entry, take effect at once; the copy itself goes when the
//!   tier's budget needs its room (oldest first).
//! - A copy found at start is hashed before it is first served; one that
//!   no longer matches is deleted and counted as a corrupt blob, and the
//!   request is served from storage. Staged copies a crash left behind are
//!   removed at start.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use driver_core::{OpenFile, StorageDriver};
use driver_fs::{FsConfig, FsDriver, Fsync};
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use super::verify::hash_of;
use crate::layout;
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::scheduler::usage::stored_blobs;
use crate::sync::{Fifo, lock};

/// Where the tier is and how much it holds (`proxy.localtier`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierOptions {
    /// Its directory (`rootdirectory`).
    pub root: PathBuf,
    /// The bytes it holds at most (`maxsize`).
    pub max_bytes: u64,
}

/// Copies made at once.
const COPIES_AT_ONCE: usize = 2;

/// Copies waiting or running at most.
const COPIES_PENDING: usize = 64;

/// The local tier.
pub(crate) struct Tier {
    fs: Arc<dyn StorageDriver>,
    /// The copies held, by digest: whether this process checked it.
    held: Mutex<Fifo<Digest, bool>>,
    /// Copies being made.
    copying: Mutex<HashSet<Digest>>,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl Tier {
    /// Opens the tier at `options.root`: removes what a crash left staged
    /// and takes stock of the copies there (unchecked).
    pub(crate) async fn open(
        options: &TierOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, driver_core::Error> {
        let config = FsConfig {
            root_directory: options.root.clone(),
            // A cache of what storage holds: a power loss costs copies,
            // which are checked before use.
            fsync: Fsync::Never,
        };
        let fs: Arc<dyn StorageDriver> = Arc::new(FsDriver::open(&config)?);
        fs.purge_writers(SystemTime::now()).await?;
        let budget = usize::try_from(options.max_bytes).unwrap_or(usize::MAX);
        let mut held = Fifo::new(budget);
        let mut over = Vec::new();
        for (digest, size) in stored_blobs(&*fs).await? {
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            over.extend(held.insert(digest, false, size));
        }
        let tier = Arc::new(Self {
            fs,
            held: Mutex::new(held),
            copying: Mutex::default(),
            slots: Arc::new(Semaphore::new(COPIES_AT_ONCE)),
            metrics,
        });
        tier.delete(over).await;
        Ok(tier)
    }

    /// The copy of `digest`, opened whole, if the tier holds a good one.
    pub(crate) async fn open_blob(&self, digest: &Digest) -> Option<OpenFile> {
        let checked = *lock(&self.held).get(digest)?;
        if !checked && !self.check(digest).await {
            return None;
        }
        match self.fs.open(&layout::blob_data(digest), 0).await {
            Ok(file) => Some(file),
            Err(e) => {
                if !e.is_not_found() {
                    tracing::warn!(%digest, error = %e, "local tier read failed");
                }
                lock(&self.held).remove(digest);
                None
            }
        }
    }

    /// Hashes the copy of `digest`; one that does not match is deleted.
    async fn check(&self, digest: &Digest) -> bool {
        let path = layout::blob_data(digest);
        let matches = hash_of(self.fs.as_ref(), &path, &mut 0)
            .await
            .is_ok_and(|got| got == *digest);
        if matches {
            if let Some(checked) = lock(&self.held).get_mut(digest) {
                *checked = true;
            }
        } else {
            tracing::warn!(%digest, "a local tier copy does not match its digest; deleting it");
            self.metrics.corrupt_blob();
            lock(&self.held).remove(digest);
            let _ = self.fs.delete(&path).await;
        }
        matches
    }

    /// Makes a copy of `digest` (`size` bytes) from `storage` in the
    /// background, unless one is held or being made.
    pub(crate) fn copy_in(self: &Arc<Self>, digest: Digest, storage: Arc<dyn StorageDriver>) {
        if lock(&self.held).get(&digest).is_some() {
            return;
        }
        {
            // At most this many copies wait or run: past it, a hit copies
            // nothing (a later hit of the blob will).
            let mut copying = lock(&self.copying);
            if copying.len() >= COPIES_PENDING || !copying.insert(digest) {
                return;
            }
        }
        let tier = Arc::clone(self);
        tokio::spawn(async move {
            let copied = tier.copy(&digest, storage.as_ref()).await;
            lock(&tier.copying).remove(&digest);
            match copied {
                Ok(Some(size)) => {
                    let over = lock(&tier.held).insert(digest, true, size);
                    tier.delete(over).await;
                }
                Ok(None) => {
                    tracing::warn!(%digest, "storage's blob does not match its digest; not copied to the local tier")
                }
                Err(e) => tracing::warn!(%digest, error = %e, "copying to the local tier failed"),
            }
        });
    }

    /// Copies `digest` from `storage`: its size once committed, `None`
    /// when the bytes do not match (nothing is committed then).
    async fn copy(
        &self,
        digest: &Digest,
        storage: &dyn StorageDriver,
    ) -> Result<Option<usize>, driver_core::Error> {
        let _slot = self.slots.acquire().await;
        let path = layout::blob_data(digest);
        let mut stream = storage.reader(&path, 0).await?;
        let mut writer = self.fs.writer(&path, false).await?;
        let mut hasher = Sha256::new();
        let mut size = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = writer.cancel().await;
                    return Err(e);
                }
            };
            hasher.update(&chunk);
            size += chunk.len();
            if let Err(e) = writer.write(chunk).await {
                let _ = writer.cancel().await;
                return Err(e);
            }
        }
        if Digest::from_hasher(hasher) != *digest {
            writer.cancel().await?;
            return Ok(None);
        }
        writer.commit().await?;
        Ok(Some(size))
    }

    /// Deletes the copies the budget let go.
    async fn delete(&self, over: Vec<(Digest, bool)>) {
        for (digest, _) in over {
            if let Err(e) = self.fs.delete(&layout::blob_data(&digest)).await {
                if !e.is_not_found() {
                    tracing::warn!(%digest, error = %e, "could not delete a local tier copy");
                }
            }
        }
    }
}
