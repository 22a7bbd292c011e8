//! The cache: the only code that writes cached content (the scheduler's
//! expiry and collection delete it), and the one decision of who may read
//! or learn of what it holds.
//!
//! - [`access`]: may this request, through this namespace, read or learn
//!   of this content (stored bytes, a running fill, a stored manifest, a
//!   name in a listing or on an operator page), proofs of access, and the
//!   marker that content came in privately. Every reader below asks it.
//! - [`blobs`]: a blob served from storage, a copy on this machine, a
//!   presigned URL, or the one fill of its digest.
//! - [`fill`]: one fill per digest (single flight, spool, hash, commit).
//! - [`manifests`]: manifests and tags, the tag list, and the referrers.
//! - [`links`]: the repositories' link files, written only here.
//! - [`catalog`]: a namespace's repositories in storage, a page at a time.
//! - [`tier`]: the local tier in front of remote storage.
//! - [`verify`]: checks of stored bytes as they are read, and `scrub`.
//! - [`error`]: [`CacheError`], keeping storage and upstream errors.

pub mod access;
pub mod blobs;
pub mod catalog;
pub mod error;
pub mod fill;
pub mod links;
pub mod manifests;
pub mod tier;
pub mod verify;

pub use error::CacheError;
