//! Paginated listings: a repository's tags and the namespace's catalog,
//! with distribution's `n`, `last` and `Link` paging.

use std::collections::HashMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::app::AppState;
use crate::cache::{access, catalog};
use crate::namespace::Namespace;
use crate::oci::{ErrorCode, OciError, RepoName};

/// What a paginated listing needs of its request.
pub(super) struct Listing<'a> {
    /// The request's query.
    pub(super) query: &'a HashMap<String, String>,
    /// The request's path, for the `Link` to the next page.
    pub(super) path: String,
}

/// What a query value of a `Link` keeps unescaped: RFC 3986's unreserved
/// characters and `/` (repository names). Everything else (`>`, `,`, `;`,
/// `&`, spaces from an upstream's tag list) is escaped, so a value can
/// neither end the link nor add to its query.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

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
        let escape = |value: &str| utf8_percent_encode(value, QUERY_VALUE).to_string();
        let ns = request
            .query
            .get("ns")
            .map(|ns| format!("ns={}&", escape(ns)))
            .unwrap_or_default();
        let last = escape(&last);
        let path = &request.path;
        if let Ok(link) =
            HeaderValue::from_str(&format!("<{path}?{ns}n={n}&last={last}>; rel=\"next\""))
        {
            response.headers_mut().insert(header::LINK, link);
        }
    }
    Ok(response)
}

pub(super) async fn tags(
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

/// A page of the namespace's repositories with manifests in storage that
/// its lists admit ([`access::lists`]), in walk order, `n` of them (100 by
/// default, at most 1000). `last`, when not empty, must be a repository
/// name (400 `NAME_INVALID` otherwise): it is where the walk of storage
/// starts.
pub(super) async fn catalog(
    state: &AppState,
    ns: &Namespace,
    request: &Listing<'_>,
) -> Result<Response, OciError> {
    let n = page_size(request.query, Some(CATALOG_PAGE), CATALOG_MAX_PAGE)?;
    let want = n.unwrap_or(CATALOG_PAGE).saturating_add(1);
    let last = request
        .query
        .get("last")
        .filter(|last| !last.is_empty())
        .map(String::as_str)
        .map(RepoName::parse)
        .transpose()?;
    let listed = |repo: &RepoName| access::lists(ns, repo);
    let repos = state
        .catalog
        .page(ns.dir(), last.as_ref(), want, listed)
        .await?;
    let page = paginate(repos, request.query, n, |repo, last| {
        catalog::walk_order(repo, last).is_gt()
    });
    listing("repositories", None, page, n, request)
}
