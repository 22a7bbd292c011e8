//! Client authentication in registry:2's `htpasswd` style: HTTP Basic
//! against bcrypt hashes. A verified `Authorization` value is remembered
//! (by its SHA-256, never in clear), so bcrypt runs once per client
//! credential rather than once per request.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::HeaderValue;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::lock;

/// Verified credentials remembered at most; the memory is cleared when full.
const REMEMBERED: usize = 10_000;

/// Why a request is not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthenticated {
    /// It carries no Basic credentials.
    Missing,
    /// Unknown user or wrong password.
    Wrong,
}

/// An htpasswd file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HtpasswdError(String);

/// The users of an htpasswd file.
pub struct Htpasswd {
    realm: String,
    users: HashMap<String, String>,
    /// SHA-256 of verified `Authorization` values, and their user.
    verified: Mutex<HashMap<[u8; 32], String>>,
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

    /// Parses htpasswd `text`.
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
        Ok(Self {
            realm: realm.to_owned(),
            users,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The `WWW-Authenticate` challenge of a 401.
    pub fn challenge(&self) -> HeaderValue {
        let realm = self.realm.replace(['"', '\\'], "");
        HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"registry-proxy\""))
    }

    /// The user an `Authorization` header authenticates.
    pub async fn check(
        &self,
        authorization: Option<&HeaderValue>,
    ) -> Result<String, Unauthenticated> {
        let Some(value) = authorization else {
            return Err(Unauthenticated::Missing);
        };
        let key: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        if let Some(user) = lock(&self.verified).get(&key) {
            return Ok(user.clone());
        }
        let (user, password) = basic_credentials(value).ok_or(Unauthenticated::Missing)?;
        let hash = self
            .users
            .get(&user)
            .cloned()
            .ok_or(Unauthenticated::Wrong)?;
        // bcrypt is slow on purpose: off the request threads.
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        if !ok {
            return Err(Unauthenticated::Wrong);
        }
        let mut verified = lock(&self.verified);
        if verified.len() >= REMEMBERED {
            verified.clear();
        }
        verified.insert(key, user.clone());
        Ok(user)
    }
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

    #[tokio::test]
    async fn checks_bcrypt_users() {
        let hash = bcrypt::hash("right", 4).expect("hash");
        let file = Htpasswd::parse("r", &format!("# users\nalice:{hash}\n")).expect("parse");
        assert_eq!(
            file.check(Some(&basic("alice", "right"))).await,
            Ok("alice".into())
        );
        // Remembered: the same answer without bcrypt.
        assert_eq!(
            file.check(Some(&basic("alice", "right"))).await,
            Ok("alice".into())
        );
        assert_eq!(
            file.check(Some(&basic("alice", "wrong"))).await,
            Err(Unauthenticated::Wrong)
        );
        assert_eq!(
            file.check(Some(&basic("bob", "right"))).await,
            Err(Unauthenticated::Wrong)
        );
        assert_eq!(file.check(None).await, Err(Unauthenticated::Missing));
        let bearer = HeaderValue::from_static("Bearer x");
        assert_eq!(
            file.check(Some(&bearer)).await,
            Err(Unauthenticated::Missing)
        );
        assert_eq!(file.challenge(), "Basic realm=\"r\"");
    }

    #[test]
    fn refuses_what_is_not_bcrypt() {
        assert!(Htpasswd::parse("r", "alice:{SHA}abc").is_err());
        assert!(Htpasswd::parse("r", "no-colon").is_err());
        assert!(Htpasswd::parse("r", ":$2y$05$x").is_err());
    }
}
