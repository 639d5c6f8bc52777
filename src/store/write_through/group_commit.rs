//! Group commit: concurrent changes of one user share one Firestore write.
//!
//! Firestore sustains about one write per second per document, so a user's
//! burst of requests must not become a burst of writes. Whoever changes a
//! user's balances [demands](GroupCommit::demand) that the user's state reach
//! Firestore. Per user, one task runs *rounds*: a round reads the user's
//! current state from the cache (which includes every change demanded before
//! the read) and writes it. Rounds start at most once per interval, so a
//! demand made while a round runs, or soon after one, waits for the next
//! round and shares it with every demand made meanwhile. A user's first
//! demand after a quiet interval is written at once.
//!
//! The task outlives the requests that demanded its round, so a request that
//! is cancelled never leaves the others waiting. It ends, and forgets the
//! user, one quiet interval after its last round.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::firestore::{FirestoreSource, WriteOutcome};
use crate::store::snapshot::UserSnapshot;
use crate::store::{StoreError, StoreErrorKind, StoreFuture};
use crate::uid::Uid;

/// What the cache holds for a user, for a round to write.
#[derive(Debug)]
pub(crate) enum CacheSnapshot {
    /// The user's balances under a new version, and the count of pending
    /// changes the write will cover.
    Ready {
        /// The balances, in the source's kind order.
        state: UserSnapshot,
        /// What to hand back to [`SnapshotCache::written`].
        pending: u64,
    },
    /// Some kind was never read from the source: read it, seed, try again.
    Unseeded,
    /// The cache lost the user (flushed, expired, or holding balances that
    /// did not come from the source, now discarded): the changes of the
    /// demands waiting are gone, and must fail.
    Lost,
}

/// Where a round finds the state to write: the cache.
pub(crate) trait SnapshotCache: Send + Sync + 'static {
    /// The user's current balances, read in one atomic step, with a version
    /// higher than that of every snapshot taken before.
    fn snapshot(self: Arc<Self>, uid: Uid) -> StoreFuture<CacheSnapshot>;

    /// Records balances read from the source for the kinds the cache does
    /// not hold from it yet.
    fn seed(self: Arc<Self>, uid: Uid, state: UserSnapshot) -> StoreFuture<()>;

    /// Firestore now holds a snapshot that covered `pending`.
    fn written(self: Arc<Self>, uid: Uid, pending: u64) -> StoreFuture<()>;
}

/// Coalesces each user's writes into at most one round per interval.
/// Cheap to clone.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
}

struct Shared {
    cache: Arc<dyn SnapshotCache>,
    source: FirestoreSource,
    interval: Duration,
    users: Mutex<HashMap<Uid, UserRounds>>,
    writes: AtomicU64,
}

/// One user's demands and the task that serves them.
struct UserRounds {
    /// Demands made so far; each demand's ticket is this count after it.
    demanded: u64,
    /// Demands carried by the rounds done so far.
    served: u64,
    /// The decision instant of the latest demand: when a kind missing from
    /// Firestore too is created, it is refilled then.
    now: DateTime<Utc>,
    progress: Arc<watch::Sender<Progress>>,
}

/// What the rounds of one user achieved, by demand ticket.
#[derive(Debug, Default)]
struct Progress {
    /// Every demand up to this ticket is in Firestore.
    stored: u64,
    /// Every demand up to this ticket was in a round that failed...
    failed: u64,
    /// ...with this error.
    error: Option<Arc<StoreError>>,
}

/// A demand made; [`wait`](Demand::wait) until Firestore holds it.
pub(crate) struct Demand {
    ticket: u64,
    progress: watch::Receiver<Progress>,
}

