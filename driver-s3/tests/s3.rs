//! Behaviour specific to driver-s3, checked on a real S3 server and through
//! an independent S3 client (the `object_store` crate) reading the bucket.

mod common;
mod witness;

use std::sync::Arc;

use bytes::Bytes;
use conformance::{PrivateS3, random_bytes};
use driver_core::{ErrorKind, StorageDriver, StoragePath};
use driver_s3::{S3Config, S3Driver};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::aws::AmazonS3;
use object_store::path::Path as ObjectPath;

const MIB: usize = 1 << 20;

/// A driver under a fresh random root directory, with 5 MiB parts, and the
/// witness client for the same bucket.
async fn setup(test: &str) -> Option<(S3Driver, AmazonS3, String)> {
    setup_with(test, S3Config::default().upload_concurrency).await
}

/// [`setup`] with `upload_concurrency` parts in flight per writer.
async fn setup_with(test: &str, upload_concurrency: usize) -> Option<(S3Driver, AmazonS3, String)> {
    let config = common::config_or_skip(test)?;
    let root = format!("s3-tests/{test}-{:016x}", rand::random::<u64>());
    let witness = witness::object_store_client(&config);
    let config = S3Config {
        root_directory: root.clone(),
        chunk_size: 5 * MIB as u64,
        upload_concurrency,
        ..config
    };
    Some((S3Driver::new(config).await.expect("client"), witness, root))
}

fn path(p: &str) -> StoragePath {
    StoragePath::parse(p).expect("valid path")
}

/// Every key the witness sees under `root`, relative to it.
async fn keys(witness: &AmazonS3, root: &str) -> Vec<String> {
    let prefix = ObjectPath::from(root);
    let mut keys: Vec<String> = witness
        .list(Some(&prefix))
        .map_ok(|meta| meta.location.as_ref()[root.len() + 1..].to_owned())
        .try_collect()
        .await
        .expect("witness list");
    keys.sort();
    keys
}

/// Multipart uploads still open under `root`.
async fn open_uploads(driver: &S3Driver, bucket: &str, root: &str) -> usize {
    let out = driver
        .client()
        .list_multipart_uploads()
        .bucket(bucket)
        .prefix(root)
        .send()
        .await
        .expect("list uploads");
    out.uploads().len()
}

