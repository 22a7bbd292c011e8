//! A certificate from an ACME CA (`http.tls.letsencrypt`): Let's Encrypt
//! by default, or any directory (a company CA, pebble in the tests). The
//! CA validates with TLS-ALPN-01 on the listener itself, so nothing else
//! must listen on port 80. rustls-acme orders and renews; the account key
//! and the certificate are kept in distribution's one `cachefile`.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures::StreamExt as _;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::ResolvesServerCert;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_acme::{AccountCache, AcmeConfig, CertCache};
use serde::{Deserialize, Serialize};

use super::{TlsError, refuse};

/// Let's Encrypt's production directory, distribution's only one.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `http.tls.letsencrypt`, checked.
#[derive(Debug, Clone)]
pub struct AcmeSpec {
    /// The names the certificate is for (`hosts`).
    pub hosts: Vec<String>,
    /// The account's contact (`email`).
    pub email: Option<String>,
    /// Where the account key and the certificate are kept (`cachefile`).
    pub cache_file: PathBuf,
    /// The CA's directory URL (ours: `directory`, Let's Encrypt when unset).
    pub directory: String,
    /// Roots trusted for the directory beyond the platform's (ours: `ca`,
    /// for a private CA whose API is served with its own certificate).
    pub directory_ca: Vec<CertificateDer<'static>>,
}

impl AcmeSpec {
    /// Starts ordering and renewing on the current runtime; returns the
    /// resolver of the certificate and the configuration that answers the
    /// CA's validation handshakes.
    pub(super) fn start(
        &self,
        provider: Arc<CryptoProvider>,
    ) -> Result<(Arc<dyn ResolvesServerCert>, Arc<ServerConfig>), TlsError> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in rustls_native_certs::load_native_certs().certs {
            // One unusable system root is no reason to trust none.
            let _ = roots.add(cert);
        }
        for cert in &self.directory_ca {
            roots
                .add(cert.clone())
                .map_err(|e| refuse("http.tls.letsencrypt.ca", e))?;
        }
        let client = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| refuse("http.tls.letsencrypt", e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut state = AcmeConfig::new_with_client_config(&self.hosts, Arc::new(client))
            .contact(self.email.iter().map(|e| format!("mailto:{e}")))
            .directory(&self.directory)
            .cache(FileCache {
                path: self.cache_file.clone(),
                write: tokio::sync::Mutex::new(()),
            })
            .state();
        let resolver = state.resolver();
        let challenge = state.challenge_rustls_config_with_provider(provider);
        let hosts = self.hosts.join(",");
        tokio::spawn(async move {
            while let Some(event) = state.next().await {
                match event {
                    Ok(done) => tracing::info!(hosts, ?done, "ACME"),
                    Err(e) => tracing::warn!(hosts, error = %e, "ACME"),
                }
            }
        });
        Ok((resolver, challenge))
    }
}

/// One cached item and what it was obtained for.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// The CA's directory.
    directory: String,
    /// The certificate's names, or the account's contacts.
    names: Vec<String>,
    /// The item, base64.
    data: String,
}

/// The cache file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Cached {
    certificate: Option<Entry>,
    account: Option<Entry>,
}

/// The cache in one file, written whole (a temporary file renamed over
/// it, readable only by its owner: it holds private keys).
struct FileCache {
    path: PathBuf,
    /// Serialises read-modify-write cycles.
    write: tokio::sync::Mutex<()>,
}

impl FileCache {
    async fn read(&self) -> std::io::Result<Cached> {
        match tokio::fs::read(&self.path).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cached::default()),
            Err(e) => Err(e),
        }
    }

    /// The item `pick` selects, if it was obtained for `directory` and
    /// `names`.
    async fn load(
        &self,
        names: &[String],
        directory: &str,
        pick: fn(Cached) -> Option<Entry>,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let entry =
            pick(self.read().await?).filter(|e| e.directory == directory && e.names == names);
        entry
            .map(|e| STANDARD.decode(e.data))
            .transpose()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Replaces the item `slot` selects.
    async fn store(
        &self,
        names: &[String],
        directory: &str,
        data: &[u8],
        slot: fn(&mut Cached) -> &mut Option<Entry>,
    ) -> std::io::Result<()> {
        let _one = self.write.lock().await;
        let mut cached = self.read().await.unwrap_or_default();
        *slot(&mut cached) = Some(Entry {
            directory: directory.to_owned(),
            names: names.to_vec(),
            data: STANDARD.encode(data),
        });
        let bytes = serde_json::to_vec(&cached).map_err(std::io::Error::other)?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or_else(|| std::path::Path::new("."));
            std::fs::create_dir_all(dir)?;
            let mut file = tempfile::NamedTempFile::new_in(dir)?;
            file.write_all(&bytes)?;
            file.as_file().sync_all()?;
            file.persist(&path).map_err(|e| e.error)?;
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

#[async_trait::async_trait]
impl CertCache for FileCache {
    type EC = std::io::Error;

    async fn load_cert(
        &self,
        domains: &[String],
        directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EC> {
        self.load(domains, directory_url, |c| c.certificate).await
    }

    async fn store_cert(
        &self,
        domains: &[String],
        directory_url: &str,
        cert: &[u8],
    ) -> Result<(), Self::EC> {
        self.store(domains, directory_url, cert, |c| &mut c.certificate)
            .await
    }
}

#[async_trait::async_trait]
impl AccountCache for FileCache {
    type EA = std::io::Error;

    async fn load_account(
        &self,
        contact: &[String],
        directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EA> {
        self.load(contact, directory_url, |c| c.account).await
    }

    async fn store_account(
        &self,
        contact: &[String],
        directory_url: &str,
        account: &[u8],
    ) -> Result<(), Self::EA> {
        self.store(contact, directory_url, account, |c| &mut c.account)
            .await
    }
}
