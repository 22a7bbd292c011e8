//! The shared store: references, locks, leases and the leader election in
//! etcd (keys as in [`schema`]), for several replicas on one bucket.
//!
//! Each replica holds one session: an etcd lease kept alive in the
//! background. Its locks, its published leases and its candidacy hang on
//! that lease, so a replica that dies (even by `kill -9`) loses them all
//! once the lease times out, and another replica takes over. A replica
//! whose session lapses (etcd unreachable for the lease's TTL) stops
//! leading and starts a new session.
//!
//! Every replica keeps all references in its own table, loaded at start
//! and kept current by a watch; a warm hit reads only that table.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use driver_core::{Secret, StorageDriver};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, LockOptions, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;
use tokio::sync::{OwnedMutexGuard, mpsc, watch};
use tokio::task::JoinHandle;

use super::embedded::Embedded;
use super::schema::{self, KINDS, prefix_end};
use super::table::{Entry, Secs, Table};
use super::{
    Change, Coordination, DigestLock, Loaded, LockKind, MetadataError, Persistence, SCHEMA_VERSION,
    SnapshotSource, Unlock,
};
use crate::oci::{Digest, Kind};
use crate::sync::lock;
use crate::upstream::UpstreamTls;

/// Keys read per request while loading.
const PAGE: i64 = 5000;

/// Digests per published lease key: about 650 KB, well under etcd's
/// 1.5 MiB request limit.
const LEASES_PER_KEY: usize = 10_000;

/// Writes in flight at once while flushing.
const WRITES: usize = 16;

/// Where the replicas meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Client URLs of the etcd cluster.
    pub endpoints: Vec<String>,
    /// The key prefix of this cache's state.
    pub prefix: String,
    /// The session lease's time to live: a dead replica's locks and
    /// leadership pass on after this long.
    pub lease_ttl: Duration,
    /// Timeout of each etcd request.
    pub timeout: Duration,
    /// User name and password, when etcd's authentication is on.
    pub user: Option<(String, Secret)>,
    /// Roots beyond the platform's and a client certificate, for
    /// `https://` endpoints.
    pub tls: UpstreamTls,
}

impl EtcdOptions {
    /// The connection options every client of this etcd starts from.
    fn connect_options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new().with_connect_timeout(self.timeout);
        if let Some((name, password)) = &self.user {
            options = options.with_user(name, password.expose());
        }
        if self.endpoints.iter().any(|e| e.starts_with("https://")) {
            crate::tls::install_default_provider();
            let mut tls = TlsOptions::new().with_native_roots();
            if let Some(pem) = &self.tls.ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let Some(pem) = &self.tls.identity_pem {
                // One PEM holds both; each side picks its own blocks.
                tls = tls.identity(Identity::from_pem(pem, pem));
            }
            options = options.with_tls(tls);
        }
        options
    }
}

fn etcd_error(e: etcd_client::Error) -> MetadataError {
    MetadataError::Etcd(e.to_string())
}

/// The state shared through etcd.
pub struct Etcd {
    client: Client,
    /// A connection whose requests have no deadline, for lock requests: a
    /// lock is waited for as long as its holder lives (its session lease)
    /// and holds it (a fill lets go once idle for its fill timeout), not
    /// the per-request timeout. HTTP/2 keep-alives notice a dead etcd.
    waiting: Client,
    options: EtcdOptions,
    /// This replica's name in etcd.
    replica: String,
    /// The session lease (0 while none is granted).
    session: Arc<AtomicI64>,
    /// The namespace keys references may sit under.
    namespaces: Vec<String>,
    /// The embedded store of the same storage, migrated from when etcd is
    /// new.
    embedded: Embedded,
    leader: watch::Sender<bool>,
    /// In-process exclusion in front of etcd's locks (which a session
    /// cannot take twice).
    local: LocalLocks,
    changes: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Change>>>,
    changes_tx: mpsc::UnboundedSender<Change>,
    /// Records whose write failed, written with the next persist.
    retry: tokio::sync::Mutex<Vec<Entry>>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// Itself, for the tasks it starts.
    me: std::sync::Weak<Self>,
}

