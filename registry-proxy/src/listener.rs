//! The public listener: accepts connections up to a limit and serves each
//! with HTTP/1.1 or HTTP/2, within time limits that keep one client from
//! holding what others need.
//!
//! - A request's headers must arrive within `header_read_timeout`.
//! - A connection with no request in progress for `idle_timeout` is
//!   closed (an idle keep-alive, or a client that went silent). Idleness is
//!   measured by requests, not bytes: HTTP/2 keep-alive pings (the
//!   client's, or the server's and their answers) do not keep a connection
//!   open; a request counts from its head's arrival until its response
//!   body ends.
//! - A response write that cannot make progress for `write_timeout` (the
//!   client stopped reading) closes the connection: its body is dropped,
//!   and with it the fill client's spool and window, or the stored blob's
//!   reader and lease.
//! - At most `max_connections` are served at once; more wait in the
//!   kernel's backlog until one ends.
//!
//! The debug and admin listeners are served the same way ([`serve_side`]),
//! with the public listener's time limits and small connection caps of
//! their own ([`DEBUG_CONNECTIONS`], [`ADMIN_CONNECTIONS`]).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::ServiceExt as _;

use crate::metrics::Metrics;
use crate::tls::ServerTls;
use crate::zerocopy::{Outbox, SendfileSocket, ZeroCopy};

/// The listener's limits (`http.*` keys of the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// How long a request's headers may take to arrive.
    pub header_read_timeout: Duration,
    /// How long a connection may stay without a request in progress.
    pub idle_timeout: Duration,
    /// How long a response write may wait for the client to read.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(60),
        }
    }
}

/// Connections the debug listener serves at once (probes, scrapes, a
/// person on `/status`); more wait in the kernel's backlog.
pub const DEBUG_CONNECTIONS: usize = 64;

/// Connections the admin listener serves at once.
pub const ADMIN_CONNECTIONS: usize = 16;

/// What a connection did last, in milliseconds since the listener started.
#[derive(Default)]
struct Activity {
    /// When the last request arrived or its response ended (or the
    /// connection was accepted): idle since then when `requests` is 0.
    last: AtomicU64,
    /// Requests in progress, their response bodies included.
    requests: AtomicUsize,
    /// Since when a write has been waiting for the client; 0: none waits.
    blocked_since: AtomicU64,
}

/// A request in progress on a connection: counted from when its head
/// arrives until its response body ends or is dropped.
struct InFlight {
    activity: Arc<Activity>,
    epoch: Instant,
}

