//! The write-through's own state in Redis, next to the Redis store's
//! balances and under the same hash tag.
//!
//! In the user's balances hash `<prefix>{uid}:t` (the Redis store's, see its
//! module docs), two fields of ours:
//! - `v`: the version of the user's state, increased by every snapshot
//!   taken for a write, so that a later snapshot always carries a higher
//!   version. Seeding a user afresh sets it well past Firestore's version
//!   (see `lua/seed.lua`), so that no write of a lost Redis state still on
//!   its way can outrank the new state's;
//! - `s`: the kinds seeded from Firestore, as `,upload,ai,`.
//!
//! A balance outside `s` was made by the Redis store on its own: its charges
//! see an unknown user as new, so after a flush or an expiry they would start
//! from the initial balance instead of Firestore's. The write-through hands
//! the Redis store its kinds with an initial balance of zero, so such a
//! balance can pay for nothing; a refusal is checked here, and an unseeded
//! balance is replaced by Firestore's.
//!
//! One key of ours: `<prefix>{uid}:w`, a counter of changes that Firestore
//! may not hold yet (kept until a write covers it, so that any instance can
//! finish the writes of one that died).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::{RedisError, Script, ScriptInvocation};

use super::group_commit::{CacheSnapshot, SnapshotCache};
use crate::kind::TicketKind;
use crate::store::RedisStore;
use crate::store::redis::{Connection, KeyLayout};
use crate::store::snapshot::UserSnapshot;
use crate::store::{KindBalance, StoreError, StoreErrorKind, StoreFuture};
use crate::uid::Uid;

struct Scripts {
    check: Script,
    seed: Script,
    snapshot: Script,
    mark: Script,
    written: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    check: Script::new(include_str!("lua/check.lua")),
    seed: Script::new(include_str!("lua/seed.lua")),
    snapshot: Script::new(include_str!("lua/snapshot.lua")),
    mark: Script::new(include_str!("lua/mark.lua")),
    written: Script::new(include_str!("lua/written.lua")),
});

/// Users scanned per `SCAN` call when looking for pending writes.
const SCAN_COUNT: usize = 1000;

/// What Redis holds for some kinds of a user.
#[derive(Debug)]
pub(crate) struct Checked {
    /// Every kind asked for is seeded from Firestore.
    pub(crate) seeded: bool,
    /// Per kind asked for, the stored balance, if any (no refill applied).
    pub(crate) stored: Vec<Option<KindBalance>>,
}

/// Our keys and scripts, on the Redis store's connection.
#[derive(Clone)]
pub(crate) struct RedisState {
    connection: Connection,
    keys: KeyLayout,
    timeout: Duration,
    kinds: Vec<Arc<TicketKind>>,
    idle_ttl_millis: u64,
}

