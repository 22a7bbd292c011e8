//! Distribution's YAML configuration, overridden by `REGISTRY_*` variables,
//! into a typed, validated [`Config`].

mod http;
mod plan;
mod remote;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use driver_core::Secret;
use driver_fs::{FsConfig, Fsync};
use driver_s3::S3Config;
use serde::Deserialize;
use serde::de::{Deserializer, Visitor};
use serde_norway::Value;

use crate::admin::{AdminAccess, AdminToken};
use crate::auth::Htpasswd;
use crate::cache::fill::FillLimits;
use crate::cache::verify::VerifyReads;
use crate::listener::Limits;
use crate::metadata::etcd::EtcdOptions;
use crate::namespace::{self, NamespaceSpec, Namespaces, RepoFilter, Sharing};
use crate::namespace::{Prefetch, PrefetchImage as PrefetchPlan, TagFilter};
use crate::oci::RepoName;
use crate::scheduler::{Bounds, GcOptions, Options, Purge, Watermarks};
use crate::upstream::{Credentials, UpstreamTls};
pub use http::{
    HealthConfig, HttpTlsConfig, LetsEncryptConfig, Listen, PrometheusConfig, StorageDriverHealth,
};
pub use plan::Plan;
use remote::exec_env;
pub use remote::{RemoteUrlCredentials, RemoteUrlEntry};

/// A configuration that cannot be used; `key` is the dotted path at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {key}: {reason}")]
pub struct ConfigError {
    /// Dotted path of the key (`storage.s3.bucket`), or the file.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

fn invalid(key: impl Into<String>, reason: impl ToString) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.to_string(),
    }
}

/// Timeout of upstream connections, and of manifest, token and proof
/// requests (no key: distribution has none).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The configuration used when none is given: filesystem storage in
/// `./data`, listening on 127.0.0.1:5000, Docker Hub upstream.
pub const EMBEDDED_DEFAULT: &str = "\
version: 0.1
storage:
  filesystem:
    rootdirectory: ./data
http:
  addr: 127.0.0.1:5000
proxy:
  remoteurl: https://registry-1.docker.io
";

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Distribution's config version (`0.1`); accepted and otherwise unused.
    pub version: Value,
    /// Logging.
    pub log: LogConfig,
    /// The storage backend.
    pub storage: StorageConfig,
    /// The listeners.
    pub http: HttpConfig,
    /// The upstream registries.
    pub proxy: ProxyConfig,
    /// Client authentication.
    pub auth: AuthConfig,
    /// Health checks: `storagedriver` applied, the others accepted.
    pub health: HealthConfig,
    /// Garbage collection and leases (registry-proxy's own).
    pub gc: GcConfig,
    /// Where several replicas coordinate (registry-proxy's own); absent:
    /// a single node.
    pub coordination: CoordinationConfig,
    /// The admin surface (registry-proxy's own); absent: none.
    pub admin: AdminConfig,
    /// OpenTelemetry traces (registry-proxy's own); absent: none.
    pub tracing: TracingConfig,
    /// Distribution's deprecated `loglevel`: accepted, not applied.
    pub loglevel: Value,
    /// Distribution's middleware: accepted, not applied.
    pub middleware: Value,
    /// Distribution's error reporting (bugsnag, newrelic): accepted, not applied.
    pub reporting: Value,
    /// Distribution's webhooks: accepted, not applied (a cache pushes nothing).
    pub notifications: Value,
    /// Distribution's redis: accepted, not applied.
    pub redis: Value,
    /// Distribution's schema 1 compatibility: accepted, not applied.
    pub compatibility: Value,
    /// Distribution's manifest validation: accepted, not applied.
    pub validation: Value,
}

impl Config {
    /// The keys this configuration sets that registry-proxy accepts from
    /// distribution's reference but does not apply (each logged once at
    /// start).
    pub fn ignored_keys(&self) -> Vec<&'static str> {
        let http = &self.http;
        [
            ("loglevel", &self.loglevel),
            ("middleware", &self.middleware),
            ("reporting", &self.reporting),
            ("notifications", &self.notifications),
            ("redis", &self.redis),
            ("compatibility", &self.compatibility),
            ("validation", &self.validation),
            ("health.file", &self.health.file),
            ("health.http", &self.health.http),
            ("health.tcp", &self.health.tcp),
            ("log.accesslog", &self.log.accesslog),
            ("log.hooks", &self.log.hooks),
            ("log.reportcaller", &self.log.reportcaller),
            ("storage.delete", &self.storage.delete),
            ("storage.cache", &self.storage.cache),
            ("storage.tag", &self.storage.tag),
            (
                "storage.maintenance.readonly",
                &self.storage.maintenance.readonly,
            ),
            ("http.secret", &http.secret),
            ("http.http2", &http.http2),
            ("http.h2c", &http.h2c),
        ]
        .into_iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(key, _)| key)
        .collect()
    }

    /// The keys that would make the cache do less than the configuration
    /// asks (no client authentication where it asks for another scheme):
    /// refused rather than ignored.
    fn refused(&self) -> Result<(), ConfigError> {
        if !self.auth.silly.is_null() {
            return Err(invalid(
                "auth.silly",
                "only auth.htpasswd and auth.token authenticate clients here",
            ));
        }
        if self.auth.htpasswd.is_some() && self.auth.token.is_some() {
            return Err(invalid(
                "auth.token",
                "give auth.htpasswd or auth.token, not both",
            ));
        }
        Ok(())
    }

    /// How long in-flight responses and fills may run after SIGTERM
    /// (`http.draintimeout`, default 30 s).
    pub fn drain_timeout(&self) -> Result<Duration, ConfigError> {
        duration(
            "http.draintimeout",
            self.http.draintimeout.as_deref(),
            Duration::from_secs(30),
        )
    }
}

/// `gc` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// How often to collect (default `1h`; `0`: never on a schedule).
    #[serde(deserialize_with = "scalar_text")]
    pub interval: Option<String>,
    /// Whether to collect after an expiry pass removed something (default
    /// `true`).
    pub afterexpiry: Option<bool>,
    /// Nothing modified more recently is collected (default `10m`).
    #[serde(deserialize_with = "scalar_text")]
    pub grace: Option<String>,
    /// The longest life of a lease on content in use (default `10m`).
    #[serde(deserialize_with = "scalar_text")]
    pub leasetimeout: Option<String>,
}

/// `coordination` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinationConfig {
    /// etcd, shared by the replicas.
    pub etcd: Option<EtcdConfig>,
}

/// `coordination.etcd`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs (`http://127.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// Key prefix of this cache's state (default `/registry-proxy`); every
    /// replica of one cache uses the same.
    pub prefix: Option<String>,
    /// The session lease's TTL: how soon a dead replica's locks and
    /// leadership pass on (default `10s`).
    #[serde(deserialize_with = "scalar_text")]
    pub leasettl: Option<String>,
    /// Timeout of each etcd request (default `5s`).
    #[serde(deserialize_with = "scalar_text")]
    pub timeout: Option<String>,
    /// etcd user name (etcd's authentication enabled).
    #[serde(deserialize_with = "scalar_text")]
    pub username: Option<String>,
    /// Its password (never shown by `Debug`).
    #[serde(deserialize_with = "scalar_secret")]
    pub password: Option<Secret>,
    /// TLS to etcd (`https://` endpoints): more roots and a client
    /// certificate.
    pub tls: UpstreamTlsConfig,
}

/// `log` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info` (default) or `debug`.
    pub level: String,
    /// `text` (default) or `json`.
    pub formatter: String,
    /// Fields added to every line.
    pub fields: BTreeMap<String, Value>,
    /// Distribution's access log switch; accepted, not used.
    pub accesslog: Value,
    /// Distribution's log hooks (mail): accepted, not applied.
    pub hooks: Value,
    /// Distribution's caller reporting: accepted, not applied.
    pub reportcaller: Value,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            formatter: "text".into(),
            fields: BTreeMap::new(),
            accesslog: Value::Null,
            hooks: Value::Null,
            reportcaller: Value::Null,
        }
    }
}

/// `storage.filesystem`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FsSection {
    /// The root directory.
    pub rootdirectory: PathBuf,
    /// Distribution's thread cap; accepted, not used.
    pub maxthreads: Option<u32>,
    /// Ours: `always` (default) or `never`.
    pub fsync: Option<Fsync>,
}

/// `proxy.localtier`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalTierSection {
    /// Where the copies are kept (required).
    pub rootdirectory: PathBuf,
    /// The bytes they take at most (required, e.g. `20GiB`).
    pub maxsize: Option<String>,
}

/// `storage.redirect`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedirectSection {
    /// `true`: never redirect. `false`: redirect S3 blob hits (presigned
    /// URLs valid `storage.s3.redirectexpiry` seconds, 20 minutes unless
    /// set). Unset: redirect only where `redirectexpiry` is set.
    pub disable: Option<bool>,
}

/// How long a presigned URL stays valid when `storage.redirect.disable:
/// false` asks for redirects without `redirectexpiry` (distribution's 20
/// minutes).
const REDIRECT_EXPIRY_SECS: u64 = 20 * 60;

/// `storage` section: exactly one of `filesystem`, `s3`, `inmemory`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Local filesystem.
    pub filesystem: Option<FsSection>,
    /// S3 or an S3-compatible store.
    pub s3: Option<S3Config>,
    /// Process memory (tests, demos).
    pub inmemory: Option<Value>,
    /// Distribution's sections that do not apply to a cache; accepted.
    pub delete: Value,
    /// Distribution's blob descriptor cache; accepted (ours is built in).
    pub cache: Value,
    /// Distribution's maintenance: `uploadpurging` removes abandoned
    /// writers; `readonly` is accepted.
    pub maintenance: Maintenance,
    /// Distribution's redirect switch: whether blob hits on S3 answer
    /// with a presigned URL of the object instead of its bytes.
    pub redirect: RedirectSection,
    /// Distribution's tag lookup concurrency: accepted, not applied.
    pub tag: Value,
}

/// `storage.maintenance`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Maintenance {
    /// Removal of writers left behind by interrupted fills.
    pub uploadpurging: UploadPurging,
    /// Distribution's read-only switch; accepted (a cache never takes pushes).
    pub readonly: Value,
}

/// `storage.maintenance.uploadpurging`: at start and every `interval`,
/// writers idle for longer than `age` are removed.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadPurging {
    /// On unless `false`.
    pub enabled: bool,
    /// Idle time after which a writer is abandoned (default `1h`).
    #[serde(deserialize_with = "scalar_text")]
    pub age: Option<String>,
    /// How often to look (default `1h`).
    #[serde(deserialize_with = "scalar_text")]
    pub interval: Option<String>,
    /// Distribution's dry run: nothing is removed (purging is off).
    pub dryrun: bool,
}

impl Default for UploadPurging {
    fn default() -> Self {
        Self {
            enabled: true,
            age: None,
            interval: None,
            dryrun: false,
        }
    }
}

/// Which backend the storage section selects.
#[derive(Debug, Clone)]
pub enum Backend {
    /// `storage.filesystem`.
    Filesystem(FsConfig),
    /// `storage.s3`.
    S3(Box<S3Config>),
    /// `storage.inmemory`.
    InMemory,
}

