//! A proxy in this process, on in-memory storage.

use std::time::Duration;

/// A proxy in this process: in-memory storage, `upstream` (a base URL),
/// fills abandoned after 500 ms of silence, tags trusted for `freshness`.
pub struct InProcess {
    /// The proxy's state; `registry_proxy::app(state)` serves it.
    pub state: registry_proxy::AppState,
    /// Its storage.
    pub driver: std::sync::Arc<dyn driver_core::StorageDriver>,
    _spool: tempfile::TempDir,
}

impl InProcess {
    /// Opens the proxy in front of `upstream`.
    pub async fn open(
        upstream: &str,
        credentials: registry_proxy::upstream::Credentials,
        freshness: Duration,
    ) -> Self {
        let namespace = registry_proxy::namespace::NamespaceSpec::single(
            upstream.parse().expect("url"),
            credentials,
        );
        Self::with_namespaces(&[namespace], freshness).await
    }

    /// Opens the proxy with `namespaces`.
    pub async fn with_namespaces(
        namespaces: &[registry_proxy::namespace::NamespaceSpec],
        freshness: Duration,
    ) -> Self {
        Self::with_scheduler(namespaces, freshness, Default::default()).await
    }

    /// Opens the proxy with `namespaces` and a scheduler set up by
    /// `scheduler`.
    pub async fn with_scheduler(
        namespaces: &[registry_proxy::namespace::NamespaceSpec],
        freshness: Duration,
        scheduler: registry_proxy::scheduler::Options,
    ) -> Self {
        Self::with_settings(namespaces, freshness, |settings| {
            settings.scheduler = scheduler;
        })
        .await
    }

    /// Opens the proxy with `namespaces` and its settings changed by `tweak`.
    pub async fn with_settings(
        namespaces: &[registry_proxy::namespace::NamespaceSpec],
        freshness: Duration,
        tweak: impl FnOnce(&mut registry_proxy::Settings),
    ) -> Self {
        use registry_proxy::scheduler::Clock;
        let spool = tempfile::tempdir().expect("spool");
        let driver: std::sync::Arc<dyn driver_core::StorageDriver> =
            std::sync::Arc::new(driver_memory::MemoryDriver::new());
        let mut settings = registry_proxy::Settings {
            spool_dir: spool.path().to_owned(),
            fill_timeout: Duration::from_millis(500),
            fill_limits: Default::default(),
            verify_reads: Default::default(),
            tag_freshness: freshness,
            request_timeout: Duration::from_secs(2),
            auth: None,
            token: None,
            scheduler: Default::default(),
            clock: Clock::system(),
            coordination: None,
            urls: Default::default(),
            local_tier: None,
        };
        tweak(&mut settings);
        let state =
            registry_proxy::AppState::open(std::sync::Arc::clone(&driver), namespaces, settings)
                .await
                .expect("state");
        Self {
            state,
            driver,
            _spool: spool,
        }
    }

    /// Sends one request through the router.
    pub async fn send(
        &self,
        method: axum::http::Method,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> axum::response::Response {
        use tower::ServiceExt;
        let mut request = axum::http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        registry_proxy::app(self.state.clone())
            .oneshot(request.body(axum::body::Body::empty()).expect("request"))
            .await
            .expect("infallible")
    }

    /// GETs `uri`: status, headers and the whole body (or its error).
    pub async fn get(
        &self,
        uri: &str,
    ) -> (
        axum::http::StatusCode,
        axum::http::HeaderMap,
        Result<bytes::Bytes, axum::Error>,
    ) {
        let response = self.send(axum::http::Method::GET, uri, &[]).await;
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            axum::body::to_bytes(body, 64 << 20).await,
        )
    }
}
