//! Taking over registry:2's expiries: its proxy keeps them in one JSON file,
//! `/scheduler-state.json`, an object whose values are
//! `{"Key": "<repo>@<digest>" or "<repo>", "ExpiryData": RFC 3339, "EntryType": 0 blob | 1 manifest}`.
//! A key without a digest stands for every manifest of the repository.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use driver_core::{Segment, StorageDriver, StoragePath};
use serde::Deserialize;

use crate::clock::to_secs;
use crate::layout;
use crate::layout::RepoKey;
use crate::metadata::table::{Secs, Table};
use crate::oci::Kind;
use crate::oci::{Digest, RepoName};

/// registry:2's state file, at the root of its storage.
static STATE: Segment = Segment::from_static("scheduler-state.json");

#[derive(Deserialize)]
struct Registry2Entry {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "ExpiryData")]
    expiry: String,
    #[serde(rename = "EntryType")]
    entry_type: u8,
}

/// Reads registry:2's state, if there is one, into `table`. An entry keeps registry:2's expiry: its access
/// time is the expiry minus `ttl`. Returns the entries taken over.
pub async fn import(
    driver: &dyn StorageDriver,
    ttl: Secs,
    table: &mut Table,
) -> Result<usize, driver_core::Error> {
    let path = StoragePath::root().child(&STATE);
    let bytes = match driver.get_content(&path).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(0),
        Err(e) => return Err(e),
    };
    let entries: HashMap<String, Registry2Entry> = match serde_json::from_slice(&bytes) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring registry:2's unreadable {path}");
            return Ok(0);
        }
    };
    let mut imported = 0;
    for entry in entries.values() {
        let (Some(kind), Some(expiry)) = (
            Kind::from_code(entry.entry_type),
            parse_rfc3339(&entry.expiry),
        ) else {
            tracing::warn!(
                key = entry.key,
                "ignoring an unreadable registry:2 scheduler entry"
            );
            continue;
        };
        let at = to_secs(expiry).saturating_sub(ttl);
        let (name, digest) = match entry.key.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (entry.key.as_str(), None),
        };
        let Ok(repo) = RepoName::parse(name) else {
            continue;
        };
        // registry:2's repositories are those of the plain namespace.
        let repo = RepoKey::new(None, &repo);
        let digests = match digest.map(Digest::parse) {
            Some(Ok(d)) => vec![d],
            Some(Err(_)) => continue,
            None => revisions(driver, &repo).await?,
        };
        for digest in digests {
            table.upsert(repo.as_str(), &digest, kind, at);
            imported += 1;
        }
    }
    tracing::info!(imported, "took over registry:2's scheduler state");
    Ok(imported)
}

/// The manifests of `repo` (its revision links).
async fn revisions(
    driver: &dyn StorageDriver,
    repo: &RepoKey,
) -> Result<Vec<Digest>, driver_core::Error> {
    match driver.list(&layout::revisions_dir(repo)).await {
        Ok(paths) => Ok(paths
            .iter()
            .filter_map(|p| p.file_name())
            .filter_map(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
            .collect()),
        Err(e) if e.is_not_found() => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Go's RFC 3339 times: `Z` or a `±hh:mm` offset, optional fractions.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if let Some(utc) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        return humantime::parse_rfc3339_weak(utc).ok();
    }
    let (local, offset) = s.split_at(s.len().checked_sub(6)?);
    let sign = match offset.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (hours, minutes) = offset[1..].split_once(':')?;
    let offset =
        Duration::from_secs(hours.parse::<u64>().ok()? * 3600 + minutes.parse::<u64>().ok()? * 60);
    let local = humantime::parse_rfc3339_weak(local).ok()?;
    // Local time = UTC + offset.
    if sign > 0 {
        local.checked_sub(offset)
    } else {
        local.checked_add(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn go_times_parse_with_any_offset() {
        let utc = parse_rfc3339("2024-05-01T10:00:00.123456789Z").expect("utc");
        assert_eq!(to_secs(utc), 1_714_557_600);
        let plus = parse_rfc3339("2024-05-01T12:00:00+02:00").expect("offset");
        assert_eq!(to_secs(plus), 1_714_557_600);
        let minus = parse_rfc3339("2024-05-01T05:30:00.5-04:30").expect("offset");
        assert_eq!(to_secs(minus), 1_714_557_600);
        assert!(parse_rfc3339("yesterday").is_none());
        assert!(parse_rfc3339("2024-05-01T10:00:00+0200").is_none());
        assert!(UNIX_EPOCH < utc);
    }
}
