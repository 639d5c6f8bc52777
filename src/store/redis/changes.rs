//! Balance changes that other instances must hear of at once: grants,
//! sets, resets and refunds, published on the Redis channel
//! `<prefix>changes` (the uid as the message). Plain pub/sub: on a cluster,
//! every node relays every message to its subscribers, so one subscribed
//! connection per instance hears them all. A message lost (no subscriber
//! connected at that moment) costs only time: what listens to it, the
//! refusal cache, forgets its entries within their TTL anyway.

use std::sync::Arc;

use redis::aio::{AsyncPushSender, ConnectionManager, ConnectionManagerConfig, SendError};
use redis::cluster::ClusterClientBuilder;
use redis::{Client, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};

use super::builder::Topology;
use super::error::RedisSetupError;
use super::store::RedisStore;
use crate::store::StoreError;
use crate::uid::{Uid, UidPolicy};

/// A subscription to a store's balance changes; dropping it unsubscribes.
pub struct ChangeSubscription {
    /// The subscribed connection (RESP3: messages come as pushes), which
    /// resubscribes by itself after a reconnection; held open.
    _connection: Box<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for ChangeSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeSubscription").finish_non_exhaustive()
    }
}

/// Hands the uid of every message on the channel to the listener.
struct Listener(Arc<dyn Fn(Uid) + Send + Sync>);

impl AsyncPushSender for Listener {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        if info.kind == PushKind::Message
            && let Some(Value::BulkString(payload)) = info.data.get(1)
            && let Ok(uid) = std::str::from_utf8(payload)
            // The widest policy: the message names a uid some instance
            // accepted, whatever policy it was parsed with.
            && let Ok(uid) = Uid::parse_with(uid, UidPolicy::Firebase)
        {
            (self.0)(uid);
        }
        Ok(())
    }
}

impl RedisStore {
    /// Tells every instance subscribed to this store's changes that `uid`'s
    /// balance changed: one `PUBLISH`, under the breaker and the timeout.
    pub async fn publish_change(&self, uid: &Uid) -> Result<(), StoreError> {
        let mut command = redis::cmd("PUBLISH");
        command
            .arg(self.shared.keys.changes_channel())
            .arg(uid.as_str());
        let mut connection = self.shared.connection.clone();
        let reply = std::pin::pin!(connection.query::<i64>(&command));
        self.shared.bounded("publish", reply, drop).await?;
        Ok(())
    }

    /// Calls `changed` with the uid of every change that any instance
    /// [publishes](Self::publish_change) on this store's Redis (this one's
    /// too), on a connection of its own, until the subscription is
    /// dropped. `changed` runs on the connection's task: keep it short.
    pub async fn subscribe_changes(
        &self,
        changed: impl Fn(Uid) + Send + Sync + 'static,
    ) -> Result<ChangeSubscription, RedisSetupError> {
        let listener = Listener(Arc::new(changed));
        let channel = self.shared.keys.changes_channel();
        let connection: Box<dyn std::any::Any + Send + Sync> = match &self.shared.topology {
            Topology::Standalone(url) => {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(RedisSetupError::InvalidUrl)?;
                let resp3 = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let client = Client::open(info.set_redis_settings(resp3))
                    .map_err(RedisSetupError::InvalidUrl)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.shared.timeout))
                    .set_push_sender(listener)
                    .set_automatic_resubscription();
                let mut manager = ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(RedisSetupError::Unreachable)?;
                manager
                    .subscribe(&channel)
                    .await
                    .map_err(RedisSetupError::Unreachable)?;
                Box::new(manager)
            }
            Topology::Cluster(nodes) => {
                let client = ClusterClientBuilder::new(nodes.clone())
                    .use_protocol(ProtocolVersion::RESP3)
                    .connection_timeout(self.shared.timeout)
                    .push_sender(listener)
                    .build()
                    .map_err(RedisSetupError::InvalidUrl)?;
                let mut connection = client
                    .get_async_connection()
                    .await
                    .map_err(RedisSetupError::Unreachable)?;
                connection
                    .subscribe(&channel)
                    .await
                    .map_err(RedisSetupError::Unreachable)?;
                Box::new(connection)
            }
        };
        Ok(ChangeSubscription {
            _connection: connection,
        })
    }
}
