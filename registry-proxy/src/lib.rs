//! registry-proxy: a pull-through cache for OCI and Docker registries whose
//! storage is any [`StorageDriver`](driver_core::StorageDriver).
//!
//! The data path of a pull, top to bottom: [`routes`] parses the request,
//! authenticates it ([`auth`]) and picks its upstream and storage directory
//! ([`namespace`]); [`cache`] answers from storage, or on a miss runs one
//! fill per digest (upstream → verify → commit) that every waiting client
//! streams from; [`upstream`] speaks the registry API with its auth;
//! [`scheduler`] applies expiry and collection; [`metadata`] holds the
//! entries and persists and coordinates them; [`layout`] names every stored
//! path. [`clock`], [`sync`], [`oci`], [`metrics`] and [`zerocopy`] (which
//! [`listener`] and [`routes`] share) are leaves. Each module
//! imports only modules after it in this list; [`app`] wires them together
//! from the [`config`].

pub mod admin;
pub mod app;
pub mod auth;
pub mod cache;
pub mod clock;
pub mod config;
pub mod evict;
pub mod health;
pub mod layout;
pub mod listener;
pub mod metadata;
pub mod metered;
pub mod metrics;
pub mod namespace;
pub mod oci;
pub mod prefetch;
pub mod routes;
pub mod scheduler;
pub mod status;
pub(crate) mod sync;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod topk;
pub mod upstream;
pub mod zerocopy;

pub use app::{AppState, OpenError, Settings, open_store};
pub use routes::{app, debug_app};
