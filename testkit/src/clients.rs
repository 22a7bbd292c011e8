//! Real pulling clients beside skopeo: Podman (containers/image, like
//! skopeo, Buildah and CRI-O) and containerd's `ctr` against a containerd
//! daemon of the test's own. Both unpack what they pull, so the image they
//! pull is a real root filesystem ([`rootfs_image`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use registry_proxy::oci::Digest;
use serde_json::json;

/// Whether `podman`, `containerd`, `ctr` and `tar` are installed; if not,
/// `test` is skipped (or fails under `REQUIRE_E2E=1`).
pub fn available(test: &str) -> bool {
    super::tools_available(test, &["podman", "containerd", "ctr", "tar"])
}

/// An OCI layout in `dir/<name>` holding tag `v1`: one uncompressed tar
/// layer with a file `hello.txt` saying `text`, and a config whose
/// `diff_ids` name it (clients that unpack check them).
pub fn rootfs_image(dir: &Path, name: &str, text: &str) -> PathBuf {
    let files = dir.join(format!("{name}-rootfs"));
    std::fs::create_dir_all(&files).expect("rootfs");
    std::fs::write(files.join("hello.txt"), text).expect("file");
    let tar = dir.join(format!("{name}.tar"));
    let made = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&files)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(made.success(), "tar");
    let layout = dir.join(name);
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("layout");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    let blob = |bytes: &[u8], media_type: &str| {
        let digest = Digest::of(bytes);
        std::fs::write(layout.join("blobs/sha256").join(digest.hex()), bytes).expect("blob");
        json!({"mediaType": media_type, "digest": digest.to_string(), "size": bytes.len()})
    };
    let layer = blob(
        &std::fs::read(&tar).expect("layer"),
        "application/vnd.oci.image.layer.v1.tar",
    );
    let config = json!({"architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}});
    let config = blob(
        config.to_string().as_bytes(),
        "application/vnd.oci.image.config.v1+json",
    );
    let manifest = json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": [layer]});
    let mut manifest = blob(
        manifest.to_string().as_bytes(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    manifest["annotations"] = json!({"org.opencontainers.image.ref.name": "v1"});
    let index = json!({"schemaVersion": 2, "manifests": [manifest]});
    std::fs::write(layout.join("index.json"), index.to_string()).expect("index");
    layout
}

/// What a client run printed, when it failed.
fn outcome(what: &str, out: std::io::Result<Output>) -> Result<(), String> {
    let out = out.map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Pulls `image` (`host:port/name:tag`) with Podman into storage under
/// `dir` (vfs, nothing shared with the machine's), over plain HTTP, as
/// `creds` (`user:password`) or with none.
pub fn podman_pull(dir: &Path, image: &str, creds: Option<&str>) -> Result<(), String> {
    let registry = image.split('/').next().unwrap_or_default();
    let conf = dir.join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "unqualified-search-registries = []\n[[registry]]\nlocation = \"{registry}\"\ninsecure = true\n"
        ),
    )
    .expect("registries.conf");
    // An empty credentials file of its own: none of the machine user's.
    let auth = dir.join("auth.json");
    std::fs::write(&auth, "{}").expect("auth.json");
    let mut podman = Command::new("podman");
    podman
        .env("CONTAINERS_REGISTRIES_CONF", &conf)
        .env("REGISTRY_AUTH_FILE", &auth)
        .arg("--root")
        .arg(dir.join("podman-root"))
        .arg("--runroot")
        .arg(dir.join("podman-run"))
        .args([
            "--storage-driver",
            "vfs",
            "--events-backend",
            "none",
            "pull",
        ]);
    if let Some(creds) = creds {
        podman.args(["--creds", creds]);
    }
    outcome(&format!("podman pull {image}"), podman.arg(image).output())
}

/// A containerd daemon of the test's own (its root, state and socket
/// under a directory of the test's), stopped when dropped.
pub struct Containerd {
    child: Child,
    socket: PathBuf,
}

impl Containerd {
    /// Starts containerd with everything under `dir`, and waits until it
    /// answers.
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("containerd dir");
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\n[grpc]\n  address = \"{}\"\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  disable = true\n",
                dir.join("root").display(),
                dir.join("state").display(),
                socket.display()
            ),
        )
        .expect("containerd config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let daemon = Self { child, socket };
        let ready = (0..200).any(|_| {
            let answered = daemon.ctr(&["version"]).is_ok();
            if !answered {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            answered
        });
        assert!(ready, "containerd did not answer within 10 s");
        daemon
    }

    fn ctr(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output();
        outcome(&format!("ctr {args:?}"), out)
    }

    /// Pulls and unpacks `image` (`host:port/name:tag`) over plain HTTP,
    /// as `creds` (`user:password`) or with none.
    pub fn pull(&self, image: &str, creds: Option<&str>) -> Result<(), String> {
        let mut args = vec!["images", "pull", "--plain-http", "--snapshotter", "native"];
        if let Some(creds) = creds {
            args.extend(["--user", creds]);
        }
        args.push(image);
        self.ctr(&args)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
