//! What the cache does, for operators: registry:2's proxy counters per
//! namespace and content type (requests, hits, misses, bytes pulled from
//! upstream, bytes pushed to clients), proofs of access and denials per
//! namespace; fills in flight and the clients reading them; stale
//! serves; upstream latency and errors by status; scheduler entries,
//! expirations and bytes freed; storage latency per driver operation.
//! Served on the debug listener as Prometheus text (`/metrics`) and as JSON
//! in registry:2's shape (`/debug/vars`: `registry.proxy.blobs`,
//! `registry.proxy.manifests` summed over namespaces, plus ours under
//! `registry_proxy`, with each namespace's counters).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::json;

pub use crate::oci::Kind;

impl EncodeLabelValue for Kind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Blob => "blob",
            Self::Manifest => "manifest",
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContentLabel {
    namespace: String,
    kind: Kind,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabel {
    namespace: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    namespace: String,
    /// One URL of the namespace's upstream.
    upstream: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    /// The HTTP status code, or `network` when no answer came.
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StorageLabel {
    driver: &'static str,
    op: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GcLabel {
    /// What was removed (`blob`, `link`, `tag`, `writer`) or the phase
    /// timed (`mark`, `sweep`).
    what: &'static str,
}

/// Garbage collection's counters.
#[derive(Debug, Default)]
struct GcMetrics {
    runs: Counter,
    removed: Family<GcLabel, Counter>,
    bytes_freed: Counter,
    marked: Gauge,
    phase_seconds: Family<GcLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

/// Why blob data was evicted.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum EvictReason {
    /// Over `proxy.maxsize` (label `budget`).
    Budget,
    /// Over a namespace's `maxsize` (label `namespace`).
    Namespace,
    /// The volume above `highwatermark` (label `watermark`).
    Watermark,
    /// A write found the disk full (label `full`).
    Full,
}

impl EncodeLabelValue for EvictReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Budget => "budget",
            Self::Namespace => "namespace",
            Self::Watermark => "watermark",
            Self::Full => "full",
        })
    }
}

/// An eviction's reason, as a label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvictLabel {
    reason: EvictReason,
}

/// The byte budget's figures.
#[derive(Debug, Default)]
struct BudgetMetrics {
    stored: Gauge,
    budget: Gauge,
    reserved: Gauge,
    evictions: Family<EvictLabel, Counter>,
    evicted_bytes: Family<EvictLabel, Counter>,
    unstored: Counter,
}

/// Latency buckets: 0.5 ms to about 16 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// registry:2's counters for one kind of content.
#[derive(Debug, Clone, Default)]
struct KindCounters {
    requests: Counter,
    hits: Counter,
    misses: Counter,
    bytes_pulled: Counter,
    bytes_pushed: Counter,
}

impl KindCounters {
    fn debug_vars(&self) -> serde_json::Value {
        json!({
            "Requests": self.requests.get(),
            "Hits": self.hits.get(),
            "Misses": self.misses.get(),
            "BytesPulled": self.bytes_pulled.get(),
            "BytesPushed": self.bytes_pushed.get(),
        })
    }
}

/// One namespace's counters; an update is one atomic add (but for the
/// repositories asked most, counted under the namespace's own lock).
#[derive(Debug, Default)]
pub struct NamespaceMetrics {
    blobs: KindCounters,
    manifests: KindCounters,
    proofs: Counter,
    denials: Counter,
    repository_denials: Counter,
    zero_copy_bytes: Counter,
    /// Manifest GETs by repository, the most frequent kept.
    asked: Mutex<crate::topk::TopK>,
}

impl NamespaceMetrics {
    /// A manifest of `repo` was sent to a client.
    pub fn manifest_sent(&self, repo: &str) {
        crate::sync::lock(&self.asked).add(repo);
    }

    fn of(&self, kind: Kind) -> &KindCounters {
        match kind {
            Kind::Blob => &self.blobs,
            Kind::Manifest => &self.manifests,
        }
    }

