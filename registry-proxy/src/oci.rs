//! The OCI distribution vocabulary: repository names, references, digests,
//! media types, and the error type rendered as the OCI JSON error body.

use std::fmt;
use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use driver_core::Segment;
use sha2::{Digest as _, Sha256};

/// The longest repository name accepted.
pub const MAX_NAME_LEN: usize = 255;
/// Manifests larger than this are refused, as registries do.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Largest total of request header names and values accepted.
pub const MAX_HEADER_BYTES: usize = 16 << 10;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Every manifest type this proxy asks upstream for.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// A validated repository name such as `library/alpine`. Its components
/// are storage path segments too (the name grammar is a subset of theirs),
/// so the paths of its content are built without another check.
#[derive(Clone)]
pub struct RepoName {
    name: String,
    segments: Arc<[Segment]>,
}

impl RepoName {
    /// Parses `s`: `/`-separated components of `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`,
    /// at most [`MAX_NAME_LEN`] bytes.
    pub fn parse(s: &str) -> Result<Self, OciError> {
        let invalid = || {
            OciError::new(
                ErrorCode::NameInvalid,
                format!("invalid repository name {s:?}"),
            )
        };
        if s.is_empty() || s.len() > MAX_NAME_LEN || !s.split('/').all(valid_component) {
            return Err(invalid());
        }
        let segments = s
            .split('/')
            .map(Segment::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| invalid())?;
        Ok(Self {
            name: s.to_owned(),
            segments,
        })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// Its components, as storage path segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }
}

impl PartialEq for RepoName {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for RepoName {}

impl std::hash::Hash for RepoName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl PartialOrd for RepoName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RepoName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name.cmp(&other.name)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.name, f)
    }
}

fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    // Separators: '.', '_', '__', or runs of '-', each between alphanumerics.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A content digest; only sha256 is accepted (and verified). Its 32 bytes
/// are the key every layer uses (entries, leases, locks, fills), so it is
/// `Copy` and hashes and compares as bytes; its text form is
/// `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(s: &str) -> Result<Self, OciError> {
        let bad = || OciError::new(ErrorCode::DigestInvalid, format!("invalid digest {s:?}"));
        let (alg, hex) = s.split_once(':').ok_or_else(bad)?;
        match alg {
            "sha256"
                if hex.len() == 64
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                let mut raw = [0; 32];
                hex::decode_to_slice(hex, &mut raw).map_err(|_| bad())?;
                Ok(Self(raw))
            }
            "sha512" => Err(OciError::new(
                ErrorCode::Unsupported,
                "sha512 digests are not supported by this cache",
            )),
            _ => Err(bad()),
        }
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(data))
    }

    /// The digest a finished hasher computed.
    pub fn from_hasher(hasher: Sha256) -> Self {
        Self(hasher.finalize().into())
    }

    /// The hex part: 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The hex part as a storage path segment.
    pub fn hex_segment(&self) -> Segment {
        Segment::hex(&self.0)
    }

    /// The first two hex digits as a storage path segment (distribution
    /// spreads blobs over 256 directories by them).
    pub fn prefix_segment(&self) -> Segment {
        Segment::hex(&self.0[..1])
    }

    /// The 32 bytes the hex part spells.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest whose bytes are `raw`.
    pub fn from_raw(raw: [u8; 32]) -> Self {
        Self(raw)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl AsRef<[u8]> for Digest {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The two kinds of content: what a scheduler entry keeps alive in its
/// repository, and what a counter is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A blob linked into the repository (its `_layers` link).
    Blob,
    /// A manifest of the repository (its revision link and the tags that
    /// point at it).
    Manifest,
}

impl Kind {
    /// The byte the journal stores.
    pub fn code(self) -> u8 {
        match self {
            Self::Blob => 0,
            Self::Manifest => 1,
        }
    }

    /// The kind a journal byte (or registry:2's `EntryType`) names.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Blob),
            1 => Some(Self::Manifest),
            _ => None,
        }
    }
}

/// A tag, `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`: a storage path segment too.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag(Segment);

impl Tag {
    /// Parses a tag.
    pub fn parse(s: &str) -> Result<Self, OciError> {
        let bytes = s.as_bytes();
        let first_ok = bytes
            .first()
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
        let rest_ok = bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        let invalid = || OciError::new(ErrorCode::ManifestInvalid, format!("invalid tag {s:?}"));
        if !(first_ok && rest_ok && s.len() <= 128) {
            return Err(invalid());
        }
        Segment::parse(s).map(Self).map_err(|_| invalid())
    }

