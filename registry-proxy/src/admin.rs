//! The admin surface: what an operator does to a running cache. It listens
//! on an address of its own (`admin.addr`), never on the public listener,
//! and every request must carry `Authorization: Bearer <token>`, the token
//! read from `admin.tokenfile` (compared by SHA-256, so its length and
//! bytes do not show in timing), or the Basic credentials of a user of
//! `auth.htpasswd` listed in `admin.users`. Those logins are throttled as
//! the public listener's are (by client and by user, failures counted
//! together), and verified on bcrypt threads of their own.
//!
//! - `POST /admin/purge`: with `repository` (and `namespace`, default the
//!   default namespace) and `tag`, drops that tag (the manifest stays,
//!   cached by digest; the next pull by tag asks the upstream, on every
//!   replica: the purge is published through the metadata store); with
//!   `repository` and `digest`, that content in the repository; with
//!   `repository` alone, the whole repository; with `digest` alone, that
//!   content in every repository of `namespace`, or, without `namespace`,
//!   of every namespace. Links and tags go first, the bytes once no entry
//!   of any repository (of any namespace) uses them. Answers what went, as
//!   JSON.
//! - `GET /admin/leases`: the digests leased now (pulls and fills in
//!   progress).
//! - `GET /admin/du`: what storage holds (`registry-proxy du`'s figures)
//!   and the byte budget's account with what it would evict next: every
//!   namespace's repositories and digests, private ones included (the
//!   admin surface is the operator's, as storage itself is).
//! - `POST /admin/warm?image=REPO:TAG` (or `REPO@DIGEST`, with
//!   `namespace`): pulls the image into the cache, every platform of an
//!   index or those `platform` lists, [`WARM_CONCURRENCY`] blobs at a time; with `dry_run=true` only
//!   says which blobs it would fetch and their bytes (the manifests are
//!   fetched to know). A blob counts as missing when the namespace could
//!   not read it without its upstream ([`crate::cache::access::Access::missing`]):
//!   what other namespaces hold does not show.

use std::path::Path;

use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use futures::StreamExt;

use crate::app::AppState;
use crate::cache::CacheError;
use crate::namespace::Namespace;
use crate::oci::{self, Digest, ErrorCode, OciError, Platform, Reference, RepoName, Tag};
use crate::scheduler::PurgeScope;

/// The most bytes of a token file read.
const TOKEN_FILE_MAX: u64 = 4096;

/// The admin token, kept as its SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken([u8; 32]);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Reads the token from `path`: at most 4 KiB, surrounding whitespace
    /// trimmed, not empty.
    pub fn read(path: &Path) -> Result<Self, String> {
        use std::io::Read as _;
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(TOKEN_FILE_MAX + 1).read_to_string(&mut text))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if text.len() as u64 > TOKEN_FILE_MAX {
            return Err(format!("{}: longer than 4 KiB", path.display()));
        }
        Self::new(text.trim()).ok_or_else(|| format!("{}: holds no token", path.display()))
    }

    /// The token `text`, if not empty.
    pub fn new(text: &str) -> Option<Self> {
        (!text.is_empty()).then(|| Self(Sha256::digest(text.as_bytes()).into()))
    }

    /// Whether `headers` carry this token as a bearer token.
    fn admits(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|token| {
                <[u8; 32]>::from(Sha256::digest(token.trim().as_bytes())) == self.0
            })
    }
}

/// Who the admin surface admits: a bearer token, and users of
/// `auth.htpasswd` by their Basic credentials.
#[derive(Debug, Clone, Default)]
pub struct AdminAccess {
    /// The token, if any.
    pub token: Option<AdminToken>,
    /// The admin users.
    pub users: std::collections::HashSet<String>,
}

