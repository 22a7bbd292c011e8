//! The scheduler's state in storage, through the driver: numbered segments
//! under [`dir`] (the embedded metadata store's format). A log segment holds the changes of one flush; a snapshot
//! segment holds every entry. Loading takes the newest intact snapshot and
//! replays the logs numbered after it. Every record states an entry's whole
//! state, so replaying one twice changes nothing: a snapshot taken while
//! entries change stays correct with the logs that follow it.
//!
//! A segment becomes visible whole (put or writer commit) and ends with a
//! CRC-32 of its bytes, so a torn or foreign file is detected and skipped.

use bytes::Bytes;
use driver_core::{Segment, StorageDriver, StoragePath};

use crate::metadata::Change;
use crate::metadata::table::{Secs, Table};
use crate::oci::{Digest, Kind};

static REGISTRY_PROXY: Segment = Segment::from_static("registry-proxy");
static METADATA: Segment = Segment::from_static("metadata");
static LOG: Segment = Segment::from_static("log");
static SNAPSHOT: Segment = Segment::from_static("snapshot");

/// `/registry-proxy/metadata`: the embedded metadata store's directory.
pub fn metadata_dir() -> StoragePath {
    StoragePath::root().descend([&REGISTRY_PROXY, &METADATA])
}

/// `/registry-proxy/metadata/v1/journal`: where the segments of metadata
/// schema version 1 live.
pub fn dir() -> StoragePath {
    static V1: Segment = Segment::from_static("v1");
    static JOURNAL: Segment = Segment::from_static("journal");
    metadata_dir().descend([&V1, &JOURNAL])
}

/// `/registry-proxy/scheduler`: where the segments lived before the schema
/// had a version.
pub fn legacy_dir() -> StoragePath {
    static SCHEDULER: Segment = Segment::from_static("scheduler");
    StoragePath::root().descend([&REGISTRY_PROXY, &SCHEDULER])
}

const MAGIC: &[u8; 8] = b"RPXSCHD1";
const UPSERT: u8 = 1;
const REMOVE: u8 = 2;

/// The records of `changes`: an upsert (an entry and its access time) or a
/// removal each.
pub fn encode(changes: impl IntoIterator<Item = Change>) -> Vec<u8> {
    let mut buf = Vec::new();
    for change in changes {
        match change {
            Change::Upsert(e) => encode_record(&mut buf, UPSERT, &e.repo, &e.digest, e.kind, e.at),
            Change::Remove { repo, digest, kind } => {
                encode_record(&mut buf, REMOVE, &repo, &digest, kind, 0);
            }
            // News for other replicas, not state.
            Change::Untag { .. } => {}
        }
    }
    buf
}

fn encode_record(buf: &mut Vec<u8>, op: u8, repo: &str, digest: &Digest, kind: Kind, at: Secs) {
    // Repository names are at most 255 bytes (validated before they get here).
    let name = &repo.as_bytes()[..repo.len().min(u16::MAX as usize)];
    buf.push(op);
    buf.push(kind.code());
    buf.extend_from_slice(&at.to_le_bytes());
    buf.extend_from_slice(digest.as_ref());
    buf.extend_from_slice(&(name.len() as u16).to_le_bytes());
    buf.extend_from_slice(name);
}

/// A segment that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// Missing magic or checksum mismatch: torn, truncated or not ours.
    #[error("segment {0} is damaged (bad header or checksum)")]
    Damaged(String),
    /// A record does not parse.
    #[error("segment {0} has a malformed record at byte {1}")]
    Malformed(String, usize),
}

/// Frames a segment written in pieces: [`Framer::start`] gives the header,
/// every piece of records goes through [`Framer::piece`], and
/// [`Framer::finish`] gives the trailer.
pub struct Framer(crc32fast::Hasher);

impl Framer {
    /// A new segment and its header.
    pub fn start() -> (Self, Bytes) {
        let mut crc = crc32fast::Hasher::new();
        crc.update(MAGIC);
        (Self(crc), Bytes::from_static(MAGIC))
    }

    /// Records of the segment, in order.
    pub fn piece(&mut self, records: &[u8]) {
        self.0.update(records);
    }

    /// The trailer: the CRC-32 of header and records.
    pub fn finish(self) -> Bytes {
        Bytes::copy_from_slice(&self.0.finalize().to_le_bytes())
    }
}

/// Frames `records` as one segment: header, records, trailer.
pub fn frame(records: &[u8]) -> Bytes {
    let (mut framer, header) = Framer::start();
    framer.piece(records);
    let mut out = Vec::with_capacity(records.len() + header.len() + 4);
    out.extend_from_slice(&header);
    out.extend_from_slice(records);
    out.extend_from_slice(&framer.finish());
    Bytes::from(out)
}

/// Applies a segment's records to `table`; returns how many it held. Checks
/// the whole segment before changing anything.
pub fn apply(name: &str, segment: &[u8], table: &mut Table) -> Result<usize, SegmentError> {
    let damaged = || SegmentError::Damaged(name.to_owned());
    let body_end = segment.len().checked_sub(4).ok_or_else(damaged)?;
    if body_end < MAGIC.len() || &segment[..MAGIC.len()] != MAGIC {
        return Err(damaged());
    }
    let mut crc = [0; 4];
    crc.copy_from_slice(&segment[body_end..]);
    if crc32fast::hash(&segment[..body_end]) != u32::from_le_bytes(crc) {
        return Err(damaged());
    }
    let records = &segment[MAGIC.len()..body_end];
    // Check every record first, so that a malformed one changes nothing.
    let count = parse(name, records, |_| {})?;
    parse(name, records, |r| {
        if r.op == UPSERT {
            table.upsert(r.repo, &r.digest, r.kind, r.at);
        } else {
            table.remove(r.repo, &r.digest, r.kind);
        }
    })?;
    Ok(count)
}

