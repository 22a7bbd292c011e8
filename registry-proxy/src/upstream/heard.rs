//! What the cache last heard from an upstream: whether it answered, its
//! last failure, and the pull budget it announced (Docker Hub's
//! `ratelimit-limit` and `ratelimit-remaining`, `100;w=21600`).

use std::time::SystemTime;

use reqwest::header::HeaderMap;

/// The pull budget an upstream announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RateLimit {
    /// Pulls allowed per window.
    pub limit: u64,
    /// Pulls left in this window.
    pub remaining: u64,
    /// The window, in seconds, when given.
    pub window_secs: Option<u64>,
    /// When it was announced.
    pub at: SystemTime,
}

impl RateLimit {
    /// The budget `headers` announce, if they announce one.
    pub fn from_headers(headers: &HeaderMap, at: SystemTime) -> Option<Self> {
        let (limit, window) = budget_header(headers, "ratelimit-limit")?;
        let (remaining, _) = budget_header(headers, "ratelimit-remaining")?;
        Some(Self {
            limit,
            remaining,
            window_secs: window,
            at,
        })
    }
}

/// `N;w=SECONDS` (the window optional) of header `name`.
fn budget_header(headers: &HeaderMap, name: &str) -> Option<(u64, Option<u64>)> {
    let value = headers.get(name)?.to_str().ok()?;
    let mut parts = value.split(';');
    let n = parts.next()?.trim().parse().ok()?;
    let window = parts.find_map(|p| p.trim().strip_prefix("w=")?.parse().ok());
    Some((n, window))
}

/// What the cache last heard from an upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Heard {
    /// When it last answered (any answer but 5xx and 429).
    pub last_answer: Option<SystemTime>,
    /// When it last failed, and how (unreachable, 5xx, 429).
    pub last_failure: Option<(SystemTime, String)>,
    /// Failures since its last answer.
    pub failures_in_a_row: u32,
    /// The pull budget it last announced.
    pub rate_limit: Option<RateLimit>,
}

impl Heard {
    /// Notes an answer with `status` and `headers`; the pull budget it
    /// announced, if any.
    pub fn answered(
        &mut self,
        status: reqwest::StatusCode,
        headers: &HeaderMap,
        at: SystemTime,
    ) -> Option<RateLimit> {
        let announced = RateLimit::from_headers(headers, at);
        if announced.is_some() {
            self.rate_limit = announced;
        }
        if super::error::is_outage(status) {
            self.failed(format!("answered {status}"), at);
        } else {
            self.last_answer = Some(at);
            self.failures_in_a_row = 0;
        }
        announced
    }

    /// Notes a failure to get an answer.
    pub fn failed(&mut self, why: String, at: SystemTime) {
        self.last_failure = Some((at, why));
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hubs_budget_and_failures_are_read() {
        let at = SystemTime::UNIX_EPOCH;
        let mut headers = HeaderMap::new();
        headers.insert("ratelimit-limit", "100;w=21600".parse().expect("value"));
        headers.insert("ratelimit-remaining", "76;w=21600".parse().expect("value"));
        let mut heard = Heard::default();
        heard.failed("unreachable".into(), at);
        heard.answered(reqwest::StatusCode::OK, &headers, at);
        assert_eq!(heard.failures_in_a_row, 0);
        assert_eq!(
            heard.rate_limit,
            Some(RateLimit {
                limit: 100,
                remaining: 76,
                window_secs: Some(21600),
                at
            })
        );
        heard.answered(
            reqwest::StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            at,
        );
        assert_eq!(heard.failures_in_a_row, 1);
        assert_eq!(heard.rate_limit.map(|r| r.remaining), Some(76), "kept");
        headers.insert("ratelimit-remaining", "lots".parse().expect("value"));
        assert_eq!(RateLimit::from_headers(&headers, at), None);
    }
}
