//! The write-through's own state in Redis, next to the Redis store's
//! balances and under the same hash tag, and the scripts that keep it.
//!
//! In the user's balances hash `<prefix>{uid}:t` (the Redis store's; see
//! `lua/common.lua` there for every field), the lineage fields (`l`, `v`,
//! `a`, `s`) that say where the state came from, and ours: the round lease
//! (`k`, `kv`, `q`; see `lua/snapshot.lua`) and the pending marks (`m`,
//! `c`; see `lua/mark.lua`). Two keys of ours: `<prefix>{uid}:w` indexes a
//! user with marks that no write covered yet, for the recovery scan, and
//! `<prefix>{uid}:h` is the user's high-water mark (the lineage and version
//! of the latest state the source took), apart from the hash so that a hash
//! restored from an older dump is seen as stale and reloaded.
//!
//! Every call goes through the Redis store's one path: its connection, its
//! timeout, its breaker, its error mapping.

use std::hash::{BuildHasher, RandomState};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Script;

use crate::kind::TicketKind;
use crate::store::redis::{KeyLayout, ScriptCall};
use crate::store::source::{Origins, Point, UserSnapshot, WriteCondition};
use crate::store::{KindBalance, RedisStore, StoreError, StoreErrorKind};
use crate::uid::Uid;
use std::sync::Arc;

struct Scripts {
    seed: Script,
    snapshot: Script,
    mark: Script,
    settle: Script,
    check: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    seed: Script::new(include_str!("lua/seed.lua")),
    snapshot: Script::new(include_str!("lua/snapshot.lua")),
    mark: Script::new(include_str!("lua/mark.lua")),
    settle: Script::new(include_str!("lua/settle.lua")),
    check: Script::new(include_str!("lua/check.lua")),
});

/// Users scanned per `SCAN` call when looking for pending writes.
const SCAN_COUNT: usize = 1000;

/// Lineage ids stay below 2^53: Lua numbers (doubles) hold them exactly.
const LINEAGE_BITS: u32 = 52;

/// Each state's version is the last one plus 1 plus a random step below
/// 2^20 (see `lua/snapshot.lua`): 2^33 states before versions leave the
/// range Lua holds exactly.
const VERSION_STEP_BITS: u32 = 20;

/// What a check of the source found.
pub(crate) enum SourceRead<'a> {
    /// A state at this point.
    At(Point),
    /// A state made by an edit (of no lineage), whose balances take the
    /// charges not written yet on top (async mode).
    Edit(&'a UserSnapshot),
    /// No document.
    Nothing,
    /// Nothing known: the source did not answer.
    Unread,
}

/// What a check did to Redis's state.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Checked {
    /// Kept: no edit.
    Kept,
    /// Dropped: the next request loads the source's state.
    Dropped,
    /// Reseeded from an edit, charges not written yet on top: pending.
    Reseeded,
}

/// A user's state taken for a write round.
#[derive(Debug)]
pub(crate) struct Taken {
    /// The state, under its new version.
    pub(crate) state: UserSnapshot,
    /// The point its lineage was seeded from.
    pub(crate) seeded_from: Point,
    /// The pending marks the state covers.
    pub(crate) marks: u64,
}

impl Taken {
    /// When the source may store this state.
    pub(crate) fn condition(&self) -> WriteCondition {
        WriteCondition {
            point: self.state.point(),
            seeded_from: self.seeded_from,
        }
    }
}

/// What [`RedisState::snapshot`] found.
#[derive(Debug)]
pub(crate) enum Snapshot {
    /// The state, and the round's lease on the user.
    Taken(Taken),
    /// The write interval has not passed since the last round (`pace`: how
    /// long until it has), or another round holds the user's lease (`lease`:
    /// how long until it runs out, at the latest).
    Busy {
        /// Until the next round may start.
        pace: Duration,
        /// Until the lease held by another round runs out (zero: none held).
        lease: Duration,
    },
    /// A kind was never seeded: read it from the source, seed, try again.
    Unseeded,
    /// Redis holds nothing seeded for the user (flushed, expired, dropped).
    Lost,
}

/// What [`RedisState::seed`] left in Redis.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seeded {
    /// The point Redis holds.
    pub(crate) held: Point,
    /// Whether this seeding started that lineage (rather than finding the
    /// user seeded already).
    pub(crate) started: bool,
}

/// How a write round ended, for [`RedisState::settle`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum RoundEnd {
    /// The source took the state.
    Written,
    /// The source holds another state (none: no document).
    Refused(Option<Point>),
    /// The source did not answer.
    Failed,
    /// Drop Redis's state: it holds a change the source did not take.
    Discard,
}

/// Our keys and scripts, on the Redis store's connection.
pub(crate) struct RedisState {
    redis: RedisStore,
    keys: KeyLayout,
    kinds: Vec<Arc<TicketKind>>,
    idle_ttl_millis: u64,
    /// How long a round may hold a user's lease.
    lease: Duration,
    /// Rounds of one user start at most once per interval.
    interval: Duration,
    randomness: RandomState,
    draws: AtomicU64,
}

