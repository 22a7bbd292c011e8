//! Three registry-proxy replicas on one S3 bucket (Garage), coordinated
//! through etcd, in front of Debian's `docker-registry`; images pulled with
//! skopeo. Concurrent cold pulls spread over the replicas reach the
//! upstream once per blob; references survive restarts; a replica killed
//! mid-fill leaves nothing partial and the next request for the blob
//! succeeds elsewhere; when the leader dies another replica expires and
//! collects; one byte budget holds for all three, kept by the leader.
//! Skipped (with the reason printed) without etcd, the e2e parts
//! or the S3 variables, unless `REQUIRE_E2E=1` / `REQUIRE_S3=1`.

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use driver_s3::{S3Config, S3Driver};
use etcd_client::GetOptions;
use support::skopeo::{make_image, parts_available, pull_and_check, push, upstream_truth};
use support::{
    Relay, Server, debug_text, debug_vars, docker_registry, etcd, have, pull_image, push_image,
    registry_proxy_with, s3_storage_yaml, verify_stored_blobs,
};

/// Content unused for this long expires.
const TTL: &str = "12s";

/// The tests here run one at a time: each starts etcd, three replicas and
/// an upstream, and their timing (TTLs, leadership) must not depend on how
/// busy the other makes the machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Cluster {
    dir: PathBuf,
    s3: S3Config,
    etcd: Server,
    relay: Relay,
    prefix: String,
    started: usize,
    /// The content's TTL.
    ttl: &'static str,
    /// More `proxy` keys (indented two spaces).
    proxy: &'static str,
}

impl Cluster {
    /// A replica's config: the shared bucket and etcd prefix, its TTL,
    /// leases of 5 s and a 2 s session lease.
    fn yaml(&self) -> String {
        format!(
            "storage:\n{}  maintenance:\n    uploadpurging:\n      age: 1h\n      interval: 24h\n\
             proxy:\n  remoteurl: http://{}\n  ttl: {}\n{}\
             gc:\n  interval: 0s\n  grace: 5s\n  leasetimeout: 5s\n\
             coordination:\n  etcd:\n    endpoints: [http://{}]\n    prefix: {}\n    leasettl: 2s\n",
            s3_storage_yaml(&self.s3, &[]),
            self.relay.addr,
            self.ttl,
            self.proxy,
            self.etcd.addr,
            self.prefix
        )
    }

    fn replica(&mut self) -> Server {
        self.started += 1;
        let dir = self.dir.join(format!("replica-{}", self.started));
        std::fs::create_dir_all(&dir).expect("replica dir");
        registry_proxy_with(&dir, &self.yaml())
    }

    /// Every reference key in etcd, with its value.
    async fn references(&self) -> BTreeMap<String, String> {
        let mut client = etcd_client::Client::connect([format!("http://{}", self.etcd.addr)], None)
            .await
            .expect("etcd client");
        let response = client
            .get(
                format!("{}/v1/", self.prefix),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .expect("etcd get");
        response
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = kv.key_str().ok()?;
                key.contains("/refs/")
                    .then(|| (key.to_owned(), kv.value_str().unwrap_or("").to_owned()))
            })
            .collect()
    }
}

/// The bucket's config with a directory of its own for `test`, when the
/// parts are there (skopeo, docker-registry, etcd, the S3 variables);
/// otherwise the test is skipped, with the reason.
fn cluster_parts(test: &str) -> Option<S3Config> {
    if !parts_available(test) {
        return None;
    }
    if !have("etcd") {
        conformance::skip(
            test,
            "REQUIRE_E2E",
            "etcd is not installed (scripts/test.sh installs etcd-server)",
        );
        return None;
    }
    let Ok(Some(s3)) = S3Config::from_env() else {
        conformance::skip(
            test,
            "REQUIRE_S3",
            "S3_BUCKET is not set (scripts/test.sh starts Garage)",
        );
        return None;
    };
    Some(S3Config {
        root_directory: format!("cluster-{:016x}", rand::random::<u64>()),
        ..s3
    })
}

/// GETs of `digest` in `repo` in the upstream's access log.
fn upstream_gets(log: &Path, repo: &str, digest: &str) -> usize {
    std::fs::read_to_string(log)
        .expect("upstream log")
        .matches(&format!("\"GET /v2/{repo}/blobs/{digest} "))
        .count()
}

/// Stops `server` with SIGTERM (a rolling restart) and waits for it.
fn stop(mut server: Server) {
    let _ = std::process::Command::new("kill")
        .arg(server.pid().to_string())
        .status();
    assert!(
        server.wait_exit(Duration::from_secs(40)).is_some(),
        "replica did not stop"
    );
}

