//! Write rounds: each user's changes reach the source of truth in rounds,
//! and each change is answered by what the source then holds.
//!
//! Firestore sustains about one write per second per document, so a user's
//! burst of requests must not become a burst of writes. Whoever changes a
//! user's balances in Redis [demands](GroupCommit::demand) a round, naming
//! the point of the user's history where the change was made (lineage and
//! version, from the script that made it). Per user, one task of this
//! instance runs rounds: a round takes the user's state from Redis under a
//! lease that every instance respects and at most once per write interval
//! (see `lua/snapshot.lua`), writes it to the source where the source's
//! state allows it ([`WriteCondition`](crate::store::WriteCondition)), and
//! then answers every demand it took by **what the source holds**: a change
//! is answered `Ok` only when the source's state includes it
//! ([`UserSnapshot::includes`]). A change lost with Redis's state (a flush,
//! a reload), or made on a state the source refused, is answered with an
//! error, so its request is never told it was charged.
//!
//! The task outlives the requests that demanded its round, so a request that
//! is cancelled never leaves the others waiting. It ends, and forgets the
//! user, when no demand is left.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::hydration::Hydration;
use super::redis_state::{RedisState, RoundEnd, Snapshot};
use crate::store::source::{Point, SourceOfTruth, UserSnapshot, WriteOutcome};
use crate::store::{StoreError, StoreErrorKind};
use crate::uid::Uid;

/// How often a round that finds another instance's round holding the user
/// asks again, rather than sleeping out that round's whole lease (seconds,
/// while the round itself usually takes one source write).
const LEASE_POLL: Duration = Duration::from_millis(10);

/// How many times a failed round's fence is tried while the source keeps
/// changing under it.
const FENCE_ATTEMPTS: usize = 3;

/// Runs each user's write rounds. Cheap to clone.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
}

struct Shared {
    state: Arc<RedisState>,
    source: Arc<dyn SourceOfTruth>,
    hydration: Hydration,
    /// How long a round may take (the lease it holds on the user).
    lease: Duration,
    users: Mutex<HashMap<Uid, UserRounds>>,
    writes: AtomicU64,
}

/// One user's demands not yet taken by a round.
struct UserRounds {
    waiting: Vec<Waiter>,
    /// A round is wanted even with nobody waiting (async mode, recovery).
    wanted: bool,
    /// The decision instant of the latest demand: a kind that the source
    /// lacks is created refilled then.
    now: DateTime<Utc>,
}

struct Waiter {
    made_at: Point,
    answer: oneshot::Sender<Result<(), StoreError>>,
}

/// A demand made; [`wait`](Demand::wait) for the round that answers it.
pub(crate) struct Demand(oneshot::Receiver<Result<(), StoreError>>);

impl GroupCommit {
    pub(crate) fn new(
        state: Arc<RedisState>,
        source: Arc<dyn SourceOfTruth>,
        hydration: Hydration,
        lease: Duration,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                state,
                source,
                hydration,
                lease,
                users: Mutex::default(),
                writes: AtomicU64::new(0),
            }),
        }
    }

    /// Asks for a round that writes the change made at `made_at`; `now` is
    /// the instant of the change. Must be called within a Tokio runtime.
    pub(crate) fn demand(&self, uid: &Uid, made_at: Point, now: DateTime<Utc>) -> Demand {
        let (answer, answered) = oneshot::channel();
        self.enqueue(uid, now, |rounds| {
            rounds.waiting.push(Waiter { made_at, answer });
        });
        Demand(answered)
    }

    /// Asks for a round without waiting for it (async mode, recovery).
    pub(crate) fn nudge(&self, uid: &Uid, now: DateTime<Utc>) {
        self.enqueue(uid, now, |rounds| rounds.wanted = true);
    }

    fn enqueue(&self, uid: &Uid, now: DateTime<Utc>, add: impl FnOnce(&mut UserRounds)) {
        let mut users = self.shared.users.lock();
        let rounds = users.entry(uid.clone()).or_insert_with(|| {
            tokio::spawn(run_rounds(self.shared.clone(), uid.clone()));
            UserRounds {
                waiting: Vec::new(),
                wanted: false,
                now,
            }
        });
        rounds.now = rounds.now.max(now);
        add(rounds);
    }

    /// How many users have changes waiting for a round (in this instance).
    pub(crate) fn pending_users(&self) -> usize {
        self.shared.users.lock().len()
    }

    /// How many writes reached the source.
    pub(crate) fn writes(&self) -> u64 {
        self.shared.writes.load(Ordering::Relaxed)
    }
}

