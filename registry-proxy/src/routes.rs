//! The HTTP surface: `pub fn app(state) -> Router`. Authenticates, routes
//! to a namespace, parses, dispatches, renders; nothing clever.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use driver_core::StoragePath;

use crate::app::AppState;
use crate::auth::Unauthenticated;
use crate::cache::blobs::RangeSpec;
use crate::cache::{CacheError, catalog};

use crate::namespace::Namespace;
use crate::oci::{Digest, ErrorCode, Kind, OciError, Reference, RepoName};
use crate::upstream::{Asked, UpstreamError};

const API_VERSION: &str = "registry/2.0";

/// The router of the public listener.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v2/", get(base).head(base))
        .route("/v2", get(base).head(base))
        .route("/v2/{*rest}", any(dispatch))
        .with_state(state)
        .layer(axum::middleware::map_response(
            |mut response: Response| async move {
                let headers = response.headers_mut();
                headers.insert(
                    "docker-distribution-api-version",
                    HeaderValue::from_static(API_VERSION),
                );
                // No body of a registry is a page: browsers must not guess
                // one from its bytes.
                headers.insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
                response
            },
        ))
        .layer(axum::middleware::from_fn(request_span))
        .layer(axum::middleware::from_fn(limit_headers))
}

/// Refuses requests whose headers add up to more than
/// [`MAX_HEADER_BYTES`](crate::oci::MAX_HEADER_BYTES) with an OCI error
/// (far larger ones are refused by the HTTP server itself, with a bare 431).
async fn limit_headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let size: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if size > crate::oci::MAX_HEADER_BYTES {
        return OciError::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "the request headers are {size} bytes; at most {} are accepted",
                crate::oci::MAX_HEADER_BYTES
            ),
        )
        .into_response();
    }
    next.run(request).await
}

const REQUEST_ID: &str = "x-request-id";

/// Runs each request in a span carrying its id (the client's `X-Request-Id`
/// when it sent a sane one, else a new random one) and, once routed, its
/// namespace, which every log line of the request (and of a fill it starts)
/// then shows; the response echoes the id.
async fn request_span(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument as _;
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map_or_else(|| format!("{:016x}", rand::random::<u64>()), str::to_owned);
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %request.method(),
        path = %request.uri().path(),
        namespace = tracing::field::Empty,
    );
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "answered"));
    if let Ok(value) = HeaderValue::try_from(id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

async fn base(
    State(state): State<AppState>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let client = client.map(|c| c.0.0.ip());
    if let Err(refused) = authenticate(&state, &headers, client).await {
        return refused;
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response()
}

/// The user the request authenticates as, when client authentication is
/// on (401 with a Basic challenge when it fails); `None` when it is off.
/// Runs before anything else looks at the request, so that an
/// unauthenticated client learns nothing of namespaces or content.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    client: Option<IpAddr>,
) -> Result<Option<String>, Response> {
    let Some(auth) = &state.auth else {
        return Ok(None);
    };
    match auth.check(headers.get(header::AUTHORIZATION), client).await {
        Ok(user) => Ok(Some(user)),
        Err(Unauthenticated::Throttled(wait)) => {
            state.metrics.auth_failure();
            let mut error = OciError::new(
                ErrorCode::TooManyRequests,
                "too many failed logins from this address; try again later",
            );
            error.retry_after = HeaderValue::try_from(wait.as_secs().max(1).to_string()).ok();
            Err(error.into_response())
        }
        Err(Unauthenticated::Missing) => Err(unauthorized(auth, "authentication required")),
        Err(Unauthenticated::Wrong) => {
            tracing::info!("wrong user name or password");
            state.metrics.auth_failure();
            Err(unauthorized(auth, "wrong user name or password"))
        }
    }
}

/// A 401 with `message` and the Basic challenge of `auth`.
fn unauthorized(auth: &crate::auth::Htpasswd, message: &str) -> Response {
    let mut response = OciError::new(ErrorCode::Unauthorized, message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, auth.challenge());
    response
}

/// Checks that `user` may pull through `ns` (403 `DENIED` when not).
fn permit(ns: &Namespace, user: Option<&str>) -> Result<(), OciError> {
    if ns.allows(user) {
        return Ok(());
    }
    tracing::info!(namespace = %ns.name, user, "user not allowed in the namespace");
    ns.metrics.denial();
    Err(OciError::new(
        ErrorCode::Denied,
        format!("not allowed to pull through namespace {}", ns.name),
    ))
}

/// What a `/v2/<rest>` path asks for.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Catalog,
    Manifest(RepoName, Reference),
    Blob(RepoName, Digest),
    Tags(RepoName),
}

