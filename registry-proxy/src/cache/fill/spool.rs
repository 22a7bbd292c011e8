//! A fill's spool: the unnamed file every waiting client reads at its own
//! pace, the window of the newest bytes kept in memory, the room the spool's
//! volume must have, and the queue that hashes the bytes as they arrive.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use rustix::buffer::spare_capacity;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::Fill;
use crate::sync::lock;
use crate::zerocopy::ZeroCopy;

/// Bytes a client stream reads from the spool at once.
const SPOOL_READ: u64 = 256 << 10;

/// The newest bytes of a fill kept in memory, so that clients keeping pace
/// with the upstream are served without reading the spool back.
const RECENT_WINDOW: usize = 4 << 20;

/// Bytes received but not yet hashed, at most.
const HASH_QUEUE: usize = 8 << 20;

/// A body stream for an HTTP response.
pub type Body = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// The newest received bytes of a fill: whole chunks as the upstream sent
/// them, covering `[start, start + len)`, at most about [`RECENT_WINDOW`].
#[derive(Default)]
pub(crate) struct Recent {
    start: u64,
    len: usize,
    chunks: VecDeque<Bytes>,
}

impl Recent {
    pub(crate) fn push(&mut self, chunk: Bytes) {
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
    pub(crate) fn get(&self, pos: u64, limit: u64) -> Option<Bytes> {
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

/// Spool room a running fill holds: the bytes it announced and has not
/// written yet (what it wrote, the volume's free space already shows).
pub(crate) struct SpoolRoom {
    /// The bytes the running fills have still to write, this one's included.
    pub(crate) spooling: Arc<std::sync::atomic::AtomicU64>,
    /// This fill's part of them.
    pub(crate) remaining: u64,
}

impl SpoolRoom {
    /// `n` more bytes are in the spool.
    pub(crate) fn wrote(&mut self, n: u64) {
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
pub(crate) type Queued = (Bytes, OwnedSemaphorePermit);

/// The queue of chunks from a fill's receiver to its hashing task, bounded
/// to [`HASH_QUEUE`] bytes.
pub(crate) struct HashQueue {
    queue: mpsc::UnboundedSender<Queued>,
    room: Arc<Semaphore>,
}

impl HashQueue {
    pub(crate) fn new() -> (Self, mpsc::UnboundedReceiver<Queued>) {
        let (queue, receive) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(HASH_QUEUE));
        (Self { queue, room }, receive)
    }

    /// Queues `chunk`, waiting for room. If the hashing task is gone, the
    /// chunk is dropped: awaiting that task reports why.
    pub(crate) async fn send(&self, chunk: Bytes) {
        let want = chunk.len().clamp(1, HASH_QUEUE) as u32;
        if let Ok(permit) = Arc::clone(&self.room).acquire_many_owned(want).await {
            let _ = self.queue.send((chunk, permit));
        }
    }
}

/// Reads `len` bytes at `pos` of the fill's spool (they must be there).
pub(crate) async fn read_spool(fill: &Fill, pos: u64, len: u64) -> std::io::Result<Bytes> {
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

/// Reads `[start, end)` from a fill's spool as the fill writes it. The last
/// byte is held back until the digest is verified, so a client never gets a
/// complete body that failed verification: on failure its stream errors.
/// Verified bytes are served even if the commit to storage then fails.
///
/// With `zero_copy`, the bytes written so far go out as placeholders of the
/// spool file (sent with `sendfile` from the page cache the fill just
/// wrote); without, from the in-memory window of the newest bytes, or read
/// back from the spool for a client that fell behind it.
pub(crate) fn spool_stream(
    fill: Arc<Fill>,
    start: u64,
    end: u64,
    zero_copy: Option<ZeroCopy>,
) -> Body {
    let progress = fill.progress.clone();
    Box::pin(futures::stream::try_unfold(
        (fill, progress, start, zero_copy),
        move |(fill, mut progress, pos, zero_copy)| async move {
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
                    if let Some(handle) = &zero_copy {
                        let chunk = handle.chunk(Arc::clone(&fill.spool), pos, limit - pos);
                        let next = pos + chunk.len() as u64;
                        return Ok(Some((chunk, (fill, progress, next, zero_copy))));
                    }
                    let recent = lock(&fill.recent).get(pos, limit);
                    if let Some(chunk) = recent {
                        let next = pos + chunk.len() as u64;
                        return Ok(Some((chunk, (fill, progress, next, zero_copy))));
                    }
                    let chunk = read_spool(&fill, pos, (limit - pos).min(SPOOL_READ)).await?;
                    let next = pos + chunk.len() as u64;
                    return Ok(Some((chunk, (fill, progress, next, zero_copy))));
                }
                if progress.changed().await.is_err() {
                    return Err(std::io::Error::other("the fill ended unexpectedly"));
                }
            }
        },
    ))
}
