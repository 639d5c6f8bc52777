//! Filling a cache miss from the source of truth, once per user at a time.
//!
//! After Redis is flushed, a burst of one user's requests all miss at once;
//! they must not all read (and try to create) the same document. The first
//! to arrive starts the fill; the others wait for its outcome. The fill runs
//! as a task of its own, so a request that gives up never strands the
//! others.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::redis_state::RedisState;
use crate::store::source::SourceOfTruth;
use crate::store::{StoreError, StoreErrorKind};
use crate::uid::Uid;

/// A fill's outcome, once known.
type Outcome = Option<Result<(), Arc<StoreError>>>;

/// The fills under way, one per user at most.
#[derive(Clone)]
pub(crate) struct Hydration {
    shared: Arc<Shared>,
}

struct Shared {
    state: Arc<RedisState>,
    source: Arc<dyn SourceOfTruth>,
    in_progress: Mutex<HashMap<Uid, watch::Receiver<Outcome>>>,
}

impl Hydration {
    pub(crate) fn new(state: Arc<RedisState>, source: Arc<dyn SourceOfTruth>) -> Self {
        Self {
            shared: Arc::new(Shared {
                state,
                source,
                in_progress: Mutex::default(),
            }),
        }
    }

    /// Makes Redis hold `uid`'s balances of every kind from the source,
    /// creating the user with the initial balances (refilled `now`) if the
    /// source has none. Must be called within a Tokio runtime.
    pub(crate) async fn fill(&self, uid: &Uid, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut outcome = {
            let mut in_progress = self.shared.in_progress.lock();
            match in_progress.get(uid) {
                Some(outcome) => outcome.clone(),
                None => {
                    let (done, outcome) = watch::channel(None);
                    in_progress.insert(uid.clone(), outcome.clone());
                    tokio::spawn(self.shared.clone().run(uid.clone(), now, done));
                    outcome
                }
            }
        };
        let outcome = outcome.wait_for(Option::is_some).await;
        match outcome.as_deref() {
            Ok(Some(Ok(()))) => Ok(()),
            Ok(Some(Err(error))) => Err(StoreError::new(
                error.kind(),
                format!("could not read user {uid} from the source of truth into Redis"),
            )
            .with_source(error.clone())),
            _ => Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!("the fill of user {uid} from the source of truth stopped"),
            )),
        }
    }
}

impl Shared {
    async fn run(self: Arc<Self>, uid: Uid, now: DateTime<Utc>, done: watch::Sender<Outcome>) {
        let result = async {
            let stored = self.source.load_or_create(&uid, now).await?;
            self.state.seed(&uid, &stored).await.map(drop)
        }
        .await;
        self.in_progress.lock().remove(&uid);
        done.send_replace(Some(result.map_err(Arc::new)));
    }
}
