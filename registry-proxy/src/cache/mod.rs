//! The cache: blobs served from storage or from one fill per digest,
//! manifests and tags, the repositories' links, the repository catalog,
//! and the read checks. The
//! only code that writes cached content (the scheduler's expiry and
//! collection delete it).

pub mod blobs;
pub mod catalog;
pub mod error;
pub mod fill;
pub mod links;
pub mod manifests;
pub(crate) mod proof;
pub mod tier;
pub mod verify;

pub use error::CacheError;
