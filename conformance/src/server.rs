//! An S3 server of a test's own, for tests that stop it: started with the
//! repository's `scripts/s3-server.sh` (Garage, or MinIO when installed)
//! in a temporary directory, stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A private S3 server; stopped when dropped.
pub struct PrivateS3 {
    dir: tempfile::TempDir,
}

impl PrivateS3 {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/s3-server.sh")
    }

    /// Starts a new server.
    pub fn start() -> Self {
        let server = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        server.run("start");
        server
    }

    /// Runs `s3-server.sh ACTION` (`start` again after `stop` brings the
    /// same server back, with its data, on the same port).
    pub fn run(&self, action: &str) {
        let status = Command::new(Self::script())
            .args([action, &self.dir.path().display().to_string()])
            .status()
            .expect("run s3-server.sh");
        assert!(status.success(), "s3-server.sh {action} failed");
    }

    /// A variable of the server's environment file (`S3_BUCKET`,
    /// `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`).
    pub fn var(&self, name: &str) -> Option<String> {
        let env = std::fs::read_to_string(self.dir.path().join("env")).expect("server env");
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(str::to_owned)
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.run("stop");
    }
}
