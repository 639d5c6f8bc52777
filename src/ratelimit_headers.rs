//! The IETF `RateLimit` and `RateLimit-Policy` headers
//! (draft-ietf-httpapi-ratelimit-headers): one list item per kind charged.
//!
//! `RateLimit-Policy: "upload";q=5;w=86400` announces the quota (`q` tickets
//! per `w` seconds); `RateLimit: "upload";r=4;t=3600` the remaining tickets
//! and the seconds until the next refill.

use chrono::{DateTime, Utc};
use http::{HeaderName, HeaderValue};

use crate::kind::TicketKind;

/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
/// `RateLimit`.
pub const RATELIMIT: &str = "ratelimit";

/// [`RATELIMIT_POLICY`] as a header name, checked at compile time: inserting
/// the `&str` would parse it again on every response.
pub(crate) const RATELIMIT_POLICY_NAME: HeaderName = HeaderName::from_static(RATELIMIT_POLICY);
/// [`RATELIMIT`] as a header name, checked at compile time.
pub(crate) const RATELIMIT_NAME: HeaderName = HeaderName::from_static(RATELIMIT);

/// Whole seconds from `now` until `at`, rounded up, never negative.
pub(crate) fn seconds_until(at: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    let millis = (at - now).num_milliseconds().max(0) as u64;
    millis.div_ceil(1000)
}

/// The `RateLimit-Policy` value for `kinds`.
pub(crate) fn policy<'a>(
    kinds: impl IntoIterator<Item = &'a TicketKind, IntoIter: Clone>,
) -> HeaderValue {
    list(kinds.into_iter().map(|kind| {
        let window = kind.refill_schedule().window_secs();
        (kind, [("q", kind.capacity().into()), ("w", window)])
    }))
}

/// The `RateLimit` value: `(kind, remaining, next refill)` per kind.
pub(crate) fn remaining<'a>(
    items: impl IntoIterator<Item = (&'a TicketKind, u32, DateTime<Utc>), IntoIter: Clone>,
    now: DateTime<Utc>,
) -> HeaderValue {
    list(items.into_iter().map(move |(kind, remaining, refill_at)| {
        let seconds = seconds_until(refill_at, now);
        (kind, [("r", remaining.into()), ("t", seconds)])
    }))
}

/// One list item: the kind and its two numeric parameters.
type Item<'a> = (&'a TicketKind, [(&'static str, u64); 2]);

/// The list `"<kind>";<param>=<number>;..., ...` of `items`, written into
/// a buffer of exactly its length, which the header value then takes as it
/// is: `Bytes` makes a second allocation for a buffer with room to spare.
///
/// Numbers go through `itoa`: `core::fmt` took half of the time spent on
/// these headers, which every allowed response carries.
fn list<'a>(items: impl Iterator<Item = Item<'a>> + Clone) -> HeaderValue {
    let (count, written) = items
        .clone()
        .fold((0usize, 0), |(count, len), (kind, params)| {
            let params: usize = params
                .iter()
                .map(|(param, number)| 2 + param.len() + digits(*number))
                .sum();
            (count + 1, len + 2 + kind.name().len() + params)
        });
    let len = written + 2 * count.saturating_sub(1);
    let mut value = String::with_capacity(len);
    let mut buffer = itoa::Buffer::new();
    for (kind, params) in items {
        if !value.is_empty() {
            value.push_str(", ");
        }
        value.push('"');
        value.push_str(kind.name());
        value.push('"');
        for (param, number) in params {
            value.push(';');
            value.push_str(param);
            value.push('=');
            value.push_str(buffer.format(number));
        }
    }
    debug_assert_eq!(value.len(), len, "the length computed beforehand");
    // Kind names are checked to be [a-z0-9_-] when the registry is built.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
        .unwrap_or(HeaderValue::from_static(""))
}

/// How many decimal digits `number` takes.
fn digits(number: u64) -> usize {
    number.checked_ilog10().map_or(1, |log| log as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_one_item_per_kind() {
        let upload = TicketKind::new("upload", 5);
        let ai = TicketKind::new("ai", 3);
        let now: DateTime<Utc> = "2026-03-29T10:00:00Z".parse().unwrap();
        let in_an_hour = now + chrono::TimeDelta::seconds(3600);
        let in_a_minute = now + chrono::TimeDelta::milliseconds(59_001);

        assert_eq!(
            remaining(
                [(&upload, 4, in_an_hour), (&ai, u32::MAX, in_a_minute)],
                now
            ),
            "\"upload\";r=4;t=3600, \"ai\";r=4294967295;t=60"
        );
        // Numbers at each side of a digit more, sized beforehand.
        let in_ten_seconds = now + chrono::TimeDelta::seconds(10);
        assert_eq!(
            remaining([(&upload, 0, now), (&ai, 10, in_ten_seconds)], now),
            "\"upload\";r=0;t=0, \"ai\";r=10;t=10"
        );
        assert_eq!(remaining([(&ai, 9, now)], now), "\"ai\";r=9;t=0");
        assert_eq!(
            policy([&upload, &ai]),
            "\"upload\";q=5;w=86400, \"ai\";q=3;w=86400"
        );
    }
}
