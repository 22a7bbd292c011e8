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
use crate::namespace::{Namespace, PrefetchImage};

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
    use crate::namespace::{RepoFilter, TagFilter};

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