fn bucket() -> String {
    std::env::var("S3_BUCKET").unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_objects_are_plain_objects_under_the_root() {
    let Some((driver, witness, root)) = setup("plain").await else {
        return;
    };
    let small = random_bytes(1, 1000);
    let large = random_bytes(2, 12 * MIB + 3);
    driver
        .put_content(&path("/docker/small"), small.clone())
        .await
        .expect("put");
    let mut writer = driver
        .writer(&path("/docker/large"), false)
        .await
        .expect("writer");
    for chunk in large.chunks(MIB) {
        writer
            .write(Bytes::copy_from_slice(chunk))
            .await
            .expect("write");
    }
    writer.commit().await.expect("commit");
    let mut tiny = driver
        .writer(&path("/docker/tiny"), false)
        .await
        .expect("writer");
    tiny.write(Bytes::from_static(b"tiny"))
        .await
        .expect("write");
    tiny.commit().await.expect("commit");

    assert_eq!(
        keys(&witness, &root).await,
        ["docker/large", "docker/small", "docker/tiny"]
    );
    for (name, data) in [
        ("small", &small[..]),
        ("large", &large[..]),
        ("tiny", b"tiny"),
    ] {
        let key = ObjectPath::from(format!("{root}/docker/{name}"));
        let got = witness
            .get(&key)
            .await
            .expect("witness get")
            .bytes()
            .await
            .expect("body");
        assert!(got == data, "{name}: the witness read other bytes");
    }
    // A multipart object's ETag ends in -<parts>; a single PutObject's does not.
    let etag = |name: &str| {
        let key = ObjectPath::from(format!("{root}/docker/{name}"));
        let witness = &witness;
        async move {
            witness
                .head(&key)
                .await
                .expect("head")
                .e_tag
                .unwrap_or_default()
        }
    };
    assert!(
        !etag("tiny").await.contains('-'),
        "a tiny writer used a multipart upload"
    );
    assert!(
        etag("large").await.trim_matches('"').ends_with("-3"),
        "12 MiB in 5 MiB parts is three parts"
    );
    assert_eq!(open_uploads(&driver, &bucket(), &root).await, 0);
    driver.delete(&path("/docker")).await.expect("cleanup");
    assert!(keys(&witness, &root).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_uncommitted_or_cancelled_is_visible() {
    let Some((driver, witness, root)) = setup("uncommitted").await else {
        return;
    };
    let data = random_bytes(3, 11 * MIB);
    let mut open = driver.writer(&path("/open"), false).await.expect("writer");
    open.write(data.clone()).await.expect("write");
    let mut cancelled = driver
        .writer(&path("/cancelled"), false)
        .await
        .expect("writer");
    cancelled.write(data.clone()).await.expect("write");
    cancelled.cancel().await.expect("cancel");
    // Only the open writer's record exists, under @writers/, which no storage path reaches.
    let listed = keys(&witness, &root).await;
    assert!(
        listed.iter().all(|k| k.starts_with("@writers/")),
        "{listed:?}"
    );
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        open_uploads(&driver, &bucket(), &root).await,
        1,
        "cancel left its multipart upload"
    );
    assert!(
        driver
            .list(&StoragePath::root())
            .await
            .expect("list /")
            .is_empty()
    );
    open.cancel().await.expect("cancel");
    assert!(keys(&witness, &root).await.is_empty());
    assert_eq!(open_uploads(&driver, &bucket(), &root).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_resumes_a_closed_writer_with_small_parts() {
    let Some((driver, _witness, root)) = setup("resume").await else {
        return;
    };
    let data = random_bytes(4, 7 * MIB + 100 + 3 * MIB);
    let target = path("/upload");
    let mut writer = driver.writer(&target, false).await.expect("writer");
    writer.write(data.slice(..7 * MIB)).await.expect("write");
    writer.close().await.expect("close");
    let mut writer = driver.writer(&target, true).await.expect("resume");
    writer
        .write(data.slice(7 * MIB..7 * MIB + 100))
        .await
        .expect("write");
    writer.close().await.expect("close");
    // Another "process": a driver built from scratch on the same bucket.
    let config = S3Config {
        root_directory: root,
        chunk_size: 5 * MIB as u64,
        ..common::config_or_skip("resume").expect("configured")
    };
    let restarted = S3Driver::new(config).await.expect("client");
    let mut writer = restarted
        .writer(&target, true)
        .await
        .expect("resume after restart");
    assert_eq!(writer.size(), 7 * MIB as u64 + 100);
    writer
        .write(data.slice(7 * MIB + 100..))
        .await
        .expect("write");
    writer.commit().await.expect("commit");
    assert!(
        restarted.get_content(&target).await.expect("get") == data,
        "resumed content differs"
    );
    restarted.delete(&target).await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_writer_resumes_from_its_uploaded_parts() {
    // One part in flight: each full chunk is uploaded before write returns.
    let Some((driver, witness, root)) = setup_with("crash", 1).await else {
        return;
    };
    let data = random_bytes(5, 13 * MIB);
    let target = path("/crashed");
    let mut writer = driver.writer(&target, false).await.expect("writer");
    writer.write(data.slice(..12 * MIB)).await.expect("write");
    // Dropped without close, as a killed process would leave it: the parts
    // uploaded so far (two of 5 MiB) survive, the buffered tail does not.
    drop(writer);
    let mut writer = driver.writer(&target, true).await.expect("resume");
    let kept = writer.size() as usize;
    assert_eq!(kept, 10 * MIB, "the two uploaded parts are what survives");
    writer.write(data.slice(kept..)).await.expect("write");
    writer.commit().await.expect("commit");
    assert!(
        driver.get_content(&target).await.expect("get") == data,
        "resumed content differs"
    );
    driver.delete(&target).await.expect("cleanup");
    assert!(
        keys(&witness, &root).await.is_empty(),
        "records left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_keys_list_walk_and_delete() {
    let Some((driver, witness, root)) = setup("many").await else {
        return;
    };
    let driver = Arc::new(driver);
    let total = 5000;
    futures::stream::iter(0..total)
        .map(|i| {
            let driver = Arc::clone(&driver);
            async move {
                driver
                    .put_content(&path(&format!("/many/k{i:05}")), Bytes::from_static(b"x"))
                    .await
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await
        .expect("puts");
    driver
        .put_content(&path("/manysuffix"), Bytes::from_static(b"sibling"))
        .await
        .expect("put");
    let listed = driver.list(&path("/many")).await.expect("list");
    assert_eq!(listed.len(), total);
    assert_eq!(listed[0], path("/many/k00000"));
    assert_eq!(listed[total - 1], path(&format!("/many/k{:05}", total - 1)));
    let mut walked = 0;
    let mut visit = |_: &driver_core::FileInfo| {
        walked += 1;
        driver_core::WalkControl::Continue
    };
    driver
        .walk(&path("/many"), &Default::default(), &mut visit)
        .await
        .expect("walk");
    assert_eq!(walked, total);
    driver.delete(&path("/many")).await.expect("delete");
    assert_eq!(
        driver.list(&path("/many")).await.unwrap_err().kind(),
        ErrorKind::PathNotFound
    );
    assert_eq!(
        keys(&witness, &root).await,
        ["manysuffix"],
        "delete touched a sibling or left keys"
    );
    driver.delete(&path("/manysuffix")).await.expect("cleanup");
}

/// The driver's configuration for a private server.
fn private_config(server: &PrivateS3) -> S3Config {
    let config = S3Config::from_vars(|name| server.var(name)).expect("server env");
    S3Config {
        chunk_size: 5 * MIB as u64,
        max_attempts: 2,
        ..config.expect("a bucket")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_mid_write_fails_cleanly_and_recovers() {
    // Needs a server of its own to stop; it runs wherever the shared one does.
    if common::config_or_skip("server_stopped_mid_write").is_none() {
        return;
    }
    let server = PrivateS3::start();
    let driver = S3Driver::new(private_config(&server))
        .await
        .expect("client");
    let target = path("/outage/blob");
    let data = random_bytes(6, 17 * MIB);

    let mut writer = driver.writer(&target, false).await.expect("writer");
    writer
        .write(data.slice(..12 * MIB))
        .await
        .expect("write before the outage");
    server.run("stop");
    let failed = match writer.write(data.slice(12 * MIB..)).await {
        Err(e) => e,
        Ok(()) => writer
            .commit()
            .await
            .expect_err("commit with the server down"),
    };
    assert_eq!(failed.kind(), ErrorKind::Backend, "{failed}");
    assert!(
        failed.is_temporary(),
        "an unreachable server is worth retrying: {failed}"
    );

    server.run("start");
    assert_eq!(
        driver.stat(&target).await.unwrap_err().kind(),
        ErrorKind::PathNotFound,
        "a failed write is visible"
    );
    drop(writer);
    let mut writer = driver.writer(&target, false).await.expect("writer");
    writer.write(data.clone()).await.expect("write");
    writer.commit().await.expect("commit after the restart");
    assert!(driver.get_content(&target).await.expect("get") == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_moves_use_multipart_copy() {
    let Some(config) = common::config_or_skip("multipart_copy") else {
        return;
    };
    let root = format!("s3-tests/copy-{:016x}", rand::random::<u64>());
    let witness = witness::object_store_client(&config);
    // Objects over 6 MiB are copied in 5 MiB parts.
    let config = S3Config {
        root_directory: root.clone(),
        copy_threshold: 6 * MIB as u64,
        copy_chunk_size: 5 * MIB as u64,
        ..config
    };
    let driver = S3Driver::new(config).await.expect("client");
    let data = random_bytes(7, 12 * MIB + 5);
    driver
        .put_content(&path("/from"), data.clone())
        .await
        .expect("put");
    driver
        .move_file(&path("/from"), &path("/to/moved"))
        .await
        .expect("move");
    assert_eq!(keys(&witness, &root).await, ["to/moved"]);
    let key = ObjectPath::from(format!("{root}/to/moved"));
    let etag = witness
        .head(&key)
        .await
        .expect("head")
        .e_tag
        .unwrap_or_default();
    assert!(
        etag.trim_matches('"').ends_with("-3"),
        "12 MiB copied in 5 MiB parts is three parts: {etag}"
    );
    assert!(driver.get_content(&path("/to/moved")).await.expect("get") == data);
    driver.delete(&path("/to")).await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appending_to_a_large_committed_object_copies_whole_chunks() {
    let Some((driver, witness, root)) = setup("append_large").await else {
        return;
    };
    let first = random_bytes(8, 11 * MIB + 7);
    let second = random_bytes(9, 4 * MIB);
    let target = path("/grow");
    driver
        .put_content(&target, first.clone())
        .await
        .expect("put");
    let mut writer = driver.writer(&target, true).await.expect("append");
    assert_eq!(writer.size(), first.len() as u64);
    writer.write(second.clone()).await.expect("write");
    assert!(
        driver.get_content(&target).await.expect("get") == first,
        "visible before commit"
    );
    writer.commit().await.expect("commit");
    let expected = [first, second].concat();
    assert!(
        driver.get_content(&target).await.expect("get") == expected,
        "appended content differs"
    );
    assert_eq!(
        keys(&witness, &root).await,
        ["grow"],
        "records or parts left behind"
    );
    assert_eq!(open_uploads(&driver, &bucket(), &root).await, 0);
    driver.delete(&target).await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_object_settings_and_a_schemeless_endpoint_work() {
    let Some(config) = common::config_or_skip("distribution_object_settings") else {
        return;
    };
    let witness = witness::object_store_client(&config);
    let endpoint = config.endpoint.clone().expect("an endpoint");
    let root = format!("s3-tests/settings-{:016x}", rand::random::<u64>());
    let driver = S3Driver::new(S3Config {
        // `secure: false` makes a bare host:port an http endpoint.
        endpoint: endpoint.strip_prefix("http://").map(str::to_owned),
        secure: false,
        encrypt: true,
        storage_class: "REDUCED_REDUNDANCY".into(),
        object_acl: "bucket-owner-full-control".into(),
        root_directory: root.clone(),
        chunk_size: 5 * MIB as u64,
        copy_threshold: 6 * MIB as u64,
        copy_chunk_size: 5 * MIB as u64,
        ..config
    })
    .await
    .expect("client");
    let small = random_bytes(1, 1000);
    driver
        .put_content(&path("/small"), small.clone())
        .await
        .expect("put");
    let large = random_bytes(2, 11 * MIB);
    let mut writer = driver
        .writer(&path("/staged"), false)
        .await
        .expect("writer");
    writer.write(large.clone()).await.expect("write");
    writer.commit().await.expect("commit");
    driver
        .move_file(&path("/staged"), &path("/large"))
        .await
        .expect("multipart copy");
    for (name, want) in [("small", &small), ("large", &large)] {
        let got = witness
            .get(&ObjectPath::from(format!("{root}/{name}")))
            .await
            .expect("witness get")
            .bytes()
            .await
            .expect("witness body");
        assert!(got == *want, "{name} differs");
    }
    assert_eq!(keys(&witness, &root).await, ["large", "small"]);
}

/// A TCP relay in front of the S3 server that keeps the request line of
/// every request a client sends through it (the bodiless requests of reads:
/// each head ends the request).
struct RequestLog {
    addr: String,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl RequestLog {
    async fn start(server: &str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (log, server) = (Arc::clone(&lines), server.to_owned());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect(&server).await else {
                    continue;
                };
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = upstream.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
                    });
                    let (mut buf, mut pending) = (vec![0; 64 << 10], Vec::new());
                    while let Ok(n @ 1..) = client_rx.read(&mut buf).await {
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
                            let line = String::from_utf8_lossy(&pending[..end]).into_owned();
                            if line.ends_with(" HTTP/1.1") {
                                log.lock().expect("log").push(line);
                            }
                            pending.drain(..end + 2);
                        }
                        if server_tx.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { addr, lines }
    }

    /// The request lines sent since the last call, as `METHOD /path?query`.
    fn take(&self) -> Vec<String> {
        let lines = std::mem::take(&mut *self.lines.lock().expect("log"));
        lines
            .into_iter()
            .map(|l| l.trim_end_matches(" HTTP/1.1").to_owned())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_one_request_each_and_a_missing_file_is_one_head() {
    let Some((writer, _witness, root)) = setup("reads_one_request").await else {
        return;
    };
    let config = common::config_or_skip("reads_one_request").expect("config");
    let server = config.endpoint.clone().expect("an endpoint");
    let log = RequestLog::start(server.trim_start_matches("http://")).await;
    // No keys in the configuration: the reads sign with what the standard
    // chain finds (here the environment's AWS_ACCESS_KEY_ID and secret).
    let reader = S3Driver::new(S3Config {
        endpoint: Some(format!("http://{}", log.addr)),
        root_directory: root.clone(),
        access_key: None,
        secret_key: None,
        ..config
    })
    .await
    .expect("client");
    let data = random_bytes(3, 1000);
    writer
        .put_content(&path("/dir/file"), data.clone())
        .await
        .expect("put");
    let key = |p: &str| format!("/{}/{root}/{p}", bucket());
    let methods = |lines: Vec<String>| -> Vec<String> {
        lines
            .into_iter()
            .map(|l| l.split_once('?').map_or(l.clone(), |(p, _)| p.to_owned()))
            .collect()
    };

    let missing = reader.stat_file(&path("/dir/missing")).await;
    assert_eq!(missing.unwrap_err().kind(), ErrorKind::PathNotFound);
    assert_eq!(log.take(), [format!("HEAD {}", key("dir/missing"))]);
    // A directory is no object: stat tells it from nothing with a listing.
    let dir = reader.stat(&path("/dir")).await.expect("stat dir");
    assert!(dir.is_dir);
    assert_eq!(
        methods(log.take()),
        [
            format!("HEAD {}", key("dir")),
            format!("GET /{}/", bucket())
        ]
    );
    assert_eq!(
        reader.stat_file(&path("/dir")).await.unwrap_err().kind(),
        ErrorKind::PathNotFound
    );
    assert_eq!(log.take(), [format!("HEAD {}", key("dir"))]);

    let info = reader.stat_file(&path("/dir/file")).await.expect("stat");
    assert_eq!((info.size, info.is_dir), (1000, false));
    assert_eq!(info, reader.stat(&path("/dir/file")).await.expect("stat"));
    assert_eq!(log.take().len(), 2, "one HEAD each");
    let got = reader.get_content(&path("/dir/file")).await.expect("get");
    assert!(got == data);
    assert_eq!(log.take(), [format!("GET {}", key("dir/file"))]);
    let file = reader.open(&path("/dir/file"), 600).await.expect("open");
    assert_eq!(file.size, 1000, "the whole size, from a ranged read");
    let rest: Vec<Bytes> = file.stream.try_collect().await.expect("read");
    assert!(rest.concat() == data[600..]);
    assert_eq!(log.take(), [format!("GET {}", key("dir/file"))]);
    // At the end, S3 refuses the range; the size tells an empty read from
    // one past the end.
    let at_end = reader.open(&path("/dir/file"), 1000).await.expect("open");
    assert_eq!(at_end.size, 1000);
    assert!(
        at_end
            .stream
            .try_collect::<Vec<_>>()
            .await
            .expect("read")
            .is_empty()
    );
    let past = reader.open(&path("/dir/file"), 1001).await;
    assert_eq!(past.unwrap_err().kind(), ErrorKind::InvalidOffset);
    writer.delete(&path("/dir")).await.expect("cleanup");
}