/// `http` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address; `:5000` means every interface, as in distribution.
    pub addr: String,
    /// The debug listener (metrics, health).
    pub debug: DebugConfig,
    /// Headers added to every response (distribution's `http.headers`).
    pub headers: BTreeMap<String, Vec<String>>,
    /// Ours: connections served at once (default 4096).
    pub maxconnections: Option<usize>,
    /// Ours: how long a request's headers may take (default `10s`).
    #[serde(deserialize_with = "scalar_text")]
    pub readheadertimeout: Option<String>,
    /// Ours: how long a connection may go without a request (default `300s`).
    #[serde(deserialize_with = "scalar_text")]
    pub idletimeout: Option<String>,
    /// Ours: how long a response may wait for the client to read (default
    /// `60s`).
    #[serde(deserialize_with = "scalar_text")]
    pub writetimeout: Option<String>,
    /// How long in-flight responses may run after SIGTERM (default `30s`).
    #[serde(deserialize_with = "scalar_text")]
    pub draintimeout: Option<String>,
    /// TLS serving.
    pub tls: HttpTlsConfig,
    /// The listener's network: `tcp` (default) or `unix` (then `addr` is
    /// the socket's path).
    pub net: Option<String>,
    /// The path the API is served under (`/registry` serves
    /// `/registry/v2/`).
    pub prefix: Option<String>,
    /// The cache's external URL, for the absolute URLs it writes.
    pub host: Option<String>,
    /// Distribution's upload-state secret: accepted, not needed (a cache
    /// takes no uploads).
    pub secret: Value,
    /// Write relative URLs even when `host` is set.
    pub relativeurls: Option<bool>,
    /// Distribution's HTTP/2 switch: accepted, not applied.
    pub http2: Value,
    /// Distribution's cleartext HTTP/2 switch: accepted, not applied.
    pub h2c: Value,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:5000".into(),
            debug: DebugConfig::default(),
            headers: BTreeMap::new(),
            maxconnections: None,
            readheadertimeout: None,
            idletimeout: None,
            writetimeout: None,
            draintimeout: None,
            tls: HttpTlsConfig::default(),
            net: None,
            prefix: None,
            host: None,
            secret: Value::Null,
            relativeurls: None,
            http2: Value::Null,
            h2c: Value::Null,
        }
    }
}

/// `http.debug` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// Listen address of the debug server; none when empty.
    pub addr: String,
    /// The metrics' switch and path (served unless `enabled: false`).
    pub prometheus: PrometheusConfig,
}

/// `auth` section: registry:2's `htpasswd` (other schemes are refused).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Basic authentication against an htpasswd file of bcrypt hashes.
    pub htpasswd: Option<HtpasswdConfig>,
    /// Distribution's test scheme: refused.
    pub silly: Value,
    /// Distribution's token scheme: JWTs from a token service.
    pub token: Option<TokenConfig>,
}

/// `auth.token`: distribution's token scheme.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// The token service clients are sent to.
    pub realm: String,
    /// The service tokens are issued for (their audience).
    pub service: String,
    /// Who issues them.
    pub issuer: String,
    /// The JSON Web Key Set that verifies them.
    pub jwks: PathBuf,
    /// Certificates that verify them: not supported (give `jwks`).
    pub rootcertbundle: Option<PathBuf>,
    /// The algorithms accepted (default: those the keys name).
    pub signingalgorithms: Vec<String>,
    /// Distribution's redirect of the base endpoint: accepted, not used.
    pub autoredirect: Value,
}

/// `auth.htpasswd`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HtpasswdConfig {
    /// The realm of the challenge.
    pub realm: String,
    /// The htpasswd file (`htpasswd -Bbn user password` lines).
    pub path: PathBuf,
    /// Ours: the header a reverse proxy in front sets to the client's
    /// address (`X-Forwarded-For`: its last address is taken), by which
    /// failed logins are counted; believed only from `trustedproxies` and
    /// from a Unix socket's clients.
    pub clientheader: Option<String>,
    /// Ours: the proxies (addresses or CIDR ranges) whose `clientheader`
    /// is believed.
    pub trustedproxies: Vec<String>,
}

/// An upstream URL as written, which may carry credentials
/// (`https://user:pass@host`): `Debug` shows it without them.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct RemoteUrl(pub String);

impl std::fmt::Debug for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match upstream_url("", &self.0) {
            Ok((url, _)) => write!(f, "{:?}", url.as_str()),
            Err(_) => f.write_str("\"(not a URL)\""),
        }
    }
}

/// `proxy.upstreams[]`: one namespace.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamEntry {
    /// Its name: the registry host containerd sends as `?ns=`, also the
    /// path prefix selecting it (`docker.io`, `ghcr.io`, `localhost:5000`).
    pub namespace: String,
    /// The upstream registry.
    pub remoteurl: RemoteUrl,
    /// Upstream user name.
    #[serde(deserialize_with = "scalar_text")]
    pub username: Option<String>,
    /// Upstream password (never shown by `Debug`).
    #[serde(deserialize_with = "scalar_secret")]
    pub password: Option<Secret>,
    /// How long its content lives unaccessed; default `proxy.ttl`.
    #[serde(deserialize_with = "scalar_text")]
    pub ttl: Option<String>,
    /// `shared` (default) or `isolated`.
    pub sharing: Option<String>,
    /// The users allowed to pull through it (needs `auth.htpasswd`);
    /// default: every client.
    pub users: Option<Vec<String>>,
    /// Whether requests naming no namespace go here.
    pub default: bool,
    /// How its upstream is trusted beyond the platform's roots.
    pub tls: UpstreamTlsConfig,
    /// Ours: the most bytes of the blobs this namespace brought in
    /// (`50GiB`); over it, the namespace's links of blobs go, and their
    /// bytes only where no other namespace links them.
    #[serde(deserialize_with = "scalar_text")]
    pub maxsize: Option<String>,
    /// Ours: which repositories may be pulled through this namespace.
    pub repositories: RepositoriesConfig,
    /// Ours: images pulled ahead of their clients and kept warm.
    pub prefetch: Option<PrefetchConfig>,
    /// Ours: its URLs, caps, pull budget and credential source (keys at
    /// this level: `remoteurls`, `remoteretry`, `maxconcurrent`,
    /// `maxbandwidth`, `pullbudget`, `exec`, `ecrregion`).
    #[serde(flatten)]
    pub upstream: UpstreamKnobs,
}

/// `pullbudget` (ours): when the pull budget an upstream announces
/// (Docker Hub's `ratelimit-remaining`) is low, and how long cached tags
/// are trusted then.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PullBudgetConfig {
    /// Pulls left (`10`) or a share of the limit (`10%`, the default) at
    /// or under which the budget is low.
    #[serde(deserialize_with = "scalar_text")]
    pub reserve: Option<String>,
    /// The tag freshness while it is low (default `1h`).
    #[serde(deserialize_with = "scalar_text")]
    pub tagfreshness: Option<String>,
}

/// `exec` (distribution v3's): a Docker credential helper.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecConfig {
    /// The program, run as `<command> get`.
    pub command: String,
    /// How long its credentials are reused; unset: until the upstream
    /// refuses them; `0`: it runs for every request that needs them.
    #[serde(deserialize_with = "scalar_text")]
    pub lifetime: Option<String>,
    /// Ours: the variables it gets besides `PATH`, `HOME` and the few
    /// others every helper gets (its environment is cleared): names, or
    /// prefixes ending in `*` (`AWS_*`); never `REGISTRY_*`.
    pub env: Vec<String>,
}

/// The upstream settings `proxy` and each `proxy.upstreams[]` entry share
/// (ours, but `exec`, which is distribution v3's).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamKnobs {
    /// Ours: the upstream's URLs in the order they are asked, a later
    /// one when those before fail (instead of `remoteurl`), each with its
    /// own credentials or none.
    pub remoteurls: Vec<RemoteUrlEntry>,
    /// Ours: how long a failing URL of `remoteurls` is passed over
    /// (default `30s`).
    #[serde(deserialize_with = "scalar_text")]
    pub remoteretry: Option<String>,
    /// Ours: upstream requests at once (default: no cap).
    pub maxconcurrent: Option<usize>,
    /// Ours: blob bytes per second from the upstream (`20MiB`; default:
    /// no cap).
    #[serde(deserialize_with = "scalar_text")]
    pub maxbandwidth: Option<String>,
    /// Ours: when the announced pull budget is low, and the tag
    /// freshness then.
    pub pullbudget: PullBudgetConfig,
    /// distribution v3's: a credential helper printing the first URL's
    /// credentials.
    pub exec: Option<ExecConfig>,
    /// Ours: the region of an Amazon ECR first URL, whose tokens come
    /// from the AWS credential chain (found from an ECR host when unset).
    #[serde(deserialize_with = "scalar_text")]
    pub ecrregion: Option<String>,
}

impl UpstreamKnobs {
    /// The upstream plan; `primary` is `remoteurl` (`None`: the first of
    /// `remoteurls`), `level` the `username` and `password` beside it (the
    /// first URL's), `key` names a field in errors. Returns the first URL,
    /// its credentials and the plan.
    fn plan(
        &self,
        primary: Option<&RemoteUrl>,
        level: Credentials,
        key: &dyn Fn(&str) -> String,
    ) -> Result<(reqwest::Url, Credentials, crate::upstream::UpstreamPlan), ConfigError> {
        use crate::upstream::{Fallback, PullBudget, Reserve, UpstreamPlan};
        let defaults = UpstreamPlan::default();
        let (first, rest) = match (primary, self.remoteurls.split_first()) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    key("remoteurls"),
                    "give remoteurl or remoteurls, not both",
                ));
            }
            (Some(url), None) => (upstream_url(&key("remoteurl"), &url.0)?, &[][..]),
            (None, Some((RemoteUrlEntry::WithCredentials(e), _)))
                if level.is_some() && (e.username.is_some() || e.password.is_some()) =>
            {
                return Err(invalid(
                    key("remoteurls[0]"),
                    "the first URL's credentials are given twice: here and in username and password",
                ));
            }
            (None, Some((url, rest))) => (url.read(&key("remoteurls[0]"))?, rest),
            (None, None) => return Err(invalid(key("remoteurl"), "an upstream URL is required")),
        };
        // `username` and `password` beside the URL win over those in it.
        let first = (first.0, level.or(first.1));
        let mut fallbacks = Vec::new();
        for (i, url) in rest.iter().enumerate() {
            let (url, credentials) = url.read(&key(&format!("remoteurls[{}]", i + 1)))?;
            fallbacks.push(Fallback { url, credentials });
        }
        let reserve = match self.pullbudget.reserve.as_deref() {
            None => defaults.pull_budget.reserve,
            Some(text) => {
                let bad = || {
                    invalid(
                        key("pullbudget.reserve"),
                        "expected a number of pulls or a percentage (10%)",
                    )
                };
                match text.trim().strip_suffix('%') {
                    Some(p) => Reserve::Percent(
                        p.trim()
                            .parse::<f64>()
                            .ok()
                            .filter(|p| (0.0..=100.0).contains(p))
                            .ok_or_else(bad)?,
                    ),
                    None => Reserve::Pulls(text.trim().parse().map_err(|_| bad())?),
                }
            }
        };
        let exec = match &self.exec {
            None => None,
            Some(exec) if exec.command.trim().is_empty() => {
                return Err(invalid(key("exec.command"), "name the credential helper"));
            }
            Some(exec) => Some(crate::upstream::exec::Exec {
                command: exec.command.clone(),
                lifetime: exec
                    .lifetime
                    .as_deref()
                    .map(|l| duration(&key("exec.lifetime"), Some(l), Duration::ZERO))
                    .transpose()?,
                env: exec_env(&key("exec.env"), &exec.env)?,
            }),
        };
        let ecr_region = match self.ecrregion.as_deref() {
            Some(region)
                if region.is_empty()
                    || !region
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
            {
                return Err(invalid(key("ecrregion"), "not an AWS region"));
            }
            Some(_) if exec.is_some() => {
                return Err(invalid(
                    key("ecrregion"),
                    "give exec or ecrregion, not both",
                ));
            }
            region => region.map(str::to_owned),
        };
        if self.maxconcurrent == Some(0) {
            return Err(invalid(key("maxconcurrent"), "must be more than 0"));
        }
        let plan = UpstreamPlan {
            fallbacks,
            retry: duration(
                &key("remoteretry"),
                self.remoteretry.as_deref(),
                defaults.retry,
            )?,
            max_concurrent: self.maxconcurrent,
            max_bandwidth: positive_size(&key("maxbandwidth"), self.maxbandwidth.as_deref())?,
            pull_budget: PullBudget {
                reserve,
                freshness: duration(
                    &key("pullbudget.tagfreshness"),
                    self.pullbudget.tagfreshness.as_deref(),
                    defaults.pull_budget.freshness,
                )?,
            },
            exec,
            ecr_region,
        };
        Ok((first.0, first.1, plan))
    }
}

