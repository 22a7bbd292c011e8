//! Namespaces: one per upstream registry, each with its own credentials,
//! lifetime, content-sharing policy and allowed users. Blob bytes are
//! stored once whatever the namespaces using them; repositories, tags and
//! links are kept per namespace (see [`RepoKey`]).
//!
//! A request selects its namespace by containerd's `?ns=<host>`, else by a
//! path prefix (`/v2/<namespace>/<repository>/…`), else it goes to the
//! default namespace.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use driver_core::Segment;
use serde::Deserialize;

use crate::layout::RepoKey;
use crate::metrics::{Metrics, NamespaceMetrics};
use crate::oci::{ErrorCode, OciError, Platform, RepoName};
use crate::upstream::{Credentials, Upstream, UpstreamTls};

/// Which stored blobs a namespace is served (containerd's content sharing
/// policy between namespaces).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    /// Any blob in storage, without asking the upstream: saves bandwidth.
    #[default]
    Shared,
    /// Only blobs the namespace's upstream gave it or confirmed it has,
    /// with the namespace's credentials: proof of access, once per
    /// repository and blob.
    Isolated,
}

/// What a namespace is made of, from the configuration.
#[derive(Debug, Clone)]
pub struct NamespaceSpec {
    /// The name clients select it by: a registry host, `docker.io`,
    /// `ghcr.io`, `localhost:5000`.
    pub name: String,
    /// The upstream's base URL.
    pub remote: reqwest::Url,
    /// Upstream user and password.
    pub credentials: Credentials,
    /// Lifetime of its content; `None`: the proxy's `ttl`.
    pub ttl: Option<Duration>,
    /// Its content-sharing policy.
    pub sharing: Sharing,
    /// The users allowed to pull through it; `None`: every client (every
    /// authenticated one when client authentication is on).
    pub users: Option<Vec<String>>,
    /// Whether it is stored where registry:2 keeps repositories (the
    /// namespace of a plain `proxy.remoteurl` config), rather than in a
    /// directory of its own.
    pub registry2_dir: bool,
    /// Whether requests that name no namespace go to it.
    pub default: bool,
    /// How its https upstream is trusted beyond the platform's roots.
    pub tls: UpstreamTls,
    /// Its fallbacks, caps, pull budget and credential helper.
    pub plan: crate::upstream::UpstreamPlan,
    /// The most bytes of the blobs it links (`upstreams[].maxsize`).
    pub max_size: Option<u64>,
    /// Which repositories may be pulled through it.
    pub repositories: RepoFilter,
    /// Images pulled ahead of their clients and kept warm.
    pub prefetch: Option<Prefetch>,
}

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

/// Which repositories a namespace serves (`repositories.allow` and
/// `deny`, globs over the name as the upstream knows it: `*` and `?` within
/// one path component, `**` across them). A repository is served when no
/// `deny` glob matches it and, if there are `allow` globs, one of them does.
#[derive(Debug, Clone, Default)]
pub struct RepoFilter {
    allow: Option<globset::GlobSet>,
    deny: Option<globset::GlobSet>,
}

/// A glob that is not one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BadGlob(String);

impl RepoFilter {
    /// The filter of `allow` and `deny` globs (empty lists: no filter).
    pub fn new(allow: &[String], deny: &[String]) -> Result<Self, BadGlob> {
        let set = |globs: &[String]| -> Result<Option<globset::GlobSet>, BadGlob> {
            if globs.is_empty() {
                return Ok(None);
            }
            let mut set = globset::GlobSetBuilder::new();
            for glob in globs {
                let glob = globset::GlobBuilder::new(glob)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| BadGlob(e.to_string()))?;
                set.add(glob);
            }
            set.build().map(Some).map_err(|e| BadGlob(e.to_string()))
        };
        Ok(Self {
            allow: set(allow)?,
            deny: set(deny)?,
        })
    }

    /// Whether repository `name` is served.
    pub fn permits(&self, name: &str) -> bool {
        self.deny.as_ref().is_none_or(|d| !d.is_match(name))
            && self.allow.as_ref().is_none_or(|a| a.is_match(name))
    }
}

impl NamespaceSpec {
    /// The one namespace of a registry:2 config: `remote`, shared, stored
    /// where registry:2 stores, the default.
    pub fn single(remote: reqwest::Url, credentials: Credentials) -> Self {
        Self {
            name: name_of_url(&remote),
            remote,
            credentials,
            ttl: None,
            sharing: Sharing::Shared,
            users: None,
            registry2_dir: true,
            default: true,
            tls: UpstreamTls::default(),
            plan: crate::upstream::UpstreamPlan::default(),
            max_size: None,
            repositories: RepoFilter::default(),
            prefetch: None,
        }
    }
}

