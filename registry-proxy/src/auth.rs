//! Client authentication in registry:2's `htpasswd` style: HTTP Basic
//! against bcrypt hashes.
//!
//! bcrypt is slow on purpose, so it is kept from hurting anyone else:
//!
//! - it runs on a small pool of its own threads behind a bounded queue,
//!   never on the blocking pool that storage I/O uses;
//! - verified credentials are remembered by a hash of the decoded user and
//!   password (so `Basic␠␠x` and `basic x` are one entry), evicting the
//!   oldest one at a time when full;
//! - an unknown user costs one bcrypt verification like a wrong password,
//!   so timing does not tell which users exist;
//! - a client address that keeps failing is refused for a while without
//!   any bcrypt work (429 `TOOMANYREQUESTS` with `Retry-After`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::HeaderValue;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::sync::{Fifo, lock};

/// Verified credentials remembered at most.
const REMEMBERED: usize = 10_000;

/// Threads verifying bcrypt hashes.
const VERIFIERS: usize = 2;

/// Verifications queued at most before callers wait for room.
const QUEUE: usize = 64;

/// Failures from one address tolerated before it is made to wait.
const FREE_FAILURES: u32 = 5;

/// The longest an address is made to wait after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Client addresses whose failures are remembered at most.
const TRACKED_ADDRESSES: usize = 10_000;

/// Why a request is not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthenticated {
    /// It carries no Basic credentials.
    Missing,
    /// Unknown user or wrong password.
    Wrong,
    /// Its address failed too often lately: it may try again after this.
    Throttled(Duration),
}

/// An htpasswd file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HtpasswdError(String);

/// A password to check against a bcrypt hash, and where to say whether it
/// matched.
type Job = (String, String, oneshot::Sender<bool>);

/// Recent failures of one client address.
#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// The users of an htpasswd file.
pub struct Htpasswd {
    realm: String,
    users: HashMap<String, String>,
    /// A hash of the file's highest cost that no password matches, verified
    /// for unknown users.
    decoy: String,
    /// Verified credentials by [`credential_key`], and their user.
    remembered: Mutex<Fifo<[u8; 32], String>>,
    failures: Mutex<Fifo<IpAddr, Failures>>,
    jobs: mpsc::Sender<Job>,
    verifications: AtomicU64,
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Htpasswd")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl Htpasswd {
    /// Reads `path`: `user:hash` lines, bcrypt hashes only (`htpasswd -B`).
    pub fn load(realm: &str, path: &std::path::Path) -> Result<Self, HtpasswdError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| HtpasswdError(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(realm, &text)
    }

    /// Parses htpasswd `text` and starts the verifying threads.
    pub fn parse(realm: &str, text: &str) -> Result<Self, HtpasswdError> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .filter(|(user, _)| !user.is_empty())
                .ok_or_else(|| HtpasswdError(format!("line {}: expected user:hash", n + 1)))?;
            if !["$2a$", "$2b$", "$2x$", "$2y$"]
                .iter()
                .any(|p| hash.starts_with(p))
            {
                return Err(HtpasswdError(format!(
                    "line {}: user {user:?} has no bcrypt hash (create it with htpasswd -B)",
                    n + 1
                )));
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        let cost = users
            .values()
            .filter_map(|h| h.get(4..6).and_then(|c| c.parse::<u32>().ok()))
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let decoy = bcrypt::hash(rand::random::<u64>().to_string(), cost)
            .map_err(|e| HtpasswdError(format!("cannot make a bcrypt hash: {e}")))?;
        Ok(Self {
            realm: realm.to_owned(),
            users,
            decoy,
            remembered: Mutex::new(Fifo::new(REMEMBERED)),
            failures: Mutex::new(Fifo::new(TRACKED_ADDRESSES)),
            jobs: start_verifiers()?,
            verifications: AtomicU64::new(0),
        })
    }

    /// Remembers at most `capacity` verified credentials (10,000 unless set).
    pub fn remembering(mut self, capacity: usize) -> Self {
        self.remembered = Mutex::new(Fifo::new(capacity.max(1)));
        self
    }

