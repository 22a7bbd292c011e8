use std::fmt::Display;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use driver_core::Error;

use crate::NAME;

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

/// Converts an `object_store` error (the lean read path): not found is
/// `PathNotFound`; refused credentials and requests are permanent; anything
/// else is what its own retries (5xx, throttling, timeouts, connections)
/// gave up on, so temporary.
pub(crate) fn store_error(
    operation: &'static str,
    path: impl Display,
    err: object_store::Error,
) -> Error {
    use object_store::Error as E;
    let temporary = match &err {
        E::NotFound { .. } => return Error::not_found(NAME, path),
        E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented
        | E::UnknownConfigurationKey { .. } => false,
        _ => true,
    };
    Error::backend(NAME, operation, path, temporary, err)
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::config::http::HttpResponse;
    use aws_sdk_s3::error::{ErrorMetadata, SdkError};
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_types::body::SdkBody;
    use driver_core::ErrorKind;

    use super::sdk_error;

    fn service(status: u16, code: &str) -> SdkError<GetObjectError, HttpResponse> {
        let meta = ErrorMetadata::builder().code(code).message("m").build();
        let raw = HttpResponse::new(status.try_into().expect("status"), SdkBody::empty());
        SdkError::service_error(GetObjectError::generic(meta), raw)
    }

    #[test]
    fn not_found_is_path_not_found() {
        let e = sdk_error("get", "/a", service(404, "NoSuchKey"));
        assert_eq!(e.kind(), ErrorKind::PathNotFound);
        assert_eq!(e.driver(), "s3");
    }

    #[test]
    fn throttling_and_server_errors_are_temporary() {
        for (status, code) in [
            (503, "SlowDown"),
            (500, "InternalError"),
            (429, "TooManyRequests"),
            (400, "RequestTimeout"),
        ] {
            let e = sdk_error("get", "/a", service(status, code));
            assert!(e.is_temporary(), "{status} {code}: {e}");
        }
    }

    #[test]
    fn client_errors_are_not_temporary() {
        for (status, code) in [(403, "AccessDenied"), (400, "InvalidArgument")] {
            let e = sdk_error("get", "/a", service(status, code));
            assert_eq!(e.kind(), ErrorKind::Backend);
            assert!(!e.is_temporary(), "{status} {code}: {e}");
        }
    }

    #[test]
    fn object_store_errors_map_like_sdk_errors() {
        use super::store_error;
        let source = || Box::new(std::io::Error::other("x"));
        let missing = object_store::Error::NotFound {
            path: "k".into(),
            source: source(),
        };
        assert_eq!(
            store_error("get", "/a", missing).kind(),
            ErrorKind::PathNotFound
        );
        let denied = object_store::Error::PermissionDenied {
            path: "k".into(),
            source: source(),
        };
        let denied = store_error("get", "/a", denied);
        assert_eq!(denied.kind(), ErrorKind::Backend);
        assert!(!denied.is_temporary());
        let outage = object_store::Error::Generic {
            store: "S3",
            source: source(),
        };
        assert!(store_error("get", "/a", outage).is_temporary());
    }

    #[test]
    fn connection_failures_are_temporary() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e: SdkError<GetObjectError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io(io.into()));
        assert!(sdk_error("get", "/a", e).is_temporary());
    }
}