async fn leader_index(replicas: &[Server]) -> Option<usize> {
    for (i, r) in replicas.iter().enumerate() {
        if debug_vars(r).await["registry_proxy"]["Leader"] == 1 {
            return Some(i);
        }
    }
    None
}

/// Polls `check` every 200 ms until it holds, for at most `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_one_bucket_through_etcd() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(s3) = cluster_parts("cluster") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let upstream = docker_registry(dir, "upstream", &dir.join("upstream-data"), "");
    let upstream_log = dir.join("upstream.log");
    let layout = make_image(dir, "app", 9, &["amd64"]);
    push(&layout, &upstream.addr, "team/app", None);
    let truth = upstream_truth(dir, &upstream.addr, "team/app:v1", None);
    let blobs: Vec<String> = truth
        .keys()
        .filter(|k| k.len() == 64)
        .map(|k| format!("sha256:{k}"))
        .collect();
    assert_eq!(blobs.len(), 3, "config and two layers");
    let before: Vec<usize> = blobs
        .iter()
        .map(|d| upstream_gets(&upstream_log, "team/app", d))
        .collect();
    let mut cluster = Cluster {
        dir: dir.to_owned(),
        s3: s3.clone(),
        etcd: etcd(dir),
        relay: Relay::start(&upstream.addr).await,
        prefix: format!("/rp-{:08x}", rand::random::<u32>()),
        started: 0,
        ttl: TTL,
        proxy: "",
    };
    let mut replicas: Vec<Server> = (0..3).map(|_| cluster.replica()).collect();

    // Concurrent cold pulls, one per replica: each blob crosses from the
    // upstream once, and every pull is byte-exact.
    std::thread::scope(|scope| {
        for (i, r) in replicas.iter().enumerate() {
            let (truth, out) = (&truth, dir.join(format!("pull-{i}")));
            scope.spawn(move || pull_and_check(truth, &r.addr, "team/app:v1", &out, None));
        }
    });
    for (digest, was) in blobs.iter().zip(&before) {
        assert_eq!(
            upstream_gets(&upstream_log, "team/app", digest) - was,
            1,
            "{digest} was fetched from the upstream once across the replicas"
        );
    }
    let references = cluster.references().await;
    assert_eq!(
        references.len(),
        4,
        "the manifest and three blobs: {references:?}"
    );

    // A rolling restart of every replica loses no reference.
    let mut restarted = Vec::new();
    for r in replicas.drain(..) {
        stop(r);
        restarted.push(cluster.replica());
    }
    replicas = restarted;
    let after = cluster.references().await;
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        references.keys().collect::<Vec<_>>()
    );
    for (key, at) in &references {
        assert!(
            after[key].parse::<u64>().expect("time") >= at.parse().expect("time"),
            "{key} went back in time"
        );
    }
    for (i, r) in replicas.iter().enumerate() {
        pull_and_check(
            &truth,
            &r.addr,
            "team/app:v1",
            &dir.join(format!("warm-{i}")),
            None,
        );
    }
    for (digest, was) in blobs.iter().zip(&before) {
        assert_eq!(
            upstream_gets(&upstream_log, "team/app", digest) - was,
            1,
            "{digest}: warm pulls stay in the cache"
        );
    }

    // kill -9 of the replica filling a blob: another replica's request
    // for it succeeds once the dead one's lock lapses, and the bucket
    // never holds a partial blob.
    let big = conformance::random_bytes(77, 8 << 20).to_vec();
    let big_digest = registry_proxy::oci::Digest::of(&big);
    let client = reqwest::Client::new();
    support::push_blob(&client, &upstream.addr, "team/big", big.clone().into()).await;
    cluster.relay.hold(true);
    let victim = replicas.remove(0);
    let url = |r: &Server| format!("http://{}/v2/team/big/blobs/{big_digest}", r.addr);
    let doomed = tokio::spawn({
        let (client, url) = (client.clone(), url(&victim));
        async move { client.get(url).send().await }
    });
    support::wait_for_fills(&victim, |n| n == 1, "the fill started").await;
    let mut victim = victim;
    victim.kill();
    let _ = doomed.await;
    cluster.relay.hold(false);
    let response = client.get(url(&replicas[0])).send().await.expect("retry");
    assert_eq!(response.status(), 200);
    assert!(
        response.bytes().await.expect("body") == big,
        "the retried pull is byte-exact"
    );
    support::fills_settled(&replicas[0]).await;
    let driver = S3Driver::new(s3.clone()).await.expect("s3 driver");
    // Four blobs of the image and the big one: all whole.
    assert_eq!(verify_stored_blobs(&driver).await, 5);
    replicas.push(cluster.replica());

    // Kill the leader right after a pull: another replica takes over,
    // expires the image once it is unused for the TTL, and collects.
    eventually(Duration::from_secs(20), "a leader is elected", || async {
        leader_index(&replicas).await.is_some()
    })
    .await;
    let leader = leader_index(&replicas).await.expect("leader");
    let follower = (leader + 1) % replicas.len();
    pull_and_check(
        &truth,
        &replicas[follower].addr,
        "team/app:v1",
        &dir.join("last"),
        None,
    );
    let mut dead = replicas.remove(leader);
    dead.kill();
    let layer = registry_proxy::oci::Digest::parse(&blobs[0]).expect("digest");
    let layer_path = registry_proxy::layout::blob_data(&layer);
    use driver_core::StorageDriver as _;
    eventually(
        Duration::from_secs(90),
        "the new leader expired the image",
        || async { matches!(driver.stat(&layer_path).await, Err(e) if e.is_not_found()) },
    )
    .await;
    leader_index(&replicas)
        .await
        .expect("a surviving replica leads");
    // Only a leader expires, and under load leadership may move again
    // after the expiry: what is asked of the survivors is that one of them
    // expired the image and one collected after it.
    let counted = |var: &'static str| {
        let replicas = &replicas;
        async move {
            let mut total = 0;
            for r in replicas {
                total += debug_vars(r).await["registry_proxy"][var]
                    .as_u64()
                    .unwrap_or(0);
            }
            total
        }
    };
    // The expiry is counted once its pass is done, which may be a moment
    // after the layer's delete.
    eventually(
        Duration::from_secs(30),
        "a survivor counted the expiry",
        || async { counted("Expirations").await > 0 },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the new leader collected after expiring",
        || async { counted("GcRuns").await > 0 },
    )
    .await;
    // The last pull's references fall due up to a TTL after the first.
    eventually(
        Duration::from_secs(60),
        "every reference expired",
        || async { cluster.references().await.is_empty() },
    )
    .await;
}

