//! [`MemorySource`]: a source of truth in this process's memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::{Origins, SourceOfTruth, UserSnapshot, WriteCondition, WriteOutcome, finished};
use crate::kind::TicketKind;
use crate::store::{KindBalance, StoreError, StoreErrorKind, StoreFuture};
use crate::uid::Uid;

/// How long an operation may wait for a held write by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`SourceOfTruth`] in memory: what Firestore is to production, for tests
/// of the write-through and single-process experiments. Clones share the
/// same users.
///
/// It can play Firestore's faults: [`set_reachable`](Self::set_reachable)
/// makes every operation fail as an unreachable backend does, and
/// [`hold_writes`](Self::hold_writes) keeps writes in flight until released,
/// each landing then even if its caller gave up meanwhile (as a request
/// already on the wire does).
#[derive(Clone)]
pub struct MemorySource {
    shared: Arc<Shared>,
    timeout: Duration,
}

struct Shared {
    kinds: Vec<Arc<TicketKind>>,
    users: Mutex<HashMap<Uid, UserSnapshot>>,
    reachable: AtomicBool,
    held: Mutex<HeldWrites>,
}

/// Writes held until release, in the order they were made.
#[derive(Default)]
struct HeldWrites {
    holding: bool,
    queue: Vec<HeldWrite>,
}

struct HeldWrite {
    uid: Uid,
    state: UserSnapshot,
    condition: WriteCondition,
    /// Its caller, if it still waits.
    outcome: oneshot::Sender<WriteOutcome>,
}

impl std::fmt::Debug for MemorySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySource")
            .field("kinds", &self.shared.kinds)
            .finish_non_exhaustive()
    }
}

impl MemorySource {
    /// An empty source holding `kinds` (pass the registry's kinds).
    pub fn new(kinds: impl IntoIterator<Item = TicketKind>) -> Self {
        Self {
            shared: Arc::new(Shared {
                kinds: kinds.into_iter().map(Arc::new).collect(),
                users: Mutex::default(),
                reachable: AtomicBool::new(true),
                held: Mutex::default(),
            }),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// How long a caller waits for a held write before it fails with
    /// [`StoreErrorKind::Timeout`] (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What is stored for `uid`, as stored (no kinds added).
    pub fn stored(&self, uid: &Uid) -> Option<UserSnapshot> {
        self.shared.users.lock().get(uid).cloned()
    }

    /// Makes every operation fail (`false`) as an unreachable Firestore
    /// does, or work again (`true`).
    pub fn set_reachable(&self, reachable: bool) {
        self.shared.reachable.store(reachable, Ordering::SeqCst);
    }

    /// Holds every write (`true`) until released (`false`). A held write
    /// fails with [`StoreErrorKind::Timeout`] after the
    /// [timeout](Self::timeout), and still lands once released: by the time
    /// `hold_writes(false)` returns, every held write has landed (or been
    /// refused by its condition), in the order they were made.
    pub fn hold_writes(&self, hold: bool) {
        let mut held = self.shared.held.lock();
        held.holding = hold;
        if !hold {
            for write in std::mem::take(&mut held.queue) {
                let outcome = self.shared.apply(&write.uid, &write.state, write.condition);
                // The caller may have given up: the write landed all the same.
                let _ = write.outcome.send(outcome);
            }
        }
    }

    /// Replaces what is stored for `uid` as an edit made straight to the
    /// document would (the Firebase console, another backend): `balances`
    /// (one per kind), absolute, as a state of no lineage and a new version,
    /// which no write of a lineage seeded before it may replace.
    pub fn edit(&self, uid: &Uid, balances: Vec<KindBalance>) {
        let mut users = self.shared.users.lock();
        let version = users.get(uid).map_or(0, |stored| stored.version) + 1;
        let edited = UserSnapshot {
            version,
            lineage: 0,
            // Made on top of what was stored: its charges are included.
            origins: users
                .get(uid)
                .map_or_else(Origins::none, Origins::seeded_from),
            balances,
        };
        users.insert(uid.clone(), edited);
    }

    /// Deletes what is stored for `uid`, as deleting the document would:
    /// the user is new again.
    pub fn delete(&self, uid: &Uid) {
        self.shared.users.lock().remove(uid);
    }

    /// How many writes are held, waiting for release.
    pub fn held_writes(&self) -> usize {
        self.shared.held.lock().queue.len()
    }

    fn reachable(&self) -> Result<(), StoreError> {
        if self.shared.reachable.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "the in-memory source is set unreachable",
            ))
        }
    }
}

impl Shared {
    /// The stored state with the kinds it lacks at their initial balance;
    /// whether any was lacking.
    fn completed(&self, stored: &UserSnapshot, now: DateTime<Utc>) -> (UserSnapshot, bool) {
        let mut state = stored.clone();
        let missing = state.balances.len() < self.kinds.len();
        let initial = UserSnapshot::initial(&self.kinds, now);
        state
            .balances
            .extend(initial.balances.into_iter().skip(stored.balances.len()));
        (state, missing)
    }

    fn apply(&self, uid: &Uid, state: &UserSnapshot, condition: WriteCondition) -> WriteOutcome {
        let mut users = self.users.lock();
        let stored = users.get(uid);
        if condition.allows(stored.map(UserSnapshot::point)) {
            users.insert(uid.clone(), state.clone());
            WriteOutcome::Written
        } else {
            WriteOutcome::Refused {
                stored: stored.cloned(),
            }
        }
    }
}

impl SourceOfTruth for MemorySource {
    fn kinds(&self) -> &[Arc<TicketKind>] {
        &self.shared.kinds
    }

    fn load(&self, uid: &Uid, now: DateTime<Utc>) -> StoreFuture<Option<UserSnapshot>> {
        let loaded = self.reachable().map(|()| {
            let users = self.shared.users.lock();
            users
                .get(uid)
                .map(|stored| self.shared.completed(stored, now).0)
        });
        finished(loaded)
    }

    fn load_or_create(&self, uid: &Uid, now: DateTime<Utc>) -> StoreFuture<UserSnapshot> {
        let loaded = self.reachable().map(|()| {
            let mut users = self.shared.users.lock();
            let state = match users.get(uid) {
                Some(stored) => {
                    let (state, missing) = self.shared.completed(stored, now);
                    if !missing {
                        return state;
                    }
                    state
                }
                None => UserSnapshot::initial(&self.shared.kinds, now),
            };
            users.insert(uid.clone(), state.clone());
            state
        });
        finished(loaded)
    }

    fn write(
        &self,
        uid: &Uid,
        state: &UserSnapshot,
        condition: WriteCondition,
    ) -> StoreFuture<WriteOutcome> {
        if let Err(error) = self.reachable() {
            return finished(Err(error));
        }
        let landed = {
            let mut held = self.shared.held.lock();
            if !held.holding {
                return finished(Ok(self.shared.apply(uid, state, condition)));
            }
            let (outcome, landed) = oneshot::channel();
            held.queue.push(HeldWrite {
                uid: uid.clone(),
                state: state.clone(),
                condition,
                outcome,
            });
            landed
        };
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, landed).await {
                Ok(Ok(outcome)) => Ok(outcome),
                Ok(Err(_)) => Err(StoreError::new(
                    StoreErrorKind::Unavailable,
                    "the in-memory source was dropped while it held this write",
                )),
                Err(_) => Err(StoreError::new(
                    StoreErrorKind::Timeout,
                    format!("the in-memory source held a write for more than {timeout:?}"),
                )),
            }
        })
    }
}