/// `prefetch` of a namespace.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefetchConfig {
    /// How often the tags are listed and the matching ones warmed
    /// (default `1h`).
    #[serde(deserialize_with = "scalar_text")]
    pub interval: Option<String>,
    /// The repositories and their tag globs.
    pub images: Vec<PrefetchImage>,
}

/// One repository of `prefetch.images`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefetchImage {
    /// The repository, as clients name it.
    pub repository: String,
    /// Globs its tags must match (`v*`, `3.*`, `latest`).
    pub tags: Vec<String>,
    /// A regular expression its whole tags must match.
    pub regex: Option<String>,
    /// A semver range its tags' versions must be in (`>=1.2, <2`).
    pub semver: Option<String>,
    /// Platforms of an index to warm (`linux/amd64`, `linux/arm/v7`);
    /// every one when empty.
    pub platforms: Vec<String>,
}

impl PrefetchConfig {
    /// The plan; `key` names the section in errors.
    fn plan(&self, key: &str) -> Result<Prefetch, ConfigError> {
        let interval = duration(
            &format!("{key}.interval"),
            self.interval.as_deref(),
            Duration::from_secs(3600),
        )?;
        if interval.is_zero() {
            return Err(invalid(format!("{key}.interval"), "must be more than 0"));
        }
        let mut images = Vec::new();
        for (i, image) in self.images.iter().enumerate() {
            let at = |field: &str| format!("{key}.images[{i}].{field}");
            let repo = RepoName::parse(&image.repository)
                .map_err(|e| invalid(at("repository"), e.to_string()))?;
            if image.tags.is_empty() && image.regex.is_none() && image.semver.is_none() {
                return Err(invalid(
                    at("tags"),
                    "say which tags to prefetch: tags (globs), regex or semver",
                ));
            }
            let globs = (!image.tags.is_empty())
                .then(|| RepoFilter::new(&image.tags, &[]))
                .transpose()
                .map_err(|e| invalid(at("tags"), e))?;
            let regex = image
                .regex
                .as_deref()
                .map(|r| {
                    regex::RegexBuilder::new(&format!("^(?:{r})$"))
                        .size_limit(1 << 20)
                        .build()
                })
                .transpose()
                .map_err(|e| invalid(at("regex"), e.to_string()))?;
            let semver = image
                .semver
                .as_deref()
                .map(semver::VersionReq::parse)
                .transpose()
                .map_err(|e| invalid(at("semver"), e.to_string()))?;
            let platforms = image
                .platforms
                .iter()
                .map(|p| crate::oci::Platform::parse(p))
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(at("platforms"), e))?;
            images.push(PrefetchPlan {
                repository: repo,
                tags: TagFilter {
                    globs,
                    regex,
                    semver,
                },
                platforms,
            });
        }
        Ok(Prefetch { interval, images })
    }
}

/// `tracing` (ours): OpenTelemetry traces.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// The OTLP exporter; absent: no traces.
    pub otlp: OtlpConfig,
}

/// `tracing.otlp`: where traces go, over OTLP/HTTP with protobuf.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector: its base URL (`http://collector:4318`, to which
    /// `/v1/traces` is added) or its traces URL. Unset: traces are off.
    #[serde(deserialize_with = "scalar_text")]
    pub endpoint: Option<String>,
    /// `service.name` (default `registry-proxy`).
    #[serde(deserialize_with = "scalar_text")]
    pub servicename: Option<String>,
    /// The share of traces kept, 0 to 1 (default 1).
    #[serde(deserialize_with = "scalar_text")]
    pub samplingratio: Option<String>,
    /// Whether a client's sampled `traceparent` makes its request traced
    /// whatever `samplingratio` says (default: no, any client could then
    /// make every request exported).
    pub trustclientsampling: bool,
    /// Headers sent with each export (an API key).
    pub headers: BTreeMap<String, String>,
}

/// `admin` (ours): the admin surface, on a listener of its own.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where it listens (`127.0.0.1:5002`); empty: no admin surface.
    pub addr: String,
    /// A file holding a bearer token that admits a request.
    pub tokenfile: Option<PathBuf>,
    /// Users of `auth.htpasswd` admitted with their Basic credentials.
    pub users: Vec<String>,
}

/// The admin surface as planned.
#[derive(Debug, Clone)]
pub struct AdminPlan {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The file holding its token, if any.
    pub tokenfile: Option<PathBuf>,
    /// Who is admitted.
    pub access: AdminAccess,
}

/// `repositories` of a namespace: globs over repository names (`*`, `?`
/// within a component, `**` across); denied ones get 403 `DENIED` without
/// the upstream being asked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepositoriesConfig {
    /// Only these (every repository when empty).
    pub allow: Vec<String>,
    /// Never these, whatever `allow` says.
    pub deny: Vec<String>,
}

impl RepositoriesConfig {
    /// The compiled filter; `key` names the section in errors.
    fn filter(&self, key: &str) -> Result<RepoFilter, ConfigError> {
        RepoFilter::new(&self.allow, &self.deny).map_err(|e| invalid(key, e))
    }
}

/// `proxy.tls` and `proxy.upstreams[].tls`: trust for an https upstream
/// beyond the platform's roots (the system store, `SSL_CERT_FILE`,
/// `SSL_CERT_DIR`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// A PEM bundle of more roots (a company CA).
    pub ca: Option<PathBuf>,
    /// Accept any certificate (a self-signed lab registry; warned at start).
    pub insecure: bool,
    /// A client certificate (PEM) for an upstream that requires one.
    pub certificate: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
}

impl UpstreamTlsConfig {
    /// The trust of `key`'s upstream, its CA bundle and client certificate
    /// read and checked.
    fn read(&self, key: &str) -> Result<UpstreamTls, ConfigError> {
        let file = |name: &str, path: &PathBuf| {
            crate::tls::read_pem_file(path).map_err(|e| invalid(format!("{key}.{name}"), e))
        };
        let ca_pem = match &self.ca {
            None => None,
            Some(path) => {
                let pem = file("ca", path)?;
                UpstreamTls::check_bundle(&pem).map_err(|e| invalid(format!("{key}.ca"), e))?;
                Some(pem)
            }
        };
        let identity_pem = match (&self.certificate, &self.key) {
            (None, None) => None,
            (Some(certificate), Some(private)) => {
                let mut pem = file("certificate", certificate)?;
                pem.push(b'\n');
                pem.extend(file("key", private)?);
                UpstreamTls::check_identity(&pem)
                    .map_err(|e| invalid(format!("{key}.certificate"), e))?;
                Some(pem)
            }
            (Some(_), None) => {
                return Err(invalid(
                    format!("{key}.key"),
                    "is required with certificate",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    format!("{key}.certificate"),
                    "is required with key",
                ));
            }
        };
        Ok(UpstreamTls {
            ca_pem,
            insecure: self.insecure,
            identity_pem,
        })
    }
}

/// `proxy` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// The upstream registry of registry:2's single namespace (Docker Hub
    /// when neither it nor `upstreams` is set).
    pub remoteurl: Option<RemoteUrl>,
    /// Upstream user name.
    #[serde(deserialize_with = "scalar_text")]
    pub username: Option<String>,
    /// Upstream password (never shown by `Debug`).
    #[serde(deserialize_with = "scalar_secret")]
    pub password: Option<Secret>,
    /// How long cached content lives (`168h`); `0` keeps it forever.
    #[serde(deserialize_with = "scalar_text")]
    pub ttl: Option<String>,
    /// Ours: the name of `remoteurl`'s namespace (default: its host, with
    /// Docker Hub's API host named `docker.io`).
    pub namespace: Option<String>,
    /// Ours: the users allowed to pull through `remoteurl`'s namespace.
    pub users: Option<Vec<String>>,
    /// Ours: more upstreams, one namespace each.
    pub upstreams: Vec<UpstreamEntry>,
    /// Ours: which repositories may be pulled through `remoteurl`'s
    /// namespace.
    pub repositories: RepositoriesConfig,
    /// Ours: how `remoteurl` is trusted beyond the platform's roots.
    pub tls: UpstreamTlsConfig,
    /// Ours: how long a tag resolved upstream is trusted before asking again
    /// (default `5s`).
    #[serde(deserialize_with = "scalar_text")]
    pub tagfreshness: Option<String>,
    /// Ours: a fill that receives nothing for this long is abandoned
    /// (default `60s`).
    #[serde(deserialize_with = "scalar_text")]
    pub filltimeout: Option<String>,
    /// Ours: where fills spool blobs while clients stream them (default:
    /// `spool` beside a filesystem's `rootdirectory`, else `/var/tmp`: not
    /// a RAM-backed `/tmp`). Each fill needs room for its blob.
    pub spooldirectory: Option<PathBuf>,
    /// Ours: which whole reads of stored blobs are checked against their
    /// digest: `first` (default: each blob's first after start), `always`,
    /// `never`.
    pub verifyreads: Option<String>,
    /// Ours: fills running at once (default 64).
    pub maxfills: Option<usize>,
    /// Ours: a local copy of blobs served from S3, within a byte budget
    /// (`rootdirectory`, `maxsize`).
    pub localtier: Option<LocalTierSection>,
    /// Ours: its URLs, caps, pull budget and credential source (keys at
    /// this level: `remoteurls`, `remoteretry`, `maxconcurrent`,
    /// `maxbandwidth`, `pullbudget`, `exec`, `ecrregion`).
    #[serde(flatten)]
    pub upstream: UpstreamKnobs,

    /// Ours: the largest blob filled, in bytes or with a unit (`64GiB`,
    /// the default).
    #[serde(deserialize_with = "scalar_text")]
    pub maxblobsize: Option<String>,
    /// Ours: the most blob bytes stored (`500GiB`); over it, the least
    /// valuable blobs are evicted. Unset: no bound.
    #[serde(deserialize_with = "scalar_text")]
    pub maxsize: Option<String>,
    /// Ours, filesystem storage only: evict once the volume is fuller than
    /// this percentage...
    pub highwatermark: Option<u8>,
    /// ...until it is no fuller than this one.
    pub lowwatermark: Option<u8>,
}

/// Reads a key that holds text from any YAML scalar, as registry:2 reads
/// its string and duration keys: `password: 1234`, `ttl: 0` and
/// `REGISTRY_PROXY_TTL=0` are the text `1234` and `0`, and an empty value
/// is no value. A duration given as a number other than `0` is then
/// refused for want of a unit.
fn scalar_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    struct Text;
    impl Visitor<'_> for Text {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Option<String>, E> {
            Ok(None)
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Option<String>, E> {
            Ok(Some(v.to_owned()))
        }

        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Option<String>, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Option<String>, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Option<String>, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Option<String>, E> {
            Ok(Some(v.to_string()))
        }
    }
    deserializer.deserialize_any(Text)
}

/// [`scalar_text`] for a secret.
fn scalar_secret<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Secret>, D::Error> {
    scalar_text(deserializer).map(|text| text.map(Secret::from))
}

/// Bytes from `1024`, `512MiB`, `64GiB`, `2TB` (decimal and binary
/// units, as the `bytesize` crate reads them).
pub fn bytes_of(text: &str) -> Option<u64> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .ok()
        .map(|size| size.as_u64())
}

/// A positive size at `key`, if given.
fn positive_size(key: &str, text: Option<&str>) -> Result<Option<u64>, ConfigError> {
    match text {
        None => Ok(None),
        Some(text) => match bytes_of(text) {
            Some(0) | None => Err(invalid(
                key,
                format!("{text:?} is not a positive size (bytes, or with a unit: 100MiB, 500GiB)"),
            )),
            Some(bytes) => Ok(Some(bytes)),
        },
    }
}