impl GroupCommit {
    /// Writes states read from `cache` to `source`, each user's at most once
    /// per `interval`.
    pub(crate) fn new(
        cache: Arc<dyn SnapshotCache>,
        source: FirestoreSource,
        interval: Duration,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                cache,
                source,
                interval,
                users: Mutex::default(),
                writes: AtomicU64::new(0),
            }),
        }
    }

    /// Asks for the user's current state (every change made to it so far) to
    /// reach Firestore; `now` is the instant of the change. Must be called
    /// within a Tokio runtime.
    pub(crate) fn demand(&self, uid: &Uid, now: DateTime<Utc>) -> Demand {
        let mut users = self.shared.users.lock();
        let rounds = users.entry(uid.clone()).or_insert_with(|| {
            let (progress, _) = watch::channel(Progress::default());
            let progress = Arc::new(progress);
            tokio::spawn(run_rounds(
                self.shared.clone(),
                uid.clone(),
                progress.clone(),
            ));
            UserRounds {
                demanded: 0,
                served: 0,
                now,
                progress,
            }
        });
        rounds.demanded += 1;
        rounds.now = rounds.now.max(now);
        Demand {
            ticket: rounds.demanded,
            progress: rounds.progress.subscribe(),
        }
    }

    /// How many users have changes waiting for a round (in this instance).
    pub(crate) fn pending_users(&self) -> usize {
        let users = self.shared.users.lock();
        users.values().filter(|r| r.demanded > r.served).count()
    }

    /// How many writes reached Firestore (a round whose state Firestore
    /// already held writes nothing).
    pub(crate) fn writes(&self) -> u64 {
        self.shared.writes.load(Ordering::Relaxed)
    }
}

impl Demand {
    /// Waits for the round that carries this demand: `Ok` once Firestore
    /// holds it, the round's error if that round failed.
    pub(crate) async fn wait(mut self) -> Result<(), StoreError> {
        let ticket = self.ticket;
        let progress = self
            .progress
            .wait_for(|p| p.stored >= ticket || p.failed >= ticket)
            .await;
        match progress.as_deref() {
            Ok(p) if p.stored >= ticket => Ok(()),
            Ok(Progress {
                error: Some(error), ..
            }) => Err(StoreError::new(
                error.kind(),
                "the Firestore write carrying this change failed",
            )
            .with_source(error.clone())),
            _ => Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "the Firestore writer stopped before writing this change",
            )),
        }
    }
}

/// Serves one user's demands, one round per interval, until an interval
/// passes without a demand.
async fn run_rounds(shared: Arc<Shared>, uid: Uid, progress: Arc<watch::Sender<Progress>>) {
    let mut last_round: Option<Instant> = None;
    loop {
        if let Some(started) = last_round {
            tokio::time::sleep_until(started + shared.interval).await;
        }
        let (target, now) = {
            let mut users = shared.users.lock();
            match users.get(&uid) {
                Some(rounds) if rounds.demanded > rounds.served => (rounds.demanded, rounds.now),
                _ => {
                    users.remove(&uid);
                    return;
                }
            }
        };
        last_round = Some(Instant::now());
        let result = shared.round(&uid, now).await;
        progress.send_modify(|p| match result {
            Ok(()) => p.stored = target,
            Err(error) => {
                tracing::warn!(%uid, %error, "a Firestore write failed");
                p.failed = target;
                p.error = Some(Arc::new(error));
            }
        });
        if let Some(rounds) = shared.users.lock().get_mut(&uid) {
            rounds.served = target;
        }
    }
}

