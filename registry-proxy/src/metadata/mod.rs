//! The metadata layer: what content each namespace and repository references
//! and when it was last used, the fills in progress and the leases that
//! protect content in use, behind one [`MetadataStore`] trait.
//!
//! Two stores implement it:
//! - [`embedded::Embedded`], the single-node default: a journal of small
//!   segments written through the [`StorageDriver`](driver_core::StorageDriver)
//!   next to the content, so that a node needs nothing but its storage;
//! - [`etcd::Etcd`], for several replicas on one bucket: references live
//!   in etcd as one key each, fills take a per-digest lock, and one replica
//!   elected leader runs expiry and garbage collection.
//!
//! Keys follow one versioned schema, `v1/<namespace>/<object>/<key>` (see
//! [`schema`]); a `version` key next to it names the schema in use, and a
//! store that finds the version before migrates it on open.

pub mod digests;
pub mod embedded;
pub mod etcd;
pub mod leases;
pub mod schema;
pub mod table;

use std::collections::HashSet;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use crate::oci::{Digest, Kind};
use table::{Entry, Secs, Table};

pub use leases::{Lease, Leases};

/// The schema this build writes.
pub const SCHEMA_VERSION: u32 = 1;

/// A metadata operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The storage holding the embedded store failed.
    #[error("metadata storage: {0}")]
    Storage(#[from] driver_core::Error),
    /// etcd failed or could not be reached.
    #[error("etcd: {0}")]
    Etcd(String),
    /// The stored schema is newer than this build understands.
    #[error("metadata schema version {found} is newer than this build's {SCHEMA_VERSION}")]
    UnknownSchema {
        /// The version found.
        found: String,
    },
}

/// What a load found, for logs and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Entries after loading.
    pub entries: usize,
    /// Segments (embedded) or keys (etcd) read.
    pub segments: usize,
    /// Segments skipped because they were damaged.
    pub damaged: usize,
    /// Entries taken over from the schema before (registry:2's
    /// `/scheduler-state.json`, the previous journal, or the embedded store
    /// when etcd is new).
    pub imported: usize,
}

/// A change to the entries: what the scheduler hands a store to persist,
/// and what another replica made, applied to the local table (and, for a
/// purged tag, to what this replica keeps in memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An entry was created or accessed at `at`.
    Upsert(Entry),
    /// An entry was expired.
    Remove {
        /// The repository key.
        repo: Box<str>,
        /// The content.
        digest: Digest,
        /// What it kept alive.
        kind: Kind,
    },
    /// A replica purged a tag ([`Coordination::publish_untag`]): every
    /// other replica forgets it confirmed the tag upstream. Never persisted.
    Untag {
        /// The repository key.
        repo: Box<str>,
        /// The tag.
        tag: Box<str>,
    },
}

/// The scheduler's table as a store reads it for a snapshot, piece by piece.
pub trait SnapshotSource: Send + Sync {
    /// The entries from slot `from` on (at most `count` slots), and whether
    /// the table ends there.
    fn entries(&self, from: usize, count: usize) -> (Vec<Entry>, bool);
}

/// What a per-digest lock excludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// Fills from the upstream: one replica fills a digest at a time.
    Fill,
    /// Recording a new use of the digest against deleting its bytes.
    Content,
}

/// A held per-digest lock; released by [`DigestLock::release`] or, if its
/// holder dies, when its lease times out.
pub struct DigestLock(Option<Box<dyn Unlock>>);

/// How a store releases a lock it handed out.
#[async_trait]
pub trait Unlock: Send + Sync {
    /// Releases the lock.
    async fn unlock(self: Box<Self>);
}

impl DigestLock {
    /// A lock that guards nothing: one node needs none.
    pub fn none() -> Self {
        Self(None)
    }

    /// A lock released through `unlock`.
    pub fn held(unlock: Box<dyn Unlock>) -> Self {
        Self(Some(unlock))
    }

    /// Releases the lock.
    pub async fn release(self) {
        if let Some(unlock) = self.0 {
            unlock.unlock().await;
        }
    }
}

/// Where the scheduler's entries persist: loaded once, then written as
/// typed changes (and, in a shared store, single accesses written through).
#[async_trait]
pub trait Persistence: Send + Sync {
    /// What the store is, for logs: `embedded` or `etcd <endpoints>`.
    fn describe(&self) -> String;

    /// Loads every reference into `table`, migrating the schema before.
    async fn load(&self, table: &mut Table) -> Result<Loaded, MetadataError>;

    /// Persists the `changes` since the last call; `table` supplies whole
    /// snapshots when the store wants one. Changes that could not be
    /// written are kept and go with the next call.
    async fn persist(
        &self,
        changes: Vec<Change>,
        table: &dyn SnapshotSource,
    ) -> Result<(), MetadataError>;

    /// Writes one access now rather than with the next
    /// [`Self::persist`]. With `must_exist`, writes only if the entry still
    /// exists and returns whether it did (a leader may have expired it).
    async fn put_now(&self, entry: &Entry, must_exist: bool) -> Result<bool, MetadataError>;

    /// Removes an expired entry unless another replica accessed it since:
    /// `None` when removed, else the newer access time.
    async fn remove(&self, entry: &Entry) -> Result<Option<Secs>, MetadataError>;
}

/// How replicas sharing the storage coordinate: per-digest locks, one
/// leader, published leases, and the feed of each other's changes. For a
/// single node it is a local no-op: its lock is [`DigestLock::none`], it
/// always leads, and its table is the whole truth.
#[async_trait]
pub trait Coordination: Send + Sync {
    /// Whether other replicas share this state (a shared store is written
    /// through on creation and near expiry, so that a replica never serves
    /// what the leader removes).
    fn shared(&self) -> bool;

    /// Whether any entry of any namespace references `digest` (asked of
    /// the shared state; a single node answers from its table instead).
    async fn referenced(&self, digest: &Digest) -> Result<bool, MetadataError>;

    /// Takes the `kind` lock of `digest`.
    async fn lock(&self, digest: &Digest, kind: LockKind) -> Result<DigestLock, MetadataError>;

    /// Whether this replica leads (runs expiry and collection), as it
    /// changes.
    fn leader(&self) -> watch::Receiver<bool>;

    /// Publishes the digests this replica holds leases on, replacing what
    /// it published before.
    async fn publish_leases(&self, digests: &HashSet<Digest>) -> Result<(), MetadataError>;

    /// The digests other replicas published leases on.
    async fn remote_leases(&self) -> Result<HashSet<Digest>, MetadataError>;

    /// Changes made by other replicas, to apply to the local table; `None`
    /// when nobody else writes (or when taken already).
    fn changes(&self) -> Option<mpsc::UnboundedReceiver<Change>>;

    /// Tells every other replica that `tag` of the repository keyed `repo`
    /// was purged: their [`Self::changes`] carry it as [`Change::Untag`].
    /// One node has nobody to tell.
    async fn publish_untag(&self, repo: &str, tag: &str) -> Result<(), MetadataError>;

    /// Whether the shared state answers now (readiness): always for one
    /// node.
    async fn ready(&self) -> Result<(), MetadataError>;

    /// Gives up leadership, locks and the session (on shutdown).
    async fn close(&self);
}

/// A metadata store: where entries persist, and how replicas coordinate
/// over them (the embedded journal for one node, etcd for several).
pub trait MetadataStore: Persistence + Coordination {}

impl<T: Persistence + Coordination> MetadataStore for T {}
