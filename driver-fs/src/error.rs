use std::io;

use driver_core::Error;

use crate::NAME;

/// Converts an I/O error met by `operation` on `path` into the driver-core
/// error: a missing file is `PathNotFound`, a file/directory collision is
/// `InvalidPath`, the rest is a backend error.
pub(crate) fn io_error(operation: &'static str, path: impl ToString, err: io::Error) -> Error {
    use io::ErrorKind as K;
    match err.kind() {
        K::NotFound => Error::not_found(NAME, path),
        K::NotADirectory | K::IsADirectory | K::DirectoryNotEmpty | K::AlreadyExists => {
            Error::invalid_path(
                NAME,
                path,
                format!("a file or directory is in the way ({err})"),
            )
        }
        K::Interrupted | K::WouldBlock | K::TimedOut => {
            Error::backend(NAME, operation, path, true, err)
        }
        _ => Error::backend(NAME, operation, path, false, err),
    }
}
