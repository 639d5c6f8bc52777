//! The IETF `RateLimit` and `RateLimit-Policy` headers
//! (draft-ietf-httpapi-ratelimit-headers): one list item per kind charged.
//!
//! `RateLimit-Policy: "upload";q=5;w=86400` announces the quota (`q` tickets
//! per `w` seconds); `RateLimit: "upload";r=4;t=3600` the remaining tickets
//! and the seconds until the next refill.

use std::fmt::Write;

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
        if !value.is_empty() {
            value.push_str(", ");
        }
        let _ = write!(
            value,
            "\"{}\";q={};w={}",
            kind.name(),
            kind.capacity(),
            kind.refill_schedule().window_secs()
        );
    }
    // Kind names are checked to be [a-z0-9_-] when the registry is built.
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static(""))
}

/// The `RateLimit` value: `(kind, remaining, next refill)` per kind.
pub(crate) fn remaining<'a>(
    items: impl IntoIterator<Item = (&'a TicketKind, u32, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> HeaderValue {
    let mut value = String::with_capacity(ITEM_LEN);
    for (kind, remaining, refill_at) in items {
        if !value.is_empty() {
            value.push_str(", ");
        }
        let _ = write!(
            value,
            "\"{}\";r={};t={}",
            kind.name(),
            remaining,
            seconds_until(refill_at, now)
        );
    }
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static(""))
}