    /// A request for `kind` content, answered from storage (`hit`) or not.
    pub fn request(&self, kind: Kind, hit: bool) {
        let counters = self.of(kind);
        counters.requests.inc();
        if hit {
            counters.hits.inc();
        } else {
            counters.misses.inc();
        }
    }

    /// A request for `kind` content that failed before it could be answered.
    pub fn failed_request(&self, kind: Kind) {
        self.of(kind).requests.inc();
    }

    /// `n` bytes of `kind` content received from the upstream.
    pub fn pulled(&self, kind: Kind, n: u64) {
        self.of(kind).bytes_pulled.inc_by(n);
    }

    /// `n` bytes of `kind` content sent to a client.
    pub fn pushed(&self, kind: Kind, n: u64) {
        self.of(kind).bytes_pushed.inc_by(n);
    }

    /// The upstream was asked to prove access to a stored blob.
    pub fn proof(&self) {
        self.proofs.inc();
    }

    /// A request was refused: a client not allowed, or an upstream that
    /// denied a proof of access.
    pub fn denial(&self) {
        self.denials.inc();
    }

    /// A request for a repository the namespace's lists do not allow was
    /// refused.
    pub fn repository_denial(&self) {
        self.repository_denials.inc();
    }

    /// `n` blob bytes sent to a client with `sendfile` (besides
    /// [`Self::pushed`], which counts them too).
    pub fn sent_zero_copy(&self, n: u64) {
        self.zero_copy_bytes.inc_by(n);
    }
}

/// A new metric of type `M`, registered in `registry` as `name` with
/// `help`.
fn registered<M: prometheus_client::registry::Metric + Clone + Default>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

