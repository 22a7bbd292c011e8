//! The public listener's limits, on real sockets: headers that never end,
//! TLS handshakes that never end, connections beyond the limit, a client
//! that stops reading a large blob.
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
        LIMITS,
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
