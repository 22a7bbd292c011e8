//! The cache: distribution's layout, the blob store with its fills, and the
//! manifest and tag store. The only code that writes cached content.

pub mod blobs;
pub mod manifests;
pub mod verify;
