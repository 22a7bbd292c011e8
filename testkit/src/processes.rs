//! Real servers as child processes on 127.0.0.1 (`docker-registry`, etcd,
//! the `registry-proxy` binary), killed when dropped, and what their debug
//! listeners and `/proc` say about them.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether every one of `tools` is installed; if not, prints which are
/// missing and that `test` is skipped (a failure under `REQUIRE_E2E=1`).
pub fn tools_available(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return true;
    }
    conformance::skip(
        test,
        "REQUIRE_E2E",
        &format!("{missing:?} not installed (scripts/test.sh installs them)"),
    );
    false
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
    let server = etcd_with(dir, "http", &[]);
    wait_healthy(&server.addr);
    server
}

/// [`etcd`] serving clients over TLS with `server`'s certificate and
/// requiring client certificates signed by the CA in `ca`; its client URL
/// is `https://<addr>`. Ready once it accepts connections.
pub fn etcd_tls(dir: &Path, server: &super::tls::Issued, ca: &Path) -> Server {
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    etcd_with(
        dir,
        "https",
        &[
            "--cert-file".to_owned(),
            path(&server.cert),
            "--key-file".to_owned(),
            path(&server.key),
            "--client-cert-auth".to_owned(),
            "--trusted-ca-file".to_owned(),
            path(ca),
        ],
    )
}

/// etcd with clients on `scheme` and `extra` arguments.
fn etcd_with(dir: &Path, scheme: &str, extra: &[String]) -> Server {
    let (client, peer) = (free_port(), free_port());
    let addr = format!("127.0.0.1:{client}");
    let client_url = format!("{scheme}://{addr}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let data = dir.join("etcd");
    let mut args = vec![
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
    ];
    let cluster = format!("test={peer_url}");
    args.push(&cluster);
    args.extend(extra.iter().map(String::as_str));
    start_named("etcd", &args, "etcd", addr, dir)
}

/// Waits (up to 30 s) until the etcd at `addr` says it is healthy: it
/// accepts connections before it has elected itself leader, and requests
/// with a short timeout fail until then.
fn wait_healthy(addr: &str) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = std::net::TcpStream::connect(addr).and_then(|mut socket| {
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            socket.write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")?;
            let mut answer = String::new();
            socket.read_to_string(&mut answer)?;
            Ok(answer)
        });
        if answer.is_ok_and(|a| a.contains("\"health\":\"true\"")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "etcd at {addr} never became healthy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
    registry_proxy_http(dir, &addr, "", sections, env)
}

/// The registry-proxy binary listening on `addr` (a TCP address, or a
/// socket path with `net: unix` in `http`), with the lines `http` (indented
/// two spaces) added to its `http` section and a debug listener, the config
/// `sections` and `env`. Ready once the debug listener answers (it starts
/// after the public one is bound).
pub fn registry_proxy_http(
    dir: &Path,
    addr: &str,
    http: &str,
    sections: &str,
    env: &[(&str, &str)],
) -> Server {
    let config = dir.join("proxy.yml");
    let debug = format!("127.0.0.1:{}", free_port());
    let yaml = format!(
        "version: 0.1\nhttp:\n  addr: {addr}\n{http}  debug:\n    addr: {debug}\n{sections}"
    );
    std::fs::write(&config, yaml).expect("config");
    let config = config.to_str().expect("utf-8 path");
    let binary = registry_proxy_binary();
    let mut server = start_env(
        binary.to_str().expect("utf-8 path"),
        &["serve", config],
        "proxy",
        debug.clone(),
        dir,
        env,
    );
    server.addr = addr.to_owned();
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

/// The S3 bucket of the environment (Garage, started by `scripts/test.sh`)
/// under a fresh root directory named after `root`; else `test` is
/// skipped (failing under `REQUIRE_S3=1`).
pub fn s3_bucket(test: &str, root: &str) -> Option<driver_s3::S3Config> {
    let Ok(Some(s3)) = driver_s3::S3Config::from_env() else {
        conformance::skip(
            test,
            "REQUIRE_S3",
            "S3_BUCKET is not set (scripts/test.sh starts Garage)",
        );
        return None;
    };
    Some(driver_s3::S3Config {
        root_directory: format!("{root}-{:016x}", rand::random::<u64>()),
        ..s3
    })
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

/// The `registry-proxy` binary cargo built beside the running test or
/// benchmark (`target/<profile>/deps/<test>` runs, the binary is
/// `target/<profile>/registry-proxy`).
pub fn registry_proxy_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the running test's path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test binary in target/<profile>/deps");
    let binary = profile.join("registry-proxy");
    assert!(
        binary.exists(),
        "{} is missing: run the tests through cargo",
        binary.display()
    );
    binary
}

/// `registry-proxy du CONFIG`: the stored blob bytes it counts, and its
/// whole output.
pub fn du(config: &Path) -> (u64, String) {
    let out = std::process::Command::new(registry_proxy_binary())
        .arg("du")
        .arg(config)
        .output()
        .expect("du");
    assert!(
        out.status.success(),
        "du: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let total = text
        .lines()
        .find(|l| l.starts_with("stored: "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|b| b.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no total in: {text}"));
    (total, text)
}

/// A temporary directory with a Debian `docker-registry` upstream in it,
/// when `ready` (the parts a test needs are there); otherwise `test` is
/// skipped with `why` (failing under `REQUIRE_E2E=1`). Call from a
/// multi-threaded runtime.
pub fn upstream_for(test: &str, ready: bool, why: &str) -> Option<(tempfile::TempDir, Server)> {
    if !ready {
        conformance::skip(test, "REQUIRE_E2E", why);
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = tokio::task::block_in_place(|| {
        docker_registry(
            dir.path(),
            "upstream",
            &dir.path().join("upstream-root"),
            "",
        )
    });
    Some((dir, upstream))
}

/// [`upstream_for`] when `docker-registry` is installed.
pub fn registry_upstream(test: &str) -> Option<(tempfile::TempDir, Server)> {
    upstream_for(
        test,
        have("docker-registry"),
        "docker-registry is not installed",
    )
}
