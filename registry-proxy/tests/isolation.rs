//! The tenant boundary, model-based: random sequences of pulls, purges and
//! evictions through the real router in process (in-memory storage); after
//! every step every user asks every namespace for every digest, tag and
//! catalog page, and nothing private may be served, listed, or told apart
//! (status, headers, body) from content never stored.
//!
//! Each namespace has a fake upstream of its own: `pub.test` (shared,
//! `users: ["*"]`, the default, stored where registry:2 keeps repositories,
//! with a `maxsize` its pulls exceed), `priv.test` (shared, `users:
//! [alice]`), `iso.test` (isolated, `users: [bob]`). Clients: alice, bob
//! (htpasswd, bcrypt cost 4) and anonymous. Two upstreams have a `team/app`
//! with other content; a layer is in `pub.test`'s and `priv.test`'s,
//! another in `priv.test`'s and `iso.test`'s; images are tagged `v1` and a
//! tag of their upstream's own.
//!
//! Steps: pulls (manifest by tag, then layers) by any user through any
//! namespace, and admin purges (repository, tag, digest in a repository,
//! in a namespace, everywhere). The scheduler's eviction pass runs after
//! every step and every round of checks (`pub.test`'s budget also runs it
//! in the background). Left out: warming (a pull, as far as the boundary
//! goes), pulls joining each other's fills (steps run one at a time, so
//! shrinking is deterministic), referrers content (none upstream; the
//! endpoint is probed), and budgets on private namespaces (their evictions
//! drop entries the model cannot follow).
//!
//! Checked after every step, for every user and namespace: each digest it
//! must not reveal (its upstream lacks it and, unless it is isolated, so
//! does the public one), through blobs (GET, HEAD, Range), manifests (GET,
//! HEAD) and referrers, answers as a digest never stored in the same
//! request; so do repository names its upstream lacks (tags list, manifest
//! by tag) and other upstreams' tags; every catalog page (`n` 1 and 1000;
//! `last` absent, each repository name, `_namespaces/-`; by path and by
//! `?ns=`) lists only repositories pulled through it and names no other
//! namespace; every layer a private namespace's pull linked, and no purge
//! in its scope dropped, is still stored. Upstreams count their requests:
//! at most four per request to the proxy.
//!
//! Size: `ISOLATION_CASES` cases (default 32) of 1 to `ISOLATION_OPS`
//! steps (default 10), each with a fresh runtime, upstreams and proxy; a
//! step checks with about 1,400 requests; the run prints its totals.

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt as _;
use proptest::prelude::{Just, ProptestConfig, Strategy};
use proptest::prop_oneof;
use proptest::test_runner::TestRunner;
use registry_proxy::admin::{AdminAccess, AdminToken, admin_app};
use registry_proxy::layout;
use registry_proxy::namespace::{NamespaceSpec, Namespaces, Sharing};
use registry_proxy::oci::{Digest, OCI_MANIFEST};
use support::InProcess;
use tower::ServiceExt as _;

/// The byte budget of `pub.test`: less than its smallest image, so that
/// every pull through it is followed by evictions.
const PUB_BUDGET: u64 = 1000;

/// Requests a check keeps in flight at once.
const PARALLEL: usize = 8;

/// The admin token the purges carry.
const ADMIN_TOKEN: &str = "isolation-admin";

/// Every repository name any upstream has.
const ALL_REPOS: [&str; 4] = ["team/app", "lib/base", "corp/secret", "iso/vault"];

/// A repository no upstream has.
const NEVER_REPO: &str = "never/stored";

/// A tag no upstream has.
const NEVER_TAG: &str = "tag-of-nobody";

/// The bytes of a digest no upstream has.
const NEVER_DIGEST: &[u8] = b"isolation: never stored";

/// The headers compared between two answers (`content-length` only where
/// the names asked for are equally long).
const COMPARED: &str = "content-type content-length content-range accept-ranges \
    docker-content-digest etag location link www-authenticate oci-filters-applied";

