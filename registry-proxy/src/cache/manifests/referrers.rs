//! The referrers of a manifest (OCI distribution 1.1): the signatures,
//! SBOMs and attestations whose `subject` names it. Asked of the upstream's
//! referrers API, or, when it has none, read from the tag schema's
//! `sha256-<hex>` index, as the spec tells clients to; stored and kept
//! fresh like a tag, and served stale when the upstream is unavailable.
//!
//! The answer is stored as an index blob (so the TTL, the byte budget and
//! the collector treat it as a manifest of the repository), pointed to by
//! `_manifests/referrers/sha256/<hex>/link`. An empty answer is remembered
//! as fresh in memory only: a client asking about random digests costs
//! upstream requests, as manifests by digest do, but no storage.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::{LeaveTurn, Manifests, TagKey};
use crate::cache::error::CacheError;
use crate::layout::{self, RepoKey};
use crate::namespace::Namespace;
use crate::oci::{self, Digest, Kind, RepoName};
use crate::sync::lock;
use crate::upstream::{Asked, UpstreamError};

/// A referrers list to serve: an OCI image index.
#[derive(Debug, Clone)]
pub struct Referrers {
    /// The index's bytes.
    pub bytes: Bytes,
    /// Whether an `artifactType` filter was applied (the answer then
    /// carries `OCI-Filters-Applied: artifactType`).
    pub filtered: bool,
}

/// A descriptor of a referrers list, as the upstream sent it.
type Descriptor = Map<String, Value>;

