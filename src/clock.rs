//! The one time source for decisions.
//!
//! Every decision (is a refill due? when does the next one come? has a token
//! expired?) reads the time from a [`Clock`]. Production code uses
//! [`SystemClock`]; tests inject a [`FakeClock`] and advance it by hand, so no
//! test ever sleeps to let time pass.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};

/// A source of the current time.
///
/// Implementations must be cheap to call: the layer reads the clock once per
/// request.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to. Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use tower_tickets::{Clock, FakeClock};
///
/// let clock = FakeClock::at("2026-03-29T10:00:00Z".parse().unwrap());
/// clock.advance(Duration::from_secs(3600));
/// assert_eq!(clock.now().to_rfc3339(), "2026-03-29T11:00:00+00:00");
/// ```
#[derive(Debug, Clone)]
pub struct FakeClock {
    millis: Arc<AtomicI64>,
}

impl FakeClock {
    /// A clock stopped at `start` (kept to millisecond precision).
    pub fn at(start: DateTime<Utc>) -> Self {
        Self {
            millis: Arc::new(AtomicI64::new(start.timestamp_millis())),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.millis.fetch_add(by, Ordering::SeqCst);
    }

    /// Moves the clock to `to`, forwards or backwards.
    pub fn set(&self, to: DateTime<Utc>) {
        self.millis.store(to.timestamp_millis(), Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.millis.load(Ordering::SeqCst))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// Reads `clock` and truncates to whole milliseconds, the precision every
/// store keeps, so that all backends agree on the same instants.
pub(crate) fn now_millis(clock: &dyn Clock) -> DateTime<Utc> {
    let now = clock.now();
    let nanos = now.nanosecond();
    // Dropping the sub-millisecond part leaves the date alone: no second
    // conversion from a timestamp (the layer does this on every request).
    // A leap second (nanos past 1e9) takes the timestamp's way, which moves
    // it into the next second.
    if nanos < 1_000_000_000
        && let Some(truncated) = now.naive_utc().with_nanosecond(nanos - nanos % 1_000_000)
    {
        return truncated.and_utc();
    }
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct At(DateTime<Utc>);

    impl Clock for At {
        fn now(&self) -> DateTime<Utc> {
            self.0
        }
    }

    fn truncated(at: &str) -> String {
        now_millis(&At(at.parse().unwrap())).to_rfc3339()
    }

    #[test]
    fn now_is_truncated_to_whole_milliseconds() {
        assert_eq!(
            truncated("2026-03-29T10:00:00.123456789Z"),
            "2026-03-29T10:00:00.123+00:00"
        );
        assert_eq!(
            truncated("2026-03-29T23:59:59.999999999Z"),
            "2026-03-29T23:59:59.999+00:00"
        );
        assert_eq!(
            truncated("1969-12-31T23:59:59.999500Z"),
            "1969-12-31T23:59:59.999+00:00"
        );
        // A leap second is read as the second after it, as a timestamp would.
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|day| day.and_hms_nano_opt(23, 59, 59, 1_500_600_000))
            .unwrap()
            .and_utc();
        assert_eq!(
            now_millis(&At(leap)).to_rfc3339(),
            "2017-01-01T00:00:00.500+00:00"
        );
    }
}
