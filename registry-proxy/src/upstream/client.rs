//! The HTTP client to one upstream registry: requests to `/v2/<repo>/...`
//! under the upstream's base path, authenticated as it asks (one refresh on
//! a 401) with the credentials of the URL asked (each URL of a chain has
//! its own, or none), within a deadline, through a redirect policy that
//! never leaves https nor reaches loopback or link-local addresses the URL
//! first asked is not on itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::ACCEPT;
use reqwest::{Method, Response, StatusCode, Url};

use super::auth::{Auth, Credentials, Source};
use super::error::{UpstreamError, describe, is_outage};
use super::limits::Turn;
use super::wire::{Reach, reach};
use crate::metrics::Metrics;
use crate::oci::RepoName;

/// How long an upstream request may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// The whole exchange, body included: small answers read at once
    /// (manifests, tag lists, tokens, proofs).
    Whole(Duration),
    /// Only the wait for the response head: a streamed body (a blob fill)
    /// is bounded by its reader, by how long it waits between bytes.
    Head(Duration),
}

impl Deadline {
    fn duration(self) -> Duration {
        match self {
            Self::Whole(d) | Self::Head(d) => d,
        }
    }
}

/// How the client trusts an https upstream beyond the platform's roots
/// (the system store, `SSL_CERT_FILE` and `SSL_CERT_DIR` honoured) and the
/// compiled-in web roots.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// More roots: a PEM bundle (a company CA).
    pub ca_pem: Option<Vec<u8>>,
    /// Accept any certificate (a self-signed lab registry); warned about.
    pub insecure: bool,
    /// A client certificate and its key, PEM, for an upstream that asks
    /// for one (never printed).
    pub identity_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for UpstreamTls {
    /// The bundle's size, not its bytes (`check-config` prints plans).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field(
                "ca_pem",
                &self
                    .ca_pem
                    .as_ref()
                    .map(|pem| format!("{} bytes", pem.len())),
            )
            .field("insecure", &self.insecure)
            .field(
                "identity_pem",
                &self.identity_pem.as_ref().map(|_| "(a client certificate)"),
            )
            .finish()
    }
}

impl UpstreamTls {
    /// Checks that `pem` holds a client certificate and its key.
    pub fn check_identity(pem: &[u8]) -> Result<(), String> {
        reqwest::Identity::from_pem(pem)
            .map(drop)
            .map_err(|e| format!("not a PEM certificate and key: {e}"))
    }

    /// Checks that `pem` is a bundle of at least one certificate.
    pub fn check_bundle(pem: &[u8]) -> Result<(), String> {
        match reqwest::Certificate::from_pem_bundle(pem) {
            Ok(certs) if !certs.is_empty() => Ok(()),
            Ok(_) => Err("holds no certificate".to_owned()),
            Err(e) => Err(format!("not a PEM certificate bundle: {e}")),
        }
    }
}

/// A URL asked after the ones before it fail, with its own credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct Fallback {
    /// The URL.
    pub url: Url,
    /// Its credentials; `None`: it is asked anonymously (the first URL's
    /// never go to it).
    pub credentials: Credentials,
}

/// How a namespace's upstream is reached and treated beyond its URL,
/// credentials and TLS (the configuration's `remoteurls`, `remoteretry`,
/// `maxconcurrent`, `maxbandwidth`, `pullbudget` and `exec`).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamPlan {
    /// URLs asked, in order, when the ones before fail (unreachable,
    /// 5xx, 429), each with its own credentials.
    pub fallbacks: Vec<Fallback>,
    /// How long a failing URL is passed over before it is asked again.
    pub retry: Duration,
    /// Upstream requests at once, when capped: as many blob bodies, and
    /// as many small requests (manifests, tags, proofs, tokens) besides.
    pub max_concurrent: Option<usize>,
    /// Blob bytes per second from the upstream, when capped.
    pub max_bandwidth: Option<u64>,
    /// When the announced pull budget counts as low, and the tag
    /// freshness then.
    pub pull_budget: PullBudget,
    /// A command that prints the first URL's credentials, instead of
    /// fixed ones.
    pub exec: Option<super::exec::Exec>,
    /// The region of an Amazon ECR first URL whose tokens come from the
    /// AWS credential chain (found from an ECR host when unset, for every
    /// URL without credentials).
    pub ecr_region: Option<String>,
}

