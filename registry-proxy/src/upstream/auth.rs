//! Upstream authentication: anonymous, Basic (sent up front once the
//! upstream asked for it), and the Bearer token flow with per-repository
//! scopes, tokens reused until they expire. Each URL of an upstream has its
//! own credentials (or none). They go to a token realm only on their own
//! host or its parent domain's hosts (Docker Hub's `registry-1.docker.io`
//! names `auth.docker.io`), over https (or plain http to the URL's own host
//! and port when the URL itself is plain http), and never appear in
//! errors. A realm on a loopback or link-local address is asked only when
//! the URL itself is on one. Token answers are read up to 64 KiB, tokens
//! up to 8 KiB.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use driver_core::Secret;
use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Url};

use super::error::{UpstreamError, describe};
use super::refresh::Unready;
use super::wire::{Reach, reach, read_bounded};
use crate::sync::{Swept, lock};

/// The largest token service answer read.
const MAX_TOKEN_ANSWER: usize = 64 << 10;

/// The longest token accepted.
const MAX_TOKEN: usize = 8 << 10;

/// An upstream user and password, if any.
pub type Credentials = Option<(String, Secret)>;

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

/// Where credentials come from when they are not fixed: asked when
/// needed, reused while they live, and asked again when refused.
pub(crate) enum Source {
    /// A credential helper command (`exec`).
    Helper(super::exec::Helper),
    /// Amazon ECR's authorization tokens.
    Ecr(super::ecr::EcrTokens),
}

impl Source {
    /// The credentials to use now, waited for at most `within`.
    async fn credentials(&self, within: Duration) -> Result<(String, Secret), Unready> {
        match self {
            Self::Helper(helper) => helper.credentials(within).await,
            Self::Ecr(tokens) => tokens.credentials(within).await,
        }
    }

    /// Forgets them if taken at or before `asked`: the upstream refused
    /// a request that sent them.
    fn forget(&self, asked: tokio::time::Instant) {
        match self {
            Self::Helper(helper) => helper.forget(asked),
            Self::Ecr(tokens) => tokens.forget(asked),
        }
    }
}

/// How requests to one upstream authenticate.
pub(crate) struct Auth {
    base: Url,
    credentials: Credentials,
    /// Where the credentials come from instead of `credentials`.
    helper: Option<Source>,
    /// Set once the upstream asked for Basic: credentials are then sent up front.
    basic: AtomicBool,
    tokens: Mutex<Swept<String, Token>>,
}

impl Auth {
    /// Authentication for the upstream at `base` with `credentials`.
    /// `helper`, when given, is asked for them instead.
    pub(crate) fn new(base: Url, credentials: Credentials, helper: Option<Source>) -> Self {
        Self {
            base,
            credentials,
            helper,
            basic: AtomicBool::new(false),
            tokens: Mutex::new(Swept::new(1024)),
        }
    }

    /// The scope of pulls from `repo`.
    pub(crate) fn scope(repo: &str) -> String {
        format!("repository:{repo}:pull")
    }

    /// The cached token for `scope`, while it lives.
    fn token(&self, scope: &str) -> Option<String> {
        lock(&self.tokens)
            .get(scope)
            .filter(|t| t.expires > Instant::now())
            .map(|t| t.value.clone())
    }

    /// Makes the helper's credentials ready for a request in `scope`
    /// (waiting at most `within`), so that the request takes its turn
    /// under `maxconcurrent` only once they are: nothing to do with fixed
    /// credentials or a cached token.
    pub(crate) async fn prepare(&self, scope: &str, within: Duration) {
        if let Some(helper) = &self.helper {
            if self.token(scope).is_none() {
                let _ = helper.credentials(within).await;
            }
        }
    }