/// A client of the proxy: `None` anonymous, else a user of the htpasswd
/// file.
type User = Option<&'static str>;

/// Every client.
const USERS: [User; 3] = [None, Some("alice"), Some("bob")];

/// Status, headers and body of an answer.
type Reply = (StatusCode, HeaderMap, Bytes);

/// Requests that must answer alike: method, range, the names asked for
/// (the first never stored), the URI with `{}` for the name, and whether
/// `content-length` is compared.
type Group<'a> = (Method, Option<&'a str>, &'a [String], String, bool);

/// What a namespace is, and what its upstream holds: repositories, each
/// with the labels of its layers, tagged `v1` and `tag`.
struct Def {
    name: &'static str,
    /// Its `users` (`*`: anyone, anonymous too).
    users: &'static [&'static str],
    isolated: bool,
    images: &'static [(&'static str, &'static [&'static str])],
    tag: &'static str,
}

/// `pub.test`, `priv.test` and `iso.test`.
static DEFS: [Def; 3] = [
    Def {
        name: "pub.test",
        users: &["*"],
        isolated: false,
        images: &[
            ("team/app", &["pub team/app", "pub+priv"]),
            ("lib/base", &["pub lib/base"]),
        ],
        tag: "tag-of-pub",
    },
    Def {
        name: "priv.test",
        users: &["alice"],
        isolated: false,
        images: &[
            ("team/app", &["priv team/app", "pub+priv"]),
            ("corp/secret", &["priv corp/secret", "priv+iso"]),
        ],
        tag: "tag-of-priv",
    },
    Def {
        name: "iso.test",
        users: &["bob"],
        isolated: true,
        images: &[("iso/vault", &["iso iso/vault", "priv+iso"])],
        tag: "tag-of-iso",
    },
];

/// A namespace of the proxy (an index into [`DEFS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Ns {
    Pub,
    Priv,
    Iso,
}

/// Every namespace, in configuration order.
const NAMESPACES: [Ns; 3] = [Ns::Pub, Ns::Priv, Ns::Iso];

impl Ns {
    /// What it is.
    fn def(self) -> &'static Def {
        &DEFS[self as usize]
    }

    /// The name clients select it by.
    fn name(self) -> &'static str {
        self.def().name
    }

    /// Its upstream's `n`th repository (modulo how many it has).
    fn repo(self, n: usize) -> &'static str {
        let images = self.def().images;
        images[n % images.len()].0
    }

    /// Whether `user` may pull through it.
    fn allows(self, user: User) -> bool {
        let users = self.def().users;
        users.contains(&"*") || user.is_some_and(|u| users.contains(&u))
    }

    /// Its configuration, in front of the upstream at `base`.
    fn spec(self, base: &str) -> NamespaceSpec {
        let def = self.def();
        NamespaceSpec {
            name: def.name.to_owned(),
            sharing: [Sharing::Shared, Sharing::Isolated][usize::from(def.isolated)],
            users: Some(def.users.iter().map(|u| (*u).to_owned()).collect()),
            registry2_dir: self == Self::Pub,
            default: self == Self::Pub,
            max_size: (self == Self::Pub).then_some(PUB_BUDGET),
            ..NamespaceSpec::single(base.parse().expect("url"), None)
        }
    }
}

/// The `Authorization` header of `user` (password `<name>-secret`), if any.
fn authorization(user: User) -> Option<String> {
    let pair = format!("{0}:{0}-secret", user?);
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    Some(format!("Basic {encoded}"))
}

/// The htpasswd users alice and bob, made once for every case (bcrypt is
/// slow on purpose; verified passwords are remembered).
fn htpasswd() -> Arc<registry_proxy::auth::Htpasswd> {
    static AUTH: OnceLock<Arc<registry_proxy::auth::Htpasswd>> = OnceLock::new();
    let auth = AUTH.get_or_init(|| {
        let line = |user: &str| {
            let hash = bcrypt::hash(format!("{user}-secret"), 4).expect("bcrypt");
            format!("{user}:{hash}\n")
        };
        let text = line("alice") + &line("bob");
        Arc::new(registry_proxy::auth::Htpasswd::parse("cache", &text).expect("htpasswd"))
    });
    Arc::clone(auth)
}