impl AdminAccess {
    /// `None` when `headers` (of a request from `peer`) are admitted, else
    /// the refusal: 403 `DENIED` for a user who is not an admin, 429 for a
    /// client or user that failed too often, 401 otherwise.
    async fn refusal(
        &self,
        state: &AppState,
        headers: &HeaderMap,
        peer: Option<std::net::IpAddr>,
    ) -> Option<Response> {
        if self.token.as_ref().is_some_and(|t| t.admits(headers)) {
            return None;
        }
        let authorization = headers.get(header::AUTHORIZATION);
        let basic = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.get(..6))
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("basic "));
        if let Some(auth) = state
            .auth
            .as_ref()
            .filter(|_| basic && !self.users.is_empty())
        {
            match auth
                .check_admin(authorization, auth.client(peer, headers))
                .await
            {
                Ok(user) if self.users.contains(&user) => return None,
                Ok(user) => {
                    tracing::info!(user, "not an admin user");
                    let refused = OciError::new(ErrorCode::Denied, "not an admin user");
                    return Some(refused.into_response());
                }
                Err(crate::auth::Unauthenticated::Throttled(wait)) => {
                    state.metrics.auth_failure();
                    return Some(crate::routes::throttled(wait));
                }
                Err(crate::auth::Unauthenticated::Wrong) => state.metrics.auth_failure(),
                Err(crate::auth::Unauthenticated::Missing) => {}
            }
        }
        let mut refused =
            OciError::new(ErrorCode::Unauthorized, "admin credentials required").into_response();
        refused.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"registry-proxy admin\""),
        );
        Some(refused)
    }
}

/// What `POST /admin/purge` asks.
#[derive(Debug, Default, Deserialize)]
pub struct PurgeQuery {
    /// The namespace (default: the default namespace).
    pub namespace: Option<String>,
    /// The repository.
    pub repository: Option<String>,
    /// A tag of the repository.
    pub tag: Option<String>,
    /// A digest: in the repository; without one, in every repository of
    /// the namespace, or of every namespace when none is named.
    pub digest: Option<String>,
}

/// What a purge dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeReport {
    /// Entries (repository links) removed.
    pub entries: u64,
    /// Blob bytes deleted (no entry used them any more).
    pub bytes_freed: u64,
    /// Entries another replica used meanwhile, so kept.
    pub kept: u64,
    /// Whether a tag was removed.
    pub tag: bool,
}

/// The admin router over `state`, admitting what `access` admits.
pub fn admin_app(state: AppState, access: AdminAccess) -> Router {
    let access = std::sync::Arc::new(access);
    Router::new()
        .route("/admin/purge", post(purge))
        .route("/admin/leases", get(leases))
        .route("/admin/warm", post(warm))
        .route("/admin/du", get(du))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            move |State(state): State<AppState>, request: Request, next: Next| {
                let access = std::sync::Arc::clone(&access);
                async move {
                    let peer = request
                        .extensions()
                        .get::<ConnectInfo<std::net::SocketAddr>>()
                        .map(|c| c.0.ip());
                    match access.refusal(&state, request.headers(), peer).await {
                        None => next.run(request).await,
                        Some(refused) => refused,
                    }
                }
            },
        ))
        .with_state(state)
}

async fn du(State(state): State<AppState>) -> Response {
    match crate::scheduler::usage::usage(&*state.driver).await {
        Ok(usage) => axum::Json(serde_json::json!({
            "usage": usage,
            "budget": state.scheduler.budget_view(crate::routes::NEXT_OUT),
        }))
        .into_response(),
        Err(e) => OciError::new(ErrorCode::Unavailable, e.to_string()).into_response(),
    }
}

async fn leases(State(state): State<AppState>) -> Response {
    let mut held: Vec<String> = state
        .scheduler
        .leases()
        .live()
        .iter()
        .map(ToString::to_string)
        .collect();
    held.sort();
    axum::Json(held).into_response()
}