/// The counters of the proxy.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    content: Vec<Family<ContentLabel, Counter>>,
    proofs: Family<NamespaceLabel, Counter>,
    denials: Family<NamespaceLabel, Counter>,
    repository_denials: Family<NamespaceLabel, Counter>,
    zero_copy_bytes: Family<NamespaceLabel, Counter>,
    namespaces: Mutex<Vec<(String, Arc<NamespaceMetrics>)>>,
    fills_in_flight: Gauge,
    fill_clients: Gauge,
    connections: Gauge,
    stale_serves: Counter,
    upstream_latency: Histogram,
    upstream_errors: Family<StatusLabel, Counter>,
    upstream_answers: Family<UpstreamLabel, Counter>,
    pull_limit: Family<NamespaceLabel, Gauge>,
    pulls_remaining: Family<NamespaceLabel, Gauge>,
    scheduler_entries: Gauge,
    expirations: Counter,
    bytes_freed: Counter,
    writers_purged: Counter,
    storage_latency: Histograms<StorageLabel>,
    gc: GcMetrics,
    budget: BudgetMetrics,
    leader: Gauge,
    auth_failures: Counter,
    corrupt_blobs: Counter,
    fills_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("registry_proxy");
        let mut content: Vec<Family<ContentLabel, Counter>> = Vec::new();
        for (name, help) in [
            (
                "requests",
                "Requests (GET and HEAD) by namespace and content kind",
            ),
            ("hits", "Requests answered from storage"),
            ("misses", "Requests that needed the upstream's content"),
            ("bytes_pulled", "Content bytes received from the upstream"),
            ("bytes_pushed", "Content bytes sent to clients"),
        ] {
            content.push(registered(&mut registry, name, help));
        }
        let proofs: Family<NamespaceLabel, Counter> = registered(
            &mut registry,
            "proofs",
            "Upstream requests proving an isolated namespace's access to a stored blob",
        );
        let denials: Family<NamespaceLabel, Counter> = registered(
            &mut registry,
            "denials",
            "Requests refused: client not allowed, or access not proven upstream",
        );
        let repository_denials: Family<NamespaceLabel, Counter> = registered(
            &mut registry,
            "repository_denials",
            "Requests refused without asking the upstream: the repository is not allowed in the namespace",
        );
        let zero_copy_bytes: Family<NamespaceLabel, Counter> = registered(
            &mut registry,
            "zero_copy_bytes",
            "Blob bytes sent from a local file with sendfile, never copied through memory (also in bytes_pushed)",
        );
        let fills_in_flight: Gauge = registered(
            &mut registry,
            "fills_in_flight",
            "Blob fills from the upstream running now",
        );
        let stale_serves: Counter = registered(
            &mut registry,
            "stale_serves",
            "Tags served from the cache because the upstream was unavailable",
        );
        let connections: Gauge = registered(
            &mut registry,
            "connections",
            "Client connections open on the public listener",
        );
        let fill_clients: Gauge = registered(
            &mut registry,
            "fill_clients",
            "Clients reading a blob from a running fill (shared by all of them)",
        );
        let upstream_latency = latency_histogram();
        registry.register(
            "upstream_request_duration_seconds",
            "Time from sending an upstream request to its response head",
            upstream_latency.clone(),
        );
        let upstream_errors: Family<StatusLabel, Counter> = registered(
            &mut registry,
            "upstream_errors",
            "Upstream requests that failed, by status (network: no answer)",
        );
        let upstream_answers: Family<UpstreamLabel, Counter> = registered(
            &mut registry,
            "upstream_answers",
            "Upstream answers (not unreachable, 5xx or 429) by namespace and URL of its chain",
        );
        let pull_limit: Family<NamespaceLabel, Gauge> = registered(
            &mut registry,
            "upstream_pull_limit",
            "The pull budget per window the upstream last announced (ratelimit-limit)",
        );
        let pulls_remaining: Family<NamespaceLabel, Gauge> = registered(
            &mut registry,
            "upstream_pulls_remaining",
            "The pulls left in the window the upstream last announced (ratelimit-remaining)",
        );
        let scheduler_entries: Gauge = registered(
            &mut registry,
            "scheduler_entries",
            "Cached blobs and manifests (per repository) the TTL scheduler tracks",
        );
        let expirations: Counter =
            registered(&mut registry, "expirations", "Scheduler entries expired");
        let bytes_freed: Counter = registered(
            &mut registry,
            "bytes_freed",
            "Bytes of content deleted by expiry",
        );
        let writers_purged: Counter = registered(
            &mut registry,
            "writers_purged",
            "Abandoned storage writers removed (leftovers of interrupted fills)",
        );
        let storage_latency: Histograms<StorageLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "storage_operation_duration_seconds",
            "Storage driver operations by driver and operation",
            storage_latency.clone(),
        );
        let leader: Gauge = registered(
            &mut registry,
            "leader",
            "1 while this replica runs expiry and garbage collection",
        );
        let auth_failures: Counter = registered(
            &mut registry,
            "auth_failures",
            "Requests whose client credentials were wrong",
        );
        let corrupt_blobs: Counter = registered(
            &mut registry,
            "corrupt_blobs",
            "Stored blobs whose bytes no longer matched their digest (deleted)",
        );
        let fills_refused: Counter = registered(
            &mut registry,
            "fills_refused",
            "Fills refused at a limit (fills at once, blob size)",
        );
        let gc = GcMetrics::default();
        registry.register(
            "gc_runs",
            "Garbage collections run (dry runs excluded)",
            gc.runs.clone(),
        );
        registry.register(
            "gc_removed",
            "What garbage collection removed, by kind",
            gc.removed.clone(),
        );
        registry.register(
            "gc_bytes_freed",
            "Bytes of blob data garbage collection deleted",
            gc.bytes_freed.clone(),
        );
        registry.register(
            "gc_marked",
            "Digests the last garbage collection found in use",
            gc.marked.clone(),
        );
        registry.register(
            "gc_phase_seconds",
            "How long the last garbage collection spent per phase",
            gc.phase_seconds.clone(),
        );
        let budget = BudgetMetrics::default();
        registry.register(
            "stored_bytes",
            "Blob bytes stored, as the byte budget accounts them",
            budget.stored.clone(),
        );
        registry.register(
            "budget_bytes",
            "The byte budget (proxy.maxsize)",
            budget.budget.clone(),
        );
        registry.register(
            "evictions",
            "Blobs whose data was evicted, by reason",
            budget.evictions.clone(),
        );
        registry.register(
            "evicted_bytes",
            "Bytes of blob data evicted, by reason",
            budget.evicted_bytes.clone(),
        );
        registry.register(
            "reserved_bytes",
            "Bytes reserved by fills in flight against the byte budget",
            budget.reserved.clone(),
        );
        registry.register(
            "unstored",
            "Blobs served to their clients but not stored: larger than the byte budget",
            budget.unstored.clone(),
        );
        Self {
            leader,
            auth_failures,
            corrupt_blobs,
            fills_refused,
            gc,
            budget,
            registry,
            content,
            proofs,
            denials,
            repository_denials,
            zero_copy_bytes,
            namespaces: Mutex::new(Vec::new()),
            fills_in_flight,
            fill_clients,
            connections,
            stale_serves,
            upstream_latency,
            upstream_errors,
            upstream_answers,
            pull_limit,
            pulls_remaining,
            scheduler_entries,
            expirations,
            bytes_freed,
            writers_purged,
            storage_latency,
        }
    }
}