/// An image upstream: its manifest and its layers (about 1 KiB each).
struct Image {
    manifest: Bytes,
    layers: Vec<Bytes>,
}

impl Image {
    /// The image of `repo` upstream of `ns`, its layers labelled `labels`.
    fn new(ns: Ns, repo: &str, labels: &[&str]) -> Self {
        let layers: Vec<Bytes> = labels
            .iter()
            .map(|label| Bytes::from(format!("layer {label}\n").repeat(64)))
            .collect();
        let descriptors: Vec<serde_json::Value> = layers
            .iter()
            .map(|l| {
                let (digest, size) = (Digest::of(l).to_string(), l.len());
                let media_type = "application/vnd.oci.image.layer.v1.tar";
                serde_json::json!({"mediaType": media_type, "digest": digest, "size": size})
            })
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "layers": descriptors,
            "annotations": {"origin": format!("{}/{repo}", ns.name())},
        });
        let manifest = Bytes::from(manifest.to_string());
        Self { manifest, layers }
    }
}

/// What the three upstreams hold.
struct World {
    images: HashMap<(Ns, &'static str), Image>,
    /// Every digest of any upstream, with the namespaces whose upstream
    /// holds it.
    digests: BTreeMap<Digest, BTreeSet<Ns>>,
}

impl World {
    /// The three upstreams' content.
    fn new() -> Self {
        let mut images = HashMap::new();
        let mut digests: BTreeMap<Digest, BTreeSet<Ns>> = BTreeMap::new();
        for ns in NAMESPACES {
            for (repo, labels) in ns.def().images {
                let image = Image::new(ns, repo, labels);
                for bytes in image.layers.iter().chain([&image.manifest]) {
                    digests.entry(Digest::of(bytes)).or_default().insert(ns);
                }
                images.insert((ns, *repo), image);
            }
        }
        Self { images, digests }
    }

    /// The `n`th digest (modulo how many there are).
    fn digest(&self, n: usize) -> Digest {
        let all: Vec<&Digest> = self.digests.keys().collect();
        *all[n % all.len()]
    }

    /// The digests `ns` must not reveal: its own upstream lacks them and,
    /// unless it is isolated, so does the public one (public content may
    /// be served through any shared namespace).
    fn secret_digests(&self, ns: Ns) -> Vec<String> {
        let secret = |holders: &BTreeSet<Ns>| {
            !holders.contains(&ns) && (ns.def().isolated || !holders.contains(&Ns::Pub))
        };
        self.digests
            .iter()
            .filter(|(_, holders)| secret(holders))
            .map(|(d, _)| d.to_string())
            .collect()
    }
}

/// One namespace's upstream: what the world holds for it, counting the
/// requests it answers.
struct Fake {
    world: Arc<World>,
    ns: Ns,
    /// Requests it answered.
    asked: AtomicUsize,
}

/// A 404 with an OCI error `code`.
fn unknown(code: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": "not here"}]});
    let json = [(header::CONTENT_TYPE, "application/json")];
    (StatusCode::NOT_FOUND, json, body.to_string()).into_response()
}

/// `bytes` as a manifest or blob answer of type `media_type`.
fn found(bytes: &Bytes, media_type: &str, head: bool) -> Response {
    let mut response = Response::new(Body::from(if head { Bytes::new() } else { bytes.clone() }));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, media_type.parse().expect("type"));
    let digest = Digest::of(bytes).to_string().parse().expect("digest");
    headers.insert("docker-content-digest", digest);
    headers.insert(header::CONTENT_LENGTH, bytes.len().into());
    response
}

