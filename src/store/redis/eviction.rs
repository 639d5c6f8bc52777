//! Redis's `maxmemory-policy`, checked at connect (DESIGN.md §5).
//!
//! A Redis that evicts keys under memory pressure loses balances: with a
//! source of truth behind it they are reloaded (a lineage check makes the
//! loss harmless); with Redis holding the only truth, an evicted user starts
//! over. The policy is read from `INFO memory` (managed Redis often blocks
//! `CONFIG GET`): anything but `noeviction` is logged as a warning and
//! counted in a metric, and an `allkeys-*` policy (which evicts keys that
//! have no expiry, such as a user kept above capacity) refuses a store
//! that holds the only truth.

use std::time::Duration;

use redis::{RedisError, Value};

use super::connection::Connection;
use super::error::RedisSetupError;
use super::scripts::Truth;
use crate::telemetry;

/// Reads the policy and judges it for a store of `truth`.
pub(crate) async fn check(
    connection: &mut Connection,
    truth: Truth,
    timeout: Duration,
) -> Result<(), RedisSetupError> {
    let info: Value =
        tokio::time::timeout(timeout, connection.query(redis::cmd("INFO").arg("memory")))
            .await
            .unwrap_or_else(|_elapsed| {
                Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("INFO memory took longer than {timeout:?}"),
                )))
            })
            .map_err(RedisSetupError::Unreachable)?;
    // A cluster answers per node: the policy of any master counts. An INFO
    // without the field (a proxy, an old server) has nothing to judge.
    let replies = texts(&info);
    let Some(policy) = replies
        .iter()
        .filter_map(|reply| policy(reply))
        .find(|policy| *policy != "noeviction")
    else {
        return Ok(());
    };
    telemetry::redis_evicting(policy);
    if truth == Truth::InRedis && policy.starts_with("allkeys-") {
        return Err(RedisSetupError::EvictingPolicy {
            policy: policy.to_string(),
        });
    }
    tracing::warn!(
        policy,
        "Redis may evict ticket balances under memory pressure (maxmemory-policy); \
         set it to noeviction"
    );
    Ok(())
}

/// The text of an `INFO` reply: one per node of a cluster.
fn texts(value: &Value) -> Vec<String> {
    match value {
        Value::BulkString(bytes) => vec![String::from_utf8_lossy(bytes).into_owned()],
        Value::SimpleString(text) => vec![text.clone()],
        Value::VerbatimString { text, .. } => vec![text.clone()],
        Value::Map(pairs) => pairs.iter().flat_map(|(_, reply)| texts(reply)).collect(),
        Value::Array(replies) => replies.iter().flat_map(texts).collect(),
        _ => Vec::new(),
    }
}

/// The `maxmemory_policy` field of an `INFO memory` reply.
fn policy(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|line| line.strip_prefix("maxmemory_policy:"))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::policy;

    #[test]
    fn the_policy_is_read_from_info_memory() {
        let info = "# Memory\r\nused_memory:1000\r\nmaxmemory_policy:allkeys-lru\r\n";
        assert_eq!(policy(info), Some("allkeys-lru"));
        assert_eq!(policy("# Memory\r\nused_memory:1\r\n"), None);
    }
}
