//! Serving as distribution's `http` section asks, end to end with real
//! parts: HTTPS with a CA made here (skopeo verifying it, HTTP/2 through
//! ALPN), client certificates, a certificate rotated on disk while a pull
//! runs, a Unix socket under a path prefix, and a certificate from an ACME
//! CA (Let's Encrypt's test server, pebble). Skipped with the reason when
//! the parts are missing, unless `REQUIRE_E2E=1`.

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::path::Path;
use std::process::Command;

use registry_proxy::oci::Digest;
use support::skopeo::{contents, make_image, parts_available, push, upstream_truth};
use support::tls::TestCa;
use support::{docker_registry, push_blob, registry_proxy_http};

/// An upstream holding `team/app:v1`, and what it serves for it.
struct Upstream {
    server: support::Server,
    truth: std::collections::BTreeMap<String, Vec<u8>>,
}

fn upstream(d: &Path) -> Upstream {
    let server = docker_registry(d, "upstream", &d.join("upstream-root"), "");
    push(
        &make_image(d, "app", 7, &["amd64"]),
        &server.addr,
        "team/app",
        None,
    );
    let truth = upstream_truth(d, &server.addr, "team/app:v1", None);
    Upstream { server, truth }
}

/// The config sections of a proxy storing in `d/root` in front of `upstream`.
fn sections(d: &Path, upstream: &str) -> String {
    format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  remoteurl: http://{upstream}\n",
        d.join("root").display()
    )
}

/// skopeo pulls `team/app:v1` from `registry` over verified TLS with the
/// certificates of `cert_dir` (its `*.crt` CAs, and a `*.cert`/`*.key`
/// client pair if there is one) into `out`; `Err` with skopeo's complaint.
fn verified_pull(registry: &str, cert_dir: &Path, out: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(out);
    let done = Command::new("skopeo")
        .args([
            "copy",
            "--src-tls-verify=true",
            "--src-cert-dir",
            cert_dir.to_str().expect("utf-8"),
            &format!("docker://{registry}/team/app:v1"),
            &format!("dir:{}", out.display()),
        ])
        .output()
        .expect("skopeo");
    if done.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&done.stderr).into_owned())
    }
}

/// A directory skopeo reads certificates from, holding `ca` as `ca.crt`.
fn cert_dir(d: &Path, name: &str, ca: &TestCa) -> std::path::PathBuf {
    let dir = d.join(name);
    std::fs::create_dir_all(&dir).expect("cert dir");
    ca.write(&dir.join("ca.crt"));
    dir
}

/// The HTTP version curl negotiates for `url`, trusting `ca`.
fn curl_http_version(url: &str, ca: &Path) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            "--cacert",
        ])
        .arg(ca)
        .arg(url)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// skopeo pulls through `http.tls` verifying the CA made here and gets the
/// upstream's bytes; without that CA the pull is refused (the certificate
/// is checked); curl negotiates HTTP/2 through ALPN; plain HTTP to the TLS
/// port gets no registry answer.
#[test]
fn https_is_served_with_the_configured_certificate_and_http2() {
    if !parts_available("https_is_served_with_the_configured_certificate") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let up = upstream(d);
    let ca = TestCa::new("registry-proxy serving CA");
    let server = ca.issue(&["127.0.0.1"], d, "server");
    let http = format!(
        "  tls:\n    certificate: {}\n    key: {}\n    minimumtls: tls1.2\n",
        server.cert.display(),
        server.key.display()
    );
    let addr = format!("127.0.0.1:{}", support::free_port());
    let proxy = registry_proxy_http(d, &addr, &http, &sections(d, &up.server.addr), &[]);

    let trusted = cert_dir(d, "trusted", &ca);
    verified_pull(&proxy.addr, &trusted, &d.join("out")).expect("a verified pull");
    assert_eq!(contents(&d.join("out")), up.truth, "the upstream's bytes");

    let stranger = TestCa::new("someone else");
    let untrusted = cert_dir(d, "untrusted", &stranger);
    let refused = verified_pull(&proxy.addr, &untrusted, &d.join("out2"))
        .expect_err("a CA that did not sign the certificate");
    assert!(refused.contains("certificate"), "{refused}");

    let ca_file = ca.write(&d.join("ca.pem"));
    let url = format!("https://{}/v2/", proxy.addr);
    assert_eq!(curl_http_version(&url, &ca_file), "2", "HTTP/2 over TLS");

    let plain = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{}/v2/", proxy.addr))
        .output()
        .expect("curl");
    assert_ne!(
        String::from_utf8_lossy(&plain.stdout),
        "200",
        "plain HTTP answered"
    );
}

