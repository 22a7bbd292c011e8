//! OpenTelemetry traces, off unless `tracing.otlp.endpoint` is set: every
//! request is a server span, each blob fill a span under the request that
//! started it, and each upstream request a client span under whichever of
//! the two asked. Spans go to an OTLP/HTTP (protobuf) collector in
//! batches, from a thread of their own; a slow or absent collector costs
//! requests nothing but dropped spans. A client's `traceparent` makes its
//! trace the request's parent, and upstream requests carry the trace on.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Where and how traces are exported (`tracing.otlp`).
#[derive(Debug, Clone, PartialEq)]
pub struct Otlp {
    /// The collector's OTLP/HTTP traces URL (`…/v1/traces`).
    pub endpoint: String,
    /// `service.name` of the spans.
    pub service_name: String,
    /// The share of traces kept (a client's sampled parent is followed).
    pub sampling_ratio: f64,
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
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            otlp.sampling_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("registry-proxy");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let layer = tracing_opentelemetry::layer().with_tracer(tracer);
    Ok((layer, Telemetry(provider)))
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
