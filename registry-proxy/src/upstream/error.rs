//! [`UpstreamError`]: why the upstream gave no usable answer, typed, so
//! that the cache decides what an answer means for it (serve stale, fill
//! again, refuse) and the HTTP layer alone turns it into an OCI error.

use std::fmt;

use reqwest::StatusCode;
use reqwest::header::HeaderValue;

use crate::oci::Digest;

/// What was asked of the upstream, for errors and their OCI codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// A manifest, by tag or digest.
    Manifest(String),
    /// A blob.
    Blob(Digest),
    /// A repository's tag list.
    Tags,
    /// The referrers of a manifest.
    Referrers(Digest),
}

impl fmt::Display for Asked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Manifest(reference) => f.write_str(reference),
            Self::Blob(digest) => write!(f, "blob {digest}"),
            Self::Tags => f.write_str("the tag list"),
            Self::Referrers(subject) => write!(f, "the referrers of {subject}"),
        }
    }
}

/// Why an upstream request gave no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// Connection refused, reset, DNS, or no answer in time.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// The token endpoint failed.
    #[error("upstream token service failed: {0}")]
    Token(String),
    /// The upstream answered with a status other than success.
    #[error("upstream answered {status} for {asked}")]
    Status {
        /// The status it answered.
        status: StatusCode,
        /// Its `Retry-After` on a 429 or 503 (at most 64 bytes), to pass on.
        retry_after: Option<HeaderValue>,
        /// What was asked.
        asked: Asked,
    },
    /// The answer's body broke off, or is not what the API says.
    #[error("upstream {what}: {detail}")]
    Body {
        /// Which answer (`manifest body`, `tag list`, ...).
        what: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// The answer is larger than this cache reads.
    #[error("{0}")]
    TooLarge(String),
}

impl UpstreamError {
    /// Whether this means "try again later" rather than an answer: the
    /// upstream is unreachable, its token service failed, it answered 5xx
    /// or 429, or its answer broke off or made no sense. A cached answer
    /// may be served instead.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Status { status, .. } => is_outage(*status),
            Self::Unreachable(_) | Self::Token(_) | Self::Body { .. } => true,
            Self::TooLarge(_) => false,
        }
    }

    /// The error of a non-success `response` to what was `asked`.
    pub(crate) fn status(response: &reqwest::Response, asked: Asked) -> Self {
        let status = response.status();
        let retry_after = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
        .then(|| response.headers().get(reqwest::header::RETRY_AFTER))
        .flatten()
        .filter(|v| v.len() <= 64)
        .cloned();
        Self::Status {
            status,
            retry_after,
            asked,
        }
    }
}

/// Whether an upstream status means "try again later" rather than an answer.
pub(crate) fn is_outage(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// A reqwest error without its URL (which could carry credentials).
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_decode() {
        "undecodable answer"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}
