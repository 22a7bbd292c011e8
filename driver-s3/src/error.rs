use std::fmt::Display;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use driver_core::Error;

use crate::driver::NAME;

fn status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// Whether an SDK error means the object (or upload) is not there.
pub(crate) fn is_not_found<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    status(err) == Some(404)
        || matches!(err.code(), Some("NoSuchKey" | "NotFound" | "NoSuchUpload"))
}

/// Converts an SDK error: not found is `PathNotFound`; throttling, server
/// errors, timeouts and connection failures are temporary backend errors.
pub(crate) fn sdk_error<E>(
    operation: &'static str,
    path: impl Display,
    err: SdkError<E, HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if is_not_found(&err) {
        return Error::not_found(NAME, path);
    }
    let status = status(&err);
    let temporary = matches!(
        err,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
    ) || status.is_some_and(|s| s >= 500 || s == 429)
        || matches!(
            err.code(),
            Some("SlowDown" | "Throttling" | "RequestTimeout")
        );
    let detail = format!("{}", DisplayErrorContext(&err));
    Error::backend(NAME, operation, path, temporary, detail)
}
