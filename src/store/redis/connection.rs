//! One connection to a standalone Redis or to a Redis Cluster, shared by
//! every call of a store.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    Client, Cmd, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, Value,
    from_redis_value,
};

use super::library::Library;
use super::scripts::{Procedure, ScriptCall};

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

/// A server that holds a share of the keys, for the commands that are not
/// about one user (`SCAN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    /// The standalone server: it holds every key.
    Standalone,
    /// A cluster master, at the address the cluster announces for it.
    Master { host: String, port: u16 },
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Standalone => f.write_str("the standalone server"),
            Self::Master { host, port } => write!(f, "master {host}:{port}"),
        }
    }
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
    /// The store bounds every call by `timeout` itself; the client waits
    /// for a reply as long as `late_replies`, so that a script that ran
    /// after its call timed out is still seen (and its charge given back).
    pub(crate) async fn cluster(
        nodes: &[String],
        timeout: Duration,
        late_replies: Duration,
    ) -> RedisResult<Self> {
        let client = ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(timeout)
            .response_timeout(late_replies)
            .build()?;
        Ok(Self::Cluster(client.get_async_connection().await?))
    }

    /// Runs a script or function, and after a `NOSCRIPT` or a missing
    /// function (a restarted or flushed Redis) loads it and sends the call
    /// again. Errors inside the reply (one decision's, in a charge for
    /// several users) are left to `T` (see [`Connection::send`]).
    pub(crate) async fn invoke<T: FromRedisValue>(&mut self, call: &ScriptCall) -> RedisResult<T> {
        match (self.send(&call.command).await, call.procedure) {
            (Err(error), Procedure::Script(script))
                if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) =>
            {
                self.load(script).await?;
                self.send(&call.command).await
            }
            (Err(error), Procedure::Function(library)) if Library::missing(&error) => {
                self.load_library(library).await?;
                self.send(&call.command).await
            }
            (reply, _) => reply,
        }
    }

    /// Sends one command; an error reply fails it, errors within an array
    /// reply are left to `T` (`query` would fail the whole reply on any).
    async fn send<T: FromRedisValue>(&mut self, command: &Cmd) -> RedisResult<T> {
        let reply = match self {
            Self::Standalone(connection) => connection.req_packed_command(command).await?,
            Self::Cluster(connection) => connection.req_packed_command(command).await?,
        };
        match reply {
            Value::ServerError(error) => Err(error.into()),
            reply => Ok(from_redis_value(reply)?),
        }
    }

    /// Sends one command.
    pub(crate) async fn query<T: FromRedisValue>(&mut self, command: &Cmd) -> RedisResult<T> {
        match self {
            Self::Standalone(connection) => command.query_async(connection).await,
            Self::Cluster(connection) => command.query_async(connection).await,
        }
    }

    /// The servers that hold the keys between them: the standalone server,
    /// or each master that serves slots now (as `CLUSTER SLOTS` of any node
    /// says; a failover changes them).
    pub(crate) async fn nodes(&mut self) -> RedisResult<Vec<Node>> {
        let Self::Cluster(connection) = self else {
            return Ok(vec![Node::Standalone]);
        };
        let ranges: Vec<Vec<Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(connection)
            .await?;
        let mut masters = Vec::new();
        for range in ranges {
            // [first slot, last slot, [host, port, id, ...] of the master, replicas...]
            let Some(Value::Array(master)) = range.into_iter().nth(2) else {
                return Err(malformed_slots());
            };
            let mut fields = master.into_iter();
            let (Some(host), Some(port)) = (fields.next(), fields.next()) else {
                return Err(malformed_slots());
            };
            let node = Node::Master {
                host: from_redis_value(host)?,
                port: from_redis_value(port)?,
            };
            if !masters.contains(&node) {
                masters.push(node);
            }
        }
        Ok(masters)
    }

    /// Sends one command to `node` (one of [`nodes`](Self::nodes)).
    pub(crate) async fn query_on<T: FromRedisValue>(
        &mut self,
        node: &Node,
        command: &Cmd,
    ) -> RedisResult<T> {
        match (self, node) {
            (Self::Cluster(connection), Node::Master { host, port }) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                Ok(from_redis_value(
                    connection.route_command(command.clone(), routing).await?,
                )?)
            }
            (connection, _) => connection.query(command).await,
        }
    }

    /// Loads the charge library (on every master of a cluster).
    pub(crate) async fn load_library(&mut self, library: &Library) -> RedisResult<()> {
        self.query::<Value>(library.load_command()).await?;
        Ok(())
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

fn malformed_slots() -> redis::RedisError {
    redis::RedisError::from((
        ErrorKind::UnexpectedReturnType,
        "CLUSTER SLOTS answered a range without its master's host and port",
    ))
}
