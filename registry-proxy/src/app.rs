//! The application's state and its wiring from the configuration: storage
//! wrapped with metrics, the metadata store, the scheduler, the cache and the
//! upstreams.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use driver_core::StorageDriver;

use crate::auth::Htpasswd;
use crate::cache::access::Access;
use crate::cache::blobs::Blobs;
use crate::cache::catalog::Catalog;
use crate::cache::fill::FillLimits;
use crate::cache::links::Links;
use crate::cache::manifests::Manifests;
use crate::cache::tier::Tier;
use crate::cache::verify::VerifyReads;
use crate::metadata::MetadataStore;
use crate::metadata::embedded::Embedded;
use crate::metadata::etcd::{Etcd, EtcdOptions};
use crate::metered::Metered;
use crate::metrics::Metrics;
use crate::namespace::{InvalidNamespace, NamespaceSpec, Namespaces};
use crate::scheduler::{Clock, LoadError, Options, Scheduler, Tracker};

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The storage.
    pub driver: Arc<dyn StorageDriver>,
    /// Who may read or learn of what is cached: every reader asks it.
    pub access: Arc<Access>,
    /// Blobs and their fills.
    pub blobs: Arc<Blobs>,
    /// The repositories in storage.
    pub catalog: Arc<Catalog>,
    /// Manifests and tags.
    pub manifests: Arc<Manifests>,
    /// The counters.
    pub metrics: Arc<Metrics>,
    /// Access times and expiry.
    pub scheduler: Arc<Scheduler>,
    /// The upstreams, and how requests select them.
    pub namespaces: Arc<Namespaces>,
    /// Client authentication, when configured.
    pub auth: Option<Arc<Htpasswd>>,
    /// Client authentication by distribution's token scheme, when
    /// configured (instead of `auth`).
    pub token: Option<Arc<crate::token::TokenAuth>>,
    /// The URLs the cache writes.
    pub urls: Arc<Urls>,
}

/// Why the application state could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A namespace cannot be stored.
    #[error(transparent)]
    Namespace(#[from] InvalidNamespace),
    /// The scheduler's state could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The local tier's directory cannot be used.
    #[error("local tier: {0}")]
    Tier(driver_core::Error),
}

/// The metadata store: etcd when `coordination` names one (campaigning
/// for leadership if a `candidate`), else the embedded store in `driver`.
pub async fn open_store(
    driver: &Arc<dyn StorageDriver>,
    namespaces: &Namespaces,
    options: &Options,
    coordination: Option<EtcdOptions>,
    candidate: bool,
) -> Result<Arc<dyn MetadataStore>, LoadError> {
    let ttl = u32::try_from(options.ttl.as_secs()).unwrap_or(u32::MAX);
    Ok(match coordination {
        None => Arc::new(Embedded::new(Arc::clone(driver), ttl)) as Arc<dyn MetadataStore>,
        Some(etcd) => {
            let dirs: Vec<Option<String>> = namespaces
                .iter()
                .map(|ns| ns.dir().map(|dir| dir.as_str().to_owned()))
                .collect();
            Etcd::connect(etcd, &dirs, Arc::clone(driver), ttl, candidate).await?
        }
    })
}

/// The URLs the cache writes in `Link` headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Urls {
    /// The path the API is served under (`/registry`; empty: the root).
    pub prefix: String,
    /// The scheme and authority of absolute URLs (`https://cache.example`);
    /// `None`: URLs are relative to the request.
    pub base: Option<String>,
}

impl Urls {
    /// The URL of the API path `/v2/<rest>`.
    pub fn v2(&self, rest: &str) -> String {
        format!(
            "{}{}/v2/{rest}",
            self.base.as_deref().unwrap_or(""),
            self.prefix
        )
    }
}