/// The name of Docker Hub's namespace (its API host is
/// `registry-1.docker.io`).
const DOCKER_HUB: &str = "docker.io";

/// The name of the namespace an upstream URL gives when none is
/// configured: its host and port, with Docker Hub's API host named
/// `docker.io`, as containerd's `?ns=` names it.
pub fn name_of_url(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let name = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    };
    if name == "registry-1.docker.io" || name == "index.docker.io" {
        DOCKER_HUB.to_owned()
    } else {
        name
    }
}

/// Whether `name` can name a namespace: a lowercase host name or address
/// with an optional port.
pub fn valid_name(name: &str) -> bool {
    let (host, port) = match name.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (name, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    name.len() <= 255
        && host.split('.').all(label_ok)
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The storage directory of namespace `name` (`:` is not a storage path
/// character; `_` is in no valid name, so the mapping is one to one).
fn dir_of(name: &str) -> Result<Segment, InvalidNamespace> {
    Segment::parse(&name.replace(':', "_")).map_err(|_| InvalidNamespace(name.to_owned()))
}

/// A namespace name that cannot name a storage directory (the
/// configuration admits only registry host names).
#[derive(Debug, Clone, thiserror::Error)]
#[error("namespace {0:?} cannot be stored: not a registry host name")]
pub struct InvalidNamespace(pub String);

/// One namespace.
#[derive(Debug)]
pub struct Namespace {
    /// The name clients select it by.
    pub name: String,
    /// Its storage directory; `None` where registry:2 keeps repositories.
    dir: Option<Segment>,
    /// Its upstream.
    pub upstream: Arc<Upstream>,
    /// Its content-sharing policy.
    pub sharing: Sharing,
    users: Option<HashSet<String>>,
    /// Which repositories it serves.
    repositories: RepoFilter,
    /// What it pulls ahead of its clients.
    pub prefetch: Option<Prefetch>,
    /// Its counters.
    pub metrics: Arc<NamespaceMetrics>,
    /// Whether it stands for Docker Hub, whose one-component names are
    /// official images under `library/`.
    docker_hub: bool,
}

impl Namespace {
    /// The repository `name` stands for here: in a namespace for Docker
    /// Hub a one-component name is `library/<name>`, as Docker resolves it
    /// (`cache/docker.io/alpine` and `cache/alpine` both mean
    /// `library/alpine`, stored and asked upstream as such).
    pub fn canonical(&self, name: RepoName) -> RepoName {
        if !self.docker_hub || name.segments().len() > 1 {
            return name;
        }
        RepoName::parse(&format!("library/{name}")).unwrap_or(name)
    }

    /// The storage key of its repository `name`.
    pub fn repo(&self, name: &RepoName) -> RepoKey {
        RepoKey::new(self.dir.as_ref(), name)
    }

    /// Its storage directory (`None`: registry:2's place).
    pub fn dir(&self) -> Option<&Segment> {
        self.dir.as_ref()
    }

    /// Whether `user` may pull through it (`None`: an anonymous client,
    /// or client authentication is off). `users: ["*"]` lets anyone pull,
    /// without authenticating.
    pub fn allows(&self, user: Option<&str>) -> bool {
        match (&self.users, user) {
            (None, _) => true,
            (Some(users), _) if users.contains("*") => true,
            (Some(users), Some(user)) => users.contains(user),
            (Some(_), None) => false,
        }
    }

    /// Whether clients may pull through it without authenticating
    /// (`users: ["*"]`).
    pub fn anonymous(&self) -> bool {
        self.users.as_ref().is_some_and(|u| u.contains("*"))
    }

    /// Whether repository `name` (canonical) may be pulled through it.
    pub fn permits(&self, name: &RepoName) -> bool {
        self.repositories.permits(name.as_str())
    }

    /// Whether it must prove access before serving stored content.
    pub fn isolated(&self) -> bool {
        self.sharing == Sharing::Isolated
    }

    /// Whether what it brings in is private to it: it is isolated, or only
    /// some users may pull through it. Other namespaces are then served
    /// that content only once their own upstream proves access.
    pub fn private(&self) -> bool {
        self.isolated() || (self.users.is_some() && !self.anonymous())
    }
}

/// Every namespace, and which one is the default.
#[derive(Debug)]
pub struct Namespaces {
    list: Vec<Arc<Namespace>>,
    default: usize,
}

impl Namespaces {
    /// The namespaces of `specs` (validated by the configuration), their
    /// upstreams connecting within `connect_timeout` and reporting into
    /// `metrics`. The default is the spec marked so, else the first.
    pub fn new(
        specs: &[NamespaceSpec],
        metrics: &Arc<Metrics>,
        connect_timeout: Duration,
    ) -> Result<Self, InvalidNamespace> {
        let list = specs
            .iter()
            .map(|spec| {
                if spec.tls.insecure {
                    tracing::warn!(namespace = %spec.name, "tls.insecure: the upstream's certificate is not checked");
                }
                let upstream = Upstream::new(
                    spec.remote.clone(),
                    spec.credentials.clone(),
                    &spec.tls,
                    connect_timeout,
                    &spec.plan,
                )
                .with_metrics(Arc::clone(metrics), &spec.name);
                Ok(Arc::new(Namespace {
                    name: spec.name.clone(),
                    dir: match spec.registry2_dir {
                        true => None,
                        false => Some(dir_of(&spec.name)?),
                    },
                    upstream: Arc::new(upstream),
                    sharing: spec.sharing,
                    users: spec.users.as_ref().map(|u| u.iter().cloned().collect()),
                    repositories: spec.repositories.clone(),
                    prefetch: spec.prefetch.clone(),
                    metrics: metrics.namespace(&spec.name),
                    docker_hub: spec.name == DOCKER_HUB || name_of_url(&spec.remote) == DOCKER_HUB,
                }))
            })
            .collect::<Result<_, InvalidNamespace>>()?;
        Ok(Self {
            list,
            default: specs.iter().position(|s| s.default).unwrap_or(0),
        })
    }

    /// The lifetimes of the namespaces stored in directories of their own
    /// that have one, by directory (the scheduler's option).
    pub fn ttls(specs: &[NamespaceSpec]) -> HashMap<String, Duration> {
        specs
            .iter()
            .filter(|s| !s.registry2_dir)
            .filter_map(|s| Some((dir_of(&s.name).ok()?.as_str().to_owned(), s.ttl?)))
            .collect()
    }

    /// The byte budgets of the namespaces that have one, by directory
    /// (`""`: registry:2's namespace), for the scheduler's bounds.
    pub fn max_sizes(specs: &[NamespaceSpec]) -> HashMap<String, u64> {
        specs
            .iter()
            .filter_map(|s| {
                let dir = if s.registry2_dir {
                    String::new()
                } else {
                    dir_of(&s.name).ok()?.as_str().to_owned()
                };
                Some((dir, s.max_size?))
            })
            .collect()
    }

    /// Every namespace, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Namespace>> {
        self.list.iter()
    }

    /// The namespace named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Namespace>> {
        self.list.iter().find(|ns| ns.name == name)
    }

    /// The namespace of requests that name none.
    pub fn default_namespace(&self) -> &Arc<Namespace> {
        &self.list[self.default]
    }

    /// Whether every namespace lets anyone pull without authenticating
    /// (`users: ["*"]`): only then does `/v2/` answer an anonymous client
    /// without a challenge.
    pub fn all_anonymous(&self) -> bool {
        self.list.iter().all(|ns| ns.anonymous())
    }

    /// The namespace a request selects, and the rest of its path: `ns` (a
    /// `?ns=` value) if given, else a leading path component naming a
    /// namespace, else the default. An unknown `ns` is `NAME_UNKNOWN`.
    pub fn route<'a>(
        &self,
        ns: Option<&str>,
        rest: &'a str,
    ) -> Result<(&Arc<Namespace>, &'a str), OciError> {
        if let Some(name) = ns {
            return match self.get(name) {
                Some(found) => Ok((found, rest)),
                None => Err(OciError::new(
                    ErrorCode::NameUnknown,
                    format!("no namespace {name:?} is configured here"),
                )),
            };
        }
        if let Some((first, after)) = rest.split_once('/') {
            if let Some(found) = self.get(first) {
                return Ok((found, after));
            }
        }
        Ok((self.default_namespace(), rest))
    }
}

