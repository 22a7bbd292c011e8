//! Load and measurement: a counting TCP relay, `wrk`, medians.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP relay to the upstream that counts the bytes the upstream sends.
pub struct Relay {
    /// Where it listens, `127.0.0.1:PORT`.
    pub addr: String,
    sent: Arc<AtomicU64>,
    held: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Relay {
    /// Starts relaying to `upstream`.
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("relay addr").to_string();
        let sent = Arc::new(AtomicU64::new(0));
        let held = Arc::new(tokio::sync::watch::channel(false).0);
        let (counter, upstream, hold) = (Arc::clone(&sent), upstream.to_owned(), Arc::clone(&held));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (counter, upstream) = (Arc::clone(&counter), upstream.clone());
                let mut released = hold.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
                        let _ = server_tx.shutdown().await;
                    });
                    let mut buf = vec![0; 256 << 10];
                    while let Ok(n @ 1..) = server_rx.read(&mut buf).await {
                        if released.wait_for(|held| !held).await.is_err() {
                            break;
                        }
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                        if client_tx.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        Self { addr, sent, held }
    }

    /// Holds (`true`) or releases the upstream's bytes: while held, the
    /// relay reads them but passes none on.
    pub fn hold(&self, held: bool) {
        self.held.send_replace(held);
    }

    /// Bytes the upstream sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits until the upstream has sent nothing for a second (a proxy may
    /// keep fetching after its client is served), then returns the count.
    pub async fn settled(&self) -> u64 {
        let mut last = self.sent();
        let mut quiet_since = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.sent();
            if now != last {
                (last, quiet_since) = (now, Instant::now());
            }
        }
        last
    }
}

/// The median of `values` (not empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `wrk -c64` on one URL (with `headers`): requests per second and the
/// p99 latency.
pub fn wrk(url: &str, seconds: u64, headers: &[&str]) -> (f64, String) {
    let run = crate::measure::wrk_run(url, seconds, headers);
    (run.rps, run.p99)
}