/// Tunables of [`AppState::open`], from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where fills spool the bytes waiting clients read.
    pub spool_dir: PathBuf,
    /// A fill that receives nothing for this long is abandoned.
    pub fill_timeout: Duration,
    /// How many fills run at once, and how large a blob may be.
    pub fill_limits: FillLimits,
    /// Which whole reads of stored blobs are checked against their digest.
    pub verify_reads: VerifyReads,
    /// How long a tag resolved upstream is trusted.
    pub tag_freshness: Duration,
    /// Timeout of upstream connections, and of manifest, token and proof
    /// requests.
    pub request_timeout: Duration,
    /// Client authentication; `None`: every client may pull.
    pub auth: Option<Arc<Htpasswd>>,
    /// Client authentication by tokens (instead of `auth`).
    pub token: Option<Arc<crate::token::TokenAuth>>,
    /// Expiry and how often its state is written.
    pub scheduler: Options,
    /// The clock of expiries.
    pub clock: Clock,
    /// The etcd shared with other replicas; `None`: a single node.
    pub coordination: Option<EtcdOptions>,
    /// The URLs the cache writes (`http.prefix`, `http.host`).
    pub urls: Urls,
    /// The local tier in front of remote storage, if any.
    pub local_tier: Option<crate::cache::tier::TierOptions>,
}

impl AppState {
    /// The state serving `driver`'s content, filling from the upstreams of
    /// `namespaces`: loads the scheduler's state and starts its flushes and
    /// expiry.
    pub async fn open(
        driver: Arc<dyn StorageDriver>,
        namespaces: &[NamespaceSpec],
        settings: Settings,
    ) -> Result<Self, OpenError> {
        let metrics = Arc::new(Metrics::default());
        let driver: Arc<dyn StorageDriver> = Arc::new(Metered::new(driver, Arc::clone(&metrics)));
        let mut options = settings.scheduler;
        options.namespace_ttls = Namespaces::ttls(namespaces);
        let namespaces = Arc::new(Namespaces::new(
            namespaces,
            &metrics,
            settings.request_timeout,
        )?);
        let store = open_store(&driver, &namespaces, &options, settings.coordination, true).await?;
        let scheduler = Scheduler::open_with_store(
            Arc::clone(&driver),
            store,
            options,
            settings.clock,
            Arc::clone(&metrics),
        )
        .await?;
        // Leftovers of a crash go before anything new is staged.
        scheduler.purge_writers().await;
        scheduler.start();
        // One decision of who may read what, for every reader; proofs of
        // access wait as long as a fill's silence.
        let links = Links::new(Arc::clone(&driver), Tracker::new(Arc::clone(&scheduler)));
        let access = Arc::new(Access::new(
            Arc::clone(&driver),
            links,
            settings.fill_timeout,
        ));
        // Manifests stored before they were marked (or imported from a
        // registry:2 root) are marked now, in the background.
        let (marking, digests) = (Arc::clone(&access), scheduler.manifest_digests());
        tokio::spawn(async move {
            let marked = marking.mark_stored_manifests(digests).await;
            if marked > 0 {
                tracing::info!(marked, "stored manifests marked");
            }
        });
        let manifests = Arc::new(Manifests::new(
            Arc::clone(&driver),
            settings.tag_freshness,
            settings.request_timeout,
            Tracker::new(Arc::clone(&scheduler)),
            Arc::clone(&access),
            Arc::clone(&metrics),
        ));
        // A tag purged on another replica is no longer trusted here either.
        let weak = Arc::downgrade(&manifests);
        scheduler.on_untag(move |repo, tag| {
            if let Some(manifests) = weak.upgrade() {
                manifests.forget_tag(repo, tag);
            }
        });
        let tier = match &settings.local_tier {
            Some(options) => Some(
                Tier::open(options, Arc::clone(&metrics))
                    .await
                    .map_err(OpenError::Tier)?,
            ),
            None => None,
        };
        Ok(Self {
            blobs: Arc::new(
                Blobs::new(
                    Arc::clone(&driver),
                    settings.spool_dir,
                    settings.fill_timeout,
                    settings.fill_limits,
                    settings.verify_reads,
                    Tracker::new(Arc::clone(&scheduler)),
                    Arc::clone(&access),
                    Arc::clone(&metrics),
                )
                .with_tier(tier),
            ),
            access,
            manifests,
            catalog: Arc::new(Catalog::new(Arc::clone(&driver))),
            driver,
            metrics,
            scheduler,
            namespaces,
            auth: settings.auth,
            token: settings.token,
            urls: Arc::new(settings.urls),
        })
    }
}