impl Etcd {
    /// Connects to etcd and starts this replica's session (and, for a
    /// `candidate`, its candidacy for leadership). `namespace_dirs` are the
    /// storage directories of the configured namespaces; `driver` and `ttl`
    /// let a new etcd take over the embedded store's state.
    pub async fn connect(
        options: EtcdOptions,
        namespace_dirs: &[Option<String>],
        driver: Arc<dyn StorageDriver>,
        ttl: Secs,
        candidate: bool,
    ) -> Result<Arc<Self>, MetadataError> {
        let client = Client::connect(
            &options.endpoints,
            Some(options.connect_options().with_timeout(options.timeout)),
        )
        .await
        .map_err(etcd_error)?;
        let waiting = Client::connect(
            &options.endpoints,
            Some(
                options
                    .connect_options()
                    .with_keep_alive(options.timeout, options.timeout)
                    .with_keep_alive_while_idle(true),
            ),
        )
        .await
        .map_err(etcd_error)?;
        let mut namespaces: Vec<String> = namespace_dirs
            .iter()
            .map(|d| schema::namespace_key(d.as_deref()).to_owned())
            .collect();
        namespaces.sort();
        namespaces.dedup();
        let (changes_tx, changes) = mpsc::unbounded_channel();
        let this = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            client,
            waiting,
            replica: format!("{:016x}-{}", rand::random::<u64>(), std::process::id()),
            session: Arc::new(AtomicI64::new(0)),
            namespaces,
            embedded: Embedded::new(driver, ttl),
            leader: watch::Sender::new(false),
            local: LocalLocks::default(),
            changes: std::sync::Mutex::new(Some(changes)),
            changes_tx,
            retry: tokio::sync::Mutex::new(Vec::new()),
            tasks: std::sync::Mutex::new(Vec::new()),
            options,
        });
        this.new_session().await?;
        let that = Arc::clone(&this);
        lock(&this.tasks).push(tokio::spawn(
            async move { that.session_loop(candidate).await },
        ));
        Ok(this)
    }

    fn client(&self) -> Client {
        self.client.clone()
    }

    fn lease_ttl_secs(&self) -> i64 {
        i64::try_from(self.options.lease_ttl.as_secs().max(2)).unwrap_or(i64::MAX)
    }

    async fn new_session(&self) -> Result<i64, MetadataError> {
        let id = self
            .client()
            .lease_grant(self.lease_ttl_secs(), None)
            .await
            .map_err(etcd_error)?
            .id();
        self.session.store(id, Ordering::SeqCst);
        Ok(id)
    }

    /// Keeps the session alive and (for a `candidate`) campaigns for
    /// leadership with it; when the session lapses, stops leading and
    /// starts a new one.
    async fn session_loop(self: Arc<Self>, candidate: bool) {
        loop {
            let id = self.session.load(Ordering::SeqCst);
            let campaign = candidate.then(|| {
                let this = Arc::clone(&self);
                tokio::spawn(async move {
                    match this
                        .client()
                        .campaign(schema::leader_key(&this.options.prefix), this.replica.clone(), id)
                        .await
                    {
                        Ok(_) => {
                            tracing::info!(replica = %this.replica, "leading: this replica expires and collects");
                            this.leader.send_replace(true);
                        }
                        Err(e) => tracing::warn!(error = %e, "campaign for leadership failed"),
                    }
                })
            });
            self.keep_alive(id).await;
            if let Some(campaign) = campaign {
                campaign.abort();
            }
            if self.leader.send_replace(false) {
                tracing::warn!(replica = %self.replica, "session lapsed: no longer leading");
            }
            loop {
                tokio::time::sleep(self.options.lease_ttl / 4).await;
                match self.new_session().await {
                    Ok(_) => break,
                    Err(e) => tracing::warn!(error = %e, "cannot start an etcd session; retrying"),
                }
            }
        }
    }

    /// Renews lease `id` every third of its TTL until that fails.
    async fn keep_alive(&self, id: i64) {
        let Ok((mut keeper, mut stream)) = self.client().lease_keep_alive(id).await else {
            return;
        };
        let every = self.options.lease_ttl / 3;
        loop {
            if keeper.keep_alive().await.is_err() {
                return;
            }
            match tokio::time::timeout(self.options.timeout, stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                _ => return,
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Follows reference changes from `revision` on, sending them to the
    /// scheduler; starts over from the last revision seen when the watch
    /// breaks.
    async fn watch_loop(self: Arc<Self>, mut revision: i64) {
        let root = schema::root(&self.options.prefix);
        loop {
            let watched = self
                .client()
                .watch(
                    root.clone(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(revision),
                    ),
                )
                .await;
            let (_watcher, mut stream) = match watched {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch etcd; retrying");
                    tokio::time::sleep(self.options.lease_ttl / 4).await;
                    continue;
                }
            };
            while let Ok(Some(response)) = stream.message().await {
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    revision = revision.max(kv.mod_revision() + 1);
                    let Some(change) = self.change(event.event_type(), kv) else {
                        continue;
                    };
                    if self.changes_tx.send(change).is_err() {
                        return;
                    }
                }
            }
            tracing::warn!("etcd watch ended; resuming");
        }
    }

    fn change(&self, kind: EventType, kv: &etcd_client::KeyValue) -> Option<Change> {
        let key = kv.key_str().ok()?;
        if let Some((repo, tag)) = schema::parse_untag_key(&self.options.prefix, key) {
            // Another replica's purge (this one's dropped the tag already).
            let theirs = matches!(kind, EventType::Put) && kv.value_str().ok()? != self.replica;
            return theirs.then(|| Change::Untag {
                repo: repo.as_str().into(),
                tag: tag.into(),
            });
        }
        let (repo, digest, kind_) = schema::parse_ref_key(&self.options.prefix, key)?;
        Some(match kind {
            EventType::Put => Change::Upsert(Entry {
                repo: repo.as_str().into(),
                digest,
                kind: kind_,
                at: kv.value_str().ok()?.parse().ok()?,
            }),
            EventType::Delete => Change::Remove {
                repo: repo.as_str().into(),
                digest,
                kind: kind_,
            },
        })
    }

    fn key(&self, entry: &Entry) -> String {
        schema::ref_key(&self.options.prefix, &entry.repo, &entry.digest, entry.kind)
    }

    /// Reads every reference into `table`; the revision read at.
    async fn read_all(&self, table: &mut Table, loaded: &mut Loaded) -> Result<i64, MetadataError> {
        let root = schema::root(&self.options.prefix);
        let end = prefix_end(&root);
        let mut start = root.into_bytes();
        let mut revision = 0;
        loop {
            let response = self
                .client()
                .get(
                    start.clone(),
                    Some(GetOptions::new().with_range(end.clone()).with_limit(PAGE)),
                )
                .await
                .map_err(etcd_error)?;
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            for kv in response.kvs() {
                if let Some(Change::Upsert(e)) = self.change(EventType::Put, kv) {
                    table.upsert(&e.repo, &e.digest, e.kind, e.at);
                    loaded.segments += 1;
                }
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok(revision),
            }
        }
    }

    /// Takes over the embedded store's state (a single node becoming a
    /// cluster), then records the version; only the first replica to
    /// record it migrates.
    async fn migrate(&self) -> Result<usize, MetadataError> {
        let mut table = Table::default();
        let loaded = self.embedded.load(&mut table).await?;
        let mut puts = Vec::new();
        for (repo, digest, kind, at) in table.entries_in(0..table.slot_count()) {
            let entry = Entry {
                repo: repo.into(),
                digest: *digest,
                kind,
                at,
            };
            // Only where no replica wrote the entry already.
            puts.push(self.put_if(entry, CompareOp::Equal));
        }
        let results: Vec<_> = futures::stream::iter(puts)
            .buffer_unordered(WRITES)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<_>, _>>()?;
        let version = schema::version_key(&self.options.prefix);
        self.client()
            .txn(
                Txn::new()
                    .when([Compare::version(version.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(version, SCHEMA_VERSION.to_string(), None)]),
            )
            .await
            .map_err(etcd_error)?;
        Ok(loaded.entries)
    }

    /// Writes `entry` if its key's version compares `op` 0 (`Equal`: only
    /// a new key; `Greater`: only an existing one); whether it did.
    async fn put_if(&self, entry: Entry, op: CompareOp) -> Result<bool, MetadataError> {
        let key = self.key(&entry);
        Ok(self
            .client()
            .txn(
                Txn::new()
                    .when([Compare::version(key.clone(), op, 0)])
                    .and_then([TxnOp::put(key, entry.at.to_string(), None)]),
            )
            .await
            .map_err(etcd_error)?
            .succeeded())
    }
}

/// One in-process mutex per lock name, kept only while someone holds or
/// waits for it.
#[derive(Clone, Default)]
struct LocalLocks(Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>);

impl LocalLocks {
    async fn acquire(&self, name: &str) -> LocalGuard {
        let mutex = Arc::clone(lock(&self.0).entry(name.to_owned()).or_default());
        LocalGuard {
            guard: Some(mutex.lock_owned().await),
            locks: self.clone(),
            name: name.to_owned(),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

/// A held in-process lock; the last one out forgets the name.
struct LocalGuard {
    guard: Option<OwnedMutexGuard<()>>,
    locks: LocalLocks,
    name: String,
}

impl Drop for LocalGuard {
    fn drop(&mut self) {
        self.guard = None;
        let mut map = lock(&self.locks.0);
        // Waiters hold a clone: only the map's own reference means idle.
        if map
            .get(&self.name)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.name);
        }
    }
}

/// An etcd lock and the in-process guard in front of it.
struct EtcdLock {
    client: Client,
    key: Vec<u8>,
    _local: LocalGuard,
}

#[async_trait]
impl Unlock for EtcdLock {
    async fn unlock(mut self: Box<Self>) {
        if let Err(e) = self.client.unlock(self.key.clone()).await {
            // The session's lease frees it at the latest.
            tracing::warn!(error = %e, "could not release an etcd lock");
        }
    }
}

#[async_trait]
impl Persistence for Etcd {
    fn describe(&self) -> String {
        format!(
            "etcd {} (prefix {}, replica {})",
            self.options.endpoints.join(","),
            self.options.prefix,
            self.replica
        )
    }
    async fn load(&self, table: &mut Table) -> Result<Loaded, MetadataError> {
        let version = self
            .client()
            .get(schema::version_key(&self.options.prefix), None)
            .await
            .map_err(etcd_error)?;
        let mut loaded = Loaded::default();
        match version
            .kvs()
            .first()
            .map(|kv| kv.value_str().unwrap_or("?"))
        {
            Some(v) if v == SCHEMA_VERSION.to_string() => {}
            Some(found) => {
                return Err(MetadataError::UnknownSchema {
                    found: found.to_owned(),
                });
            }
            None => loaded.imported = self.migrate().await?,
        }
        let revision = self.read_all(table, &mut loaded).await?;
        loaded.entries = table.len();
        if let Some(this) = self.me.upgrade() {
            lock(&self.tasks).push(tokio::spawn(this.watch_loop(revision + 1)));
        }
        Ok(loaded)
    }

    async fn persist(
        &self,
        changes: Vec<Change>,
        _table: &dyn SnapshotSource,
    ) -> Result<(), MetadataError> {
        let mut retry = self.retry.lock().await;
        let mut entries = std::mem::take(&mut *retry);
        // The newest access of each entry; removals were written when made.
        entries.extend(changes.into_iter().filter_map(|change| match change {
            Change::Upsert(entry) => Some(entry),
            Change::Remove { .. } | Change::Untag { .. } => None,
        }));
        let mut newest: HashMap<(Box<str>, Digest, Kind), Secs> = HashMap::new();
        for entry in &entries {
            let at_most = newest
                .entry((entry.repo.clone(), entry.digest, entry.kind))
                .or_default();
            *at_most = (*at_most).max(entry.at);
        }
        // Only entries that still exist: a leader may have expired one.
        let newest: Vec<Entry> = newest
            .into_iter()
            .map(|((repo, digest, kind), at)| Entry {
                repo,
                digest,
                kind,
                at,
            })
            .collect();
        let writes: Vec<_> = newest
            .iter()
            .cloned()
            .map(|entry| self.put_if(entry, CompareOp::Greater))
            .collect();
        let results: Vec<_> = futures::stream::iter(writes)
            .buffer_unordered(WRITES)
            .collect()
            .await;
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            *retry = newest;
            return Err(e);
        }
        Ok(())
    }

    async fn put_now(&self, entry: &Entry, must_exist: bool) -> Result<bool, MetadataError> {
        if must_exist {
            return self.put_if(entry.clone(), CompareOp::Greater).await;
        }
        self.client()
            .put(self.key(entry), entry.at.to_string(), None)
            .await
            .map_err(etcd_error)?;
        Ok(true)
    }

    async fn remove(&self, entry: &Entry) -> Result<Option<Secs>, MetadataError> {
        let key = self.key(entry);
        let response = self
            .client()
            .txn(
                Txn::new()
                    .when([Compare::value(
                        key.clone(),
                        CompareOp::Equal,
                        entry.at.to_string(),
                    )])
                    .and_then([TxnOp::delete(key.clone(), None)])
                    .or_else([TxnOp::get(key, None)]),
            )
            .await
            .map_err(etcd_error)?;
        if response.succeeded() {
            return Ok(None);
        }
        let newer = response.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .and_then(|kv| kv.value_str().ok()?.parse::<Secs>().ok()),
            _ => None,
        });
        // Absent: removed already (by an earlier leader).
        Ok(newer.filter(|&at| at > entry.at))
    }
}

