//! The public listener's limits, on real sockets: headers that never end,
//! TLS handshakes that never end, connections beyond the limit, a client
//! that stops reading a large blob, an HTTP/2 connection that only pings,
//! and the process's limit of open files.
//! Each limit is 1 s here; the tests wait for the server to act (a closed
//! socket, a gauge falling), never for a length of time.

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::time::Duration;

use bytes::Bytes;
use registry_proxy::layout;
use registry_proxy::listener::{Bound, Limits, serve};
use registry_proxy::oci::Digest;
use support::InProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMITS: Limits = Limits {
    max_connections: 4,
    header_read_timeout: Duration::from_secs(1),
    // Longer than any wait here: only the header and write timeouts act.
    idle_timeout: Duration::from_secs(120),
    write_timeout: Duration::from_secs(1),
};

/// A proxy on an unreachable upstream (nothing here needs one), served on
/// a real socket with [`LIMITS`]; its address.
async fn listening(proxy: &InProcess) -> String {
    listening_with(proxy, None).await
}

/// [`listening`], over `tls` when given.
async fn listening_with(
    proxy: &InProcess,
    tls: Option<std::sync::Arc<registry_proxy::tls::ServerTls>>,
) -> String {
    listening_within(proxy, tls, LIMITS).await
}

/// [`listening_with`], within `limits`.
async fn listening_within(
    proxy: &InProcess,
    tls: Option<std::sync::Arc<registry_proxy::tls::ServerTls>>,
    limits: Limits,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let router = registry_proxy::app(proxy.state.clone());
    let metrics = std::sync::Arc::clone(&proxy.state.metrics);
    tokio::spawn(serve(
        Bound::Tcp(listener),
        tls,
        router,
        limits,
        metrics,
        std::future::pending(),
    ));
    addr
}

/// Reads until the server closes the connection (or resets it); what came.
async fn until_closed(socket: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server never closed the connection"),
        }
    }
}

/// Headers that never end are cut off after the header timeout: the
/// connections (here more than the limit) do not stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_never_end_are_cut_off() {
    let proxy = InProcess::open("http://127.0.0.1:9", None, Duration::ZERO).await;
    let addr = listening(&proxy).await;
    let mut slow = Vec::new();
    for _ in 0..LIMITS.max_connections {
        let mut socket = TcpStream::connect(&addr).await.expect("connect");
        socket
            .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("write");
        slow.push(socket);
    }
    // One more, complete: served once a slot is free.
    let mut patient = TcpStream::connect(&addr).await.expect("connect");
    patient
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = String::from_utf8_lossy(&until_closed(&mut patient).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // It was served only once the limit let it in: a slow connection had
    // been closed before (without the limit, all were still open).
    let closed = slow
        .iter()
        .filter(|socket| {
            let mut byte = [0u8; 1];
            !matches!(socket.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    assert!(closed >= 1, "served while every slot was held");
    for socket in &mut slow {
        until_closed(socket).await;
    }
}

/// TLS handshakes that never finish (a client that connects and sends
/// nothing, or half a ClientHello) are cut off after the header timeout:
/// more of them than the connection limit do not keep a complete request
/// out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_that_never_finish_are_cut_off() {
    use registry_proxy::tls::{CertSource, ServerTls, TlsSpec};
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = support::tls::TestCa::new("listener CA");
    let issued = ca.issue(&["127.0.0.1"], dir.path(), "server");
    let spec = TlsSpec::read(
        CertSource::Files {
            certificate: issued.cert.clone(),
            key: issued.key.clone(),
        },
        &[],
        None,
        None,
    )
    .expect("spec");
    let tls = std::sync::Arc::new(ServerTls::start(&spec).expect("tls"));
    let proxy = InProcess::open("http://127.0.0.1:9", None, Duration::ZERO).await;
    let addr = listening_with(&proxy, Some(tls)).await;
    let mut silent = Vec::new();
    for i in 0..LIMITS.max_connections {
        let mut socket = TcpStream::connect(&addr).await.expect("connect");
        if i % 2 == 1 {
            // The start of a TLS record that never completes.
            socket
                .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .expect("write");
        }
        silent.push(socket);
    }
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("root"))
        .build()
        .expect("client");
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        client.get(format!("https://{addr}/v2/")).send(),
    )
    .await
    .expect("served once a slot is free")
    .expect("an answer");
    assert_eq!(answer.status(), 200);
    for socket in &mut silent {
        until_closed(socket).await;
    }
}