impl Default for UpstreamPlan {
    /// One URL, no caps, the default pull budget, fixed credentials.
    fn default() -> Self {
        Self {
            fallbacks: Vec::new(),
            retry: Duration::from_secs(30),
            max_concurrent: None,
            max_bandwidth: None,
            pull_budget: PullBudget::default(),
            exec: None,
            ecr_region: None,
        }
    }
}

/// When an upstream's announced pull budget (Docker Hub's
/// `ratelimit-remaining`) counts as low, and how long cached tags are
/// trusted then.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PullBudget {
    /// Pulls left at or under which the budget is low.
    pub reserve: Reserve,
    /// The tag freshness while it is low (if longer than the usual one).
    pub freshness: Duration,
}

impl Default for PullBudget {
    /// 10% of the limit; tags trusted for an hour while that low.
    fn default() -> Self {
        Self {
            reserve: Reserve::Percent(10.0),
            freshness: Duration::from_secs(3600),
        }
    }
}

/// A number of pulls, or a share of the announced limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reserve {
    /// This many pulls.
    Pulls(u64),
    /// This percentage of the limit.
    Percent(f64),
}

impl Reserve {
    /// Whether `remaining` of `limit` is at or under the reserve.
    fn reached(self, remaining: u64, limit: u64) -> bool {
        match self {
            Self::Pulls(n) => remaining <= n,
            Self::Percent(p) => (remaining as f64) <= limit as f64 * p / 100.0,
        }
    }
}

/// One URL of an upstream and what it has shown.
struct Mirror {
    base: Url,
    auth: Auth,
    heard: std::sync::Mutex<super::Heard>,
    /// Passed over until then, after a failure.
    passed_over_until: std::sync::Mutex<Option<Instant>>,
}

