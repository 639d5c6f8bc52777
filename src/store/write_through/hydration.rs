//! Filling a cache miss from the source of truth, once per user at a time.
//!
//! After Redis is flushed, a burst of one user's requests all miss at once;
//! they must not all read (and try to create) the same document. The first
//! to arrive starts the fill; the others wait for its outcome. The fill runs
//! as a task of its own, so a request that gives up never strands the
//! others.
//!
//! # Fencing (async mode)
//! A write round may still be on its way to the source when Redis loses the
//! user (a flush): the fill then seeds a new lineage from the source's older
//! state, the late write lands, and the new lineage's first round is refused
//! and dropped, taking with it charges that were answered after the loss.
//! Async mode answers charges before they are written, so there a new
//! lineage first **stamps** the source: it writes the state it was seeded
//! from, under its own lineage, on condition that the source still holds
//! that state. The late write then finds a lineage it does not descend from
//! and is refused: what is lost is what async mode may lose (the changes
//! not yet written when Redis lost them), never a charge made after. A
//! stamp the source refuses means the source moved on: Redis's new state is
//! dropped, and the next request loads again. (Sync mode needs no stamp: a
//! change there is answered only once the source holds it.)

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::redis_state::{RedisState, RoundEnd};
use crate::store::source::{SourceOfTruth, UserSnapshot, WriteOutcome};
use crate::store::{StoreError, StoreErrorKind};
use crate::uid::Uid;

/// How many times a fill reads the source when its stamp keeps being
/// refused (the source moving on under it).
const FILL_ATTEMPTS: usize = 3;

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
    /// Whether a new lineage stamps the source (async mode).
    fence: bool,
    in_progress: Mutex<HashMap<Uid, watch::Receiver<Outcome>>>,
}

impl Hydration {
    /// `fence`: whether a new lineage stamps the source (async mode; see
    /// the module docs).
    pub(crate) fn new(state: Arc<RedisState>, source: Arc<dyn SourceOfTruth>, fence: bool) -> Self {
        Self {
            shared: Arc::new(Shared {
                state,
                source,
                fence,
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

impl Hydration {
    /// Makes Redis hold `stored`, just read from the source (see
    /// [`RedisState::seed`]), stamping the source with a lineage it starts
    /// when fencing. If the source moved on meanwhile, Redis is left
    /// without the user: the caller reads again.
    pub(crate) async fn seed(&self, uid: &Uid, stored: &UserSnapshot) -> Result<(), StoreError> {
        self.shared.seed(uid, stored).await.map(drop)
    }
}

impl Shared {
    /// Seeds, and stamps when fencing; `false` when the source refused the
    /// stamp (it moved on) and Redis's new state was dropped.
    async fn seed(&self, uid: &Uid, stored: &UserSnapshot) -> Result<bool, StoreError> {
        let seeded = self.state.seed(uid, stored).await?;
        if !self.fence || !seeded.started {
            return Ok(true);
        }
        let (stamp, condition) = stored.stamped(seeded.held.lineage);
        match self.source.write(uid, &stamp, condition).await {
            Ok(WriteOutcome::Written) => Ok(true),
            Ok(WriteOutcome::Refused { .. }) => {
                self.state
                    .settle(uid, seeded.held, 0, RoundEnd::Discard)
                    .await?;
                Ok(false)
            }
            // Without the stamp, a late write may still win over this
            // lineage (the changes made on it are then lost, as before).
            Err(error) => {
                tracing::warn!(%uid, %error, "could not stamp the source with a new lineage");
                Ok(true)
            }
        }
    }

    async fn run(self: Arc<Self>, uid: Uid, now: DateTime<Utc>, done: watch::Sender<Outcome>) {
        let result = async {
            for _ in 0..FILL_ATTEMPTS {
                let stored = self.source.load_or_create(&uid, now).await?;
                if self.seed(&uid, &stored).await? {
                    return Ok(());
                }
            }
            Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!("user {uid} kept changing in the source of truth while Redis loaded it"),
            ))
        }
        .await;
        self.in_progress.lock().remove(&uid);
        done.send_replace(Some(result.map_err(Arc::new)));
    }
}