fn duration(key: &str, value: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some("0") => Ok(Duration::ZERO),
        Some(v) => humantime::parse_duration(v)
            .map_err(|e| invalid(key, format!("{v:?} is not a duration: {e}"))),
    }
}

impl Config {
    /// Loads `path` (or the embedded default when `None`) and applies the
    /// `REGISTRY_*` variables of `env`.
    pub fn load(
        path: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (name, text) = match path {
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| invalid(&name, e))?;
                (name, text)
            }
            None => (
                "the embedded default".to_owned(),
                EMBEDDED_DEFAULT.to_owned(),
            ),
        };
        Self::parse(&name, &text, env)
    }

    /// Parses the YAML `text` (named `name` in errors) and applies the
    /// `REGISTRY_*` variables of `env`.
    pub fn parse(
        name: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut tree = serde_norway::from_str::<Value>(text).map_err(|e| invalid(name, e))?;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("REGISTRY_") else {
                continue;
            };
            let keys: Vec<String> = rest.split('_').map(str::to_lowercase).collect();
            let value = serde_norway::from_str::<Value>(&value).unwrap_or(Value::String(value));
            set(&mut tree, &keys, value).map_err(|reason| invalid(format!("${name}"), reason))?;
        }
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            invalid(key, e.into_inner())
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.refused()?;
        self.drain_timeout()?;
        self.backend()?;
        self.listen()?;
        self.server_tls()?;
        self.urls()?;
        self.debug_surface()?;
        self.debug_addr()?;
        self.namespaces()?;
        self.client_auth()?;
        self.token_auth()?;
        self.tag_freshness()?;
        self.fill_timeout()?;
        self.ttl()?;
        self.upload_purging()?;
        self.etcd()?;
        self.bounds(&self.namespaces()?)?;
        self.admin()?;
        self.otlp()?;
        if !matches!(self.log.formatter.as_str(), "text" | "json") {
            return Err(invalid("log.formatter", "expected text or json"));
        }
        if !matches!(self.log.level.as_str(), "error" | "warn" | "info" | "debug") {
            return Err(invalid("log.level", "expected error, warn, info or debug"));
        }
        Ok(())
    }

    /// The trace exporter `tracing.otlp` asks for, if any.
    pub fn otlp(&self) -> Result<Option<crate::telemetry::Otlp>, ConfigError> {
        let otlp = &self.tracing.otlp;
        let Some(endpoint) = &otlp.endpoint else {
            return Ok(None);
        };
        let key = "tracing.otlp.endpoint";
        let url = reqwest::Url::parse(endpoint).map_err(|e| invalid(key, e))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(invalid(key, "expected an http or https URL"));
        }
        let endpoint = if url.path().ends_with("/v1/traces") {
            url.to_string()
        } else {
            format!("{}/v1/traces", url.as_str().trim_end_matches('/'))
        };
        let sampling_ratio = match &otlp.samplingratio {
            None => 1.0,
            Some(ratio) => ratio
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| invalid("tracing.otlp.samplingratio", "expected 0 to 1"))?,
        };
        for (name, value) in &otlp.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(value).is_err()
            {
                return Err(invalid(
                    format!("tracing.otlp.headers.{name}"),
                    "not a valid HTTP header",
                ));
            }
        }
        Ok(Some(crate::telemetry::Otlp {
            endpoint,
            service_name: otlp
                .servicename
                .clone()
                .unwrap_or_else(|| "registry-proxy".to_owned()),
            sampling_ratio,
            trust_client_sampling: otlp.trustclientsampling,
            headers: otlp.headers.clone().into_iter().collect(),
        }))
    }

    /// The selected storage backend.
    pub fn backend(&self) -> Result<Backend, ConfigError> {
        let s = &self.storage;
        match (&s.filesystem, &s.s3, &s.inmemory) {
            (Some(fs), None, None) => {
                if fs.rootdirectory.as_os_str().is_empty() {
                    return Err(invalid("storage.filesystem.rootdirectory", "is required"));
                }
                Ok(Backend::Filesystem(FsConfig {
                    root_directory: fs.rootdirectory.clone(),
                    fsync: fs.fsync.unwrap_or_default(),
                }))
            }
            (None, Some(s3), None) => {
                let mut s3 = s3.clone();
                if s3.endpoint.is_some() {
                    s3.force_path_style = true;
                }
                match s.redirect.disable {
                    Some(true) => s3.redirect_expiry_secs = None,
                    Some(false) => {
                        s3.redirect_expiry_secs.get_or_insert(REDIRECT_EXPIRY_SECS);
                    }
                    None => {}
                }
                s3.validate()
                    .map_err(|e| invalid(format!("storage.s3.{}", e.key), e.reason))?;
                Ok(Backend::S3(Box::new(s3)))
            }
            (None, None, Some(_)) => Ok(Backend::InMemory),
            (None, None, None) => Err(invalid("storage", "choose one of filesystem, s3, inmemory")),
            _ => Err(invalid(
                "storage",
                "only one of filesystem, s3, inmemory may be set",
            )),
        }
    }

    /// The debug listener's address, if configured.
    pub fn debug_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.http.debug.addr.is_empty() {
            return Ok(None);
        }
        parse_addr("http.debug.addr", &self.http.debug.addr).map(Some)
    }

    /// The namespaces: `proxy.remoteurl`'s (stored where registry:2
    /// stores), then `proxy.upstreams` in order. Errors name the entry.
    pub fn namespaces(&self) -> Result<Vec<NamespaceSpec>, ConfigError> {
        let proxy = &self.proxy;
        let mut specs = Vec::new();
        if proxy.remoteurl.is_some()
            || !proxy.upstream.remoteurls.is_empty()
            || proxy.upstreams.is_empty()
        {
            let docker_hub = RemoteUrl("https://registry-1.docker.io".to_owned());
            let primary = match (&proxy.remoteurl, proxy.upstream.remoteurls.is_empty()) {
                (None, true) => Some(&docker_hub),
                (primary, _) => primary.as_ref(),
            };
            let (url, credentials, plan) = proxy.upstream.plan(
                primary,
                proxy.username.clone().zip(proxy.password.clone()),
                &|field| format!("proxy.{field}"),
            )?;
            let mut spec = NamespaceSpec::single(url, credentials);
            if let Some(name) = &proxy.namespace {
                if !namespace::valid_name(name) {
                    return Err(invalid("proxy.namespace", bad_name(name)));
                }
                spec.name = name.clone();
            }
            spec.users = self.users("proxy.users", proxy.users.as_ref())?;
            spec.repositories = proxy.repositories.filter("proxy.repositories")?;
            spec.tls = proxy.tls.read("proxy.tls")?;
            spec.plan = plan;
            spec.default = !proxy.upstreams.iter().any(|u| u.default);
            specs.push(spec);
        }
        for (i, entry) in proxy.upstreams.iter().enumerate() {
            let key = |field: &str| format!("proxy.upstreams[{i}] ({}).{field}", entry.namespace);
            if !namespace::valid_name(&entry.namespace) {
                return Err(invalid(key("namespace"), bad_name(&entry.namespace)));
            }
            if specs
                .iter()
                .any(|s: &NamespaceSpec| s.name == entry.namespace)
            {
                return Err(invalid(key("namespace"), "is configured twice"));
            }
            let sharing = match entry.sharing.as_deref() {
                None | Some("shared") => Sharing::Shared,
                Some("isolated") => Sharing::Isolated,
                Some(other) => {
                    return Err(invalid(
                        key("sharing"),
                        format!("unknown policy {other:?}; expected shared or isolated"),
                    ));
                }
            };
            let ttl = match entry.ttl.as_deref() {
                Some(ttl) => Some(duration(&key("ttl"), Some(ttl), Duration::ZERO)?),
                None => None,
            };
            let primary = (!entry.remoteurl.0.is_empty()).then_some(&entry.remoteurl);
            let (remote, credentials, plan) = entry.upstream.plan(
                primary,
                entry.username.clone().zip(entry.password.clone()),
                &key,
            )?;
            let max_size = positive_size(&key("maxsize"), entry.maxsize.as_deref())?;
            specs.push(NamespaceSpec {
                name: entry.namespace.clone(),
                remote,
                credentials,
                ttl,
                sharing,
                users: self.users(&key("users"), entry.users.as_ref())?,
                registry2_dir: false,
                default: entry.default,
                tls: entry.tls.read(&key("tls"))?,
                plan,
                max_size,
                repositories: entry.repositories.filter(&key("repositories"))?,
                prefetch: entry
                    .prefetch
                    .as_ref()
                    .map(|p| p.plan(&key("prefetch")))
                    .transpose()?,
            });
        }
        if specs.iter().filter(|s| s.default).count() > 1 {
            return Err(invalid(
                "proxy.upstreams",
                "more than one entry is the default",
            ));
        }
        Ok(specs)
    }

    /// A namespace's allowed users, which need client authentication.
    fn users(
        &self,
        key: &str,
        users: Option<&Vec<String>>,
    ) -> Result<Option<Vec<String>>, ConfigError> {
        let only_anyone = users.is_some_and(|u| u.iter().all(|u| u == "*"));
        if users.is_some()
            && !only_anyone
            && self.auth.htpasswd.is_none()
            && self.auth.token.is_none()
        {
            return Err(invalid(
                key,
                "allowed users need auth.htpasswd or auth.token",
            ));
        }
        Ok(users.cloned())
    }

    /// Client authentication by tokens, when `auth.token` is set (its key
    /// set read).
    pub fn token_auth(&self) -> Result<Option<crate::token::TokenAuth>, ConfigError> {
        let Some(token) = &self.auth.token else {
            return Ok(None);
        };
        if token.rootcertbundle.is_some() {
            return Err(invalid(
                "auth.token.rootcertbundle",
                "certificate bundles are not supported: give the keys as auth.token.jwks",
            ));
        }
        for (key, value) in [
            ("auth.token.realm", &token.realm),
            ("auth.token.service", &token.service),
            ("auth.token.issuer", &token.issuer),
        ] {
            if value.is_empty() {
                return Err(invalid(key, "is required"));
            }
        }
        // At most 4 MiB, as certificate files.
        let jwks =
            crate::tls::read_pem_file(&token.jwks).map_err(|e| invalid("auth.token.jwks", e))?;
        crate::token::TokenAuth::new(
            &token.realm,
            &token.service,
            &token.issuer,
            &jwks,
            &token.signingalgorithms,
        )
        .map(Some)
        .map_err(|e| invalid("auth.token.jwks", e))
    }

    /// Client authentication, when `auth.htpasswd` is set (its file read).
    pub fn client_auth(&self) -> Result<Option<Htpasswd>, ConfigError> {
        let Some(section) = &self.auth.htpasswd else {
            return Ok(None);
        };
        if section.path.as_os_str().is_empty() {
            return Err(invalid("auth.htpasswd.path", "is required"));
        }
        let realm = if section.realm.is_empty() {
            "registry-proxy"
        } else {
            &section.realm
        };
        let header = section
            .clientheader
            .as_deref()
            .map(|h| {
                axum::http::HeaderName::try_from(h)
                    .map_err(|e| invalid("auth.htpasswd.clientheader", e))
            })
            .transpose()?;
        let proxies = section
            .trustedproxies
            .iter()
            .map(|p| {
                crate::auth::Cidr::parse(p).ok_or_else(|| {
                    invalid(
                        "auth.htpasswd.trustedproxies",
                        format!("{p:?} is not an address or CIDR range"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if header.is_none() && !proxies.is_empty() {
            return Err(invalid(
                "auth.htpasswd.trustedproxies",
                "needs auth.htpasswd.clientheader",
            ));
        }
        // Without proxies the header is believed from a Unix socket only.
        if header.is_some() && proxies.is_empty() && matches!(self.listen()?, Listen::Tcp(_)) {
            return Err(invalid(
                "auth.htpasswd.trustedproxies",
                "needed with auth.htpasswd.clientheader on a TCP listener",
            ));
        }
        Htpasswd::load(realm, &section.path)
            .map(|h| Some(h.behind(crate::auth::ClientAddress::new(header, proxies))))
            .map_err(|e| invalid("auth.htpasswd.path", e))
    }

    /// Which whole reads of stored blobs are checked.
    pub fn verify_reads(&self) -> Result<VerifyReads, ConfigError> {
        match self.proxy.verifyreads.as_deref() {
            None | Some("first") => Ok(VerifyReads::First),
            Some("always") => Ok(VerifyReads::Always),
            Some("never") => Ok(VerifyReads::Never),
            Some(other) => Err(invalid(
                "proxy.verifyreads",
                format!("{other:?}: expected first, always or never"),
            )),
        }
    }

    /// The admin surface (`admin`), if configured: an address other than
    /// the public listener's, and a readable token file.
    pub fn admin(&self) -> Result<Option<AdminPlan>, ConfigError> {
        if self.admin.addr.is_empty() {
            if self.admin.tokenfile.is_some() || !self.admin.users.is_empty() {
                return Err(invalid(
                    "admin.addr",
                    "needed with admin.tokenfile or admin.users",
                ));
            }
            return Ok(None);
        }
        let addr = parse_addr("admin.addr", &self.admin.addr)?;
        if self.listen()? == Listen::Tcp(addr) || self.debug_addr()? == Some(addr) {
            return Err(invalid(
                "admin.addr",
                "must be a listener of its own, not http.addr or http.debug.addr",
            ));
        }
        if !self.admin.users.is_empty() && self.auth.htpasswd.is_none() {
            return Err(invalid("admin.users", "needs auth.htpasswd"));
        }
        let tokenfile = self.admin.tokenfile.clone();
        let token = match &tokenfile {
            Some(path) => Some(AdminToken::read(path).map_err(|e| invalid("admin.tokenfile", e))?),
            None if self.admin.users.is_empty() => {
                return Err(invalid(
                    "admin.tokenfile",
                    "the admin surface needs a token (or admin.users)",
                ));
            }
            None => None,
        };
        Ok(Some(AdminPlan {
            addr,
            tokenfile,
            access: AdminAccess {
                token,
                users: self.admin.users.iter().cloned().collect(),
            },
        }))
    }

    /// The local tier (`proxy.localtier`), if configured: only in front of
    /// S3 storage, with a directory and a positive `maxsize`.
    pub fn local_tier(&self) -> Result<Option<crate::cache::tier::TierOptions>, ConfigError> {
        let Some(tier) = &self.proxy.localtier else {
            return Ok(None);
        };
        if !matches!(self.backend()?, Backend::S3(_)) {
            return Err(invalid(
                "proxy.localtier",
                "is a tier in front of s3 storage; this storage is local already",
            ));
        }
        if tier.rootdirectory.as_os_str().is_empty() {
            return Err(invalid("proxy.localtier.rootdirectory", "is required"));
        }
        let max_bytes = positive_size("proxy.localtier.maxsize", tier.maxsize.as_deref())?
            .ok_or_else(|| invalid("proxy.localtier.maxsize", "is required"))?;
        Ok(Some(crate::cache::tier::TierOptions {
            root: tier.rootdirectory.clone(),
            max_bytes,
        }))
    }

    /// The byte budget of stored blobs (`proxy.maxsize`), if any.
    pub fn max_size(&self) -> Result<Option<u64>, ConfigError> {
        positive_size("proxy.maxsize", self.proxy.maxsize.as_deref())
    }

    /// What bounds stored bytes: `proxy.maxsize`, each namespace's
    /// `maxsize` (of `specs`), the volume's watermarks.
    pub fn bounds(&self, specs: &[NamespaceSpec]) -> Result<Bounds, ConfigError> {
        let watermarks = match (self.proxy.highwatermark, self.proxy.lowwatermark) {
            (None, None) => None,
            (high, low) => {
                let Backend::Filesystem(fs) = self.backend()? else {
                    return Err(invalid(
                        "proxy.highwatermark",
                        "watermarks are of a volume: filesystem storage only",
                    ));
                };
                let high = high.unwrap_or(90);
                let low = low.unwrap_or(high.saturating_sub(10));
                if high == 0 || high > 100 || low >= high {
                    return Err(invalid(
                        "proxy.lowwatermark",
                        format!("{low}% and {high}%: expected 0 <= low < high <= 100"),
                    ));
                }
                Some(Watermarks {
                    volume: fs.root_directory,
                    high,
                    low,
                })
            }
        };
        Ok(Bounds {
            max_size: self.max_size()?,
            namespaces: Namespaces::max_sizes(specs),
            watermarks,
            when_full: matches!(self.backend()?, Backend::Filesystem(_)),
        })
    }

    /// How many fills run at once, and how large a blob may be.
    pub fn fill_limits(&self) -> Result<FillLimits, ConfigError> {
        let defaults = FillLimits::default();
        let max_fills = self.proxy.maxfills.unwrap_or(defaults.max_fills);
        if max_fills == 0 {
            return Err(invalid("proxy.maxfills", "must be more than 0"));
        }
        let max_blob_size = match self.proxy.maxblobsize.as_deref() {
            None => defaults.max_blob_size,
            Some(text) => bytes_of(text).ok_or_else(|| {
                invalid(
                    "proxy.maxblobsize",
                    format!("{text:?} is not a size (bytes, or with a unit: 512MiB, 64GiB)"),
                )
            })?,
        };
        Ok(FillLimits {
            max_fills,
            max_blob_size,
            ..defaults
        })
    }

    /// Where fills spool: `proxy.spooldirectory`, else `spool` beside a
    /// filesystem's `rootdirectory` (the storage's own disk), else
    /// `/var/tmp` (disk-backed by convention, unlike `/tmp`).
    pub fn spool_dir(&self) -> PathBuf {
        if let Some(dir) = &self.proxy.spooldirectory {
            return dir.clone();
        }
        match &self.storage.filesystem {
            Some(fs) => fs.rootdirectory.join("spool"),
            None => PathBuf::from("/var/tmp"),
        }
    }

    /// The public listener's limits.
    pub fn listener_limits(&self) -> Result<Limits, ConfigError> {
        let defaults = Limits::default();
        let http = &self.http;
        let positive = |key: &str, value: Option<&str>, default: Duration| {
            let d = duration(key, value, default)?;
            if d.is_zero() {
                return Err(invalid(key, "must be more than 0"));
            }
            Ok(d)
        };
        let max_connections = http.maxconnections.unwrap_or(defaults.max_connections);
        if max_connections == 0 {
            return Err(invalid("http.maxconnections", "must be more than 0"));
        }
        Ok(Limits {
            max_connections,
            header_read_timeout: positive(
                "http.readheadertimeout",
                http.readheadertimeout.as_deref(),
                defaults.header_read_timeout,
            )?,
            idle_timeout: positive(
                "http.idletimeout",
                http.idletimeout.as_deref(),
                defaults.idle_timeout,
            )?,
            write_timeout: positive(
                "http.writetimeout",
                http.writetimeout.as_deref(),
                defaults.write_timeout,
            )?,
        })
    }

    /// How long a resolved tag is trusted.
    pub fn tag_freshness(&self) -> Result<Duration, ConfigError> {
        duration(
            "proxy.tagfreshness",
            self.proxy.tagfreshness.as_deref(),
            Duration::from_secs(5),
        )
    }

    /// How long a fill may receive nothing before it is abandoned.
    pub fn fill_timeout(&self) -> Result<Duration, ConfigError> {
        duration(
            "proxy.filltimeout",
            self.proxy.filltimeout.as_deref(),
            Duration::from_secs(60),
        )
    }

    /// Removal of abandoned writers, `None` when disabled (or a dry run).
    pub fn upload_purging(&self) -> Result<Option<Purge>, ConfigError> {
        let section = &self.storage.maintenance.uploadpurging;
        let defaults = Purge::default();
        let key = "storage.maintenance.uploadpurging";
        let age = duration(&format!("{key}.age"), section.age.as_deref(), defaults.age)?;
        let interval = duration(
            &format!("{key}.interval"),
            section.interval.as_deref(),
            defaults.interval,
        )?;
        if interval.is_zero() {
            return Err(invalid(format!("{key}.interval"), "must be more than 0"));
        }
        Ok((section.enabled && !section.dryrun).then_some(Purge { age, interval }))
    }

    /// Garbage collection's schedule and grace, and the lease timeout.
    pub fn gc(&self) -> Result<(GcOptions, Duration), ConfigError> {
        let defaults = GcOptions::default();
        let interval = duration(
            "gc.interval",
            self.gc.interval.as_deref(),
            defaults.interval.unwrap_or_default(),
        )?;
        let grace = duration("gc.grace", self.gc.grace.as_deref(), defaults.grace)?;
        let lease = duration(
            "gc.leasetimeout",
            self.gc.leasetimeout.as_deref(),
            Options::default().lease_timeout,
        )?;
        if lease.is_zero() {
            return Err(invalid("gc.leasetimeout", "must be more than 0"));
        }
        let options = GcOptions {
            interval: (!interval.is_zero()).then_some(interval),
            after_expiry: self.gc.afterexpiry.unwrap_or(defaults.after_expiry),
            grace,
        };
        Ok((options, lease))
    }

    /// The etcd the replicas share, if configured.
    pub fn etcd(&self) -> Result<Option<EtcdOptions>, ConfigError> {
        let Some(etcd) = &self.coordination.etcd else {
            return Ok(None);
        };
        let key = "coordination.etcd";
        if etcd.endpoints.is_empty() {
            return Err(invalid(
                format!("{key}.endpoints"),
                "needs at least one URL",
            ));
        }
        for url in &etcd.endpoints {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| invalid(format!("{key}.endpoints"), format!("{url:?}: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                return Err(invalid(
                    format!("{key}.endpoints"),
                    format!("{url:?} is not an http(s) URL with a host"),
                ));
            }
        }
        let prefix = etcd
            .prefix
            .clone()
            .unwrap_or_else(|| "/registry-proxy".into());
        if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") {
            return Err(invalid(
                format!("{key}.prefix"),
                format!("{prefix:?} must start with / and not end with /"),
            ));
        }
        let lease_ttl = duration(
            &format!("{key}.leasettl"),
            etcd.leasettl.as_deref(),
            Duration::from_secs(10),
        )?;
        if lease_ttl < Duration::from_secs(2) {
            return Err(invalid(format!("{key}.leasettl"), "must be at least 2s"));
        }
        let timeout = duration(
            &format!("{key}.timeout"),
            etcd.timeout.as_deref(),
            Duration::from_secs(5),
        )?;
        let user = match (&etcd.username, &etcd.password) {
            (None, None) => None,
            (Some(name), Some(password)) => Some((name.clone(), password.clone())),
            (Some(_), None) => {
                return Err(invalid(
                    format!("{key}.password"),
                    "is required with username",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    format!("{key}.username"),
                    "is required with password",
                ));
            }
        };
        if etcd.tls.insecure {
            return Err(invalid(
                format!("{key}.tls.insecure"),
                "etcd's certificate is always checked (give its CA as tls.ca)",
            ));
        }
        Ok(Some(EtcdOptions {
            endpoints: etcd.endpoints.clone(),
            prefix,
            lease_ttl,
            timeout: timeout.max(Duration::from_millis(100)),
            user,
            tls: etcd.tls.read(&format!("{key}.tls"))?,
        }))
    }

    /// Lifetime of cached content; zero means forever.
    pub fn ttl(&self) -> Result<Duration, ConfigError> {
        duration(
            "proxy.ttl",
            self.proxy.ttl.as_deref(),
            Options::default().ttl,
        )
    }
}

fn bad_name(name: &str) -> String {
    format!("{name:?} is not a registry host name (lowercase host, optional :port)")
}

/// An upstream base URL (http or https with a host).
/// An upstream URL, and the credentials it carried (`https://user:pass@host`):
/// they are taken out of the URL, which is logged, and used as the
/// upstream's credentials unless `username` and `password` are set.
fn upstream_url(key: &str, url: &str) -> Result<(reqwest::Url, Credentials), ConfigError> {
    let mut parsed = reqwest::Url::parse(url).map_err(|_| {
        // The parser's message may quote the URL, credentials and all.
        invalid(key, "not a URL")
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(invalid(key, "expected an http or https URL"));
    }
    let decode = |s: &str| {
        percent_decode(s).ok_or_else(|| invalid(key, "credentials in the URL are not UTF-8"))
    };
    let credentials = if parsed.username().is_empty() && parsed.password().is_none() {
        None
    } else {
        let user = decode(parsed.username())?;
        let password = decode(parsed.password().unwrap_or(""))?;
        Some((user, Secret::from(password)))
    };
    // Cannot fail for an http(s) URL with a host.
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    Ok((parsed, credentials))
}

/// `%XX` escapes of a URL component decoded; `None` when not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

/// A listen address as distribution reads one: `:5000` (every
/// interface), `127.0.0.1:5000`, `[::1]:5000`, or `localhost:5001`
/// (127.0.0.1, as distribution's own files say). Other names are refused:
/// a listener binds an address, and resolving names here would make
/// reading a configuration wait on DNS.
fn parse_addr(key: &str, addr: &str) -> Result<SocketAddr, ConfigError> {
    let full = if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else if let Some(port) = addr.strip_prefix("localhost:") {
        format!("127.0.0.1:{port}")
    } else {
        addr.to_owned()
    };
    full.parse().map_err(|e| {
        invalid(
            key,
            format!("{addr:?}: {e} (an address and port, or localhost:PORT)"),
        )
    })
}

/// Sets `keys` (a path of map keys) in `tree` to `value`, creating maps.
fn set(tree: &mut Value, keys: &[String], value: Value) -> Result<(), String> {
    let Some((first, rest)) = keys.split_first() else {
        *tree = value;
        return Ok(());
    };
    if tree.is_null() {
        *tree = Value::Mapping(Default::default());
    }
    let Value::Mapping(map) = tree else {
        return Err(format!("{first}: the key above it is not a section"));
    };
    let child = map
        .entry(Value::String(first.clone()))
        .or_insert(Value::Null);
    set(child, rest, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::Urls;
    use crate::health::StorageCheck;
    use crate::routes::DebugSurface;
    use crate::tls::MinimumTls;

    /// The config.yml registry:2 ships, turned into a proxy as its docs say.
    const REGISTRY2_PROXY: &str = "\
version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
proxy:
  remoteurl: https://registry-1.docker.io
  username: user
  password: pass
  ttl: 168h
";

    fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yml");
        std::fs::write(&path, yaml).expect("write");
        Config::load(
            Some(&path),
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    #[test]
    fn a_registry2_proxy_config_runs_unchanged() {
        let config = load(REGISTRY2_PROXY, &[]).expect("loads");
        assert!(
            matches!(config.backend(), Ok(Backend::Filesystem(fs)) if fs.root_directory == std::path::Path::new("/var/lib/registry"))
        );
        assert_eq!(
            config.listen().expect("addr"),
            Listen::Tcp("0.0.0.0:5000".parse().expect("addr"))
        );
        assert_eq!(config.ttl().expect("ttl"), Duration::from_secs(168 * 3600));
        assert_eq!(config.proxy.username.as_deref(), Some("user"));
    }

    /// A registry:2 S3 proxy config using every key distribution documents.
    const REGISTRY2_S3: &str = "\
version: 0.1
storage:
  s3:
    accesskey: AKIA
    secretkey: secret
    sessiontoken: token
    region: eu-west-1
    regionendpoint: minio.internal:9000
    forcepathstyle: true
    accelerate: false
    bucket: registry
    encrypt: true
    keyid: alias/registry
    secure: false
    skipverify: false
    v4auth: true
    chunksize: 10485760
    multipartcopychunksize: 33554432
    multipartcopymaxconcurrency: 100
    multipartcopythresholdsize: 33554432
    rootdirectory: /registry
    storageclass: STANDARD
    objectacl: private
    useragent: registry-2
    usedualstack: false
    loglevel: debug
  redirect:
    disable: true
  maintenance:
    uploadpurging:
      enabled: true
      age: 168h
      interval: 24h
      dryrun: false
    readonly:
      enabled: false
proxy:
  remoteurl: https://registry-1.docker.io
";

    #[test]
    fn a_local_tier_needs_s3_a_directory_and_a_size() {
        let s3 = "storage:\n  s3:\n    bucket: b\n    region: r\n";
        let fs = "storage:\n  filesystem:\n    rootdirectory: /var/lib/registry\n";
        let tier = |storage: &str, section: &str| {
            let yaml = format!(
                "version: 0.1\n{storage}proxy:\n  remoteurl: https://r.test\n  localtier:\n{section}"
            );
            load(&yaml, &[]).and_then(|c| c.local_tier())
        };
        let both = "    rootdirectory: /var/cache/tier\n    maxsize: 2GiB\n";
        assert_eq!(
            tier(s3, both).expect("valid"),
            Some(crate::cache::tier::TierOptions {
                root: "/var/cache/tier".into(),
                max_bytes: 2 << 30,
            })
        );
        for (storage, section, key) in [
            (fs, both, "proxy.localtier"),
            (s3, "    maxsize: 2GiB\n", "proxy.localtier.rootdirectory"),
            (s3, "    rootdirectory: /t\n", "proxy.localtier.maxsize"),
        ] {
            let e = tier(storage, section).expect_err(key);
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn storage_redirect_turns_presigned_urls_on_and_off() {
        let expiry = |redirect: &str, s3_extra: &str| {
            let yaml = format!(
                "version: 0.1\nstorage:\n  s3:\n    bucket: b\n    region: r\n{s3_extra}{redirect}proxy:\n  remoteurl: https://r.test\n"
            );
            let config = load(&yaml, &[]).expect("loads");
            let Ok(Backend::S3(s3)) = config.backend() else {
                panic!("not the s3 backend");
            };
            s3.redirect_expiry_secs
        };
        let disable = |on: bool| format!("  redirect:\n    disable: {on}\n");
        let expiry_600 = "    redirectexpiry: 600\n";
        assert_eq!(expiry("", ""), None, "off unless asked");
        assert_eq!(
            expiry(&disable(false), ""),
            Some(1200),
            "distribution's 20 minutes"
        );
        assert_eq!(expiry(&disable(false), expiry_600), Some(600));
        assert_eq!(expiry("", expiry_600), Some(600));
        assert_eq!(expiry(&disable(true), expiry_600), None, "disable wins");
        let e = load(
            "version: 0.1\nstorage:\n  inmemory: {}\n  redirect:\n    disabled: true\n",
            &[],
        )
        .expect_err("misspelt");
        assert!(e.to_string().contains("disabled"), "{e}");
    }

    #[test]
    fn a_registry2_s3_config_runs_unchanged() {
        let config = load(REGISTRY2_S3, &[]).expect("loads");
        let Ok(Backend::S3(s3)) = config.backend() else {
            panic!("not the s3 backend");
        };
        assert_eq!(s3.bucket, "registry");
        assert!(s3.encrypt && !s3.secure);
        assert_eq!(s3.key_id.as_deref(), Some("alias/registry"));
        assert_eq!(
            s3.session_token.as_ref().map(driver_core::Secret::expose),
            Some("token")
        );
        assert_eq!(s3.copy_concurrency, 100);
        let hours = |h: u64| Duration::from_secs(h * 3600);
        assert_eq!(
            config.upload_purging().expect("purging"),
            Some(Purge {
                age: hours(168),
                interval: hours(24)
            })
        );
        let dry = load(&REGISTRY2_S3.replace("dryrun: false", "dryrun: true"), &[]);
        assert_eq!(dry.expect("loads").upload_purging().expect("purging"), None);
        let refused = load(&REGISTRY2_S3.replace("v4auth: true", "v4auth: false"), &[])
            .and_then(|c| c.backend().map(|_| ()))
            .expect_err("v2 signatures are refused");
        assert!(refused.to_string().contains("v4auth"), "{refused}");
    }

    #[test]
    fn the_embedded_default() {
        let config = Config::load(None, std::iter::empty()).expect("default");
        let hour = Duration::from_secs(3600);
        let purge = config.upload_purging().expect("purging");
        assert_eq!(
            purge,
            Some(Purge {
                age: hour,
                interval: hour
            })
        );
        assert!(
            matches!(config.backend(), Ok(Backend::Filesystem(fs)) if fs.root_directory == std::path::Path::new("./data"))
        );
        assert_eq!(
            config.listen().expect("addr"),
            Listen::Tcp("127.0.0.1:5000".parse().expect("addr"))
        );
        let namespaces = config.namespaces().expect("namespaces");
        assert_eq!(namespaces.len(), 1);
        assert_eq!(
            namespaces[0].remote.as_str(),
            "https://registry-1.docker.io/"
        );
        assert_eq!(namespaces[0].name, "docker.io");
        assert!(namespaces[0].registry2_dir && namespaces[0].default);
        assert_eq!(
            config.tag_freshness().expect("freshness"),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn environment_overrides_like_distribution() {
        let yaml = "version: 0.1\nstorage:\n  s3:\n    bucket: from-file\n    region: us-east-1\nproxy:\n  remoteurl: http://upstream:5000\n";
        let env = [
            ("REGISTRY_STORAGE_S3_BUCKET", "from-env"),
            (
                "REGISTRY_STORAGE_S3_REGIONENDPOINT",
                "http://127.0.0.1:3900",
            ),
            ("REGISTRY_STORAGE_S3_CHUNKSIZE", "6291456"),
            ("REGISTRY_PROXY_REMOTEURL", "http://other:5000"),
            ("REGISTRY_HTTP_ADDR", "127.0.0.1:6000"),
            ("UNRELATED", "x"),
        ];
        let config = load(yaml, &env).expect("loads");
        let Ok(Backend::S3(s3)) = config.backend() else {
            panic!("s3 expected")
        };
        assert_eq!(
            (s3.bucket.as_str(), s3.chunk_size, s3.force_path_style),
            ("from-env", 6 << 20, true)
        );
        assert_eq!(
            config.namespaces().expect("namespaces")[0].remote.as_str(),
            "http://other:5000/"
        );
        assert_eq!(
            config.listen().expect("addr"),
            Listen::Tcp("127.0.0.1:6000".parse().expect("addr"))
        );
    }

    /// Credentials never show: not in the URL that is logged at start, not
    /// in a `Debug` of the configuration or of the namespaces.
    #[test]
    fn secrets_stay_out_of_urls_and_debug_output() {
        let yaml = "storage:\n  s3:\n    bucket: b\n    region: r\n    accesskey: AK\n    secretkey: s3cr3t-key\n    sessiontoken: s3cr3t-token\nproxy:\n  remoteurl: https://bob:s3cr3t%40pw@registry.example/prefix\n  upstreams:\n    - namespace: ghcr.io\n      remoteurl: https://ghcr.io\n      username: u\n      password: s3cr3t-other\n";
        let config = load(yaml, &[]).expect("loads");
        let specs = config.namespaces().expect("namespaces");
        assert_eq!(specs[0].remote.as_str(), "https://registry.example/prefix");
        let (user, password) = specs[0].credentials.clone().expect("from the URL");
        assert_eq!((user.as_str(), password.expose()), ("bob", "s3cr3t@pw"));
        let shown = format!("{config:?} {specs:?}");
        assert!(!shown.contains("s3cr3t"), "a secret in {shown}");
    }

    #[test]
    fn scalars_are_text_where_text_is_expected() {
        // As registry:2 reads them: numbers in the file and in the
        // environment are the text of string keys, `0` a duration.
        let yaml = "storage:\n  inmemory: {}\nproxy:\n  remoteurl: http://u:5000\n  username: 1001\n  password: 1234\n  ttl: 0\ngc:\n  interval: 0\n  grace:\n";
        let env = [("REGISTRY_PROXY_PASSWORD", "5678")];
        let config = load(yaml, &env).expect("loads");
        assert_eq!(config.proxy.username.as_deref(), Some("1001"));
        assert_eq!(
            config.proxy.password.as_ref().map(Secret::expose),
            Some("5678")
        );
        assert_eq!(config.ttl().expect("ttl"), Duration::ZERO);
        let (gc, _) = config.gc().expect("gc");
        assert_eq!(gc.interval, None, "gc.interval: 0 is never");
        assert_eq!(
            gc.grace,
            Duration::from_secs(600),
            "an empty key is its default"
        );
        let config = load(
            "storage:\n  inmemory: {}\ngc:\n  interval: 0\n",
            &[("REGISTRY_GC_INTERVAL", "90")],
        )
        .expect("loads");
        let e = config.gc().expect_err("a number of unknown unit");
        assert_eq!(e.key, "gc.interval");
        assert!(e.reason.contains("unit"), "{e}");
        let e =
            load("storage:\n  inmemory: {}\nproxy:\n  password: [a]\n", &[]).expect_err("a list");
        assert_eq!(e.key, "proxy.password");
        assert!(e.reason.contains("expected a string"), "{e}");
    }

    /// Every key of distribution's configuration reference (filesystem
    /// storage; TLS, Unix sockets and other client auth schemes are
    /// refused, below) is accepted; those a cache does not apply are
    /// named, one each, to be logged at start; a misspelt key still stops
    /// the start naming it.
    #[test]
    fn every_key_of_distributions_reference_is_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let htpasswd = dir.path().join("htpasswd");
        let hash = bcrypt::hash("pw", 4).expect("hash");
        std::fs::write(&htpasswd, format!("alice:{hash}\n")).expect("write");
        let (cert, key) = self_signed(dir.path());
        let yaml = format!(
            "version: 0.1
log:
  accesslog: {{disabled: true}}
  level: debug
  formatter: json
  fields: {{service: cache}}
  hooks:
    - type: mail
      disabled: true
      levels: [panic]
      options: {{smtp: {{addr: mail.test:25}}, from: a@b.test, to: [c@d.test]}}
  reportcaller: true
loglevel: debug
storage:
  filesystem: {{rootdirectory: {root}, maxthreads: 50}}
  delete: {{enabled: true}}
  redirect: {{disable: true}}
  cache: {{blobdescriptor: inmemory, blobdescriptorsize: 1000}}
  tag: {{concurrencylimit: 8}}
  maintenance:
    uploadpurging: {{enabled: true, age: 168h, interval: 24h, dryrun: false}}
    readonly: {{enabled: false}}
auth:
  htpasswd: {{realm: cache, path: {htpasswd}}}
middleware:
  registry: [{{name: a, options: {{x: y}}}}]
  repository: [{{name: b}}]
  storage: [{{name: redirect, options: {{baseurl: https://cdn.test/}}}}]
reporting:
  bugsnag: {{apikey: k, releasestage: s, endpoint: e}}
  newrelic: {{licensekey: k, name: n, verbose: true}}
http:
  addr: 127.0.0.1:5000
  prefix: /nested/
  host: https://cache.test:5000
  secret: s3cr3t
  relativeurls: true
  draintimeout: 5s
  net: tcp
  tls:
    certificate: {cert}
    key: {key}
    clientcas: [{cert}]
    minimumtls: tls1.0
    ciphersuites: [TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]
  debug:
    addr: 127.0.0.1:5001
    prometheus: {{enabled: true, path: /prom}}
  headers: {{X-Content-Type-Options: [nosniff]}}
  http2: {{disabled: false}}
  h2c: {{enabled: false}}
notifications:
  events: {{includereferences: true}}
  endpoints: [{{name: l, disabled: true, url: https://hook.test/, timeout: 1s, threshold: 10, backoff: 1s}}]
redis:
  addr: 127.0.0.1:6379
  password: p
  db: 0
  dialtimeout: 10ms
  readtimeout: 10ms
  writetimeout: 10ms
  pool: {{maxidle: 16, maxactive: 64, idletimeout: 300s}}
health:
  storagedriver: {{enabled: true, interval: 10s, threshold: 3}}
  file: [{{file: /tmp/x, interval: 10s}}]
  http: [{{uri: http://h.test/, statuscode: 200, timeout: 3s, interval: 10s, threshold: 3}}]
  tcp: [{{addr: h.test:6379, timeout: 3s, interval: 10s, threshold: 3}}]
proxy:
  remoteurl: https://registry-1.docker.io
  username: u
  password: p
  ttl: 24h
compatibility:
  schema1: {{signingkeyfile: /k.json, enabled: true}}
validation:
  manifests: {{urls: {{allow: ['^https?://']}}}}
",
            root = dir.path().display(),
            htpasswd = htpasswd.display(),
        );
        let config = load(&yaml, &[]).expect("every reference key is accepted");
        let plan = config.plan().expect("plan");
        assert_eq!(
            plan.settings.urls,
            Urls {
                prefix: "/nested".into(),
                base: None
            },
            "relative URLs under the prefix"
        );
        assert_eq!(
            plan.debug_surface,
            DebugSurface {
                metrics_path: Some("/prom".into()),
                storage_check: Some(StorageCheck {
                    interval: Duration::from_secs(10),
                    threshold: 3
                }),
            }
        );
        let tls = plan.tls.expect("tls");
        assert_eq!(tls.minimum, MinimumTls::Tls12);
        assert_eq!(tls.client_cas.len(), 1);
        assert_eq!(
            tls.suites.as_deref(),
            Some(&["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".to_owned()][..])
        );
        assert_eq!(tls.warnings.len(), 2, "{:?}", tls.warnings);
        let absolute = load(
            &yaml.replace("relativeurls: true", "relativeurls: false"),
            &[],
        )
        .expect("absolute");
        assert_eq!(
            absolute.urls().expect("urls").v2("a/tags/list"),
            "https://cache.test:5000/nested/v2/a/tags/list"
        );
        let plan = config.plan().expect("plan");
        assert_eq!(
            plan.drain,
            Duration::from_secs(5),
            "http.draintimeout applies"
        );
        assert_eq!(
            plan.ignored,
            [
                "loglevel",
                "middleware",
                "reporting",
                "notifications",
                "redis",
                "compatibility",
                "validation",
                "health.file",
                "health.http",
                "health.tcp",
                "log.accesslog",
                "log.hooks",
                "log.reportcaller",
                "storage.delete",
                "storage.cache",
                "storage.tag",
                "storage.maintenance.readonly",
                "http.secret",
                "http.http2",
                "http.h2c",
            ]
        );
        let e = load(&yaml.replace("relativeurls", "relativeurl"), &[]).expect_err("misspelt");
        assert!(e.to_string().contains("relativeurl"), "{e}");
    }

    /// What cannot be served as asked is refused, naming the key: TLS
    /// files that do not load, do not match or are endless (a device),
    /// listen addresses that are names other than localhost, ambiguous or incomplete TLS,
    /// unknown TLS versions and suite names, other networks, prefixes and
    /// hosts that are not a path and a URL, a metrics path that hides a
    /// probe, client authentication other than htpasswd (every client
    /// would be let in).
    #[test]
    fn what_cannot_be_honoured_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed(dir.path());
        let files = format!("certificate: {cert}\n    key: {key}");
        for (section, key) in [
            (
                "http:\n  tls:\n    certificate: /nonexistent/c.pem\n    key: /k.pem\n".to_owned(),
                "http.tls.certificate",
            ),
            (
                format!("http:\n  tls:\n    certificate: {cert}\n"),
                "http.tls.key",
            ),
            (
                format!("http:\n  tls:\n    certificate: {cert}\n    key: {cert}\n"),
                "http.tls.key",
            ),
            (
                format!(
                    "http:\n  tls:\n    {files}\n    letsencrypt: {{cachefile: /c, hosts: [a.test]}}\n"
                ),
                "http.tls",
            ),
            (
                "http:\n  tls:\n    letsencrypt: {cachefile: /c, email: a@b.test}\n".to_owned(),
                "http.tls.letsencrypt.hosts",
            ),
            (
                format!("http:\n  tls:\n    {files}\n    minimumtls: tls9\n"),
                "http.tls.minimumtls",
            ),
            (
                format!("http:\n  tls:\n    {files}\n    ciphersuites: [rc4]\n"),
                "http.tls.ciphersuites",
            ),
            ("http:\n  net: udp\n".to_owned(), "http.net"),
            ("proxy:\n  maxsize: 0\n".to_owned(), "proxy.maxsize"),
            ("proxy:\n  maxsize: lots\n".to_owned(), "proxy.maxsize"),
            (
                "proxy:\n  repositories:\n    allow: [\"a/[b\"]\n".to_owned(),
                "proxy.repositories",
            ),
            ("admin:\n  tokenfile: /t\n".to_owned(), "admin.addr"),
            (
                "proxy:\n  upstreams:\n    - namespace: a.test\n      remoteurl: http://a.test\n      prefetch:\n        images:\n          - repository: team/app\n".to_owned(),
                "proxy.upstreams[0] (a.test).prefetch.images[0].tags",
            ),
            (
                "proxy:\n  upstreams:\n    - namespace: a.test\n      remoteurl: http://a.test\n      prefetch:\n        interval: 0s\n".to_owned(),
                "proxy.upstreams[0] (a.test).prefetch.interval",
            ),
            (
                "proxy:\n  upstreams:\n    - namespace: a.test\n      remoteurl: http://a.test\n      remoteurls: [http://b.test]\n".to_owned(),
                "proxy.upstreams[0] (a.test).remoteurls",
            ),
            (
                "proxy:\n  upstreams:\n    - namespace: a.test\n      remoteurls: [http://a.test, {url: \"http://u:p@b.test\", username: v, password: q}]\n".to_owned(),
                "proxy.upstreams[0] (a.test).remoteurls[1]",
            ),
            (
                "proxy:\n  upstreams:\n    - namespace: a.test\n      remoteurls: [http://a.test, {url: http://b.test, username: v}]\n".to_owned(),
                "proxy.upstreams[0] (a.test).remoteurls[1]",
            ),
            (
                "proxy:\n  upstreams:\n    - namespace: a.test\n      username: u\n      password: p\n      remoteurls: [{url: http://a.test, username: v, password: q}]\n".to_owned(),
                "proxy.upstreams[0] (a.test).remoteurls[0]",
            ),
            (
                "proxy:\n  upstreams:\n    - namespace: a.test\n      remoteurl: http://a.test\n      exec: {command: h, env: [REGISTRY_PROXY_PASSWORD]}\n".to_owned(),
                "proxy.upstreams[0] (a.test).exec.env",
            ),
            (
                "proxy:\n  upstreams:\n    - namespace: a.test\n      remoteurl: http://a.test\n      maxconcurrent: 0\n".to_owned(),
                "proxy.upstreams[0] (a.test).maxconcurrent",
            ),
            (
                "proxy:\n  upstreams:\n    - namespace: a.test\n      remoteurl: http://a.test\n      maxbandwidth: fast\n".to_owned(),
                "proxy.upstreams[0] (a.test).maxbandwidth",
            ),
            (
                "proxy:\n  upstreams:\n    - namespace: a.test\n      remoteurl: http://a.test\n      pullbudget: {reserve: \"120%\"}\n".to_owned(),
                "proxy.upstreams[0] (a.test).pullbudget.reserve",
            ),
            (
                "proxy:\n  upstreams:\n    - namespace: a.test\n      remoteurl: http://a.test\n      exec: {command: \"\"}\n".to_owned(),
                "proxy.upstreams[0] (a.test).exec.command",
            ),
            (
                "tracing:\n  otlp:\n    endpoint: ftp://collector\n".to_owned(),
                "tracing.otlp.endpoint",
            ),
            (
                "tracing:\n  otlp:\n    endpoint: http://collector:4318\n    samplingratio: 2\n".to_owned(),
                "tracing.otlp.samplingratio",
            ),
            (
                "proxy:\n  upstreams:\n    - namespace: a.test\n      remoteurl: http://a.test\n      prefetch:\n        images:\n          - repository: team/app\n            tags: [v1]\n            regex: \"(unclosed\"\n".to_owned(),
                "proxy.upstreams[0] (a.test).prefetch.images[0].regex",
            ),
            (
                "proxy:\n  upstreams:\n    - namespace: a.test\n      remoteurl: http://a.test\n      prefetch:\n        images:\n          - repository: team/app\n            tags: [v1]\n            semver: \">=1.x.y\"\n".to_owned(),
                "proxy.upstreams[0] (a.test).prefetch.images[0].semver",
            ),
            (
                "proxy:\n  upstreams:\n    - namespace: a.test\n      remoteurl: http://a.test\n      prefetch:\n        images:\n          - repository: team/app\n            tags: [v1]\n            platforms: [linux]\n".to_owned(),
                "proxy.upstreams[0] (a.test).prefetch.images[0].platforms",
            ),
            (
                "admin:\n  addr: 127.0.0.1:5002\n  users: [alice]\n".to_owned(),
                "admin.users",
            ),
            ("admin:\n  addr: 127.0.0.1:5002\n".to_owned(), "admin.tokenfile"),
            (
                "admin:\n  addr: 127.0.0.1:5002\n  tokenfile: /nonexistent/token\n".to_owned(),
                "admin.tokenfile",
            ),
            (
                "http:\n  addr: 127.0.0.1:5002\nadmin:\n  addr: 127.0.0.1:5002\n  tokenfile: /t\n"
                    .to_owned(),
                "admin.addr",
            ),
            (
                "proxy:\n  highwatermark: 90\n".to_owned(),
                "proxy.highwatermark",
            ),
            ("http:\n  addr: cache.example:5000\n".to_owned(), "http.addr"),
            (
                "http:\n  tls:\n    certificate: /dev/zero\n    key: /dev/zero\n".to_owned(),
                "http.tls.certificate",
            ),
            (
                "coordination:\n  etcd:\n    endpoints: [https://127.0.0.1:2379]\n    username: u\n".to_owned(),
                "coordination.etcd.password",
            ),
            (
                "coordination:\n  etcd:\n    endpoints: [https://127.0.0.1:2379]\n    tls: {insecure: true}\n".to_owned(),
                "coordination.etcd.tls.insecure",
            ),
            (
                format!("proxy:\n  remoteurl: https://r.test\n  tls: {{certificate: {cert}}}\n"),
                "proxy.tls.key",
            ),
            (
                format!("proxy:\n  remoteurl: https://r.test\n  tls: {{certificate: {cert}, key: /nonexistent}}\n"),
                "proxy.tls.key",
            ),
            ("http:\n  net: unix\n  addr: ''\n".to_owned(), "http.addr"),
            ("http:\n  prefix: nested\n".to_owned(), "http.prefix"),
            ("http:\n  host: cache.test\n".to_owned(), "http.host"),
            (
                "http:\n  debug:\n    addr: 127.0.0.1:0\n    prometheus: {path: /livez}\n"
                    .to_owned(),
                "http.debug.prometheus.path",
            ),
            (
                "auth:\n  token:\n    realm: https://auth.test/\n    service: s\n    issuer: i\n    jwks: /nonexistent\n".to_owned(),
                "auth.token.jwks",
            ),
            (
                "auth:\n  token:\n    realm: https://auth.test/\n    service: s\n    issuer: i\n    rootcertbundle: /b.pem\n".to_owned(),
                "auth.token.rootcertbundle",
            ),
            (
                "auth:\n  silly:\n    realm: r\n    service: s\n".to_owned(),
                "auth.silly",
            ),
        ] {
            let yaml = format!("storage:\n  inmemory: {{}}\n{section}");
            let e = load(&yaml, &[]).expect_err(key);
            assert_eq!(e.key, key, "{section}: {e}");
        }
        let crossed = "storage:\n  filesystem:\n    rootdirectory: /var/lib/rp\nproxy:\n  lowwatermark: 95\n  highwatermark: 90\n";
        let e = load(crossed, &[]).expect_err("crossed watermarks");
        assert_eq!(e.key, "proxy.lowwatermark", "{e}");
    }

    /// A self-signed certificate for `localhost` and its key, as PEM files
    /// in `dir`.
    fn self_signed(dir: &std::path::Path) -> (String, String) {
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, pair.cert.pem()).expect("cert");
        std::fs::write(&key, pair.signing_key.serialize_pem()).expect("key");
        (cert.display().to_string(), key.display().to_string())
    }

    /// Debian's packaged registry config (`/etc/docker/registry/config.yml`,
    /// installed with the tests' upstream) plans, its htpasswd path pointed
    /// at a real file.
    #[test]
    fn debians_registry_config_plans() {
        let path = std::path::Path::new("/etc/docker/registry/config.yml");
        if !path.exists() {
            conformance::skip(
                "debians_registry_config_plans",
                "REQUIRE_E2E",
                "docker-registry is not installed",
            );
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, "").expect("write");
        let env = [
            (
                "REGISTRY_AUTH_HTPASSWD_PATH",
                htpasswd.to_str().expect("utf-8"),
            ),
            (
                "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
                dir.path().to_str().expect("utf-8"),
            ),
        ];
        let config = Config::load(
            Some(path),
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
        .expect("Debian's config loads");
        let plan = config.plan().expect("and plans");
        assert!(
            plan.ignored.contains(&"storage.cache"),
            "{:?}",
            plan.ignored
        );
    }

    #[test]
    fn namespaces_from_upstreams() {
        let dir = tempfile::tempdir().expect("tempdir");
        let htpasswd = dir.path().join("htpasswd");
        let hash = bcrypt::hash("pw", 4).expect("hash");
        std::fs::write(&htpasswd, format!("alice:{hash}\n")).expect("write");
        let yaml = format!(
            "storage:\n  inmemory: {{}}\nauth:\n  htpasswd:\n    realm: r\n    path: {}\nproxy:\n  ttl: 24h\n  upstreams:\n    - namespace: docker.io\n      remoteurl: https://registry-1.docker.io\n      username: u\n      password: p\n    - namespace: ghcr.io\n      remoteurl: https://ghcr.io\n      ttl: 1h\n      sharing: isolated\n      users: [alice]\n      default: true\n",
            htpasswd.display()
        );
        let config = load(&yaml, &[]).expect("loads");
        let specs = config.namespaces().expect("namespaces");
        let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["docker.io", "ghcr.io"]);
        assert!(specs.iter().all(|s| !s.registry2_dir));
        assert_eq!(specs[0].credentials, Some(("u".into(), "p".into())));
        assert_eq!(
            (specs[0].sharing, specs[0].ttl, specs[0].default),
            (Sharing::Shared, None, false)
        );
        assert_eq!(specs[1].sharing, Sharing::Isolated);
        assert_eq!(specs[1].ttl, Some(Duration::from_secs(3600)));
        assert_eq!(specs[1].users, Some(vec!["alice".to_owned()]));
        assert!(specs[1].default);
        assert!(config.client_auth().expect("auth").is_some());
        // A remoteurl next to upstreams is one more namespace, the default,
        // stored where registry:2 stores.
        let both = load(
            "storage:\n  inmemory: {}\nproxy:\n  remoteurl: http://127.0.0.1:5001\n  upstreams:\n    - namespace: ghcr.io\n      remoteurl: https://ghcr.io\n",
            &[],
        )
        .expect("loads")
        .namespaces()
        .expect("namespaces");
        assert_eq!(both[0].name, "127.0.0.1:5001");
        assert!(both[0].registry2_dir && both[0].default && !both[1].default);
    }

    #[test]
    fn bad_namespaces_are_errors_naming_the_entry() {
        let entry = |fields: &str| {
            format!(
                "storage:\n  inmemory: {{}}\nproxy:\n  upstreams:\n    - namespace: docker.io\n      remoteurl: https://registry-1.docker.io\n    - namespace: ghcr.io\n      remoteurl: https://ghcr.io\n{fields}"
            )
        };
        let cases = [
            (
                entry("    - namespace: ghcr.io\n      remoteurl: https://x.io\n"),
                "proxy.upstreams[2] (ghcr.io).namespace",
                "twice",
            ),
            (
                entry("    - namespace: quay.io\n      remoteurl: ftp://quay.io\n"),
                "proxy.upstreams[2] (quay.io).remoteurl",
                "http",
            ),
            (
                entry(
                    "    - namespace: quay.io\n      remoteurl: https://quay.io\n      sharing: sometimes\n",
                ),
                "proxy.upstreams[2] (quay.io).sharing",
                "sometimes",
            ),
            (
                entry("    - namespace: Quay.IO/x\n      remoteurl: https://quay.io\n"),
                "proxy.upstreams[2] (Quay.IO/x).namespace",
                "host name",
            ),
            (
                entry(
                    "    - namespace: quay.io\n      remoteurl: https://quay.io\n      users: [alice]\n",
                ),
                "proxy.upstreams[2] (quay.io).users",
                "auth.htpasswd",
            ),
            (
                entry(
                    "    - namespace: quay.io\n      remoteurl: https://quay.io\n      ttl: soon\n",
                ),
                "proxy.upstreams[2] (quay.io).ttl",
                "soon",
            ),
            (
                entry(
                    "    - namespace: quay.io\n      remoteurl: https://quay.io\n      colour: red\n",
                ),
                "proxy.upstreams[2]",
                "colour",
            ),
            (
                "storage:\n  inmemory: {}\nauth:\n  htpasswd:\n    path: /nonexistent/htpasswd\n"
                    .to_owned(),
                "auth.htpasswd.path",
                "/nonexistent/htpasswd",
            ),
            (
                "storage:\n  inmemory: {}\nauth:\n  token:\n    realm: x\n".to_owned(),
                "auth",
                "token",
            ),
        ];
        for (yaml, key, says) in cases {
            let e = load(&yaml, &[]).expect_err(&yaml);
            assert!(
                e.key.starts_with(key),
                "{yaml}: error names {:?}, expected {key:?}: {e}",
                e.key
            );
            assert!(e.to_string().contains(says), "{e} does not say {says:?}");
        }
    }

    #[test]
    fn bad_keys_are_errors_naming_the_key() {
        let cases = [
            (
                "storage:\n  filesystem:\n    rootdir: /x\n",
                "storage.filesystem",
            ),
            (
                "storage:\n  inmemory: {}\nproxy:\n  remoteurl: ftp://x\n",
                "proxy.remoteurl",
            ),
            (
                "storage:\n  inmemory: {}\n  filesystem:\n    rootdirectory: /x\n",
                "storage",
            ),
            (
                "storage:\n  inmemory: {}\nproxy:\n  ttl: forever\n",
                "proxy.ttl",
            ),
            (
                "storage:\n  inmemory: {}\nhttp:\n  addr: nowhere\n",
                "http.addr",
            ),
            ("storage:\n  s3:\n    region: x\n", "storage.s3.bucket"),
            (
                "storage:\n  s3:\n    bucket: b\n    chunksize: 1024\n",
                "storage.s3.chunksize",
            ),
            ("storage:\n  inmemory: {}\nunknownsection: 1\n", ""),
        ];
        for (yaml, key) in cases {
            let e = load(yaml, &[]).expect_err(yaml);
            assert!(
                e.key.starts_with(key),
                "{yaml}: error names {:?}, expected {key:?}: {e}",
                e.key
            );
            assert!(!e.reason.is_empty());
        }
        let e = load("storage:\n  inmemory: {}\nunknownsection: 1\n", &[]).expect_err("unknown");
        assert!(e.reason.contains("unknownsection"), "{e}");
    }
}
