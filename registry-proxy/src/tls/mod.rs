//! TLS serving, as distribution's `http.tls` keys ask: a certificate and
//! key from files (read again when either changes on disk, so cert-manager
//! and certbot can rotate them in place), or one obtained and renewed from
//! an ACME CA (`letsencrypt`); client certificates (`clientcas`); a minimum
//! version; TLS 1.2 cipher suites. HTTP/2 is offered through ALPN.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

mod acme;

pub use acme::{AcmeSpec, LETS_ENCRYPT};

/// Why TLS cannot be served as configured.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {why}")]
pub struct TlsError {
    /// The configuration key at fault (`http.tls.certificate`).
    pub key: String,
    /// What is wrong with it.
    pub why: String,
}

fn refuse(key: &str, why: impl std::fmt::Display) -> TlsError {
    TlsError {
        key: key.to_owned(),
        why: why.to_string(),
    }
}

/// Where the listener's certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// `http.tls.certificate` and `http.tls.key`, PEM files.
    Files {
        /// The certificate chain, leaf first.
        certificate: PathBuf,
        /// The private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// `http.tls.letsencrypt`: obtained and renewed from an ACME CA.
    Acme(AcmeSpec),
}

/// The lowest TLS version served (`http.tls.minimumtls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinimumTls {
    /// TLS 1.2 and 1.3 (distribution's default; also what `tls1.0` and
    /// `tls1.1` get, since rustls implements nothing older).
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// The listener's TLS, checked when the configuration was read.
#[derive(Debug, Clone)]
pub struct TlsSpec {
    /// The certificate.
    pub source: CertSource,
    /// Roots that client certificates must chain to; empty: clients are
    /// not asked for one.
    pub client_cas: Vec<CertificateDer<'static>>,
    /// The lowest version served.
    pub minimum: MinimumTls,
    /// The TLS 1.2 cipher suites offered, by IANA name; `None`: rustls's
    /// defaults. TLS 1.3 suites are always rustls's (as in Go, whose names
    /// distribution's `ciphersuites` uses).
    pub suites: Option<Vec<String>>,
    /// What of the configuration cannot be honoured exactly (logged at
    /// start).
    pub warnings: Vec<String>,
}

/// The cryptography every TLS configuration here uses.
fn provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// Makes [`provider`] the process's default, for libraries that build
/// their TLS from it (etcd's gRPC client); a default already chosen stays.
pub fn install_default_provider() {
    let _ = provider().install_default();
}

/// The IANA names of the cipher suites rustls implements.
fn suite_name(suite: rustls::SupportedCipherSuite) -> String {
    // rustls names TLS 1.3 suites TLS13_*; IANA and Go name them TLS_*.
    format!("{:?}", suite.suite()).replacen("TLS13_", "TLS_", 1)
}

impl TlsSpec {
    /// Reads distribution's `http.tls` values into a spec: `certificate`
    /// and `key` (checked to load and to match), or `acme`; `clientcas`
    /// bundles; `minimumtls`; `ciphersuites`.
    pub fn read(
        source: CertSource,
        client_cas: &[PathBuf],
        minimum: Option<&str>,
        suites: Option<&[String]>,
    ) -> Result<Self, TlsError> {
        let mut warnings = Vec::new();
        let provider = provider();
        if let CertSource::Files { certificate, key } = &source {
            load_pair(certificate, key, &provider)?;
        }
        let mut roots = Vec::new();
        for path in client_cas {
            let certs = read_bundle(path).map_err(|why| refuse("http.tls.clientcas", why))?;
            roots.extend(certs);
        }
        let mut minimum = match minimum.unwrap_or("tls1.2") {
            "tls1.0" | "tls1.1" => {
                warnings.push(
                    "http.tls.minimumtls: TLS 1.0 and 1.1 are not implemented; TLS 1.2 is the lowest served"
                        .to_owned(),
                );
                MinimumTls::Tls12
            }
            "tls1.2" => MinimumTls::Tls12,
            "tls1.3" => MinimumTls::Tls13,
            other => {
                return Err(refuse(
                    "http.tls.minimumtls",
                    format!("{other:?} is not tls1.0, tls1.1, tls1.2 or tls1.3"),
                ));
            }
        };
        let suites = match suites {
            None => None,
            Some(asked) => {
                // Each suite rustls implements, and whether it is TLS 1.2's.
                let known: Vec<(String, bool)> = provider
                    .cipher_suites
                    .iter()
                    .map(|s| (suite_name(*s), s.version() == &rustls::version::TLS12))
                    .collect();
                let mut kept = Vec::new();
                for name in asked {
                    let wellformed = name.starts_with("TLS_")
                        && name[4..]
                            .bytes()
                            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
                    if known.iter().any(|(known, _)| known == name) {
                        kept.push(name.clone());
                    } else if wellformed {
                        warnings.push(format!(
                            "http.tls.ciphersuites: {name} is not implemented by rustls (it offers only AEAD suites with forward secrecy); not offered"
                        ));
                    } else {
                        return Err(refuse(
                            "http.tls.ciphersuites",
                            format!(
                                "{name:?} is not a cipher suite name (TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)"
                            ),
                        ));
                    }
                }
                let tls12 = known
                    .iter()
                    .any(|(name, is_tls12)| *is_tls12 && kept.contains(name));
                if !tls12 && minimum == MinimumTls::Tls12 {
                    warnings.push(
                        "http.tls.ciphersuites: no TLS 1.2 suite named is implemented; only TLS 1.3 is served"
                            .to_owned(),
                    );
                    minimum = MinimumTls::Tls13;
                }
                Some(kept)
            }
        };
        Ok(Self {
            source,
            client_cas: roots,
            minimum,
            suites,
            warnings,
        })
    }
}

