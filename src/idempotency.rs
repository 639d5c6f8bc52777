//! `Idempotency-Key`: a retried request is not charged twice.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderName, Method};
use sha2::{Digest, Sha256};

use crate::cost::CheckedCost;
use crate::kind::TicketKind;
use crate::store::Adjustment;

/// The request header naming a retry-safe request.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// [`IDEMPOTENCY_KEY`] as a header name, checked at compile time: looking up
/// the `&str` would parse it again on every request.
const IDEMPOTENCY_KEY_NAME: HeaderName = HeaderName::from_static(IDEMPOTENCY_KEY);

/// How long a store remembers a user's idempotency key. Keys live with the
/// balances in the store (in Redis for the Redis stores): a store that loses
/// its state (a restarted Redis) forgets them, and a retry then counts as a
/// new request.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// The longest key accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// What a [`TicketLayer`](crate::TicketLayer) does with a retry of a request
/// that already finished: one whose `Idempotency-Key` paid for the same
/// request (method, route and cost) of the same user, and whose handler
/// answered (see [`TicketLayer::replays`](crate::TicketLayer::replays)).
/// Either way it is not charged again, nor refunded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Replays {
    /// Answer 409 Conflict (problem type [`ALREADY_PROCESSED_TYPE`](crate::ALREADY_PROCESSED_TYPE),
    /// no `Retry-After`) without calling the handler (the default): the
    /// library cannot give the first answer again, and a handler that cannot
    /// tell a retry from a first request would do its work again for free.
    #[default]
    Refuse,
    /// Call the handler again, without charging: for handlers that answer a
    /// retry with what the first request made. The handler sees
    /// [`Charged::charged`](crate::Charged::charged) `false` and must make
    /// its own effect idempotent: otherwise a client that repeats one key
    /// gets the handler's work free for 24 hours.
    CallUncharged,
}

/// What an `Idempotency-Key` is bound to: the method, the matched route
/// and the cost (kinds and amounts) of the request it first paid for. The
/// same key sent with another request is refused (422) rather than taken
/// for a retry.
///
/// Kept as a digest (SHA-256, base64url), so its size does not depend on
/// the route, and equal on every instance. The default, empty, fingerprint
/// is that of a charge made without saying which request it is for.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct RequestFingerprint(Arc<str>);

impl RequestFingerprint {
    /// The fingerprint of a `method` request to `route` (the route pattern
    /// that matched, e.g. `/api/items/{id}`, or else the path) costing
    /// `cost`.
    pub fn new(method: &Method, route: &str, cost: &CheckedCost) -> Self {
        let mut digest = Sha256::new();
        // Each part ends with a NUL, which none of them contains, so that
        // no two requests write the same bytes.
        for part in [method.as_str(), route] {
            digest.update(part.as_bytes());
            digest.update([0]);
        }
        for item in cost.items() {
            digest.update(item.kind.name().as_bytes());
            digest.update([0]);
            digest.update(item.amount.to_be_bytes());
        }
        Self::from_digest(digest)
    }

    /// The fingerprint of administrative `changes` (see
    /// [`AdjustRequest`](crate::store::AdjustRequest)): each kind, its
    /// operation and amount. It starts with a NUL, where a request's starts
    /// with its method (never empty), so that no change and no request share
    /// one.
    pub(crate) fn of_adjustments(changes: &[(Arc<TicketKind>, Adjustment)]) -> Self {
        let mut digest = Sha256::new();
        digest.update([0]);
        for (kind, adjustment) in changes {
            for part in [kind.name(), adjustment.operation()] {
                digest.update(part.as_bytes());
                digest.update([0]);
            }
            digest.update(adjustment.amount().to_be_bytes());
        }
        Self::from_digest(digest)
    }

    fn from_digest(digest: Sha256) -> Self {
        Self(URL_SAFE_NO_PAD.encode(digest.finalize()).into())
    }

    /// The fingerprint as stored: 43 base64url characters, or empty.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RequestFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A validated `Idempotency-Key` value: 1 to 255 visible ASCII characters.
///
/// Keys are scoped to a user: two users may use the same key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Arc<str>);

/// Why an `Idempotency-Key` header was refused (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidIdempotencyKey;

impl fmt::Display for InvalidIdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters, sent once"
        )
    }
}

impl std::error::Error for InvalidIdempotencyKey {}

impl IdempotencyKey {
    /// Validates `raw` as a key.
    pub fn parse(raw: &str) -> Result<Self, InvalidIdempotencyKey> {
        let visible = raw.bytes().all(|b| (0x21..=0x7e).contains(&b));
        if raw.is_empty() || raw.len() > MAX_IDEMPOTENCY_KEY_LEN || !visible {
            return Err(InvalidIdempotencyKey);
        }
        Ok(Self(Arc::from(raw)))
    }

    /// Reads the optional header from a request.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, InvalidIdempotencyKey> {
        let mut values = headers.get_all(IDEMPOTENCY_KEY_NAME).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(InvalidIdempotencyKey);
        }
        let raw = value.to_str().map_err(|_| InvalidIdempotencyKey)?;
        Self::parse(raw).map(Some)
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adjustment_is_bound_to_each_kind_operation_and_amount() {
        let upload = Arc::new(TicketKind::new("upload", 5));
        let ai = Arc::new(TicketKind::new("ai", 3));
        let of = |changes: &[(&Arc<TicketKind>, Adjustment)]| {
            let changes: Vec<_> = changes.iter().map(|(k, a)| ((*k).clone(), *a)).collect();
            RequestFingerprint::of_adjustments(&changes)
        };
        let grant = of(&[(&upload, Adjustment::Grant(10))]);
        assert_eq!(grant, of(&[(&upload, Adjustment::Grant(10))]));
        assert_eq!(grant.as_str().len(), 43);
        for other in [
            of(&[(&upload, Adjustment::Grant(11))]),
            of(&[(&upload, Adjustment::Set(10))]),
            of(&[(&ai, Adjustment::Grant(10))]),
            of(&[(&upload, Adjustment::Grant(10)), (&ai, Adjustment::Reset)]),
            RequestFingerprint::default(),
        ] {
            assert_ne!(grant, other);
        }
    }
}
