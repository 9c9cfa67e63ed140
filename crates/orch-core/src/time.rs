//! Wall-clock timestamps carried in events.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC. Displays as RFC 3339
/// (`2026-11-23T08:04:07.123Z`).
///
/// ```
/// use orch_core::Timestamp;
/// assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
/// assert_eq!(Timestamp(1_795_421_047_123).to_string(), "2026-11-23T08:04:07.123Z");
/// ```
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current time (0 if the clock is before 1970).
    pub fn now() -> Self {
        Timestamp::from(SystemTime::now())
    }

    /// Milliseconds from `earlier` to `self`, 0 if `earlier` is later.
    pub fn millis_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// As a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        // Seconds times 1000 in 64 bits (`as_millis` is 128-bit): made
        // for every event. Saturates 584 million years from now.
        Timestamp(t.duration_since(UNIX_EPOCH).map_or(0, |d| {
            d.as_secs()
                .saturating_mul(1000)
                .saturating_add(u64::from(d.subsec_millis()))
        }))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_rfc3339_millis(self.to_system_time()).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_system_time_truncates_to_whole_milliseconds() {
        let at =
            UNIX_EPOCH + Duration::from_millis(1_795_421_047_123) + Duration::from_nanos(999_999);
        assert_eq!(Timestamp::from(at), Timestamp(1_795_421_047_123));
        assert_eq!(
            Timestamp::from(at).to_system_time(),
            at - Duration::from_nanos(999_999)
        );
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(Timestamp::from(before), Timestamp(0));
    }
}