/// The upstream registry: one URL, or a chain of them.
pub struct Upstream {
    mirrors: Vec<Mirror>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    /// The namespace it serves, for metrics and logs.
    namespace: String,
    limits: Arc<super::limits::Limits>,
    retry: Duration,
    pull_budget: PullBudget,
    /// Whether the announced pull budget is at or under the reserve.
    budget_low: AtomicBool,
    /// The mirror that answered last.
    answering: AtomicUsize,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base().as_str())
            .field("fallbacks", &(self.mirrors.len() - 1))
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// A client for the registry at `base` (`https://registry-1.docker.io`)
    /// with `credentials`, and the fallbacks, caps and credential helper of
    /// `plan`. `connect_timeout` bounds connecting; each request passes its
    /// own timeout to [`Upstream::send`] (fills bound blob bodies by
    /// idleness).
    pub fn new(
        base: Url,
        credentials: Credentials,
        tls: &UpstreamTls,
        connect_timeout: Duration,
        plan: &UpstreamPlan,
    ) -> Self {
        // Docker Hub sends blobs to a CDN. reqwest drops the Authorization
        // header when a redirect leaves the upstream's host; this policy
        // also refuses a redirect to a loopback or link-local address (a
        // cloud metadata service) unless the URL first asked (an upstream
        // URL of the chain, or a token realm checked against its URL) is
        // one of that kind, and from https to plain http.
        let policy = reqwest::redirect::Policy::custom(|attempt| {
            let (secure, home) = attempt
                .previous()
                .first()
                .map_or((true, Reach::Remote), |first| {
                    (first.scheme() == "https", reach(first))
                });
            if attempt.previous().len() >= 5 {
                attempt.error("more than 5 redirects")
            } else if secure && attempt.url().scheme() != "https" {
                attempt.error("a redirect from https to plain http")
            } else if ![Reach::Remote, home].contains(&reach(attempt.url())) {
                attempt.error("a redirect to a loopback or link-local address")
            } else {
                attempt.follow()
            }
        });
        let mut builder = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .redirect(policy)
            .danger_accept_invalid_certs(tls.insecure);
        // Checked when the configuration was read.
        let roots = tls
            .ca_pem
            .as_deref()
            .map(reqwest::Certificate::from_pem_bundle);
        for root in roots.into_iter().flatten().flatten() {
            builder = builder.add_root_certificate(root);
        }
        // Checked when the configuration was read.
        if let Some(identity) = tls
            .identity_pem
            .as_deref()
            .and_then(|pem| reqwest::Identity::from_pem(pem).ok())
        {
            builder = builder.identity(identity);
        }
        let client = builder.build().unwrap_or_default();
        // The first URL has the namespace's credentials, helper or ECR
        // region; every other one only its own.
        let first = (
            base,
            credentials,
            plan.exec.as_ref(),
            plan.ecr_region.as_deref(),
        );
        let rest = plan
            .fallbacks
            .iter()
            .map(|f| (f.url.clone(), f.credentials.clone(), None, None));
        let mirrors = std::iter::once(first)
            .chain(rest)
            .map(|(base, credentials, exec, region)| {
                let helper = source(&base, &credentials, exec, region);
                Mirror {
                    auth: Auth::new(base.clone(), credentials, helper),
                    base,
                    heard: std::sync::Mutex::default(),
                    passed_over_until: std::sync::Mutex::default(),
                }
            })
            .collect();
        Self {
            mirrors,
            client,
            metrics: Arc::new(Metrics::default()),
            namespace: String::new(),
            limits: Arc::new(super::limits::Limits::new(
                plan.max_concurrent,
                plan.max_bandwidth,
            )),
            retry: plan.retry,
            pull_budget: plan.pull_budget,
            budget_low: AtomicBool::new(false),
            answering: AtomicUsize::new(0),
        }
    }

    /// Reports request latencies, errors, answers and the pull budget
    /// into `metrics`, labelled with `namespace`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>, namespace: &str) -> Self {
        self.metrics = metrics;
        self.namespace = namespace.to_owned();
        self
    }

    /// What the cache last heard from the upstream (its first URL).
    pub fn heard(&self) -> super::Heard {
        crate::sync::lock(&self.mirrors[0].heard).clone()
    }

    /// The upstream's base URL (for logs: it holds no credentials): the
    /// first of its URLs.
    pub fn base(&self) -> &Url {
        &self.mirrors[0].base
    }

    /// The URLs asked after the first one fails.
    pub fn fallbacks(&self) -> impl Iterator<Item = &Url> {
        self.mirrors[1..].iter().map(|m| &m.base)
    }

    /// How long a cached tag is trusted: `usual`, or the pull budget's
    /// longer freshness while the announced budget is low.
    pub fn tag_freshness(&self, usual: Duration) -> Duration {
        if self.budget_low.load(Ordering::Relaxed) {
            usual.max(self.pull_budget.freshness)
        } else {
            usual
        }
    }

    /// The longest a cached tag may be trusted: `usual`, or the pull
    /// budget's freshness if longer.
    pub fn longest_tag_freshness(&self, usual: Duration) -> Duration {
        usual.max(self.pull_budget.freshness)
    }

    /// The caps on requests and bytes.
    pub(crate) fn limits(&self) -> &Arc<super::limits::Limits> {
        &self.limits
    }

    /// `<base>/v2/<repo>/<rest>`, keeping a path the base URL has
    /// (`https://host/prefix` asks `https://host/prefix/v2/...`).
    fn url(base: &Url, repo: &RepoName, rest: &str) -> Result<Url, UpstreamError> {
        let prefix = base.path().trim_end_matches('/');
        base.join(&format!("{prefix}/v2/{}/{rest}", repo.as_str()))
            .map_err(|e| UpstreamError::Unreachable(e.to_string()))
    }

    /// The order its URLs are asked in now: those not passed over, in
    /// their order, then the passed-over ones (a chain that is all down
    /// is still asked).
    fn order(&self) -> Vec<usize> {
        let now = Instant::now();
        let (up, down): (Vec<usize>, Vec<usize>) = (0..self.mirrors.len()).partition(|&i| {
            crate::sync::lock(&self.mirrors[i].passed_over_until).is_none_or(|until| until <= now)
        });
        up.into_iter().chain(down).collect()
    }

    /// Sends `method` to `/v2/<repo>/<rest>`, authenticating as the upstream
    /// asks, within `deadline` (token requests on the way take at most as
    /// long, whole; a credential helper is waited for within it), at most
    /// `maxconcurrent` of this `turn` at once: the permit returned holds the
    /// turn until dropped, and is taken once the helper's credentials are
    /// ready. A URL that fails (unreachable, 5xx, 429) is passed over for
    /// `remoteretry` and the next one is asked.
    pub(crate) async fn send(
        &self,
        method: Method,
        repo: &RepoName,
        rest: &str,
        accept: Option<&str>,
        deadline: Deadline,
        turn: Turn,
    ) -> Result<(Response, super::limits::Permit), UpstreamError> {
        let until = Instant::now() + deadline.duration();
        let order = self.order();
        if let Some(&first) = order.first() {
            let scope = Auth::scope(repo.as_str());
            self.mirrors[first].auth.prepare(&scope, left(until)).await;
        }
        let permit = self.limits.permit(turn, left(until)).await.ok_or_else(|| {
            UpstreamError::Unreachable(format!(
                "no turn to ask the upstream within {:?}: maxconcurrent requests are running",
                deadline.duration()
            ))
        })?;
        let mut last = None;
        for (n, &i) in order.iter().enumerate() {
            let answer = self
                .ask(
                    &self.mirrors[i],
                    &method,
                    repo,
                    rest,
                    accept,
                    deadline,
                    until,
                )
                .await;
            let failed = match &answer {
                Ok(response) => is_outage(response.status()),
                Err(e) => e.is_outage(),
            };
            let mirror = &self.mirrors[i];
            if failed && self.mirrors.len() > 1 {
                *crate::sync::lock(&mirror.passed_over_until) = Some(Instant::now() + self.retry);
                if n + 1 < order.len() {
                    tracing::warn!(namespace = %self.namespace, upstream = %mirror.base, "upstream failed; asking the next one");
                }
                last = Some(answer);
                continue;
            }
            if !failed {
                *crate::sync::lock(&mirror.passed_over_until) = None;
                self.metrics
                    .upstream_answer(&self.namespace, mirror.base.as_str());
                if self.answering.swap(i, Ordering::Relaxed) != i {
                    tracing::info!(namespace = %self.namespace, upstream = %mirror.base, "now answered by this upstream");
                }
            }
            return answer.map(|response| (response, permit));
        }
        last.unwrap_or_else(|| Err(UpstreamError::Unreachable("no upstream URL".into())))
            .map(|response| (response, permit))
    }

    /// One URL asked, in its span, and what it answered noted.
    #[allow(clippy::too_many_arguments)]
    async fn ask(
        &self,
        mirror: &Mirror,
        method: &Method,
        repo: &RepoName,
        rest: &str,
        accept: Option<&str>,
        deadline: Deadline,
        until: Instant,
    ) -> Result<Response, UpstreamError> {
        use tracing::Instrument as _;
        let url = Self::url(&mirror.base, repo, rest)?;
        let span = tracing::info_span!(
            "upstream",
            otel.kind = "client",
            otel.name = %format_args!("{method} upstream"),
            http.request.method = %method,
            server.address = url.host_str(),
            url.path = url.path(),
            http.response.status_code = tracing::field::Empty,
        );
        let answer = self
            .exchange(mirror, method.clone(), repo, &url, accept, deadline, until)
            .instrument(span.clone())
            .await;
        let now = std::time::SystemTime::now();
        match &answer {
            Ok(response) => {
                span.record("http.response.status_code", response.status().as_u16());
                let announced = crate::sync::lock(&mirror.heard).answered(
                    response.status(),
                    response.headers(),
                    now,
                );
                if let Some(limit) = announced {
                    self.note_budget(limit.limit, limit.remaining);
                }
            }
            Err(e) => crate::sync::lock(&mirror.heard).failed(e.to_string(), now),
        }
        answer
    }

    /// Notes the pull budget an answer announced.
    fn note_budget(&self, limit: u64, remaining: u64) {
        self.metrics.pull_budget(&self.namespace, limit, remaining);
        let low = self.pull_budget.reserve.reached(remaining, limit);
        if self.budget_low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::warn!(namespace = %self.namespace, remaining, limit, freshness = ?self.pull_budget.freshness, "pull budget low: cached tags are served without asking the upstream for up to the freshness given");
            } else {
                tracing::info!(namespace = %self.namespace, remaining, limit, "pull budget above its reserve again");
            }
        }
    }

    /// [`Self::send`] to one URL within its span: the request, and once
    /// more with credentials when the upstream challenges; a helper's
    /// credentials waited for until `until` at most.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        mirror: &Mirror,
        method: Method,
        repo: &RepoName,
        url: &Url,
        accept: Option<&str>,
        deadline: Deadline,
        until: Instant,
    ) -> Result<Response, UpstreamError> {
        let scope = Auth::scope(repo.as_str());
        let mut refreshed = false;
        let mut trace = reqwest::header::HeaderMap::new();
        crate::telemetry::pass_trace_on(&tracing::Span::current(), &mut trace);
        loop {
            let mut request = self.client.request(method.clone(), url.clone());
            if !trace.is_empty() {
                request = request.headers(trace.clone());
            }
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if let Deadline::Whole(whole) = deadline {
                request = request.timeout(whole);
            }
            let asked = tokio::time::Instant::now();
            let request = mirror.auth.authorize(request, &scope, left(until)).await?;
            let started = Instant::now();
            let sent = match deadline {
                Deadline::Whole(_) => request
                    .send()
                    .await
                    .map_err(|e| UpstreamError::Unreachable(describe(&e))),
                Deadline::Head(head) => tokio::time::timeout(head, request.send())
                    .await
                    .map_err(|_| {
                        UpstreamError::Unreachable("timed out waiting for the answer".into())
                    })
                    .and_then(|sent| sent.map_err(|e| UpstreamError::Unreachable(describe(&e)))),
            };
            let status = sent.as_ref().ok().map(|r| r.status());
            let challenged = status == Some(StatusCode::UNAUTHORIZED) && !refreshed;
            if !challenged {
                // A challenge answered with credentials is not an error.
                self.metrics
                    .upstream_request(started.elapsed(), status.map(|s| s.as_u16()));
            }
            let response = sent?;
            if !challenged {
                return Ok(response);
            }
            refreshed = true;
            let answered = mirror
                .auth
                .answer(
                    &self.client,
                    response.headers(),
                    &scope,
                    (deadline.duration(), left(until)),
                    asked,
                )
                .await?;
            if !answered {
                return Ok(response);
            }
        }
    }
}

