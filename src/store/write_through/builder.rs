//! Configuring and connecting a [`WriteThrough`] store.

use std::sync::Arc;
use std::time::Duration;

use super::WriteThrough;
use crate::clock::{Clock, SystemClock};
use crate::store::source::SourceOfTruth;
use crate::store::{RedisSetupError, RedisStoreBuilder};

/// When a change is acknowledged, relative to its write to the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WriteMode {
    /// Write-through (the default): a charge is allowed only once the source
    /// holds a state that includes it. When the source cannot be written,
    /// the charge is refunded in Redis and the store answers an error (503).
    #[default]
    Sync,
    /// Write-behind: a charge is allowed once Redis holds it and has it
    /// counted as pending; the source follows within the write interval, and
    /// catches up after an outage. Pending changes live in Redis, so an
    /// instance that dies leaves them to the others. Losing Redis loses the
    /// changes not written yet (at most an interval's worth, unless the
    /// source was down).
    Async,
}

/// Configures a [`WriteThrough`] store; made by [`WriteThrough::builder`].
#[must_use]
pub struct WriteThroughBuilder {
    redis: RedisStoreBuilder,
    source: Arc<dyn SourceOfTruth>,
    mode: WriteMode,
    write_interval: Duration,
    lease: Duration,
    recovery_interval: Duration,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for WriteThroughBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteThroughBuilder")
            .field("redis", &self.redis)
            .field("mode", &self.mode)
            .field("write_interval", &self.write_interval)
            .finish_non_exhaustive()
    }
}

impl WriteThroughBuilder {
    pub(super) fn new(redis: RedisStoreBuilder, source: Arc<dyn SourceOfTruth>) -> Self {
        Self {
            redis,
            source,
            mode: WriteMode::Sync,
            write_interval: Duration::from_secs(1),
            lease: Duration::from_secs(10),
            recovery_interval: Duration::from_secs(5),
            clock: Arc::new(SystemClock),
        }
    }

    /// Sync (the default) or async writes.
    pub fn mode(mut self, mode: WriteMode) -> Self {
        self.mode = mode;
        self
    }

    /// Each user's state is written at most once per `interval` (default
    /// 1 s, Firestore's sustained rate for one document), across every app
    /// instance on the same Redis; the changes made meanwhile share the next
    /// write.
    pub fn write_interval(mut self, interval: Duration) -> Self {
        self.write_interval = interval;
        self
    }

    /// How long one write round may hold a user (default 10 s): other
    /// instances wait for it, and take over when an instance dies mid-round.
    /// Keep it above the source's own timeout.
    pub fn round_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often Redis is scanned for changes that the source may not hold
    /// (default 5 s): those of an instance that died, or whose write failed.
    /// The first scan runs at once.
    pub fn recovery_interval(mut self, interval: Duration) -> Self {
        self.recovery_interval = interval;
        self
    }

    /// The clock of writes that no request started (the recovery scan's),
    /// used only to date a kind that the source lacks (default
    /// [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Connects to Redis (with every option of the Redis store's builder)
    /// and starts the recovery scan. Must be called within a Tokio runtime.
    pub async fn connect(self) -> Result<WriteThrough, RedisSetupError> {
        let redis = self.redis.caching_a_source().connect().await?;
        Ok(WriteThrough::start(
            redis,
            self.source,
            self.mode,
            super::Timing {
                write_interval: self.write_interval,
                lease: self.lease,
                recovery_interval: self.recovery_interval,
            },
            self.clock,
        ))
    }
}
