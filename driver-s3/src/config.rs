use std::time::Duration;

use driver_core::Secret;
use serde::Deserialize;

const MIB: u64 = 1 << 20;
/// S3's smallest part size (all parts but the last).
pub(crate) const MIN_CHUNK: u64 = 5 * MIB;
/// S3's largest single-request copy.
pub(crate) const MAX_SINGLE_COPY: u64 = 5 << 30;

/// Configuration of [`S3Driver`](crate::S3Driver). Keys follow CNCF
/// distribution's `storage.s3` section where it has one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// The bucket (required).
    pub bucket: String,
    /// The region; S3-compatible servers usually accept any (`us-east-1`).
    pub region: String,
    /// An endpoint URL for S3-compatible servers (`http://127.0.0.1:3900`);
    /// `None` for AWS.
    #[serde(rename = "regionendpoint")]
    pub endpoint: Option<String>,
    /// Access key; with `secret_key`. When both are absent the standard AWS
    /// credential chain is used (environment, profile, instance role).
    #[serde(rename = "accesskey")]
    pub access_key: Option<String>,
    /// Secret key; with `access_key`.
    #[serde(rename = "secretkey")]
    pub secret_key: Option<Secret>,
    /// Path-style addressing (`endpoint/bucket/key`), which most
    /// S3-compatible servers need.
    #[serde(rename = "forcepathstyle")]
    pub force_path_style: bool,
    /// Key prefix every object is stored under (`/registry`, or empty).
    #[serde(rename = "rootdirectory")]
    pub root_directory: String,
    /// Multipart part size in bytes; at least 5 MiB. Writers that stay under
    /// one chunk commit with a single `PutObject`.
    #[serde(rename = "chunksize")]
    pub chunk_size: u64,
    /// Parts a writer uploads at once.
    #[serde(rename = "uploadconcurrency")]
    pub upload_concurrency: usize,
    /// Objects larger than this are moved with a multipart copy (at most 5 GiB).
    #[serde(rename = "multipartcopythresholdsize")]
    pub copy_threshold: u64,
    /// Part size of multipart copies; at least 5 MiB.
    #[serde(rename = "multipartcopychunksize")]
    pub copy_chunk_size: u64,
    /// Parts a multipart copy copies at once.
    #[serde(rename = "multipartcopymaxconcurrency")]
    pub copy_concurrency: usize,
    /// Attempts per request (the SDK's standard retry mode, with backoff).
    #[serde(rename = "maxattempts")]
    pub max_attempts: u32,
    /// When set, `redirect_url` returns presigned URLs valid this many seconds.
    #[serde(rename = "redirectexpiry")]
    pub redirect_expiry_secs: Option<u64>,
    /// Session token of temporary credentials; with `access_key`.
    #[serde(rename = "sessiontoken")]
    pub session_token: Option<Secret>,
    /// With an endpoint given without a scheme: `https` when true (default),
    /// `http` when false. An endpoint URL with a scheme keeps it.
    pub secure: bool,
    /// Signature version 4; the only one supported, so `false` is refused.
    #[serde(rename = "v4auth")]
    pub v4_auth: bool,
    /// Skipping TLS verification is not supported (`true` is refused): add
    /// the server's certificate authority to the system's trust store.
    #[serde(rename = "skipverify")]
    pub skip_verify: bool,
    /// Server-side encryption of every object written: SSE-S3 (`AES256`),
    /// or SSE-KMS when `key_id` is set.
    pub encrypt: bool,
    /// The KMS key of SSE-KMS; with `encrypt`.
    #[serde(rename = "keyid")]
    pub key_id: Option<String>,
    /// Storage class of every object written (`STANDARD`, the default,
    /// `REDUCED_REDUNDANCY`, ...); `NONE` sends none (for servers that
    /// refuse the header).
    #[serde(rename = "storageclass")]
    pub storage_class: String,
    /// Canned ACL of every object written; `private` (the default) sends
    /// none, as it is S3's default.
    #[serde(rename = "objectacl")]
    pub object_acl: String,
    /// Dual-stack (IPv4 and IPv6) AWS endpoints.
    #[serde(rename = "usedualstack")]
    pub use_dual_stack: bool,
    /// S3 Transfer Acceleration endpoints.
    pub accelerate: bool,
    /// Distribution's user agent and AWS SDK log level; accepted, unused
    /// (logging follows the `log` section).
    #[serde(rename = "useragent")]
    pub user_agent: Option<String>,
    /// See `user_agent`.
    #[serde(rename = "loglevel")]
    pub log_level: Option<String>,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            region: "us-east-1".to_owned(),
            endpoint: None,
            access_key: None,
            secret_key: None,
            force_path_style: false,
            root_directory: String::new(),
            chunk_size: 10 * MIB,
            upload_concurrency: 4,
            copy_threshold: 32 * MIB,
            copy_chunk_size: 32 * MIB,
            copy_concurrency: 16,
            max_attempts: 5,
            redirect_expiry_secs: None,
            session_token: None,
            secure: true,
            v4_auth: true,
            skip_verify: false,
            encrypt: false,
            key_id: None,
            storage_class: "STANDARD".to_owned(),
            object_acl: "private".to_owned(),
            use_dual_stack: false,
            accelerate: false,
            user_agent: None,
            log_level: None,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("s3 configuration: {key}: {reason}")]
