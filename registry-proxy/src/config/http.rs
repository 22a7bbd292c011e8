//! The serving side of the configuration that distribution's `http` and
//! `health` sections describe: where to listen (`net`, `addr`), TLS, the
//! URLs the cache writes (`prefix`, `host`, `relativeurls`), the debug
//! listener's metrics path and the storage health check.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_norway::Value;

use super::{Config, ConfigError, duration, invalid, parse_addr, scalar_text};
use crate::app::Urls;
use crate::health::StorageCheck;
use crate::routes::{DEBUG_PATHS, DebugSurface};
use crate::tls::{AcmeSpec, CertSource, TlsError, TlsSpec};

/// `http.tls`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpTlsConfig {
    /// The certificate chain (PEM), leaf first.
    pub certificate: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// CA bundles client certificates must chain to; when set, every
    /// client must present one (mutual TLS).
    pub clientcas: Vec<PathBuf>,
    /// `tls1.2` (default) or `tls1.3`; `tls1.0` and `tls1.1` serve 1.2 and
    /// up (warned).
    pub minimumtls: Option<String>,
    /// TLS 1.2 cipher suites by IANA name; those rustls does not implement
    /// are warned about and not offered.
    pub ciphersuites: Option<Vec<String>>,
    /// A certificate from an ACME CA instead of files.
    pub letsencrypt: LetsEncryptConfig,
}

/// `http.tls.letsencrypt`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LetsEncryptConfig {
    /// Where the account key and certificate are kept; setting it turns
    /// ACME on, as in distribution.
    pub cachefile: Option<PathBuf>,
    /// The account's contact address.
    pub email: Option<String>,
    /// The names to obtain a certificate for (required here: without it a
    /// client could make the cache ask for any name).
    pub hosts: Vec<String>,
    /// Ours: the ACME directory URL (default Let's Encrypt's production).
    pub directory: Option<String>,
    /// Ours: a CA bundle trusted for the directory's own https.
    pub ca: Option<PathBuf>,
}

/// `http.debug.prometheus`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// `false` turns `/metrics` off; unset or `true` serves it.
    pub enabled: Option<bool>,
    /// Where the metrics are served (default `/metrics`).
    pub path: Option<String>,
}

/// `health`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// The periodic storage check (applied).
    pub storagedriver: StorageDriverHealth,
    /// Distribution's file checks: accepted, not applied.
    pub file: Value,
    /// Distribution's HTTP checks: accepted, not applied.
    pub http: Value,
    /// Distribution's TCP checks: accepted, not applied.
    pub tcp: Value,
}

/// `health.storagedriver`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageDriverHealth {
    /// Whether storage is checked periodically; otherwise each probe of
    /// `/readyz` checks it.
    pub enabled: bool,
    /// How often (default `10s`).
    #[serde(deserialize_with = "scalar_text")]
    pub interval: Option<String>,
    /// Failures in a row that make the cache unready (default 1).
    pub threshold: Option<u32>,
}

/// Where the public listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address.
    Tcp(std::net::SocketAddr),
    /// A Unix socket's path (`http.net: unix`).
    Unix(PathBuf),
}

impl From<TlsError> for ConfigError {
    fn from(e: TlsError) -> Self {
        invalid(e.key, e.why)
    }
}

impl Config {
    /// Where the public listener listens: `http.addr` as a TCP address, or
    /// as a socket path when `http.net` is `unix`.
    pub fn listen(&self) -> Result<Listen, ConfigError> {
        match self.http.net.as_deref().unwrap_or("tcp") {
            "tcp" => parse_addr("http.addr", &self.http.addr).map(Listen::Tcp),
            "unix" if self.http.addr.is_empty() => {
                Err(invalid("http.addr", "a Unix socket needs a path"))
            }
            "unix" => Ok(Listen::Unix(PathBuf::from(&self.http.addr))),
            other => Err(invalid(
                "http.net",
                format!("{other:?}: only tcp and unix are served"),
            )),
        }
    }

