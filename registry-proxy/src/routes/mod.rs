//! The HTTP surface: `pub fn app(state) -> Router`. Authenticates, routes
//! to a namespace, parses, dispatches, renders; nothing clever.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

mod content;
mod error;
mod listing;

use crate::app::AppState;
use crate::auth::Unauthenticated;
use crate::cache::access;
use crate::health::{StorageCheck, StorageHealth, probe};

use crate::namespace::Namespace;
use crate::oci::{Digest, ErrorCode, OciError, Reference, RepoName};
use crate::token::Scope;
use crate::zerocopy::ZeroCopy;
use content::{blob, manifest, referrers};
use listing::{Listing, catalog, tags};

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
        otel.kind = "server",
        otel.name = %format_args!("{} /v2", request.method()),
        http.response.status_code = tracing::field::Empty,
    );
    crate::telemetry::adopt_client_trace(&span, request.headers());
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    span.in_scope(|| tracing::debug!(status, "answered"));
    if let Ok(value) = HeaderValue::try_from(id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// `/v2/`: 200 to an authenticated client; to an anonymous one only when
/// every namespace lets anyone pull. containers/image clients (skopeo,
/// Podman, Buildah, CRI-O) decide at this ping whether to send
/// credentials, so while some namespace needs them the ping challenges;
/// clients holding none go on anonymously and are served by the open
/// namespaces.
async fn base(
    State(state): State<AppState>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let client = client.map(|c| c.0.0.ip());
    match authenticate(&state, &headers, client, None).await {
        Ok(_) => {}
        Err(Refusal::Missing(_)) if state.namespaces.all_anonymous() => {}
        Err(Refusal::Missing(refused) | Refusal::Failed(refused)) => return refused,
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response()
}

/// Why a request is not authenticated, with the answer for it.
enum Refusal {
    /// It carries no credentials: anonymous, which a namespace may allow.
    Missing(Response),
    /// Wrong credentials, an invalid token, or too many failures.
    Failed(Response),
}

/// The user the request authenticates as, when client authentication is
/// on (401 with a Basic or Bearer challenge when it fails); `None` when it
/// is off. Decides before anything is answered, so that an
/// unauthenticated client learns nothing of namespaces or content. With
/// tokens, `scope` is what the routed request asks for (`None`: the base,
/// or a request that routes nowhere), which the token must grant.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    scope: Option<Scope<'_>>,
) -> Result<Option<String>, Refusal> {
    let authorization = headers.get(header::AUTHORIZATION);
    if let Some(token) = &state.token {
        let challenge = |message: &str| {
            let mut response = OciError::new(ErrorCode::Unauthorized, message).into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, token.challenge(scope));
            response
        };
        return match token.check(authorization, scope) {
            Ok(user) => Ok(Some(user)),
            Err(crate::token::Refused::Missing) => {
                Err(Refusal::Missing(challenge("authentication required")))
            }
            Err(crate::token::Refused::Invalid(why)) => {
                tracing::info!(why, "token refused");
                state.metrics.auth_failure();
                Err(Refusal::Failed(challenge(&why)))
            }
        };
    }
    let Some(auth) = &state.auth else {
        return Ok(None);
    };
    match auth.check(authorization, auth.client(peer, headers)).await {
        Ok(user) => Ok(Some(user)),
        Err(Unauthenticated::Throttled(wait)) => {
            state.metrics.auth_failure();
            Err(Refusal::Failed(throttled(wait)))
        }
        Err(Unauthenticated::Missing) => Err(Refusal::Missing(unauthorized(
            auth,
            "authentication required",
        ))),
        Err(Unauthenticated::Wrong) => {
            tracing::info!("wrong user name or password");
            state.metrics.auth_failure();
            Err(Refusal::Failed(unauthorized(
                auth,
                "wrong user name or password",
            )))
        }
    }
}

/// A 429 `TOOMANYREQUESTS` for a login throttled for `wait`.
pub(crate) fn throttled(wait: std::time::Duration) -> Response {
    let mut error = OciError::new(
        ErrorCode::TooManyRequests,
        "too many failed logins from this client or for this user; try again later",
    );
    error.retry_after = HeaderValue::try_from(wait.as_secs().max(1).to_string()).ok();
    error.into_response()
}

/// A 401 with `message` and the Basic challenge of `auth`.
fn unauthorized(auth: &crate::auth::Htpasswd, message: &str) -> Response {
    let mut response = OciError::new(ErrorCode::Unauthorized, message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, auth.challenge());
    response
}

/// What a `/v2/<rest>` path asks for.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Catalog,
    Manifest(RepoName, Reference),
    Blob(RepoName, Digest),
    Tags(RepoName),
    Referrers(RepoName, Digest),
}

