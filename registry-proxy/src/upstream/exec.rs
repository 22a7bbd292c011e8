//! Credentials from a command (`proxy.exec`, distribution v3's): a Docker
//! credential helper, run as `<command> get` with the upstream's URL on
//! its standard input, printing `{"Username": …, "Secret": …}`. They are
//! reused for `lifetime` (unset: until the upstream refuses them; zero:
//! the command runs for every request that needs them), and fetched again
//! at once when the upstream refuses them, so a rotated password is picked
//! up on the first refusal.

use std::time::Duration;

use driver_core::Secret;
use tokio::io::AsyncWriteExt as _;
use tokio::time::Instant;

/// How long the command may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// The most bytes of its answer read.
const MAX_ANSWER: usize = 64 << 10;

/// A credential helper and what it last said.
#[derive(Debug)]
pub struct Helper {
    command: String,
    lifetime: Option<Duration>,
    server: String,
    cached: tokio::sync::Mutex<Option<((String, Secret), Instant)>>,
}

/// How a helper is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    /// The program (looked up on `PATH` when not a path).
    pub command: String,
    /// How long its credentials are reused; `None`: until refused.
    pub lifetime: Option<Duration>,
}

impl Helper {
    /// The helper `exec` for the upstream at `server`.
    pub fn new(exec: &Exec, server: &str) -> Self {
        Self {
            command: exec.command.clone(),
            lifetime: exec.lifetime,
            server: server.trim_end_matches('/').to_owned(),
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The credentials to use now: the cached ones while they live, else
    /// the command's.
    pub async fn credentials(&self) -> Result<(String, Secret), String> {
        let mut cached = self.cached.lock().await;
        if let Some((credentials, at)) = cached.as_ref() {
            if self.lifetime.is_none_or(|l| at.elapsed() < l) {
                return Ok(credentials.clone());
            }
        }
        let fresh = self.run().await?;
        *cached = Some((fresh.clone(), Instant::now()));
        Ok(fresh)
    }

    /// Forgets the cached credentials (the upstream refused them).
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }

    /// Runs the command once.
    async fn run(&self) -> Result<(String, Secret), String> {
        let failed = |why: String| format!("credential helper {}: {why}", self.command);
        let mut child = tokio::process::Command::new(&self.command)
            .arg("get")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that does not read its input (it serves one
            // registry) may have exited already: its answer decides.
            let _ = stdin.write_all(self.server.as_bytes()).await;
        }
        // Its output is read only up to the bounds, while it runs.
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let ran = async {
            let (out, err) = tokio::join!(bounded(stdout, MAX_ANSWER), bounded(stderr, 4096));
            (out, err, child.wait().await)
        };
        let (stdout, stderr, status) = tokio::time::timeout(RUN_TIMEOUT, ran)
            .await
            .map_err(|_| failed(format!("no answer within {RUN_TIMEOUT:?}")))?;
        let status = status.map_err(|e| failed(e.to_string()))?;
        // Checked first: the pipe closed after the bound may have ended it
        // with SIGPIPE.
        if stdout.len() > MAX_ANSWER {
            return Err(failed("an answer over 64 KiB".into()));
        }
        if !status.success() {
            let said = String::from_utf8_lossy(&stderr);
            let said: String = said.trim().chars().take(200).collect();
            return Err(failed(format!("{status}: {said}")));
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Answer {
            username: String,
            secret: String,
        }
        let answer: Answer = serde_json::from_slice(&stdout)
            .map_err(|_| failed("its answer is not {\"Username\", \"Secret\"} JSON".into()))?;
        Ok((answer.username, Secret::from(answer.secret)))
    }
}

/// What `pipe` gives, at most `limit` bytes and one more (so that an
/// answer over the limit shows); nothing when there is no pipe.
async fn bounded(pipe: Option<impl tokio::io::AsyncRead + Unpin>, limit: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let mut bytes = Vec::new();
    if let Some(pipe) = pipe {
        let _ = pipe.take(limit as u64 + 1).read_to_end(&mut bytes).await;
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A helper script in `dir` that prints what `answer` holds and counts
    /// its runs in `dir/runs`.
    fn script(dir: &std::path::Path, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join("helper");
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho run >> {}/runs\n{body}\n", dir.display()),
        )
        .expect("script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path.display().to_string()
    }

    fn runs(dir: &std::path::Path) -> usize {
        std::fs::read_to_string(dir.join("runs"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    #[tokio::test]
    async fn the_helper_is_run_as_its_lifetime_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        let command = script(
            dir.path(),
            r#"read server; echo "{\"ServerURL\":\"$server\",\"Username\":\"u-$server\",\"Secret\":\"s3cret\"}""#,
        );
        let once = Helper::new(
            &Exec {
                command: command.clone(),
                lifetime: None,
            },
            "https://up.test/",
        );
        let (user, secret) = once.credentials().await.expect("credentials");
        assert_eq!(
            (user.as_str(), secret.expose()),
            ("u-https://up.test", "s3cret")
        );
        once.credentials().await.expect("cached");
        assert_eq!(runs(dir.path()), 1);
        once.forget().await;
        once.credentials().await.expect("again");
        assert_eq!(runs(dir.path()), 2);
        let every = Helper::new(
            &Exec {
                command,
                lifetime: Some(Duration::ZERO),
            },
            "up.test",
        );
        every.credentials().await.expect("first");
        every.credentials().await.expect("second");
        assert_eq!(runs(dir.path()), 4);

        let broken = script(dir.path(), "echo 'no such registry' >&2; exit 1");
        let e = Helper::new(
            &Exec {
                command: broken,
                lifetime: None,
            },
            "up.test",
        )
        .credentials()
        .await
        .expect_err("a failing helper");
        assert!(e.contains("no such registry"), "{e}");
        let flood = script(dir.path(), "head -c 100000 /dev/zero");
        let e = Helper::new(
            &Exec {
                command: flood,
                lifetime: None,
            },
            "up.test",
        )
        .credentials()
        .await
        .expect_err("an answer over the bound");
        assert!(e.contains("over 64 KiB"), "{e}");
    }
}
