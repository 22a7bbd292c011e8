//! A registry client for one upstream: [`Upstream`] asks for manifests, tag
//! lists and blobs ([`registry`]) over an authenticated HTTP client
//! ([`client`], [`auth`]; what they share on the wire in `wire`) and answers with bytes, digests and typed
//! [`UpstreamError`]s ([`error`]); no caller reads a status or a header.

pub mod auth;
pub mod client;
pub mod ecr;
pub mod error;
pub mod exec;
pub mod heard;
pub mod limits;
mod refresh;
pub mod registry;
mod wire;

pub use auth::{Challenge, Credentials, parse_challenge};
pub use client::{Deadline, Fallback, PullBudget, Reserve, Upstream, UpstreamPlan, UpstreamTls};
pub use error::{Asked, UpstreamError};
pub use heard::{Heard, RateLimit};
pub use registry::{BlobBody, Fetched};
