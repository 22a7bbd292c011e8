//! Upstream authentication: anonymous, Basic (sent up front once the
//! upstream asked for it), and the Bearer token flow with per-repository
//! scopes, tokens reused until they expire. Credentials go to a token realm
//! only over https (or to the upstream's own host when it is plain http),
//! and never appear in errors.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use driver_core::Secret;
use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Url};

use super::error::{UpstreamError, describe};
use crate::sync::{Swept, lock};

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
    /// The credentials to use now.
    async fn credentials(&self) -> Result<(String, Secret), String> {
        match self {
            Self::Helper(helper) => helper.credentials().await,
            Self::Ecr(tokens) => tokens.credentials().await,
        }
    }

    /// Forgets them: the upstream refused them.
    async fn forget(&self) {
        match self {
            Self::Helper(helper) => helper.forget().await,
            Self::Ecr(tokens) => tokens.forget().await,
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

    /// `request` with what is known to authenticate it for `scope`: a
    /// cached token, or Basic credentials once the upstream asked for them.
    pub(crate) async fn authorize(&self, request: RequestBuilder, scope: &str) -> RequestBuilder {
        let token = lock(&self.tokens)
            .get(scope)
            .filter(|t| t.expires > Instant::now())
            .map(|t| t.value.clone());
        if let Some(token) = token {
            return request.bearer_auth(token);
        }
        if !self.basic.load(Ordering::Relaxed) {
            return request;
        }
        match self.current().await {
            Some((user, password)) => request.basic_auth(user, Some(password.expose())),
            None => request,
        }
    }

    /// The credentials to send now: the helper's, or the fixed ones.
    async fn current(&self) -> Credentials {
        match &self.helper {
            None => self.credentials.clone(),
            Some(helper) => match helper.credentials().await {
                Ok(credentials) => Some(credentials),
                Err(e) => {
                    tracing::warn!(upstream = %self.base, error = %e, "no credentials from the helper; asking without");
                    None
                }
            },
        }
    }

    /// Whether there are credentials to send.
    fn has_credentials(&self) -> bool {
        self.credentials.is_some() || self.helper.is_some()
    }

    /// Takes up the challenge of a 401 with these `headers`: fetches a
    /// token for `scope` (within `timeout`), or turns Basic on. `false`
    /// when there is no challenge this client can answer.
    pub(crate) async fn answer(
        &self,
        client: &reqwest::Client,
        headers: &HeaderMap,
        scope: &str,
        timeout: Duration,
    ) -> Result<bool, UpstreamError> {
        let Some(challenge) = challenge_of(headers) else {
            return Ok(false);
        };
        match challenge.scheme.as_str() {
            "bearer" => {
                self.fetch_token(client, &challenge, scope, timeout).await?;
                Ok(true)
            }
            "basic" if self.has_credentials() => {
                // Refused although credentials went: the helper's may have
                // been rotated since it was asked.
                let refused = self.basic.swap(true, Ordering::Relaxed);
                match (&self.helper, refused) {
                    (Some(helper), true) => {
                        helper.forget().await;
                        Ok(true)
                    }
                    (None, true) => Ok(false),
                    (_, false) => Ok(true),
                }
            }
            _ => Ok(false),
        }
    }

    async fn fetch_token(
        &self,
        client: &reqwest::Client,
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
        let mut retried = false;
        let response = loop {
            let mut request = client.get(url.clone()).timeout(timeout);
            if let Some((user, password)) = self.current().await {
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
            // The helper's credentials refused: ask it again, once.
            match &self.helper {
                Some(helper)
                    if !retried && response.status() == reqwest::StatusCode::UNAUTHORIZED =>
                {
                    helper.forget().await;
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

    /// Whether the upstream's credentials may go to `realm`: over https, or
    /// to the upstream's own host when the upstream itself is plain http.
    fn may_receive_credentials(&self, realm: &Url) -> bool {
        realm.scheme() == "https"
            || (self.base.scheme() == "http"
                && realm.host() == self.base.host()
                && realm.port_or_known_default() == self.base.port_or_known_default())
    }
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