    /// `request` with what is known to authenticate it for `scope`: a
    /// cached token, or Basic credentials once the upstream asked for them
    /// (the helper's waited for at most `within`: beyond, an outage).
    pub(crate) async fn authorize(
        &self,
        request: RequestBuilder,
        scope: &str,
        within: Duration,
    ) -> Result<RequestBuilder, UpstreamError> {
        if let Some(token) = self.token(scope) {
            return Ok(request.bearer_auth(token));
        }
        if !self.basic.load(Ordering::Relaxed) {
            return Ok(request);
        }
        Ok(match self.current(within).await? {
            Some((user, password)) => request.basic_auth(user, Some(password.expose())),
            None => request,
        })
    }

    /// The credentials to send now: the helper's (waited for at most
    /// `within`; a helper that failed lately gives none), or the fixed
    /// ones.
    async fn current(&self, within: Duration) -> Result<Credentials, UpstreamError> {
        match &self.helper {
            None => Ok(self.credentials.clone()),
            Some(helper) => match helper.credentials(within).await {
                Ok(credentials) => Ok(Some(credentials)),
                Err(Unready::Failed(e)) => {
                    tracing::debug!(upstream = %self.base, error = %e, "no credentials from the helper; asking without");
                    Ok(None)
                }
                Err(Unready::Late(after)) => Err(UpstreamError::Token(format!(
                    "no credentials from the helper within {after:?}"
                ))),
            },
        }
    }

    /// Whether there are credentials to send.
    fn has_credentials(&self) -> bool {
        self.credentials.is_some() || self.helper.is_some()
    }

    /// Takes up the challenge of a 401 with these `headers` to a request
    /// authorized at `asked`: fetches a token for `scope` (within
    /// `timeout`; a helper's credentials waited for `within` at most), or
    /// turns Basic on. `false` when there is no challenge this client can
    /// answer.
    pub(crate) async fn answer(
        &self,
        client: &reqwest::Client,
        headers: &HeaderMap,
        scope: &str,
        (timeout, within): (Duration, Duration),
        asked: tokio::time::Instant,
    ) -> Result<bool, UpstreamError> {
        let Some(challenge) = challenge_of(headers) else {
            return Ok(false);
        };
        match challenge.scheme.as_str() {
            "bearer" => {
                self.fetch_token(client, &challenge, scope, (timeout, within))
                    .await?;
                Ok(true)
            }
            "basic" if self.has_credentials() => {
                // Refused although credentials went: the helper's may have
                // been rotated since it was asked.
                let refused = self.basic.swap(true, Ordering::Relaxed);
                match (&self.helper, refused) {
                    (Some(helper), true) => {
                        helper.forget(asked);
                        Ok(true)
                    }
                    (None, true) => Ok(false),
                    (_, false) => Ok(true),
                }
            }
            _ => Ok(false),
        }
    }

    /// A token for `scope` from the realm `challenge` names, asked within
    /// `timeout` with the credentials (a helper's waited for `within`).
    async fn fetch_token(
        &self,
        client: &reqwest::Client,
        challenge: &Challenge,
        scope: &str,
        (timeout, within): (Duration, Duration),
    ) -> Result<(), UpstreamError> {
        let realm = challenge
            .params
            .get("realm")
            .ok_or_else(|| UpstreamError::Token("challenge without realm".into()))?;
        let mut url =
            Url::parse(realm).map_err(|e| UpstreamError::Token(format!("bad realm: {e}")))?;
        // The redirect policy's rule: no loopback or link-local address (a
        // cloud metadata service) the upstream is not on itself.
        if ![Reach::Remote, reach(&self.base)].contains(&reach(&url)) {
            return Err(UpstreamError::Token(
                "the token realm is a loopback or link-local address the upstream is not on".into(),
            ));
        }
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
        let mut retried = false;
        let mut response = loop {
            let mut request = client.get(url.clone()).timeout(timeout);
            let asked = tokio::time::Instant::now();
            if let Some((user, password)) = self.current(within).await? {
                if self.may_receive_credentials(&url) {
                    request = request.basic_auth(user, Some(password.expose()));
                } else {
                    tracing::warn!(
                        upstream = %self.base,
                        realm = %url.origin().ascii_serialization(),
                        "the token realm is on another site, or plain http: asking it without credentials"
                    );
                }
            }
            let response = request
                .send()
                .await
                .map_err(|e| UpstreamError::Token(describe(&e)))?;
            // The helper's credentials refused: ask it again, once.
            match &self.helper {
                Some(helper)
                    if !retried && response.status() == reqwest::StatusCode::UNAUTHORIZED =>
                {
                    helper.forget(asked);
                    retried = true;
                }
                _ => break response,
            }
        };
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
        let body = read_bounded(&mut response, MAX_TOKEN_ANSWER, "token answer")
            .await
            .map_err(|e| UpstreamError::Token(e.to_string()))?
            .ok_or_else(|| UpstreamError::Token("an answer over 64 KiB".into()))?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::Token(format!("not a token answer: {e}")))?;
        let value = answer
            .token
            .or(answer.access_token)
            .ok_or_else(|| UpstreamError::Token("no token in the answer".into()))?;
        if value.len() > MAX_TOKEN {
            return Err(UpstreamError::Token("a token over 8 KiB".into()));
        }
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

