//! What the S3 test files share: the server from the environment, or a
//! printed reason to skip (a failure under `REQUIRE_S3=1`).

use driver_s3::S3Config;

/// The S3 configuration from the environment; `None` (after printing why)
/// when no server is configured, which `REQUIRE_S3=1` turns into a failure.
pub fn config_or_skip(test: &str) -> Option<S3Config> {
    let config = S3Config::from_env().expect("S3 environment");
    if config.is_none() {
        conformance::skip(
            test,
            "REQUIRE_S3",
            "S3_BUCKET is not set (scripts/test.sh starts Garage and sets it)",
        );
    }
    config
}