#[async_trait]
impl Coordination for Etcd {
    fn shared(&self) -> bool {
        true
    }

    async fn referenced(&self, digest: &Digest) -> Result<bool, MetadataError> {
        let counts: Vec<TxnOp> = self
            .namespaces
            .iter()
            .flat_map(|ns| {
                KINDS.map(|kind| {
                    TxnOp::get(
                        schema::digest_refs(&self.options.prefix, ns, kind, digest),
                        Some(GetOptions::new().with_prefix().with_count_only()),
                    )
                })
            })
            .collect();
        let response = self
            .client()
            .txn(Txn::new().and_then(counts))
            .await
            .map_err(etcd_error)?;
        Ok(response
            .op_responses()
            .into_iter()
            .any(|r| matches!(r, TxnOpResponse::Get(g) if g.count() > 0)))
    }

    async fn lock(&self, digest: &Digest, kind: LockKind) -> Result<DigestLock, MetadataError> {
        let name = match kind {
            LockKind::Fill => schema::lock_key(&self.options.prefix, digest),
            LockKind::Content => {
                format!("{}/content", schema::lock_key(&self.options.prefix, digest))
            }
        };
        let guard = self.local.acquire(&name).await;
        let session = self.session.load(Ordering::SeqCst);
        let response = self
            .waiting
            .clone()
            .lock(name, Some(LockOptions::new().with_lease(session)))
            .await
            .map_err(etcd_error)?;
        Ok(DigestLock::held(Box::new(EtcdLock {
            client: self.client(),
            key: response.key().to_vec(),
            _local: guard,
        })))
    }

