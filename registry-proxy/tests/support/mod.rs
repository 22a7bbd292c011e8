//! Real servers for the end-to-end tests and the side-by-side benchmark:
//! `docker-registry` and the `registry-proxy` binary as child processes on
//! 127.0.0.1, killed when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use registry_proxy::oci::Digest;

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
}

impl Server {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    let log = dir.join(format!(
        "{}.log",
        config
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("server")
    ));
    let out = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new(program)
        .args(args)
        .arg(config)
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    wait_ready(&addr, &mut child, &log);
    Server { child, addr }
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
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.join("proxy.yml");
    let auth = credentials
        .map(|(u, p)| format!("  username: {u}\n  password: {p}\n"))
        .unwrap_or_default();
    let yaml = format!(
        "version: 0.1\nstorage:\n{storage}http:\n  addr: {addr}\nproxy:\n  remoteurl: http://{upstream}\n{auth}"
    );
    std::fs::write(&config, yaml).expect("config");
    start(
        env!("CARGO_BIN_EXE_registry-proxy"),
        &["serve"],
        &config,
        addr,
        dir,
    )
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
