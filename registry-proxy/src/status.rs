//! The status page (`/status` on the debug listener): one server-rendered
//! HTML page, no script, refreshing itself every 10 s. It shows what the
//! counters behind `/metrics` say (requests, hits, misses, bytes, per
//! namespace and in all), the hit ratio of each minute of the last hour as
//! a chart, the cache's size per namespace, the fills running with their
//! progress, the repositories most asked for manifests, and each
//! upstream's health and announced pull budget.
//!
//! It names no repository and no blob of a private namespace (isolated, or
//! with `users`; [`access::names`] decides): their fills show as "private"
//! and their repositories are left out of the most asked. It is rendered
//! at most once every [`PAGE_FRESH`], on a thread of its own ([`Page`]).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::app::AppState;
use crate::cache::access;
use crate::metrics::Metrics;
use crate::sync::lock;
use crate::upstream::Heard;

/// Samples kept: one a minute for an hour, and the one before.
const SAMPLES: usize = 61;

/// How often the counters are sampled for the chart.
const SAMPLE_EVERY: Duration = Duration::from_secs(60);

/// Rows of the most asked repositories shown.
const MOST_PULLED: usize = 10;

/// Fills shown (the largest).
const FILLS_SHOWN: usize = 20;

/// How long a rendered page is served again before the next render.
pub const PAGE_FRESH: Duration = Duration::from_secs(2);

/// The status page as last rendered. One render runs at a time, however
/// many ask, and its page is served for [`PAGE_FRESH`]; each render runs on
/// a thread of its own, since it reads the whole entry table: not on the
/// runtime's workers, nor on the blocking pool that storage calls wait for.
pub struct Page {
    state: AppState,
    history: Arc<History>,
    /// The last page and when it was rendered; held while one renders.
    last: Arc<tokio::sync::Mutex<Option<(Instant, Bytes)>>>,
}

impl Page {
    /// The page of `state`, its chart from `history`.
    pub fn new(state: AppState, history: Arc<History>) -> Self {
        Self {
            state,
            history,
            last: Arc::default(),
        }
    }

    /// The page, rendered at most [`PAGE_FRESH`] ago: the last one if it
    /// is that fresh, else a new render that whoever asks meanwhile waits
    /// for (and that finishes even when its asker has gone). An error: no
    /// thread could be started for it, or it panicked.
    pub async fn get(&self) -> std::io::Result<Bytes> {
        let mut last = Arc::clone(&self.last).lock_owned().await;
        if let Some((at, page)) = last.as_ref()
            && at.elapsed() < PAGE_FRESH
        {
            return Ok(page.clone());
        }
        let (state, history) = (self.state.clone(), Arc::clone(&self.history));
        let (done, rendered) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("status-page".to_owned())
            .spawn(move || {
                let page = Bytes::from(render(&state, &history));
                drop((state, history));
                *last = Some((Instant::now(), page.clone()));
                drop(last);
                let _ = done.send(page);
            })?;
        rendered
            .await
            .map_err(|_| std::io::Error::other("the status page's render panicked"))
    }
}

/// The hit and miss counters over the last hour, a sample a minute.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    at: SystemTime,
    hits: u64,
    misses: u64,
}

impl History {
    /// Samples `metrics` now and every minute, for as long as the runtime
    /// runs.
    pub fn start(metrics: Arc<Metrics>) -> Arc<Self> {
        let history = Arc::new(Self::default());
        let sampling = Arc::clone(&history);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SAMPLE_EVERY);
            loop {
                every.tick().await;
                sampling.sample(&metrics, SystemTime::now());
            }
        });
        history
    }

    /// Notes the counters of `metrics` at `at`.
    fn sample(&self, metrics: &Metrics, at: SystemTime) {
        let (_, hits, misses) = metrics.totals();
        let mut samples = lock(&self.samples);
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(Sample { at, hits, misses });
    }

    /// Per interval between samples (the last one ending at `now`, with
    /// `metrics` as they are): when it ended and its hit ratio (`None`: no
    /// requests).
    fn ratios(&self, metrics: &Metrics, now: SystemTime) -> Vec<(SystemTime, Option<f64>)> {
        let (_, hits, misses) = metrics.totals();
        let mut samples: Vec<Sample> = lock(&self.samples).iter().copied().collect();
        samples.push(Sample {
            at: now,
            hits,
            misses,
        });
        samples
            .windows(2)
            .map(|w| {
                let (h, m) = (
                    w[1].hits.saturating_sub(w[0].hits),
                    w[1].misses.saturating_sub(w[0].misses),
                );
                let ratio = (h + m > 0).then(|| h as f64 / (h + m) as f64);
                (w[1].at, ratio)
            })
            .collect()
    }
}

