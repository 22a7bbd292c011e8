//! The independent S3 client (`object_store`) of the S3 tests and the
//! reference of the S3 benchmark.

use driver_s3::S3Config;
use object_store::aws::{AmazonS3, AmazonS3Builder};

/// An `object_store` client for the bucket of `config`: the independent
/// witness of the tests and the reference of the benchmark.
pub fn object_store_client(config: &S3Config) -> AmazonS3 {
    AmazonS3Builder::new()
        .with_endpoint(config.endpoint.clone().unwrap_or_default())
        .with_allow_http(true)
        .with_region(&config.region)
        .with_bucket_name(&config.bucket)
        .with_access_key_id(config.access_key.clone().unwrap_or_default())
        .with_secret_access_key(
            config
                .secret_key
                .as_ref()
                .map(|s| s.expose().to_owned())
                .unwrap_or_default(),
        )
        .with_virtual_hosted_style_request(false)
        .build()
        .expect("object_store client")
}