/// What is left of a deadline that ends at `until`.
fn left(until: Instant) -> Duration {
    until.saturating_duration_since(Instant::now())
}

/// Where the credentials of the URL `base` come from when not fixed: the
/// helper `exec`; else ECR's tokens for `region`, or for the region of an
/// ECR host configured without `credentials`.
fn source(
    base: &Url,
    credentials: &Credentials,
    exec: Option<&super::exec::Exec>,
    region: Option<&str>,
) -> Option<Source> {
    if let Some(exec) = exec {
        return Some(Source::Helper(super::exec::Helper::new(
            exec,
            base.as_str(),
        )));
    }
    let detected = || {
        credentials
            .is_none()
            .then(|| base.host_str().and_then(super::ecr::region_of))
            .flatten()
    };
    region
        .or_else(detected)
        .map(|region| Source::Ecr(super::ecr::EcrTokens::new(region)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_path_is_kept() {
        let repo = RepoName::parse("library/alpine").expect("name");
        for (base, expected) in [
            (
                "https://h.example",
                "https://h.example/v2/library/alpine/manifests/3",
            ),
            (
                "https://h.example/",
                "https://h.example/v2/library/alpine/manifests/3",
            ),
            (
                "https://h.example/mirror",
                "https://h.example/mirror/v2/library/alpine/manifests/3",
            ),
            (
                "https://h.example/a/b/",
                "https://h.example/a/b/v2/library/alpine/manifests/3",
            ),
        ] {
            assert_eq!(
                Upstream::url(&base.parse().expect("url"), &repo, "manifests/3")
                    .expect("url")
                    .as_str(),
                expected
            );
        }
    }
}
