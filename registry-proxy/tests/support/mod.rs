//! Real servers for the end-to-end tests and the side-by-side benchmark:
//! `docker-registry` and the `registry-proxy` binary as child processes on
//! 127.0.0.1, killed when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use registry_proxy::oci::Digest;

pub mod skopeo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Whether `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A server process, killed when dropped.
pub struct Server {
    child: Child,
    /// Where it listens, `127.0.0.1:PORT`.
    pub addr: String,
    /// Its debug listener, if it has one.
    pub debug: Option<String>,
}

impl Server {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL, as a crash or the OOM killer would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `within` for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `addr` accepts connections; panics with the log if `child` exits.
fn wait_ready(addr: &str, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "server at {addr} exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "server at {addr} did not start: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Starts `program args config`, logging to `dir/<config stem>.log`, and
/// waits until `addr` accepts connections.
pub fn start(program: &str, args: &[&str], config: &Path, addr: String, dir: &Path) -> Server {
    let name = config
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("server");
    let mut all: Vec<&str> = args.to_vec();
    all.push(config.to_str().expect("utf-8 path"));
    start_named(program, &all, name, addr, dir)
}

/// Starts `program args`, logging to `dir/<name>.log`, and waits until
/// `addr` accepts connections.
pub fn start_named(program: &str, args: &[&str], name: &str, addr: String, dir: &Path) -> Server {
    start_env(program, args, name, addr, dir, &[])
}

/// [`start_named`], with `env` added to the program's environment.
pub fn start_env(
    program: &str,
    args: &[&str],
    name: &str,
    addr: String,
    dir: &Path,
    env: &[(&str, &str)],
) -> Server {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    wait_ready(&addr, &mut child, &log);
    Server {
        child,
        addr,
        debug: None,
    }
}

/// A single-member etcd on loopback with its data in `dir/etcd`; its
/// client URL is `http://<addr>` (metrics at `/metrics`).
pub fn etcd(dir: &Path) -> Server {
    let (client, peer) = (free_port(), free_port());
    let addr = format!("127.0.0.1:{client}");
    let client_url = format!("http://{addr}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let data = dir.join("etcd");
    start_named(
        "etcd",
        &[
            "--name",
            "test",
            "--data-dir",
            data.to_str().expect("utf-8 path"),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("test={peer_url}"),
        ],
        "etcd",
        addr,
        dir,
    )
}

/// `docker-registry` on `root`; `extra` is appended to its config.
pub fn docker_registry(dir: &Path, name: &str, root: &Path, extra: &str) -> Server {
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.join(format!("{name}.yml"));
    let yaml = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{extra}",
        root.display()
    );
    std::fs::write(&config, yaml).expect("config");
    start("docker-registry", &["serve"], &config, addr, dir)
}

/// The registry-proxy binary with `storage` (a YAML block) in front of `upstream`.
pub fn registry_proxy(
    dir: &Path,
    storage: &str,
    upstream: &str,
    credentials: Option<(&str, &str)>,
) -> Server {
    let auth = credentials
        .map(|(u, p)| format!("  username: {u}\n  password: {p}\n"))
        .unwrap_or_default();
    registry_proxy_with(
        dir,
        &format!("storage:\n{storage}proxy:\n  remoteurl: http://{upstream}\n{auth}"),
    )
}

/// The registry-proxy binary with the config `sections` (YAML at the top
/// level, without `http`), listening on a free port with a debug listener.
pub fn registry_proxy_with(dir: &Path, sections: &str) -> Server {
    registry_proxy_env(dir, sections, &[])
}

/// [`registry_proxy_with`], with `env` added to the process's environment.
pub fn registry_proxy_env(dir: &Path, sections: &str, env: &[(&str, &str)]) -> Server {
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.join("proxy.yml");
    let debug = format!("127.0.0.1:{}", free_port());
    let yaml =
        format!("version: 0.1\nhttp:\n  addr: {addr}\n  debug:\n    addr: {debug}\n{sections}");
    std::fs::write(&config, yaml).expect("config");
    let config = config.to_str().expect("utf-8 path");
    let mut server = start_env(
        env!("CARGO_BIN_EXE_registry-proxy"),
        &["serve", config],
        "proxy",
        addr,
        dir,
        env,
    );
    server.debug = Some(debug);
    server
}