/// The fake upstream's API: tags lists, manifests (by `v1`, its own tag
/// or digest), blobs (under any repository name); 404 otherwise
/// (referrers included: the proxy falls back to the tag schema).
async fn serve(fake: State<Arc<Fake>>, method: Method, Path(rest): Path<String>) -> Response {
    fake.asked.fetch_add(1, Ordering::Relaxed);
    let (head, tag) = (method == Method::HEAD, fake.ns.def().tag);
    let image = |repo: &str| {
        let mut images = fake.world.images.iter();
        images
            .find(|((n, r), _)| (*n, *r) == (fake.ns, repo))
            .map(|(_, i)| i)
    };
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        if image(repo).is_none() {
            return unknown("NAME_UNKNOWN");
        }
        return axum::Json(serde_json::json!({"name": repo, "tags": [tag, "v1"]})).into_response();
    }
    if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
        let manifest = image(repo)
            .map(|i| &i.manifest)
            .filter(|m| [tag, "v1", Digest::of(m).to_string().as_str()].contains(&reference));
        return match manifest {
            Some(bytes) => found(bytes, OCI_MANIFEST, head),
            None => unknown("MANIFEST_UNKNOWN"),
        };
    }
    let digest = rest.rsplit_once("/blobs/").map_or("", |(_, d)| d);
    let mut layers = fake
        .world
        .images
        .iter()
        .filter(|((n, _), _)| *n == fake.ns)
        .flat_map(|(_, i)| &i.layers);
    match layers.find(|l| Digest::of(l).to_string() == digest) {
        Some(bytes) => found(bytes, "application/octet-stream", head),
        None => unknown("BLOB_UNKNOWN"),
    }
}

