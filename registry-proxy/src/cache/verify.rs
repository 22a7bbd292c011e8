//! Stored bytes checked against their digest: as whole blobs are served
//! (each blob on its first whole read after start, or on every one), and
//! all of storage by `registry-proxy scrub`. A blob that no longer matches
//! (bit rot, `fsync: never` and a power loss, tampering) is deleted, so
//! that the next request fetches it again, and counted.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use driver_core::{StorageDriver, StoragePath};
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};

use crate::layout;
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::scheduler::usage::stored_blobs;
use crate::sync::lock;

/// Which whole-blob reads are checked as they are served
/// (`proxy.verifyreads`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VerifyReads {
    /// A blob's first whole read after start; later reads trust it (the
    /// default: a warm hit costs no hashing).
    #[default]
    First,
    /// Every whole read (costs one SHA-256 pass per hit).
    Always,
    /// None: only `registry-proxy scrub` checks.
    Never,
}

/// Digests remembered as verified at most; past it the memory starts over.
const REMEMBERED: usize = 1 << 20;

/// The checker of served blobs.
pub struct Verifier {
    mode: VerifyReads,
    verified: Mutex<HashSet<Digest>>,
    driver: Arc<dyn StorageDriver>,
    metrics: Arc<Metrics>,
}

impl Verifier {
    /// Checks reads of `driver` as `mode` says, counting in `metrics`.
    pub fn new(mode: VerifyReads, driver: Arc<dyn StorageDriver>, metrics: Arc<Metrics>) -> Self {
        Self {
            mode,
            verified: Mutex::default(),
            driver,
            metrics,
        }
    }

    /// Whether a whole read of `digest` is to be checked.
    pub fn wants(&self, digest: &Digest) -> bool {
        match self.mode {
            VerifyReads::Never => false,
            VerifyReads::Always => true,
            VerifyReads::First => !lock(&self.verified).contains(digest),
        }
    }

    /// `stream`, the whole of blob `digest`, checked as it passes: its last
    /// chunk is held back until the digest matches. On a mismatch the
    /// stream ends in an error instead (the client's body breaks off) and
    /// the blob is deleted.
    pub fn check<S>(
        self: &Arc<Self>,
        digest: &Digest,
        stream: S,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        struct State<S> {
            this: Arc<Verifier>,
            digest: Digest,
            stream: std::pin::Pin<Box<S>>,
            hasher: Sha256,
            held: Option<Bytes>,
            done: bool,
        }
        let state = State {
            this: Arc::clone(self),
            digest: *digest,
            stream: Box::pin(stream),
            hasher: Sha256::new(),
            held: None,
            done: false,
        };
        futures::stream::unfold(state, |mut state| async move {
            if state.done {
                return None;
            }
            loop {
                match state.stream.next().await {
                    Some(Ok(chunk)) => {
                        state.hasher.update(&chunk);
                        if let Some(previous) = state.held.replace(chunk) {
                            return Some((Ok(previous), state));
                        }
                    }
                    Some(Err(e)) => {
                        state.done = true;
                        return Some((Err(e), state));
                    }
                    None => {
                        state.done = true;
                        let got = Digest::from_hasher(std::mem::take(&mut state.hasher));
                        if got == state.digest {
                            state.this.passed(&state.digest);
                            return state.held.take().map(|last| (Ok(last), state));
                        }
                        state.this.failed(&state.digest, &got).await;
                        let error = std::io::Error::other(format!(
                            "stored blob {} is corrupt; it was deleted",
                            state.digest
                        ));
                        return Some((Err(error), state));
                    }
                }
            }
        })
    }

    fn passed(&self, digest: &Digest) {
        if self.mode == VerifyReads::First {
            let mut verified = lock(&self.verified);
            if verified.len() >= REMEMBERED {
                verified.clear();
            }
            verified.insert(*digest);
        }
    }

    /// Deletes blob `digest`, whose bytes hash to `got`, and counts it.
    async fn failed(&self, digest: &Digest, got: &Digest) {
        self.metrics.corrupt_blob();
        lock(&self.verified).remove(digest);
        tracing::error!(%digest, %got, "a stored blob does not match its digest; deleting it");
        if let Err(e) = delete_blob(&*self.driver, digest).await {
            tracing::warn!(%digest, error = %e, "could not delete a corrupt blob");
        }
    }
}

async fn delete_blob(driver: &dyn StorageDriver, digest: &Digest) -> driver_core::Result<()> {
    match driver.delete(&layout::blob_data(digest)).await {
        Err(e) if !e.is_not_found() => Err(e),
        _ => Ok(()),
    }
}

/// What a scrub found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scrubbed {
    /// Blobs read whole and checked.
    pub blobs: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Blobs that did not match their digest (deleted unless a dry run).
    pub corrupt: u64,
    /// Blobs that could not be read (left alone).
    pub unreadable: u64,
}

/// Reads every stored blob and checks it against its digest, at most
/// `rate` bytes per second (`None`: as fast as storage goes); deletes the
/// corrupt ones unless `dry_run`.
pub async fn scrub(
    driver: &dyn StorageDriver,
    rate: Option<u64>,
    dry_run: bool,
    metrics: &Metrics,
) -> driver_core::Result<Scrubbed> {
    let mut digests: Vec<Digest> = stored_blobs(driver).await?.into_keys().collect();
    digests.sort_unstable();
    let started = tokio::time::Instant::now();
    let mut found = Scrubbed::default();
    for digest in digests {
        let read = hash_of(driver, &layout::blob_data(&digest), &mut found.bytes).await;
        if let Some(rate) = rate.filter(|r| *r > 0) {
            // Sleep until the bytes read so far fit the rate.
            let due = Duration::from_secs_f64(found.bytes as f64 / rate as f64);
            tokio::time::sleep_until(started + due).await;
        }
        match read {
            Ok(got) if got == digest => found.blobs += 1,
            Ok(got) => {
                found.blobs += 1;
                found.corrupt += 1;
                metrics.corrupt_blob();
                tracing::error!(%digest, %got, dry_run, "a stored blob does not match its digest");
                if !dry_run {
                    delete_blob(driver, &digest).await?;
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                found.unreadable += 1;
                tracing::warn!(%digest, error = %e, "could not read a stored blob");
            }
        }
    }
    Ok(found)
}

/// The SHA-256 of the file at `path`, adding its length to `bytes`.
pub(crate) async fn hash_of(
    driver: &dyn StorageDriver,
    path: &StoragePath,
    bytes: &mut u64,
) -> driver_core::Result<Digest> {
    let mut stream = driver.reader(path, 0).await?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        *bytes += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok(Digest::from_hasher(hasher))
}
