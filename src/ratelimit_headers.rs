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

/// Room for one list item, e.g. `"upload";r=4294967295;t=86400`: reserving
/// it up front spares the string's regrowth on every response.
const ITEM_LEN: usize = 64;

/// Whole seconds from `now` until `at`, rounded up, never negative.
pub(crate) fn seconds_until(at: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    let millis = (at - now).num_milliseconds().max(0) as u64;
    millis.div_ceil(1000)
}

/// The `RateLimit-Policy` value for `kinds`.
pub(crate) fn policy<'a>(kinds: impl IntoIterator<Item = &'a TicketKind>) -> HeaderValue {
    let mut value = String::with_capacity(ITEM_LEN);
    for kind in kinds {
        let window = kind.refill_schedule().window_secs();
        push_item(
            &mut value,
            kind,
            [("q", kind.capacity().into()), ("w", window)],
        );
    }
    header_value(value)
}

/// The `RateLimit` value: `(kind, remaining, next refill)` per kind.
pub(crate) fn remaining<'a>(
    items: impl IntoIterator<Item = (&'a TicketKind, u32, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> HeaderValue {
    let mut value = String::with_capacity(ITEM_LEN);
    for (kind, remaining, refill_at) in items {
        let seconds = seconds_until(refill_at, now);
        push_item(&mut value, kind, [("r", remaining.into()), ("t", seconds)]);
    }
    header_value(value)
}

/// Appends the list item `"<kind>";<param>=<number>;...` to `value`.
///
/// Numbers go through `itoa`: `core::fmt` took half of the time spent on
/// these headers, which every allowed response carries.
fn push_item(value: &mut String, kind: &TicketKind, params: [(&str, u64); 2]) {
    if !value.is_empty() {
        value.push_str(", ");
    }
    value.push('"');
    value.push_str(kind.name());
    value.push('"');
    let mut digits = itoa::Buffer::new();
    for (param, number) in params {
        value.push(';');
        value.push_str(param);
        value.push('=');
        value.push_str(digits.format(number));
    }
}

/// `value` as a header value, its buffer handed over rather than copied.
fn header_value(value: String) -> HeaderValue {
    // Kind names are checked to be [a-z0-9_-] when the registry is built.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
        .unwrap_or(HeaderValue::from_static(""))
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
        assert_eq!(
            policy([&upload, &ai]),
            "\"upload\";q=5;w=86400, \"ai\";q=3;w=86400"
        );
    }
}