impl RedisState {
    /// Our state next to `redis`'s; seeded balances expire after `idle_ttl`
    /// without a refill, like the store's own.
    pub(crate) fn new(
        redis: RedisStore,
        kinds: Vec<Arc<TicketKind>>,
        idle_ttl: Duration,
        lease: Duration,
        interval: Duration,
    ) -> Self {
        Self {
            keys: redis.keys().clone(),
            redis,
            kinds,
            idle_ttl_millis: millis(idle_ttl),
            lease,
            interval,
            randomness: RandomState::new(),
            draws: AtomicU64::new(0),
        }
    }

    /// `bits` random bits.
    fn random(&self, bits: u32) -> u64 {
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        let drawn =
            self.randomness
                .hash_one((n, std::process::id(), Utc::now().timestamp_nanos_opt()));
        drawn >> (64 - bits)
    }

    /// A lineage id no other seeding is likely to draw: random, non-zero,
    /// below 2^53.
    pub(crate) fn new_lineage(&self) -> u64 {
        self.random(LINEAGE_BITS).max(1)
    }

    /// Makes Redis hold `stored` (read from the source) as a new lineage,
    /// unless it holds the user seeded already (then only kinds it lacks are
    /// added).
    pub(crate) async fn seed(
        &self,
        uid: &Uid,
        stored: &UserSnapshot,
    ) -> Result<Seeded, StoreError> {
        let mut call = ScriptCall::new(
            &SCRIPTS.seed,
            &[self.keys.balances(uid), self.keys.high_water(uid)],
        );
        let lineage = self.new_lineage();
        call.arg(lineage)
            .arg(stored.version)
            .arg(Origins::seeded_from(stored).to_string())
            .arg(self.idle_ttl_millis);
        for (kind, balance) in self.kinds.iter().zip(&stored.balances) {
            call.arg(kind.name())
                .arg(balance.remaining)
                .arg(balance.last_refill.timestamp_millis());
        }
        match self.redis.call("seed", call).await?.as_slice() {
            &[held_lineage, version] => {
                let held = Point {
                    lineage: unsigned("seed", held_lineage)?,
                    version: unsigned("seed", version)?,
                };
                Ok(Seeded {
                    held,
                    started: held.lineage == lineage,
                })
            }
            reply => Err(unexpected("seed", reply)),
        }
    }