    /// The tag.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The tag as a storage path segment.
    pub fn segment(&self) -> &Segment {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A tag.
    Tag(Tag),
    /// A digest.
    Digest(Digest),
}

impl Reference {
    /// Parses a tag or a digest.
    pub fn parse(s: &str) -> Result<Self, OciError> {
        if s.contains(':') {
            return Digest::parse(s).map(Self::Digest);
        }
        Tag::parse(s).map(Self::Tag)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tag(t) => t.fmt(f),
            Self::Digest(d) => d.fmt(f),
        }
    }
}

/// Docker's schema 1 manifest, signed and not.
const DOCKER_SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// Whether `media_type` is one a manifest is served with.
pub fn is_manifest_media_type(media_type: &str) -> bool {
    [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST]
        .iter()
        .chain(&DOCKER_SCHEMA1)
        .any(|known| *known == media_type)
}

/// The media type of manifest bytes: their `mediaType` field when it names
/// a manifest type, else (no field, or one naming anything else, such as
/// `text/html`) index or manifest by their shape. The bytes never choose a
/// type a browser would render.
pub fn manifest_media_type(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Shape {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Shape>(bytes) {
        Ok(Shape {
            media_type: Some(t),
            ..
        }) if is_manifest_media_type(&t) => t,
        Ok(Shape {
            manifests: Some(_), ..
        }) => OCI_INDEX.to_owned(),
        _ => OCI_MANIFEST.to_owned(),
    }
}

/// The digests a manifest references, each with `true` for a manifest (an
/// index's children) and `false` for a blob (config and layers). Bytes
/// that are not a manifest reference nothing; malformed digests are left
/// out.
pub fn manifest_references(bytes: &[u8]) -> Vec<(Digest, bool)> {
    manifest_descriptors(bytes)
        .into_iter()
        .map(|(digest, is_manifest, _)| (digest, is_manifest))
        .collect()
}

/// [`manifest_references`], each with the size its descriptor gives (0
/// when it gives none).
pub fn manifest_descriptors(bytes: &[u8]) -> Vec<(Digest, bool, u64)> {
    #[derive(serde::Deserialize)]
    struct Descriptor {
        digest: String,
        /// Whatever it holds: a size that is not one counts as 0, and
        /// does not cost the manifest its references.
        #[serde(default)]
        size: serde_json::Value,
    }
    #[derive(serde::Deserialize)]
    struct References {
        config: Option<Descriptor>,
        #[serde(default)]
        layers: Vec<Descriptor>,
        #[serde(default)]
        manifests: Vec<Descriptor>,
    }
    let Ok(refs) = serde_json::from_slice::<References>(bytes) else {
        return Vec::new();
    };
    let blobs = refs.config.iter().chain(&refs.layers).map(|d| (d, false));
    blobs
        .chain(refs.manifests.iter().map(|d| (d, true)))
        .filter_map(|(d, is_manifest)| {
            let size = d.size.as_u64().unwrap_or(0);
            Some((Digest::parse(&d.digest).ok()?, is_manifest, size))
        })
        .collect()
}

/// A platform, `os/architecture[/variant]`, as an index's descriptors
/// give it and as operators name it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Platform {
    /// `linux`, `windows`, ...
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v7`, `v8`, ...
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/architecture[/variant]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        match parts[..] {
            [os, architecture] | [os, architecture, _] if parts.iter().all(ok) => Ok(Self {
                os: os.to_owned(),
                architecture: architecture.to_owned(),
                variant: parts.get(2).map(|v| (*v).to_owned()),
            }),
            _ => Err(format!(
                "{s:?} is not a platform (os/architecture[/variant])"
            )),
        }
    }

    /// Whether `found` is this platform: the same OS and architecture, and
    /// the same variant when this one names one.
    pub fn admits(&self, found: &Platform) -> bool {
        self.os == found.os
            && self.architecture == found.architecture
            && (self.variant.is_none() || self.variant == found.variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(variant) => write!(f, "/{variant}"),
            None => Ok(()),
        }
    }
}

/// The children of an index with the platform each descriptor gives
/// (none for bytes that are not an index).
pub fn child_platforms(bytes: &[u8]) -> Vec<(Digest, Option<Platform>)> {
    #[derive(serde::Deserialize)]
    struct Child {
        digest: String,
        platform: Option<Platform>,
    }
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<Child>,
    }
    serde_json::from_slice::<Index>(bytes)
        .map(|index| {
            index
                .manifests
                .into_iter()
                .filter_map(|c| Some((Digest::parse(&c.digest).ok()?, c.platform)))
                .collect()
        })
        .unwrap_or_default()
}

/// The OCI error codes this proxy answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Blob unknown to the registry.
    BlobUnknown,
    /// Digest invalid.
    DigestInvalid,
    /// Manifest invalid.
    ManifestInvalid,
    /// Manifest unknown.
    ManifestUnknown,
    /// Invalid repository name.
    NameInvalid,
    /// Repository name not known.
    NameUnknown,
    /// `n` of a paginated listing is not a number.
    PaginationNumberInvalid,
    /// Requested range not satisfiable.
    RangeInvalid,
    /// Authentication required (upstream refused us).
    Unauthorized,
    /// Access denied (upstream refused us).
    Denied,
    /// The operation is unsupported.
    Unsupported,
    /// Too many requests (upstream throttles).
    TooManyRequests,
    /// Upstream unreachable or failing, nothing cached.
    Unavailable,
    /// The request's headers exceed [`MAX_HEADER_BYTES`].
    HeadersTooLarge,
    /// The blob is larger than this cache fills.
    BlobTooLarge,
}

impl ErrorCode {
    fn as_str(self) -> &'static str {
        match self {
            Self::BlobUnknown => "BLOB_UNKNOWN",
            Self::DigestInvalid => "DIGEST_INVALID",
            Self::ManifestInvalid => "MANIFEST_INVALID",
            Self::ManifestUnknown => "MANIFEST_UNKNOWN",
            Self::NameInvalid => "NAME_INVALID",
            Self::NameUnknown => "NAME_UNKNOWN",
            Self::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            Self::RangeInvalid => "RANGE_INVALID",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Denied => "DENIED",
            Self::Unsupported => "UNSUPPORTED",
            Self::TooManyRequests => "TOOMANYREQUESTS",
            Self::Unavailable => "UNAVAILABLE",
            Self::HeadersTooLarge | Self::BlobTooLarge => "SIZE_INVALID",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Self::BlobUnknown | Self::ManifestUnknown | Self::NameUnknown => StatusCode::NOT_FOUND,
            Self::DigestInvalid
            | Self::BlobTooLarge
            | Self::ManifestInvalid
            | Self::NameInvalid
            | Self::PaginationNumberInvalid => StatusCode::BAD_REQUEST,
            Self::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Denied => StatusCode::FORBIDDEN,
            Self::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }
}

/// An error answered with the OCI JSON body
/// `{"errors":[{"code":…,"message":…}]}`. `Display` stays human.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct OciError {
    /// The code.
    pub code: ErrorCode,
    /// A message for people.
    pub message: String,
    /// When the client may try again (a `Retry-After` value passed on
    /// from the upstream's 429 or 503).
    pub retry_after: Option<HeaderValue>,
}

impl OciError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }
}

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{ "code": self.code.as_str(), "message": self.message, "detail": null }]
        });
        let mut response = (self.code.status(), body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(after) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, after);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "alpine",
            "library/alpine",
            "a/b/c/d",
            "my-app",
            "my--app",
            "a.b",
            "a_b",
            "a__b",
            "0",
        ] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Alpine",
            "a//b",
            "/a",
            "a/",
            "-a",
            "a-",
            "a___b",
            "a..b",
            "a/../b",
            "a%2fb",
            &"a".repeat(256),
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn references() {
        assert_eq!(
            Reference::parse("latest").expect("tag"),
            Reference::Tag(Tag::parse("latest").expect("tag"))
        );
        assert!(Reference::parse(".hidden").is_err());
        assert!(Reference::parse(&"t".repeat(129)).is_err());
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(Reference::parse(&d), Ok(Reference::Digest(_))));
        assert!(Reference::parse("sha256:abc").is_err());
        assert!(
            Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err(),
            "uppercase hex"
        );
    }

    #[test]
    fn digest_of_empty() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn media_type_detection() {
        assert_eq!(
            manifest_media_type(
                br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#
            ),
            DOCKER_MANIFEST
        );
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"manifests":[]}"#),
            OCI_INDEX
        );
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"layers":[]}"#),
            OCI_MANIFEST
        );
        // A mediaType naming no manifest type does not choose the type.
        assert_eq!(
            manifest_media_type(br#"{"mediaType":"text/html","layers":[]}"#),
            OCI_MANIFEST
        );
        assert_eq!(
            manifest_media_type(br#"{"mediaType":"image/svg+xml","manifests":[]}"#),
            OCI_INDEX
        );
    }
}