/// The largest PEM file read (certificates, keys, CA bundles): far more
/// than any real one, and a bound on what a path to the wrong file (a
/// device, a log) can make the process read.
const MAX_PEM_FILE: u64 = 4 << 20;

/// The bytes of the PEM file at `path`, at most [`MAX_PEM_FILE`].
pub fn read_pem_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_PEM_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(format!(
            "{} is larger than {MAX_PEM_FILE} bytes: not a PEM file",
            path.display()
        ));
    }
    Ok(bytes)
}

/// The certificates of the PEM bundle at `path` (at least one).
pub fn read_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The certificate chain at `certificate` with the key at `key`, checked to
/// belong together.
fn load_pair(
    certificate: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = read_bundle(certificate).map_err(|why| refuse("http.tls.certificate", why))?;
    let pem = read_pem_file(key).map_err(|why| refuse("http.tls.key", why))?;
    let private = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| refuse("http.tls.key", format!("{}: {e}", key.display())))?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| {
        refuse(
            "http.tls.key",
            format!("{} with {}: {e}", key.display(), certificate.display()),
        )
    })
}

/// What identifies a file's content without reading it.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// A certificate and key from files, read again at the first handshake
/// after either changed (a stat of each per handshake, next to the
/// handshake's own public-key operations). A pair that does not load (the
/// certificate written, the key not yet) keeps the previous one in service
/// until the next change.
#[derive(Debug)]
struct FileCert {
    certificate: PathBuf,
    key: PathBuf,
    provider: CryptoProvider,
    loaded: Mutex<([Stamp; 2], Arc<CertifiedKey>)>,
}

impl FileCert {
    fn open(certificate: &Path, key: &Path) -> Result<Self, TlsError> {
        let stamps = [stamp(certificate), stamp(key)];
        let provider = provider();
        let pair = load_pair(certificate, key, &provider)?;
        Ok(Self {
            certificate: certificate.to_owned(),
            key: key.to_owned(),
            provider,
            loaded: Mutex::new((stamps, Arc::new(pair))),
        })
    }
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let now = [stamp(&self.certificate), stamp(&self.key)];
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if loaded.0 != now {
            loaded.0 = now;
            match load_pair(&self.certificate, &self.key, &self.provider) {
                Ok(pair) => {
                    tracing::info!(certificate = %self.certificate.display(), "TLS certificate reloaded");
                    loaded.1 = Arc::new(pair);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS certificate changed but does not load; serving the previous one");
                }
            }
        }
        Some(Arc::clone(&loaded.1))
    }
}

/// The listener's TLS in service.
pub struct ServerTls {
    config: Arc<ServerConfig>,
    /// For an ACME CA's TLS-ALPN-01 validation handshakes.
    challenge: Option<Arc<ServerConfig>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("acme", &self.challenge.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Puts `spec` in service; with ACME, starts obtaining and renewing the
    /// certificate (on the current runtime).
    pub fn start(spec: &TlsSpec) -> Result<Self, TlsError> {
        let mut provider = provider();
        if let Some(names) = &spec.suites {
            provider.cipher_suites.retain(|s| {
                s.version() == &rustls::version::TLS13 || names.contains(&suite_name(*s))
            });
        }
        let versions: &[&SupportedProtocolVersion] = match spec.minimum {
            MinimumTls::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinimumTls::Tls13 => &[&rustls::version::TLS13],
        };
        let provider = Arc::new(provider);
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(|e| refuse("http.tls", e))?;
        let builder = if spec.client_cas.is_empty() {
            builder.with_no_client_auth()
        } else {
            let mut roots = RootCertStore::empty();
            for cert in &spec.client_cas {
                roots
                    .add(cert.clone())
                    .map_err(|e| refuse("http.tls.clientcas", e))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| refuse("http.tls.clientcas", e))?;
            builder.with_client_cert_verifier(verifier)
        };
        let (resolver, challenge): (Arc<dyn ResolvesServerCert>, _) = match &spec.source {
            CertSource::Files { certificate, key } => {
                (Arc::new(FileCert::open(certificate, key)?), None)
            }
            CertSource::Acme(acme) => {
                let (resolver, challenge) = acme.start(provider)?;
                (resolver, Some(challenge))
            }
        };
        let mut config = builder.with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            challenge,
        })
    }

    /// Completes the server side of a handshake on `io`: the stream to
    /// serve HTTP on, or `None` when it was an ACME CA's validation (then
    /// answered and closed).
    pub async fn accept<IO>(&self, io: IO) -> std::io::Result<Option<TlsStream<IO>>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        if let Some(challenge) = &self.challenge
            && rustls_acme::is_tls_alpn_challenge(&start.client_hello())
        {
            tracing::info!("answering an ACME TLS-ALPN-01 validation");
            let mut stream = start.into_stream(Arc::clone(challenge)).await?;
            stream.shutdown().await?;
            return Ok(None);
        }
        start.into_stream(Arc::clone(&self.config)).await.map(Some)
    }
}
