//! HTTP client to the upstream registry: anonymous, Basic, and the Bearer
//! token flow with per-repository scopes, tokens reused until they expire and
//! one refresh on 401. Credentials never appear in errors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driver_core::Secret;
use reqwest::header::{ACCEPT, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode, Url};

use crate::metrics::Metrics;
use crate::oci::RepoName;
use crate::sync::{Swept, lock};

/// An upstream user and password, if any.
pub type Credentials = Option<(String, Secret)>;

/// Why an upstream request produced no response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// Connection refused, reset, DNS, or no answer in time.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// The token endpoint failed.
    #[error("upstream token service failed: {0}")]
    Token(String),
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `bearer` or `basic` (lowercased).
    pub scheme: String,
    /// Its parameters (`realm`, `service`, `scope`), keys lowercased.
    pub params: HashMap<String, String>,
}

/// Parses `Bearer realm="…",service="…"` (quoted or token values, `\` escapes).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if !is_token(scheme) {
        return None;
    }
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        let key = key.trim();
        if key.is_empty() {
            break;
        }
        if !is_token(key) {
            return None;
        }
        if chars.next() != Some('=') {
            return None;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ','))
                .collect::<String>()
                .trim()
                .to_owned();
        }
        params.insert(key.to_ascii_lowercase(), value);
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// An HTTP token (RFC 9110 `tchar`s), as auth schemes and parameter names are.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// How long an upstream request may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// The whole exchange, body included: small answers read at once
    /// (manifests, tag lists, tokens, proofs).
    Whole(Duration),
    /// Only the wait for the response head: a streamed body (a blob fill)
    /// is bounded by its reader, by how long it waits between bytes.
    Head(Duration),
}

impl Deadline {
    fn duration(self) -> Duration {
        match self {
            Self::Whole(d) | Self::Head(d) => d,
        }
    }
}

/// A cached bearer token.
struct Token {
    value: String,
    expires: Instant,
}

