//! The source of truth behind a cache: where a user's balances are kept for
//! good (Firestore), as versioned states that never move backwards.
//!
//! [`WriteThrough`](crate::store::WriteThrough) decides in Redis and makes
//! each change reach a [`SourceOfTruth`]. The source needs three operations:
//! load a user's state, create a new user's, and write a state *conditioned
//! on what the writer last saw* ([`WriteCondition`]), so that a writer whose
//! Redis state was lost, replaced or rolled back can never overwrite what
//! another writer put there.
//!
//! # Lineages
//! Each time Redis is seeded from the source (a cache miss, a flush, a
//! reload), the seeded state starts a new **lineage**: a random id that every
//! later state of that Redis copy carries, with a version increased by every
//! state taken for a write. A state remembers where its lineage came from
//! (the source state it was seeded from, and that state's own origins, a
//! few generations back). So from any stored state one can tell whether a
//! given charge, made in lineage `L` while its version was `v`, is part of
//! it ([`UserSnapshot::includes`]): that is how a write round knows which
//! charges Firestore now holds, and so which requests to answer.

#[cfg(feature = "redis")]
mod memory;

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};

#[cfg(feature = "redis")]
pub use self::memory::MemorySource;
#[cfg(feature = "redis")]
use super::StoreError;
use super::{KindBalance, StoreFuture};
use crate::kind::TicketKind;
use crate::uid::Uid;

/// The point of a change the source holds for good: part of every later
/// state.
pub(crate) const DURABLE: Point = Point {
    lineage: 0,
    version: 0,
};

/// How many generations of origins a lineage remembers.
pub(crate) const REMEMBERED_ORIGINS: usize = 8;

/// A point in one user's history: the lineage and the version of a state.
///
/// Lineage 0 is no cache's: a state the source created, or (as the point
/// of a change) a change the source already holds for good, which every
/// later state includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Point {
    /// The lineage (0 for a state no cache wrote: a new or legacy document).
    pub lineage: u64,
    /// The version within that lineage.
    pub version: u64,
}

/// Where a state's lineage came from: the points it was seeded from, newest
/// first (at most a few generations back).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins(Vec<Point>);

impl Origins {
    /// No origins: a state written by no cache.
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// The origins of a lineage seeded from `state`: `state` itself, then
    /// its own origins, the oldest dropped past a few generations.
    pub fn seeded_from(state: &UserSnapshot) -> Self {
        let mut points = Vec::with_capacity(REMEMBERED_ORIGINS);
        points.push(state.point());
        points.extend(state.origins.0.iter().take(REMEMBERED_ORIGINS - 1).copied());
        Self(points)
    }

    /// The points, newest first.
    pub fn points(&self) -> &[Point] {
        &self.0
    }

    /// Origins from `points`, newest first (extra ones are dropped).
    pub fn from_points(points: impl IntoIterator<Item = Point>) -> Self {
        Self(points.into_iter().take(REMEMBERED_ORIGINS).collect())
    }
}

impl fmt::Display for Origins {
    /// `lineage@version` per point, space-separated: how Firestore stores
    /// them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, point) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}@{}", point.lineage, point.version)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Origins {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split_whitespace()
            .map(|point| {
                let (lineage, version) = point
                    .split_once('@')
                    .ok_or_else(|| format!("{point:?} is not lineage@version"))?;
                Ok(Point {
                    lineage: lineage
                        .parse()
                        .map_err(|_| format!("bad lineage {lineage:?}"))?,
                    version: version
                        .parse()
                        .map_err(|_| format!("bad version {version:?}"))?,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self::from_points)
    }
}

/// One user's balance in every kind, at one point of their history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSnapshot {
    /// Orders the states of one lineage: higher is newer. A new lineage
    /// starts at the version of the state it was seeded from, so versions
    /// never go backwards in the source.
    pub version: u64,
    /// The lineage the state belongs to (0: written by no cache).
    pub lineage: u64,
    /// Where that lineage came from.
    pub origins: Origins,
    /// One balance per kind, in the order of the source's kinds.
    pub balances: Vec<KindBalance>,
}

impl UserSnapshot {
    /// A new user's state: each kind's initial balance, refilled `now`,
    /// version 0 of no lineage.
    pub fn initial(kinds: &[Arc<TicketKind>], now: DateTime<Utc>) -> Self {
        Self {
            version: 0,
            lineage: 0,
            origins: Origins::none(),
            balances: kinds
                .iter()
                .map(|kind| KindBalance {
                    remaining: kind.initial_balance(),
                    last_refill: now,
                })
                .collect(),
        }
    }