/// `text` safe in HTML text and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `bytes` as people read them.
fn size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).to_string()
}

/// How long before `now` `then` was, roughly.
fn ago(then: SystemTime, now: SystemTime) -> String {
    let secs = now.duration_since(then).unwrap_or_default().as_secs();
    match secs {
        0..120 => format!("{secs} s ago"),
        120..7200 => format!("{} min ago", secs / 60),
        _ => format!("{} h ago", secs / 3600),
    }
}

/// `hits / (hits + misses)` as a percentage, or a dash.
fn percent(hits: u64, misses: u64) -> String {
    if hits + misses == 0 {
        "–".to_owned()
    } else {
        format!("{:.1} %", 100.0 * hits as f64 / (hits + misses) as f64)
    }
}

/// An upstream's health, in words, and a class for its colour.
fn health(heard: &Heard, now: SystemTime) -> (String, &'static str) {
    match (&heard.last_answer, &heard.last_failure) {
        (None, None) => ("not asked yet".to_owned(), "idle"),
        (answer, Some((at, why))) if heard.failures_in_a_row > 0 => {
            let last_ok =
                answer.map_or_else(String::new, |a| format!("; last answer {}", ago(a, now)));
            (
                format!(
                    "failing ({} in a row): {} {}{last_ok}",
                    heard.failures_in_a_row,
                    why,
                    ago(*at, now)
                ),
                "bad",
            )
        }
        (Some(at), _) => (format!("answering (last {})", ago(*at, now)), "good"),
        (None, Some(_)) => ("failing".to_owned(), "bad"),
    }
}

/// The announced pull budget, in words.
fn budget(heard: &Heard, now: SystemTime) -> String {
    match &heard.rate_limit {
        None => "not announced".to_owned(),
        Some(limit) => {
            let window = limit.window_secs.map_or_else(String::new, |w| {
                format!(
                    " per {}",
                    humantime::format_duration(Duration::from_secs(w))
                )
            });
            format!(
                "{} of {}{window} left ({})",
                limit.remaining,
                limit.limit,
                ago(limit.at, now)
            )
        }
    }
}

