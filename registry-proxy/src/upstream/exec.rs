//! Credentials from a command (`proxy.exec`, distribution v3's): a Docker
//! credential helper, run as `<command> get` with the upstream's URL on
//! its standard input, printing `{"Username": …, "Secret": …}`. They are
//! reused for `lifetime` (unset: until the upstream refuses them; zero:
//! the command runs for every request that needs them), and for as long
//! again (at most 10 minutes) while a new run is slow or failing; fetched
//! again at once when the upstream refuses them, so a rotated password is
//! picked up on the first refusal. One run at a time serves every request
//! (`upstream::refresh`); a failed one is retried after a backoff. The
//! command gets a cleared environment: [`PASSED`] and the names
//! `exec.env` lists, never the cache's own `REGISTRY_*` settings.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use driver_core::Secret;
use tokio::io::AsyncWriteExt as _;
use tokio::time::Instant;

use super::refresh::{Fetched, Refreshed, Unready};

/// How long the command may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// The most bytes of its answer read.
const MAX_ANSWER: usize = 64 << 10;

/// The longest credentials are used past their lifetime while a new run
/// is slow or failing.
const MAX_GRACE: Duration = Duration::from_secs(600);

/// The variables a helper gets whatever `exec.env` says: where programs
/// and the home directory are, the user, locale and time zone, temporary
/// files, the trust store, Docker's configuration and the HTTP proxy.
pub const PASSED: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "DOCKER_CONFIG",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// A credential helper and what it last said.
#[derive(Debug)]
pub struct Helper {
    credentials: Refreshed<(String, Secret)>,
}

/// How a helper is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    /// The program (looked up on `PATH` when not a path).
    pub command: String,
    /// How long its credentials are reused; `None`: until refused.
    pub lifetime: Option<Duration>,
    /// More variables it gets (`exec.env`): names, or prefixes ending in
    /// `*` (`AWS_*`); `REGISTRY_*` never passes.
    pub env: Vec<String>,
}

/// One run of the command, as [`Helper`] starts it.
#[derive(Debug)]
struct Command {
    command: String,
    server: String,
    env: Vec<String>,
}

impl Helper {
    /// The helper `exec` for the upstream at `server`.
    pub fn new(exec: &Exec, server: &str) -> Self {
        let command = Arc::new(Command {
            command: exec.command.clone(),
            server: server.trim_end_matches('/').to_owned(),
            env: exec.env.clone(),
        });
        let lifetime = exec.lifetime;
        let grace = lifetime.map_or(Duration::ZERO, |l| l.min(MAX_GRACE));
        Self {
            credentials: Refreshed::new(move || {
                let command = Arc::clone(&command);
                async move {
                    command.run().await.map(|value| Fetched {
                        value,
                        fresh: lifetime,
                        grace,
                    })
                }
            }),
        }
    }

    /// The credentials to use now: the cached ones while they live (or
    /// are in their grace), else the command's, waited for at most
    /// `within`.
    pub(crate) async fn credentials(&self, within: Duration) -> Result<(String, Secret), Unready> {
        self.credentials.get(within).await
    }

    /// Forgets the cached credentials if they were taken at or before
    /// `asked` (the upstream refused a request that sent them).
    pub(crate) fn forget(&self, asked: Instant) {
        self.credentials.forget(asked);
    }
}

/// The variables of `vars` a helper gets: [`PASSED`] and those `extra`
/// names (a trailing `*` matches a prefix), never `REGISTRY_*`.
fn passed(
    vars: impl Iterator<Item = (OsString, OsString)>,
    extra: &[String],
) -> Vec<(OsString, OsString)> {
    vars.filter(|(name, _)| {
        let Some(name) = name.to_str() else {
            return false;
        };
        !name.starts_with("REGISTRY_")
            && (PASSED.contains(&name)
                || extra.iter().any(|e| match e.strip_suffix('*') {
                    Some(prefix) => name.starts_with(prefix),
                    None => name == e,
                }))
    })
    .collect()
}

impl Command {
    /// Runs the command once.
    async fn run(&self) -> Result<(String, Secret), String> {
        let failed = |why: String| format!("credential helper {}: {why}", self.command);
        let mut child = tokio::process::Command::new(&self.command)
            .arg("get")
            .env_clear()
            .envs(passed(std::env::vars_os(), &self.env))
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

    /// Long enough for any run of a test helper.
    const WAIT: Duration = Duration::from_secs(60);

    fn exec(command: &str, lifetime: Option<Duration>) -> Exec {
        Exec {
            command: command.to_owned(),
            lifetime,
            env: Vec::new(),
        }
    }

    fn failure(e: Unready) -> String {
        match e {
            Unready::Failed(why) => why,
            Unready::Late(after) => panic!("still running after {after:?}"),
        }
    }

    #[tokio::test]
    async fn the_helper_is_run_as_its_lifetime_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        let command = script(
            dir.path(),
            r#"read server; echo "{\"ServerURL\":\"$server\",\"Username\":\"u-$server\",\"Secret\":\"s3cret\"}""#,
        );
        let once = Helper::new(&exec(&command, None), "https://up.test/");
        let (user, secret) = once.credentials(WAIT).await.expect("credentials");
        assert_eq!(
            (user.as_str(), secret.expose()),
            ("u-https://up.test", "s3cret")
        );
        once.credentials(WAIT).await.expect("cached");
        assert_eq!(runs(dir.path()), 1);
        once.forget(Instant::now());
        once.credentials(WAIT).await.expect("again");
        assert_eq!(runs(dir.path()), 2);
        let every = Helper::new(&exec(&command, Some(Duration::ZERO)), "up.test");
        every.credentials(WAIT).await.expect("first");
        every.credentials(WAIT).await.expect("second");
        assert_eq!(runs(dir.path()), 4);

        let broken = script(dir.path(), "echo 'no such registry' >&2; exit 1");
        let e = Helper::new(&exec(&broken, None), "up.test")
            .credentials(WAIT)
            .await
            .expect_err("a failing helper");
        let e = failure(e);
        assert!(e.contains("no such registry"), "{e}");
        let flood = script(dir.path(), "head -c 100000 /dev/zero");
        let e = Helper::new(&exec(&flood, None), "up.test")
            .credentials(WAIT)
            .await
            .expect_err("an answer over the bound");
        let e = failure(e);
        assert!(e.contains("over 64 KiB"), "{e}");
    }

    /// The helper's environment is cleared: the cache's own `REGISTRY_*`
    /// settings (which hold its secrets) never reach it, the allowlist
    /// and the names `exec.env` adds do.
    #[test]
    fn the_helper_gets_only_the_allowed_variables() {
        let vars = [
            ("PATH", "/usr/bin"),
            ("HOME", "/home/cache"),
            ("REGISTRY_PROXY_PASSWORD", "s3cret"),
            ("REGISTRY_STORAGE_S3_SECRETKEY", "s3cret"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_REGION", "eu-west-1"),
            ("GITHUB_TOKEN", "ghp_x"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let names = |extra: &[&str]| {
            let extra: Vec<String> = extra.iter().map(|e| (*e).to_owned()).collect();
            passed(vars.clone().into_iter(), &extra)
                .into_iter()
                .map(|(k, _)| k.into_string().expect("utf-8"))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&[]), ["PATH", "HOME"]);
        assert_eq!(
            names(&["AWS_*", "REGISTRY_*", "*"]),
            ["PATH", "HOME", "AWS_ROLE_ARN", "AWS_REGION", "GITHUB_TOKEN"]
        );
        assert_eq!(names(&["AWS_REGION"]), ["PATH", "HOME", "AWS_REGION"]);
    }
}
