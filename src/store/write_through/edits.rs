//! Following the source's change feed: a user's state edited or deleted in
//! the source by somebody else drops Redis's copy at once, so that the next
//! request, on any instance, loads the edit (DESIGN.md §4: within 2 s).
//!
//! Every instance follows the feed; the first to act drops the state, and
//! the others find Redis seeded from the edit already and leave it (see
//! `lua/forget.lua`). A change that Redis made and the source does not hold
//! yet is dropped with it: in sync mode its request is then answered with
//! an error by its round; in async mode it is lost, as with a Redis loss.
//! While the feed is down (or lags), a write round still meets the edit and
//! is refused (the source tells an edit from a cache's state), so an edit
//! is never undone; it is only seen later.

use std::sync::Arc;

use tokio::sync::broadcast::{Receiver, error::RecvError};
use tokio::task::JoinHandle;

use super::redis_state::RedisState;
use crate::store::source::Edit;

/// The task following the feed; dropping this stops it.
pub(crate) struct EditFollower {
    task: JoinHandle<()>,
}

impl EditFollower {
    /// Drops Redis's state of every user the feed names.
    pub(crate) fn start(state: Arc<RedisState>, mut edits: Receiver<Edit>) -> Self {
        let task = tokio::spawn(async move {
            loop {
                match edits.recv().await {
                    Ok(Edit { uid, point }) => match state.forget(&uid, point).await {
                        Ok(true) => {
                            tracing::info!(%uid, "edited in the source: Redis reloads the user")
                        }
                        Ok(false) => {}
                        Err(error) => tracing::warn!(
                            %uid, %error,
                            "could not drop a user edited in the source; its next write round will meet the edit"
                        ),
                    },
                    Err(RecvError::Lagged(missed)) => tracing::warn!(
                        missed,
                        "the source's change feed ran ahead; those users' next write rounds will meet their edits"
                    ),
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Self { task }
    }
}

impl Drop for EditFollower {
    fn drop(&mut self) {
        self.task.abort();
    }
}