    /// This state's balances under a new lineage `lineage` seeded from it,
    /// and the condition to write it on: that the source still holds this
    /// state. Once written, no write of another lineage that was on its way
    /// can land over it (see [`WriteCondition`]).
    pub fn stamped(&self, lineage: u64) -> (UserSnapshot, WriteCondition) {
        let stamp = UserSnapshot {
            version: self.version,
            lineage,
            origins: Origins::seeded_from(self),
            balances: self.balances.clone(),
        };
        let condition = WriteCondition {
            point: stamp.point(),
            seeded_from: self.point(),
        };
        (stamp, condition)
    }

    /// This state's own point.
    pub fn point(&self) -> Point {
        Point {
            lineage: self.lineage,
            version: self.version,
        }
    }

    /// Whether a change made in `made_at.lineage` while its version was
    /// `made_at.version` is part of this state: a later state of that
    /// lineage is this one or one it descends from.
    pub fn includes(&self, made_at: Point) -> bool {
        made_at.lineage == DURABLE.lineage
            || std::iter::once(self.point())
                .chain(self.origins.0.iter().copied())
                .any(|p| p.lineage == made_at.lineage && p.version > made_at.version)
    }
}

/// When a [`SourceOfTruth::write`] may replace the stored state: only when
/// the new state descends from it. That is, the stored state is an earlier
/// state of the same lineage, or the very state the lineage was seeded from.
/// Anything else (another lineage's newer state, a later state of this
/// lineage than the writer's, a deleted document) means the writer's Redis
/// state is not a continuation of the truth, and must be reloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteCondition {
    /// The state to write.
    pub point: Point,
    /// The state its lineage was seeded from.
    pub seeded_from: Point,
}

impl WriteCondition {
    /// Whether a stored state at `stored` (none: no document) may be
    /// replaced.
    pub fn allows(&self, stored: Option<Point>) -> bool {
        stored.is_some_and(|stored| {
            (stored.lineage == self.point.lineage && stored.version < self.point.version)
                || stored == self.seeded_from
        })
    }
}

/// What a [`SourceOfTruth::write`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteOutcome {
    /// The state is stored.
    Written,
    /// The stored state does not allow it (see [`WriteCondition`]); nothing
    /// was written.
    Refused {
        /// What the source holds (none: no document).
        stored: Option<UserSnapshot>,
    },
}

/// Where users' balances are kept for good, behind a cache.
///
/// Implemented by [`FirestoreSource`](crate::store::FirestoreSource) (feature
/// `firestore`) and by [`MemorySource`] (for tests and single-process
/// experiments). Every operation is bounded in time by the source itself.
pub trait SourceOfTruth: Send + Sync + 'static {
    /// The kinds each user's state holds, in the order of every
    /// [`UserSnapshot`]'s balances.
    fn kinds(&self) -> &[Arc<TicketKind>];

    /// Reads the user's state; `None` when the user is unknown. Kinds the
    /// stored state lacks hold their initial balance, refilled `now`.
    fn load(&self, uid: &Uid, now: DateTime<Utc>) -> StoreFuture<Option<UserSnapshot>>;

    /// Reads the user's state, first creating it with each kind's initial
    /// balance (refilled `now`) when the user is unknown, or adding the kinds
    /// it lacks.
    fn load_or_create(&self, uid: &Uid, now: DateTime<Utc>) -> StoreFuture<UserSnapshot>;

    /// Stores `state` if `condition` allows what is stored (atomically: no
    /// other write lands in between).
    fn write(
        &self,
        uid: &Uid,
        state: &UserSnapshot,
        condition: WriteCondition,
    ) -> StoreFuture<WriteOutcome>;
}

impl<S: SourceOfTruth + ?Sized> SourceOfTruth for Arc<S> {
    fn kinds(&self) -> &[Arc<TicketKind>] {
        (**self).kinds()
    }

    fn load(&self, uid: &Uid, now: DateTime<Utc>) -> StoreFuture<Option<UserSnapshot>> {
        (**self).load(uid, now)
    }

    fn load_or_create(&self, uid: &Uid, now: DateTime<Utc>) -> StoreFuture<UserSnapshot> {
        (**self).load_or_create(uid, now)
    }

    fn write(
        &self,
        uid: &Uid,
        state: &UserSnapshot,
        condition: WriteCondition,
    ) -> StoreFuture<WriteOutcome> {
        (**self).write(uid, state, condition)
    }
}

/// A finished future of `result`, boxed as a [`StoreFuture`].
#[cfg(feature = "redis")]
pub(crate) fn finished<T: Send + 'static>(result: Result<T, StoreError>) -> StoreFuture<T> {
    Box::pin(std::future::ready(result))
}
