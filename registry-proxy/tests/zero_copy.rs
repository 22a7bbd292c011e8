//! Warm blob hits on driver-fs sent with `sendfile` (the zero-copy path),
//! through the real binary in front of Debian's `docker-registry`:
//!
//! - every size and range arrives byte-exact over kept-alive and
//!   concurrent HTTP/1.1 connections, the first whole read of a blob still
//!   goes through the verifying stream, and the metric counts what went
//!   out zero-copy; small blobs (64 KiB or less) come from memory without
//!   any storage request instead; HTTP/2 (h2c, with curl) never takes the
//!   path;
//! - kill -9 while slow clients are mid-send: what they got is a prefix of
//!   the blob, storage is intact, and the restarted proxy serves it whole;
//! - a stored file cut short while it is being sent ends the response
//!   early, never padded with other bytes;
//! - fills spool into driver-fs's scratch files and store them by adopting
//!   them (no copy); clients of a fill get its spool with `sendfile` as it
//!   is written, and a fill whose bytes do not match never sends its last
//!   byte.
//!
//! Skipped (with the reason printed) without `docker-registry` unless
//! `REQUIRE_E2E=1`.

use registry_proxy_testkit as support;

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use registry_proxy::oci::Digest;
use support::{
    Server, debug_text, fills_settled, have, push_blob, registry_proxy, verify_stored_blobs,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REPO: &str = "zc/app";
const MIB: usize = 1 << 20;
/// Blobs up to this size are kept in memory instead (the proxy's
/// `SMALL_BLOB`).
const SMALL: usize = 64 << 10;

/// The blob bytes this proxy sent with sendfile so far, over namespaces.
async fn zero_copy_bytes(proxy: &Server) -> u64 {
    debug_text(proxy, "/metrics")
        .await
        .lines()
        .filter(|l| l.starts_with("registry_proxy_zero_copy_bytes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn storage(root: &Path) -> String {
    format!("  filesystem:\n    rootdirectory: {}\n", root.display())
}

/// A GET of `digest` on a raw HTTP/1.1 connection, the head read: the
/// connection and the body bytes that came with the head.
async fn open_get(addr: &str, digest: &Digest) -> (tokio::net::TcpStream, Vec<u8>, usize) {
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET /v2/{REPO}/blobs/{digest} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    socket.write_all(request.as_bytes()).await.expect("send");
    let mut got = Vec::new();
    let mut buf = vec![0; 64 << 10];
    let end = loop {
        let n = socket.read(&mut buf).await.expect("read head");
        assert!(n > 0, "connection closed before the head");
        got.extend_from_slice(&buf[..n]);
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "head: {head}");
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    (socket, got.split_off(end), length)
}

/// Reads from `socket` into `body` until it holds `want` bytes or the
/// connection ends (or fails).
async fn read_until(socket: &mut tokio::net::TcpStream, body: &mut Vec<u8>, want: usize) {
    let mut buf = vec![0; 256 << 10];
    while body.len() < want {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_hits_are_sent_with_sendfile_byte_exact() {
    let Some((dir, upstream)) = support::upstream_for(
        "zero_copy",
        have("docker-registry") && have("curl"),
        "docker-registry or curl is not installed",
    ) else {
        return;
    };
    let d = dir.path();
    let client = reqwest::Client::new();
    // Empty, tiny, one placeholder chunk, just over one, several.
    let sizes = [0, 1, 16 << 10, MIB, MIB + 1, 5 * MIB + 3];
    let mut blobs: Vec<(Digest, Bytes)> = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let bytes = conformance::random_bytes(i as u64 + 1, *size);
        let digest = push_blob(&client, &upstream.addr, REPO, bytes.clone()).await;
        blobs.push((digest, bytes));
    }
    let proxy = registry_proxy(d, &storage(&d.join("cache")), &upstream.addr, None);
    let get = |digest: Digest, range: Option<String>| {
        let (client, addr) = (client.clone(), proxy.addr.clone());
        async move {
            let mut request = client.get(format!("http://{addr}/v2/{REPO}/blobs/{digest}"));
            if let Some(range) = range {
                request = request.header("range", range);
            }
            let response = request.send().await.expect("GET");
            assert!(response.status().is_success(), "{}", response.status());
            response.bytes().await.expect("body")
        }
    };

    // Cold: each fill's spool goes out zero-copy as it is written.
    for (digest, bytes) in &blobs {
        assert_eq!(&get(*digest, None).await, bytes, "cold {digest}");
    }
    let cold: u64 = sizes.iter().map(|&n| n as u64).sum();
    assert_eq!(zero_copy_bytes(&proxy).await, cold, "fills sent by copying");
    fills_settled(&proxy).await;
    // Each fill spooled into a scratch file of driver-fs and stored it by
    // adopting it: no writer, no copy.
    let text = debug_text(&proxy, "/metrics").await;
    assert_eq!(support::storage_ops(&text, "adopt"), blobs.len() as u64);
    assert_eq!(
        support::storage_ops(&text, "writer"),
        0,
        "a fill copied its spool"
    );
    // The first whole read from storage is verified as it streams, so not
    // zero-copy.
    for (digest, bytes) in &blobs {
        assert_eq!(&get(*digest, None).await, bytes, "first stored read");
    }
    assert_eq!(
        zero_copy_bytes(&proxy).await,
        cold,
        "a read that verifies the blob went out zero-copy"
    );

    // Warm: sequential on kept-alive connections, then all at once. Small
    // blobs come from memory: no storage request at all.
    let total: usize = sizes.iter().filter(|&&n| n > SMALL).sum();
    let storage_reads = || async {
        let text = debug_text(&proxy, "/metrics").await;
        ["open", "stat", "get_content"].map(|op| support::storage_ops(&text, op))
    };
    let before = storage_reads().await;
    for (digest, bytes) in blobs.iter().filter(|(_, b)| b.len() <= SMALL) {
        assert_eq!(&get(*digest, None).await, bytes, "warm small {digest}");
        let tail = Some("bytes=-1".to_owned()).filter(|_| !bytes.is_empty());
        if let Some(range) = tail {
            assert_eq!(
                get(*digest, Some(range)).await,
                bytes.slice(bytes.len() - 1..)
            );
        }
    }
    assert_eq!(
        storage_reads().await,
        before,
        "small blobs read from storage"
    );
    for (digest, bytes) in &blobs {
        assert_eq!(&get(*digest, None).await, bytes, "warm {digest}");
    }
    assert_eq!(zero_copy_bytes(&proxy).await, cold + total as u64);
    let all = blobs.iter().cycle().take(48).map(|(digest, bytes)| {
        let fetched = get(*digest, None);
        async move { assert_eq!(&fetched.await, bytes, "concurrent {digest}") }
    });
    futures::future::join_all(all).await;
    assert_eq!(zero_copy_bytes(&proxy).await, cold + total as u64 * 9);

    // Ranges of the largest blob.
    let (digest, bytes) = blobs.last().expect("a blob");
    let len = bytes.len();
    for (range, want) in [
        ("bytes=100-".to_owned(), bytes.slice(100..)),
        ("bytes=-10".to_owned(), bytes.slice(len - 10..)),
        (
            format!("bytes={}-{}", MIB - 5, 3 * MIB + 7),
            bytes.slice(MIB - 5..3 * MIB + 8),
        ),
    ] {
        assert_eq!(get(*digest, Some(range.clone())).await, want, "{range}");
    }
    let ranged = (len - 100) + 10 + (2 * MIB + 13);
    assert_eq!(
        zero_copy_bytes(&proxy).await,
        cold + total as u64 * 9 + ranged as u64
    );

    // HTTP/2 without TLS (prior knowledge): the stream path, same bytes.
    let out = d.join("h2.bin");
    let status = Command::new("curl")
        .args(["-sf", "--http2-prior-knowledge", "-o"])
        .arg(&out)
        .arg(format!("http://{}/v2/{REPO}/blobs/{digest}", proxy.addr))
        .status()
        .expect("curl");
    assert!(status.success(), "curl over h2c failed");
    assert_eq!(std::fs::read(&out).expect("h2 body"), bytes.as_ref());
    assert_eq!(
        zero_copy_bytes(&proxy).await,
        cold + total as u64 * 9 + ranged as u64,
        "an HTTP/2 response went out zero-copy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fills_go_out_zero_copy_and_a_corrupt_one_never_whole() {
    use axum::extract::{Path as UrlPath, State};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let good = conformance::random_bytes(7, 3 * MIB + 5);
    let claimed = conformance::random_bytes(8, 2 * MIB);
    let (good_digest, bad_digest) = (Digest::of(&good), Digest::of(&claimed));
    // An upstream that serves the good blob, and zeros for the other one
    // (the right length, the wrong bytes), counting blob requests.
    type Upstream = (Bytes, Digest, Arc<AtomicUsize>);
    let fetched = Arc::new(AtomicUsize::new(0));
    let router = axum::Router::new()
        .route("/v2/", axum::routing::get(|| async { "{}" }))
        .route(
            "/v2/{*rest}",
            axum::routing::get(
                |State((good, good_digest, fetched)): State<Upstream>,
                 UrlPath(rest): UrlPath<String>| async move {
                    fetched.fetch_add(1, Ordering::SeqCst);
                    if rest.ends_with(&good_digest.to_string()) {
                        good
                    } else {
                        Bytes::from(vec![0; 2 * MIB])
                    }
                },
            ),
        )
        .with_state((good.clone(), good_digest, Arc::clone(&fetched)));
    let upstream = support::fakes::serve(router).await;
    let upstream = upstream.trim_start_matches("http://");
    let proxy = registry_proxy(d, &storage(&d.join("cache")), upstream, None);

    // Eight clients at once on a cold blob: one fill, each body exact, all
    // of it sent from the spool with sendfile.
    let pulls = (0..8).map(|_| async {
        let (mut socket, mut body, length) = open_get(&proxy.addr, &good_digest).await;
        read_until(&mut socket, &mut body, length).await;
        body
    });
    for body in futures::future::join_all(pulls).await {
        assert!(body == good, "a cold body differs ({} bytes)", body.len());
    }
    assert_eq!(fetched.load(Ordering::SeqCst), 1, "more than one fill");
    assert_eq!(zero_copy_bytes(&proxy).await, 8 * good.len() as u64);

    // Wrong bytes: the body stops short of its length (the last byte waits
    // for the digest), and nothing is stored.
    let (mut socket, mut body, length) = open_get(&proxy.addr, &bad_digest).await;
    read_until(&mut socket, &mut body, length).await;
    assert_eq!(length, 2 * MIB);
    assert!(body.len() < length, "a corrupt body was sent whole");
    assert!(
        body.iter().all(|&b| b == 0),
        "bytes the upstream never sent"
    );
    fills_settled(&proxy).await;
    let driver = driver_fs::FsDriver::open(&driver_fs::FsConfig::at(d.join("cache"))).expect("fs");
    assert_eq!(
        verify_stored_blobs(&driver).await,
        1,
        "only the good blob is stored"
    );
}

/// Pushes a `size`-byte blob, starts a proxy on `cache` and makes the blob
/// warm (filled, then read once whole so that it is verified).
async fn warm_blob(d: &Path, upstream: &Server, size: usize) -> (Server, Digest, Bytes) {
    let client = reqwest::Client::new();
    let bytes = conformance::random_bytes(7, size);
    let digest = push_blob(&client, &upstream.addr, REPO, bytes.clone()).await;
    let proxy = registry_proxy(d, &storage(&d.join("cache")), &upstream.addr, None);
    for _ in 0..2 {
        let url = format!("http://{}/v2/{REPO}/blobs/{digest}", proxy.addr);
        let got = client.get(url).send().await.expect("GET");
        assert_eq!(got.bytes().await.expect("body"), bytes);
        fills_settled(&proxy).await;
    }
    (proxy, digest, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_zero_copy_sends() {
    let Some((dir, upstream)) = support::registry_upstream("zero_copy_kill") else {
        return;
    };
    let d = dir.path();
    let size = 64 * MIB;
    let (mut proxy, digest, bytes) = warm_blob(d, &upstream, size).await;
    let sent_before = zero_copy_bytes(&proxy).await;

    // Eight clients each read 1 MiB and stop reading: the proxy's sends
    // wait on full socket buffers when the kill comes.
    let mut readers = Vec::new();
    for _ in 0..8 {
        let (mut socket, mut body, length) = open_get(&proxy.addr, &digest).await;
        assert_eq!(length, size);
        read_until(&mut socket, &mut body, MIB).await;
        readers.push((socket, body));
    }
    assert!(
        zero_copy_bytes(&proxy).await > sent_before,
        "the warm reads did not take the zero-copy path"
    );
    proxy.kill();
    for (mut socket, mut body) in readers {
        read_until(&mut socket, &mut body, size).await;
        assert!(body.len() < size, "a whole body arrived after the kill");
        assert_eq!(
            &body[..],
            &bytes[..body.len()],
            "bytes other than the blob's before the cut"
        );
    }

    let driver = driver_fs::FsDriver::open(&driver_fs::FsConfig::at(d.join("cache"))).expect("fs");
    assert_eq!(verify_stored_blobs(&driver).await, 1, "the stored blob");
    // The upstream is gone: the restarted proxy serves from storage alone.
    drop(upstream);
    let proxy = registry_proxy(d, &storage(&d.join("cache")), "127.0.0.1:9", None);
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let url = format!("http://{}/v2/{REPO}/blobs/{digest}", proxy.addr);
        let got = client.get(url).send().await.expect("GET");
        assert_eq!(got.bytes().await.expect("body"), bytes, "after the restart");
    }
    assert_eq!(zero_copy_bytes(&proxy).await, size as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_cut_short_while_sent_ends_the_response() {
    let Some((dir, upstream)) = support::registry_upstream("zero_copy_cut") else {
        return;
    };
    let d = dir.path();
    let size = 32 * MIB;
    let (proxy, digest, bytes) = warm_blob(d, &upstream, size).await;

    let (mut socket, mut body, length) = open_get(&proxy.addr, &digest).await;
    assert_eq!(length, size);
    read_until(&mut socket, &mut body, MIB).await;
    assert!(zero_copy_bytes(&proxy).await > 0, "not sent zero-copy");
    // Cut the file the proxy is sending, in place (the same inode).
    let data = d.join("cache").join(
        registry_proxy::layout::blob_data(&digest)
            .to_string()
            .trim_start_matches('/'),
    );
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .expect("stored blob file");
    let kept = 4 * MIB;
    file.set_len(kept as u64).expect("truncate");
    read_until(&mut socket, &mut body, size).await;
    assert!(
        body.len() < size,
        "the response was completed past the file's end"
    );
    // What was in flight before the cut (socket buffers) may still
    // arrive; nothing near the blob's end can.
    assert!(body.len() <= kept + 16 * MIB, "{} bytes", body.len());
    assert_eq!(
        &body[..],
        &bytes[..body.len()],
        "bytes other than the blob's"
    );
}