/// `path` (`/metrics`, `/debug/vars`) on the debug listener of a
/// registry-proxy started by [`registry_proxy`], as text.
pub async fn debug_text(proxy: &Server, path: &str) -> String {
    let debug = proxy.debug.as_deref().expect("a debug listener");
    reqwest::get(format!("http://{debug}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .text()
        .await
        .expect("text")
}

/// How many storage operations `op` (`open`, `stat`, ...) the metrics
/// `text` counts, over every driver.
pub fn storage_ops(text: &str, op: &str) -> u64 {
    let label = format!("op=\"{op}\"");
    text.lines()
        .filter(|l| {
            l.starts_with("registry_proxy_storage_operation_duration_seconds_count{")
                && l.contains(&label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `/debug/vars` of a registry-proxy started by [`registry_proxy`].
pub async fn debug_vars(proxy: &Server) -> serde_json::Value {
    serde_json::from_str(&debug_text(proxy, "/debug/vars").await).expect("JSON")
}

/// Waits (up to 60 s) until `proxy`'s count of running fills satisfies
/// `done`.
pub async fn wait_for_fills(proxy: &Server, done: impl Fn(u64) -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = debug_vars(proxy).await["registry_proxy"]["FillsInFlight"]
            .as_u64()
            .expect("FillsInFlight");
        if done(running) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still not so after 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `proxy` runs no fill: a client has its last byte before the
/// fill has stored the blob.
pub async fn fills_settled(proxy: &Server) {
    wait_for_fills(proxy, |running| running == 0, "fills done").await;
}

/// Pushes `data` as a blob of `repo` to the registry at `addr` (monolithic
/// upload: POST, then PUT with the digest).
pub async fn push_blob(
    client: &reqwest::Client,
    addr: &str,
    repo: &str,
    data: bytes::Bytes,
) -> Digest {
    let digest = Digest::of(&data);
    let started = client
        .post(format!("http://{addr}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .expect("start upload");
    assert_eq!(started.status(), 202, "start upload");
    let location = started.headers()["location"].to_str().expect("location");
    let location = if location.starts_with('/') {
        format!("http://{addr}{location}")
    } else {
        location.to_owned()
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let done = client
        .put(format!("{location}{separator}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(data)
        .send()
        .await
        .expect("finish upload");
    assert_eq!(done.status(), 201, "finish upload");
    digest
}

/// An image pushed by [`push_image`]: its manifest and the blobs it names.
#[derive(Debug, Clone)]
pub struct Image {
    /// The repository.
    pub repo: String,
    /// The manifest's digest (tagged `v1`).
    pub manifest: Digest,
    /// Config then layers.
    pub blobs: Vec<Digest>,
}

/// Pushes an OCI image with random layers of `layer_sizes` bytes (seeded
/// by `seed`) as `repo:v1` to the registry at `addr`.
pub async fn push_image(
    client: &reqwest::Client,
    addr: &str,
    repo: &str,
    seed: u64,
    layer_sizes: &[usize],
) -> Image {
    let config = bytes::Bytes::from(format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"seed":{seed}}}"#
    ));
    let mut blobs = vec![push_blob(client, addr, repo, config.clone()).await];
    let mut descriptors = Vec::new();
    for (i, &layer_bytes) in layer_sizes.iter().enumerate() {
        let data = conformance::random_bytes(seed * 1000 + i as u64, layer_bytes);
        let digest = push_blob(client, addr, repo, data).await;
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest.to_string(),
            "size": layer_bytes,
        }));
        blobs.push(digest);
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": registry_proxy::oci::OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": blobs[0].to_string(),
            "size": config.len(),
        },
        "layers": descriptors,
    }))
    .expect("manifest");
    let put = client
        .put(format!("http://{addr}/v2/{repo}/manifests/v1"))
        .header("content-type", registry_proxy::oci::OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .expect("put manifest");
    assert_eq!(put.status(), 201, "put manifest");
    Image {
        repo: repo.to_owned(),
        manifest: Digest::of(&manifest),
        blobs,
    }
}

/// Pulls `image` by its tag from the registry at `addr` as a client does:
/// the manifest, then every blob it names, each checked against its digest.
/// Returns the bytes received, or what went wrong.
pub async fn pull_image(
    client: &reqwest::Client,
    addr: &str,
    image: &Image,
) -> Result<u64, String> {
    let get = |url: String| async move {
        let response = client
            .get(&url)
            .header("accept", registry_proxy::oci::MANIFEST_ACCEPT)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: {}", response.status()));
        }
        response
            .bytes()
            .await
            .map_err(|e| format!("GET {url}: body: {e}"))
    };
    let base = format!("http://{addr}/v2/{}", image.repo);
    let manifest = get(format!("{base}/manifests/v1")).await?;
    if Digest::of(&manifest) != image.manifest {
        return Err(format!("{}:v1: wrong manifest", image.repo));
    }
    let mut received = manifest.len() as u64;
    for (digest, _) in registry_proxy::oci::manifest_references(&manifest) {
        let blob = get(format!("{base}/blobs/{digest}")).await?;
        if Digest::of(&blob) != digest {
            return Err(format!(
                "{}: blob {digest}: wrong bytes ({} B)",
                image.repo,
                blob.len()
            ));
        }
        received += blob.len() as u64;
    }
    Ok(received)
}

/// A proxy in this process: in-memory storage, `upstream` (a base URL),
/// fills abandoned after 500 ms of silence, tags trusted for `freshness`.
pub struct InProcess {
    /// The proxy's state; `registry_proxy::app(state)` serves it.
    pub state: registry_proxy::AppState,
    /// Its storage.
    pub driver: std::sync::Arc<dyn driver_core::StorageDriver>,
    _spool: tempfile::TempDir,
}

impl InProcess {
    /// Opens the proxy in front of `upstream`.
    pub async fn open(
        upstream: &str,
        credentials: registry_proxy::upstream::Credentials,
        freshness: Duration,
    ) -> Self {
        let namespace = registry_proxy::namespace::NamespaceSpec::single(
            upstream.parse().expect("url"),
            credentials,
        );
        Self::with_namespaces(&[namespace], freshness).await
    }

    /// Opens the proxy with `namespaces`.
    pub async fn with_namespaces(
        namespaces: &[registry_proxy::namespace::NamespaceSpec],
        freshness: Duration,
    ) -> Self {
        Self::with_scheduler(namespaces, freshness, Default::default()).await
    }

    /// Opens the proxy with `namespaces` and a scheduler set up by
    /// `scheduler`.
    pub async fn with_scheduler(
        namespaces: &[registry_proxy::namespace::NamespaceSpec],
        freshness: Duration,
        scheduler: registry_proxy::scheduler::Options,
    ) -> Self {
        Self::with_settings(namespaces, freshness, |settings| {
            settings.scheduler = scheduler;
        })
        .await
    }

    /// Opens the proxy with `namespaces` and its settings changed by `tweak`.
    pub async fn with_settings(
        namespaces: &[registry_proxy::namespace::NamespaceSpec],
        freshness: Duration,
        tweak: impl FnOnce(&mut registry_proxy::Settings),
    ) -> Self {
        use registry_proxy::scheduler::Clock;
        let spool = tempfile::tempdir().expect("spool");
        let driver: std::sync::Arc<dyn driver_core::StorageDriver> =
            std::sync::Arc::new(driver_memory::MemoryDriver::new());
        let mut settings = registry_proxy::Settings {
            spool_dir: spool.path().to_owned(),
            fill_timeout: Duration::from_millis(500),
            fill_limits: Default::default(),
            verify_reads: Default::default(),
            tag_freshness: freshness,
            request_timeout: Duration::from_secs(2),
            auth: None,
            scheduler: Default::default(),
            clock: Clock::system(),
            coordination: None,
        };
        tweak(&mut settings);
        let state =
            registry_proxy::AppState::open(std::sync::Arc::clone(&driver), namespaces, settings)
                .await
                .expect("state");
        Self {
            state,
            driver,
            _spool: spool,
        }
    }

    /// Sends one request through the router.
    pub async fn send(
        &self,
        method: axum::http::Method,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> axum::response::Response {
        use tower::ServiceExt;
        let mut request = axum::http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        registry_proxy::app(self.state.clone())
            .oneshot(request.body(axum::body::Body::empty()).expect("request"))
            .await
            .expect("infallible")
    }

    /// GETs `uri`: status, headers and the whole body (or its error).
    pub async fn get(
        &self,
        uri: &str,
    ) -> (
        axum::http::StatusCode,
        axum::http::HeaderMap,
        Result<bytes::Bytes, axum::Error>,
    ) {
        let response = self.send(axum::http::Method::GET, uri, &[]).await;
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            axum::body::to_bytes(body, 64 << 20).await,
        )
    }
}

/// Reads every blob in storage and checks it against the digest it is
/// stored under; returns how many there are.
pub async fn verify_stored_blobs(driver: &dyn driver_core::StorageDriver) -> usize {
    let blobs = driver_core::StoragePath::parse("/docker/registry/v2/blobs").expect("path");
    let mut data = Vec::new();
    let walked = driver
        .walk(&blobs, &driver_core::WalkOptions::default(), &mut |info| {
            if !info.is_dir && info.path.as_str().ends_with("/data") {
                data.push(info.path.clone());
            }
            driver_core::WalkControl::Continue
        })
        .await;
    if let Err(e) = walked {
        assert!(e.is_not_found(), "walk blobs: {e}");
    }
    for path in &data {
        let hex = path.as_str().rsplit('/').nth(1).expect("digest directory");
        let bytes = driver.get_content(path).await.expect("read a stored blob");
        assert_eq!(
            Digest::of(&bytes).hex(),
            hex,
            "{path} holds {} bytes that are not its digest's",
            bytes.len()
        );
    }
    data.len()
}

/// A TCP relay to the upstream that counts the bytes the upstream sends.
pub struct Relay {
    /// Where it listens, `127.0.0.1:PORT`.
    pub addr: String,
    sent: Arc<AtomicU64>,
    held: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Relay {
    /// Starts relaying to `upstream`.
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("relay addr").to_string();
        let sent = Arc::new(AtomicU64::new(0));
        let held = Arc::new(tokio::sync::watch::channel(false).0);
        let (counter, upstream, hold) = (Arc::clone(&sent), upstream.to_owned(), Arc::clone(&held));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (counter, upstream) = (Arc::clone(&counter), upstream.clone());
                let mut released = hold.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
                        let _ = server_tx.shutdown().await;
                    });
                    let mut buf = vec![0; 256 << 10];
                    while let Ok(n @ 1..) = server_rx.read(&mut buf).await {
                        if released.wait_for(|held| !held).await.is_err() {
                            break;
                        }
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                        if client_tx.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        Self { addr, sent, held }
    }

    /// Holds (`true`) or releases the upstream's bytes: while held, the
    /// relay reads them but passes none on.
    pub fn hold(&self, held: bool) {
        self.held.send_replace(held);
    }

    /// Bytes the upstream sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits until the upstream has sent nothing for a second (a proxy may
    /// keep fetching after its client is served), then returns the count.
    pub async fn settled(&self) -> u64 {
        let mut last = self.sent();
        let mut quiet_since = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.sent();
            if now != last {
                (last, quiet_since) = (now, Instant::now());
            }
        }
        last
    }
}

/// `field` of /proc/PID/status, in MiB.
pub fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("status field");
    kib / 1024.0
}