struct Record<'a> {
    op: u8,
    kind: Kind,
    at: Secs,
    digest: Digest,
    repo: &'a str,
}

/// Calls `each` with every record of `records`; returns how many.
fn parse<'a>(
    name: &str,
    records: &'a [u8],
    mut each: impl FnMut(Record<'a>),
) -> Result<usize, SegmentError> {
    let mut pos = 0;
    let mut count = 0;
    while pos < records.len() {
        let malformed = || SegmentError::Malformed(name.to_owned(), MAGIC.len() + pos);
        let head = records.get(pos..pos + 40).ok_or_else(malformed)?;
        let op = head[0];
        let kind = Kind::from_code(head[1]).ok_or_else(malformed)?;
        if !matches!(op, UPSERT | REMOVE) {
            return Err(malformed());
        }
        let at = Secs::from_le_bytes([head[2], head[3], head[4], head[5]]);
        let mut digest = [0; 32];
        digest.copy_from_slice(&head[6..38]);
        let len = u16::from_le_bytes([head[38], head[39]]) as usize;
        let repo = records
            .get(pos + 40..pos + 40 + len)
            .and_then(|r| std::str::from_utf8(r).ok())
            .ok_or_else(malformed)?;
        each(Record {
            op,
            kind,
            at,
            digest: Digest::from_raw(digest),
            repo,
        });
        pos += 40 + len;
        count += 1;
    }
    Ok(count)
}

/// What a segment file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SegmentKind {
    /// Changes of one flush.
    Log,
    /// Every entry.
    Snapshot,
}

/// A segment's number and kind, from its file name.
pub fn parse_name(name: &str) -> Option<(u64, SegmentKind)> {
    let (kind, seq) = if let Some(seq) = name.strip_prefix("log-") {
        (SegmentKind::Log, seq)
    } else {
        (SegmentKind::Snapshot, name.strip_prefix("snapshot-")?)
    };
    (seq.len() == 16)
        .then(|| u64::from_str_radix(seq, 16).ok())
        .flatten()
        .map(|seq| (seq, kind))
}

/// The path of segment `seq` of `kind` in `dir`.
pub fn segment_path(dir: &StoragePath, seq: u64, kind: SegmentKind) -> StoragePath {
    let prefix = match kind {
        SegmentKind::Log => &LOG,
        SegmentKind::Snapshot => &SNAPSHOT,
    };
    // `<prefix>-<16 hex digits>`.
    dir.child(&prefix.dashed(&Segment::hex(&seq.to_be_bytes())))
}

/// The segments present in `dir`, ordered by number.
pub async fn list(
    driver: &dyn StorageDriver,
    dir: &StoragePath,
) -> driver_core::Result<Vec<(u64, SegmentKind)>> {
    let mut found: Vec<_> = match driver.list(dir).await {
        Ok(paths) => paths
            .iter()
            .filter_map(|p| p.file_name().and_then(parse_name))
            .collect(),
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => return Err(e),
    };
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::table::Entry;

    #[test]
    fn a_segment_round_trips_and_damage_is_detected() {
        let entry = |repo: &str, raw: u8, kind, at| Entry {
            repo: repo.into(),
            digest: Digest::from_raw([raw; 32]),
            kind,
            at,
        };
        let buf = encode([
            Change::Upsert(entry("library/alpine", 7, Kind::Blob, 42)),
            Change::Upsert(entry("a/b", 8, Kind::Manifest, 43)),
            Change::Remove {
                repo: "library/alpine".into(),
                digest: Digest::from_raw([7; 32]),
                kind: Kind::Blob,
            },
        ]);
        let segment = frame(&buf);
        let mut table = Table::default();
        assert_eq!(apply("s", &segment, &mut table).expect("applies"), 3);
        assert_eq!(table.len(), 1);
        assert_eq!(
            table.access_time("a/b", &Digest::from_raw([8; 32]), Kind::Manifest),
            Some(43)
        );
        for cut in [0, 5, 12, segment.len() - 1] {
            let mut t = Table::default();
            assert!(apply("s", &segment[..cut], &mut t).is_err(), "cut at {cut}");
            assert!(t.is_empty());
        }
        let mut flipped = segment.to_vec();
        flipped[20] ^= 1;
        assert!(matches!(
            apply("s", &flipped, &mut Table::default()),
            Err(SegmentError::Damaged(_))
        ));
    }

    #[test]
    fn names_round_trip() {
        for kind in [SegmentKind::Log, SegmentKind::Snapshot] {
            let path = segment_path(&dir(), 0xab, kind);
            assert_eq!(
                parse_name(path.file_name().expect("name")),
                Some((0xab, kind))
            );
        }
        assert_eq!(parse_name("log-12"), None);
        assert_eq!(parse_name("scheduler-state.json"), None);
    }
}
