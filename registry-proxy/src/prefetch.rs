//! Prefetch: images a namespace pulls ahead of their clients and keeps
//! warm. Every interval, while this replica leads (one replica warms for
//! all), each listed repository's tags are read from the upstream, and
//! those its tag filter admits are warmed (the platforms asked for, or
//! every one), at most [`PREFETCH_TAGS`] per repository. Warming a tag
//! reads its manifest through the cache, which refreshes what it
//! references, so prefetched images do not expire while they match.

use std::time::Duration;

use crate::admin::{WarmQuery, warmed};
use crate::app::AppState;
use crate::namespace::{Namespace, RepoFilter};
use crate::oci::{Platform, RepoName};

/// Images a namespace pulls ahead of their clients (`prefetch`).
#[derive(Debug, Clone)]
pub struct Prefetch {
    /// How often.
    pub interval: Duration,
    /// The repositories, each with its filters.
    pub images: Vec<PrefetchImage>,
}

/// One repository of a [`Prefetch`].
#[derive(Debug, Clone)]
pub struct PrefetchImage {
    /// The repository, as clients name it.
    pub repository: RepoName,
    /// Which of its tags.
    pub tags: TagFilter,
    /// Which platforms of an index (empty: every one).
    pub platforms: Vec<Platform>,
}

/// Which tags a prefetch warms: those every filter given admits.
#[derive(Debug, Clone, Default)]
pub struct TagFilter {
    /// Globs, one of which the tag matches.
    pub globs: Option<RepoFilter>,
    /// A regular expression the whole tag matches.
    pub regex: Option<regex::Regex>,
    /// A semver range the tag's version is in (a leading `v` and missing
    /// minor or patch numbers allowed: `v1.2` is 1.2.0). Pre-releases are
    /// in it only when the range names one of the same version.
    pub semver: Option<semver::VersionReq>,
}

impl TagFilter {
    /// Whether `tag` is admitted.
    pub fn admits(&self, tag: &str) -> bool {
        self.globs.as_ref().is_none_or(|g| g.permits(tag))
            && self.regex.as_ref().is_none_or(|r| r.is_match(tag))
            && self
                .semver
                .as_ref()
                .is_none_or(|range| version_of(tag).is_some_and(|v| range.matches(&v)))
    }
}

/// The version a tag names, if it names one: `1.2.3`, `v1.2.3-rc.1`,
/// `1.2` (1.2.0), `1` (1.0.0).
fn version_of(tag: &str) -> Option<semver::Version> {
    let bare = tag.strip_prefix('v').unwrap_or(tag);
    let (numbers, rest) = match bare.find(['-', '+']) {
        Some(at) => bare.split_at(at),
        None => (bare, ""),
    };
    let parts = numbers.split('.').count();
    if numbers.is_empty() || parts > 3 {
        return None;
    }
    let padded = format!("{numbers}{}{rest}", ".0".repeat(3 - parts));
    semver::Version::parse(&padded).ok()
}

/// The most tags of one repository a prefetch pass warms.
const PREFETCH_TAGS: usize = 100;

/// How long a prefetch pass waits for an upstream's tag list.
const PREFETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts each namespace's prefetch in the background.
pub fn spawn_prefetch(state: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
    state
        .namespaces
        .iter()
        .filter(|ns| ns.prefetch.is_some())
        .map(|ns| {
            let (state, ns) = (state.clone(), std::sync::Arc::clone(ns));
            tokio::spawn(async move {
                let Some(prefetch) = &ns.prefetch else {
                    return;
                };
                loop {
                    if *state.scheduler.store().leader().borrow() {
                        for image in &prefetch.images {
                            prefetch_repo(&state, &ns, image).await;
                        }
                    }
                    tokio::time::sleep(prefetch.interval).await;
                }
            })
        })
        .collect()
}

/// One prefetch pass over `image` of `ns`.
async fn prefetch_repo(state: &AppState, ns: &Namespace, image: &PrefetchImage) {
    let repo = ns.canonical(image.repository.clone());
    let listed = match ns.upstream.tags(&repo, PREFETCH_TIMEOUT).await {
        Ok(listed) => listed,
        Err(e) => {
            tracing::warn!(namespace = %ns.name, %repo, error = %e, "prefetch: cannot list tags");
            return;
        }
    };
    let matching: Vec<&String> = listed.iter().filter(|t| image.tags.admits(t)).collect();
    if matching.len() > PREFETCH_TAGS {
        tracing::warn!(namespace = %ns.name, %repo, matching = matching.len(), "prefetch: warming the first {PREFETCH_TAGS} matching tags only");
    }
    for tag in matching.into_iter().take(PREFETCH_TAGS) {
        let query = WarmQuery {
            namespace: Some(ns.name.clone()),
            image: format!("{repo}:{tag}"),
            dry_run: false,
            platform: None,
        };
        match warmed(state, &query, &image.platforms).await {
            Ok(report) if report.missing > 0 => {
                tracing::info!(namespace = %ns.name, image = query.image, blobs = report.missing, bytes = report.missing_bytes, "prefetched");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(namespace = %ns.name, image = query.image, error = %e, "prefetch failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_admitted_by_every_filter_given() {
        let range = |r: &str| TagFilter {
            semver: Some(semver::VersionReq::parse(r).expect("range")),
            ..TagFilter::default()
        };
        let f = range(">=1.3, <2");
        for tag in ["1.3.0", "v1.4", "1.9.9", "1.3"] {
            assert!(f.admits(tag), "{tag}");
        }
        for tag in ["1.2.0", "2.0.0", "1.5.0-rc1", "latest", "1.2.3.4", "", "v"] {
            assert!(!f.admits(tag), "{tag}");
        }
        assert!(range(">=1.5.0-rc1, <2").admits("1.5.0-rc1"));
        let both = TagFilter {
            regex: Some(regex::Regex::new("^(?:release-[0-9]+)$").expect("regex")),
            globs: Some(RepoFilter::new(&["release-1*".into()], &[]).expect("globs")),
            semver: None,
        };
        assert!(both.admits("release-12"));
        assert!(!both.admits("release-22"), "the glob too");
        assert!(!both.admits("release-1a"), "the regex too");
        assert!(TagFilter::default().admits("anything"));
    }
}