impl Target {
    /// The target with its repository as `ns` knows it
    /// ([`Namespace::canonical`]).
    fn canonical(self, ns: &Namespace) -> Self {
        match self {
            Self::Manifest(repo, reference) => Self::Manifest(ns.canonical(repo), reference),
            Self::Blob(repo, digest) => Self::Blob(ns.canonical(repo), digest),
            Self::Tags(repo) => Self::Tags(ns.canonical(repo)),
            Self::Referrers(repo, subject) => Self::Referrers(ns.canonical(repo), subject),
            Self::Catalog => Self::Catalog,
        }
    }

    /// What a token must grant for it through `ns`, the repository
    /// spelt without the namespace's name when `bare`.
    fn scope<'a>(&'a self, ns: &'a Namespace, bare: bool) -> Scope<'a> {
        match self.repo() {
            Some(repo) => Scope::Pull {
                namespace: (!bare).then_some(ns.name.as_str()),
                repository: repo.as_str(),
            },
            None => Scope::Catalog,
        }
    }

    /// The repository asked for, if any.
    fn repo(&self) -> Option<&RepoName> {
        match self {
            Self::Manifest(repo, _)
            | Self::Blob(repo, _)
            | Self::Tags(repo)
            | Self::Referrers(repo, _) => Some(repo),
            Self::Catalog => None,
        }
    }
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
    if let Some(i) = rest.rfind("/referrers/") {
        let name = RepoName::parse(&rest[..i])?;
        return Ok(Target::Referrers(
            name,
            Digest::parse(&rest[i + "/referrers/".len()..])?,
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
    zero_copy: Option<Extension<ZeroCopy>>,
    headers: HeaderMap,
) -> Response {
    let peer = client.map(|c| c.0.0.ip());
    // Routed and parsed first, for the scope a token must grant, but no
    // error of either is answered before authentication has decided.
    let routed = state
        .namespaces
        .route(query.get("ns").map(String::as_str), &path)
        .map(|(ns, rest)| (ns, parse_target(rest).map(|t| t.canonical(ns))));
    // Only tokens name a scope: without `auth.token` none is worked out.
    let scope = match &routed {
        _ if state.token.is_none() => None,
        Ok((ns, Ok(target))) => {
            // The default namespace's bare spelling, unless its repository
            // begins with another namespace's name (reachable by `?ns=`):
            // that spelling is the other namespace's.
            let namespaces = &state.namespaces;
            let bare = Arc::ptr_eq(ns, namespaces.default_namespace())
                && !target.repo().is_some_and(|repo| {
                    repo.as_str()
                        .split_once('/')
                        .is_some_and(|(first, _)| namespaces.get(first).is_some())
                });
            Some(target.scope(ns, bare))
        }
        _ => None,
    };
    let user = match authenticate(&state, &headers, peer, scope).await {
        Ok(user) => user,
        Err(Refusal::Failed(refused)) => return refused,
        // Anonymous: only a namespace that lets anyone pull serves it.
        Err(Refusal::Missing(_)) if routed.as_ref().is_ok_and(|(ns, _)| ns.anonymous()) => None,
        Err(Refusal::Missing(refused)) => return refused,
    };
    let (ns, target) = match routed {
        Ok(routed) => routed,
        Err(e) => return e.into_response(),
    };
    let ns = Arc::clone(ns);
    tracing::Span::current().record("namespace", ns.name.as_str());
    if let Err(refused) = access::permit(&ns, user.as_deref()) {
        return refused.into_response();
    }
    let target = match target {
        Ok(target) => target,
        Err(e) => return e.into_response(),
    };
    if let Some(Err(refused)) = target
        .repo()
        .map(|repo| access::permit_repository(&ns, repo))
    {
        return refused.into_response();
    }
    let head = method == Method::HEAD;
    if method != Method::GET && !head {
        return unsupported().into_response();
    }
    let list = Listing {
        query: &query,
        path: state.urls.v2(&path),
    };
    let result = match target {
        Target::Manifest(repo, reference) => manifest(&state, &ns, &repo, &reference, head).await,
        Target::Blob(repo, digest) => {
            let zero_copy = zero_copy.as_ref().map(|z| &z.0);
            blob(&state, &ns, &repo, &digest, &headers, head, zero_copy).await
        }
        Target::Tags(repo) => tags(&state, &ns, &repo, &list).await,
        Target::Referrers(repo, subject) => {
            let artifact_type = query.get("artifactType").map(String::as_str);
            referrers(&state, &ns, &repo, &subject, artifact_type, head).await
        }
        Target::Catalog => catalog(&state, &ns, &list).await,
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn unsupported() -> OciError {
    OciError::new(
        ErrorCode::Unsupported,
        "this registry is a pull-through cache: push and delete are not supported",
    )
}

/// 200 `ok`, or 503 with why not.
fn health(answer: Result<(), String>) -> (StatusCode, String) {
    match answer {
        Ok(()) => (StatusCode::OK, "ok".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// The paths the debug listener serves besides the metrics.
pub const DEBUG_PATHS: [&str; 7] = [
    "/status",
    "/livez",
    "/readyz",
    "/healthz",
    "/debug/health",
    "/debug/vars",
    "/debug/budget",
];

/// How many of the blobs eviction would choose next `/debug/budget` lists.
pub const NEXT_OUT: usize = 20;

/// What the debug listener serves beyond its fixed paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugSurface {
    /// Where the Prometheus metrics are served; `None`: nowhere.
    pub metrics_path: Option<String>,
    /// The periodic storage check, when configured; otherwise each probe
    /// checks storage.
    pub storage_check: Option<StorageCheck>,
}

impl Default for DebugSurface {
    fn default() -> Self {
        Self {
            metrics_path: Some("/metrics".to_owned()),
            storage_check: None,
        }
    }
}

/// The router of the debug listener (start it on a runtime: a periodic
/// storage check starts with it):
///
/// - `/livez` says the process serves (a liveness probe);
/// - `/readyz` that storage and, for replicas, etcd answer (a readiness
///   probe; an upstream outage is not unreadiness, the cache serves what
///   it holds);
/// - `/healthz` and `/debug/health` (distribution's) that storage answers;
/// - the metrics path and `/debug/vars` the counters;
/// - `/debug/budget` the byte budget's account and the blobs eviction
///   would choose next, the digests of private content (and manifests)
///   shown as `withheld` ([`crate::cache::access::Access::redact`]);
/// - `/status` a page for people ([`crate::status`]).
///
/// It asks for no credentials: nothing it shows names a private
/// namespace's repositories or content.
pub fn debug_app(state: AppState, surface: &DebugSurface) -> Router {
    let history = crate::status::History::start(Arc::clone(&state.metrics));
    let page = Arc::new(crate::status::Page::new(state.clone(), history));
    let checked = surface
        .storage_check
        .map(|check| StorageHealth::start(Arc::clone(&state.driver), check));
    let storage = move |state: AppState| {
        let checked = checked.clone();
        async move {
            match checked {
                Some(checked) => checked.state(),
                None => probe(&*state.driver).await,
            }
        }
    };
    let mut router =
        Router::new()
            .route("/livez", get(|| async { "ok" }))
            .route(
                "/status",
                get(move || {
                    let page = Arc::clone(&page);
                    async move {
                        match page.get().await {
                            Ok(page) => (
                                [
                                    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                                    (header::CACHE_CONTROL, "no-store"),
                                ],
                                page,
                            )
                                .into_response(),
                            Err(e) => {
                                (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                            }
                        }
                    }
                }),
            )
            .route(
                "/readyz",
                get({
                    let storage = storage.clone();
                    |State(state): State<AppState>| async move {
                        let ready = match storage(state.clone()).await {
                            Ok(()) => (state.scheduler.store().ready().await)
                                .map_err(|e| format!("metadata: {e}")),
                            failed => failed,
                        };
                        health(ready)
                    }
                }),
            )
            .route(
                "/healthz",
                get({
                    let storage = storage.clone();
                    |State(state): State<AppState>| async move { health(storage(state).await) }
                }),
            )
            .route(
                "/debug/health",
                get(|State(state): State<AppState>| async move {
                    let (status, body) = match storage(state).await {
                        Ok(()) => (StatusCode::OK, serde_json::json!({})),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            serde_json::json!({ "storagedriver": why }),
                        ),
                    };
                    (status, axum::Json(body))
                }),
            )
            .route(
                "/debug/vars",
                get(|State(state): State<AppState>| async move {
                    axum::Json(state.metrics.debug_vars())
                }),
            )
            .route(
                "/debug/budget",
                get(|State(state): State<AppState>| async move {
                    match state.scheduler.budget_view(NEXT_OUT) {
                        Some(mut view) => {
                            state.access.redact(&mut view.next).await;
                            axum::Json(view).into_response()
                        }
                        None => (StatusCode::NOT_FOUND, "no byte budget\n").into_response(),
                    }
                }),
            );
    if let Some(path) = &surface.metrics_path {
        router = router.route(
            path,
            get(|State(state): State<AppState>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    state.metrics.prometheus(),
                )
            }),
        );
    }
    router.with_state(state)
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
        assert!(
            matches!(parse_target(&format!("a/b/referrers/{d}")), Ok(Target::Referrers(n, _)) if n.as_str() == "a/b")
        );
        assert!(parse_target("a/referrers/latest").is_err());
        assert!(parse_target("../etc/manifests/latest").is_err());
        assert!(parse_target("x/manifests/..").is_err());
        assert!(parse_target("x/other").is_err());
    }
}
