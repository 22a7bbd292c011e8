//! OpenTelemetry traces, off unless `tracing.otlp.endpoint` is set: every
//! request is a server span, each blob fill a span under the request that
//! started it, and each upstream request a client span under whichever of
//! the two asked. Spans go to an OTLP/HTTP (protobuf) collector in
//! batches, from a thread of their own; a slow or absent collector costs
//! requests nothing but dropped spans. A client's `traceparent` makes its
//! trace the request's parent, and upstream requests carry the trace on.
//! Whether a request is traced is this cache's decision (`samplingratio`,
//! drawn at random, not from the trace id a client chose), not the
//! client's sampled flag, unless `trustclientsampling` says otherwise.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SamplingDecision, SamplingResult, TraceContextExt as _};
use opentelemetry::trace::{TraceState, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, ShouldSample};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Where and how traces are exported (`tracing.otlp`).
#[derive(Debug, Clone, PartialEq)]
pub struct Otlp {
    /// The collector's OTLP/HTTP traces URL (`…/v1/traces`).
    pub endpoint: String,
    /// `service.name` of the spans.
    pub service_name: String,
    /// The share of requests traced.
    pub sampling_ratio: f64,
    /// Whether a client's sampled `traceparent` is traced whatever the
    /// ratio (off: any client could make every request exported).
    pub trust_client_sampling: bool,
    /// Headers sent with each export (an API key).
    pub headers: Vec<(String, String)>,
}

/// The exporter while it runs; dropping it exports what is pending (for
/// at most 5 s) and stops it.
pub struct Telemetry(SdkTracerProvider);

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown_with_timeout(Duration::from_secs(5)) {
            eprintln!("registry-proxy: traces not all exported: {e}");
        }
    }
}

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The layer that turns spans into OpenTelemetry spans exported to
/// `otlp`, and the exporter to keep until the process ends.
pub fn layer<S>(
    otlp: &Otlp,
) -> Result<
    (
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        Telemetry,
    ),
    String,
>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(otlp.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .with_headers(otlp.headers.iter().cloned().collect())
        .build()
        .map_err(|e| format!("tracing.otlp: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(otlp.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampling {
            ratio: otlp.sampling_ratio,
            trust_client: otlp.trust_client_sampling,
        })
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("registry-proxy");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let layer = tracing_opentelemetry::layer().with_tracer(tracer);
    Ok((layer, Telemetry(provider)))
}

/// Which spans are kept: those under a span of this process as that span
/// is; a request's own span (with or without a client's parent) drawn at
/// random with `ratio`, or, when `trust_client`, as the client's sampled
/// flag says.
#[derive(Debug, Clone, Copy)]
struct Sampling {
    ratio: f64,
    trust_client: bool,
}

impl Sampling {
    /// Whether a span with `parent` (if any) is kept.
    fn keeps(self, parent: Option<&opentelemetry::trace::SpanContext>) -> bool {
        match parent {
            Some(parent) if !parent.is_remote() || self.trust_client => parent.is_sampled(),
            // A client's trace id is its choice: the draw is not taken
            // from it.
            _ => self.ratio >= 1.0 || rand::random::<f64>() < self.ratio,
        }
    }
}

impl ShouldSample for Sampling {
    fn should_sample(
        &self,
        parent_context: Option<&opentelemetry::Context>,
        _trace_id: opentelemetry::trace::TraceId,
        _name: &str,
        _span_kind: &opentelemetry::trace::SpanKind,
        _attributes: &[opentelemetry::KeyValue],
        _links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        let parent = parent_context.filter(|cx| cx.has_active_span());
        let span = parent.map(|cx| cx.span());
        let context = span.as_ref().map(|span| span.span_context());
        SamplingResult {
            decision: if self.keeps(context) {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: context.map_or_else(TraceState::default, |c| c.trace_state().clone()),
        }
    }
}

/// Reads a W3C trace context from HTTP headers.
struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(axum::http::HeaderName::as_str).collect()
    }
}

/// Writes a W3C trace context into HTTP headers.
struct HeadersMut<'a>(&'a mut axum::http::HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(key.as_bytes()),
            axum::http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Makes the trace a client's `traceparent` names the parent of `span`
/// (nothing when there is none, or no exporter).
pub fn adopt_client_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    // Fails only without an exporter, when there is nothing to join.
    let _ = span.set_parent(parent);
}

/// Adds the trace of `span` to an upstream request's `headers` (nothing
/// without an exporter: the span has no trace).
pub fn pass_trace_on(span: &tracing::Span, headers: &mut axum::http::HeaderMap) {
    let context = span.context();
    if opentelemetry::trace::TraceContextExt::span(&context)
        .span_context()
        .is_valid()
    {
        TraceContextPropagator::new().inject_context(&context, &mut HeadersMut(headers));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId};

    fn context(sampled: bool, remote: bool) -> SpanContext {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        SpanContext::new(
            TraceId::from(1),
            SpanId::from(1),
            flags,
            remote,
            TraceState::default(),
        )
    }

    /// A client's sampled flag forces nothing unless trusted; spans under
    /// this process's own follow them; the ratio decides the rest.
    #[test]
    fn a_clients_sampled_flag_is_followed_only_when_trusted() {
        let never = Sampling {
            ratio: 0.0,
            trust_client: false,
        };
        assert!(!never.keeps(Some(&context(true, true))));
        assert!(!never.keeps(None));
        assert!(never.keeps(Some(&context(true, false))), "a local parent");
        assert!(!never.keeps(Some(&context(false, false))));
        let trusting = Sampling {
            trust_client: true,
            ..never
        };
        assert!(trusting.keeps(Some(&context(true, true))));
        assert!(!trusting.keeps(Some(&context(false, true))));
        let always = Sampling {
            ratio: 1.0,
            trust_client: false,
        };
        assert!(
            always.keeps(Some(&context(false, true))),
            "the ratio decides"
        );
        assert!(always.keeps(None));
    }
}
