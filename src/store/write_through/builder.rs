//! Configuring and connecting a [`WriteThrough`] store.

use std::sync::Arc;
use std::time::Duration;

use super::WriteThrough;
use crate::clock::{Clock, SystemClock};
use crate::store::firestore::FirestoreSource;
use crate::store::{RedisSetupError, RedisStore, TimeSource};

/// Idle users are forgotten by Redis after this many of their kinds'
/// longest refill period (the Redis store's default); coming back costs them
/// one Firestore read.
const IDLE_PERIODS: u32 = 3;

/// When a change is acknowledged, relative to its Firestore write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WriteMode {
    /// Write-through (the default): a charge is allowed only once Firestore
    /// holds a state that includes it. When Firestore cannot be written, the
    /// charge is refunded in Redis and the store answers an error (503).
    #[default]
    Sync,
    /// Write-behind: a charge is allowed once Redis holds it and has it
    /// counted as pending; Firestore follows within the write interval, and
    /// catches up after an outage. Pending changes live in Redis, so an
    /// instance that dies leaves them to the others. Losing Redis loses the
    /// changes not written yet (at most an interval's worth, unless Firestore
    /// was down).
    Async,
}

/// Configures a [`WriteThrough`] store; made by [`WriteThrough::builder`].
#[derive(Clone)]
#[must_use]
pub struct WriteThroughBuilder {
    redis_url: String,
    source: FirestoreSource,
    mode: WriteMode,
    key_prefix: String,
    redis_timeout: Duration,
    time_source: TimeSource,
    write_interval: Duration,
    recovery_interval: Duration,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for WriteThroughBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteThroughBuilder")
            .field("source", &self.source)
            .field("mode", &self.mode)
            .field("key_prefix", &self.key_prefix)
            .field("write_interval", &self.write_interval)
            .finish_non_exhaustive()
    }
}

impl WriteThroughBuilder {
    pub(super) fn new(redis_url: String, source: FirestoreSource) -> Self {
        Self {
            redis_url,
            source,
            mode: WriteMode::Sync,
            key_prefix: "tickets:".into(),
            redis_timeout: Duration::from_millis(100),
            time_source: TimeSource::Redis,
            write_interval: Duration::from_secs(1),
            recovery_interval: Duration::from_secs(5),
            clock: Arc::new(SystemClock),
        }
    }

    /// Sync (the default) or async writes.
    pub fn mode(mut self, mode: WriteMode) -> Self {
        self.mode = mode;
        self
    }

    /// Each user's Firestore document is written at most once per
    /// `interval` (default 1 s, Firestore's sustained rate for one
    /// document); the changes made meanwhile share the next write.
    pub fn write_interval(mut self, interval: Duration) -> Self {
        self.write_interval = interval;
        self
    }

    /// How often Redis is scanned for changes that Firestore may not hold
    /// (default 5 s): those of an instance that died, or whose write failed.
    /// The first scan runs at once.
    pub fn recovery_interval(mut self, interval: Duration) -> Self {
        self.recovery_interval = interval;
        self
    }

    /// The Redis key prefix; see [`RedisStoreBuilder::key_prefix`](crate::store::RedisStoreBuilder::key_prefix).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// The Redis call timeout; see [`RedisStoreBuilder::timeout`](crate::store::RedisStoreBuilder::timeout).
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.redis_timeout = timeout;
        self
    }

    /// Where Redis decisions take their time; see [`TimeSource`].
    pub fn time_source(mut self, source: TimeSource) -> Self {
        self.time_source = source;
        self
    }

    /// The clock of writes that no request started (the recovery scan's),
    /// used only to date a kind that Firestore lacks (default
    /// [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Connects to Redis and starts the recovery scan. Must be called
    /// within a Tokio runtime.
    pub async fn connect(self) -> Result<WriteThrough, RedisSetupError> {
        let kinds = self.source.kinds().to_vec();
        let longest_period = kinds
            .iter()
            .map(|kind| kind.refill_schedule().window_secs())
            .max()
            .unwrap_or(24 * 3600);
        let idle_ttl = Duration::from_secs(longest_period.saturating_mul(IDLE_PERIODS.into()));
        let redis = RedisStore::standalone(self.redis_url.clone())
            .key_prefix(self.key_prefix.clone())
            .timeout(self.redis_timeout)
            .idle_periods(IDLE_PERIODS)
            .time_source(self.time_source)
            .caching_a_source()
            .connect()
            .await?;
        let state =
            super::redis_state::RedisState::new(&redis, self.redis_timeout, kinds, idle_ttl);
        Ok(WriteThrough::start(
            redis,
            state,
            self.source,
            self.mode,
            self.write_interval,
            self.recovery_interval,
            self.clock,
        ))
    }
}
