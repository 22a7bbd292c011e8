//! HTTP client to the upstream registry: anonymous, Basic, and the Bearer
//! token flow with per-repository scopes, tokens reused until they expire and
//! one refresh on 401. Credentials never appear in errors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode, Url};

use crate::lock;
use crate::metrics::Metrics;
use crate::oci::RepoName;

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

/// A cached bearer token.
struct Token {
    value: String,
    expires: Instant,
}

/// The upstream registry.
pub struct Upstream {
    base: Url,
    client: reqwest::Client,
    credentials: Option<(String, String)>,
    /// Set once the upstream asked for Basic: credentials are then sent up front.
    basic: AtomicBool,
    tokens: Mutex<HashMap<String, Token>>,
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
    pub fn new(
        base: Url,
        credentials: Option<(String, String)>,
        connect_timeout: Duration,
    ) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .unwrap_or_default();
        Self {
            base,
            client,
            credentials,
            basic: AtomicBool::new(false),
            tokens: Mutex::new(HashMap::new()),
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

    fn url(&self, repo: &RepoName, rest: &str) -> Result<Url, UpstreamError> {
        self.base
            .join(&format!("/v2/{}/{rest}", repo.as_str()))
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
    /// asks. `timeout` bounds the wait for the response head (and, for small
    /// answers read at once, the body).
    pub async fn send(
        &self,
        method: Method,
        repo: &RepoName,
        rest: &str,
        accept: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Response, UpstreamError> {
        let url = self.url(repo, rest)?;
        let scope = Self::scope(repo);
        let mut refreshed = false;
        loop {
            let mut request = self.client.request(method.clone(), url.clone());
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if let Some(timeout) = timeout {
                request = request.timeout(timeout);
            }
            if let Some(token) = self.cached_token(&scope) {
                request = request.bearer_auth(token);
            } else if let (true, Some((user, password))) =
                (self.basic.load(Ordering::Relaxed), &self.credentials)
            {
                request = request.basic_auth(user, Some(password));
            }
            let started = Instant::now();
            let sent = request.send().await;
            let status = sent.as_ref().ok().map(|r| r.status());
            let response = sent.map_err(|e| UpstreamError::Unreachable(describe(&e)));
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
                "bearer" => self.fetch_token(&challenge, &scope, timeout).await?,
                "basic" if self.credentials.is_some() => self.basic.store(true, Ordering::Relaxed),
                _ => return Ok(response),
            }
        }
    }

    async fn fetch_token(
        &self,
        challenge: &Challenge,
        scope: &str,
        timeout: Option<Duration>,
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
        let mut request = self.client.get(url);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password));
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
        let mut tokens = lock(&self.tokens);
        tokens.insert(
            scope.to_owned(),
            Token {
                value,
                expires: Instant::now() + lifetime,
            },
        );
        Ok(())
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
