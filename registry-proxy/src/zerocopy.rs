//! Zero-copy responses: a local file's bytes go from the page cache to the
//! client's socket with `sendfile`, never through this process's memory.
//!
//! Only plain-TCP HTTP/1.x connections take part (TLS must encrypt in
//! userspace; HTTP/2 frames its data). On such a connection the listener
//! wraps the socket in a [`SendfileSocket`] and gives each request a
//! [`ZeroCopy`] handle. A handler that answers with a local file makes its
//! body with [`ZeroCopy::body`] (a fill's clients, with [`ZeroCopy::chunk`]
//! as the spool grows): hyper writes the response head as usual,
//! and the body's chunks are *placeholders*, slices of one static buffer
//! that is never read. The socket recognises a placeholder by its address,
//! and sends as many bytes of the file instead, in order: the files a
//! connection's bodies announce wait in a queue (its [`Outbox`]), since
//! hyper writes chunks in the order bodies yield them. hyper must then
//! queue body chunks rather than copy them (its `writev` strategy, which
//! the listener sets); a placeholder that arrives with no file waiting
//! fails the connection instead of sending the buffer's zeros.
//!
//! A response head followed by a placeholder in one write goes out with
//! `MSG_MORE`, so the head and the first bytes of the file share a packet.
//! `sendfile` reads from the page cache on the runtime thread, as nginx
//! does without `aio`: a file that is not cached blocks that thread while
//! the disk reads it.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::sync::lock;

/// Bytes of the placeholder buffer: a body yields chunks of at most this.
const PLACEHOLDER_LEN: usize = 1 << 20;

/// The placeholder chunks' bytes. Zeroed and never read: it stays in
/// `.bss` and costs no memory.
static PLACEHOLDER: [u8; PLACEHOLDER_LEN] = [0; PLACEHOLDER_LEN];

/// Whether `slice` lies within [`PLACEHOLDER`].
fn is_placeholder(slice: &[u8]) -> bool {
    let base = PLACEHOLDER.as_ptr() as usize;
    let at = slice.as_ptr() as usize;
    !slice.is_empty() && at >= base && at + slice.len() <= base + PLACEHOLDER_LEN
}

/// A part of a file still to be sent.
struct Span {
    file: Arc<std::fs::File>,
    offset: u64,
    left: u64,
}

/// The files a connection's response bodies announced, in the order their
/// placeholders will be written.
#[derive(Default)]
pub struct Outbox {
    spans: Mutex<VecDeque<Span>>,
}

/// A request's handle on its connection's zero-copy path (a request
/// extension, present only where the path works).
#[derive(Clone)]
pub struct ZeroCopy(Arc<Outbox>);

impl ZeroCopy {
    /// The handle of the connection whose outbox is `outbox`.
    pub fn new(outbox: Arc<Outbox>) -> Self {
        Self(outbox)
    }

    /// The placeholder for the next bytes of a body: up to `len` bytes of
    /// `file` from `offset` (at most 1 MiB; the chunk's length says how
    /// many), announced to the connection's socket, which sends them with
    /// `sendfile` when hyper writes the chunk. A body's chunks must be
    /// yielded in the order they were made.
    pub fn chunk(&self, file: Arc<std::fs::File>, offset: u64, len: u64) -> Bytes {
        let n = usize::try_from(len).map_or(PLACEHOLDER_LEN, |n| n.min(PLACEHOLDER_LEN));
        lock(&self.0.spans).push_back(Span {
            file,
            offset,
            left: n as u64,
        });
        Bytes::from_static(&PLACEHOLDER[..n])
    }

    /// A response body of `len` bytes of `file` from `offset`, sent with
    /// `sendfile`. `keep` lives as long as the body (a lease, a reader
    /// never polled); `sent` hears of each chunk's length as it is handed
    /// to hyper.
    pub fn body<K>(
        &self,
        file: Arc<std::fs::File>,
        offset: u64,
        len: u64,
        keep: K,
        sent: impl Fn(u64) + Send + 'static,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static
    where
        K: Send + 'static,
    {
        let zero_copy = self.clone();
        let (mut pos, end) = (offset, offset + len);
        futures::stream::poll_fn(move |_| {
            let _ = &keep;
            if pos >= end {
                return Poll::Ready(None);
            }
            let chunk = zero_copy.chunk(Arc::clone(&file), pos, end - pos);
            pos += chunk.len() as u64;
            sent(chunk.len() as u64);
            Poll::Ready(Some(Ok(chunk)))
        })
    }
}

/// A plain TCP connection's socket that sends placeholders' files with
/// `sendfile`; every other byte passes through.
pub struct SendfileSocket {
    tcp: TcpStream,
    outbox: Arc<Outbox>,
}

impl SendfileSocket {
    /// Wraps `tcp`, sending the files announced in `outbox`.
    pub fn new(tcp: TcpStream, outbox: Arc<Outbox>) -> Self {
        Self { tcp, outbox }
    }

    /// Sends up to `want` bytes of the first waiting file; `Ok(0)` never
    /// (a file shorter than announced is an error).
    fn send_file(&self, want: usize) -> io::Result<usize> {
        let mut spans = lock(&self.outbox.spans);
        let Some(span) = spans.front_mut() else {
            return Err(io::Error::other(
                "a zero-copy placeholder was written with no file waiting",
            ));
        };
        let count = usize::try_from(span.left).map_or(want, |left| left.min(want));
        let mut offset = span.offset;
        let sent = rustix::fs::sendfile(&self.tcp, &*span.file, Some(&mut offset), count)?;
        if sent == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file ended before the bytes its response announced",
            ));
        }
        span.offset = offset;
        span.left -= sent as u64;
        if span.left == 0 {
            spans.pop_front();
        }
        Ok(sent)
    }

    /// Writes `head` (not placeholders) with `MSG_MORE`, then as much of
    /// the placeholder `file` as the socket takes: the bytes written.
    fn send_head_and_file(&self, head: &[IoSlice<'_>], file: usize) -> io::Result<usize> {
        let whole: usize = head.iter().map(|s| s.len()).sum();
        let mut control = rustix::net::SendAncillaryBuffer::default();
        let wrote = rustix::net::sendmsg(
            &self.tcp,
            head,
            &mut control,
            rustix::net::SendFlags::MORE | rustix::net::SendFlags::NOSIGNAL,
        )?;
        if wrote < whole {
            return Ok(wrote);
        }
        match self.send_file(file) {
            Ok(sent) => Ok(wrote + sent),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(wrote),
            Err(e) => Err(e),
        }
    }

    /// Runs `op` when the socket is writable, until it does not block.
    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        op: impl Fn() -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_io(Interest::WRITABLE, &op) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }
}

impl AsyncRead for SendfileSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if is_placeholder(buf) {
            return self.poll_send(cx, || self.send_file(buf.len()));
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match bufs.iter().position(|b| is_placeholder(b)) {
            None => Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs),
            Some(0) => self.poll_send(cx, || self.send_file(bufs[0].len())),
            Some(at) => {
                let (head, file) = (&bufs[..at], bufs[at].len());
                self.poll_send(cx, || self.send_head_and_file(head, file))
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_told_from_other_bytes() {
        assert!(is_placeholder(&PLACEHOLDER[..10]));
        assert!(is_placeholder(&PLACEHOLDER[PLACEHOLDER_LEN - 1..]));
        assert!(!is_placeholder(&PLACEHOLDER[..0]));
        let copy = PLACEHOLDER[..10].to_vec();
        assert!(!is_placeholder(&copy));
    }
}