/// One step of a case (`own_tag`: the upstream's own tag, not `v1`;
/// `digest`: an index into [`World::digests`]).
#[derive(Debug, Clone)]
enum Op {
    /// `Pull(user, ns, repo, own_tag)`: the manifest by tag, then every
    /// layer.
    Pull(User, Ns, &'static str, bool),
    /// `PurgeRepository(ns, repo)`.
    PurgeRepository(Ns, &'static str),
    /// `PurgeTag(ns, repo, own_tag)`.
    PurgeTag(Ns, &'static str, bool),
    /// `PurgeRepositoryDigest(ns, repo, digest)`.
    PurgeRepositoryDigest(Ns, &'static str, usize),
    /// `PurgeDigest(ns, digest)`: in one namespace, or everywhere.
    PurgeDigest(Option<Ns>, usize),
}

/// Any namespace.
fn namespace() -> impl Strategy<Value = Ns> {
    prop_oneof![Just(Ns::Pub), Just(Ns::Priv), Just(Ns::Iso)]
}

/// Any step: mostly pulls (most by a user the namespace allows), then
/// purges of every kind.
fn op() -> impl Strategy<Value = Op> {
    let user = prop_oneof![Just(None), Just(Some("alice")), Just(Some("bob"))];
    let tag = || proptest::bool::ANY;
    prop_oneof![
        4 => (namespace(), 0..3usize, 0..2usize, tag()).prop_map(|(ns, u, r, own)| {
            let allowed: Vec<User> = USERS.into_iter().filter(|u| ns.allows(*u)).collect();
            Op::Pull(allowed[u % allowed.len()], ns, ns.repo(r), own)
        }),
        1 => (namespace(), user, 0..2usize, tag())
            .prop_map(|(ns, user, r, own)| Op::Pull(user, ns, ns.repo(r), own)),
        1 => (namespace(), 0..2usize).prop_map(|(ns, r)| Op::PurgeRepository(ns, ns.repo(r))),
        1 => (namespace(), 0..2usize, tag())
            .prop_map(|(ns, r, own)| Op::PurgeTag(ns, ns.repo(r), own)),
        1 => (namespace(), 0..2usize, 0..12usize)
            .prop_map(|(ns, r, d)| Op::PurgeRepositoryDigest(ns, ns.repo(r), d)),
        1 => (proptest::option::of(namespace()), 0..12usize)
            .prop_map(|(ns, d)| Op::PurgeDigest(ns, d)),
    ]
}

/// What the proxy may have stored, as the steps so far made it.
#[derive(Default)]
struct Model {
    /// Repositories pulled through each namespace: all its catalog may list.
    pulled: HashSet<(Ns, &'static str)>,
    /// Layers linked by pulls, by namespace and repository, that no purge
    /// in their scope dropped.
    links: HashSet<(Ns, &'static str, Digest)>,
}

/// An answer as the client sees it (status, compared headers, body), with
/// the name asked for masked.
#[derive(Debug, PartialEq, Eq)]
struct Answer(u16, Vec<(&'static str, String)>, String);

impl Answer {
    /// `reply`, with `name` (and, for a digest, its hex part) written
    /// `<asked>`; `content-length` compared only when `lengths`.
    fn of((status, headers, body): &Reply, name: &str, lengths: bool) -> Self {
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        let hide = |text: &str| text.replace(name, "<asked>").replace(hex, "<asked>");
        let compared = COMPARED
            .split_whitespace()
            .filter(|h| lengths || *h != "content-length")
            .filter_map(|h| Some((h, hide(headers.get(h)?.to_str().unwrap_or("<binary>")))));
        let body = hide(&String::from_utf8_lossy(body));
        Self(status.as_u16(), compared.collect(), body)
    }
}

/// One case: the upstreams, the proxy, and the model.
struct Case {
    proxy: InProcess,
    world: Arc<World>,
    fakes: Vec<Arc<Fake>>,
    model: Model,
    /// Requests sent to the proxy.
    asked: AtomicUsize,
    /// Where the case is, for failure messages.
    at: String,
}

impl Case {
    /// Fresh upstreams and a fresh proxy in front of them.
    async fn open() -> Self {
        let world = Arc::new(World::new());
        let (mut fakes, mut specs) = (Vec::new(), Vec::new());
        for ns in NAMESPACES {
            let (world, asked) = (Arc::clone(&world), AtomicUsize::new(0));
            let fake = Arc::new(Fake { world, ns, asked });
            let router = axum::Router::new().route("/v2/{*rest}", any(serve));
            let base = support::fakes::serve(router.with_state(Arc::clone(&fake))).await;
            specs.push(ns.spec(&base));
            fakes.push(fake);
        }
        let proxy = InProcess::with_settings(&specs, Duration::from_secs(60), |settings| {
            settings.auth = Some(htpasswd());
            settings.scheduler.bounds.namespaces = Namespaces::max_sizes(&specs);
        })
        .await;
        let (model, asked, at) = (Model::default(), AtomicUsize::new(0), String::new());
        Self {
            proxy,
            world,
            fakes,
            model,
            asked,
            at,
        }
    }

    /// Sends `method uri` as `user` (with `range`, if any).
    async fn ask(&self, user: User, method: Method, uri: &str, range: Option<&str>) -> Reply {
        self.asked.fetch_add(1, Ordering::Relaxed);
        let login = authorization(user);
        let headers: Vec<(&str, &str)> = [("authorization", login.as_deref()), ("range", range)]
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?)))
            .collect();
        let (parts, body) = self.proxy.send(method, uri, &headers).await.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20).await.expect("body");
        (parts.status, parts.headers, body)
    }

    /// Carries out `op` and updates the model.
    async fn apply(&mut self, op: &Op) {
        let purged = |ns: Ns| format!("namespace={}", ns.name());
        match *op {
            Op::Pull(user, ns, repo, own_tag) => self.pull(user, ns, repo, own_tag).await,
            Op::PurgeRepository(ns, repo) => {
                let query = format!("{}&repository={repo}", purged(ns));
                self.purge(&query, true).await;
                self.model.links.retain(|(n, r, _)| (*n, *r) != (ns, repo));
            }
            Op::PurgeTag(ns, repo, own_tag) => {
                let tag = if own_tag { ns.def().tag } else { "v1" };
                let query = format!("{}&repository={repo}&tag={tag}", purged(ns));
                self.purge(&query, true).await;
            }
            Op::PurgeRepositoryDigest(ns, repo, digest) => {
                let digest = self.world.digest(digest);
                let query = format!("{}&repository={repo}&digest={digest}", purged(ns));
                self.purge(&query, true).await;
                self.model.links.remove(&(ns, repo, digest));
            }
            Op::PurgeDigest(Some(ns), digest) => {
                let digest = self.world.digest(digest);
                // Scoped to the namespace, or refused: either is sound.
                let query = format!("{}&digest={digest}", purged(ns));
                if self.purge(&query, false).await {
                    let links = &mut self.model.links;
                    links.retain(|(n, _, d)| (*n, *d) != (ns, digest));
                }
            }
            Op::PurgeDigest(None, digest) => {
                let digest = self.world.digest(digest);
                self.purge(&format!("digest={digest}"), true).await;
                self.model.links.retain(|(_, _, d)| *d != digest);
            }
        }
        self.proxy.state.blobs.fills_done().await;
    }

    /// `user` pulls `repo` through `ns`: refused when `ns` does not allow
    /// `user`, else served `ns`'s upstream's manifest and layers, which the
    /// model records.
    async fn pull(&mut self, user: User, ns: Ns, repo: &'static str, own_tag: bool) {
        let tag = if own_tag { ns.def().tag } else { "v1" };
        let uri = format!("/v2/{}/{repo}/manifests/{tag}", ns.name());
        let (status, _, body) = self.ask(user, Method::GET, &uri, None).await;
        let at = self.at.clone();
        if !ns.allows(user) {
            let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
            assert!(refused, "{at}: {user:?} was not refused {uri}: {status}");
            return;
        }
        let image = &self.world.images[&(ns, repo)];
        let text = String::from_utf8_lossy(&body);
        let served = status == StatusCode::OK && body == image.manifest;
        assert!(served, "{at}: {user:?} pulling {uri} got {status} {text}");
        for l in &image.layers {
            let digest = Digest::of(l);
            let uri = format!("/v2/{}/{repo}/blobs/{digest}", ns.name());
            let (status, _, body) = self.ask(user, Method::GET, &uri, None).await;
            let whole = status == StatusCode::OK && body == *l;
            assert!(whole, "{at}: {user:?} pulling {uri} got {status}");
            self.model.links.insert((ns, repo, digest));
        }
        self.model.pulled.insert((ns, repo));
    }

    /// `POST /admin/purge?<query>` through the admin router: whether it
    /// answered 200 (which it must when `must`).
    async fn purge(&self, query: &str, must: bool) -> bool {
        let request = Request::post(format!("/admin/purge?{query}"))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(Body::empty())
            .expect("request");
        let (token, users) = (AdminToken::new(ADMIN_TOKEN), HashSet::new());
        let admin = admin_app(self.proxy.state.clone(), AdminAccess { token, users });
        let response = admin.oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await;
        let (done, at) = (status == StatusCode::OK, &self.at);
        assert!(done || !must, "{at}: purge {query}: {status} {body:?}");
        done
    }

    /// Every check, for every user and namespace, each round of them
    /// followed by the eviction pass its reads may call for (as the
    /// background loop would run it, only now: deterministically).
    async fn check(&self) {
        self.evicted_keeping_private_layers().await;
        for user in USERS {
            for ns in NAMESPACES {
                self.secrets_unknown(user, ns).await;
                self.catalog_lists_only_its_own(user, ns).await;
            }
        }
        self.evicted_keeping_private_layers().await;
    }

    /// Runs the eviction pass (over `pub.test`'s budget); then every layer
    /// a private namespace's pull linked, and no purge in its scope
    /// dropped, is still stored: nothing another namespace did (its pulls,
    /// probes, budget or purges) deleted it.
    async fn evicted_keeping_private_layers(&self) {
        let _evicted = self.proxy.state.scheduler.evict_over_bounds().await;
        for (ns, repo, digest) in self.model.links.iter().filter(|l| l.0 != Ns::Pub) {
            let stat = self.proxy.driver.stat(&layout::blob_data(digest)).await;
            let (at, ns) = (&self.at, ns.name());
            assert!(stat.is_ok(), "{at}: layer {digest} of {ns}/{repo} is gone");
        }
    }

    /// Every digest, repository name and tag `ns` must not reveal, asked
    /// through each endpoint that takes it, answers as one never stored.
    async fn secrets_unknown(&self, user: User, ns: Ns) {
        let n = ns.name();
        let names = |never: &str, secret: Vec<String>| -> Vec<String> {
            std::iter::once(never.to_owned()).chain(secret).collect()
        };
        let never_digest = Digest::of(NEVER_DIGEST).to_string();
        let digests = names(&never_digest, self.world.secret_digests(ns));
        let own = |r: &&str| ns.def().images.iter().any(|(o, _)| o == r);
        let foreign_repos = ALL_REPOS.into_iter().filter(|r| !own(r)).map(str::to_owned);
        let repos = names(NEVER_REPO, foreign_repos.collect());
        let others = NAMESPACES.into_iter().filter(|o| *o != ns);
        let tags = names(NEVER_TAG, others.map(|o| o.def().tag.to_owned()).collect());
        let mut groups: Vec<Group> = Vec::new();
        let mut probe_repos = vec![NEVER_REPO, "team/app", ns.repo(0)];
        probe_repos.dedup();
        for repo in probe_repos {
            for (method, endpoint, range) in [
                (Method::GET, "blobs", None),
                (Method::HEAD, "blobs", None),
                (Method::GET, "blobs", Some("bytes=0-9")),
                (Method::GET, "manifests", None),
                (Method::HEAD, "manifests", None),
                (Method::GET, "referrers", None),
            ] {
                let uri = format!("/v2/{n}/{repo}/{endpoint}/{{}}");
                groups.push((method, range, &digests, uri, true));
            }
            for method in [Method::GET, Method::HEAD] {
                let uri = format!("/v2/{n}/{repo}/manifests/{{}}");
                groups.push((method, None, &tags, uri, false));
            }
        }
        for (method, path) in [
            (Method::GET, "tags/list"),
            (Method::GET, "manifests/v1"),
            (Method::HEAD, "manifests/v1"),
        ] {
            groups.push((method, None, &repos, format!("/v2/{n}/{{}}/{path}"), false));
        }
        for group in groups {
            self.same_as_never(user, group).await;
        }
    }

    /// Asks `group`'s requests as `user`, and asserts that every answer
    /// equals the first one's (for a name never stored), the name masked.
    async fn same_as_never(&self, user: User, group: Group<'_>) {
        let (method, range, names, uri, lengths) = group;
        let answers: Vec<(String, Answer)> = futures::stream::iter(names)
            .map(|name| {
                let (uri, method) = (uri.replace("{}", name), method.clone());
                async move {
                    let reply = self.ask(user, method, &uri, range).await;
                    (uri, Answer::of(&reply, name, lengths))
                }
            })
            .buffered(PARALLEL)
            .collect()
            .await;
        let ((never_uri, never), rest) = answers.split_first().expect("a reference");
        for (uri, answer) in rest {
            assert_eq!(
                answer, never,
                "{}: {user:?}: {method} {uri} (range {range:?}) differs from {never_uri}",
                self.at
            );
        }
    }

    /// Every page of `ns`'s catalog lists only repositories pulled through
    /// it, and no answer names another namespace, nor a repository not
    /// pulled through it (but the request's own `last`).
    async fn catalog_lists_only_its_own(&self, user: User, ns: Ns) {
        let n = ns.name();
        let mine = |(n, r): &(Ns, &'static str)| (*n == ns).then_some(*r);
        let listed: BTreeSet<&str> = self.model.pulled.iter().filter_map(mine).collect();
        let others = NAMESPACES.into_iter().filter(|o| *o != ns).map(Ns::name);
        let foreign: Vec<&str> = ALL_REPOS
            .into_iter()
            .filter(|r| !listed.contains(r))
            .chain(others)
            .collect();
        // By path (for `pub.test`, the default, without one too) and by `?ns=`.
        let bases = match ns {
            Ns::Pub => ["/v2/_catalog?".into(), "/v2/pub.test/_catalog?".into()],
            _ => [
                format!("/v2/{n}/_catalog?"),
                format!("/v2/_catalog?ns={n}&"),
            ],
        };
        let lasts = [None, Some("_namespaces/-")].into_iter();
        for last in lasts.chain(ALL_REPOS.into_iter().map(Some)) {
            for (base, size) in bases.iter().flat_map(|b| [(b, 1), (b, 1000)]) {
                let last_query = last.map(|l| format!("&last={l}")).unwrap_or_default();
                let uri = format!("{base}n={size}{last_query}");
                let (status, headers, body) = self.ask(user, Method::GET, &uri, None).await;
                let link = headers.get(header::LINK).and_then(|v| v.to_str().ok());
                let text = format!("{}\n{}", String::from_utf8_lossy(&body), link.unwrap_or(""));
                let at = &self.at;
                for name in foreign.iter().filter(|f| Some(**f) != last) {
                    let named = text.contains(*name);
                    assert!(!named, "{at}: {user:?}: {uri} names {name}: {text}");
                }
                if status != StatusCode::OK {
                    continue;
                }
                let page: serde_json::Value = serde_json::from_slice(&body).expect("json");
                for repo in page["repositories"].as_array().expect("a list") {
                    let repo = repo.as_str().expect("a name");
                    let own = listed.contains(repo);
                    assert!(own, "{at}: {user:?}: {uri} lists {repo}");
                }
            }
        }
    }
}

/// What the cases of a run added up to: cases, steps, requests to the
/// proxy, requests to the upstreams.
#[derive(Default)]
struct Totals([AtomicU64; 4]);

/// Runs `ops` on a fresh runtime, upstreams and proxy, checking after
/// every step; adds what it did to `totals`.
fn run_case(ops: &[Op], totals: &Totals) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut case = Case::open().await;
        for (n, op) in ops.iter().enumerate() {
            case.at = format!("step {} of {} ({op:?})", n + 1, ops.len());
            case.apply(op).await;
            case.check().await;
        }
        let asked = case.asked.load(Ordering::Relaxed);
        let counts = case.fakes.iter().map(|f| f.asked.load(Ordering::Relaxed));
        let upstream: usize = counts.sum();
        let bounded = upstream <= 4 * asked;
        assert!(
            bounded,
            "{upstream} upstream requests, {asked} to the proxy"
        );
        for (total, n) in totals.0.iter().zip([1, ops.len(), asked, upstream]) {
            total.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
}

/// The number in environment variable `name`, else `default`.
fn setting(name: &str, default: u32) -> u32 {
    let value = std::env::var(name).ok();
    value.and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The model-based test: see the module's documentation.
#[test]
fn no_user_learns_through_any_namespace_what_another_keeps_private() {
    let cases = setting("ISOLATION_CASES", 32);
    let max_ops = setting("ISOLATION_OPS", 10).max(1) as usize;
    let config = ProptestConfig {
        cases,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let (totals, started) = (Totals::default(), Instant::now());
    let mut runner = TestRunner::new(config);
    let result = runner.run(&proptest::collection::vec(op(), 1..=max_ops), |ops| {
        run_case(&ops, &totals);
        Ok(())
    });
    let [ran, steps, asked, upstream] = totals.0.each_ref().map(|t| t.load(Ordering::Relaxed));
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "isolation: {ran} of {cases} cases, {steps} steps, {asked} requests to the proxy, \
         {upstream} upstream, {seconds:.1} s"
    );
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