#[cfg(test)]
mod filter_tests {
    use super::RepoFilter;

    fn globs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// `*` stays within a component, `**` crosses them; deny wins over
    /// allow; no allow list allows everything not denied.
    #[test]
    fn allow_and_deny_globs() {
        let filter = RepoFilter::new(&globs(&["library/*", "team/**"]), &globs(&["team/secret*"]))
            .expect("globs");
        assert!(filter.permits("library/alpine"));
        assert!(!filter.permits("library/a/b"), "* within one component");
        assert!(filter.permits("team/a/b/c"), "** across components");
        assert!(!filter.permits("team/secret-app"));
        assert!(!filter.permits("other/app"));
        let deny_only = RepoFilter::new(&[], &globs(&["evil/**"])).expect("globs");
        assert!(deny_only.permits("anything/else") && !deny_only.permits("evil/x"));
        assert!(RepoFilter::default().permits("x"));
        assert!(RepoFilter::new(&globs(&["a/[b"]), &[]).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, registry2_dir: bool) -> NamespaceSpec {
        NamespaceSpec {
            name: name.into(),
            registry2_dir,
            default: registry2_dir,
            ..NamespaceSpec::single("http://127.0.0.1:1".parse().expect("url"), None)
        }
    }

    #[test]
    fn names() {
        for ok in [
            "docker.io",
            "ghcr.io",
            "localhost:5000",
            "127.0.0.1:5001",
            "a",
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Docker.io",
            "a..b",
            "-a.io",
            "a.io:",
            "a.io:123456",
            "a/b",
            "a_b",
            "a.io:x",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
        let url = |s: &str| reqwest::Url::parse(s).expect("url");
        assert_eq!(
            name_of_url(&url("https://registry-1.docker.io")),
            "docker.io"
        );
        assert_eq!(
            name_of_url(&url("http://127.0.0.1:5001/")),
            "127.0.0.1:5001"
        );
        assert_eq!(name_of_url(&url("https://GHCR.io")), "ghcr.io");
    }

    #[test]
    fn routing() {
        let metrics = Arc::new(Metrics::default());
        let all = Namespaces::new(
            &[spec("docker.io", true), spec("localhost:5000", false)],
            &metrics,
            Duration::from_secs(1),
        )
        .expect("namespaces");
        let route = |ns, rest| {
            all.route(ns, rest)
                .map(|(n, r)| (n.name.clone(), r.to_owned()))
                .map_err(|e| e.code)
        };
        let ok = |n: &str, r: &str| Ok((n.to_owned(), r.to_owned()));
        assert_eq!(
            route(None, "library/a/manifests/1"),
            ok("docker.io", "library/a/manifests/1")
        );
        assert_eq!(
            route(None, "localhost:5000/a/manifests/1"),
            ok("localhost:5000", "a/manifests/1")
        );
        assert_eq!(
            route(None, "docker.io/library/a/blobs/x"),
            ok("docker.io", "library/a/blobs/x")
        );
        assert_eq!(
            route(Some("localhost:5000"), "a/manifests/1"),
            ok("localhost:5000", "a/manifests/1")
        );
        // `?ns=` wins: the path is the repository as it is.
        assert_eq!(
            route(Some("docker.io"), "localhost:5000/a"),
            ok("docker.io", "localhost:5000/a")
        );
        assert_eq!(
            route(Some("quay.io"), "a/manifests/1"),
            Err(ErrorCode::NameUnknown)
        );
        let key = all
            .get("localhost:5000")
            .expect("ns")
            .repo(&RepoName::parse("a").expect("name"));
        assert_eq!(key.namespace_dir(), Some("localhost_5000"));
        assert_eq!(all.default_namespace().dir(), None);
    }

    /// The scheduler learns the lifetime of every namespace stored in a
    /// directory of its own that sets one; the others live `proxy.ttl`.
    #[test]
    fn lifetimes_by_storage_directory() {
        let hour = Duration::from_secs(3600);
        let with_ttl = |name: &str, plain: bool, ttl: Option<Duration>| NamespaceSpec {
            ttl,
            ..spec(name, plain)
        };
        let ttls = Namespaces::ttls(&[
            with_ttl("docker.io", true, None),
            with_ttl("localhost:5000", false, Some(hour)),
            with_ttl("ghcr.io", false, Some(Duration::ZERO)),
            with_ttl("quay.io", false, None),
        ]);
        assert_eq!(
            ttls,
            HashMap::from([
                ("localhost_5000".to_owned(), hour),
                ("ghcr.io".to_owned(), Duration::ZERO),
            ])
        );
    }
}