impl Shared {
    /// Reads the user's state from the cache and writes it to Firestore.
    async fn round(&self, uid: &Uid, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut snapshot = self.cache.clone().snapshot(uid.clone()).await?;
        if let CacheSnapshot::Unseeded = snapshot {
            let stored = self.source.load_or_create(uid, now).await?;
            self.cache.clone().seed(uid.clone(), stored).await?;
            snapshot = self.cache.clone().snapshot(uid.clone()).await?;
        }
        let CacheSnapshot::Ready { state, pending } = snapshot else {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!("the cache lost the state of user {uid} before it reached Firestore"),
            ));
        };
        if self.source.write(uid, &state).await? == WriteOutcome::Written {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(error) = self.cache.clone().written(uid.clone(), pending).await {
            // Harmless: the user is written again, for nothing, later.
            tracing::warn!(%uid, %error, "could not record a Firestore write in the cache");
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "../../../tests/support/firestore_emulator.rs"]
mod firestore_emulator;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KindBalance;
    use crate::{TicketKind, Uid};

    use super::firestore_emulator::{FIRESTORE_TIMEOUT, FirestoreEmulator};

    /// A cache of one kind's balances, versioned like the Redis cache: each
    /// snapshot read takes the next version.
    #[derive(Default)]
    struct CountingCache {
        users: Mutex<HashMap<Uid, (u64, KindBalance)>>,
    }

    impl CountingCache {
        fn spend(&self, uid: &Uid) {
            let mut users = self.users.lock();
            let (_, balance) = users.entry(uid.clone()).or_insert((
                0,
                KindBalance {
                    remaining: 1000,
                    last_refill: "2026-03-01T08:00:00Z".parse().unwrap(),
                },
            ));
            balance.remaining -= 1;
        }
    }

    impl SnapshotCache for CountingCache {
        fn snapshot(self: Arc<Self>, uid: Uid) -> StoreFuture<CacheSnapshot> {
            let snapshot = match self.users.lock().get_mut(&uid) {
                Some((version, balance)) => {
                    *version += 1;
                    CacheSnapshot::Ready {
                        state: UserSnapshot {
                            version: *version,
                            balances: vec![*balance],
                        },
                        pending: 0,
                    }
                }
                None => CacheSnapshot::Lost,
            };
            Box::pin(std::future::ready(Ok(snapshot)))
        }

        fn seed(self: Arc<Self>, _: Uid, _: UserSnapshot) -> StoreFuture<()> {
            Box::pin(std::future::ready(Ok(())))
        }

        fn written(self: Arc<Self>, _: Uid, _: u64) -> StoreFuture<()> {
            Box::pin(std::future::ready(Ok(())))
        }
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        "2026-03-01T08:00:00Z".parse().unwrap()
    }

    fn kinds() -> [TicketKind; 1] {
        [TicketKind::new("upload", 1000)]
    }

    #[tokio::test]
    async fn a_burst_of_one_user_costs_at_most_two_writes_and_ends_exact() {
        let db = FirestoreEmulator::shared().client("group-commit").await;
        let source = FirestoreSource::new(db, kinds()).timeout(FIRESTORE_TIMEOUT);
        let cache = Arc::new(CountingCache::default());
        let writer = GroupCommit::new(cache.clone(), source.clone(), Duration::from_secs(1));
        let uid = Uid::parse("burst").unwrap();

        let burst = (0..200).map(|_| {
            let (cache, writer, uid) = (cache.clone(), writer.clone(), uid.clone());
            tokio::spawn(async move {
                cache.spend(&uid);
                writer.demand(&uid, now()).wait().await
            })
        });
        for request in burst.collect::<Vec<_>>() {
            request.await.unwrap().expect("written");
        }

        // The first spend is written at once, every later one in the next
        // round, one interval on.
        assert!(writer.writes() <= 2, "{} writes", writer.writes());
        let stored = source
            .load(&uid, "2026-03-01T09:00:00Z".parse().unwrap())
            .await
            .unwrap()
            .expect("written");
        assert_eq!(stored.balances[0].remaining, 800);
    }

    #[tokio::test]
    async fn a_failed_round_fails_its_demands() {
        let mut emulator = FirestoreEmulator::start();
        let db = emulator.client("unreachable").await;
        emulator.kill();
        let source = FirestoreSource::new(db, kinds()).timeout(Duration::from_secs(2));
        let cache = Arc::new(CountingCache::default());
        let writer = GroupCommit::new(cache.clone(), source, Duration::from_secs(1));
        let uid = Uid::parse("unlucky").unwrap();
        cache.spend(&uid);
        let error = writer.demand(&uid, now()).wait().await.unwrap_err();
        assert!(
            matches!(
                error.kind(),
                StoreErrorKind::Unavailable | StoreErrorKind::Timeout
            ),
            "{error}"
        );
        assert_eq!(writer.writes(), 0);
    }
}