/// With `clientcas`, a client without a certificate is refused in the
/// handshake, one with a certificate from another CA too, and skopeo with
/// a certificate the CA signed pulls the upstream's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_with_clientcas() {
    if !parts_available("client_certificates_are_required_with_clientcas") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let up = tokio::task::block_in_place(|| upstream(d));
    let ca = TestCa::new("registry-proxy serving CA");
    let clients = TestCa::new("registry-proxy client CA");
    let server = ca.issue(&["127.0.0.1"], d, "server");
    let clients_file = clients.write(&d.join("clients.pem"));
    let http = format!(
        "  tls:\n    certificate: {}\n    key: {}\n    clientcas: [{}]\n",
        server.cert.display(),
        server.key.display(),
        clients_file.display()
    );
    let addr = format!("127.0.0.1:{}", support::free_port());
    let proxy = tokio::task::block_in_place(|| {
        registry_proxy_http(d, &addr, &http, &sections(d, &up.server.addr), &[])
    });
    let root = reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("root");
    let url = format!("https://{}/v2/", proxy.addr);

    let anonymous = reqwest::Client::builder()
        .add_root_certificate(root.clone())
        .build()
        .expect("client");
    assert!(
        anonymous.get(&url).send().await.is_err(),
        "a client without a certificate was served"
    );

    let outsider = TestCa::new("not the client CA").issue(&[], d, "outsider");
    let identity = |issued: &support::tls::Issued| {
        let mut pem = std::fs::read(&issued.cert).expect("cert");
        pem.extend(std::fs::read(&issued.key).expect("key"));
        reqwest::Identity::from_pem(&pem).expect("identity")
    };
    let outsider = reqwest::Client::builder()
        .add_root_certificate(root.clone())
        .identity(identity(&outsider))
        .build()
        .expect("client");
    assert!(
        outsider.get(&url).send().await.is_err(),
        "a certificate from another CA was accepted"
    );

    let member = clients.issue(&[], d, "member");
    let admitted = reqwest::Client::builder()
        .add_root_certificate(root)
        .identity(identity(&member))
        .build()
        .expect("client");
    let answer = admitted.get(&url).send().await.expect("admitted");
    assert_eq!(answer.status(), 200);

    let skopeo_dir = cert_dir(d, "skopeo", &ca);
    std::fs::copy(&member.cert, skopeo_dir.join("client.cert")).expect("client.cert");
    std::fs::copy(&member.key, skopeo_dir.join("client.key")).expect("client.key");
    tokio::task::block_in_place(|| {
        verified_pull(&proxy.addr, &skopeo_dir, &d.join("out")).expect("a pull with a certificate")
    });
    assert_eq!(contents(&d.join("out")), up.truth, "the upstream's bytes");
}

/// The DER certificate the server at `url` presented to `client`, and the
/// response.
async fn presented(client: &reqwest::Client, url: &str) -> (Vec<u8>, reqwest::Response) {
    let response = client.get(url).send().await.expect("GET");
    let info = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("tls info");
    let der = info.peer_certificate().expect("a certificate").to_vec();
    (der, response)
}

/// A fresh client (no pooled connection) trusting `ca`.
fn fresh(ca: &TestCa) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("root"))
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