    /// The listener's TLS, if `http.tls` asks for it: `certificate` and
    /// `key`, or `letsencrypt` (distribution turns TLS on with either).
    pub fn server_tls(&self) -> Result<Option<TlsSpec>, ConfigError> {
        let tls = &self.http.tls;
        let acme = &tls.letsencrypt;
        let source = match (&tls.certificate, &tls.key, &acme.cachefile) {
            (None, None, None) => return Ok(None),
            (Some(_), _, Some(_)) => {
                return Err(invalid(
                    "http.tls",
                    "certificate and letsencrypt are both set: choose one",
                ));
            }
            (Some(certificate), Some(key), None) => CertSource::Files {
                certificate: certificate.clone(),
                key: key.clone(),
            },
            (Some(_), None, None) => {
                return Err(invalid("http.tls.key", "is required with certificate"));
            }
            (None, Some(_), None) => {
                return Err(invalid("http.tls.certificate", "is required with key"));
            }
            (None, _, Some(cachefile)) => {
                if acme.hosts.is_empty() {
                    return Err(invalid(
                        "http.tls.letsencrypt.hosts",
                        "is required: the names the certificate is for",
                    ));
                }
                let directory_ca = match &acme.ca {
                    None => Vec::new(),
                    Some(path) => crate::tls::read_bundle(path)
                        .map_err(|why| invalid("http.tls.letsencrypt.ca", why))?,
                };
                let directory = acme
                    .directory
                    .clone()
                    .unwrap_or_else(|| crate::tls::LETS_ENCRYPT.to_owned());
                url::Url::parse(&directory)
                    .map_err(|e| invalid("http.tls.letsencrypt.directory", e))?;
                CertSource::Acme(AcmeSpec {
                    hosts: acme.hosts.clone(),
                    email: acme.email.clone(),
                    cache_file: cachefile.clone(),
                    directory,
                    directory_ca,
                })
            }
        };
        Ok(Some(TlsSpec::read(
            source,
            &tls.clientcas,
            tls.minimumtls.as_deref(),
            tls.ciphersuites.as_deref(),
        )?))
    }

    /// The URLs the cache writes (`Link` headers): under `http.prefix`,
    /// absolute on `http.host` unless `http.relativeurls`.
    pub fn urls(&self) -> Result<Urls, ConfigError> {
        let prefix = match self.http.prefix.as_deref().map(|p| p.trim_end_matches('/')) {
            None | Some("") => String::new(),
            Some(p) if p.starts_with('/') && !p.contains(['?', '#']) => p.to_owned(),
            Some(p) => {
                return Err(invalid(
                    "http.prefix",
                    format!("{p:?}: a path starting with /"),
                ));
            }
        };
        let base = match (&self.http.host, self.http.relativeurls.unwrap_or(false)) {
            (Some(host), false) => {
                let url = url::Url::parse(host).map_err(|e| invalid("http.host", e))?;
                if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                    return Err(invalid("http.host", format!("{host:?}: an http(s) URL")));
                }
                Some(format!(
                    "{}://{}",
                    url.scheme(),
                    &url[url::Position::BeforeHost..url::Position::AfterPort]
                ))
            }
            _ => None,
        };
        Ok(Urls { prefix, base })
    }

    /// What the debug listener serves: the metrics path
    /// (`http.debug.prometheus`) and the storage check
    /// (`health.storagedriver`).
    pub fn debug_surface(&self) -> Result<DebugSurface, ConfigError> {
        let prometheus = &self.http.debug.prometheus;
        let metrics_path = match (prometheus.enabled, prometheus.path.as_deref()) {
            (Some(false), _) => None,
            (_, None) => Some("/metrics".to_owned()),
            (_, Some(p)) if p.starts_with('/') && p.len() > 1 => Some(p.to_owned()),
            (_, Some(p)) => {
                return Err(invalid(
                    "http.debug.prometheus.path",
                    format!("{p:?}: a path starting with /"),
                ));
            }
        };
        if let Some(path) = &metrics_path
            && DEBUG_PATHS.contains(&path.as_str())
        {
            return Err(invalid(
                "http.debug.prometheus.path",
                format!("{path} is already served"),
            ));
        }
        let check = &self.health.storagedriver;
        let storage_check = if check.enabled {
            let interval = duration(
                "health.storagedriver.interval",
                check.interval.as_deref(),
                Duration::from_secs(10),
            )?;
            if interval.is_zero() {
                return Err(invalid("health.storagedriver.interval", "must be positive"));
            }
            Some(StorageCheck {
                interval,
                threshold: check.threshold.unwrap_or(1).max(1),
            })
        } else {
            None
        };
        Ok(DebugSurface {
            metrics_path,
            storage_check,
        })
    }
}