async fn purge(State(state): State<AppState>, Query(query): Query<PurgeQuery>) -> Response {
    match purged(&state, query).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Carries out a purge.
async fn purged(state: &AppState, query: PurgeQuery) -> Result<PurgeReport, OciError> {
    let ns = namespace(state, query.namespace.as_deref())?;
    let repo = query
        .repository
        .as_deref()
        .map(|r| RepoName::parse(r).map(|r| ns.canonical(r)))
        .transpose()?;
    let digest = query.digest.as_deref().map(Digest::parse).transpose()?;
    let tag = query.tag.as_deref().map(Tag::parse).transpose()?;
    let purged = match (&repo, tag, digest) {
        (Some(repo), Some(tag), None) => {
            let key = ns.repo(repo);
            let removed = (state.manifests.purge_tag(&key, &tag).await)
                .map_err(|e| OciError::new(ErrorCode::Unavailable, e.to_string()))?;
            // Every other replica forgets it confirmed the tag, too.
            let store = state.scheduler.store();
            (store.publish_untag(key.as_str(), tag.as_str()).await)
                .map_err(|e| OciError::new(ErrorCode::Unavailable, e.to_string()))?;
            PurgeReport {
                tag: removed,
                ..PurgeReport::default()
            }
        }
        (repo, None, digest) if repo.is_some() || digest.is_some() => {
            let key = repo.as_ref().map(|r| ns.repo(r));
            let scope = match (&key, &query.namespace) {
                (Some(key), _) => PurgeScope::Repository(key),
                (None, Some(_)) => PurgeScope::Namespace(ns.dir().map(|dir| dir.as_str())),
                (None, None) => PurgeScope::Everywhere,
            };
            let purged = state.scheduler.purge(scope, digest.as_ref()).await;
            PurgeReport {
                entries: purged.entries,
                bytes_freed: purged.bytes_freed,
                kept: purged.kept,
                tag: false,
            }
        }
        _ => {
            return Err(OciError::new(
                ErrorCode::Unsupported,
                "purge takes repository (with tag or digest, or alone) or digest",
            ));
        }
    };
    tracing::info!(namespace = %ns.name, ?repo, ?query.tag, ?query.digest, ?purged, "purged");
    Ok(purged)
}

/// Blobs a warm fetches at once.
pub const WARM_CONCURRENCY: usize = 4;

/// The most manifests a warm follows (an index and its children).
const WARM_MANIFESTS: usize = 64;

/// What `POST /admin/warm` asks.
#[derive(Debug, Default, Deserialize)]
pub struct WarmQuery {
    /// The namespace (default: the default namespace).
    pub namespace: Option<String>,
    /// `REPO:TAG` or `REPO@DIGEST`.
    pub image: String,
    /// Only say what would be fetched.
    #[serde(default)]
    pub dry_run: bool,
    /// The platforms of an index to warm, comma-separated
    /// (`linux/amd64,linux/arm64/v8`); every one when absent.
    pub platform: Option<String>,
}

/// What a warm found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmReport {
    /// Manifests of the image (an index and its children).
    pub manifests: u64,
    /// Distinct blobs they reference.
    pub blobs: u64,
    /// Blobs the namespace could not read before the warm without its
    /// upstream (not stored, or stored and owed a proof of access):
    /// fetched or proved, or with a dry run, to be.
    pub missing: u64,
    /// Their bytes, as the manifests give them.
    pub missing_bytes: u64,
}

async fn warm(State(state): State<AppState>, Query(query): Query<WarmQuery>) -> Response {
    let platforms: Result<Vec<Platform>, String> = query
        .platform
        .iter()
        .flat_map(|list| list.split(','))
        .map(Platform::parse)
        .collect();
    let platforms = match platforms {
        Ok(platforms) => platforms,
        Err(e) => return OciError::new(ErrorCode::Unsupported, e).into_response(),
    };
    match warmed(&state, &query, &platforms).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => OciError::from(e).into_response(),
    }
}

