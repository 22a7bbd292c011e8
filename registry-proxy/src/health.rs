//! Whether storage answers, as the debug listener's probes report it:
//! checked on each probe, or (distribution's `health.storagedriver`)
//! periodically, unhealthy after `threshold` failures in a row.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use driver_core::{StorageDriver, StoragePath};

/// `health.storagedriver`: how often storage is checked, and how many
/// failures in a row make the cache unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageCheck {
    /// Between checks.
    pub interval: Duration,
    /// Failures in a row that count (at least 1).
    pub threshold: u32,
}

/// Whether `driver` answers: `Err` with why not.
pub async fn probe(driver: &dyn StorageDriver) -> Result<(), String> {
    match driver.stat(&StoragePath::root()).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(format!("storage: {e}")),
    }
}

/// The outcome of the periodic checks.
#[derive(Debug)]
pub struct StorageHealth {
    threshold: u32,
    /// Failures in a row.
    failures: AtomicU32,
    /// Why the last check failed.
    last: Mutex<Option<String>>,
}

impl StorageHealth {
    /// No check has failed yet.
    pub fn new(threshold: u32) -> Self {
        Self {
            threshold: threshold.max(1),
            failures: AtomicU32::new(0),
            last: Mutex::new(None),
        }
    }

    /// Checks `driver` every `check.interval` for as long as the runtime
    /// runs.
    pub fn start(driver: Arc<dyn StorageDriver>, check: StorageCheck) -> Arc<Self> {
        let health = Arc::new(Self::new(check.threshold));
        let recorder = Arc::clone(&health);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(check.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                recorder.record(probe(&*driver).await);
            }
        });
        health
    }

    /// Notes one check's outcome.
    pub fn record(&self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => self.failures.store(0, Ordering::Relaxed),
            Err(why) => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures == self.threshold {
                    tracing::warn!(failures, error = %why, "storage health check failing");
                }
                *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
            }
        }
    }

    /// `Err` with the last failure once `threshold` checks in a row failed.
    pub fn state(&self) -> Result<(), String> {
        let failures = self.failures.load(Ordering::Relaxed);
        if failures < self.threshold {
            return Ok(());
        }
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        Err(format!(
            "{} ({failures} checks in a row failed)",
            last.as_deref().unwrap_or("storage")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fewer failures in a row than the threshold are healthy; reaching
    /// it is not, with the last reason; one success resets the count.
    #[test]
    fn unhealthy_after_threshold_failures_in_a_row() {
        let health = StorageHealth::new(3);
        health.record(Err("one".into()));
        health.record(Err("two".into()));
        assert_eq!(health.state(), Ok(()));
        health.record(Ok(()));
        health.record(Err("a".into()));
        health.record(Err("b".into()));
        assert_eq!(health.state(), Ok(()));
        health.record(Err("c".into()));
        let why = health.state().expect_err("three in a row");
        assert!(why.starts_with("c (3 checks"), "{why}");
        health.record(Ok(()));
        assert_eq!(health.state(), Ok(()));
    }
}
