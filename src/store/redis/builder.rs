//! Configuring and connecting a [`RedisStore`].

use std::sync::Arc;
use std::time::Duration;

use redis::{Client, RedisResult};

use super::batcher::Batcher;
use super::connection::Connection;
use super::error::RedisSetupError;
use super::keys::KeyLayout;
use super::library::Library;
use super::scripts::{CallContext, Truth};
use super::store::{LATE_REPLY_DEADLINE, RedisStore, Shared};
use crate::store::breaker::Breaker;

/// Where the scripts read the time of a decision. See the
/// [`RedisStore`](super::RedisStore) docs for why it matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TimeSource {
    /// The Redis server's clock (`TIME`): one clock for every app instance.
    /// The default.
    #[default]
    Redis,
    /// The instant the caller passes in (the registry's
    /// [`Clock`](crate::Clock)): for tests with a
    /// [`FakeClock`](crate::FakeClock), or when every instance shares one
    /// well-synchronised clock.
    Caller,
}

/// Which servers to connect to.
#[derive(Debug, Clone)]
pub(crate) enum Topology {
    Standalone(String),
    Cluster(Vec<String>),
}

/// Configures a [`RedisStore`]; made by [`RedisStore::standalone`] or
/// [`RedisStore::cluster`].
///
/// ```no_run
/// use std::time::Duration;
/// use tower_tickets::store::RedisStore;
///
/// # async fn run() -> Result<(), tower_tickets::store::RedisSetupError> {
/// let store = RedisStore::standalone("redis://127.0.0.1:6379")
///     .key_prefix("myapp:tickets:")
///     .timeout(Duration::from_millis(50))
///     .connect()
///     .await?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    topology: Topology,
    prefix: String,
    timeout: Duration,
    breaker_failures: u32,
    breaker_open_for: Duration,
    idle_periods: u32,
    time_source: TimeSource,
    truth: Truth,
    batching: bool,
}

impl RedisStoreBuilder {
    fn new(topology: Topology) -> Self {
        Self {
            topology,
            prefix: "tickets:".into(),
            timeout: Duration::from_millis(100),
            breaker_failures: 5,
            breaker_open_for: Duration::from_millis(500),
            idle_periods: 3,
            time_source: TimeSource::Redis,
            truth: Truth::InRedis,
            batching: true,
        }
    }

    /// What every key starts with (default `tickets:`): visible ASCII
    /// without braces, at most 64 bytes.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest a call may take, reconnection included (default 100 ms).
    /// A call that takes longer fails with
    /// [`Timeout`](crate::store::StoreErrorKind::Timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// After `failures` failed calls in a row (default 5), answer every call
    /// at once with [`CircuitOpen`](crate::store::StoreErrorKind::CircuitOpen)
    /// for `open_for` (default 500 ms), then let one call probe Redis. Calls
    /// that were in flight together when they failed (a stall times them all
    /// out at once) count as one failure.
    pub fn breaker(mut self, failures: u32, open_for: Duration) -> Self {
        self.breaker_failures = failures.max(1);
        self.breaker_open_for = open_for;
        self
    }

    /// A user's balances expire this many of their kinds' longest refill
    /// period after their last refill (default 3, at least 1): a refill is
    /// due by then, so forgetting the user gives back nothing they did not
    /// have coming. Users who keep spending are refilled, and kept, every
    /// period.
    ///
    /// A user whom forgetting would change is never forgotten: one holding
    /// more than a kind's capacity (a grant), or of a kind whose initial
    /// balance differs from its capacity (a new user starts elsewhere than
    /// a refill ends). Such a user expires again once every kind is back at
    /// most at capacity, for kinds that start at capacity.
    pub fn idle_periods(mut self, periods: u32) -> Self {
        self.idle_periods = periods.max(1);
        self
    }

    /// Redis only caches a source of truth that reloads a forgotten user, so
    /// any idle user may expire.
    pub(crate) fn caching_a_source(mut self) -> Self {
        self.truth = Truth::InSource;
        self
    }

    /// Where decisions take their time (default [`TimeSource::Redis`]).
    pub fn time_source(mut self, source: TimeSource) -> Self {
        self.time_source = source;
        self
    }

    /// Whether charges that come while a charge call is in flight wait for
    /// its reply and then go together, in one call of the charge script
    /// (default `true`). Each charge is still decided on its own, under
    /// the timeout and the breaker, and a failed one fails alone; a call
    /// costs Redis much less per charge, and the app one round trip per
    /// call instead of per charge. A charge that finds no call in flight
    /// goes at once.
    ///
    /// A Redis Cluster decides each charge in its own call: one script call
    /// runs on one node, while the users of queued charges are spread
    /// over every master.
    pub fn batching(mut self, batching: bool) -> Self {
        self.batching = batching;
        self
    }

    /// Connects and loads the scripts.
    pub async fn connect(self) -> Result<RedisStore, RedisSetupError> {
        let keys =
            KeyLayout::new(&self.prefix).map_err(|reason| RedisSetupError::InvalidPrefix {
                prefix: self.prefix.clone(),
                reason,
            })?;
        let mut connection = match &self.topology {
            Topology::Standalone(url) => {
                let client = Client::open(url.as_str()).map_err(RedisSetupError::InvalidUrl)?;
                Connection::standalone(client, self.timeout).await
            }
            Topology::Cluster(nodes) => {
                Connection::cluster(nodes, self.timeout, LATE_REPLY_DEADLINE).await
            }
        }
        .map_err(RedisSetupError::Unreachable)?;
        super::eviction::check(&mut connection, self.truth, self.timeout).await?;
        for script in self.truth.scripts().all() {
            // Calls carry no timeout of the connection's own (the store
            // bounds each one), so bound the loads here.
            bounded(self.timeout, "loading a script", connection.load(script))
                .await
                .map_err(RedisSetupError::Unreachable)?;
        }
        let charge = Library::load_or_script(&mut connection, self.truth, self.timeout)
            .await
            .map_err(RedisSetupError::Unreachable)?;
        let batcher = match (&self.topology, self.batching) {
            (Topology::Standalone(_), true) => Some(Batcher::start(connection.clone(), charge)),
            _ => None,
        };
        Ok(RedisStore::from_shared(Shared {
            batcher,
            charge,
            connection,
            topology: self.topology,
            keys,
            context: CallContext {
                time_source: self.time_source,
                truth: self.truth,
                idle_periods: self.idle_periods,
            },
            timeout: self.timeout,
            breaker: Arc::new(Breaker::new(
                "Redis",
                self.breaker_failures,
                self.breaker_open_for,
            )),
        }))
    }
}

impl RedisStore {
    /// Configures a store on one Redis server, e.g. `redis://127.0.0.1:6379`.
    pub fn standalone(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Topology::Standalone(url.into()))
    }

    /// Configures a store on a Redis Cluster, given the URLs of some of its
    /// nodes.
    pub fn cluster<I, S>(nodes: I) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisStoreBuilder::new(Topology::Cluster(
            nodes.into_iter().map(Into::into).collect(),
        ))
    }

    /// Connects to one Redis server with the defaults.
    pub async fn connect(url: impl Into<String>) -> Result<Self, RedisSetupError> {
        Self::standalone(url).connect().await
    }
}

/// `load`, or a timeout error once `timeout` has passed: setup calls carry
/// no timeout of the connection's own (the store bounds each call itself).
pub(crate) async fn bounded<T>(
    timeout: Duration,
    what: &str,
    load: impl Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    tokio::time::timeout(timeout, load)
        .await
        .unwrap_or_else(|_elapsed| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{what} took longer than {timeout:?}"),
            )
            .into())
        })
}
