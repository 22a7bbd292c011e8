//! The storage contract of registry-proxy.
//!
//! Everything that stores cached content talks to a [`StorageDriver`]: a small
//! async trait modelled on CNCF distribution's storage driver (stat, whole-object
//! get and put, a reader at an offset, a resumable streaming writer, list, move,
//! delete, walk, redirect). Drivers are used as `Arc<dyn StorageDriver>`.
//!
//! # Writing a driver
//!
//! 1. Create a crate shaped like the others: `config.rs` (a serde config with
//!    `#[serde(default)]` and `from_env()`), `driver.rs` (the
//!    [`StorageDriver`] impl), `reader.rs`, `writer.rs` (the [`FileWriter`]),
//!    `error.rs` (a private error type converted into [`Error`] at the
//!    boundary, setting `temporary` for failures worth retrying).
//! 2. Take paths as [`StoragePath`]; reject the root where a file is needed
//!    with [`Error::InvalidPath`] ([`require_file_path`] does it).
//! 3. Honour every contract in the trait's method docs. The parts that are
//!    easy to get wrong: commit and put are atomic; a closed writer resumes
//!    with `append`; delete is recursive but never touches `/asuffix` when
//!    deleting `/a`; directories vanish with their last file; walk order
//!    (use [`FlatWalk`] when the backend lists files in byte order).
//! 4. Declare optional features in [`Capabilities`].
//! 5. Add `tests/conformance.rs` calling `conformance::conformance_tests!`
//!    with a factory for the driver. Every case must pass.

mod driver;
mod error;
mod path;
mod secret;
mod walk;

pub use driver::{
    ByteStream, Capabilities, FileInfo, FileWriter, OpenFile, READ_CHUNK, RedirectMethod,
    StorageDriver, WalkControl, WalkFn, WalkOptions,
};
pub use error::{BoxError, Error, ErrorKind, Result};
pub use path::{MAX_PATH_LEN, MAX_SEGMENT_LEN, PathError, Segment, StoragePath};
pub use secret::Secret;
pub use walk::{FlatWalk, walk_key};

/// Where a [`FileWriter`] is in its life; drivers keep one to reject calls
/// after the writer ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriterState {
    /// Accepting writes.
    #[default]
    Open,
    /// Ended by [`FileWriter::commit`].
    Committed,
    /// Ended by [`FileWriter::close`].
    Closed,
    /// Ended by [`FileWriter::cancel`].
    Cancelled,
}

impl WriterState {
    /// `Ok` while open; otherwise [`Error::WriterFinished`] naming `driver`
    /// and the writer's `path`.
    pub fn check_open(self, driver: &'static str, path: &StoragePath) -> Result<()> {
        let state = match self {
            Self::Open => return Ok(()),
            Self::Committed => "committed",
            Self::Closed => "closed",
            Self::Cancelled => "cancelled",
        };
        Err(Error::WriterFinished {
            driver,
            path: path.to_string(),
            state,
        })
    }
}

/// Ends a `list`: the children sorted and deduplicated, or
/// [`Error::PathNotFound`] when a directory other than the root has none.
pub fn finish_listing(
    driver: &'static str,
    path: &StoragePath,
    mut children: Vec<StoragePath>,
) -> Result<Vec<StoragePath>> {
    if children.is_empty() && !path.is_root() {
        return Err(Error::not_found(driver, path));
    }
    children.sort();
    children.dedup();
    Ok(children)
}

/// Fails with [`Error::InvalidPath`] naming `driver` when `path` is the root,
/// which can never be a file.
pub fn require_file_path(driver: &'static str, path: &StoragePath) -> Result<()> {
    if path.is_root() {
        Err(Error::invalid_path(
            driver,
            path,
            "the root is a directory, not a file",
        ))
    } else {
        Ok(())
    }
}