impl Demand {
    /// Waits for the round that takes this demand: `Ok` once the source
    /// holds the change, an error when it does not (and will not from that
    /// round: the caller decides what the change becomes).
    pub(crate) async fn wait(self) -> Result<(), StoreError> {
        self.0.await.unwrap_or_else(|_| {
            Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "the write-through's writer stopped before writing this change",
            ))
        })
    }
}

/// Serves one user's demands, a round at a time, until none is left.
async fn run_rounds(shared: Arc<Shared>, uid: Uid) {
    loop {
        let (waiting, now) = {
            let mut users = shared.users.lock();
            match users.get_mut(&uid) {
                Some(rounds) if !rounds.waiting.is_empty() || rounds.wanted => {
                    rounds.wanted = false;
                    (std::mem::take(&mut rounds.waiting), rounds.now)
                }
                _ => {
                    users.remove(&uid);
                    return;
                }
            }
        };
        let made_at: Vec<Point> = waiting.iter().map(|waiter| waiter.made_at).collect();
        let round = shared
            .judged_round(&uid, now, &made_at)
            .await
            .map_err(Arc::new);
        for waiter in waiting {
            let answer = match &round {
                Ok(Round { held, dropped }) => {
                    // Changes of a Redis history the source refused are not
                    // judged by version: a rolled-back history may share
                    // versions with the one the source holds.
                    let judged = dropped.is_none_or(|lineage| lineage != waiter.made_at.lineage);
                    match held {
                        Some(held) if judged && held.includes(waiter.made_at) => Ok(()),
                        _ => Err(not_held(&uid)),
                    }
                }
                Err(error) => Err(StoreError::new(
                    error.kind(),
                    "the write round carrying this change failed",
                )
                .with_source(error.clone())),
            };
            // The request may be gone: nobody to answer.
            let _ = waiter.answer.send(answer);
        }
    }
}

/// What a round found.
struct Round {
    /// What the source holds after it (`None`: no document).
    held: Option<UserSnapshot>,
    /// The lineage whose Redis state the source refused, and Redis dropped.
    dropped: Option<u64>,
}

impl Shared {
    /// A round whose failure (Redis or the source not answering, its write
    /// timing out) is not the end of it: what another round wrote, or its
    /// own write that landed after all, may hold the changes it took. So if
    /// the source answers, what it holds decides; only when it does not is
    /// the round an error.
    ///
    /// A write that timed out may still land after that read, though. When
    /// callers wait on changes (`waiting`, sync mode) that the source does
    /// not hold, the read is made final first: what the source holds is written again
    /// under a new lineage ([`UserSnapshot::stamped`]), on condition that it
    /// still holds it, so that the late write can never land. (Redis's
    /// lineage is then refused at its next round and reloaded, as the sync
    /// store drops a change the source did not take anyway.) Only if that
    /// fails too is the outcome unknown, and the round an error.
    async fn judged_round(
        &self,
        uid: &Uid,
        now: DateTime<Utc>,
        waiting: &[Point],
    ) -> Result<Round, StoreError> {
        let error = match self.round(uid, now).await {
            Ok(round) => return Ok(round),
            Err(error) => error,
        };
        tracing::warn!(%uid, %error, "a write round failed; asking the source what it holds");
        let Ok(held) = self.source.load(uid, now).await else {
            return Err(error);
        };
        let held = match held {
            Some(held) if waiting.iter().any(|&made_at| !held.includes(made_at)) => {
                Some(self.fence(uid, held).await.map_err(|_| error)?)
            }
            held => held,
        };
        Ok(Round {
            held,
            dropped: None,
        })
    }

