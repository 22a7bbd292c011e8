//! Who a failed login counts against, and for how long it then waits:
//! its client (an IPv4 address or an IPv6 /64, from a trusted reverse
//! proxy's header when one is in front) and its user name.

use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName};
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use crate::sync::{Fifo, lock};

/// Failures from one client tolerated before it is made to wait.
pub(super) const FREE_FAILURES: u32 = 5;

/// Failures for one user name, from any clients, tolerated before its
/// unverified logins wait: more, as anyone can cause them (credentials
/// already verified are remembered and never wait).
pub(super) const FREE_USER_FAILURES: u32 = 20;

/// The longest a client or user is made to wait after failures.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Clients, and user names, whose failures are remembered at most.
const TRACKED_ADDRESSES: usize = 10_000;

/// Recent failures of one client or user name.
#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Recent failures by key, past [`TRACKED_ADDRESSES`] forgetting the key
/// that first failed longest ago.
pub(super) struct Throttle<K> {
    /// Failures tolerated before a key waits.
    free: u32,
    failures: Mutex<Fifo<K, Failures>>,
}

impl<K: Hash + Eq + Clone> Throttle<K> {
    pub(super) fn new(free: u32) -> Self {
        Self {
            free,
            failures: Mutex::new(Fifo::new(TRACKED_ADDRESSES)),
        }
    }

    /// How long `key` must still wait, if its failures exceeded the free
    /// ones.
    pub(super) fn backoff(&self, key: &K) -> Option<Duration> {
        let failures = *lock(&self.failures).get(key)?;
        let over = failures.count.checked_sub(self.free)?;
        let wait = Duration::from_secs(1)
            .saturating_mul(1 << over.min(6))
            .min(MAX_BACKOFF);
        let until = failures.last + wait;
        let now = Instant::now();
        (until > now).then(|| until - now)
    }

    /// Counts a failure of `key`.
    pub(super) fn failed(&self, key: K) {
        let mut failures = lock(&self.failures);
        let now = Instant::now();
        match failures.get_mut(&key) {
            Some(entry) => {
                entry.count = entry.count.saturating_add(1);
                entry.last = now;
            }
            None => {
                // The oldest failures forgotten past the bound: fine.
                let _ = failures.insert(
                    key,
                    Failures {
                        count: 1,
                        last: now,
                    },
                    1,
                );
            }
        }
    }

    /// Forgets the failures of `key`.
    pub(super) fn forgive(&self, key: &K) {
        lock(&self.failures).remove(key);
    }
}

/// An address range: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// `text` as an address range, or `None` when it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, bits) = match text.trim().split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (text.trim(), None),
        };
        let net = addr.parse::<IpAddr>().ok()?.to_canonical();
        let width = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(bits) => bits.parse::<u8>().ok().filter(|b| *b <= width)?,
            None => width,
        };
        Some(Self { net, bits })
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let same =
            |a: u128, b: u128| self.bits == 0 || (a ^ b) >> (128 - u32::from(self.bits)) == 0;
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => same(
                u128::from(u32::from(net)) << 96,
                u128::from(u32::from(ip)) << 96,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => same(u128::from(net), u128::from(ip)),
            _ => false,
        }
    }
}

/// Where a request's client address comes from (`auth.htpasswd.clientheader`
/// and `trustedproxies`): the connection's peer, unless the peer is a
/// trusted reverse proxy, whose header then names the client.
#[derive(Debug, Clone, Default)]
pub struct ClientAddress {
    header: Option<HeaderName>,
    proxies: Vec<Cidr>,
}

impl ClientAddress {
    /// Clients named by `header` (`X-Forwarded-For`, `X-Real-IP`) when the
    /// peer is in one of `proxies`, or is a Unix socket's client (a local
    /// process); `None`: the peer is the client.
    pub fn new(header: Option<HeaderName>, proxies: Vec<Cidr>) -> Self {
        Self { header, proxies }
    }

    /// The client of a request from `peer` (the connection's address, if
    /// known) with `headers`: the last address of the header when the peer
    /// is trusted and the header holds one, else the peer. A Unix socket's
    /// clients (an unspecified peer address, as the listener gives them)
    /// are no client without the header: only their user names throttle
    /// them, rather than one counter for all.
    pub fn of(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let local = peer.is_some_and(|p| p.is_unspecified());
        let peer = peer.filter(|p| !p.is_unspecified());
        let Some(name) = &self.header else {
            return peer;
        };
        let trusted = local || peer.is_some_and(|p| self.proxies.iter().any(|c| c.contains(p)));
        if !trusted {
            return peer;
        }
        headers
            .get_all(name)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|a| address(a.trim()))
            .or(peer)
    }
}

/// The address of an `X-Forwarded-For` entry: `192.0.2.1`, `2001:db8::1`,
/// or either with a port (`[2001:db8::1]:443`).
fn address(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

/// The key a client's failures are counted by: its IPv4 address, or the
/// /64 of its IPv6 one (which a client may otherwise rotate through).
pub(super) fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::MAX >> 64))),
        v4 => v4,
    }
}

/// The key a user name's failures are counted by.
pub(super) fn user_key(user: &str) -> [u8; 32] {
    Sha256::digest(user.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_ranges() {
        let range = Cidr::parse("10.0.0.0/8").expect("cidr");
        assert!(range.contains("10.200.0.1".parse().expect("ip")));
        assert!(range.contains("::ffff:10.0.0.1".parse().expect("ip")));
        assert!(!range.contains("11.0.0.1".parse().expect("ip")));
        let one = Cidr::parse("2001:db8::1").expect("cidr");
        assert!(one.contains("2001:db8::1".parse().expect("ip")));
        assert!(!one.contains("2001:db8::2".parse().expect("ip")));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("any")
                .contains("192.0.2.1".parse().expect("ip"))
        );
        for bad in ["10.0.0.0/33", "10.0.0/8", "proxy", "::/129"] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }
}
