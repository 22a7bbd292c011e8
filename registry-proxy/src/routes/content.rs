//! Manifests and blobs: the answers a pull is made of, rendered with their
//! digests, sizes and ranges.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use crate::app::AppState;
use crate::cache::blobs::RangeSpec;
use crate::namespace::Namespace;
use crate::oci::{Digest, ErrorCode, Kind, OciError, Reference, RepoName};
use crate::zerocopy::ZeroCopy;

pub(super) async fn manifest(
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
        ns.metrics.manifest_sent(repo.as_str());
        Body::from(m.bytes)
    };
    builder
        .body(body)
        .map_err(|e| OciError::new(ErrorCode::Unavailable, e.to_string()))
}

/// The referrers of `subject` (OCI 1.1), an index, filtered by
/// `artifact_type` when one is given.
pub(super) async fn referrers(
    state: &AppState,
    ns: &Namespace,
    repo: &RepoName,
    subject: &Digest,
    artifact_type: Option<&str>,
    head: bool,
) -> Result<Response, OciError> {
    let list = state
        .manifests
        .referrers(ns, repo, subject, artifact_type)
        .await?;
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, crate::oci::OCI_INDEX)
        .header(header::CONTENT_LENGTH, list.bytes.len());
    if list.filtered {
        builder = builder.header("oci-filters-applied", "artifactType");
    }
    let body = if head {
        Body::empty()
    } else {
        Body::from(list.bytes)
    };
    builder
        .body(body)
        .map_err(|e| OciError::new(ErrorCode::Unavailable, e.to_string()))
}

pub(super) async fn blob(
    state: &AppState,
    ns: &Arc<Namespace>,
    repo: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
    zero_copy: Option<&ZeroCopy>,
) -> Result<Response, OciError> {
    // A Range this server does not understand (another unit, several
    // ranges, garbage) is ignored, as RFC 9110 says: the whole blob, 200.
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(RangeSpec::parse);
    let reply = state.blobs.get(ns, repo, digest, range, head).await?;
    if let Some(url) = &reply.redirect {
        return Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(header::LOCATION, url)
            .header(header::CONTENT_LENGTH, 0)
            .header("docker-content-digest", digest.to_string())
            .body(Body::empty())
            .map_err(|e| OciError::new(ErrorCode::Unavailable, e.to_string()));
    }
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
    let body = match reply.counted_body(Arc::clone(&ns.metrics), zero_copy) {
        Some(stream) => Body::from_stream(stream),
        None => Body::empty(),
    };
    builder
        .body(body)
        .map_err(|e| OciError::new(ErrorCode::Unavailable, e.to_string()))
}
