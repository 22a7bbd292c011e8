//! What the cache does, for operators: registry:2's proxy counters per
//! content type (requests, hits, misses, bytes pulled from upstream, bytes
//! pushed to clients) plus fills in flight and stale serves. Served on the
//! debug listener as Prometheus text (`/metrics`) and as JSON in registry:2's
//! shape (`/debug/vars`: `registry.proxy.blobs`, `registry.proxy.manifests`).

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;

/// The content a counter is about.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Kind {
    /// Blobs (layers and configs).
    Blob,
    /// Manifests (and indexes).
    Manifest,
}

impl EncodeLabelValue for Kind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Blob => "blob",
            Self::Manifest => "manifest",
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: Kind,
}

/// The counters of the proxy; cheap to update from any task.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<KindLabel, Counter>,
    hits: Family<KindLabel, Counter>,
    misses: Family<KindLabel, Counter>,
    bytes_pulled: Family<KindLabel, Counter>,
    bytes_pushed: Family<KindLabel, Counter>,
    fills_in_flight: Gauge,
    stale_serves: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("registry_proxy");
        let requests = Family::default();
        let hits = Family::default();
        let misses = Family::default();
        let bytes_pulled = Family::default();
        let bytes_pushed = Family::default();
        let fills_in_flight = Gauge::default();
        let stale_serves = Counter::default();
        registry.register(
            "requests",
            "Requests (GET and HEAD) by content kind",
            requests.clone(),
        );
        registry.register("hits", "Requests answered from storage", hits.clone());
        registry.register(
            "misses",
            "Requests that needed the upstream's content",
            misses.clone(),
        );
        registry.register(
            "bytes_pulled",
            "Content bytes received from the upstream",
            bytes_pulled.clone(),
        );
        registry.register(
            "bytes_pushed",
            "Content bytes sent to clients",
            bytes_pushed.clone(),
        );
        registry.register(
            "fills_in_flight",
            "Blob fills from the upstream running now",
            fills_in_flight.clone(),
        );
        registry.register(
            "stale_serves",
            "Tags served from the cache because the upstream was unavailable",
            stale_serves.clone(),
        );
        Self {
            registry,
            requests,
            hits,
            misses,
            bytes_pulled,
            bytes_pushed,
            fills_in_flight,
            stale_serves,
        }
    }
}

fn get(family: &Family<KindLabel, Counter>, kind: Kind) -> u64 {
    family.get_or_create(&KindLabel { kind }).get()
}

fn add(family: &Family<KindLabel, Counter>, kind: Kind, n: u64) {
    family.get_or_create(&KindLabel { kind }).inc_by(n);
}

impl Metrics {
    /// A request for `kind` content, answered from storage (`hit`) or not.
    pub fn request(&self, kind: Kind, hit: bool) {
        add(&self.requests, kind, 1);
        add(if hit { &self.hits } else { &self.misses }, kind, 1);
    }

    /// A request for `kind` content that failed before it could be answered.
    pub fn failed_request(&self, kind: Kind) {
        add(&self.requests, kind, 1);
    }

    /// `n` bytes of `kind` content received from the upstream.
    pub fn pulled(&self, kind: Kind, n: u64) {
        add(&self.bytes_pulled, kind, n);
    }

    /// `n` bytes of `kind` content sent to a client.
    pub fn pushed(&self, kind: Kind, n: u64) {
        add(&self.bytes_pushed, kind, n);
    }

    /// A blob fill started (`true`) or ended (`false`).
    pub fn fill_running(&self, started: bool) {
        if started {
            self.fills_in_flight.inc();
        } else {
            self.fills_in_flight.dec();
        }
    }

    /// A tag served stale.
    pub fn stale_serve(&self) {
        self.stale_serves.inc();
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
        let kind = |kind| {
            json!({
                "Requests": get(&self.requests, kind),
                "Hits": get(&self.hits, kind),
                "Misses": get(&self.misses, kind),
                "BytesPulled": get(&self.bytes_pulled, kind),
                "BytesPushed": get(&self.bytes_pushed, kind),
            })
        };
        json!({
            "registry.proxy.blobs": kind(Kind::Blob),
            "registry.proxy.manifests": kind(Kind::Manifest),
            "registry_proxy": {
                "FillsInFlight": self.fills_in_flight.get(),
                "StaleServes": self.stale_serves.get(),
            },
        })
    }
}