impl Metrics {
    /// The counters of namespace `name`, labelled with it (the same
    /// counters each time for one name). They are resolved once: clones
    /// share the families' atomics, so an update skips the label lookup.
    pub fn namespace(&self, name: &str) -> Arc<NamespaceMetrics> {
        let mut namespaces = crate::sync::lock(&self.namespaces);
        if let Some((_, found)) = namespaces.iter().find(|(n, _)| n == name) {
            return Arc::clone(found);
        }
        let kind = |kind| {
            let label = ContentLabel {
                namespace: name.to_owned(),
                kind,
            };
            let counter = |i: usize| self.content[i].get_or_create(&label).clone();
            KindCounters {
                requests: counter(0),
                hits: counter(1),
                misses: counter(2),
                bytes_pulled: counter(3),
                bytes_pushed: counter(4),
            }
        };
        let label = NamespaceLabel {
            namespace: name.to_owned(),
        };
        let made = Arc::new(NamespaceMetrics {
            blobs: kind(Kind::Blob),
            manifests: kind(Kind::Manifest),
            proofs: self.proofs.get_or_create(&label).clone(),
            denials: self.denials.get_or_create(&label).clone(),
            repository_denials: self.repository_denials.get_or_create(&label).clone(),
            zero_copy_bytes: self.zero_copy_bytes.get_or_create(&label).clone(),
            asked: Mutex::default(),
        });
        namespaces.push((name.to_owned(), Arc::clone(&made)));
        made
    }

    /// The `n` repositories most asked for manifests over every
    /// namespace: namespace, repository, manifest GETs (over by at most
    /// the last figure).
    pub fn most_pulled(&self, n: usize) -> Vec<(String, String, u64, u64)> {
        let namespaces = crate::sync::lock(&self.namespaces);
        let mut all: Vec<(String, String, u64, u64)> = namespaces
            .iter()
            .flat_map(|(name, ns)| {
                let top = crate::sync::lock(&ns.asked).top(n);
                top.into_iter()
                    .map(move |(repo, count, error)| (name.clone(), repo, count, error))
            })
            .collect();
        all.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
        all.truncate(n);
        all
    }

    /// Requests, hits and misses of every namespace and kind together.
    pub fn totals(&self) -> (u64, u64, u64) {
        let namespaces = crate::sync::lock(&self.namespaces);
        namespaces
            .iter()
            .flat_map(|(_, ns)| [&ns.blobs, &ns.manifests])
            .fold((0, 0, 0), |(r, h, m), c| {
                (r + c.requests.get(), h + c.hits.get(), m + c.misses.get())
            })
    }

    /// Per namespace, for blobs and manifests together: requests, hits,
    /// misses, bytes from the upstream, bytes to clients.
    pub fn by_namespace(&self) -> Vec<(String, [u64; 5])> {
        let namespaces = crate::sync::lock(&self.namespaces);
        namespaces
            .iter()
            .map(|(name, ns)| {
                let mut sums = [0; 5];
                for c in [&ns.blobs, &ns.manifests] {
                    sums[0] += c.requests.get();
                    sums[1] += c.hits.get();
                    sums[2] += c.misses.get();
                    sums[3] += c.bytes_pulled.get();
                    sums[4] += c.bytes_pushed.get();
                }
                (name.clone(), sums)
            })
            .collect()
    }

