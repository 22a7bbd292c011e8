//! OpenTelemetry traces end to end: the real binary with
//! `tracing.otlp.endpoint` set, in front of Debian's `docker-registry`,
//! exporting to an OTLP/HTTP receiver started here (protobuf decoded with
//! the OTLP definitions). A cold pull's blob request is a server span in
//! the client's trace, its fill a span under it, and the fill's upstream
//! request a client span under that; a manifest miss's upstream request
//! sits under its request. Without the key nothing is exported. A
//! client's sampled `traceparent` is followed only when
//! `trustclientsampling` says so. The pull is skipped without
//! `docker-registry` unless `REQUIRE_E2E=1`.

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use support::{push_image, registry_proxy_env};

/// The spans a receiver got, with the `service.name` of each batch.
#[derive(Default)]
struct Received {
    spans: Mutex<Vec<Span>>,
    services: Mutex<Vec<String>>,
}

async fn receive(State(received): State<Arc<Received>>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref())
            .map(|v| format!("{:?}", v.value))
            .unwrap_or_default();
        received.services.lock().expect("lock").push(service);
        for scope in resource.scope_spans {
            received.spans.lock().expect("lock").extend(scope.spans);
        }
    }
    ""
}

/// The string attribute `key` of `span`.
fn attribute(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_is_traced_from_request_through_fill_to_upstream() {
    let Some((dir, upstream)) = support::registry_upstream("tracing") else {
        return;
    };
    let received = Arc::new(Received::default());
    let collector = support::fakes::serve(
        axum::Router::new()
            .route("/v1/traces", post(receive))
            .with_state(Arc::clone(&received)),
    )
    .await;
    let client = reqwest::Client::new();
    let image = push_image(&client, &upstream.addr, "team/traced", 61, &[64 << 10]).await;
    let storage = format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\n",
        dir.path().join("root").display()
    );
    let proxy = tokio::task::block_in_place(|| {
        registry_proxy_env(
            dir.path(),
            &format!(
                "{storage}proxy:\n  remoteurl: http://{}\ntracing:\n  otlp:\n    endpoint: {collector}\n    servicename: cache-under-test\n",
                upstream.addr
            ),
            // Batches every 100 ms instead of 5 s.
            &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
        )
    });
    let base = format!("http://{}/v2/team/traced", proxy.addr);
    let manifest = client
        .get(format!("{base}/manifests/v1"))
        .header("accept", registry_proxy::oci::OCI_MANIFEST)
        .send()
        .await
        .expect("manifest");
    assert_eq!(manifest.status(), 200);
    let layer = image.blobs[1];
    let blob = client
        .get(format!("{base}/blobs/{layer}"))
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .expect("blob");
    assert_eq!(blob.status(), 200);
    assert_eq!(blob.bytes().await.expect("bytes").len(), 64 << 10);

    // Polled until the spans arrive: the blob's request, fill and upstream
    // request, and the manifest's upstream request.
    let hex = |bytes: &[u8]| hex::encode(bytes);
    let find = |spans: &[Span], name: &str, parent: Option<&[u8]>| {
        spans
            .iter()
            .find(|s| s.name == name && parent.is_none_or(|p| s.parent_span_id == p))
            .cloned()
    };
    let mut tries = 0;
    let (request, fill, fetch) = loop {
        {
            let spans = received.spans.lock().expect("lock");
            let request = spans
                .iter()
                .find(|s| s.name == "GET /v2" && hex(&s.trace_id) == TRACE)
                .cloned();
            if let Some(request) = request {
                let fill = find(&spans, "blob fill", Some(&request.span_id));
                let fetch = fill
                    .as_ref()
                    .and_then(|f| find(&spans, "GET upstream", Some(&f.span_id)));
                if let (Some(fill), Some(fetch)) = (fill, fetch) {
                    break (request, fill, fetch);
                }
            }
        }
        tries += 1;
        assert!(
            tries < 200,
            "no request → fill → upstream spans within 20 s: {:?}",
            received
                .spans
                .lock()
                .expect("lock")
                .iter()
                .map(|s| format!(
                    "{} {} {} <- {}",
                    s.name,
                    hex(&s.trace_id),
                    hex(&s.span_id),
                    hex(&s.parent_span_id)
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(
        hex(&request.parent_span_id),
        CLIENT_SPAN,
        "the client's span"
    );
    assert_eq!(
        attribute(&request, "path").as_deref(),
        Some(format!("/v2/team/traced/blobs/{layer}").as_str())
    );
    assert_eq!(
        attribute(&request, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(fill.trace_id, request.trace_id);
    assert_eq!(attribute(&fill, "digest"), Some(layer.to_string()));
    assert_eq!(fetch.kind, SpanKind::Client as i32);
    assert_eq!(
        attribute(&fetch, "url.path").as_deref(),
        Some(format!("/v2/team/traced/blobs/{layer}").as_str())
    );
    assert_eq!(
        attribute(&fetch, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(fetch.start_time_unix_nano >= fill.start_time_unix_nano);

    // The manifest miss: its upstream GET under its request span.
    let spans = received.spans.lock().expect("lock").clone();
    let manifest_request = spans
        .iter()
        .find(|s| attribute(s, "path").is_some_and(|p| p.ends_with("/manifests/v1")))
        .expect("the manifest's request span");
    assert!(
        spans
            .iter()
            .any(|s| s.parent_span_id == manifest_request.span_id
                && attribute(s, "url.path").is_some_and(|p| p.ends_with("/manifests/v1"))),
        "the manifest's upstream request under its request"
    );
    let services = received.services.lock().expect("lock").clone();
    assert!(
        services.iter().all(|s| s.contains("cache-under-test")),
        "{services:?}"
    );
}

/// A client's sampled `traceparent` does not make its request traced
/// unless `tracing.otlp.trustclientsampling` says so: with
/// `samplingratio: 0` the trusting proxy exports the client's trace, the
/// other one nothing (any client could otherwise make every request of a
/// busy cache exported).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_sampled_flag_is_followed_only_when_trusted() {
    const TRUSTED: &str = "5bf92f3577b34da6a3ce929d0e0e4737";
    const UNTRUSTED: &str = "6bf92f3577b34da6a3ce929d0e0e4738";
    let received = Arc::new(Received::default());
    let collector = support::fakes::serve(
        axum::Router::new()
            .route("/v1/traces", post(receive))
            .with_state(Arc::clone(&received)),
    )
    .await;
    let proxy = |dir: &Path, trust: bool| {
        let trust = if trust {
            "    trustclientsampling: true\n"
        } else {
            ""
        };
        tokio::task::block_in_place(|| {
            registry_proxy_env(
                dir,
                &format!(
                    "storage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  remoteurl: http://127.0.0.1:9\ntracing:\n  otlp:\n    endpoint: {collector}\n    samplingratio: 0\n{trust}",
                    dir.join("root").display()
                ),
                &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
            )
        })
    };
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let trusting = proxy(dirs[0].path(), true);
    let other = proxy(dirs[1].path(), false);
    let client = reqwest::Client::new();
    for (proxy, trace) in [(&trusting, TRUSTED), (&other, UNTRUSTED)] {
        let ping = client
            .get(format!("http://{}/v2/", proxy.addr))
            .header("traceparent", format!("00-{trace}-{CLIENT_SPAN}-01"))
            .send()
            .await
            .expect("ping");
        assert_eq!(ping.status(), 200);
    }
    let traced = |trace: &str| {
        received
            .spans
            .lock()
            .expect("lock")
            .iter()
            .any(|s| hex::encode(&s.trace_id) == trace)
    };
    let mut tries = 0;
    while !traced(TRUSTED) {
        tries += 1;
        assert!(tries < 200, "the trusted client's trace never came");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The other proxy exports on the same schedule: a second more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !traced(UNTRUSTED),
        "a client's sampled flag made its request traced"
    );
}