    /// Whether this URL's credentials may go to `realm`: over https to its
    /// own host or a host of its parent domain, or over plain http to its
    /// own host and port when the URL itself is plain http.
    fn may_receive_credentials(&self, realm: &Url) -> bool {
        match realm.scheme() {
            "https" => realm.host() == self.base.host() || same_site(realm, &self.base),
            _ => {
                self.base.scheme() == "http"
                    && realm.host() == self.base.host()
                    && realm.port_or_known_default() == self.base.port_or_known_default()
            }
        }
    }
}

/// Whether `realm`'s host is `base`'s parent domain or under it
/// (`registry-1.docker.io` and `auth.docker.io`), the parent having a dot
/// of its own (`ghcr.io`'s realms are only on `ghcr.io`).
fn same_site(realm: &Url, base: &Url) -> bool {
    let (Some(url::Host::Domain(realm)), Some(url::Host::Domain(base))) =
        (realm.host(), base.host())
    else {
        return false;
    };
    let Some((_, parent)) = base.split_once('.') else {
        return false;
    };
    parent.contains('.')
        && (realm == parent
            || realm
                .strip_suffix(parent)
                .is_some_and(|rest| rest.ends_with('.')))
}

fn challenge_of(headers: &HeaderMap) -> Option<Challenge> {
    headers
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_challenge)
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

    /// A URL's credentials go only where they belong: https realms on its
    /// own site, plain http only to its own plain-http host and port.
    #[test]
    fn credentials_go_only_to_realms_of_their_own_site() {
        let may = |base: &str, realm: &str| {
            Auth::new(base.parse().expect("url"), None, None)
                .may_receive_credentials(&realm.parse().expect("url"))
        };
        assert!(may(
            "https://registry-1.docker.io",
            "https://auth.docker.io/token"
        ));
        assert!(may(
            "https://registry.gitlab.com",
            "https://gitlab.com/jwt/auth"
        ));
        assert!(may("https://ghcr.io", "https://ghcr.io/token"));
        assert!(may("http://10.0.0.5:5000", "http://10.0.0.5:5000/token"));
        assert!(!may(
            "https://mirror.gcr.io",
            "https://auth.docker.io/token"
        ));
        assert!(!may("https://ghcr.io", "https://evil.io/token"));
        assert!(!may(
            "https://registry-1.docker.io",
            "https://evil.example/token"
        ));
        assert!(!may(
            "https://registry-1.docker.io",
            "https://docker.io.evil.example/t"
        ));
        assert!(!may(
            "https://registry-1.docker.io",
            "http://auth.docker.io/token"
        ));
        assert!(!may("http://10.0.0.5:5000", "http://10.0.0.5:5001/token"));
        assert!(!may("http://10.0.0.5", "http://10.0.0.6/token"));
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