/// Carries out a warm: of an index, only the children of `platforms`
/// (every child when empty).
pub(crate) async fn warmed(
    state: &AppState,
    query: &WarmQuery,
    platforms: &[Platform],
) -> Result<WarmReport, CacheError> {
    let ns = namespace(state, query.namespace.as_deref())?;
    let (name, reference) = match query.image.split_once('@') {
        Some((name, digest)) => (name, Reference::Digest(Digest::parse(digest)?)),
        None => match query
            .image
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
        {
            Some((name, tag)) => (name, Reference::Tag(Tag::parse(tag)?)),
            None => (query.image.as_str(), Reference::Tag(Tag::parse("latest")?)),
        },
    };
    let repo = ns.canonical(RepoName::parse(name)?);
    let mut report = WarmReport::default();
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut manifests = vec![reference];
    while let Some(reference) = manifests.pop() {
        if report.manifests as usize >= WARM_MANIFESTS {
            break;
        }
        let manifest = state.manifests.get(ns, &repo, &reference).await?;
        report.manifests += 1;
        let children = oci::child_platforms(&manifest.bytes);
        let wanted = |digest: &Digest| {
            platforms.is_empty()
                || children.iter().any(|(child, found)| {
                    child == digest
                        && found
                            .as_ref()
                            .is_some_and(|found| platforms.iter().any(|p| p.admits(found)))
                })
        };
        for (digest, is_manifest, size) in oci::manifest_descriptors(&manifest.bytes) {
            if is_manifest {
                if wanted(&digest) {
                    manifests.push(Reference::Digest(digest));
                }
            } else if seen.insert(digest) {
                blobs.push((digest, size));
            }
        }
    }
    report.blobs = blobs.len() as u64;
    let key = ns.repo(&repo);
    let mut missing = Vec::new();
    for (digest, size) in blobs {
        if state.access.missing(ns, &key, &digest).await {
            report.missing += 1;
            report.missing_bytes += size;
            missing.push(digest);
        }
    }
    if !query.dry_run {
        let fetched: Vec<Result<(), CacheError>> = futures::stream::iter(missing)
            .map(|digest| fetch_blob(state, ns, &repo, digest))
            .buffer_unordered(WARM_CONCURRENCY)
            .collect()
            .await;
        fetched.into_iter().collect::<Result<(), _>>()?;
    }
    Ok(report)
}

/// Fetches blob `digest` of `repo` through the cache, reading its bytes
/// to the end (the fill stores them).
async fn fetch_blob(
    state: &AppState,
    ns: &std::sync::Arc<Namespace>,
    repo: &RepoName,
    digest: Digest,
) -> Result<(), CacheError> {
    let reply = state.blobs.get(ns, repo, &digest, None, false).await?;
    if let Some(mut body) = reply.body {
        while let Some(chunk) = body.next().await {
            chunk.map_err(|e| OciError::new(ErrorCode::Unavailable, e.to_string()))?;
        }
    }
    Ok(())
}

/// Namespace `name`, or the default one.
fn namespace<'a>(
    state: &'a AppState,
    name: Option<&str>,
) -> Result<&'a std::sync::Arc<Namespace>, OciError> {
    match name {
        None => Ok(state.namespaces.default_namespace()),
        Some(name) => state
            .namespaces
            .get(name)
            .ok_or_else(|| OciError::new(ErrorCode::NameUnknown, format!("no namespace {name}"))),
    }
}

/// `POST http://addr/admin/<what>?query` with `token`, as `registry-proxy
/// purge` and `warm` do: the JSON answer.
pub async fn request<T: serde::de::DeserializeOwned>(
    addr: std::net::SocketAddr,
    token: &str,
    what: &str,
    query: &[(&str, Option<&str>)],
) -> Result<T, String> {
    let mut url =
        reqwest::Url::parse(&format!("http://{addr}/admin/{what}")).map_err(|e| e.to_string())?;
    {
        let mut pairs = url.query_pairs_mut();
        for (key, value) in query {
            if let Some(value) = value {
                pairs.append_pair(key, value);
            }
        }
    }
    // A warm of a large image takes as long as its fills; an hour at most.
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(3600))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .post(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("admin surface at {addr}: {e}"))?;
    let status = response.status();
    if status != StatusCode::OK {
        let body = response.text().await.unwrap_or_default();
        return Err(format!("admin surface at {addr}: {status}: {body}"));
    }
    response.json().await.map_err(|e| e.to_string())
}