/// The upstream registry.
pub struct Upstream {
    base: Url,
    client: reqwest::Client,
    credentials: Credentials,
    /// Set once the upstream asked for Basic: credentials are then sent up front.
    basic: AtomicBool,
    tokens: Mutex<Swept<String, Token>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// A client for the registry at `base` (`https://registry-1.docker.io`).
    /// `connect_timeout` bounds connecting; each request passes its own
    /// timeout to [`Upstream::send`] (fills bound blob bodies by idleness).
    pub fn new(base: Url, credentials: Credentials, connect_timeout: Duration) -> Self {
        let home = reach(&base);
        let secure = base.scheme() == "https";
        // Docker Hub sends blobs to a CDN. reqwest drops the Authorization
        // header when a redirect leaves the upstream's host; this policy
        // also refuses a redirect to a loopback or link-local address (a
        // cloud metadata service) unless the upstream itself is one of that
        // kind, and from https to plain http.
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("more than 5 redirects")
            } else if secure && attempt.url().scheme() != "https" {
                attempt.error("a redirect from https to plain http")
            } else if ![Reach::Remote, home].contains(&reach(attempt.url())) {
                attempt.error("a redirect to a loopback or link-local address")
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .redirect(policy)
            .build()
            .unwrap_or_default();
        Self {
            base,
            client,
            credentials,
            basic: AtomicBool::new(false),
            tokens: Mutex::new(Swept::new(1024)),
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// Reports request latencies and errors into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The upstream's base URL (for logs: it holds no credentials).
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `<base>/v2/<repo>/<rest>`, keeping a path the base URL has
    /// (`https://host/prefix` asks `https://host/prefix/v2/...`).
    fn url(&self, repo: &RepoName, rest: &str) -> Result<Url, UpstreamError> {
        let prefix = self.base.path().trim_end_matches('/');
        self.base
            .join(&format!("{prefix}/v2/{}/{rest}", repo.as_str()))
            .map_err(|e| UpstreamError::Unreachable(e.to_string()))
    }

    fn scope(repo: &RepoName) -> String {
        format!("repository:{}:pull", repo.as_str())
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let tokens = lock(&self.tokens);
        tokens
            .get(scope)
            .filter(|t| t.expires > Instant::now())
            .map(|t| t.value.clone())
    }

    /// Sends `method` to `/v2/<repo>/<rest>`, authenticating as the upstream
    /// asks, within `deadline` (token requests on the way take at most as
    /// long, whole).
    pub async fn send(
        &self,
        method: Method,
        repo: &RepoName,
        rest: &str,
        accept: Option<&str>,
        deadline: Deadline,
    ) -> Result<Response, UpstreamError> {
        let url = self.url(repo, rest)?;
        let scope = Self::scope(repo);
        let mut refreshed = false;
        loop {
            let mut request = self.client.request(method.clone(), url.clone());
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if let Deadline::Whole(whole) = deadline {
                request = request.timeout(whole);
            }
            if let Some(token) = self.cached_token(&scope) {
                request = request.bearer_auth(token);
            } else if let (true, Some((user, password))) =
                (self.basic.load(Ordering::Relaxed), &self.credentials)
            {
                request = request.basic_auth(user, Some(password.expose()));
            }
            let started = Instant::now();
            let sent = match deadline {
                Deadline::Whole(_) => request
                    .send()
                    .await
                    .map_err(|e| UpstreamError::Unreachable(describe(&e))),
                Deadline::Head(head) => tokio::time::timeout(head, request.send())
                    .await
                    .map_err(|_| {
                        UpstreamError::Unreachable("timed out waiting for the answer".into())
                    })
                    .and_then(|sent| sent.map_err(|e| UpstreamError::Unreachable(describe(&e)))),
            };
            let status = sent.as_ref().ok().map(|r| r.status());
            let response = sent;
            let challenged = status == Some(StatusCode::UNAUTHORIZED) && !refreshed;
            if !challenged {
                // A challenge answered with credentials is not an error.
                self.metrics
                    .upstream_request(started.elapsed(), status.map(|s| s.as_u16()));
            }
            let response = response?;
            if !challenged {
                return Ok(response);
            }
            refreshed = true;
            let Some(challenge) = challenge_of(response.headers()) else {
                return Ok(response);
            };
            match challenge.scheme.as_str() {
                "bearer" => {
                    self.fetch_token(&challenge, &scope, deadline.duration())
                        .await?;
                }
                "basic" if self.credentials.is_some() => self.basic.store(true, Ordering::Relaxed),
                _ => return Ok(response),
            }
        }
    }

    async fn fetch_token(
        &self,
        challenge: &Challenge,
        scope: &str,
        timeout: Duration,
    ) -> Result<(), UpstreamError> {
        let realm = challenge
            .params
            .get("realm")
            .ok_or_else(|| UpstreamError::Token("challenge without realm".into()))?;
        let mut url =
            Url::parse(realm).map_err(|e| UpstreamError::Token(format!("bad realm: {e}")))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = challenge.params.get("service") {
                query.append_pair("service", service);
            }
            query.append_pair(
                "scope",
                challenge.params.get("scope").map_or(scope, String::as_str),
            );
        }
        let mut request = self.client.get(url.clone()).timeout(timeout);
        if let Some((user, password)) = &self.credentials {
            if self.may_receive_credentials(&url) {
                request = request.basic_auth(user, Some(password.expose()));
            } else {
                tracing::warn!(
                    upstream = %self.base,
                    realm = %url.origin().ascii_serialization(),
                    "the token realm is plain http on another host: asking it without credentials"
                );
            }
        }
        let response = request
            .send()
            .await
            .map_err(|e| UpstreamError::Token(describe(&e)))?;
        if !response.status().is_success() {
            return Err(UpstreamError::Token(format!(
                "token service answered {}",
                response.status()
            )));
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let answer: TokenAnswer = response
            .json()
            .await
            .map_err(|e| UpstreamError::Token(describe(&e)))?;
        let value = answer
            .token
            .or(answer.access_token)
            .ok_or_else(|| UpstreamError::Token("no token in the answer".into()))?;
        // Renew a little early; 60 s is the documented default lifetime.
        let lifetime =
            Duration::from_secs(answer.expires_in.unwrap_or(60).saturating_sub(5).max(1));
        let now = Instant::now();
        lock(&self.tokens).insert(
            scope.to_owned(),
            Token {
                value,
                expires: now + lifetime,
            },
            |token| token.expires > now,
        );
        Ok(())
    }
}

impl Upstream {
    /// Whether the upstream's credentials may go to `realm`: over https, or
    /// to the upstream's own host when the upstream itself is plain http.
    fn may_receive_credentials(&self, realm: &Url) -> bool {
        realm.scheme() == "https"
            || (self.base.scheme() == "http"
                && realm.host() == self.base.host()
                && realm.port_or_known_default() == self.base.port_or_known_default())
    }
}

/// Where a URL's host is, for redirects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// This machine: a loopback or unspecified address, `localhost`.
    Loopback,
    /// The local link: `169.254.0.0/16`, `fe80::/10` (cloud metadata
    /// services live there).
    LinkLocal,
    /// Anywhere else (names resolved by DNS are not looked up).
    Remote,
}

fn reach(url: &Url) -> Reach {
    let v4 = |ip: std::net::Ipv4Addr| {
        if ip.is_loopback() || ip.is_unspecified() {
            Reach::Loopback
        } else if ip.is_link_local() {
            Reach::LinkLocal
        } else {
            Reach::Remote
        }
    };
    match url.host() {
        Some(url::Host::Ipv4(ip)) => v4(ip),
        Some(url::Host::Ipv6(ip)) => match ip.to_ipv4_mapped() {
            Some(mapped) => v4(mapped),
            None if ip.is_loopback() || ip.is_unspecified() => Reach::Loopback,
            None if ip.is_unicast_link_local() => Reach::LinkLocal,
            None => Reach::Remote,
        },
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                Reach::Loopback
            } else {
                Reach::Remote
            }
        }
        None => Reach::Remote,
    }
}

