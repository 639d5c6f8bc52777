//! One connection to a standalone Redis or to a Redis Cluster, shared by
//! every call of a store.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind};

use super::scripts::ScriptCall;

/// Pauses between reconnection attempts: short, so that a probe soon after
/// Redis comes back finds a fresh attempt rather than a long back-off.
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(10);
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(100);
const RECONNECT_RETRIES: usize = 2;

/// Cheap to clone: clones pipeline their commands on the same socket(s).
#[derive(Clone)]
pub(crate) enum Connection {
    /// A multiplexed connection that reconnects after a failure.
    Standalone(ConnectionManager),
    /// One multiplexed connection per master, routed by each script's first
    /// key (the user's hash tag).
    Cluster(ClusterConnection),
}

impl Connection {
    /// Connects to the standalone server at `url`.
    pub(crate) async fn standalone(client: Client, timeout: Duration) -> RedisResult<Self> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            // The store bounds every call itself; a second timer per call
            // would only cost time.
            .set_response_timeout(None)
            .set_min_delay(RECONNECT_MIN_DELAY)
            .set_max_delay(RECONNECT_MAX_DELAY)
            .set_number_of_retries(RECONNECT_RETRIES);
        let manager = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self::Standalone(manager))
    }

    /// Connects to the cluster that `nodes` (any of its masters) belong to.
    pub(crate) async fn cluster(nodes: &[String], timeout: Duration) -> RedisResult<Self> {
        let client = ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .build()?;
        Ok(Self::Cluster(client.get_async_connection().await?))
    }

    /// Runs a script: `EVALSHA`, and after a `NOSCRIPT` (a restarted or
    /// flushed Redis) loads the script and sends the call again.
    pub(crate) async fn invoke(&mut self, call: &ScriptCall) -> RedisResult<Vec<i64>> {
        match self.query(&call.command).await {
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.load(call.script).await?;
                self.query(&call.command).await
            }
            reply => reply,
        }
    }

    /// Sends one command.
    pub(crate) async fn query<T: FromRedisValue>(&mut self, command: &Cmd) -> RedisResult<T> {
        match self {
            Self::Standalone(connection) => command.query_async(connection).await,
            Self::Cluster(connection) => command.query_async(connection).await,
        }
    }

    /// Loads a script (on every master of a cluster).
    pub(crate) async fn load(&mut self, script: &Script) -> RedisResult<()> {
        match self {
            Self::Standalone(connection) => script.load_async(connection).await?,
            Self::Cluster(connection) => script.load_async(connection).await?,
        };
        Ok(())
    }
}
