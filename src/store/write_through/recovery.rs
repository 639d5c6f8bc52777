//! The recovery scan: every instance looks in Redis, now and then, for
//! users with changes that Firestore may not hold (left by an instance that
//! died, or by a write that failed) and writes them.

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
    /// Scans at once, then every `interval`, demanding a write of each
    /// pending user (the writer paces each user's writes).
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
                                "writing pending changes to Firestore"
                            );
                        }
                        for uid in users {
                            drop(writer.demand(&uid, clock.now()));
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