    /// Writes `held` again under a new lineage, on condition that the source
    /// still holds it (or, if it moved on, what it holds then); returns the
    /// state the source then holds, which no write on its way can replace.
    async fn fence(&self, uid: &Uid, mut held: UserSnapshot) -> Result<UserSnapshot, StoreError> {
        for _ in 0..FENCE_ATTEMPTS {
            let (stamp, condition) = held.stamped(self.state.new_lineage());
            let written =
                tokio::time::timeout(self.lease, self.source.write(uid, &stamp, condition))
                    .await
                    .unwrap_or_else(|_| {
                        Err(StoreError::new(
                            StoreErrorKind::Timeout,
                            format!("the fence of user {uid} outlasted the round's lease"),
                        ))
                    })?;
            match written {
                WriteOutcome::Written => return Ok(stamp),
                WriteOutcome::Refused {
                    stored: Some(stored),
                } => held = stored,
                WriteOutcome::Refused { stored: None } => break,
            }
        }
        Err(StoreError::new(
            StoreErrorKind::Unavailable,
            format!("user {uid} kept changing in the source of truth while a round fenced it"),
        ))
    }

    /// One round: takes the user's state from Redis and writes it.
    async fn round(&self, uid: &Uid, now: DateTime<Utc>) -> Result<Round, StoreError> {
        let deadline = tokio::time::Instant::now() + 2 * self.lease;
        loop {
            let taken = match self.state.snapshot(uid).await? {
                Snapshot::Taken(taken) => taken,
                Snapshot::Busy { pace, lease } => {
                    // A lease is a bound: the round holding it usually ends
                    // within one source write, and then this one may go.
                    let wait = pace.max(lease.min(LEASE_POLL));
                    if tokio::time::Instant::now() + wait > deadline {
                        return Err(StoreError::new(
                            StoreErrorKind::Timeout,
                            format!("other write rounds held user {uid} for too long"),
                        ));
                    }
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Snapshot::Unseeded => {
                    self.hydration.fill(uid, now).await?;
                    continue;
                }
                // Nothing to write: the source's state decides.
                Snapshot::Lost => {
                    return Ok(Round {
                        held: self.source.load(uid, now).await?,
                        dropped: None,
                    });
                }
            };
            let point = taken.state.point();
            let written = tokio::time::timeout(
                self.lease,
                self.source.write(uid, &taken.state, taken.condition()),
            )
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::new(
                    StoreErrorKind::Timeout,
                    format!("the write of user {uid} outlasted the round's lease"),
                ))
            });
            let (end, held) = match written {
                Ok(WriteOutcome::Written) => {
                    self.writes.fetch_add(1, Ordering::Relaxed);
                    (RoundEnd::Written, Ok(Some(taken.state)))
                }
                Ok(WriteOutcome::Refused { stored }) => (
                    RoundEnd::Refused(stored.as_ref().map(UserSnapshot::point)),
                    Ok(stored),
                ),
                Err(error) => (RoundEnd::Failed, Err(error)),
            };
            let kept = match self.state.settle(uid, point, taken.marks, end).await {
                Ok(kept) => kept,
                Err(error) => {
                    // The lease runs out by itself; the marks stay pending.
                    tracing::warn!(%uid, %error, "could not settle a write round in Redis");
                    true
                }
            };
            let dropped = (matches!(end, RoundEnd::Refused(_)) && !kept).then_some(point.lineage);
            if dropped.is_some() {
                tracing::info!(%uid, "the source refused Redis's state; dropped it to reload");
            }
            return held.map(|held| Round { held, dropped });
        }
    }
}

fn not_held(uid: &Uid) -> StoreError {
    StoreError::new(
        StoreErrorKind::Unavailable,
        format!(
            "the change to user {uid} was lost with Redis's state before the source of \
             truth held it (Redis flushed, restarted or reloaded); nothing was charged"
        ),
    )
}
