//! An S3 [`StorageDriver`](driver_core::StorageDriver) on the official
//! `aws-sdk-s3`, for AWS and S3-compatible stores (MinIO, Garage, Ceph).
//!
//! - Objects live at `<rootdirectory>/<storage path>`, the layout CNCF
//!   distribution's S3 driver uses, so a bucket it filled is readable.
//! - `put_content` and writers that stay under one chunk are one `PutObject`;
//!   larger writers upload `chunksize` parts (several in flight) and commit
//!   with `CompleteMultipartUpload`, so nothing is visible before commit.
//! - A writer that is closed (or whose process dies) leaves a small record
//!   object under `<rootdirectory>/@writers/`, holding its unuploaded tail and
//!   its upload id. `@` cannot occur in a storage path, so records are never
//!   listed; `writer(path, append = true)` finds the latest one and resumes.
//! - Move is a server-side copy (multipart above `multipartcopythresholdsize`)
//!   then a delete; directory deletes list and batch-delete, never touching a
//!   sibling prefix.
//! - Reads (`stat`, `get_content`, `open`) are `HeadObject` and `GetObject`
//!   through `object_store`, signed with the SDK's credential chain: the
//!   requests a cache makes on every hit take the leaner client.
//! - Retries with backoff (5xx, throttling, dropped connections) come from the
//!   SDK's standard retry mode; errors map onto driver-core's with
//!   `is_temporary()` set for what a retry may fix.

mod config;
mod core;
mod driver;
mod error;
mod reads;
mod writer;

pub use config::{ConfigError, S3Config};
pub use driver::S3Driver;

/// The driver's name, as configuration and errors spell it.
pub const NAME: &str = "s3";
