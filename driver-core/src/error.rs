//! The one error type every driver returns.

use crate::path::PathError;

/// A boxed error from a backend library (I/O, an HTTP client, an SDK).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used throughout the driver crates.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors a [`StorageDriver`](crate::StorageDriver) returns.
///
/// Every variant names the driver (`driver`) so that logs say which backend
/// failed. Drivers keep their own private error types and convert at the
/// boundary; callers match on the variants or on [`Error::kind`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Nothing exists at `path` (or, for `list` and `walk`, no directory).
    #[error("{driver}: path not found: {path}")]
    PathNotFound {
        /// The driver's name.
        driver: &'static str,
        /// The path asked for.
        path: String,
    },
    /// `path` is not acceptable for this operation: it breaks the path
    /// grammar, is the root where a file is needed, or collides with a file
    /// or directory already there.
    #[error("{driver}: invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The driver's name.
        driver: &'static str,
        /// The rejected path.
        path: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A read asked for an offset past the end of the object.
    #[error("{driver}: invalid offset {offset} for {path}")]
    InvalidOffset {
        /// The driver's name.
        driver: &'static str,
        /// The object read.
        path: String,
        /// The offset asked for.
        offset: u64,
    },
    /// The driver does not offer this operation.
    #[error("{driver}: {operation} is not supported")]
    Unsupported {
        /// The driver's name.
        driver: &'static str,
        /// The operation asked for.
        operation: &'static str,
    },
    /// A [`FileWriter`](crate::FileWriter) was used after it was committed,
    /// cancelled or closed.
    #[error("{driver}: the writer for {path} is already {state}")]
    WriterFinished {
        /// The driver's name.
        driver: &'static str,
        /// The writer's path.
        path: String,
        /// `committed`, `cancelled` or `closed`.
        state: &'static str,
    },
    /// The backend failed (I/O error, network, server error).
    #[error("{driver}: {operation} {path}: {source}")]
    Backend {
        /// The driver's name.
        driver: &'static str,
        /// The operation that failed.
        operation: &'static str,
        /// The path it was working on.
        path: String,
        /// Whether retrying the same operation may succeed.
        temporary: bool,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
}

/// The variant of an [`Error`] without its fields, for comparisons and
/// metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`Error::PathNotFound`].
    PathNotFound,
    /// [`Error::InvalidPath`].
    InvalidPath,
    /// [`Error::InvalidOffset`].
    InvalidOffset,
    /// [`Error::Unsupported`].
    Unsupported,
    /// [`Error::WriterFinished`].
    WriterFinished,
    /// [`Error::Backend`].
    Backend,
}

impl Error {
    /// Builds [`Error::PathNotFound`].
    pub fn not_found(driver: &'static str, path: impl ToString) -> Self {
        Self::PathNotFound {
            driver,
            path: path.to_string(),
        }
    }

    /// Builds [`Error::InvalidPath`].
    pub fn invalid_path(driver: &'static str, path: impl ToString, reason: impl ToString) -> Self {
        Self::InvalidPath {
            driver,
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Builds [`Error::InvalidPath`] from a parse failure.
    pub fn from_path_error(driver: &'static str, err: PathError) -> Self {
        Self::invalid_path(driver, err.path, err.reason)
    }

    /// Builds [`Error::Backend`].
    pub fn backend(
        driver: &'static str,
        operation: &'static str,
        path: impl ToString,
        temporary: bool,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Backend {
            driver,
            operation,
            path: path.to_string(),
            temporary,
            source: source.into(),
        }
    }

    /// The variant, without its fields.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::PathNotFound { .. } => ErrorKind::PathNotFound,
            Self::InvalidPath { .. } => ErrorKind::InvalidPath,
            Self::InvalidOffset { .. } => ErrorKind::InvalidOffset,
            Self::Unsupported { .. } => ErrorKind::Unsupported,
            Self::WriterFinished { .. } => ErrorKind::WriterFinished,
            Self::Backend { .. } => ErrorKind::Backend,
        }
    }

    /// The name of the driver that produced the error.
    pub fn driver(&self) -> &'static str {
        match self {
            Self::PathNotFound { driver, .. }
            | Self::InvalidPath { driver, .. }
            | Self::InvalidOffset { driver, .. }
            | Self::Unsupported { driver, .. }
            | Self::WriterFinished { driver, .. }
            | Self::Backend { driver, .. } => driver,
        }
    }

    /// Whether retrying the same operation may succeed (a timeout, a dropped
    /// connection, throttling, a 5xx). Only backend errors can be temporary.
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            Self::Backend {
                temporary: true,
                ..
            }
        )
    }

    /// Whether this is [`Error::PathNotFound`].
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::PathNotFound
    }

    /// Whether the backend is out of space: a backend error caused by an
    /// I/O error of kind `StorageFull` or `QuotaExceeded` (`ENOSPC`,
    /// `EDQUOT`). Freeing space and retrying may then succeed.
    pub fn is_storage_full(&self) -> bool {
        let Self::Backend { source, .. } = self else {
            return false;
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                );
            }
            cause = e.source();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_temporary_backend_errors_are_temporary() {
        let io = std::io::Error::other("reset");
        assert!(Error::backend("x", "get", "/a", true, io).is_temporary());
        let io = std::io::Error::other("denied");
        assert!(!Error::backend("x", "get", "/a", false, io).is_temporary());
        assert!(!Error::not_found("x", "/a").is_temporary());
    }

    #[test]
    fn a_full_disk_is_recognised_through_its_io_error() {
        let full = std::io::Error::from_raw_os_error(28); // ENOSPC
        assert!(Error::backend("x", "write", "/a", false, full).is_storage_full());
        let quota = std::io::Error::from_raw_os_error(122); // EDQUOT
        assert!(Error::backend("x", "write", "/a", false, quota).is_storage_full());
        let other = std::io::Error::other("denied");
        assert!(!Error::backend("x", "write", "/a", false, other).is_storage_full());
        assert!(!Error::not_found("x", "/a").is_storage_full());
    }

    #[test]
    fn errors_name_their_driver() {
        let e = Error::invalid_path("filesystem", "/", "the root is not a file");
        assert_eq!(e.driver(), "filesystem");
        assert!(e.to_string().contains("filesystem"), "{e}");
        assert_eq!(e.kind(), ErrorKind::InvalidPath);
    }
}
