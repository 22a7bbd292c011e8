//! Client authentication by distribution's token scheme (`auth.token`): a
//! client without a token is sent to the token service (`realm`) with a
//! Bearer challenge naming the `service` and the request's [`Scope`]; a
//! token is a JWT signed by a key of the JSON Web Key Set `jwks`, which
//! must name `issuer` (`iss`), `service` (`aud`) and its expiry (`exp`),
//! be inside its lifetime, and grant the scope: `pull` (or `*`) on
//! `<namespace>/<repository>`, or `registry:catalog:*` for the catalog.
//! The token's `sub` is the user that namespaces' `users` lists name.

use std::collections::HashSet;

use axum::http::HeaderValue;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// The most bytes of a token read.
const MAX_TOKEN: usize = 8 << 10;

/// `auth.token`, read and checked.
pub struct TokenAuth {
    realm: String,
    service: String,
    issuer: String,
    keys: JwkSet,
    algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuth")
            .field("realm", &self.realm)
            .field("service", &self.service)
            .field("issuer", &self.issuer)
            .field("keys", &self.keys.keys.len())
            .finish_non_exhaustive()
    }
}

/// What a request asks a token to grant, in distribution's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Pulling `repository` (as the namespace knows it) through
    /// `namespace`, spelt as the path form names it whichever way the
    /// request chose the namespace (`?ns=`, a path prefix, or none):
    /// `repository:<namespace>/<repository>:pull`, or
    /// `repository:<repository>:pull` in the default namespace (`None`),
    /// whose path form has no prefix, unless the repository begins with
    /// another namespace's name (only `?ns=` reaches such a name): then it
    /// is prefixed too, so spellings never collide.
    Pull {
        /// The namespace's name; `None`: the default namespace.
        namespace: Option<&'a str>,
        /// The repository, canonical in the namespace.
        repository: &'a str,
    },
    /// Listing the repositories: `registry:catalog:*`, as distribution
    /// asks.
    Catalog,
}

impl Scope<'_> {
    /// Whether `access` grants it.
    fn granted_by(self, access: &Access) -> bool {
        let acts = |wanted: &str| access.actions.iter().any(|a| a == wanted || a == "*");
        match self {
            Self::Pull {
                namespace,
                repository,
            } => {
                let name = match namespace {
                    Some(namespace) => access
                        .name
                        .strip_prefix(namespace)
                        .and_then(|rest| rest.strip_prefix('/')),
                    None => Some(access.name.as_str()),
                };
                access.kind == "repository" && name == Some(repository) && acts("pull")
            }
            Self::Catalog => access.kind == "registry" && access.name == "catalog" && acts("*"),
        }
    }
}

impl std::fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pull {
                namespace,
                repository,
            } => match namespace {
                Some(namespace) => write!(f, "repository:{namespace}/{repository}:pull"),
                None => write!(f, "repository:{repository}:pull"),
            },
            Self::Catalog => f.write_str("registry:catalog:*"),
        }
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No Bearer token came.
    Missing,
    /// A token came that does not hold (signature, issuer, audience,
    /// lifetime, a claim of those missing, or no grant of the scope).
    Invalid(String),
}

impl TokenAuth {
    /// The scheme with its `realm`, `service` and `issuer`, verifying
    /// with `jwks` (a JSON Web Key Set) and the `algorithms` allowed
    /// (empty: those the keys name).
    pub fn new(
        realm: &str,
        service: &str,
        issuer: &str,
        jwks: &[u8],
        algorithms: &[String],
    ) -> Result<Self, String> {
        let keys: JwkSet =
            serde_json::from_slice(jwks).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
        if keys.keys.is_empty() {
            return Err("the key set holds no key".into());
        }
        for key in &keys.keys {
            DecodingKey::from_jwk(key).map_err(|e| format!("a key cannot verify: {e}"))?;
        }
        let algorithms = if algorithms.is_empty() {
            let named: HashSet<Algorithm> = keys
                .keys
                .iter()
                .filter_map(|k| k.common.key_algorithm)
                .filter_map(|a| a.to_string().parse().ok())
                .collect();
            if named.is_empty() {
                vec![Algorithm::ES256, Algorithm::RS256, Algorithm::EdDSA]
            } else {
                named.into_iter().collect()
            }
        } else {
            algorithms
                .iter()
                .map(|a| {
                    a.parse()
                        .map_err(|_| format!("unknown signing algorithm {a}"))
                })
                .collect::<Result<_, _>>()?
        };
        if algorithms
            .iter()
            .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        {
            return Err("HMAC algorithms need a shared secret, not a key set: not accepted".into());
        }
        Ok(Self {
            realm: realm.to_owned(),
            service: service.to_owned(),
            issuer: issuer.to_owned(),
            keys,
            algorithms,
        })
    }

    /// The challenge sending a client to the token service for `scope`,
    /// or for none (the base endpoint).
    pub fn challenge(&self, scope: Option<Scope<'_>>) -> HeaderValue {
        let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut value = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            quote(&self.realm),
            quote(&self.service)
        );
        if let Some(scope) = scope {
            value.push_str(&format!(",scope=\"{}\"", quote(&scope.to_string())));
        }
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
    }

    /// The user an `Authorization` header's token names, when the token
    /// holds and grants `scope` (`None`: the base endpoint, which any
    /// valid token may reach).
    pub fn check(
        &self,
        authorization: Option<&HeaderValue>,
        scope: Option<Scope<'_>>,
    ) -> Result<String, Refused> {
        let token = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or(Refused::Missing)?;
        if token.len() > MAX_TOKEN {
            return Err(Refused::Invalid("the token is too long".into()));
        }
        let invalid = |e: jsonwebtoken::errors::Error| Refused::Invalid(e.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(Refused::Invalid(format!(
                "{:?} is not an accepted algorithm",
                header.alg
            )));
        }
        let candidates: Vec<_> = match &header.kid {
            Some(kid) => self.keys.find(kid).into_iter().collect(),
            None => self.keys.keys.iter().collect(),
        };
        let mut validation = Validation::new(header.alg);
        // jsonwebtoken compares `iss` and `aud` only when a token carries
        // them: a token without them must not pass.
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.service]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        let mut last = Refused::Invalid("no key of the set has that key id".into());
        for key in candidates {
            let Ok(key) = DecodingKey::from_jwk(key) else {
                continue;
            };
            match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
                Ok(data) => return data.claims.admit(scope),
                Err(e) => last = invalid(e),
            }
        }
        Err(last)
    }
}

/// What distribution's tokens claim.
#[derive(serde::Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    access: Vec<Access>,
}

/// One grant of a token.
#[derive(serde::Deserialize)]
struct Access {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    #[serde(default)]
    actions: Vec<String>,
}

impl Claims {
    /// The token's user, if it grants `scope`.
    fn admit(self, scope: Option<Scope<'_>>) -> Result<String, Refused> {
        let Some(scope) = scope else {
            return Ok(self.sub);
        };
        if self.access.iter().any(|a| scope.granted_by(a)) {
            Ok(self.sub)
        } else {
            Err(Refused::Invalid(format!(
                "the token does not grant {scope}"
            )))
        }
    }
}
