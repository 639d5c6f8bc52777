//! What can go wrong with Redis, in the crate's terms.

use std::fmt;

use redis::RedisError;

use crate::store::{StoreError, StoreErrorKind};

/// The error code the scripts raise for a value they did not write.
const CORRUPT_CODE: &str = "TICKETS_CORRUPT";

/// A [`RedisStore`](super::RedisStore) could not be set up.
#[derive(Debug)]
#[non_exhaustive]
pub enum RedisSetupError {
    /// The key prefix cannot be used.
    InvalidPrefix {
        /// The prefix given.
        prefix: String,
        /// Why, and what to use instead.
        reason: String,
    },
    /// A Redis URL is malformed.
    InvalidUrl(RedisError),
    /// Redis could not be reached, or refused to load the scripts.
    Unreachable(RedisError),
    /// Redis evicts any key under memory pressure (`maxmemory-policy`
    /// `allkeys-*`), and holds the only copy of the balances.
    EvictingPolicy {
        /// The policy Redis reported.
        policy: String,
    },
}

impl fmt::Display for RedisSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidPrefix { prefix, reason } => {
                write!(
                    f,
                    "the Redis key prefix {prefix:?} cannot be used: {reason}"
                )
            }
            Self::InvalidUrl(e) => write!(
                f,
                "the Redis URL is not valid ({e}): use redis://host:port[/db], or rediss:// for TLS"
            ),
            Self::Unreachable(e) => write!(
                f,
                "could not connect to Redis and load the ticket scripts ({e}): is redis-server running at that address?"
            ),
            Self::EvictingPolicy { policy } => write!(
                f,
                "Redis's maxmemory-policy is {policy}: it would evict users' balances, which Redis \
                 alone holds; set it to noeviction (or volatile-*), or keep the balances in a \
                 source of truth (WriteThrough)"
            ),
        }
    }
}

impl std::error::Error for RedisSetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::InvalidPrefix { .. } | Self::EvictingPolicy { .. } => None,
            Self::InvalidUrl(e) | Self::Unreachable(e) => Some(e),
        }
    }
}

/// Turns what the connection or a script returned into a [`StoreError`].
pub(crate) fn store_error(operation: &str, error: RedisError) -> StoreError {
    if error.code() == Some(CORRUPT_CODE) {
        // Redis appends where the script failed: keep only our words.
        let detail = error.detail().unwrap_or_default();
        let detail = detail.split(" script: ").next().unwrap_or(detail);
        return StoreError::new(
            StoreErrorKind::Corrupt,
            format!("Redis {operation}: {detail}; delete the key or use another key prefix"),
        );
    }
    let kind = if error.is_timeout() {
        StoreErrorKind::Timeout
    } else {
        StoreErrorKind::Unavailable
    };
    StoreError::new(kind, format!("Redis {operation} failed")).with_source(error)
}

/// A reply whose shape no script of this crate produces.
pub(crate) fn unexpected_reply(operation: &str, reply: &[i64]) -> StoreError {
    StoreError::new(
        StoreErrorKind::Corrupt,
        format!(
            "Redis {operation} answered {reply:?}, which no tower-tickets script returns: are two versions of the crate sharing a key prefix?"
        ),
    )
}
