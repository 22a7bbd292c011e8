//! Wall-clock time for expiries, derived from tokio's clock so that tests
//! move it with paused time (`tokio::time::pause` and `advance`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Seconds since the Unix epoch.
pub type Secs = u32;

/// A wall clock that advances with tokio's clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: SystemTime,
    base: Instant,
}

impl Clock {
    /// The system's time now, advancing from here with tokio's clock.
    pub fn system() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// A clock that reads `wall` now.
    pub fn starting_at(wall: SystemTime) -> Self {
        Self {
            wall,
            base: Instant::now(),
        }
    }

    /// The time now.
    pub fn now(&self) -> SystemTime {
        self.wall + self.base.elapsed()
    }

    /// Whole seconds since the Unix epoch now.
    pub fn now_secs(&self) -> Secs {
        to_secs(self.now())
    }

    /// The tokio instant at which this clock reads `secs`.
    pub fn instant_at(&self, secs: Secs) -> Instant {
        let at = UNIX_EPOCH + Duration::from_secs(secs.into());
        match at.duration_since(self.wall) {
            Ok(ahead) => self.base + ahead,
            Err(_) => self.base,
        }
    }
}

/// Whole seconds since the Unix epoch (saturating into [`Secs`]).
pub fn to_secs(t: SystemTime) -> Secs {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Secs::try_from(secs).unwrap_or(Secs::MAX)
}
