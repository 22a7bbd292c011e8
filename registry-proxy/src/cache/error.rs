//! [`CacheError`]: why the cache gave no answer. Its own answers carry
//! their OCI code; storage and upstream failures keep their sources until
//! the HTTP layer turns them into OCI errors, in one place.

use std::sync::Arc;

use crate::oci::OciError;
use crate::upstream::UpstreamError;

/// Why the cache gave no answer. `Clone`: a fill's outcome goes to every
/// client that joined it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// The cache's own answer, with its OCI code: unknown content, access
    /// denied, a blob too large, a range not satisfiable, no room or no
    /// free fill slot, a digest the upstream got wrong.
    #[error(transparent)]
    Answer(#[from] OciError),
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(Arc<driver_core::Error>),
    /// The upstream gave no usable answer.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl From<driver_core::Error> for CacheError {
    fn from(e: driver_core::Error) -> Self {
        Self::Storage(Arc::new(e))
    }
}