/// A client that stops reading a large blob is cut off after the write
/// timeout: its connection closes (the gauge falls back to 0) and it got
/// only part of the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off() {
    let proxy = InProcess::open("http://127.0.0.1:9", None, Duration::ZERO).await;
    let blob = Bytes::from(vec![7u8; 64 << 20]);
    let digest = Digest::of(&blob);
    proxy
        .driver
        .put_content(&layout::blob_data(&digest), blob.clone())
        .await
        .expect("stored");
    // The blob is stored under no repository: a shared namespace serves it.
    let addr = listening(&proxy).await;
    let mut socket = TcpStream::connect(&addr).await.expect("connect");
    socket
        .write_all(format!("GET /v2/a/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    // Not reading: the server's writes stall, then it gives up.
    let gauge_reaches = |n: i64| {
        let metrics = std::sync::Arc::clone(&proxy.state.metrics);
        async move {
            for _ in 0..600 {
                if metrics.connections() == n {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        }
    };
    assert!(gauge_reaches(1).await, "the connection was never served");
    assert!(gauge_reaches(0).await, "the stalled connection stayed open");
    let got = until_closed(&mut socket).await;
    assert!(
        got.len() < blob.len(),
        "the whole body arrived ({} bytes)",
        got.len()
    );
}

/// An HTTP/2 connection that carries no request is closed after the idle
/// timeout although its client pings it every 100 ms (pings, and the
/// server's own keep-alive pings and their answers, are bytes, not
/// requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_that_only_pings_is_closed_when_idle() {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let proxy = InProcess::open("http://127.0.0.1:9", None, Duration::ZERO).await;
    let limits = Limits {
        idle_timeout: Duration::from_secs(1),
        ..LIMITS
    };
    let addr = listening_within(&proxy, None, limits).await;
    let socket = TcpStream::connect(&addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true)
        .handshake::<_, axum::body::Body>(TokioIo::new(socket))
        .await
        .expect("HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    // One request, answered over HTTP/2; then only pings.
    let request = axum::http::Request::get(format!("http://{addr}/v2/"))
        .body(axum::body::Body::empty())
        .expect("request");
    let answer = sender.send_request(request).await.expect("answer");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.version(), axum::http::Version::HTTP_2);
    axum::body::to_bytes(axum::body::Body::new(answer.into_body()), 1 << 20)
        .await
        .expect("body");
    let closed = tokio::time::timeout(Duration::from_secs(30), connection).await;
    assert!(
        closed.is_ok(),
        "the connection that only pinged stayed open 30 s past a 1 s idle timeout"
    );
    assert!(
        sender.is_closed(),
        "the client still holds an open connection"
    );
}

/// A response that takes longer than the idle timeout to read (a client
/// reading a 16 MiB blob at a steady pace over about 5 s, with a 1 s idle
/// timeout) is not cut off: a request counts until its body ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_longer_than_the_idle_timeout_is_not_cut_off() {
    let proxy = InProcess::open("http://127.0.0.1:9", None, Duration::ZERO).await;
    let blob = Bytes::from(vec![5u8; 16 << 20]);
    let digest = Digest::of(&blob);
    proxy
        .driver
        .put_content(&layout::blob_data(&digest), blob.clone())
        .await
        .expect("stored");
    let limits = Limits {
        idle_timeout: Duration::from_secs(1),
        ..LIMITS
    };
    let addr = listening_within(&proxy, None, limits).await;
    let mut socket = TcpStream::connect(&addr).await.expect("connect");
    socket
        .write_all(
            format!("GET /v2/a/blobs/{digest} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), socket.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server neither sent nor closed"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        got.len() > blob.len(),
        "cut off after {} bytes of {}",
        got.len(),
        blob.len()
    );
}

/// The cache raises its soft limit of open files to the hard limit at
/// start: started with a soft limit of 256 under a larger hard limit, it
/// runs with the hard limit (every connection and stored file open holds a
/// descriptor).
#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit() {
    /// The soft and hard "Max open files" of process `pid`.
    fn open_files(pid: &str) -> (String, String) {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("a Max open files line");
        let mut fields = line["Max open files".len()..].split_whitespace();
        let soft = fields.next().expect("soft").to_owned();
        (soft, fields.next().expect("hard").to_owned())
    }
    let (_, hard) = open_files("self");
    if hard != "unlimited" && hard.parse::<u64>().expect("a number") <= 256 {
        conformance::skip(
            "the_open_files_limit_is_raised",
            "REQUIRE_E2E",
            "the hard limit of open files is 256 or less here",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", support::free_port());
    let debug = format!("127.0.0.1:{}", support::free_port());
    let config = d.join("proxy.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nhttp:\n  addr: {addr}\n  debug:\n    addr: {debug}\nstorage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  remoteurl: http://127.0.0.1:9\n",
            d.join("root").display()
        ),
    )
    .expect("config");
    let binary = support::registry_proxy_binary();
    // The shell lowers its soft limit, then becomes the cache (same pid).
    let proxy = support::start_env(
        "sh",
        &[
            "-c",
            r#"ulimit -S -n 256 && exec "$0" serve "$1""#,
            binary.to_str().expect("utf-8 path"),
            config.to_str().expect("utf-8 path"),
        ],
        "proxy",
        debug,
        d,
        &[],
    );
    let (soft, hard_now) = open_files(&proxy.pid().to_string());
    assert_eq!(hard_now, hard, "the hard limit is inherited unchanged");
    assert_eq!(soft, hard, "the soft limit stayed at {soft}");
}
