//! The one place where the cache's errors become OCI errors on the wire.

use axum::http::StatusCode;

use crate::cache::CacheError;
use crate::oci::{ErrorCode, OciError};
use crate::upstream::{Asked, UpstreamError};

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
        (StatusCode::NOT_FOUND, Asked::Tags | Asked::Referrers(_)) => ErrorCode::NameUnknown,
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