/// The hit ratio chart: an SVG of the last hour, a point a minute.
fn chart(ratios: &[(SystemTime, Option<f64>)], now: SystemTime) -> String {
    const W: f64 = 720.0;
    const H: f64 = 160.0;
    const PAD: f64 = 36.0;
    let x = |at: SystemTime| {
        let back = now.duration_since(at).unwrap_or_default().as_secs_f64() / 3600.0;
        PAD + (W - PAD - 12.0) * (1.0 - back.min(1.0))
    };
    let y = |ratio: f64| (H - 20.0) * (1.0 - ratio) + 6.0;
    let mut svg = format!(
        r#"<svg id="hit-chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="hit ratio over the last hour">"#
    );
    for (label, ratio) in [("100 %", 1.0), ("50 %", 0.5), ("0 %", 0.0)] {
        let _ = write!(
            svg,
            r#"<line x1="{PAD}" x2="{W}" y1="{0}" y2="{0}" class="grid"/><text x="0" y="{1}" class="axis">{label}</text>"#,
            y(ratio),
            y(ratio) + 4.0
        );
    }
    for (label, back) in [("-60 min", 60), ("-30 min", 30), ("now", 0)] {
        let at = now - Duration::from_secs(back * 60);
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" class="axis" text-anchor="middle">{label}</text>"#,
            x(at).min(W - 14.0),
            H - 2.0
        );
    }
    let points: Vec<(f64, f64)> = ratios
        .iter()
        .filter_map(|(at, r)| r.map(|r| (x(*at), y(r))))
        .collect();
    let line: Vec<String> = points
        .iter()
        .map(|(a, b)| format!("{a:.1},{b:.1}"))
        .collect();
    let _ = write!(
        svg,
        r#"<polyline points="{}" class="line"/>"#,
        line.join(" ")
    );
    for (a, b) in &points {
        let _ = write!(
            svg,
            r#"<circle cx="{a:.1}" cy="{b:.1}" r="3" class="point"/>"#
        );
    }
    svg.push_str("</svg>");
    svg
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2330;background:#f6f7f9}
h1{font-size:20px;margin:0 0 4px}h2{font-size:15px;margin:22px 0 8px}
.sub{color:#5b6475;margin-bottom:16px}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:20px}.card span{color:#5b6475;font-size:12px}
table{border-collapse:collapse;background:#fff;border:1px solid #dde1e8;border-radius:8px;min-width:720px}
th,td{padding:6px 10px;border-bottom:1px solid #eef0f4;text-align:left}th{font-size:12px;color:#5b6475}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.good{color:#17803d}.bad{color:#b42318}.idle{color:#5b6475}
progress{width:160px}code{font-size:12px}
svg{background:#fff;border:1px solid #dde1e8;border-radius:8px}
.grid{stroke:#eef0f4}.axis{font-size:10px;fill:#5b6475}
.line{fill:none;stroke:#2563eb;stroke-width:2}.point{fill:#2563eb}
";

/// The page, as the cache is now.
pub fn render(state: &AppState, history: &History) -> String {
    let now = SystemTime::now();
    let metrics = &state.metrics;
    let (requests, hits, misses) = metrics.totals();
    let by_namespace = metrics.by_namespace();
    let (pulled, pushed) = by_namespace
        .iter()
        .fold((0, 0), |(p, s), (_, f)| (p + f[3], s + f[4]));
    let sizes = state.scheduler.namespace_sizes();
    let budget_view = state.scheduler.budget_view(0);
    let leads = *state.scheduler.store().leader().borrow();
    let mut page = String::with_capacity(16 << 10);
    let _ = write!(
        page,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="10"><title>registry-proxy status</title><style>{STYLE}</style></head><body>
<h1>registry-proxy</h1><div class="sub">version {} · {} · refreshed every 10 s</div>
<div class="cards">
<div class="card"><b id="total-ratio">{}</b><span>hit ratio</span></div>
<div class="card"><b id="total-requests">{requests}</b><span>requests</span></div>
<div class="card"><b id="total-hits">{hits}</b><span>hits</span></div>
<div class="card"><b id="total-misses">{misses}</b><span>misses</span></div>
<div class="card"><b>{}</b><span>sent to clients</span></div>
<div class="card"><b>{}</b><span>from upstreams</span></div>
<div class="card"><b id="fills-running">{}</b><span>fills running</span></div>
<div class="card"><b>{}</b><span>stored{}</span></div>
</div>
<h2>Hit ratio, last hour (a point a minute)</h2>{}"#,
        env!("CARGO_PKG_VERSION"),
        if leads { "leading" } else { "following" },
        percent(hits, misses),
        size(pushed),
        size(pulled),
        metrics.fills_in_flight(),
        budget_view
            .as_ref()
            .map_or_else(|| "–".to_owned(), |b| size(b.stored)),
        budget_view
            .as_ref()
            .and_then(|b| b.budget)
            .map_or_else(String::new, |max| format!(" of {}", size(max))),
        chart(&history.ratios(metrics, now), now),
    );
    page.push_str(
        "<h2>Namespaces</h2><table><tr><th>namespace</th><th>upstream</th><th>stored</th><th>requests</th><th>hits</th><th>misses</th><th>hit ratio</th><th>health</th><th>pull budget</th></tr>",
    );
    for ns in state.namespaces.iter() {
        let figures = by_namespace
            .iter()
            .find(|(name, _)| *name == ns.name)
            .map_or([0; 5], |(_, f)| *f);
        let dir = ns.dir().map_or("", |d| d.as_str());
        let stored = match &sizes {
            Some(sizes) => {
                let (blobs, bytes) = sizes.get(dir).copied().unwrap_or_default();
                format!("{} ({blobs} blobs)", size(bytes))
            }
            None => "not accounted".to_owned(),
        };
        let heard = ns.upstream.heard();
        let (health, class) = health(&heard, now);
        let name = escape(&ns.name);
        let _ = write!(
            page,
            r#"<tr data-namespace="{name}"><td>{name}</td><td><code>{}</code></td><td class="n stored">{stored}</td><td class="n requests">{}</td><td class="n hits">{}</td><td class="n misses">{}</td><td class="n">{}</td><td class="{class} health">{}</td><td class="budget">{}</td></tr>"#,
            escape(
                &std::iter::once(ns.upstream.base())
                    .chain(ns.upstream.fallbacks())
                    .map(reqwest::Url::as_str)
                    .collect::<Vec<_>>()
                    .join(" → ")
            ),
            figures[0],
            figures[1],
            figures[2],
            percent(figures[1], figures[2]),
            escape(&health),
            escape(&budget(&heard, now)),
        );
    }
    page.push_str("</table>");
    page.push_str(
        "<h2>Fills running</h2><table id=\"fills\"><tr><th>namespace</th><th>repository</th><th>blob</th><th>progress</th><th>received</th></tr>",
    );
    // Private: a namespace the page may not name anything of (one unknown
    // here included).
    let private =
        |namespace: &str| !access::names(state.namespaces.get(namespace).map(AsRef::as_ref));
    let fills = state.blobs.fills_running();
    if fills.is_empty() {
        page.push_str("<tr><td colspan=\"5\" class=\"idle\">none</td></tr>");
    }
    for fill in fills.iter().take(FILLS_SHOWN) {
        if private(&fill.namespace) {
            let _ = write!(
                page,
                r#"<tr class="fill"><td>{}</td><td colspan="4" class="idle">private</td></tr>"#,
                escape(&fill.namespace),
            );
            continue;
        }
        let (bar, of) = match fill.size {
            Some(total) => (
                format!(
                    r#"<progress max="{total}" value="{}"></progress>"#,
                    fill.received
                ),
                format!(" of {}", size(total)),
            ),
            None => ("<progress></progress>".to_owned(), String::new()),
        };
        let _ = write!(
            page,
            r#"<tr class="fill" data-digest="{}" data-received="{}"><td>{}</td><td>{}</td><td><code>{}</code></td><td>{bar}</td><td class="n">{}{of}</td></tr>"#,
            fill.digest,
            fill.received,
            escape(&fill.namespace),
            escape(&fill.repo),
            &fill.digest.to_string()[..19],
            size(fill.received),
        );
    }
    page.push_str("</table>");
    page.push_str(
        "<h2>Most asked repositories (manifest GETs)</h2><table id=\"popular\"><tr><th>namespace</th><th>repository</th><th>manifest GETs</th></tr>",
    );
    // Every namespace's counted repositories (a bounded number), so that
    // leaving out the private ones still shows as many.
    let popular: Vec<_> = metrics
        .most_pulled(usize::MAX)
        .into_iter()
        .filter(|(namespace, ..)| !private(namespace))
        .take(MOST_PULLED)
        .collect();
    if popular.is_empty() {
        page.push_str("<tr><td colspan=\"3\" class=\"idle\">none yet</td></tr>");
    }
    for (namespace, repo, count, error) in popular {
        let over = if error > 0 {
            format!(" (≤ {error} over)")
        } else {
            String::new()
        };
        let _ = write!(
            page,
            r#"<tr class="popular"><td>{}</td><td>{}</td><td class="n">{count}{over}</td></tr>"#,
            escape(&namespace),
            escape(&repo),
        );
    }
    page.push_str("</table></body></html>");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_ratios_follow_the_samples() {
        assert_eq!(
            escape(r#"<b a="1">'&'"#),
            "&lt;b a=&quot;1&quot;&gt;&#39;&amp;&#39;"
        );
        let metrics = Metrics::default();
        let ns = metrics.namespace("a");
        let history = History::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        history.sample(&metrics, t0);
        for _ in 0..3 {
            ns.request(crate::oci::Kind::Blob, true);
        }
        ns.request(crate::oci::Kind::Blob, false);
        history.sample(&metrics, t0 + SAMPLE_EVERY);
        let ratios = history.ratios(&metrics, t0 + 2 * SAMPLE_EVERY);
        assert_eq!(
            ratios,
            [
                (t0 + SAMPLE_EVERY, Some(0.75)),
                (t0 + 2 * SAMPLE_EVERY, None)
            ]
        );
        for i in 0..100 {
            history.sample(&metrics, t0 + i * SAMPLE_EVERY);
        }
        assert_eq!(lock(&history.samples).len(), SAMPLES, "bounded");
        let svg = chart(&ratios, t0 + 2 * SAMPLE_EVERY);
        assert_eq!(svg.matches("<circle").count(), 1);
    }
}