/// The certificate and key replaced on disk (as cert-manager and certbot
/// do) are served to the next connection, while a blob download begun
/// under the old certificate runs to its last byte; a certificate written
/// without its key yet keeps the previous pair in service until the key
/// follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_serves_the_next_connection_while_a_pull_runs() {
    if !parts_available("a_rotated_certificate_serves_the_next_connection") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let upstream = tokio::task::block_in_place(|| {
        docker_registry(d, "upstream", &d.join("upstream-root"), "")
    });
    let big = bytes::Bytes::from(
        (0..32u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<u8>>(),
    );
    let digest = push_blob(&reqwest::Client::new(), &upstream.addr, "team/big", big).await;
    let ca = TestCa::new("registry-proxy serving CA");
    let (cert, key) = (d.join("live.pem"), d.join("live.key"));
    let first = ca.issue_to(&["127.0.0.1"], &cert, &key);
    let http = format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        cert.display(),
        key.display()
    );
    let addr = format!("127.0.0.1:{}", support::free_port());
    let proxy = tokio::task::block_in_place(|| {
        registry_proxy_http(d, &addr, &http, &sections(d, &upstream.addr), &[])
    });
    let base = format!("https://{}", proxy.addr);

    let (der, mut download) =
        presented(&fresh(&ca), &format!("{base}/v2/team/big/blobs/{digest}")).await;
    assert_eq!(der, first.der, "the first certificate");
    assert_eq!(download.status(), 200);
    let mut got = download
        .chunk()
        .await
        .expect("first chunk")
        .expect("a chunk")
        .to_vec();

    let second = ca.issue_to(&["127.0.0.1"], &cert, &key);
    let (der, _) = presented(&fresh(&ca), &format!("{base}/v2/")).await;
    assert_eq!(
        der, second.der,
        "the next connection gets the new certificate"
    );

    // Half a rotation: the certificate is new, the key is still the old one.
    let third = ca.issue(&["127.0.0.1"], d, "third");
    std::fs::copy(&third.cert, &cert).expect("cert only");
    let (der, _) = presented(&fresh(&ca), &format!("{base}/v2/")).await;
    assert_eq!(der, second.der, "a pair that does not match is not served");
    std::fs::copy(&third.key, &key).expect("then the key");
    let (der, _) = presented(&fresh(&ca), &format!("{base}/v2/")).await;
    assert_eq!(der, third.der, "the completed pair is served");

    while let Some(chunk) = download.chunk().await.expect("the rest of the blob") {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(
        Digest::of(&got),
        digest,
        "the download begun before was whole"
    );
}