pub struct ConfigError {
    /// The key or environment variable at fault.
    pub key: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        reason: reason.into(),
    }
}

impl S3Config {
    /// The configuration from the standard AWS variables (`AWS_ENDPOINT_URL`,
    /// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`) plus
    /// `S3_BUCKET`, `S3_ROOT_DIRECTORY` and `S3_CHUNK_SIZE`; `None` when
    /// `S3_BUCKET` is unset. With an endpoint, path-style addressing is on.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`Self::from_env`], with the variables looked up by `lookup`
    /// (an S3 server's environment file, say).
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let var = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let Some(bucket) = var("S3_BUCKET") else {
            return Ok(None);
        };
        let defaults = Self::default();
        let endpoint = var("AWS_ENDPOINT_URL");
        let chunk_size = match var("S3_CHUNK_SIZE") {
            Some(v) => v
                .parse()
                .map_err(|_| invalid("S3_CHUNK_SIZE", format!("{v:?} is not a byte count")))?,
            None => defaults.chunk_size,
        };
        let config = Self {
            bucket,
            region: var("AWS_REGION").unwrap_or(defaults.region.clone()),
            force_path_style: endpoint.is_some(),
            endpoint,
            access_key: var("AWS_ACCESS_KEY_ID"),
            secret_key: var("AWS_SECRET_ACCESS_KEY").map(Secret::from),
            root_directory: var("S3_ROOT_DIRECTORY").unwrap_or_default(),
            chunk_size,
            ..defaults
        };
        config.validate()?;
        Ok(Some(config))
    }

    /// Checks the values: a bucket, sizes S3 accepts, keys in pairs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bucket.is_empty() {
            return Err(invalid("bucket", "is required"));
        }
        if self.chunk_size < MIN_CHUNK {
            return Err(invalid(
                "chunksize",
                format!("{} is below S3's 5 MiB part minimum", self.chunk_size),
            ));
        }
        if self.copy_chunk_size < MIN_CHUNK {
            return Err(invalid("multipartcopychunksize", "must be at least 5 MiB"));
        }
        if self.copy_threshold > MAX_SINGLE_COPY {
            return Err(invalid(
                "multipartcopythresholdsize",
                "must be at most 5 GiB",
            ));
        }
        if self.upload_concurrency == 0 || self.copy_concurrency == 0 || self.max_attempts == 0 {
            return Err(invalid(
                "uploadconcurrency",
                "concurrency and attempts must be at least 1",
            ));
        }
        if self.access_key.is_some() != self.secret_key.is_some() {
            return Err(invalid("accesskey", "accesskey and secretkey go together"));
        }
        if !self.v4_auth {
            return Err(invalid("v4auth", "only signature version 4 is supported"));
        }
        if self.skip_verify {
            return Err(invalid(
                "skipverify",
                "skipping TLS verification is not supported; trust the server's CA instead",
            ));
        }
        if self.key_id.is_some() && !self.encrypt {
            return Err(invalid("keyid", "needs encrypt: true"));
        }
        if self.session_token.is_some() && self.access_key.is_none() {
            return Err(invalid("sessiontoken", "needs accesskey and secretkey"));
        }
        if self.root_directory.split('/').any(|s| s == "@writers") {
            return Err(invalid("rootdirectory", "may not contain @writers"));
        }
        let root_ok = |c: char| c.is_ascii_alphanumeric() || "/._-@".contains(c);
        let root = self.root_directory.trim_matches('/');
        if !root.chars().all(root_ok)
            || (!root.is_empty() && root.split('/').any(|s| matches!(s, "" | "." | "..")))
        {
            return Err(invalid(
                "rootdirectory",
                "may only contain A-Z, a-z, 0-9, '/', '.', '_', '-' and '@', \
                 without empty, '.' or '..' segments",
            ));
        }
        if let Some(endpoint) = self.endpoint_url() {
            let parsed = url::Url::parse(&endpoint)
                .map_err(|e| invalid("regionendpoint", format!("{endpoint:?}: {e}")))?;
            if parsed.host_str().is_none() {
                return Err(invalid(
                    "regionendpoint",
                    format!("{endpoint:?} has no host"),
                ));
            }
        }
        Ok(())
    }

    /// The URL of the bucket, as the SDK client addresses it: virtual-hosted
    /// (`https://bucket.host`) unless `forcepathstyle` is set, the endpoint
    /// is an IP address, or the bucket is no DNS label (then
    /// `https://host/bucket`); AWS endpoints follow `region`, `usedualstack`
    /// and `accelerate`. Needs a validated configuration.
    pub(crate) fn bucket_url(&self) -> String {
        let label = |b: &str| {
            (3..=63).contains(&b.len())
                && b.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !b.starts_with('-')
                && !b.ends_with('-')
        };
        let (scheme, host) = match self.endpoint_url() {
            Some(endpoint) => {
                let url = url::Url::parse(&endpoint).expect("validated endpoint");
                let host = match url.port() {
                    Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
                    None => url.host_str().unwrap_or_default().to_owned(),
                };
                let is_ip = matches!(url.host(), Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)));
                let path = url.path().trim_end_matches('/').to_owned();
                let base = format!("{}://{host}{path}", url.scheme());
                if self.force_path_style || is_ip || !label(&self.bucket) || !path.is_empty() {
                    return format!("{base}/{}", self.bucket);
                }
                (url.scheme().to_owned(), host)
            }
            None => {
                let stack = if self.use_dual_stack {
                    ".dualstack"
                } else {
                    ""
                };
                let host = if self.accelerate {
                    format!("s3-accelerate{stack}.amazonaws.com")
                } else {
                    format!("s3{stack}.{}.amazonaws.com", self.region)
                };
                if (self.force_path_style || !label(&self.bucket)) && !self.accelerate {
                    return format!("https://{host}/{}", self.bucket);
                }
                ("https".to_owned(), host)
            }
        };
        format!("{scheme}://{}.{host}", self.bucket)
    }

    /// The endpoint URL, with the scheme `secure` picks when it has none.
    pub(crate) fn endpoint_url(&self) -> Option<String> {
        self.endpoint.as_ref().map(|e| {
            if e.contains("://") {
                e.clone()
            } else if self.secure {
                format!("https://{e}")
            } else {
                format!("http://{e}")
            }
        })
    }

    pub(crate) fn redirect_expiry(&self) -> Option<Duration> {
        self.redirect_expiry_secs.map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> S3Config {
        S3Config {
            bucket: "b".into(),
            ..S3Config::default()
        }
    }

    #[test]
    fn distribution_keys_are_checked_and_applied() {
        for (bad, key) in [
            (
                S3Config {
                    v4_auth: false,
                    ..valid()
                },
                "v4auth",
            ),
            (
                S3Config {
                    skip_verify: true,
                    ..valid()
                },
                "skipverify",
            ),
            (
                S3Config {
                    key_id: Some("k".into()),
                    ..valid()
                },
                "keyid",
            ),
            (
                S3Config {
                    session_token: Some("t".into()),
                    ..valid()
                },
                "sessiontoken",
            ),
        ] {
            assert_eq!(bad.validate().unwrap_err().key, key);
        }
        let bare = |secure| S3Config {
            endpoint: Some("minio:9000".into()),
            secure,
            ..valid()
        };
        assert_eq!(
            bare(true).endpoint_url().as_deref(),
            Some("https://minio:9000")
        );
        assert_eq!(
            bare(false).endpoint_url().as_deref(),
            Some("http://minio:9000")
        );
        let full = S3Config {
            endpoint: Some("http://127.0.0.1:3900".into()),
            ..valid()
        };
        assert_eq!(
            full.endpoint_url().as_deref(),
            Some("http://127.0.0.1:3900")
        );
    }

    #[test]
    fn rejects_what_s3_would_refuse() {
        assert!(valid().validate().is_ok());
        let small = S3Config {
            chunk_size: MIN_CHUNK - 1,
            ..valid()
        };
        assert_eq!(small.validate().unwrap_err().key, "chunksize");
        let no_bucket = S3Config::default();
        assert_eq!(no_bucket.validate().unwrap_err().key, "bucket");
        let half_keys = S3Config {
            access_key: Some("a".into()),
            ..valid()
        };
        assert_eq!(half_keys.validate().unwrap_err().key, "accesskey");
        let huge_copy = S3Config {
            copy_threshold: MAX_SINGLE_COPY + 1,
            ..valid()
        };
        assert_eq!(
            huge_copy.validate().unwrap_err().key,
            "multipartcopythresholdsize"
        );
        let odd_root = S3Config {
            root_directory: "/reg istry".into(),
            ..valid()
        };
        assert_eq!(odd_root.validate().unwrap_err().key, "rootdirectory");
        for bad in ["a//b", "/a/./b", "../a"] {
            let root = S3Config {
                root_directory: bad.into(),
                ..valid()
            };
            assert_eq!(root.validate().unwrap_err().key, "rootdirectory", "{bad}");
        }
        for good in ["", "/", "/registry/", "a/b.c/d-e_f"] {
            let root = S3Config {
                root_directory: good.into(),
                ..valid()
            };
            assert!(root.validate().is_ok(), "{good}");
        }
        let no_host = S3Config {
            endpoint: Some("http://".into()),
            ..valid()
        };
        assert_eq!(no_host.validate().unwrap_err().key, "regionendpoint");
    }

    #[test]
    fn the_bucket_url_addresses_the_bucket_as_the_sdk_does() {
        let at = |endpoint: Option<&str>, bucket: &str, change: fn(&mut S3Config)| {
            let mut config = S3Config {
                bucket: bucket.into(),
                region: "eu-west-1".into(),
                endpoint: endpoint.map(str::to_owned),
                ..S3Config::default()
            };
            change(&mut config);
            config.validate().expect("valid");
            config.bucket_url()
        };
        let keep = |_: &mut S3Config| {};
        assert_eq!(
            at(None, "cache", keep),
            "https://cache.s3.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            at(None, "cache", |c| c.use_dual_stack = true),
            "https://cache.s3.dualstack.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            at(None, "cache", |c| c.accelerate = true),
            "https://cache.s3-accelerate.amazonaws.com"
        );
        assert_eq!(
            at(None, "cache", |c| c.force_path_style = true),
            "https://s3.eu-west-1.amazonaws.com/cache"
        );
        // Dots would not match the wildcard certificate: path style.
        assert_eq!(
            at(None, "my.cache", keep),
            "https://s3.eu-west-1.amazonaws.com/my.cache"
        );
        assert_eq!(
            at(Some("https://minio.example:9000"), "cache", keep),
            "https://cache.minio.example:9000"
        );
        assert_eq!(
            at(Some("minio.example"), "cache", |c| c.secure = false),
            "http://cache.minio.example"
        );
        assert_eq!(
            at(Some("http://127.0.0.1:3900"), "cache", keep),
            "http://127.0.0.1:3900/cache"
        );
        assert_eq!(
            at(Some("http://[::1]:3900/"), "cache", keep),
            "http://[::1]:3900/cache"
        );
        assert_eq!(
            at(Some("https://minio.example"), "cache", |c| c
                .force_path_style =
                true),
            "https://minio.example/cache"
        );
        assert_eq!(
            at(Some("https://gw.example/s3"), "cache", keep),
            "https://gw.example/s3/cache"
        );
    }
}
