//! The single-node store: the scheduler's journal, written through the
//! storage driver next to the content (see [`journal`]).
//!
//! Schema version 1 keeps its segments under [`journal::dir`] and the
//! version in [`version_path`]. The version before kept them under
//! [`journal::legacy_dir`] with no version key (and before that, the state
//! was registry:2's `/scheduler-state.json`); opening such storage loads
//! that state, writes it as a version 1 snapshot, then records the version
//! and deletes the old segments. A crash in between repeats the migration.

pub mod journal;
mod registry2;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use driver_core::{Segment, StorageDriver, StoragePath};
use tokio::sync::{mpsc, watch};

use self::journal::SegmentKind;
use super::table::{Entry, Secs, Table};
use super::{
    Change, Coordination, DigestLock, Loaded, LockKind, MetadataError, Persistence, SCHEMA_VERSION,
    SnapshotSource,
};
use crate::oci::Digest;

/// `/registry-proxy/metadata/version`: the file holding the schema version.
pub fn version_path() -> StoragePath {
    static VERSION: Segment = Segment::from_static("version");
    journal::metadata_dir().child(&VERSION)
}

/// Slots encoded per piece while a snapshot is written.
const SNAPSHOT_SLOTS: usize = 16 << 10;

/// A snapshot is written once the logs since the last one reach its size
/// (and at least this many bytes), so each change costs O(1) writes
/// amortised.
const MIN_LOG_BYTES: u64 = 256 << 10;

/// Or once this many logs accumulated, so that loading stays quick.
const MAX_LOGS: usize = 4096;

/// What is in storage.
#[derive(Default)]
struct Persisted {
    next_seq: u64,
    /// Segments older than the next snapshot: deleted once it is written.
    segments: Vec<(u64, SegmentKind)>,
    logs: usize,
    log_bytes: u64,
    snapshot_bytes: u64,
    /// Records whose write failed, written with the next call.
    retry: Vec<u8>,
}

/// The journal in storage.
pub struct Embedded {
    driver: Arc<dyn StorageDriver>,
    /// The lifetime registry:2's expiries are converted with.
    ttl: Secs,
    persisted: tokio::sync::Mutex<Persisted>,
    leader: watch::Sender<bool>,
}

impl Embedded {
    /// The journal of `driver`; `ttl` converts registry:2's expiry times to
    /// access times when its state is taken over.
    pub fn new(driver: Arc<dyn StorageDriver>, ttl: Secs) -> Self {
        Self {
            driver,
            ttl,
            persisted: tokio::sync::Mutex::new(Persisted::default()),
            leader: watch::Sender::new(true),
        }
    }

    /// Writes every entry of `table` as one snapshot segment, then deletes
    /// the segments before it.
    async fn snapshot(
        &self,
        persisted: &mut Persisted,
        table: &dyn SnapshotSource,
    ) -> Result<(), driver_core::Error> {
        let seq = persisted.next_seq;
        persisted.next_seq += 1;
        let path = journal::segment_path(&journal::dir(), seq, SegmentKind::Snapshot);
        let mut writer = self.driver.writer(&path, false).await?;
        let (mut framer, header) = journal::Framer::start();
        let mut written = writer.write(header).await;
        let mut slot = 0;
        while written.is_ok() {
            let (entries, done) = table.entries(slot, SNAPSHOT_SLOTS);
            let records = journal::encode(entries.into_iter().map(Change::Upsert));
            slot += SNAPSHOT_SLOTS;
            framer.piece(&records);
            written = writer.write(records.into()).await;
            if done {
                break;
            }
        }
        if written.is_ok() {
            written = writer.write(framer.finish()).await;
        }
        let size = writer.size();
        if let Err(e) = written {
            let _ = writer.cancel().await;
            return Err(e);
        }
        writer.commit().await?;
        for (old, kind) in std::mem::take(&mut persisted.segments) {
            delete_segment(&*self.driver, &journal::dir(), old, kind).await;
        }
        persisted.segments.push((seq, SegmentKind::Snapshot));
        persisted.logs = 0;
        persisted.log_bytes = 0;
        persisted.snapshot_bytes = size;
        Ok(())
    }

    /// Reads the segments under `dir` into `table`: the newest intact
    /// snapshot, then the logs after it.
    async fn read(
        &self,
        dir: &StoragePath,
        table: &mut Table,
        loaded: &mut Loaded,
    ) -> Result<(Vec<(u64, SegmentKind)>, Persisted), driver_core::Error> {
        let segments = journal::list(&*self.driver, dir).await?;
        let mut persisted = Persisted::default();
        let mut base = None;
        for &(seq, kind) in segments.iter().rev() {
            if kind != SegmentKind::Snapshot {
                continue;
            }
            match read_segment(&*self.driver, dir, seq, kind, table).await? {
                Some(size) => {
                    (base, persisted.snapshot_bytes) = (Some(seq), size);
                    loaded.segments += 1;
                    break;
                }
                None => loaded.damaged += 1,
            }
        }
        for &(seq, kind) in &segments {
            if kind == SegmentKind::Log && base.is_none_or(|b| seq > b) {
                match read_segment(&*self.driver, dir, seq, kind, table).await? {
                    Some(size) => {
                        persisted.log_bytes += size;
                        persisted.logs += 1;
                        loaded.segments += 1;
                    }
                    None => loaded.damaged += 1,
                }
            }
        }
        persisted.next_seq = segments.last().map_or(1, |&(seq, _)| seq + 1);
        persisted.segments.clone_from(&segments);
        Ok((segments, persisted))
    }

