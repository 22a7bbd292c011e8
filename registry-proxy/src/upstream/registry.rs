//! The registry API the cache asks of an upstream: manifests (HEAD for the
//! digest, GET bounded to the largest manifest), tag lists (every page,
//! bounded in pages, bytes and tags) and blobs (HEAD as a proof of access,
//! GET streamed). Statuses, headers, pagination and body limits are read
//! here; callers see bytes, digests and [`UpstreamError`]s.

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::{Method, Response};

use super::client::{Deadline, Upstream};
use super::error::{Asked, UpstreamError, is_outage};
use super::limits::{Limits, Permit, Turn};
use super::wire::read_bounded;
use crate::oci::{self, Digest, MANIFEST_ACCEPT, RepoName};

/// Pages of an upstream tag list followed at most.
const MAX_TAG_PAGES: usize = 100;

/// The largest upstream tag list page read.
const MAX_TAG_PAGE_BYTES: usize = 4 << 20;

/// The most tags of one repository listed from upstream.
const MAX_TAGS: usize = 100_000;

/// Pages of an upstream referrers list followed at most.
const MAX_REFERRER_PAGES: usize = 16;

/// A manifest as the upstream sent it.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Its bytes (at most [`oci::MAX_MANIFEST_BYTES`]).
    pub bytes: Bytes,
    /// The digest the upstream's `Docker-Content-Digest` claims, if any.
    pub claimed: Option<Digest>,
}

/// An upstream's answer to a blob GET, its body not yet read; it holds
/// its turn under `maxconcurrent` until the body is read or dropped.
#[derive(Debug)]
pub struct BlobBody {
    response: Response,
    permit: Permit,
    limits: std::sync::Arc<Limits>,
}

impl BlobBody {
    /// The size the upstream announced (`None`: a chunked answer).
    pub fn announced(&self) -> Option<u64> {
        self.response.content_length()
    }

    /// The bytes as they arrive, no faster than `maxbandwidth`.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, UpstreamError>> + Send {
        let Self {
            response,
            permit,
            limits,
        } = self;
        let bytes = response.bytes_stream().map_err(|e| UpstreamError::Body {
            what: "blob body",
            detail: e.to_string(),
        });
        if !limits.caps_bandwidth() {
            return futures::future::Either::Left(bytes.map(move |chunk| {
                let _turn = &permit;
                chunk
            }));
        }
        futures::future::Either::Right(bytes.then(move |chunk| {
            let limits = std::sync::Arc::clone(&limits);
            let _turn = &permit;
            async move {
                if let Ok(chunk) = &chunk {
                    limits.pass(chunk.len()).await;
                }
                chunk
            }
        }))
    }
}

