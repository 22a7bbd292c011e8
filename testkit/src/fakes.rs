//! Tiny upstreams for what a real registry cannot do (corrupt bytes,
//! stalls, chosen statuses): each test builds its router; this serves it.

/// Serves `router` on a free port of 127.0.0.1 for the rest of the test;
/// its base URL (`http://127.0.0.1:<port>`).
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}
