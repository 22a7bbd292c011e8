//! What the upstream client's dealings on the wire share, below the
//! client, its calls and its token flow alike: where a URL's host is
//! ([`Reach`], for redirects and token realms), and answer bodies read
//! within a bound ([`read_bounded`]).

use bytes::Bytes;
use reqwest::{Response, Url};

use super::error::UpstreamError;

/// Where a URL's host is, for redirects and token realms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reach {
    /// This machine: a loopback or unspecified address, `localhost`.
    Loopback,
    /// The local link: `169.254.0.0/16`, `fe80::/10` (cloud metadata
    /// services live there).
    LinkLocal,
    /// Anywhere else (names resolved by DNS are not looked up).
    Remote,
}

/// Where `url`'s host is (names are not looked up).
pub(super) fn reach(url: &Url) -> Reach {
    let v4 = |ip: std::net::Ipv4Addr| {
        if ip.is_loopback() || ip.is_unspecified() {
            Reach::Loopback
        } else if ip.is_link_local() {
            Reach::LinkLocal
        } else {
            Reach::Remote
        }
    };
    match url.host() {
        Some(url::Host::Ipv4(ip)) => v4(ip),
        Some(url::Host::Ipv6(ip)) => match ip.to_ipv4_mapped() {
            Some(mapped) => v4(mapped),
            None if ip.is_loopback() || ip.is_unspecified() => Reach::Loopback,
            None if ip.is_unicast_link_local() => Reach::LinkLocal,
            None => Reach::Remote,
        },
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                Reach::Loopback
            } else {
                Reach::Remote
            }
        }
        None => Reach::Remote,
    }
}

/// The body of `response`, read chunk by chunk up to `limit` bytes: an
/// answer larger (announced, or without a Content-Length and sent) is
/// `Ok(None)` instead of being held whole in memory.
pub(super) async fn read_bounded(
    response: &mut Response,
    limit: usize,
    what: &'static str,
) -> Result<Option<Bytes>, UpstreamError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if bytes.len() + chunk.len() > limit => return Ok(None),
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => return Ok(Some(Bytes::from(bytes))),
            Err(e) => {
                return Err(UpstreamError::Body {
                    what,
                    detail: e.to_string(),
                });
            }
        }
    }
}
