//! `Idempotency-Key`: a retried request is not charged twice.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName};

/// The request header naming a retry-safe request.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// [`IDEMPOTENCY_KEY`] as a header name, checked at compile time: looking up
/// the `&str` would parse it again on every request.
const IDEMPOTENCY_KEY_NAME: HeaderName = HeaderName::from_static(IDEMPOTENCY_KEY);

/// How long a store remembers a user's idempotency key.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// The longest key accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// What a [`TicketLayer`](crate::TicketLayer) does with a request whose
/// `Idempotency-Key` already paid for a request of the same user (see
/// [`TicketLayer::replays`](crate::TicketLayer::replays)). Either way it is
/// not charged again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Replays {
    /// Call the handler again, without charging (the default): the answer to
    /// a retry whose first response was lost. The handler sees
    /// [`Charged::charged`](crate::Charged::charged) `false` and must make
    /// its own effect idempotent (answer with what the first request made,
    /// say): otherwise a client that repeats one key gets the handler's work
    /// free for 24 hours.
    #[default]
    CallUncharged,
    /// Answer 409 Conflict (problem+json) without calling the handler: for
    /// handlers that cannot tell a retry from a first request.
    Refuse,
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