/// The `storage` block (YAML, indented two spaces) of `s3`'s bucket, root
/// directory and credentials, with `extra` keys (`key: value` lines).
pub fn s3_storage_yaml(s3: &driver_s3::S3Config, extra: &[&str]) -> String {
    let mut yaml = format!(
        "  s3:\n    bucket: {}\n    region: {}\n    regionendpoint: {}\n    accesskey: {}\n    secretkey: {}\n",
        s3.bucket,
        s3.region,
        s3.endpoint.clone().unwrap_or_default(),
        s3.access_key.clone().unwrap_or_default(),
        s3.secret_key
            .as_ref()
            .map(|s| s.expose())
            .unwrap_or_default(),
    );
    if !s3.root_directory.is_empty() {
        yaml.push_str(&format!("    rootdirectory: {}\n", s3.root_directory));
    }
    for line in extra {
        yaml.push_str(&format!("    {line}\n"));
    }
    yaml
}

/// The `code` of the first error in an OCI error body.
pub fn error_code(body: &[u8]) -> String {
    let json: serde_json::Value = serde_json::from_slice(body).expect("an OCI error body");
    json["errors"][0]["code"].as_str().expect("code").to_owned()
}

/// The median of `values` (not empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `wrk -c64` on one URL (with `headers`): requests per second and the
/// p99 latency.
pub fn wrk(url: &str, seconds: u64, headers: &[&str]) -> (f64, String) {
    let out = Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{seconds}s"), "--latency", url])
        .args(headers.iter().flat_map(|h| ["-H", h]))
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk printed no rate: {text}"));
    assert!(!text.contains("Non-2xx"), "wrk saw failed requests: {text}");
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map_or_else(|| "?".into(), |v| v.trim().to_owned());
    (rps, p99)
}
