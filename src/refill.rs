//! When a kind's balance is topped up to capacity.
//!
//! A refill is *due* when the last refill happened at or before the
//! [`cutoff`](Refill::cutoff) for the current instant. Applying it sets the
//! balance to `max(balance, capacity)` (a refill never takes away tickets that
//! a grant added) and records the current instant as the last refill, so a
//! refill happens at most once per period.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Days, LocalResult, NaiveDate, NaiveTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

/// A kind's refill schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refill {
    /// Every `period` since the last refill (the reference app's rule: 24 h
    /// after the last reset, the balance is reset again).
    Rolling {
        /// Time between refills; at least one millisecond.
        period: Duration,
    },
    /// Every day at a wall-clock time in a named time zone, e.g. midnight in
    /// `Europe/Paris`, whatever the daylight-saving offset that day.
    Calendar {
        /// Local time of day of the refill.
        at: NaiveTime,
        /// Time zone in which `at` is read.
        tz: Tz,
    },
}

impl Default for Refill {
    /// Rolling, every 24 hours.
    fn default() -> Self {
        Self::Rolling {
            period: Duration::from_secs(24 * 3600),
        }
    }
}

impl fmt::Display for Refill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rolling { period } => write!(f, "every {}s", period.as_secs_f64()),
            Self::Calendar { at, tz } => write!(f, "daily at {at} {tz}"),
        }
    }
}

impl Refill {
    /// A rolling refill every `period`.
    pub fn rolling(period: Duration) -> Self {
        Self::Rolling { period }
    }

    /// A calendar refill every day at `at` local time in `tz`.
    pub fn daily_at(at: NaiveTime, tz: Tz) -> Self {
        Self::Calendar { at, tz }
    }

    /// The length of a period in whole seconds, as announced in the
    /// `RateLimit-Policy` header's `w` parameter (a calendar refill is daily).
    pub fn window_secs(&self) -> u64 {
        match self {
            Self::Rolling { period } => period.as_secs().max(1),
            Self::Calendar { .. } => 24 * 3600,
        }
    }

    /// The latest last-refill instant at which a refill is due at `now`.
    ///
    /// A store applies the refill when `last_refill <= cutoff(now)`. Stores
    /// that cannot compute calendars themselves (a Lua script) receive this
    /// instant precomputed.
    pub fn cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Self::Rolling { period } => now - to_delta(*period),
            Self::Calendar { at, tz } => {
                let today = now.with_timezone(tz).date_naive();
                let boundary = match occurrence(today, *at, *tz) {
                    b if b <= now => b,
                    _ => occurrence(previous_day(today), *at, *tz),
                };
                boundary - TimeDelta::milliseconds(1)
            }
        }
    }

    /// Whether a refill is due at `now` for a balance last refilled at
    /// `last_refill`.
    pub fn is_due(&self, last_refill: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        last_refill <= self.cutoff(now)
    }

    /// The instant of the first refill after `last_refill`.
    pub fn next_after(&self, last_refill: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Self::Rolling { period } => last_refill + to_delta(*period),
            Self::Calendar { at, tz } => {
                let mut day = previous_day(last_refill.with_timezone(tz).date_naive());
                loop {
                    let candidate = occurrence(day, *at, *tz);
                    if candidate > last_refill {
                        return candidate;
                    }
                    day = day.checked_add_days(Days::new(1)).unwrap_or(day);
                    if day == NaiveDate::MAX {
                        return DateTime::<Utc>::MAX_UTC;
                    }
                }
            }
        }
    }
}

fn to_delta(period: Duration) -> TimeDelta {
    TimeDelta::from_std(period).unwrap_or(TimeDelta::MAX)
}

fn previous_day(day: NaiveDate) -> NaiveDate {
    day.checked_sub_days(Days::new(1)).unwrap_or(day)
}

/// The instant at which local time `at` occurs on `day` in `tz`.
///
/// When daylight saving makes the time occur twice, the earlier instant wins;
/// when it skips the time, the refill happens at the end of the gap.
fn occurrence(day: NaiveDate, at: NaiveTime, tz: Tz) -> DateTime<Utc> {
    let local = day.and_time(at);
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
        LocalResult::None => {
            // Walk forward minute by minute out of the gap (gaps last hours at most).
            let mut probe = local;
            loop {
                probe += TimeDelta::minutes(1);
                if let Some(t) = tz.from_local_datetime(&probe).earliest() {
                    return t.with_timezone(&Utc);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn rolling_is_due_exactly_one_period_after_the_last_refill() {
        let daily = Refill::default();
        let last = t("2026-01-01T10:00:00Z");
        assert!(!daily.is_due(last, t("2026-01-02T09:59:59.999Z")));
        assert!(daily.is_due(last, t("2026-01-02T10:00:00Z")));
        assert_eq!(daily.next_after(last), t("2026-01-02T10:00:00Z"));
    }

    #[test]
    fn calendar_midnight_paris_across_spring_forward() {
        // 2026-03-29: clocks go from 02:00 CET to 03:00 CEST; that day lasts 23 h.
        let midnight = Refill::daily_at(NaiveTime::MIN, chrono_tz::Europe::Paris);
        let last = t("2026-03-28T12:00:00Z");
        // Midnight of the 29th in Paris is 23:00 UTC on the 28th (CET, +1).
        assert_eq!(midnight.next_after(last), t("2026-03-28T23:00:00Z"));
        // The next midnight is 22:00 UTC on the 29th (CEST, +2): 23 h later.
        assert_eq!(
            midnight.next_after(t("2026-03-28T23:00:00Z")),
            t("2026-03-29T22:00:00Z")
        );
        assert!(!midnight.is_due(last, t("2026-03-28T22:59:59Z")));
        assert!(midnight.is_due(last, t("2026-03-28T23:00:00Z")));
    }

    #[test]
    fn calendar_time_in_a_gap_refills_at_the_end_of_the_gap() {
        let at_0230 = Refill::daily_at(
            NaiveTime::from_hms_opt(2, 30, 0).unwrap(),
            chrono_tz::Europe::Paris,
        );
        // 02:30 does not exist on 2026-03-29 in Paris; 03:00 CEST = 01:00 UTC.
        assert_eq!(
            at_0230.next_after(t("2026-03-28T12:00:00Z")),
            t("2026-03-29T01:00:00Z")
        );
    }
}
