//! The HTTP client to one upstream registry: requests to `/v2/<repo>/...`
//! under the upstream's base path, authenticated as it asks (one refresh on
//! a 401), within a deadline, through a redirect policy that never leaves
//! https nor reaches loopback or link-local addresses the upstream is not
//! on itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::ACCEPT;
use reqwest::{Method, Response, StatusCode, Url};

use super::auth::{Auth, Credentials};
use super::error::{UpstreamError, describe};
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

/// The upstream registry.
pub struct Upstream {
    base: Url,
    client: reqwest::Client,
    auth: Auth,
    metrics: Arc<Metrics>,
    heard: std::sync::Mutex<super::Heard>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// A client for the registry at `base` (`https://registry-1.docker.io`).
    /// `connect_timeout` bounds connecting; each request passes its own
    /// timeout to [`Upstream::send`] (fills bound blob bodies by idleness).
    pub fn new(
        base: Url,
        credentials: Credentials,
        tls: &UpstreamTls,
        connect_timeout: Duration,
    ) -> Self {
        let home = reach(&base);
        let secure = base.scheme() == "https";
        // Docker Hub sends blobs to a CDN. reqwest drops the Authorization
        // header when a redirect leaves the upstream's host; this policy
        // also refuses a redirect to a loopback or link-local address (a
        // cloud metadata service) unless the upstream itself is one of that
        // kind, and from https to plain http.
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
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
        Self {
            auth: Auth::new(base.clone(), credentials),
            base,
            client,
            metrics: Arc::new(Metrics::default()),
            heard: std::sync::Mutex::default(),
        }
    }

    /// Reports request latencies and errors into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// What the cache last heard from the upstream.
    pub fn heard(&self) -> super::Heard {
        crate::sync::lock(&self.heard).clone()
    }

    /// The upstream's base URL (for logs: it holds no credentials).
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `<base>/v2/<repo>/<rest>`, keeping a path the base URL has
    /// (`https://host/prefix` asks `https://host/prefix/v2/...`).
    fn url(&self, repo: &RepoName, rest: &str) -> Result<Url, UpstreamError> {
        let prefix = self.base.path().trim_end_matches('/');
        self.base
            .join(&format!("{prefix}/v2/{}/{rest}", repo.as_str()))
            .map_err(|e| UpstreamError::Unreachable(e.to_string()))
    }

    /// Sends `method` to `/v2/<repo>/<rest>`, authenticating as the upstream
    /// asks, within `deadline` (token requests on the way take at most as
    /// long, whole).
    pub(crate) async fn send(
        &self,
        method: Method,
        repo: &RepoName,
        rest: &str,
        accept: Option<&str>,
        deadline: Deadline,
    ) -> Result<Response, UpstreamError> {
        use tracing::Instrument as _;
        let url = self.url(repo, rest)?;
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
            .exchange(method, repo, &url, accept, deadline)
            .instrument(span.clone())
            .await;
        let now = std::time::SystemTime::now();
        match &answer {
            Ok(response) => {
                span.record("http.response.status_code", response.status().as_u16());
                crate::sync::lock(&self.heard).answered(response.status(), response.headers(), now);
            }
            Err(e) => crate::sync::lock(&self.heard).failed(e.to_string(), now),
        }
        answer
    }

    /// [`Self::send`] within its span: the request, and once more with
    /// credentials when the upstream challenges.
    async fn exchange(
        &self,
        method: Method,
        repo: &RepoName,
        url: &Url,
        accept: Option<&str>,
        deadline: Deadline,
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
            let request = self.auth.authorize(request, &scope);
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
            let answered = self
                .auth
                .answer(
                    &self.client,
                    response.headers(),
                    &scope,
                    deadline.duration(),
                )
                .await?;
            if !answered {
                return Ok(response);
            }
        }
    }
}

/// Where a URL's host is, for redirects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// This machine: a loopback or unspecified address, `localhost`.
    Loopback,
    /// The local link: `169.254.0.0/16`, `fe80::/10` (cloud metadata
    /// services live there).
    LinkLocal,
    /// Anywhere else (names resolved by DNS are not looked up).
    Remote,
}

fn reach(url: &Url) -> Reach {
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
            let upstream = Upstream::new(
                base.parse().expect("url"),
                None,
                &UpstreamTls::default(),
                Duration::from_secs(1),
            );
            assert_eq!(
                upstream.url(&repo, "manifests/3").expect("url").as_str(),
                expected
            );
        }
    }
}