fn parse_target(rest: &str) -> Result<Target, OciError> {
    if rest == "_catalog" {
        return Ok(Target::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Target::Tags(RepoName::parse(name)?));
    }
    if let Some(i) = rest.rfind("/manifests/") {
        let name = RepoName::parse(&rest[..i])?;
        return Ok(Target::Manifest(
            name,
            Reference::parse(&rest[i + "/manifests/".len()..])?,
        ));
    }
    if rest.contains("/blobs/uploads") {
        return Err(unsupported());
    }
    if let Some(i) = rest.rfind("/blobs/") {
        let name = RepoName::parse(&rest[..i])?;
        return Ok(Target::Blob(
            name,
            Digest::parse(&rest[i + "/blobs/".len()..])?,
        ));
    }
    Err(OciError::new(
        ErrorCode::NameInvalid,
        format!("no such endpoint: /v2/{rest}"),
    ))
}

async fn dispatch(
    State(state): State<AppState>,
    method: Method,
    Path(path): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let client = client.map(|c| c.0.0.ip());
    let user = match authenticate(&state, &headers, client).await {
        Ok(user) => user,
        Err(refused) => return refused,
    };
    let (ns, rest) = match state
        .namespaces
        .route(query.get("ns").map(String::as_str), &path)
    {
        Ok(routed) => routed,
        Err(e) => return e.into_response(),
    };
    let ns = Arc::clone(ns);
    tracing::Span::current().record("namespace", ns.name.as_str());
    if let Err(refused) = permit(&ns, user.as_deref()) {
        return refused.into_response();
    }
    let target = match parse_target(rest) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let head = method == Method::HEAD;
    if method != Method::GET && !head {
        return unsupported().into_response();
    }
    let list = Listing {
        query: &query,
        path: format!("/v2/{path}"),
    };
    let result = match target {
        Target::Manifest(repo, reference) => manifest(&state, &ns, &repo, &reference, head).await,
        Target::Blob(repo, digest) => blob(&state, &ns, &repo, &digest, &headers, head).await,
        Target::Tags(repo) => tags(&state, &ns, &repo, &list).await,
        Target::Catalog => catalog(&state, &ns, &list).await,
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// What a paginated listing needs of its request.
struct Listing<'a> {
    query: &'a HashMap<String, String>,
    /// The request's path, for the `Link` to the next page.
    path: String,
}

fn unsupported() -> OciError {
    OciError::new(
        ErrorCode::Unsupported,
        "this registry is a pull-through cache: push and delete are not supported",
    )
}

/// The one place where the cache's errors become OCI errors on the wire.
impl From<CacheError> for OciError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::Answer(e) => e,
            CacheError::Storage(e) => {
                OciError::new(ErrorCode::Unavailable, format!("storage: {e}"))
            }
            CacheError::Upstream(e) => upstream_error(&e),
        }
    }
}

