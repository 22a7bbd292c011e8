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
//! - a client that keeps failing, and a user name that keeps failing from
//!   any clients, are refused for a while without any bcrypt work (429
//!   `TOOMANYREQUESTS` with `Retry-After`); a client is its address, an
//!   IPv6 one by its /64, taken from a header that a trusted reverse proxy
//!   sets ([`ClientAddress`]) when one is in front;
//! - the admin listener's logins have threads and a queue of their own
//!   ([`Htpasswd::check_admin`]), their failures counted with the others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::sync::{Fifo, lock};

mod throttle;

#[cfg(test)]
use throttle::MAX_BACKOFF;
pub use throttle::{Cidr, ClientAddress};
use throttle::{FREE_FAILURES, FREE_USER_FAILURES, Throttle, client_key, user_key};

/// Verified credentials remembered at most.
const REMEMBERED: usize = 10_000;

/// Threads verifying bcrypt hashes.
const VERIFIERS: usize = 2;

/// Verifications queued at most before callers wait for room.
const QUEUE: usize = 64;

/// Threads verifying the admin listener's logins.
const ADMIN_VERIFIERS: usize = 1;

/// Admin verifications queued at most.
const ADMIN_QUEUE: usize = 8;

/// Why a request is not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthenticated {
    /// It carries no Basic credentials.
    Missing,
    /// Unknown user or wrong password.
    Wrong,
    /// Its client, or its user name, failed too often lately: it may try
    /// again after this.
    Throttled(Duration),
}

/// An htpasswd file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HtpasswdError(String);

/// A password to check against a bcrypt hash, and where to say whether it
/// matched.
type Job = (String, String, oneshot::Sender<bool>);

/// The users of an htpasswd file.
pub struct Htpasswd {
    realm: String,
    users: HashMap<String, String>,
    /// A hash of the file's highest cost that no password matches, verified
    /// for unknown users.
    decoy: String,
    /// Verified credentials by [`credential_key`], and their user.
    remembered: Mutex<Fifo<[u8; 32], String>>,
    /// Failures by [`client_key`].
    clients: Throttle<IpAddr>,
    /// Failures by [`user_key`], whoever the client.
    names: Throttle<[u8; 32]>,
    /// Failures by [`user_key`] on the admin listener: guesses on the
    /// public listener cannot lock an admin out of it, nor the reverse.
    admin_names: Throttle<[u8; 32]>,
    /// The public listener's verifications.
    jobs: mpsc::Sender<Job>,
    /// The admin listener's.
    admin_jobs: mpsc::Sender<Job>,
    verifications: AtomicU64,
    /// Where clients' addresses come from.
    clients_from: ClientAddress,
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
            clients: Throttle::new(FREE_FAILURES),
            names: Throttle::new(FREE_USER_FAILURES),
            admin_names: Throttle::new(FREE_USER_FAILURES),
            jobs: start_verifiers("bcrypt", VERIFIERS, QUEUE)?,
            admin_jobs: start_verifiers("bcrypt-admin", ADMIN_VERIFIERS, ADMIN_QUEUE)?,
            verifications: AtomicU64::new(0),
            clients_from: ClientAddress::default(),
        })
    }

    /// Takes clients' addresses as `clients_from` says (default: the peer).
    pub fn behind(mut self, clients_from: ClientAddress) -> Self {
        self.clients_from = clients_from;
        self
    }

    /// The client of a request from `peer` with `headers`, as failures are
    /// counted ([`ClientAddress::of`]).
    pub fn client(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        self.clients_from.of(peer, headers)
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
    /// `client` (its address, when known: [`Htpasswd::client`]).
    pub async fn check(
        &self,
        authorization: Option<&HeaderValue>,
        client: Option<IpAddr>,
    ) -> Result<String, Unauthenticated> {
        self.check_on(&self.jobs, &self.names, authorization, client)
            .await
    }

    /// As [`check`](Self::check), for the admin listener: verified on
    /// threads behind a queue of their own, so that guesses on either
    /// listener do not hold up the other's logins; failures count for the
    /// client and user as on the public listener.
    pub async fn check_admin(
        &self,
        authorization: Option<&HeaderValue>,
        client: Option<IpAddr>,
    ) -> Result<String, Unauthenticated> {
        self.check_on(&self.admin_jobs, &self.admin_names, authorization, client)
            .await
    }

    /// Checks `authorization` with verifications on `pool`, counting
    /// failures by client and, in `names`, by user.
    async fn check_on(
        &self,
        pool: &mpsc::Sender<Job>,
        names: &Throttle<[u8; 32]>,
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
        let client = client.map(client_key);
        let name = user_key(&user);
        let wait = client
            .and_then(|c| self.clients.backoff(&c))
            .max(names.backoff(&name));
        if let Some(wait) = wait {
            return Err(Unauthenticated::Throttled(wait));
        }
        // Counted as a failure before it is verified (and forgiven once it
        // matched): guesses sent at once, on many connections or streams,
        // are all counted, so no more than the free failures get past.
        if let Some(client) = client {
            self.clients.failed(client);
        }
        names.failed(name);
        let known = self.users.get(&user);
        let hash = known.unwrap_or(&self.decoy).clone();
        let matched = match self.verify(pool, password, hash) {
            Some(verified) => verified.await && known.is_some(),
            // Every verifier busy and the queue full: try again shortly
            // (no wait without bound behind a flood of guesses).
            None => return Err(Unauthenticated::Throttled(Duration::from_secs(1))),
        };
        if !matched {
            return Err(Unauthenticated::Wrong);
        }
        if let Some(client) = client {
            self.clients.forgive(&client);
        }
        names.forgive(&name);
        self.remember(key, &user);
        Ok(user)
    }

    /// Queues one bcrypt verification on `pool`, whose answer the future
    /// gives; `None` when the queue is full.
    fn verify(
        &self,
        pool: &mpsc::Sender<Job>,
        password: String,
        hash: String,
    ) -> Option<impl std::future::Future<Output = bool> + use<>> {
        let (reply, answer) = oneshot::channel();
        pool.try_send((password, hash, reply)).ok()?;
        self.verifications.fetch_add(1, Ordering::Relaxed);
        Some(async move { answer.await.unwrap_or(false) })
    }

    fn remember(&self, key: [u8; 32], user: &str) {
        lock(&self.remembered).insert(key, user.to_owned(), 1);
    }
}