impl InFlight {
    fn start(activity: &Arc<Activity>, epoch: Instant) -> Self {
        activity.last.store(millis(epoch), Ordering::Relaxed);
        activity.requests.fetch_add(1, Ordering::AcqRel);
        Self {
            activity: Arc::clone(activity),
            epoch,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity
            .last
            .store(millis(self.epoch), Ordering::Relaxed);
        // Release: whoever sees the count fall sees the time above.
        self.activity.requests.fetch_sub(1, Ordering::Release);
    }
}

/// A response body that keeps its request counted until it ends. Its
/// frames pass unchanged (the zero-copy placeholders keep their address).
struct Counted<B> {
    body: B,
    _request: InFlight,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection's socket, noting since when a write waits for the client.
struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
    epoch: Instant,
}

impl<I> Watched<I> {
    fn now(&self) -> u64 {
        millis(self.epoch)
    }
}

fn millis(epoch: Instant) -> u64 {
    // At least 1: 0 means "not blocked".
    u64::try_from(epoch.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Bytes read are no activity: a ping is not a request.
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> Watched<I> {
    /// Notes the outcome of a write (for the write timeout only: bytes
    /// written are no activity either).
    fn wrote<T>(&self, polled: &Poll<std::io::Result<T>>) {
        match polled {
            Poll::Pending => {
                let now = self.now();
                let _ = self.activity.blocked_since.compare_exchange(
                    0,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Poll::Ready(_) => {
                self.activity.blocked_since.store(0, Ordering::Relaxed);
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.wrote(&polled);
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why a connection was closed by its watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overstayed {
    Idle,
    Write,
}

impl Activity {
    fn overstayed(&self, now: u64, limits: &Limits) -> Option<Overstayed> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let blocked = self.blocked_since.load(Ordering::Relaxed);
        if blocked != 0 {
            // A write waits: not idle, but not for longer than the limit.
            return (now.saturating_sub(blocked) >= ms(limits.write_timeout))
                .then_some(Overstayed::Write);
        }
        if self.requests.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = self.last.load(Ordering::Relaxed);
        (now.saturating_sub(last) >= ms(limits.idle_timeout)).then_some(Overstayed::Idle)
    }
}

/// Where connections arrive (`http.net`).
#[derive(Debug)]
pub enum Bound {
    /// A TCP socket (`tcp`).
    Tcp(TcpListener),
    /// A Unix socket (`unix`); its clients show as [`UNIX_PEER`].
    Unix(UnixListener),
}

/// The address a Unix socket's clients carry as [`ConnectInfo`] (they
/// have none; failed-login throttling then counts them as one).
pub const UNIX_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

impl Bound {
    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Self::Tcp(listener) => {
                let (socket, remote) = listener.accept().await?;
                let _ = socket.set_nodelay(true);
                Ok((Socket::Tcp(socket), remote))
            }
            Self::Unix(listener) => {
                let (socket, _) = listener.accept().await?;
                Ok((Socket::Unix(socket), UNIX_PEER))
            }
        }
    }
}

/// An accepted connection.
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// An accepted connection and its client's address.
type Accepted = (Socket, SocketAddr);

/// What every connection shares.
struct Shared {
    builder: auto::Builder<TokioExecutor>,
    router: Router,
    limits: Limits,
    /// The connections gauge (the public listener's only).
    metrics: Option<Arc<Metrics>>,
    tls: Option<Arc<ServerTls>>,
    epoch: Instant,
    tick: Duration,
}

/// Serves `router` on `listener` within `limits`, over TLS when `tls` is
/// given, until `shutdown` completes, then stops accepting and waits for
/// the connections being served to finish (the caller bounds that wait).
/// Each request carries its client's address as [`ConnectInfo`].
pub async fn serve(
    listener: Bound,
    tls: Option<Arc<ServerTls>>,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    run(listener, tls, router, limits, Some(metrics), shutdown).await;
}

/// Serves a side listener's `router` (the debug or the admin surface) on
/// `listener` within `limits` (the public listener's time limits, with a
/// cap of its own such as [`DEBUG_CONNECTIONS`]) for as long as the
/// runtime runs. Its connections count in no gauge: the connections gauge
/// is the public listener's.
pub async fn serve_side(listener: TcpListener, router: Router, limits: Limits) {
    run(
        Bound::Tcp(listener),
        None,
        router,
        limits,
        None,
        std::future::pending(),
    )
    .await;
}

/// [`serve`], with the connections gauge in `metrics` if given.
async fn run(
    listener: Bound,
    tls: Option<Arc<ServerTls>>,
    router: Router,
    limits: Limits,
    metrics: Option<Arc<Metrics>>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Body chunks queued, never copied into one buffer: the zero-copy
    // path recognises its placeholders by their address.
    builder
        .http1()
        .writev(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.idle_timeout / 2);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    // The watchdog looks often enough to close within a quarter of a limit.
    let tick = limits
        .idle_timeout
        .min(limits.write_timeout)
        .checked_div(4)
        .unwrap_or_default()
        .max(Duration::from_millis(50));
    let shared = Arc::new(Shared {
        builder,
        router,
        limits,
        metrics,
        tls,
        epoch: Instant::now(),
        tick,
    });
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (socket, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it
                    // was accepted: keep serving the others.
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let shared = Arc::clone(&shared);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            if let Some(metrics) = &shared.metrics {
                metrics.connection(true);
            }
            match socket {
                // Plain TCP: files go out with sendfile.
                Socket::Tcp(socket) if shared.tls.is_none() => {
                    let outbox = Arc::new(Outbox::default());
                    let socket = SendfileSocket::new(socket, Arc::clone(&outbox));
                    let zero_copy = Some(ZeroCopy::new(outbox));
                    shared.connection(socket, remote, watcher, zero_copy).await;
                }
                Socket::Tcp(socket) => shared.connection(socket, remote, watcher, None).await,
                Socket::Unix(socket) => shared.connection(socket, remote, watcher, None).await,
            }
            if let Some(metrics) = &shared.metrics {
                metrics.connection(false);
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

impl Shared {
    /// Serves one connection: the TLS handshake first when there is TLS
    /// (within the header time limit), then HTTP until it ends or its
    /// watchdog closes it. `zero_copy` is the socket's sendfile path, if
    /// it has one (plain TCP).
    async fn connection<S>(
        &self,
        socket: S,
        remote: SocketAddr,
        watcher: Watcher,
        zero_copy: Option<ZeroCopy>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::default());
        activity.last.store(millis(self.epoch), Ordering::Relaxed);
        let watched = Watched {
            inner: socket,
            activity: Arc::clone(&activity),
            epoch: self.epoch,
        };
        let Some(tls) = &self.tls else {
            return self
                .http(watched, remote, &activity, watcher, zero_copy)
                .await;
        };
        let handshake = tokio::time::timeout(self.limits.header_read_timeout, tls.accept(watched));
        match handshake.await {
            Ok(Ok(Some(stream))) => self.http(stream, remote, &activity, watcher, None).await,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%remote, "TLS handshake too slow"),
        }
    }

    /// Serves HTTP/1.1 or HTTP/2 on `io` until the connection ends or
    /// overstays a time limit. HTTP/1.x requests carry `zero_copy`, if
    /// any. Each request is counted in `activity` until its response body
    /// ends.
    async fn http<I>(
        &self,
        io: I,
        remote: SocketAddr,
        activity: &Arc<Activity>,
        watcher: Watcher,
        zero_copy: Option<ZeroCopy>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let router = self.router.clone();
        let (counting, epoch) = (Arc::clone(activity), self.epoch);
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            let in_flight = InFlight::start(&counting, epoch);
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(remote));
            if let Some(zero_copy) = zero_copy
                .as_ref()
                .filter(|_| request.version() <= hyper::Version::HTTP_11)
            {
                request.extensions_mut().insert(zero_copy.clone());
            }
            let answer = router.clone().oneshot(request.map(axum::body::Body::new));
            async move {
                answer.await.map(|response| {
                    response.map(|body| Counted {
                        body,
                        _request: in_flight,
                    })
                })
            }
        });
        let connection = watcher.watch(
            self.builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned(),
        );
        tokio::pin!(connection);
        let mut ticks = tokio::time::interval(self.tick);
        loop {
            tokio::select! {
                _ = &mut connection => break,
                _ = ticks.tick() => {
                    if let Some(why) = activity.overstayed(millis(self.epoch), &self.limits) {
                        tracing::debug!(%remote, ?why, "closing a connection past its time limit");
                        break;
                    }
                }
            }
        }
    }
}

/// Raises this process's soft limit of open files (`RLIMIT_NOFILE`) to its
/// hard limit, and returns the soft limit now. Every connection holds a
/// descriptor and so does every stored file being read or written: the
/// usual soft limit of 1024 runs out long before `http.maxconnections`,
/// and then accepts and storage opens fail together.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}
