//! [`Plan`]: a configuration read once into everything the process needs,
//! every key checked and every default applied, before any state opens.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};

use super::{AdminPlan, Backend, Config, ConfigError, Listen, REQUEST_TIMEOUT};
use crate::app::Settings;
use crate::clock::Clock;
use crate::listener::Limits;
use crate::namespace::NamespaceSpec;
use crate::routes::DebugSurface;
use crate::scheduler::Options;
use crate::tls::TlsSpec;

/// What a configuration asks the process to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The storage and its description for logs.
    pub storage: Backend,
    /// Where clients connect.
    pub listen: Listen,
    /// The public listener's TLS, if any.
    pub tls: Option<TlsSpec>,
    /// Where metrics and health are served, if anywhere.
    pub debug: Option<SocketAddr>,
    /// What the debug listener serves.
    pub debug_surface: DebugSurface,
    /// The listener's timeouts and connection limit.
    pub listener: Limits,
    /// The upstreams, one namespace each.
    pub namespaces: Vec<NamespaceSpec>,
    /// The application's settings (spool, fills, reads, tags, clients,
    /// scheduler, coordination).
    pub settings: Settings,
    /// Whether the spool directory is the default one (created when
    /// missing) rather than one the configuration names (which must exist).
    pub default_spool: bool,
    /// Headers added to every response (`http.headers`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// How long in-flight responses and fills may run after SIGTERM.
    pub drain: std::time::Duration,
    /// The admin surface, if configured.
    pub admin: Option<AdminPlan>,
    /// Keys accepted from distribution's reference but not applied.
    pub ignored: Vec<&'static str>,
}

impl Config {
    /// The plan of this configuration: every key checked, every default
    /// applied (the defaults live with the options they belong to).
    pub fn plan(&self) -> Result<Plan, ConfigError> {
        self.refused()?;
        let (gc, lease_timeout) = self.gc()?;
        let namespaces = self.namespaces()?;
        let scheduler = Options {
            ttl: self.ttl()?,
            purge: self.upload_purging()?,
            lease_timeout,
            gc,
            bounds: self.bounds(&namespaces)?,
            ..Options::default()
        };
        let settings = Settings {
            spool_dir: self.spool_dir(),
            fill_timeout: self.fill_timeout()?,
            fill_limits: self.fill_limits()?,
            verify_reads: self.verify_reads()?,
            tag_freshness: self.tag_freshness()?,
            request_timeout: REQUEST_TIMEOUT,
            auth: self.client_auth()?.map(Arc::new),
            token: self.token_auth()?.map(Arc::new),
            scheduler,
            clock: Clock::system(),
            coordination: self.etcd()?,
            urls: self.urls()?,
            local_tier: self.local_tier()?,
        };
        // As before the plan: a name or value that is not one is skipped.
        let headers = self
            .http
            .headers
            .iter()
            .flat_map(|(name, values)| values.iter().map(move |value| (name, value)))
            .filter_map(|(name, value)| {
                Some((
                    HeaderName::try_from(name.as_str()).ok()?,
                    HeaderValue::try_from(value.as_str()).ok()?,
                ))
            })
            .collect();
        Ok(Plan {
            storage: self.backend()?,
            listen: self.listen()?,
            tls: self.server_tls()?,
            debug_surface: self.debug_surface()?,
            debug: self.debug_addr()?,
            listener: self.listener_limits()?,
            namespaces,
            settings,
            default_spool: self.proxy.spooldirectory.is_none(),
            headers,
            drain: self.drain_timeout()?,
            admin: self.admin()?,
            ignored: self.ignored_keys(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::scheduler::GcOptions;

    /// The embedded default plans filesystem storage on 127.0.0.1:5000 in
    /// front of Docker Hub, with the options' own defaults; a bad key in
    /// any section stops the plan.
    #[test]
    fn the_embedded_default_plans_the_defaults() {
        let plan = Config::load(None, [])
            .expect("config")
            .plan()
            .expect("plan");
        assert!(matches!(plan.storage, Backend::Filesystem(_)));
        assert_eq!(
            plan.listen,
            Listen::Tcp("127.0.0.1:5000".parse().expect("addr"))
        );
        assert!(plan.tls.is_none());
        assert_eq!(plan.debug_surface, DebugSurface::default());
        assert_eq!(plan.namespaces.len(), 1);
        assert_eq!(plan.namespaces[0].name, "docker.io");
        assert!(plan.default_spool);
        let scheduler = &plan.settings.scheduler;
        assert_eq!(scheduler.ttl, Options::default().ttl);
        assert_eq!(scheduler.lease_timeout, Duration::from_secs(600));
        assert_eq!(scheduler.gc, GcOptions::default());
        let bad = [("REGISTRY_HTTP_IDLETIMEOUT".to_owned(), "soon".to_owned())];
        assert!(Config::load(None, bad).expect("config").plan().is_err());
    }
}