    /// bcrypt verifications run so far.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// The `WWW-Authenticate` challenge of a 401.
    pub fn challenge(&self) -> HeaderValue {
        let realm = self.realm.replace(['"', '\\'], "");
        HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"registry-proxy\""))
    }

    /// The user an `Authorization` header authenticates, for a request from
    /// `client` (its address, when known).
    pub async fn check(
        &self,
        authorization: Option<&HeaderValue>,
        client: Option<IpAddr>,
    ) -> Result<String, Unauthenticated> {
        let (user, password) = authorization
            .and_then(basic_credentials)
            .ok_or(Unauthenticated::Missing)?;
        let key = credential_key(&user, &password);
        if let Some(user) = lock(&self.remembered).get(&key) {
            return Ok(user.clone());
        }
        if let Some(wait) = client.and_then(|ip| self.backoff(ip)) {
            return Err(Unauthenticated::Throttled(wait));
        }
        let known = self.users.get(&user);
        let hash = known.unwrap_or(&self.decoy).clone();
        let matched = self.verify(password, hash).await && known.is_some();
        if !matched {
            if let Some(ip) = client {
                self.failed(ip);
            }
            return Err(Unauthenticated::Wrong);
        }
        if let Some(ip) = client {
            lock(&self.failures).remove(&ip);
        }
        self.remember(key, &user);
        Ok(user)
    }

    /// Runs one bcrypt verification on the pool.
    async fn verify(&self, password: String, hash: String) -> bool {
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        if self.jobs.send((password, hash, reply)).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    fn remember(&self, key: [u8; 32], user: &str) {
        lock(&self.remembered).insert(key, user.to_owned(), 1);
    }

    /// How long `ip` must still wait, if its failures exceeded the free ones.
    fn backoff(&self, ip: IpAddr) -> Option<Duration> {
        let failures = *lock(&self.failures).get(&ip)?;
        let over = failures.count.checked_sub(FREE_FAILURES)?;
        let wait = Duration::from_secs(1)
            .saturating_mul(1 << over.min(6))
            .min(MAX_BACKOFF);
        let until = failures.last + wait;
        let now = Instant::now();
        (until > now).then(|| until - now)
    }

    /// Counts a failure of `ip`; past [`TRACKED_ADDRESSES`] the address
    /// that first failed longest ago is forgotten.
    fn failed(&self, ip: IpAddr) {
        let mut failures = lock(&self.failures);
        let now = Instant::now();
        match failures.get_mut(&ip) {
            Some(entry) => {
                entry.count = entry.count.saturating_add(1);
                entry.last = now;
            }
            None => {
                // The oldest failures forgotten past the bound: fine.
                let _ = failures.insert(
                    ip,
                    Failures {
                        count: 1,
                        last: now,
                    },
                    1,
                );
            }
        }
    }
}

/// Starts the verifying threads; they end when the queue's sender goes.
fn start_verifiers() -> Result<mpsc::Sender<Job>, HtpasswdError> {
    let (jobs, queue) = mpsc::channel::<Job>(QUEUE);
    let queue = std::sync::Arc::new(Mutex::new(queue));
    for n in 0..VERIFIERS {
        let queue = std::sync::Arc::clone(&queue);
        std::thread::Builder::new()
            .name(format!("bcrypt-{n}"))
            .spawn(move || {
                loop {
                    let job = lock(&queue).blocking_recv();
                    let Some((password, hash, reply)) = job else {
                        return;
                    };
                    let _ = reply.send(bcrypt::verify(password, &hash).unwrap_or(false));
                }
            })
            .map_err(|e| HtpasswdError(format!("cannot start a bcrypt thread: {e}")))?;
    }
    Ok(jobs)
}

/// The key credentials are remembered by: a hash of the decoded user and
/// password, whatever the header's spelling.
fn credential_key(user: &str, password: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(user.as_bytes());
    hasher.update([0]);
    hasher.update(password.as_bytes());
    hasher.finalize().into()
}