/// An upstream's failure as the client sees it: a refusal keeps its
/// meaning (unknown, denied, too many requests with the upstream's
/// `Retry-After`); the namespace's own credentials refused for a blob (a
/// fill or a proof of access) is a denial, not a request that the client
/// authenticate; anything else is `UNAVAILABLE`.
fn upstream_error(e: &UpstreamError) -> OciError {
    let UpstreamError::Status {
        status,
        retry_after,
        asked,
    } = e
    else {
        return OciError::new(ErrorCode::Unavailable, e.to_string());
    };
    let code = match (*status, asked) {
        (StatusCode::NOT_FOUND, Asked::Manifest(_)) => ErrorCode::ManifestUnknown,
        (StatusCode::NOT_FOUND, Asked::Blob(_)) => ErrorCode::BlobUnknown,
        (StatusCode::NOT_FOUND, Asked::Tags) => ErrorCode::NameUnknown,
        (StatusCode::UNAUTHORIZED, Asked::Blob(_)) | (StatusCode::FORBIDDEN, _) => {
            ErrorCode::Denied
        }
        (StatusCode::UNAUTHORIZED, _) => ErrorCode::Unauthorized,
        (StatusCode::TOO_MANY_REQUESTS, _) => ErrorCode::TooManyRequests,
        _ => ErrorCode::Unavailable,
    };
    let mut error = OciError::new(code, e.to_string());
    error.retry_after.clone_from(retry_after);
    error
}

async fn manifest(
    state: &AppState,
    ns: &Namespace,
    repo: &RepoName,
    reference: &Reference,
    head: bool,
) -> Result<Response, OciError> {
    let m = state.manifests.get(ns, repo, reference).await?;
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, &m.media_type)
        .header(header::CONTENT_LENGTH, m.bytes.len())
        .header("docker-content-digest", m.digest.to_string())
        .header(header::ETAG, format!("\"{}\"", m.digest));
    let body = if head {
        Body::empty()
    } else {
        ns.metrics.pushed(Kind::Manifest, m.bytes.len() as u64);
        Body::from(m.bytes)
    };
    builder
        .body(body)
        .map_err(|e| OciError::new(ErrorCode::Unavailable, e.to_string()))
}

async fn blob(
    state: &AppState,
    ns: &Arc<Namespace>,
    repo: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, OciError> {
    // A Range this server does not understand (another unit, several
    // ranges, garbage) is ignored, as RFC 9110 says: the whole blob, 200.
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(RangeSpec::parse);
    let reply = state.blobs.get(ns, repo, digest, range, head).await?;
    let (start, end) = reply.range;
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes")
        .header("docker-content-digest", digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""));
    builder = if range.is_some() {
        builder.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{}", end.saturating_sub(1), reply.size),
        )
    } else {
        builder.status(StatusCode::OK)
    };
    let body = match reply.counted_body(Arc::clone(&ns.metrics)) {
        Some(stream) => Body::from_stream(stream),
        None => Body::empty(),
    };
    builder
        .body(body)
        .map_err(|e| OciError::new(ErrorCode::Unavailable, e.to_string()))
}

/// The page size of `_catalog` when the request gives none.
const CATALOG_PAGE: usize = 100;

/// The largest page `_catalog` answers; a larger `n` is cut to it.
const CATALOG_MAX_PAGE: usize = 1000;

/// The `n` of a listing request: its own (at most `max`), else `default`.
fn page_size(
    query: &HashMap<String, String>,
    default: Option<usize>,
    max: usize,
) -> Result<Option<usize>, OciError> {
    match query.get("n") {
        Some(n) => n.parse::<usize>().map(|n| Some(n.min(max))).map_err(|_| {
            OciError::new(ErrorCode::PaginationNumberInvalid, format!("invalid n={n}"))
        }),
        None => Ok(default),
    }
}

/// `n` and `last` of a paginated listing applied to `items`, sorted in
/// the order `after` tells; returns the page and whether more follow.
fn paginate(
    items: Vec<String>,
    query: &HashMap<String, String>,
    n: Option<usize>,
    after: impl Fn(&str, &str) -> bool,
) -> (Vec<String>, bool) {
    let rest: Vec<String> = match query.get("last") {
        Some(last) => items.into_iter().filter(|i| after(i, last)).collect(),
        None => items,
    };
    match n {
        Some(n) if rest.len() > n => (rest[..n].to_vec(), true),
        _ => (rest, false),
    }
}