/// `http.net: unix` serves on a socket and `http.prefix` moves the API
/// under the prefix: `/nested/v2/` answers and `/v2/` does not, and a
/// paginated listing links its next page under the prefix.
#[test]
fn a_unix_socket_under_a_prefix() {
    if !parts_available("a_unix_socket_under_a_prefix") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let up = upstream(d);
    let layout = d.join("app");
    support::skopeo::skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{}/team/app:v2", up.server.addr),
    ]);
    let socket = d.join("cache.sock");
    let socket_text = socket.to_str().expect("utf-8");
    let proxy = registry_proxy_http(
        d,
        socket_text,
        "  net: unix\n  prefix: /nested/\n",
        &sections(d, &up.server.addr),
        &[],
    );
    let curl = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", "-D", "-", "--unix-socket", socket_text])
            .arg(format!("http://cache{path}"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let base = curl("/nested/v2/");
    assert!(base.starts_with("HTTP/1.1 200"), "{base}");
    assert!(
        base.to_lowercase()
            .contains("docker-distribution-api-version: registry/2.0"),
        "{base}"
    );
    let outside = curl("/v2/");
    assert!(outside.starts_with("HTTP/1.1 404"), "{outside}");
    let page = curl("/nested/v2/team/app/tags/list?n=1");
    assert!(page.contains(r#""tags":["v1"]"#), "{page}");
    assert!(
        page.contains("</nested/v2/team/app/tags/list?n=1&last=v1>; rel=\"next\""),
        "{page}"
    );
    drop(proxy);
}

/// Let's Encrypt's test CA, pebble, on 127.0.0.1 with its API certificate
/// made here; validations go to `tls_port` (where the proxy listens).
fn pebble(d: &Path, tls_port: u16) -> (support::Server, std::path::PathBuf, String) {
    let ca = TestCa::new("pebble API CA");
    let api = ca.issue(&["127.0.0.1", "localhost"], d, "pebble-api");
    let api_ca = ca.write(&d.join("pebble-api-ca.pem"));
    let (listen, management) = (support::free_port(), support::free_port());
    let config = d.join("pebble.json");
    let json = serde_json::json!({
        "pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": api.cert,
            "privateKey": api.key,
            "httpPort": support::free_port(),
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }
    });
    std::fs::write(&config, json.to_string()).expect("pebble config");
    let server = support::start_env(
        "pebble",
        &["-config", config.to_str().expect("utf-8")],
        "pebble",
        format!("127.0.0.1:{listen}"),
        d,
        // No random pauses before validating, no nonces refused on purpose.
        &[("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_WFE_NONCEREJECT", "0")],
    );
    (server, api_ca, format!("127.0.0.1:{management}"))
}

/// curl's answer (status code) for `url` on `localhost:port`, trusting
/// `ca`; empty when the TLS handshake fails.
fn curl_localhost(port: u16, path: &str, ca: &Path) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl");
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    if code == "000" { String::new() } else { code }
}

/// `http.tls.letsencrypt` against pebble: the proxy registers, answers the
/// TLS-ALPN-01 validation on its own listener and serves the issued
/// certificate (verified against pebble's root); the account and the
/// certificate land in `cachefile`, and a restart with pebble gone serves
/// the cached certificate.
#[test]
fn a_certificate_from_an_acme_ca() {
    if !parts_available("a_certificate_from_an_acme_ca") {
        return;
    }
    if !support::have("pebble") {
        conformance::skip(
            "a_certificate_from_an_acme_ca",
            "REQUIRE_E2E",
            "pebble is not installed (scripts/test.sh installs it)",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let up = upstream(d);
    let port = support::free_port();
    let (pebble, api_ca, management) = pebble(d, port);
    let cache = d.join("acme/cache.json");
    let http = format!(
        "  tls:\n    letsencrypt:\n      cachefile: {}\n      email: ops@example.com\n      hosts: [localhost]\n      directory: https://{}/dir\n      ca: {}\n",
        cache.display(),
        pebble.addr,
        api_ca.display()
    );
    let addr = format!("127.0.0.1:{port}");
    let proxy = registry_proxy_http(d, &addr, &http, &sections(d, &up.server.addr), &[]);
    let root = Command::new("curl")
        .args(["-sf", "--cacert"])
        .arg(&api_ca)
        .arg(format!("https://{management}/roots/0"))
        .output()
        .expect("curl");
    assert!(root.status.success(), "pebble's root");
    let root_file = d.join("pebble-root.pem");
    std::fs::write(&root_file, &root.stdout).expect("root");

    // Ordering takes a few round trips; wait for the certificate, not a time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while curl_localhost(port, "/v2/", &root_file).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no certificate from pebble within 60 s: {}",
            std::fs::read_to_string(d.join("proxy.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(curl_localhost(port, "/v2/", &root_file), "200");
    let cached: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cache).expect("cachefile")).expect("json");
    assert!(cached["certificate"]["data"].is_string(), "{cached}");
    assert!(cached["account"]["data"].is_string(), "{cached}");

    drop(proxy);
    drop(pebble);
    let _again = registry_proxy_http(d, &addr, &http, &sections(d, &up.server.addr), &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while curl_localhost(port, "/v2/", &root_file).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the cached certificate was not served"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(curl_localhost(port, "/v2/", &root_file), "200");
}