impl Manifests {
    /// The referrers of `subject` in `repo` of `ns`, only those of
    /// `artifact_type` when one is given.
    pub async fn referrers(
        &self,
        ns: &Namespace,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Referrers, CacheError> {
        let key = ns.repo(repo);
        let fresh_key: TagKey = (key.clone(), format!("@referrers/{subject}"));
        let descriptors = match self.fresh_referrers(ns, &fresh_key, subject).await? {
            Some(found) => found,
            None => {
                let turn = Arc::clone(lock(&self.resolving).entry(fresh_key.clone()).or_default());
                let _leave = LeaveTurn {
                    resolving: &self.resolving,
                    key: fresh_key.clone(),
                    turn: Arc::clone(&turn),
                };
                let _turn = turn.lock().await;
                match self.fresh_referrers(ns, &fresh_key, subject).await? {
                    Some(found) => found,
                    None => {
                        self.resolve_referrers(ns, repo, subject, &fresh_key)
                            .await?
                    }
                }
            }
        };
        let filtered = artifact_type.is_some();
        let kept = descriptors
            .into_iter()
            .filter(|d| artifact_type.is_none_or(|t| d.get("artifactType") == Some(&t.into())))
            .collect();
        Ok(Referrers {
            bytes: index(kept),
            filtered,
        })
    }

    /// The stored referrers of `subject` when they were confirmed within
    /// the freshness window (an empty list when the upstream said none).
    async fn fresh_referrers(
        &self,
        ns: &Namespace,
        fresh_key: &TagKey,
        subject: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, CacheError> {
        if self.fresh(ns, fresh_key).is_none() {
            return Ok(None);
        }
        Ok(Some(
            self.stored_referrers(&fresh_key.0, subject)
                .await?
                .unwrap_or_default(),
        ))
    }

    /// The referrers of `subject` stored for `repo`, if any.
    async fn stored_referrers(
        &self,
        repo: &RepoKey,
        subject: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, CacheError> {
        let Some(digest) = self
            .read_link(&layout::referrers_link(repo, subject))
            .await?
        else {
            return Ok(None);
        };
        self.tracker
            .access_known(repo, &digest, Kind::Manifest)
            .await;
        Ok(self
            .cached(&digest)
            .await?
            .map(|m| descriptors(&m.bytes).unwrap_or_default()))
    }

    /// Asks the upstream for the referrers of `subject` (its API, else the
    /// tag schema), stores the answer and confirms it fresh; serves the
    /// stored answer when the upstream is unavailable.
    async fn resolve_referrers(
        &self,
        ns: &Namespace,
        repo: &RepoName,
        subject: &Digest,
        fresh_key: &TagKey,
    ) -> Result<Vec<Descriptor>, CacheError> {
        let key = &fresh_key.0;
        let asked = match self.ask_referrers(ns, repo, subject).await {
            Ok(found) => found,
            Err(e) if e.is_outage() => {
                if let Some(stored) = self.stored_referrers(key, subject).await? {
                    tracing::warn!(%key, %subject, error = %e, "upstream unavailable; serving the cached referrers");
                    self.metrics.stale_serve();
                    return Ok(stored);
                }
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        let link = layout::referrers_link(key, subject);
        if asked.is_empty() {
            match self
                .driver
                .delete(&layout::referrers_dir(key, subject))
                .await
            {
                Err(e) if !e.is_not_found() => return Err(e.into()),
                _ => {}
            }
        } else {
            let bytes = index(asked.clone());
            let digest = Digest::of(&bytes);
            let _lease = self.tracker.lease(&[digest]);
            self.tracker.access(key, &digest, Kind::Manifest).await;
            // Marked as every stored manifest is, before its bytes become
            // visible: no blobs endpoint serves them unproven.
            self.access.mark(ns, &digest, Kind::Manifest).await?;
            self.driver
                .put_content(&layout::blob_data(&digest), bytes.clone())
                .await?;
            self.remember(&digest, &bytes);
            self.driver
                .put_content(&link, layout::link_content(&digest))
                .await?;
        }
        self.confirm(ns, fresh_key.clone(), None);
        Ok(asked)
    }

    /// The upstream's referrers of `subject`: every page of its referrers
    /// API, or the index the tag `sha256-<hex>` names (none when there is
    /// no such tag).
    async fn ask_referrers(
        &self,
        ns: &Namespace,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>, UpstreamError> {
        let malformed = |detail: String| UpstreamError::Body {
            what: "referrers list",
            detail,
        };
        let timeout = self.request_timeout;
        if let Some(pages) = ns.upstream.referrers(repo, subject, timeout).await? {
            let mut all = Vec::new();
            for page in pages {
                all.extend(descriptors(&page).map_err(malformed)?);
            }
            return Ok(all);
        }
        let tag = format!("sha256-{}", subject.hex());
        match ns.upstream.manifest(repo, &tag, timeout).await {
            Ok(fetched) => descriptors(&fetched.bytes).map_err(malformed),
            Err(UpstreamError::Status {
                status,
                asked: Asked::Manifest(_),
                ..
            }) if status == reqwest::StatusCode::NOT_FOUND => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

/// The descriptors of an index's `manifests`, each checked to be one (a
/// media type, a valid digest, a size); an answer that is no index is an
/// error, a descriptor that is none is left out.
fn descriptors(bytes: &[u8]) -> Result<Vec<Descriptor>, String> {
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<Value>,
    }
    let index: Index = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    Ok(index
        .manifests
        .into_iter()
        .filter_map(|d| match d {
            Value::Object(d)
                if d.get("mediaType").is_some_and(Value::is_string)
                    && d.get("size").is_some_and(Value::is_u64)
                    && d.get("digest")
                        .and_then(Value::as_str)
                        .is_some_and(|s| Digest::parse(s).is_ok()) =>
            {
                Some(d)
            }
            _ => None,
        })
        .collect())
}

/// An OCI image index of `descriptors`.
fn index(descriptors: Vec<Descriptor>) -> Bytes {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::OCI_INDEX,
        "manifests": descriptors,
    });
    Bytes::from(index.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_checked_and_the_index_is_rebuilt() {
        let good = format!("sha256:{}", "a".repeat(64));
        let page = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": oci::OCI_MANIFEST, "digest": good, "size": 10, "artifactType": "x"},
                {"mediaType": oci::OCI_MANIFEST, "digest": "sha256:zz", "size": 10},
                {"mediaType": oci::OCI_MANIFEST, "digest": good},
                "not a descriptor",
            ],
        });
        let found = descriptors(page.to_string().as_bytes()).expect("an index");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0]["artifactType"], "x");
        let rebuilt: Value = serde_json::from_slice(&index(found)).expect("json");
        assert_eq!(rebuilt["mediaType"], oci::OCI_INDEX);
        assert_eq!(rebuilt["manifests"][0]["digest"], good.as_str());
        assert!(descriptors(b"[1, 2]").is_err());
        assert!(descriptors(b"{}").expect("no manifests").is_empty());
    }
}