/// A counter or gauge of `replica`'s metrics (`name` with its labels).
async fn metric(replica: &Server, name: &str) -> u64 {
    debug_text(replica, "/metrics")
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&format!("registry_proxy_{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// One 100 MiB budget for three replicas on one bucket: 300 MiB of images
/// pulled round-robin through them end within the budget in the bucket,
/// evicted by the leader alone (which learns the others' fills from etcd).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_keep_one_byte_budget() {
    const MIB: u64 = 1 << 20;
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(s3) = cluster_parts("cluster budget") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let upstream = tokio::task::block_in_place(|| {
        docker_registry(dir, "upstream", &dir.join("upstream-data"), "")
    });
    let client = reqwest::Client::new();
    let mut images = Vec::new();
    for i in 0..10u64 {
        let repo = format!("team/b{i}");
        images.push(push_image(&client, &upstream.addr, &repo, 200 + i, &[10 << 20; 3]).await);
    }
    let mut cluster = Cluster {
        dir: dir.to_owned(),
        s3,
        etcd: tokio::task::block_in_place(|| etcd(dir)),
        relay: Relay::start(&upstream.addr).await,
        prefix: format!("/rp-{:08x}", rand::random::<u32>()),
        started: 0,
        // Nothing expires during the test: only eviction removes data.
        ttl: "24h",
        proxy: "  maxsize: 100MiB\n",
    };
    let replicas: Vec<Server> =
        tokio::task::block_in_place(|| (0..3).map(|_| cluster.replica()).collect());
    // A leader first: its walk of the (empty) bucket at the start of its
    // term cannot be what counts the others' fills.
    eventually(Duration::from_secs(60), "a leader", || async {
        leader_index(&replicas).await.is_some()
    })
    .await;
    for (i, image) in images.iter().enumerate() {
        pull_image(&client, &replicas[i % 3].addr, image)
            .await
            .expect("pull");
    }
    let config = dir.join("replica-1/proxy.yml");
    eventually(
        Duration::from_secs(90),
        "the bucket within the budget",
        || {
            let config = config.clone();
            async move { tokio::task::block_in_place(|| support::du(&config).0) <= 100 * MIB }
        },
    )
    .await;
    let mut evicting = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        if metric(r, "evictions_total{reason=\"budget\"}").await > 0 {
            evicting.push(i);
        }
    }
    assert_eq!(evicting.len(), 1, "replicas that evicted: {evicting:?}");
    assert_eq!(
        leader_index(&replicas).await,
        Some(evicting[0]),
        "the leader evicts"
    );
    // Everything evicted pulls again, through any replica.
    for (i, image) in images.iter().enumerate() {
        pull_image(&client, &replicas[(i + 1) % 3].addr, image)
            .await
            .expect("pull again");
    }
}