/// A page of a listing as JSON, with a `Link` to the next page when more
/// follow (keeping the request's path and `ns`).
fn listing(
    key: &str,
    name: Option<&RepoName>,
    (page, more): (Vec<String>, bool),
    n: Option<usize>,
    request: &Listing<'_>,
) -> Result<Response, OciError> {
    let mut body = serde_json::Map::new();
    if let Some(name) = name {
        body.insert("name".into(), name.as_str().into());
    }
    let last = page.last().cloned();
    body.insert(key.into(), page.into());
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::Value::Object(body).to_string(),
    )
        .into_response();
    if let (true, Some(last), Some(n)) = (more, last, n) {
        let ns = request
            .query
            .get("ns")
            .map(|ns| format!("ns={ns}&"))
            .unwrap_or_default();
        let path = &request.path;
        if let Ok(link) =
            HeaderValue::from_str(&format!("<{path}?{ns}n={n}&last={last}>; rel=\"next\""))
        {
            response.headers_mut().insert(header::LINK, link);
        }
    }
    Ok(response)
}

async fn tags(
    state: &AppState,
    ns: &Namespace,
    repo: &RepoName,
    request: &Listing<'_>,
) -> Result<Response, OciError> {
    let n = page_size(request.query, None, usize::MAX)?;
    let tags = state.manifests.tags(ns, repo).await?;
    let page = paginate(tags, request.query, n, |tag, last| tag > last);
    listing("tags", Some(repo), page, n, request)
}

/// A page of the namespace's repositories with manifests in storage, in
/// walk order, `n` of them (100 by default, at most 1000).
async fn catalog(
    state: &AppState,
    ns: &Namespace,
    request: &Listing<'_>,
) -> Result<Response, OciError> {
    let n = page_size(request.query, Some(CATALOG_PAGE), CATALOG_MAX_PAGE)?;
    let want = n.unwrap_or(CATALOG_PAGE).saturating_add(1);
    let last = request.query.get("last").map(String::as_str);
    let repos = state.catalog.page(ns.dir(), last, want).await?;
    let page = paginate(repos, request.query, n, |repo, last| {
        catalog::walk_order(repo, last).is_gt()
    });
    listing("repositories", None, page, n, request)
}

/// The router of the debug listener: `/healthz` says whether storage answers.
pub fn debug_app(state: AppState) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|State(state): State<AppState>| async move {
                match state.driver.stat(&StoragePath::root()).await {
                    Ok(_) => (StatusCode::OK, "ok".to_owned()),
                    Err(e) if e.is_not_found() => (StatusCode::OK, "ok".to_owned()),
                    Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("storage: {e}")),
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(state): State<AppState>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    state.metrics.prometheus(),
                )
            }),
        )
        .route(
            "/debug/vars",
            get(|State(state): State<AppState>| async move {
                axum::Json(state.metrics.debug_vars())
            }),
        )
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(parse_target("_catalog").expect("catalog"), Target::Catalog);
        assert!(
            matches!(parse_target("library/alpine/manifests/3.20"), Ok(Target::Manifest(n, _)) if n.as_str() == "library/alpine")
        );
        assert!(
            matches!(parse_target(&format!("a/b/c/blobs/{d}")), Ok(Target::Blob(n, _)) if n.as_str() == "a/b/c")
        );
        assert_eq!(
            parse_target("x/blobs/uploads/").unwrap_err().code,
            ErrorCode::Unsupported
        );
        assert!(matches!(parse_target("x/tags/list"), Ok(Target::Tags(_))));
        assert!(parse_target("../etc/manifests/latest").is_err());
        assert!(parse_target("x/manifests/..").is_err());
        assert!(parse_target("x/other").is_err());
    }
}