impl Upstream {
    /// The digest the upstream gives for manifest `reference` of `repo` in
    /// answer to HEAD; `Ok(None)` when it does not say (or refuses HEAD:
    /// a GET decides then); `Err` only when it cannot be asked now.
    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        timeout: Duration,
    ) -> Result<Option<Digest>, UpstreamError> {
        let (response, _turn) = self
            .send(
                Method::HEAD,
                repo,
                &format!("manifests/{reference}"),
                Some(MANIFEST_ACCEPT),
                Deadline::Whole(timeout),
                Turn::Small,
            )
            .await?;
        if is_outage(response.status()) {
            return Err(UpstreamError::status(
                &response,
                Asked::Manifest(reference.to_owned()),
            ));
        }
        Ok(content_digest(&response))
    }

    /// Manifest `reference` of `repo`, read whole within `timeout` (at most
    /// [`oci::MAX_MANIFEST_BYTES`]: a larger one is [`UpstreamError::TooLarge`]).
    pub async fn manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        timeout: Duration,
    ) -> Result<Fetched, UpstreamError> {
        let (mut response, _turn) = self
            .send(
                Method::GET,
                repo,
                &format!("manifests/{reference}"),
                Some(MANIFEST_ACCEPT),
                Deadline::Whole(timeout),
                Turn::Small,
            )
            .await?;
        if !response.status().is_success() {
            return Err(UpstreamError::status(
                &response,
                Asked::Manifest(reference.to_owned()),
            ));
        }
        let claimed = content_digest(&response);
        let bytes = read_bounded(&mut response, oci::MAX_MANIFEST_BYTES, "manifest body")
            .await?
            .ok_or_else(|| UpstreamError::TooLarge("the upstream manifest exceeds 4 MiB".into()))?;
        Ok(Fetched { bytes, claimed })
    }

    /// The tags of `repo`, sorted and without duplicates: every page of the
    /// upstream's list, each request within `timeout`. A list beyond this
    /// cache's bounds (pages of 4 MiB, 100,000 tags) is an outage: the
    /// cached tags are the better answer then.
    pub async fn tags(
        &self,
        repo: &RepoName,
        timeout: Duration,
    ) -> Result<Vec<String>, UpstreamError> {
        #[derive(serde::Deserialize)]
        struct Page {
            tags: Option<Vec<String>>,
        }
        let beyond = |detail: String| UpstreamError::Body {
            what: "tag list",
            detail,
        };
        let mut tags = Vec::new();
        let mut rest = "tags/list".to_owned();
        for _ in 0..MAX_TAG_PAGES {
            let (mut response, _turn) = self
                .send(
                    Method::GET,
                    repo,
                    &rest,
                    None,
                    Deadline::Whole(timeout),
                    Turn::Small,
                )
                .await?;
            if !response.status().is_success() {
                return Err(UpstreamError::status(&response, Asked::Tags));
            }
            let next = response
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_page_query);
            let body = read_bounded(&mut response, MAX_TAG_PAGE_BYTES, "tag list")
                .await?
                .ok_or_else(|| beyond("a page exceeds 4 MiB".into()))?;
            let page: Page = serde_json::from_slice(&body).map_err(|e| beyond(e.to_string()))?;
            tags.extend(page.tags.unwrap_or_default());
            if tags.len() > MAX_TAGS {
                return Err(beyond(format!("more than {MAX_TAGS} tags")));
            }
            match next {
                Some(query) => rest = format!("tags/list?{query}"),
                None => break,
            }
        }
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    /// The pages of the referrers list of `subject` in `repo` (every page
    /// the `Link` headers name, at most 16 and 4 MiB together, each
    /// request within `timeout`); `Ok(None)` when the upstream has no
    /// referrers API (it answers 404 or 405), which the OCI spec tells
    /// clients to take as "follow the tag schema".
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        timeout: Duration,
    ) -> Result<Option<Vec<Bytes>>, UpstreamError> {
        let mut pages = Vec::new();
        let mut left = oci::MAX_MANIFEST_BYTES;
        let mut rest = format!("referrers/{subject}");
        for _ in 0..MAX_REFERRER_PAGES {
            let (mut response, _turn) = self
                .send(
                    Method::GET,
                    repo,
                    &rest,
                    Some(oci::OCI_INDEX),
                    Deadline::Whole(timeout),
                    Turn::Small,
                )
                .await?;
            let status = response.status();
            if pages.is_empty()
                && (status == reqwest::StatusCode::NOT_FOUND
                    || status == reqwest::StatusCode::METHOD_NOT_ALLOWED)
            {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(UpstreamError::status(&response, Asked::Referrers(*subject)));
            }
            let next = response
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_page_query);
            let page = read_bounded(&mut response, left, "referrers list")
                .await?
                .ok_or_else(|| {
                    UpstreamError::TooLarge("the upstream referrers list exceeds 4 MiB".into())
                })?;
            left -= page.len();
            pages.push(page);
            match next {
                Some(query) => rest = format!("referrers/{subject}?{query}"),
                None => break,
            }
        }
        Ok(Some(pages))
    }

    /// Whether `repo` has blob `digest`, by HEAD with this upstream's
    /// credentials (the proof of access), waiting at most `head` for the
    /// answer: `Err` with the upstream's status when it does not say yes.
    pub async fn head_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        head: Duration,
    ) -> Result<(), UpstreamError> {
        self.blob_request(Method::HEAD, repo, digest, head)
            .await
            .map(drop)
    }

    /// The size of blob `digest` of `repo` by HEAD, waiting at most
    /// `head`: a small request, which reads no body and starts no fill.
    /// `Ok(None)` when the upstream gives no size that way: it refuses
    /// HEAD (401, 403, 405: some registries serve only GETs of blobs), or
    /// answers without a `Content-Length`.
    pub async fn blob_size(
        &self,
        repo: &RepoName,
        digest: &Digest,
        head: Duration,
    ) -> Result<Option<u64>, UpstreamError> {
        use reqwest::StatusCode;
        match self.blob_request(Method::HEAD, repo, digest, head).await {
            // The header, not the body's size: a HEAD answer has none.
            Ok((response, _turn)) => Ok(response
                .headers()
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())),
            Err(UpstreamError::Status {
                status:
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::METHOD_NOT_ALLOWED,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Blob `digest` of `repo`, waiting at most `head` for the answer's
    /// head. Only the head is bounded: the body may take as long as it
    /// keeps flowing (its reader bounds the silence between bytes).
    pub async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        head: Duration,
    ) -> Result<BlobBody, UpstreamError> {
        self.blob_request(Method::GET, repo, digest, head)
            .await
            .map(|(response, permit)| BlobBody {
                response,
                permit,
                limits: std::sync::Arc::clone(self.limits()),
            })
    }

    async fn blob_request(
        &self,
        method: Method,
        repo: &RepoName,
        digest: &Digest,
        head: Duration,
    ) -> Result<(Response, Permit), UpstreamError> {
        // A body holds its turn for as long as it streams; a HEAD does not.
        let turn = if method == Method::GET {
            Turn::Body
        } else {
            Turn::Small
        };
        let (response, permit) = self
            .send(
                method,
                repo,
                &format!("blobs/{digest}"),
                None,
                Deadline::Head(head),
                turn,
            )
            .await?;
        if !response.status().is_success() {
            return Err(UpstreamError::status(&response, Asked::Blob(*digest)));
        }
        Ok((response, permit))
    }
}

/// The digest an answer's `Docker-Content-Digest` names, if valid.
fn content_digest(response: &Response) -> Option<Digest> {
    response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Digest::parse(v).ok())
}

/// The query of the `rel="next"` target of a `Link` header
/// (`</v2/repo/tags/list?last=x&n=100>; rel="next"` gives `last=x&n=100`).
fn next_page_query(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        if !params.replace(' ', "").contains("rel=\"next\"") {
            return None;
        }
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        target.split_once('?').map(|(_, q)| q.to_owned())
    })
}