    /// Blob fills in flight.
    pub fn fills_in_flight(&self) -> i64 {
        self.fills_in_flight.get()
    }

    /// A blob fill started (`true`) or ended (`false`).
    pub fn fill_running(&self, started: bool) {
        if started {
            self.fills_in_flight.inc();
        } else {
            self.fills_in_flight.dec();
        }
    }

    /// The scheduler holds `n` entries.
    pub fn scheduler_entries(&self, n: usize) {
        self.scheduler_entries
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// `entries` expired, freeing `bytes`.
    pub fn expired(&self, entries: u64, bytes: u64) {
        self.expirations.inc_by(entries);
        self.bytes_freed.inc_by(bytes);
    }

    /// The byte budget accounts `stored` bytes of `budget`.
    pub fn stored_bytes(&self, stored: u64, budget: u64) {
        self.budget
            .stored
            .set(i64::try_from(stored).unwrap_or(i64::MAX));
        self.budget
            .budget
            .set(i64::try_from(budget).unwrap_or(i64::MAX));
    }

    /// A blob of `bytes` was evicted for `reason`.
    pub fn evicted(&self, reason: EvictReason, bytes: u64) {
        let label = EvictLabel { reason };
        self.budget.evictions.get_or_create(&label).inc();
        self.budget
            .evicted_bytes
            .get_or_create(&label)
            .inc_by(bytes);
    }

    /// Fills in flight have reserved `bytes` against the byte budget.
    pub fn reserved_bytes(&self, bytes: u64) {
        self.budget
            .reserved
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// A blob larger than the byte budget was served without being stored.
    pub fn unstored(&self) {
        self.budget.unstored.inc();
    }

    /// This replica started (`true`) or stopped leading.
    pub fn leading(&self, leads: bool) {
        self.leader.set(i64::from(leads));
    }

    /// A garbage collection finished (a dry run only sets the gauges).
    pub fn collected(&self, c: &Collected, dry_run: bool) {
        let gc = &self.gc;
        gc.marked.set(i64::try_from(c.marked).unwrap_or(i64::MAX));
        for (what, took) in [("mark", c.mark), ("sweep", c.sweep)] {
            gc.phase_seconds
                .get_or_create(&GcLabel { what })
                .set(took.as_secs_f64());
        }
        if dry_run {
            return;
        }
        gc.runs.inc();
        for (what, n) in [
            ("blob", c.blobs),
            ("link", c.links),
            ("tag", c.tags),
            ("writer", c.writers),
        ] {
            gc.removed.get_or_create(&GcLabel { what }).inc_by(n);
        }
        gc.bytes_freed.inc_by(c.bytes_freed);
    }

    /// `n` abandoned writers were removed.
    pub fn writers_purged(&self, n: u64) {
        self.writers_purged.inc_by(n);
    }

    /// A client started (`true`) or stopped (`false`) reading a fill.
    pub fn fill_client(&self, attached: bool) {
        if attached {
            self.fill_clients.inc();
        } else {
            self.fill_clients.dec();
        }
    }

    /// An upstream request got its answer (or failed) after `took`;
    /// `status` is `None` when no answer came.
    pub fn upstream_request(&self, took: Duration, status: Option<u16>) {
        self.upstream_latency.observe(took.as_secs_f64());
        let status = match status {
            Some(code) if code < 400 => return,
            Some(code) => code.to_string(),
            None => "network".to_owned(),
        };
        self.upstream_errors
            .get_or_create(&StatusLabel { status })
            .inc();
    }

    /// The URL `upstream` of namespace `namespace` answered.
    pub fn upstream_answer(&self, namespace: &str, upstream: &str) {
        self.upstream_answers
            .get_or_create(&UpstreamLabel {
                namespace: namespace.to_owned(),
                upstream: upstream.to_owned(),
            })
            .inc();
    }

    /// Namespace `namespace`'s upstream announced `remaining` of `limit`
    /// pulls.
    pub fn pull_budget(&self, namespace: &str, limit: u64, remaining: u64) {
        let label = NamespaceLabel {
            namespace: namespace.to_owned(),
        };
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.pull_limit.get_or_create(&label).set(gauge(limit));
        self.pulls_remaining
            .get_or_create(&label)
            .set(gauge(remaining));
    }

    /// A storage operation `op` of `driver` took `took`.
    pub fn storage_op(&self, driver: &'static str, op: &'static str, took: Duration) {
        self.storage_latency
            .get_or_create(&StorageLabel { driver, op })
            .observe(took.as_secs_f64());
    }

    /// A tag served stale.
    pub fn stale_serve(&self) {
        self.stale_serves.inc();
    }

    /// A client's credentials were wrong.
    pub fn auth_failure(&self) {
        self.auth_failures.inc();
    }

    /// A stored blob failed its digest check and was deleted.
    pub fn corrupt_blob(&self) {
        self.corrupt_blobs.inc();
    }

    /// A fill was refused at a limit.
    pub fn fill_refused(&self) {
        self.fills_refused.inc();
    }

    /// A client connection opened (`true`) or closed.
    pub fn connection(&self, opened: bool) {
        if opened {
            self.connections.inc();
        } else {
            self.connections.dec();
        }
    }

    /// Client connections open now.
    pub fn connections(&self) -> i64 {
        self.connections.get()
    }

    /// The Prometheus (OpenMetrics) text exposition.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// registry:2's `/debug/vars` shape, plus our gauges under
    /// `registry_proxy`.
    pub fn debug_vars(&self) -> serde_json::Value {
        let namespaces = crate::sync::lock(&self.namespaces);
        let total = |kind| {
            let sum = KindCounters::default();
            for (_, ns) in namespaces.iter() {
                let c = ns.of(kind);
                sum.requests.inc_by(c.requests.get());
                sum.hits.inc_by(c.hits.get());
                sum.misses.inc_by(c.misses.get());
                sum.bytes_pulled.inc_by(c.bytes_pulled.get());
                sum.bytes_pushed.inc_by(c.bytes_pushed.get());
            }
            sum.debug_vars()
        };
        let by_namespace: serde_json::Map<String, serde_json::Value> = namespaces
            .iter()
            .map(|(name, ns)| {
                let vars = json!({
                    "blobs": ns.blobs.debug_vars(),
                    "manifests": ns.manifests.debug_vars(),
                    "Proofs": ns.proofs.get(),
                    "Denials": ns.denials.get(),
                });
                (name.clone(), vars)
            })
            .collect();
        json!({
            "registry.proxy.blobs": total(Kind::Blob),
            "registry.proxy.manifests": total(Kind::Manifest),
            "registry_proxy": {
                "Namespaces": by_namespace,
                "FillsInFlight": self.fills_in_flight.get(),
                "FillClients": self.fill_clients.get(),
                "StaleServes": self.stale_serves.get(),
                "SchedulerEntries": self.scheduler_entries.get(),
                "Expirations": self.expirations.get(),
                "BytesFreed": self.bytes_freed.get(),
                "WritersPurged": self.writers_purged.get(),
                "Leader": self.leader.get(),
                "GcRuns": self.gc.runs.get(),
                "GcBytesFreed": self.gc.bytes_freed.get(),
                "GcMarked": self.gc.marked.get(),
            },
        })
    }
}

/// What one collection did (or, dry, would have done).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    /// Digests marked in use.
    pub marked: u64,
    /// Blobs whose bytes were deleted.
    pub blobs: u64,
    /// Layer and revision links deleted.
    pub links: u64,
    /// Tags deleted.
    pub tags: u64,
    /// Abandoned writers removed (idle past `uploadpurging.age`; not
    /// counted in a dry run).
    pub writers: u64,
    /// Bytes of blob data freed.
    pub bytes_freed: u64,
    /// Time spent marking.
    pub mark: Duration,
    /// Time spent sweeping.
    pub sweep: Duration,
}