impl RedisState {
    /// Our state next to `store`'s, on its connection and under its keys,
    /// each call bounded by `timeout`. Seeded balances expire after
    /// `idle_ttl` without writes, like the store's own.
    pub(crate) fn new(
        store: &RedisStore,
        timeout: Duration,
        kinds: Vec<Arc<TicketKind>>,
        idle_ttl: Duration,
    ) -> Self {
        Self {
            connection: store.connection(),
            keys: store.keys().clone(),
            timeout,
            kinds,
            idle_ttl_millis: u64::try_from(idle_ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Whether `kinds` are seeded for `uid`, and their stored balances.
    pub(crate) async fn check(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
    ) -> Result<Checked, StoreError> {
        let mut invocation = SCRIPTS.check.prepare_invoke();
        invocation.key(self.keys.balances(uid));
        for kind in kinds {
            invocation.arg(kind.name());
        }
        let reply: Vec<i64> = self.run("check", &invocation).await?;
        let Some((&seeded, values)) = reply.split_first() else {
            return Err(unexpected("check", &reply));
        };
        if values.len() != 2 * kinds.len() {
            return Err(unexpected("check", &reply));
        }
        Ok(Checked {
            seeded: seeded == 1,
            stored: values
                .chunks_exact(2)
                .map(|pair| balance(pair[0], pair[1]))
                .collect(),
        })
    }

    /// Records `state` (read from Firestore) for the kinds not seeded yet.
    pub(crate) async fn seed_state(
        &self,
        uid: &Uid,
        state: &UserSnapshot,
    ) -> Result<(), StoreError> {
        let mut invocation = SCRIPTS.seed.prepare_invoke();
        invocation
            .key(self.keys.balances(uid))
            .arg(state.version)
            .arg(self.idle_ttl_millis);
        for (kind, balance) in self.kinds.iter().zip(&state.balances) {
            invocation
                .arg(kind.name())
                .arg(balance.remaining)
                .arg(balance.last_refill.timestamp_millis());
        }
        let _version: Vec<i64> = self.run("seed", &invocation).await?;
        Ok(())
    }

    /// Counts one more change that Firestore may not hold yet; `false` when
    /// the user's balances were not seeded (nothing was counted).
    pub(crate) async fn mark_pending(&self, uid: &Uid) -> Result<bool, StoreError> {
        let mut invocation = SCRIPTS.mark.prepare_invoke();
        invocation
            .key(self.keys.balances(uid))
            .key(self.keys.pending(uid));
        let counter: i64 = self.run("mark", &invocation).await?;
        Ok(counter > 0)
    }

    /// Every user with changes that Firestore may not hold yet.
    pub(crate) async fn pending_users(&self) -> Result<Vec<Uid>, StoreError> {
        let pattern = self.keys.pending_pattern();
        let mut users = Vec::new();
        let mut cursor = 0_u64;
        loop {
            let mut connection = self.connection.clone();
            let mut command = redis::cmd("SCAN");
            command
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let scan = connection.query::<(u64, Vec<String>)>(&command);
            let (next, keys) = tokio::time::timeout(self.timeout, scan)
                .await
                .map_err(|_| timed_out("scan", self.timeout))?
                .map_err(|e| failed("scan", e))?;
            users.extend(keys.iter().filter_map(|key| self.keys.pending_uid(key)));
            if next == 0 {
                return Ok(users);
            }
            cursor = next;
        }
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        operation: &str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        tokio::time::timeout(self.timeout, connection.invoke_prepared(invocation))
            .await
            .map_err(|_| timed_out(operation, self.timeout))?
            .map_err(|e| failed(operation, e))
    }
}

impl SnapshotCache for RedisState {
    fn snapshot(self: Arc<Self>, uid: Uid) -> StoreFuture<CacheSnapshot> {
        Box::pin(async move {
            let mut invocation = SCRIPTS.snapshot.prepare_invoke();
            invocation
                .key(self.keys.balances(&uid))
                .key(self.keys.pending(&uid));
            for kind in &self.kinds {
                invocation.arg(kind.name());
            }
            let reply: Vec<i64> = self.run("snapshot", &invocation).await?;
            match reply.as_slice() {
                [0] => Ok(CacheSnapshot::Lost),
                [1] => Ok(CacheSnapshot::Unseeded),
                [2, version, pending, values @ ..] if values.len() == 2 * self.kinds.len() => {
                    let balances = values
                        .chunks_exact(2)
                        .map(|pair| balance(pair[0], pair[1]))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| unexpected("snapshot", &reply))?;
                    Ok(CacheSnapshot::Ready {
                        state: UserSnapshot {
                            version: u64::try_from(*version).unwrap_or(0),
                            balances,
                        },
                        pending: u64::try_from(*pending).unwrap_or(0),
                    })
                }
                _ => Err(unexpected("snapshot", &reply)),
            }
        })
    }

    fn seed(self: Arc<Self>, uid: Uid, state: UserSnapshot) -> StoreFuture<()> {
        Box::pin(async move { self.seed_state(&uid, &state).await })
    }

    fn written(self: Arc<Self>, uid: Uid, pending: u64) -> StoreFuture<()> {
        Box::pin(async move {
            let mut invocation = SCRIPTS.written.prepare_invoke();
            invocation.key(self.keys.pending(&uid)).arg(pending);
            let _forgotten: i64 = self.run("written", &invocation).await?;
            Ok(())
        })
    }
}

/// A stored count and last refill (Unix ms), `None` when absent (-1).
fn balance(count: i64, refill_millis: i64) -> Option<KindBalance> {
    Some(KindBalance {
        remaining: u32::try_from(count).ok()?,
        last_refill: DateTime::<Utc>::from_timestamp_millis(refill_millis)
            .filter(|_| refill_millis >= 0)?,
    })
}

fn failed(operation: &str, error: RedisError) -> StoreError {
    if matches!(error.code(), Some("TICKETS_CORRUPT" | "WRONGTYPE")) {
        return StoreError::new(
            StoreErrorKind::Corrupt,
            format!(
                "Redis write-through {operation}: a key holds a value tower-tickets did not \
                 write; delete it or use another key prefix"
            ),
        )
        .with_source(error);
    }
    let kind = if error.is_timeout() {
        StoreErrorKind::Timeout
    } else {
        StoreErrorKind::Unavailable
    };
    StoreError::new(kind, format!("Redis write-through {operation} failed")).with_source(error)
}

fn timed_out(operation: &str, timeout: Duration) -> StoreError {
    StoreError::new(
        StoreErrorKind::Timeout,
        format!("Redis write-through {operation} got no answer within {timeout:?}"),
    )
}

fn unexpected(operation: &str, reply: &[i64]) -> StoreError {
    StoreError::new(
        StoreErrorKind::Corrupt,
        format!("Redis write-through {operation} answered {reply:?}, which its script never does"),
    )
}

#[cfg(test)]
#[allow(dead_code)] // The tests use the standalone server only.
#[path = "../../../tests/support/redis_server.rs"]
mod redis_server;

#[cfg(test)]
mod tests {
    use super::redis_server::shared_server;
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn kinds() -> Vec<Arc<TicketKind>> {
        vec![
            Arc::new(TicketKind::new("upload", 5)),
            Arc::new(TicketKind::new("ai", 3)),
        ]
    }

    async fn state(prefix: &str) -> Arc<RedisState> {
        let timeout = Duration::from_secs(2);
        let store = RedisStore::standalone(shared_server().url())
            .key_prefix(prefix)
            .timeout(timeout)
            .caching_a_source()
            .connect()
            .await
            .expect("the test server answers");
        Arc::new(RedisState::new(&store, timeout, kinds(), DAY))
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn from_firestore(version: u64) -> UserSnapshot {
        UserSnapshot {
            version,
            balances: vec![
                KindBalance {
                    remaining: 4,
                    last_refill: at("2026-03-27T08:00:00Z"),
                },
                KindBalance {
                    remaining: 1,
                    last_refill: at("2026-03-27T09:00:00Z"),
                },
            ],
        }
    }

    fn redis() -> redis::Connection {
        shared_server().connection()
    }

    #[tokio::test]
    async fn a_fresh_seed_starts_a_lineage_far_past_firestore() {
        let state = state("seed:").await;
        let uid = Uid::parse("u1").unwrap();
        state.seed_state(&uid, &from_firestore(7)).await.unwrap();
        let CacheSnapshot::Ready { state: read, .. } =
            state.clone().snapshot(uid.clone()).await.unwrap()
        else {
            panic!("seeded")
        };
        assert_eq!(read.version, 7 + 1_048_576 + 1);
        assert_eq!(read.balances, from_firestore(7).balances);
        // Seeding again touches nothing seeded, and never lowers the version.
        let mut newer = from_firestore(9);
        newer.balances[0].remaining = 0;
        state.seed_state(&uid, &newer).await.unwrap();
        let checked = state.check(&uid, &kinds()).await.unwrap();
        assert!(checked.seeded);
        assert_eq!(checked.stored[0].unwrap().remaining, 4);
        let ttl: i64 = redis::cmd("PTTL")
            .arg("seed:{u1}:t")
            .query(&mut redis())
            .unwrap();
        assert!(ttl > 0, "seeded balances expire when idle");
    }

    #[tokio::test]
    async fn balances_the_redis_store_made_on_its_own_are_replaced_or_discarded() {
        let state = state("bogus:").await;
        let uid = Uid::parse("u2").unwrap();
        // A whole hash without a version: replaced by the seed.
        let _: () = redis::cmd("HSET")
            .arg("bogus:{u2}:t")
            .arg(&["n:upload", "0", "r:upload", "1"])
            .query(&mut redis())
            .unwrap();
        assert!(!state.check(&uid, &kinds()).await.unwrap().seeded);
        assert!(matches!(
            state.clone().snapshot(uid.clone()).await.unwrap(),
            CacheSnapshot::Lost
        ));
        state.seed_state(&uid, &from_firestore(0)).await.unwrap();
        assert_eq!(
            state.check(&uid, &kinds()).await.unwrap().stored[0]
                .unwrap()
                .remaining,
            4
        );
        // A kind outside the seeded list: discarded by a snapshot.
        let _: () = redis::cmd("HSET")
            .arg("bogus:{u2}:t")
            .arg(&["n:extra", "0", "r:extra", "1"])
            .query(&mut redis())
            .unwrap();
        let mut with_extra = kinds();
        with_extra.push(Arc::new(TicketKind::new("extra", 2)));
        let extended = Arc::new(RedisState {
            kinds: with_extra,
            ..(*state).clone()
        });
        assert!(matches!(
            extended.clone().snapshot(uid.clone()).await.unwrap(),
            CacheSnapshot::Lost
        ));
        // Now merely missing: read it from Firestore first.
        assert!(matches!(
            extended.clone().snapshot(uid.clone()).await.unwrap(),
            CacheSnapshot::Unseeded
        ));
    }

    #[tokio::test]
    async fn a_write_forgets_only_the_pending_changes_its_snapshot_covered() {
        let state = state("pending:").await;
        let uid = Uid::parse("u3").unwrap();
        assert!(
            !state.mark_pending(&uid).await.unwrap(),
            "nothing seeded, nothing counted"
        );
        state.seed_state(&uid, &from_firestore(0)).await.unwrap();
        assert!(state.mark_pending(&uid).await.unwrap());
        let CacheSnapshot::Ready { pending, .. } =
            state.clone().snapshot(uid.clone()).await.unwrap()
        else {
            panic!("seeded")
        };
        assert_eq!(pending, 1);
        // A change after the snapshot: the write does not cover it.
        assert!(state.mark_pending(&uid).await.unwrap());
        state.clone().written(uid.clone(), pending).await.unwrap();
        assert_eq!(
            state.pending_users().await.unwrap(),
            std::slice::from_ref(&uid)
        );
        state.clone().written(uid.clone(), 2).await.unwrap();
        assert!(state.pending_users().await.unwrap().is_empty());
    }
}