    fn leader(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    async fn publish_leases(&self, digests: &HashSet<Digest>) -> Result<(), MetadataError> {
        // One key per LEASES_PER_KEY digests (`<replica>/<n>`), each put in
        // a request of its own: etcd refuses requests over 1.5 MiB, which
        // one key of every digest passed at about 23,000 of them. The new
        // keys go first, then the old ones past them: a digest leased
        // throughout is never missing meanwhile.
        let mine = format!(
            "{}{}/",
            schema::leases_root(&self.options.prefix),
            self.replica
        );
        let mut client = self.client();
        let session = self.session.load(Ordering::SeqCst);
        let hexes: Vec<String> = digests.iter().map(hex::encode).collect();
        let chunks: Vec<&[String]> = hexes.chunks(LEASES_PER_KEY).collect();
        for (n, chunk) in chunks.iter().enumerate() {
            client
                .put(
                    format!("{mine}{n:06}"),
                    chunk.join("\n"),
                    Some(PutOptions::new().with_lease(session)),
                )
                .await
                .map_err(etcd_error)?;
        }
        // Every key of this replica from the first unused number on, in one
        // range delete.
        let stale_from = format!("{mine}{:06}", chunks.len());
        client
            .delete(
                stale_from,
                Some(DeleteOptions::new().with_range(prefix_end(&mine))),
            )
            .await
            .map_err(etcd_error)?;
        Ok(())
    }

    async fn remote_leases(&self) -> Result<HashSet<Digest>, MetadataError> {
        let root = schema::leases_root(&self.options.prefix);
        let mine = format!("{root}{}/", self.replica);
        let end = prefix_end(&root);
        let mut start = root.into_bytes();
        let mut leased = HashSet::new();
        loop {
            // A few keys per answer: each holds up to LEASES_PER_KEY digests,
            // and an answer must stay under the client's 4 MiB message limit.
            let response = self
                .client()
                .get(
                    start.clone(),
                    Some(GetOptions::new().with_range(end.clone()).with_limit(4)),
                )
                .await
                .map_err(etcd_error)?;
            for kv in response.kvs() {
                if kv.key().starts_with(mine.as_bytes()) {
                    continue;
                }
                for hex in kv.value_str().unwrap_or("").lines() {
                    let mut digest = [0; 32];
                    if hex::decode_to_slice(hex, &mut digest).is_ok() {
                        leased.insert(Digest::from_raw(digest));
                    }
                }
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok(leased),
            }
        }
    }

    fn changes(&self) -> Option<mpsc::UnboundedReceiver<Change>> {
        lock(&self.changes).take()
    }

    async fn publish_untag(&self, repo: &str, tag: &str) -> Result<(), MetadataError> {
        // Put, then deleted: each replica's watch sees the put.
        let key = schema::untag_key(&self.options.prefix, repo, tag);
        let mut client = self.client();
        let put = client.put(key.clone(), self.replica.clone(), None).await;
        put.map_err(etcd_error)?;
        client.delete(key, None).await.map_err(etcd_error)?;
        Ok(())
    }

    async fn ready(&self) -> Result<(), MetadataError> {
        // One cheap read under the client's request timeout.
        self.client()
            .get(
                schema::version_key(&self.options.prefix),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map_err(etcd_error)?;
        Ok(())
    }

    async fn close(&self) {
        for task in std::mem::take(&mut *lock(&self.tasks)) {
            task.abort();
        }
        self.leader.send_replace(false);
        let session = self.session.load(Ordering::SeqCst);
        // Revoking the session frees its locks, leases and candidacy now
        // rather than after its TTL.
        if let Err(e) = self.client().lease_revoke(session).await {
            tracing::warn!(error = %e, "could not end the etcd session");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_process_locks_exclude_and_are_forgotten_when_idle() {
        let locks = LocalLocks::default();
        let first = locks.acquire("a").await;
        let other = locks.acquire("b").await;
        let waiter = tokio::spawn({
            let locks = locks.clone();
            async move { locks.acquire("a").await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a is held");
        drop(first);
        let second = waiter.await.expect("waiter");
        assert_eq!(locks.len(), 2, "held names are kept");
        drop((second, other));
        assert_eq!(locks.len(), 0, "idle names are forgotten");
    }
}