fn challenge_of(headers: &HeaderMap) -> Option<Challenge> {
    headers
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_challenge)
}

/// A reqwest error without its URL (which could carry credentials).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_decode() {
        "undecodable answer"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_path_is_kept() {
        let repo = RepoName::parse("library/alpine").expect("name");
        for (base, expected) in [
            (
                "https://h.example",
                "https://h.example/v2/library/alpine/manifests/3",
            ),
            (
                "https://h.example/",
                "https://h.example/v2/library/alpine/manifests/3",
            ),
            (
                "https://h.example/mirror",
                "https://h.example/mirror/v2/library/alpine/manifests/3",
            ),
            (
                "https://h.example/a/b/",
                "https://h.example/a/b/v2/library/alpine/manifests/3",
            ),
        ] {
            let upstream = Upstream::new(base.parse().expect("url"), None, Duration::from_secs(1));
            assert_eq!(
                upstream.url(&repo, "manifests/3").expect("url").as_str(),
                expected
            );
        }
    }

    #[test]
    fn parses_bearer_challenges() {
        let c = parse_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:library/alpine:pull""#).expect("parse");
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example/token");
        assert_eq!(c.params["scope"], "repository:library/alpine:pull");
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).expect("parse");
        assert_eq!(
            (c.scheme.as_str(), c.params["realm"].as_str()),
            ("basic", "Registry Realm")
        );
        let c = parse_challenge(r#"Bearer realm="a\"b", service=plain"#).expect("parse");
        assert_eq!(
            (c.params["realm"].as_str(), c.params["service"].as_str()),
            ("a\"b", "plain")
        );
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
        assert!(parse_challenge("").is_none());
    }

    /// Found by `fuzz/` (challenge): a scheme or parameter name that is not
    /// an HTTP token is refused instead of being half-lowercased.
    #[test]
    fn refuses_schemes_and_names_that_are_not_tokens() {
        let fuzzed = String::from_utf8_lossy(b"\xd1\xa4a\x17sk\xf2is\xff#").into_owned();
        assert!(parse_challenge(&fuzzed).is_none());
        assert!(parse_challenge("Bëarer realm=x").is_none());
        assert!(parse_challenge("Bearer re alm=x").is_none());
        assert!(parse_challenge("Bearer re\u{e9}alm=x").is_none());
    }
}