    /// Brings storage without a version key to this version: the state of
    /// the version before (if the current directory is still empty) is
    /// written as a snapshot, then the version is recorded.
    async fn migrate(
        &self,
        table: &mut Table,
        loaded: &mut Loaded,
        persisted: &mut Persisted,
    ) -> Result<(), driver_core::Error> {
        let mut legacy = Vec::new();
        if persisted.segments.is_empty() {
            let (old, _) = self.read(&journal::legacy_dir(), table, loaded).await?;
            legacy = old;
            if legacy.is_empty() {
                loaded.imported = registry2::import(&*self.driver, self.ttl, table).await?;
            } else {
                loaded.imported = table.len();
            }
            if !table.is_empty() {
                self.snapshot(persisted, &TableRef(table)).await?;
            }
        }
        self.driver
            .put_content(&version_path(), Bytes::from(SCHEMA_VERSION.to_string()))
            .await?;
        for (seq, kind) in legacy {
            delete_segment(&*self.driver, &journal::legacy_dir(), seq, kind).await;
        }
        if loaded.imported > 0 {
            tracing::info!(
                entries = loaded.imported,
                version = SCHEMA_VERSION,
                "migrated the metadata schema"
            );
        }
        Ok(())
    }
}

/// A table read directly (while loading, before anyone shares it).
struct TableRef<'a>(&'a Table);

impl SnapshotSource for TableRef<'_> {
    fn entries(&self, from: usize, count: usize) -> (Vec<Entry>, bool) {
        self.0.slots(from, count)
    }
}

async fn delete_segment(
    driver: &dyn StorageDriver,
    dir: &StoragePath,
    seq: u64,
    kind: SegmentKind,
) {
    match driver.delete(&journal::segment_path(dir, seq, kind)).await {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => tracing::warn!(error = %e, "could not delete an old metadata segment"),
    }
}

#[async_trait]
impl Persistence for Embedded {
    fn describe(&self) -> String {
        format!("embedded ({})", journal::dir())
    }
    async fn load(&self, table: &mut Table) -> Result<Loaded, MetadataError> {
        let version = match self.driver.get_content(&version_path()).await {
            Ok(v) => Some(String::from_utf8_lossy(&v).trim().to_owned()),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(found) = version
            .as_ref()
            .filter(|v| **v != SCHEMA_VERSION.to_string())
        {
            return Err(MetadataError::UnknownSchema {
                found: found.clone(),
            });
        }
        let mut loaded = Loaded::default();
        let (_, mut persisted) = self.read(&journal::dir(), table, &mut loaded).await?;
        if version.is_none() {
            self.migrate(table, &mut loaded, &mut persisted).await?;
        }
        loaded.entries = table.len();
        *self.persisted.lock().await = persisted;
        Ok(loaded)
    }

    async fn persist(
        &self,
        changes: Vec<Change>,
        table: &dyn SnapshotSource,
    ) -> Result<(), MetadataError> {
        let mut persisted = self.persisted.lock().await;
        let mut records = std::mem::take(&mut persisted.retry);
        records.extend_from_slice(&journal::encode(changes));
        if records.is_empty() {
            return Ok(());
        }
        let seq = persisted.next_seq;
        let segment = journal::frame(&records);
        let size = segment.len() as u64;
        if let Err(e) = self
            .driver
            .put_content(
                &journal::segment_path(&journal::dir(), seq, SegmentKind::Log),
                segment,
            )
            .await
        {
            persisted.retry = records;
            return Err(e.into());
        }
        persisted.next_seq += 1;
        persisted.segments.push((seq, SegmentKind::Log));
        persisted.logs += 1;
        persisted.log_bytes += size;
        if persisted.log_bytes >= persisted.snapshot_bytes.max(MIN_LOG_BYTES)
            || persisted.logs >= MAX_LOGS
        {
            self.snapshot(&mut persisted, table).await?;
        }
        Ok(())
    }

    async fn put_now(&self, _entry: &Entry, _must_exist: bool) -> Result<bool, MetadataError> {
        // One node: the table is the truth, written with the next persist.
        Ok(true)
    }

    async fn remove(&self, _entry: &Entry) -> Result<Option<Secs>, MetadataError> {
        Ok(None)
    }
}

#[async_trait]
impl Coordination for Embedded {
    fn shared(&self) -> bool {
        false
    }

    async fn referenced(&self, _digest: &Digest) -> Result<bool, MetadataError> {
        Ok(false)
    }

    async fn lock(&self, _digest: &Digest, _kind: LockKind) -> Result<DigestLock, MetadataError> {
        Ok(DigestLock::none())
    }

    fn leader(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    async fn publish_leases(&self, _digests: &HashSet<Digest>) -> Result<(), MetadataError> {
        Ok(())
    }

    async fn remote_leases(&self) -> Result<HashSet<Digest>, MetadataError> {
        Ok(HashSet::new())
    }

    fn changes(&self) -> Option<mpsc::UnboundedReceiver<Change>> {
        None
    }

    async fn publish_untag(&self, _repo: &str, _tag: &str) -> Result<(), MetadataError> {
        Ok(())
    }

    async fn ready(&self) -> Result<(), MetadataError> {
        Ok(())
    }

    async fn close(&self) {}
}

/// Applies one segment to `table`; its size, or `None` (logged) when it is
/// damaged.
async fn read_segment(
    driver: &dyn StorageDriver,
    dir: &StoragePath,
    seq: u64,
    kind: SegmentKind,
    table: &mut Table,
) -> Result<Option<u64>, driver_core::Error> {
    let path = journal::segment_path(dir, seq, kind);
    let bytes = match driver.get_content(&path).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    match journal::apply(path.as_str(), &bytes, table) {
        Ok(_) => Ok(Some(bytes.len() as u64)),
        Err(e) => {
            tracing::warn!(error = %e, "skipping a damaged metadata segment");
            Ok(None)
        }
    }
}
