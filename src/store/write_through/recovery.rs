//! The recovery scan: every instance looks in Redis, now and then, for
//! users with changes that the source of truth may not hold (left by an
//! instance that died, or by a write that failed) and writes them.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::group_commit::GroupCommit;
use super::redis_state::RedisState;
use crate::clock::Clock;

/// The scan task; dropping this stops it.
pub(crate) struct Recovery {
    task: JoinHandle<()>,
}

impl Recovery {
    /// Scans at once, then every `interval`, asking for a round of each
    /// pending user (the rounds pace each user's writes).
    pub(crate) fn start(
        state: Arc<RedisState>,
        writer: GroupCommit,
        interval: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let task = tokio::spawn(async move {
            loop {
                match state.pending_users().await {
                    Ok(users) => {
                        if !users.is_empty() {
                            tracing::info!(
                                users = users.len(),
                                "writing pending changes to the source of truth"
                            );
                        }
                        for uid in users {
                            writer.nudge(&uid, clock.now());
                        }
                    }
                    Err(error) => tracing::warn!(%error, "could not scan Redis for pending writes"),
                }
                tokio::time::sleep(interval).await;
            }
        });
        Self { task }
    }
}

impl Drop for Recovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}