/// The user and password of a `Basic` `Authorization` value.
fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderValue {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {encoded}")).expect("header")
    }

    fn file(users: &[&str]) -> Htpasswd {
        let hash = bcrypt::hash("right", 4).expect("hash");
        let lines: String = users.iter().map(|u| format!("{u}:{hash}\n")).collect();
        Htpasswd::parse("r", &format!("# users\n{lines}")).expect("parse")
    }

    #[tokio::test]
    async fn checks_bcrypt_users() {
        let file = file(&["alice"]);
        assert_eq!(
            file.check(Some(&basic("alice", "right")), None).await,
            Ok("alice".into())
        );
        // Remembered: the same answer without bcrypt.
        assert_eq!(
            file.check(Some(&basic("alice", "right")), None).await,
            Ok("alice".into())
        );
        assert_eq!(file.verifications(), 1);
        assert_eq!(
            file.check(Some(&basic("alice", "wrong")), None).await,
            Err(Unauthenticated::Wrong)
        );
        assert_eq!(file.check(None, None).await, Err(Unauthenticated::Missing));
        let bearer = HeaderValue::from_static("Bearer x");
        assert_eq!(
            file.check(Some(&bearer), None).await,
            Err(Unauthenticated::Missing)
        );
        assert_eq!(file.challenge(), "Basic realm=\"r\"");
    }

    /// An unknown user costs a bcrypt verification, as a wrong password
    /// does (it was refused at once: user enumeration by timing).
    #[tokio::test]
    async fn unknown_users_cost_a_verification() {
        let file = file(&["alice"]);
        assert_eq!(
            file.check(Some(&basic("bob", "right")), None).await,
            Err(Unauthenticated::Wrong)
        );
        assert_eq!(file.verifications(), 1);
    }

    /// One credential, however the header spells it, is one remembered
    /// entry; a full memory forgets its oldest entry only.
    #[tokio::test]
    async fn remembered_credentials_are_canonical_and_evicted_one_at_a_time() {
        let file = file(&["a", "b", "c"]).remembering(2);
        let encoded = base64::engine::general_purpose::STANDARD.encode("a:right");
        for spelling in [
            format!("Basic {encoded}"),
            format!("basic {encoded}"),
            format!("BASIC  {encoded} "),
        ] {
            let value = HeaderValue::from_str(&spelling).expect("header");
            assert_eq!(file.check(Some(&value), None).await, Ok("a".into()));
        }
        assert_eq!(file.verifications(), 1, "one credential verified twice");
        for user in ["b", "c"] {
            assert_eq!(
                file.check(Some(&basic(user, "right")), None).await,
                Ok(user.into())
            );
        }
        assert_eq!(file.verifications(), 3);
        // "a" was the oldest and went; "b" and "c" stayed.
        for user in ["b", "c", "a"] {
            file.check(Some(&basic(user, "right")), None)
                .await
                .expect("right");
        }
        assert_eq!(file.verifications(), 4);
    }

    /// An address that keeps failing is refused without bcrypt work for a
    /// while, even with the right password; another address is not.
    #[tokio::test(start_paused = true)]
    async fn repeated_failures_slow_an_address_down() {
        let file = file(&["alice"]);
        let (bad, good): (IpAddr, IpAddr) = (
            "192.0.2.1".parse().expect("ip"),
            "192.0.2.2".parse().expect("ip"),
        );
        for _ in 0..FREE_FAILURES {
            assert_eq!(
                file.check(Some(&basic("alice", "guess")), Some(bad)).await,
                Err(Unauthenticated::Wrong)
            );
        }
        let before = file.verifications();
        let refused = file.check(Some(&basic("alice", "right")), Some(bad)).await;
        assert!(
            matches!(refused, Err(Unauthenticated::Throttled(_))),
            "{refused:?}"
        );
        assert_eq!(file.verifications(), before, "a throttled try ran bcrypt");
        assert_eq!(
            file.check(Some(&basic("alice", "right")), Some(good)).await,
            Ok("alice".into())
        );
        tokio::time::advance(MAX_BACKOFF).await;
        assert_eq!(
            file.check(Some(&basic("alice", "right")), Some(bad)).await,
            Ok("alice".into())
        );
    }

    /// Verification does not wait for the blocking pool that storage I/O
    /// uses: with that pool's only thread busy, a check still completes.
    #[test]
    fn verification_does_not_use_the_blocking_pool() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(1)
            .build()
            .expect("runtime");
        let file = file(&["alice"]);
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        runtime.block_on(async {
            let busy = tokio::task::spawn_blocking(move || blocked.recv());
            let checked = tokio::time::timeout(
                Duration::from_secs(20),
                file.check(Some(&basic("alice", "right")), None),
            )
            .await;
            release.send(()).expect("release");
            let _ = busy.await;
            assert_eq!(
                checked,
                Ok(Ok("alice".into())),
                "bcrypt waited for storage's pool"
            );
        });
    }

    #[test]
    fn refuses_what_is_not_bcrypt() {
        assert!(Htpasswd::parse("r", "alice:{SHA}abc").is_err());
        assert!(Htpasswd::parse("r", "no-colon").is_err());
        assert!(Htpasswd::parse("r", ":$2y$05$x").is_err());
    }
}