/// Starts `threads` verifying threads named `name`, behind a queue of
/// `queue` jobs; they end when the queue's sender goes.
fn start_verifiers(
    name: &str,
    threads: usize,
    queue: usize,
) -> Result<mpsc::Sender<Job>, HtpasswdError> {
    let (jobs, queue) = mpsc::channel::<Job>(queue);
    let queue = std::sync::Arc::new(Mutex::new(queue));
    for n in 0..threads {
        let queue = std::sync::Arc::clone(&queue);
        std::thread::Builder::new()
            .name(format!("{name}-{n}"))
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

/// The user and password of a `Basic` `Authorization` value. An empty user
/// with an empty password is no credentials: containers/image clients
/// (skopeo, Podman) that hold none answer a Basic challenge with them, and
/// are anonymous.
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
    if user.is_empty() && password.is_empty() {
        return None;
    }
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderName;

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
    /// containers/image clients without credentials answer a Basic
    /// challenge with an empty user and password: that is anonymous, and
    /// costs no verification and no throttle count.
    #[tokio::test]
    async fn empty_credentials_are_none() {
        let file = file(&["alice"]);
        for _ in 0..10 {
            assert_eq!(
                file.check(Some(&basic("", "")), None).await,
                Err(Unauthenticated::Missing)
            );
        }
        assert_eq!(file.verifications(), 0);
    }

    /// Guesses sent at once (many connections or HTTP/2 streams) are each
    /// counted before they are verified: no more than the free failures
    /// reach bcrypt. Counted after, all fifty were verified.
    #[tokio::test]
    async fn guesses_sent_at_once_are_all_counted() {
        let file = file(&["alice"]);
        let client = Some("192.0.2.7".parse().expect("ip"));
        let guess = basic("alice", "guess");
        let answers =
            futures::future::join_all((0..50).map(|_| file.check(Some(&guess), client))).await;
        assert!(
            file.verifications() <= FREE_FAILURES as u64,
            "{} verified",
            file.verifications()
        );
        assert!(
            answers
                .iter()
                .filter(|a| matches!(a, Err(Unauthenticated::Throttled(_))))
                .count()
                >= 45
        );
    }

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

    /// IPv6 clients are counted by their /64: rotating addresses within it
    /// does not escape the wait (each address had a counter of its own).
    #[tokio::test(start_paused = true)]
    async fn ipv6_clients_are_throttled_by_their_64() {
        let file = file(&["alice"]);
        for n in 1..=FREE_FAILURES {
            let ip: IpAddr = format!("2001:db8:1:2::{n:x}").parse().expect("ip");
            assert_eq!(
                file.check(Some(&basic("alice", "guess")), Some(ip)).await,
                Err(Unauthenticated::Wrong)
            );
        }
        let rotated: IpAddr = "2001:db8:1:2:ffff::1".parse().expect("ip");
        let refused = file
            .check(Some(&basic("alice", "right")), Some(rotated))
            .await;
        assert!(
            matches!(refused, Err(Unauthenticated::Throttled(_))),
            "{refused:?}"
        );
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(
            file.check(Some(&basic("alice", "right")), Some(elsewhere))
                .await,
            Ok("alice".into())
        );
    }

    /// A user name that keeps failing from many clients waits whatever the
    /// client, unknown names as known ones; credentials already verified
    /// (remembered) never wait.
    #[tokio::test(start_paused = true)]
    async fn a_user_name_is_throttled_whatever_the_client() {
        let file = file(&["alice", "bob"]);
        assert_eq!(
            file.check(Some(&basic("bob", "right")), None).await,
            Ok("bob".into())
        );
        let client = |n: u32| -> IpAddr { format!("192.0.2.{n}").parse().expect("ip") };
        for user in ["alice", "bob", "nobody"] {
            for n in 0..FREE_USER_FAILURES {
                assert_eq!(
                    file.check(Some(&basic(user, "guess")), Some(client(n)))
                        .await,
                    Err(Unauthenticated::Wrong)
                );
            }
        }
        let before = file.verifications();
        for user in ["alice", "nobody"] {
            let refused = file
                .check(Some(&basic(user, "right")), Some(client(99)))
                .await;
            assert!(
                matches!(refused, Err(Unauthenticated::Throttled(_))),
                "{user}: {refused:?}"
            );
        }
        assert_eq!(file.verifications(), before, "a throttled try ran bcrypt");
        assert_eq!(
            file.check(Some(&basic("bob", "right")), Some(client(99)))
                .await,
            Ok("bob".into()),
            "remembered credentials waited"
        );
    }

    /// Behind a trusted proxy the client is the last address of its
    /// header: one client's failures do not lock out another behind the
    /// same proxy (they shared the proxy's counter). An untrusted peer's
    /// header is ignored; a Unix socket's clients share no counter.
    #[tokio::test(start_paused = true)]
    async fn a_trusted_proxys_header_names_the_client() {
        let proxies = vec![Cidr::parse("10.0.0.0/8").expect("cidr")];
        let file = file(&["alice"]).behind(ClientAddress::new(
            Some(HeaderName::from_static("x-forwarded-for")),
            proxies,
        ));
        let proxy: IpAddr = "10.1.2.3".parse().expect("ip");
        let from = |xff: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                "x-forwarded-for",
                HeaderValue::from_str(xff).expect("value"),
            );
            headers
        };
        let attacker = from("203.0.113.50, 198.51.100.7");
        let neighbour = from("198.51.100.8");
        assert_eq!(
            file.client(Some(proxy), &attacker),
            Some("198.51.100.7".parse::<IpAddr>().expect("ip"))
        );
        assert_eq!(
            file.client(Some("192.0.2.1".parse::<IpAddr>().expect("ip")), &attacker),
            Some("192.0.2.1".parse::<IpAddr>().expect("ip")),
            "an untrusted peer named its client"
        );
        assert_eq!(
            file.client(Some("0.0.0.0".parse().expect("ip")), &neighbour),
            Some("198.51.100.8".parse::<IpAddr>().expect("ip")),
            "a Unix socket's proxy"
        );
        let plain = self::file(&["alice"]);
        assert_eq!(
            plain.client(Some("0.0.0.0".parse().expect("ip")), &HeaderMap::new()),
            None,
            "Unix socket clients shared one counter"
        );
        for _ in 0..=FREE_FAILURES {
            let _ = file
                .check(
                    Some(&basic("mallory", "guess")),
                    file.client(Some(proxy), &attacker),
                )
                .await;
        }
        let refused = file
            .check(
                Some(&basic("alice", "right")),
                file.client(Some(proxy), &attacker),
            )
            .await;
        assert!(
            matches!(refused, Err(Unauthenticated::Throttled(_))),
            "{refused:?}"
        );
        assert_eq!(
            file.check(
                Some(&basic("alice", "right")),
                file.client(Some(proxy), &neighbour)
            )
            .await,
            Ok("alice".into()),
            "one client behind the proxy locked out another"
        );
    }

    /// Admin logins are verified on threads of their own: with the public
    /// ones busy with slow hashes, an admin check does not wait for them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admin_checks_do_not_queue_behind_public_ones() {
        let slow = bcrypt::hash("right", 11).expect("hash");
        let quick = bcrypt::hash("right", 4).expect("hash");
        let file = std::sync::Arc::new(
            Htpasswd::parse("r", &format!("slow:{slow}\nadmin:{quick}\n")).expect("parse"),
        );
        let done = std::sync::Arc::new(AtomicU64::new(0));
        let public: Vec<_> = (0..8)
            .map(|n| {
                let (file, done) = (std::sync::Arc::clone(&file), std::sync::Arc::clone(&done));
                tokio::spawn(async move {
                    let _ = file
                        .check(Some(&basic("slow", &format!("guess-{n}"))), None)
                        .await;
                    done.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            file.check_admin(Some(&basic("admin", "right")), None).await,
            Ok("admin".into())
        );
        assert!(
            done.load(Ordering::SeqCst) < 8,
            "the admin check waited for every public one"
        );
        for task in public {
            task.await.expect("task");
        }
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