    /// Takes the user's state for a write round, with the round's lease.
    pub(crate) async fn snapshot(&self, uid: &Uid) -> Result<Snapshot, StoreError> {
        let mut call = ScriptCall::new(
            &SCRIPTS.snapshot,
            &[self.keys.balances(uid), self.keys.high_water(uid)],
        );
        call.arg(millis(self.lease))
            .arg(millis(self.interval))
            .arg(self.random(VERSION_STEP_BITS));
        for kind in &self.kinds {
            call.arg(kind.name());
        }
        let reply = self.redis.call("snapshot", call).await?;
        match reply.as_slice() {
            [0] => Ok(Snapshot::Lost),
            [1] => Ok(Snapshot::Unseeded),
            &[3, pace, lease] => Ok(Snapshot::Busy {
                pace: Duration::from_millis(u64::try_from(pace).unwrap_or(0)),
                lease: Duration::from_millis(u64::try_from(lease).unwrap_or(0)),
            }),
            &[2, lineage, version, marks, origins, ref rest @ ..] => {
                let origins =
                    usize::try_from(origins).map_err(|_| unexpected("snapshot", &reply))?;
                let (origins, values) = rest
                    .split_at_checked(2 * origins)
                    .ok_or_else(|| unexpected("snapshot", &reply))?;
                if values.len() != 2 * self.kinds.len() {
                    return Err(unexpected("snapshot", &reply));
                }
                let origins = origins
                    .chunks_exact(2)
                    .map(|pair| {
                        Ok(Point {
                            lineage: unsigned("snapshot", pair[0])?,
                            version: unsigned("snapshot", pair[1])?,
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                let balances = values
                    .chunks_exact(2)
                    .map(|pair| balance(pair[0], pair[1]))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| unexpected("snapshot", &reply))?;
                let origins = Origins::from_points(origins);
                let seeded_from = origins.points().first().copied().unwrap_or(Point {
                    lineage: 0,
                    version: 0,
                });
                Ok(Snapshot::Taken(Taken {
                    state: UserSnapshot {
                        version: unsigned("snapshot", version)?,
                        lineage: unsigned("snapshot", lineage)?,
                        origins,
                        balances,
                    },
                    seeded_from,
                    marks: unsigned("snapshot", marks)?,
                }))
            }
            _ => Err(unexpected("snapshot", &reply)),
        }
    }

    /// Tells Redis how the round that took the state at `point` ended;
    /// `false` when Redis does not hold that state's history (any more):
    /// dropped now, or reloaded meanwhile.
    pub(crate) async fn settle(
        &self,
        uid: &Uid,
        point: Point,
        marks: u64,
        end: RoundEnd,
    ) -> Result<bool, StoreError> {
        let mut call = ScriptCall::new(
            &SCRIPTS.settle,
            &[
                self.keys.balances(uid),
                self.keys.pending(uid),
                self.keys.high_water(uid),
            ],
        );
        call.arg(point.lineage).arg(point.version).arg(marks);
        match end {
            RoundEnd::Written => call.arg("written"),
            RoundEnd::Failed => call.arg("failed"),
            RoundEnd::Discard => call.arg("discard"),
            RoundEnd::Refused(None) => call.arg("refused").arg("").arg(""),
            RoundEnd::Refused(Some(stored)) => {
                call.arg("refused").arg(stored.lineage).arg(stored.version)
            }
        };
        Ok(self.redis.call("settle", call).await? == [1])
    }

    /// Tells Redis what a read of the source found: when the source holds
    /// an edit Redis was not seeded from, or nothing, Redis's state is
    /// replaced (see `lua/check.lua`): reseeded from the edit with the
    /// charges no write carried yet on top (`SourceRead::Edit`, async mode),
    /// or dropped. Otherwise it is marked checked (also when the source
    /// could not be read).
    pub(crate) async fn check(
        &self,
        uid: &Uid,
        held: SourceRead<'_>,
    ) -> Result<Checked, StoreError> {
        let mut call = ScriptCall::new(
            &SCRIPTS.check,
            &[
                self.keys.balances(uid),
                self.keys.pending(uid),
                self.keys.high_water(uid),
            ],
        );
        let point = |point: Point| format!("{}@{}", point.lineage, point.version);
        match held {
            SourceRead::At(at) => call.arg(point(at)),
            SourceRead::Nothing => call.arg(""),
            SourceRead::Unread => call.arg("unread"),
            SourceRead::Edit(edit) => {
                call.arg(point(edit.point()))
                    .arg(self.new_lineage())
                    .arg(edit.origins.to_string())
                    .arg(self.idle_ttl_millis);
                for (kind, balance) in self.kinds.iter().zip(&edit.balances) {
                    call.arg(kind.name())
                        .arg(balance.remaining)
                        .arg(balance.last_refill.timestamp_millis());
                }
                &mut call
            }
        };
        match self.redis.call("check", call).await?.as_slice() {
            [0] => Ok(Checked::Kept),
            [1] => Ok(Checked::Dropped),
            [2] => Ok(Checked::Reseeded),
            reply => Err(unexpected("check", reply)),
        }
    }

    /// Counts one more change, made at `made_at`, that the source may not
    /// hold yet; `false` when Redis no longer holds it: its lineage is gone,
    /// and no edit's reseed carried it over (see `lua/mark.lua`).
    pub(crate) async fn mark_pending(&self, uid: &Uid, made_at: Point) -> Result<bool, StoreError> {
        let mut call = ScriptCall::new(
            &SCRIPTS.mark,
            &[self.keys.balances(uid), self.keys.pending(uid)],
        );
        call.arg(made_at.lineage).arg(made_at.version);
        Ok(self
            .redis
            .call("mark", call)
            .await?
            .first()
            .is_some_and(|m| *m > 0))
    }

    /// Every user with changes that the source may not hold yet, on every
    /// server that answers (one on a cluster master that does not, as
    /// during a failover, waits for a later scan).
    pub(crate) async fn pending_users(&self) -> Result<Vec<Uid>, StoreError> {
        let pattern = self.keys.pending_pattern();
        let mut users = Vec::new();
        for node in self.redis.nodes().await? {
            let mut cursor = 0_u64;
            loop {
                match self.redis.scan(&node, cursor, &pattern, SCAN_COUNT).await {
                    Ok((next, keys)) => {
                        users.extend(keys.iter().filter_map(|key| self.keys.pending_uid(key)));
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                    Err(error) => {
                        tracing::warn!(%error, %node, "could not scan for pending writes");
                        break;
                    }
                }
            }
        }
        Ok(users)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A stored count and last refill (Unix ms), `None` when out of range.
fn balance(count: i64, refill_millis: i64) -> Option<KindBalance> {
    Some(KindBalance {
        remaining: u32::try_from(count).ok()?,
        last_refill: DateTime::<Utc>::from_timestamp_millis(refill_millis)
            .filter(|_| refill_millis >= 0)?,
    })
}

fn unsigned(operation: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| unexpected(operation, &[value]))
}

fn unexpected(operation: &str, reply: &[i64]) -> StoreError {
    StoreError::new(
        StoreErrorKind::Corrupt,
        format!("Redis write-through {operation} answered {reply:?}, which its script never does"),
    )
}
