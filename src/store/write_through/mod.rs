//! Redis in front of a source of truth: decisions in the cache, the truth
//! in the source (DESIGN.md §4).
//!
//! [`WriteThrough`] is a composition, like tower-sessions'
//! `CachingSessionStore`: a [`RedisStore`] (configured by its own builder)
//! decides every charge in one script call, and a [`SourceOfTruth`]
//! ([`FirestoreSource`](crate::store::FirestoreSource), or
//! [`MemorySource`](crate::store::MemorySource) in tests) holds every
//! change for good:
//! - **Sync** ([`WriteMode::Sync`], the default): an allowed charge is
//!   answered once the source holds a state that includes it. Concurrent
//!   changes of one user share one write (see `group_commit`), and each
//!   user is written at most once per
//!   [write interval](WriteThroughBuilder::write_interval) across every
//!   instance. When the source cannot be written, the charge is refunded in
//!   Redis and the store answers an error, which the layer turns into 503.
//! - **Async** ([`WriteMode::Async`]): an allowed charge is answered once
//!   Redis holds it and counts it as pending; rounds write it soon after.
//!   Pending marks live in Redis under the user's hash tag, so an instance
//!   that dies leaves them to the others' recovery scan.
//!
//! # Lineages: Redis may lose or roll back state
//! Each seeding of a user from the source starts a *lineage* (see
//! [`crate::store::source`]). The Redis scripts report the lineage and
//! version of every change they make; a write round answers a change only
//! when the state the source then holds includes it, and the source takes a
//! state only when it descends from what it holds. So a flush, an eviction,
//! a restart from an old dump or a failover to a lagging replica never
//! mints or loses an answered ticket (sync mode): the changes of the lost
//! state are answered with errors, and a Redis state that the source does
//! not descend from is dropped and reloaded. A refund gives nothing back
//! for a charge that the state it meets does not include.
//!
//! **Cache misses.** A user Redis does not hold as seeded (never seen,
//! flushed, expired, dropped) is read from the source, seeded into Redis
//! unless another request did it first, and then charged; a user with no
//! state in the source gets the initial balances.
//! [`ensure_user`](TicketStore::ensure_user) (the sign-up path) creates them
//! the same way.
//!
//! # Edits made straight to the source
//! The source is the truth, whoever writes it (DESIGN.md §4): an edit is
//! absolute as of its commit, and charges answered after it apply on top.
//! A user's Redis state is checked against the source at most once a second
//! while the user is active (one caller of all instances reads the source,
//! in the background) and before deciding once it went unchecked for two
//! seconds; a write round keeps it checked, since a write succeeds only on
//! what the source held. A check that finds an edit Redis was not seeded
//! from, or no document, drops Redis's state, and the next request loads
//! the source's; in async mode, an edit is taken at once with the charges
//! not written yet on top. A write round that meets an edit is refused, so
//! no write undoes one.
//!
//! # Redis Cluster
//! Every key of a user shares the user's hash tag, so each script runs on
//! the master of one slot; the client follows `MOVED` and `ASK` during a
//! resharding. The recovery scan asks `CLUSTER SLOTS` for the masters and
//! scans each. When a master fails, its users' calls fail (503) until its
//! replica is promoted (about the cluster's node timeout plus an election:
//! under 4 s with a 2 s node timeout in `tests/write_through_cluster.rs`);
//! a replica that missed the last writes holds an older state of the
//! lineage, as a restore from an old dump would, and the next write round
//! finds the source holding a version this history never took and reloads
//! (sync mode loses no answered charge; async mode may lose what was not
//! written yet, as with any Redis loss). The cluster client retries a call
//! whose connection dropped, so a script that ran just before the drop may
//! run twice: a ticket lost, never one minted.
//!
//! # Limits
//! - A source write that times out and lands after its round was answered
//!   can keep a charge answered 503 (a lost ticket, never a minted one)
//!   until the refund made after it is written, which a Redis loss in
//!   between undoes.
//! - A whole Redis rolled back (its high-water marks with it) is found at
//!   the user's next write round, not before: a refusal or a balance read
//!   in between may answer from the older state.
//! - Idempotency keys live in Redis only: a retry after Redis lost them is
//!   a new request.

mod builder;
mod group_commit;
mod hydration;
mod recovery;
mod redis_state;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use self::builder::{WriteMode, WriteThroughBuilder};
use self::group_commit::GroupCommit;
use self::hydration::Hydration;
use self::recovery::Recovery;
use self::redis_state::{Checked, RedisState, RoundEnd, SourceRead};
use crate::clock::Clock;
use crate::config_error::ConfigError;
use crate::kind::TicketKind;
use crate::store::redis::{Cached, RefundLate};
use crate::store::source::{DURABLE, Point, SourceOfTruth};
use crate::store::{
    AdjustOutcome, AdjustRequest, ChargeOutcome, ChargeRequest, KindBalance, Receipt, RedisStore,
    RedisStoreBuilder, RefundOutcome, StoreError, StoreErrorKind, StoreFuture, TicketStore,
};
use crate::uid::Uid;

/// How many times an operation is decided again after filling a cache miss
/// or checking the source (a flush between the fill and the decision sends
/// it back; a check that finds an edit leads to a fill).
const ATTEMPTS: usize = 4;

/// How long a request waits for a check of the source that is overdue (see
/// [`Shared::check_before_deciding`]); past it, Redis's state decides.
const CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// How often a request asks again while another one checks the source, and
/// how many times at most (the check's claim lasts 2 s).
const WAIT_POLL: Duration = Duration::from_millis(10);
const WAITS: usize = 250;

/// How often a refund is retried while Redis or the source does not take
/// it (after 250 ms, then twice as long each time: about a minute in all).
const REFUND_ATTEMPTS: u32 = 8;
const REFUND_RETRY: Duration = Duration::from_millis(250);

/// Balances decided in Redis and kept in a source of truth. Cheap to clone.
///
/// ```no_run
/// use tower_tickets::store::{FirestoreSource, RedisStore, WriteMode, WriteThrough};
/// use tower_tickets::{TicketKind, Tickets};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let (upload, ai) = (TicketKind::new("upload", 5), TicketKind::new("ai", 3));
/// // The same kinds as the registry's: they name the document's fields.
/// let source = FirestoreSource::connect("my-project", [upload.clone(), ai.clone()]).await?;
/// let store = WriteThrough::builder(RedisStore::standalone("redis://127.0.0.1:6379"), source)
///     .mode(WriteMode::Sync)
///     .connect()
///     .await?;
/// let tickets = Tickets::builder().kind(upload).kind(ai).store(store).build()?;
/// # let _ = tickets;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WriteThrough {
    shared: Arc<Shared>,
}

struct Shared {
    redis: RedisStore,
    state: Arc<RedisState>,
    source: Arc<dyn SourceOfTruth>,
    writer: GroupCommit,
    hydration: Hydration,
    mode: WriteMode,
    /// Changes under way (see [`WriteThrough::settled`]).
    changes: Arc<tokio::sync::watch::Sender<usize>>,
    _recovery: Recovery,
}

/// The write-through's intervals.
pub(crate) struct Timing {
    pub(crate) write_interval: Duration,
    pub(crate) lease: Duration,
    pub(crate) recovery_interval: Duration,
}

impl std::fmt::Debug for WriteThrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteThrough")
            .field("redis", &self.shared.redis)
            .field("mode", &self.shared.mode)
            .finish_non_exhaustive()
    }
}

impl WriteThrough {
    /// Configures a store deciding in the Redis that `redis` configures
    /// (`RedisStore::standalone(url)` and its options) and keeping every
    /// change in `source`.
    pub fn builder(redis: RedisStoreBuilder, source: impl SourceOfTruth) -> WriteThroughBuilder {
        WriteThroughBuilder::new(redis, Arc::new(source))
    }

    fn start(
        redis: RedisStore,
        source: Arc<dyn SourceOfTruth>,
        mode: WriteMode,
        timing: Timing,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let state = Arc::new(RedisState::new(
            redis.clone(),
            source.kinds().to_vec(),
            redis.idle_ttl(source.kinds()),
            timing.lease,
            timing.write_interval,
        ));
        let hydration = Hydration::new(state.clone(), source.clone(), mode == WriteMode::Async);
        let writer = GroupCommit::new(
            state.clone(),
            source.clone(),
            hydration.clone(),
            timing.lease,
        );
        let recovery = Recovery::start(
            state.clone(),
            writer.clone(),
            timing.recovery_interval,
            clock,
        );
        Self {
            shared: Arc::new(Shared {
                redis,
                state,
                source,
                writer,
                hydration,
                mode,
                changes: Arc::new(tokio::sync::watch::channel(0).0),
                _recovery: recovery,
            }),
        }
    }

    /// The Redis store that decides, for what it offers besides deciding
    /// (e.g. [`RefusalCache::shared_through`](crate::store::RefusalCache::shared_through)).
    pub fn redis(&self) -> &RedisStore {
        &self.shared.redis
    }

    /// How many users this instance is writing or about to write (a gauge
    /// for metrics: in async mode, how far the source is behind).
    pub fn pending_writes(&self) -> usize {
        self.shared.writer.pending_users()
    }

    /// How many writes this instance made to the source (a write the source
    /// refused does not count).
    pub fn firestore_writes(&self) -> u64 {
        self.shared.writer.writes()
    }
}

impl Shared {
    async fn charge(self: &Arc<Self>, request: ChargeRequest) -> Result<ChargeOutcome, StoreError> {
        let (uid, now) = (request.uid.clone(), request.now);
        for _ in 0..ATTEMPTS + WAITS {
            let decided = self
                .redis
                .charge_cached(request.clone(), Some(self.refund_late()));
            let Some(decided) = self.decision(&uid, now, decided.await?).await? else {
                continue;
            };
            let (balances, receipt, point) = match decided {
                ((ChargeOutcome::Allowed { balances, receipt }, _), Some(point)) => {
                    (balances, receipt, point)
                }
                ((outcome, refilled), point) => {
                    if let (true, Some(point)) = (refilled, point) {
                        self.refill_applied(&uid, point, now).await;
                    }
                    return Ok(outcome);
                }
            };
            self.persist_charge(&receipt, point, now).await?;
            let receipt = match self.mode {
                // The source holds the charge for good: whatever Redis
                // loses later, its refund gives it back (under the refill
                // rule).
                WriteMode::Sync => Receipt {
                    made_at: Some(DURABLE),
                    ..receipt
                },
                WriteMode::Async => receipt,
            };
            return Ok(ChargeOutcome::Allowed { balances, receipt });
        }
        Err(unsettled(&uid))
    }

    /// Nothing was charged, but the due refill the decision applied is a
    /// change: written soon, not waited for, and counted pending like an
    /// async charge, so that a round that fails leaves it to the recovery
    /// scan rather than forgotten (the source, and the app's UI reading it,
    /// would show the old balance until the user's next change).
    async fn refill_applied(&self, uid: &Uid, point: Point, now: DateTime<Utc>) {
        // A refill lost with Redis's state is due again on the reloaded one.
        if let Err(error) = self.mark_pending(uid, point, now).await {
            tracing::debug!(%uid, %error, "could not count a refill as pending; asking for a round all the same");
            self.writer.nudge(uid, now);
        }
    }

    /// How a charge that Redis ran after its call timed out (answered with
    /// an error) is given back: as any refund, carried to the source, and
    /// counted as a change under way until it is.
    fn refund_late(self: &Arc<Self>) -> RefundLate {
        let (shared, under_way) = (self.clone(), ChangeUnderWay::new(&self.changes));
        Box::new(move |receipt, now| {
            let _counted = &under_way;
            Box::pin(shared.clone().refund(receipt, now))
        })
    }

    /// Makes an allowed charge reach the source as the mode says. When that
    /// fails (sync: the source does not hold it after its round; async: it
    /// could not be counted pending), the charge is refunded in Redis
    /// (retried in the background while Redis does not answer) and the
    /// error returned.
    async fn persist_charge(
        self: &Arc<Self>,
        receipt: &Receipt,
        point: Point,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        match self.mode {
            WriteMode::Sync => {
                let held = self.writer.demand(&receipt.uid, point, now).wait().await;
                if held.is_err() {
                    self.give_back_now_or_later(receipt, now).await;
                }
                held
            }
            // A mark that failed (timed out, say) answers an error: the
            // charge Redis holds must not stay (a mark that ran late counts
            // it pending, and the refund after it too).
            WriteMode::Async => {
                let marked = self.state.mark_pending(&receipt.uid, point).await;
                if marked.is_err() {
                    self.give_back_now_or_later(receipt, now).await;
                }
                self.marked(&receipt.uid, marked?, now)
            }
        }
    }

    /// Gives back a charge answered with an error: at once, or else in the
    /// background, counted as a change under way until it is made (Redis
    /// holds a charge its request was told it did not make).
    async fn give_back_now_or_later(self: &Arc<Self>, receipt: &Receipt, now: DateTime<Utc>) {
        if self.give_back(receipt, now).await.is_err() {
            let under_way = ChangeUnderWay::new(&self.changes);
            let retry = self.clone().give_back_later(receipt.clone(), now);
            tokio::spawn(async move {
                retry.await;
                drop(under_way);
            });
        }
    }

    /// Refunds, in Redis, a charge that its write round did not carry to the
    /// source. The refund is counted pending and a round asked for, which
    /// writes it. It gives nothing back when Redis no longer holds the
    /// charge: lost with a flushed or dropped state, which the source does
    /// not hold either (a reloaded state is not refunded: a state rolled
    /// back to an old dump shares its lineage, and its versions may seem
    /// included, with what the source holds).
    async fn give_back(
        self: &Arc<Self>,
        receipt: &Receipt,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let uid = &receipt.uid;
        let mut decided = None;
        for _ in 0..ATTEMPTS + WAITS {
            match self.redis.refund_cached(receipt.clone(), now).await? {
                Cached::Unseeded => {
                    // The charge went with the state; its key must go too,
                    // or the request's retry is told it is in progress.
                    tracing::debug!(%uid, "a charge to give back went with Redis's state");
                    if let Some(key) = &receipt.idempotency_key {
                        self.redis.forget_key(uid, key).await?;
                    }
                    return Ok(());
                }
                Cached::Stale => self.check_before_deciding(uid, now).await,
                Cached::Wait => tokio::time::sleep(WAIT_POLL).await,
                seeded @ Cached::Seeded { .. } => {
                    decided = self.decision(uid, now, seeded).await?;
                    break;
                }
            }
        }
        // Still waiting for a check after every attempt: nothing was given
        // back yet, which the caller must hear (it retries later).
        let Some((_, point)) = decided else {
            return Err(unsettled(uid));
        };
        // Nothing to give back: the state it met does not hold the charge.
        let Some(point) = point else {
            tracing::debug!(%uid, made_at = ?receipt.made_at(), "Redis's state does not hold the charge to give back");
            return Ok(());
        };
        tracing::debug!(%uid, made_at = ?receipt.made_at(), ?point, "gave back a charge the source did not take");
        // A retry finds the refund made already: counting it and asking for
        // a round again is harmless, and makes sure it is written.
        if let Err(error) = self.state.mark_pending(uid, point).await {
            tracing::warn!(%uid, %error, "could not count a refund as pending");
        }
        self.writer.nudge(uid, now);
        // Sync mode: a write of the charge may have landed (a write that
        // timed out) while a round that failed fenced the source, and Redis
        // then drops its state, refund and all: the refund is followed
        // until the source holds it, and made again on the reloaded state.
        if self.mode == WriteMode::Sync {
            self.write_refund_in_background(receipt.clone(), point, now);
        }
        Ok(())
    }

    /// [`give_back`](Self::give_back), retried while it fails (a refund
    /// gives each charge back once, however often it runs).
    async fn give_back_later(self: Arc<Self>, receipt: Receipt, now: DateTime<Utc>) {
        for _ in 0..REFUND_ATTEMPTS {
            tokio::time::sleep(REFUND_RETRY).await;
            match self.give_back(&receipt, now).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(uid = %receipt.uid, %error, "could not refund a charge the source did not take");
                }
            }
        }
        tracing::error!(uid = %receipt.uid, "gave up refunding a charge the source did not take");
    }

    /// Async mode: counts the change as pending and asks for a round.
    async fn mark_pending(
        &self,
        uid: &Uid,
        point: Point,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let marked = self.state.mark_pending(uid, point).await?;
        self.marked(uid, marked, now)
    }

    /// After a change was counted pending (`marked`: Redis's state still
    /// holds it), asks for a round; a change lost with the state is an
    /// error.
    fn marked(&self, uid: &Uid, marked: bool, now: DateTime<Utc>) -> Result<(), StoreError> {
        if !marked {
            return Err(lost(uid));
        }
        self.writer.nudge(uid, now);
        Ok(())
    }

    /// Makes an administrative change (a grant, a set, a reset) made at
    /// `point` reach the source as the mode says. In sync mode, a change
    /// the source does not take is not left in Redis alone: Redis's state
    /// of the user is dropped (the next request reloads the source's) and
    /// the error returned.
    async fn persist_change(
        &self,
        uid: &Uid,
        point: Point,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        match self.mode {
            WriteMode::Sync => {
                let Err(error) = self.writer.demand(uid, point, now).wait().await else {
                    return Ok(());
                };
                if let Err(discard) = self.state.settle(uid, point, 0, RoundEnd::Discard).await {
                    tracing::error!(%uid, %discard, "could not drop a change the source did not take");
                }
                Err(StoreError::new(
                    error.kind(),
                    format!(
                        "the change to user {uid} was not applied: the source of truth did not \
                         take it (after a timeout, it may still have landed there)"
                    ),
                )
                .with_source(error))
            }
            WriteMode::Async => self.mark_pending(uid, point, now).await,
        }
    }

    /// Gives a charge back. In sync mode a refund applied in Redis that the
    /// source did not take yet is not dropped: it is answered (it stands),
    /// stays in Redis counted pending, and is written by retries in the
    /// background. Refunds are idempotent per charge, and a sync receipt's
    /// charge is in the source for good, so a retry after Redis lost the
    /// refund applies it again on the reloaded state, and never twice.
    async fn refund(
        self: Arc<Self>,
        receipt: Receipt,
        now: DateTime<Utc>,
    ) -> Result<RefundOutcome, StoreError> {
        let (outcome, made_at, written) = self.refund_once(&receipt, now).await?;
        if let (Err(error), Some(made_at)) = (written, made_at) {
            tracing::warn!(uid = %receipt.uid, %error, "a refund is not in the source yet; retrying in the background");
            self.write_refund_in_background(receipt, made_at, now);
        }
        Ok(outcome)
    }

    /// Sync mode: follows a refund applied in Redis at `made_at` until the
    /// source holds it, in the background, counted as a change under way.
    /// While it does not, the refund is applied again (a no-op on the state
    /// that holds it already) and its round awaited: if Redis dropped its
    /// state meanwhile (a round refused, a fence), the reloaded state gets
    /// the refund when it holds the charge.
    fn write_refund_in_background(
        self: &Arc<Self>,
        receipt: Receipt,
        made_at: Point,
        now: DateTime<Utc>,
    ) {
        let (shared, under_way) = (self.clone(), ChangeUnderWay::new(&self.changes));
        tokio::spawn(async move {
            let _counted = under_way;
            let mut pause = REFUND_RETRY;
            for _ in 0..REFUND_ATTEMPTS {
                tokio::time::sleep(pause).await;
                pause *= 2;
                // Redis remembers which charges it refunded only as long as
                // it keeps the user's state: once the source holds the
                // refund, applying it again to a reloaded state would give
                // the ticket back twice.
                if let Ok(Some(held)) = shared.source.load(&receipt.uid, now).await
                    && held.includes(made_at)
                {
                    return;
                }
                match shared.refund_once(&receipt, now).await {
                    Ok((_, _, Ok(()))) => return,
                    Ok((_, _, Err(error))) | Err(error) => {
                        tracing::warn!(uid = %receipt.uid, %error, "a refund is not in the source yet; retrying");
                    }
                }
            }
            tracing::error!(uid = %receipt.uid, "gave up writing a refund to the source; it stays pending in Redis");
        });
    }

    /// Applies a refund in Redis (`Err` when that fails), and says where
    /// (the point of the change, if it changed anything) and whether the
    /// source took it.
    async fn refund_once(
        self: &Arc<Self>,
        receipt: &Receipt,
        now: DateTime<Utc>,
    ) -> Result<(RefundOutcome, Option<Point>, Result<(), StoreError>), StoreError> {
        let uid = &receipt.uid;
        for _ in 0..ATTEMPTS + WAITS {
            let refunded = self.redis.refund_cached(receipt.clone(), now).await?;
            let Some((outcome, point)) = self.decision(uid, now, refunded).await? else {
                continue;
            };
            // Even a refund that gave nothing back may have applied a due
            // refill: the source must hold what Redis does.
            let Some(point) = point else {
                return Ok((outcome, None, Ok(())));
            };
            let written = match self.mode {
                WriteMode::Sync => {
                    let written = self.writer.demand(uid, point, now).wait().await;
                    if written.is_err()
                        && let Err(mark) = self.state.mark_pending(uid, point).await
                    {
                        tracing::warn!(%uid, %mark, "could not count a refund as pending");
                    }
                    written
                }
                WriteMode::Async => self.mark_pending(uid, point, now).await,
            };
            return Ok((outcome, Some(point), written));
        }
        Err(unsettled(uid))
    }

    async fn balances(
        self: &Arc<Self>,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> Result<Vec<KindBalance>, StoreError> {
        for _ in 0..ATTEMPTS + WAITS {
            match self.redis.balances_cached(uid, kinds, now).await? {
                Cached::Stale => {
                    self.check_before_deciding(uid, now).await;
                    continue;
                }
                Cached::Wait => {
                    tokio::time::sleep(WAIT_POLL).await;
                    continue;
                }
                Cached::Seeded { value, check, .. } => {
                    if check {
                        self.check_in_background(uid, now);
                    }
                    return Ok(value);
                }
                // Read from the source; reading creates nothing.
                Cached::Unseeded => {}
            }
            match self.source.load(uid, now).await? {
                Some(stored) => {
                    self.hydration.seed(uid, &stored).await?;
                }
                // No state in the source: the balances a new user would
                // start with; reading creates nothing.
                None => {
                    return Ok(kinds
                        .iter()
                        .map(|kind| KindBalance {
                            remaining: kind.initial_balance(),
                            last_refill: now,
                        })
                        .collect());
                }
            }
        }
        Err(unsettled(uid))
    }

    /// Adjusts in Redis, then carries the change to the source as the mode
    /// says. An idempotency key is recorded running by the script, then
    /// finished once the change is carried (a retry meanwhile is
    /// [`InProgress`](AdjustOutcome::InProgress)), or forgotten when the
    /// source did not take it, so that a retry makes it again.
    async fn adjust(self: &Arc<Self>, request: AdjustRequest) -> Result<AdjustOutcome, StoreError> {
        let (uid, now) = (&request.uid, request.now);
        for _ in 0..ATTEMPTS + WAITS {
            let adjusted = self.redis.adjust_cached(&request).await?;
            match self.decision(uid, now, adjusted).await? {
                None => {}
                Some((value @ AdjustOutcome::Applied { .. }, point)) => {
                    let point = point.ok_or_else(|| lost(uid))?;
                    let persisted = self.persist_change(uid, point, now).await;
                    if let Some(key) = &request.idempotency_key {
                        let concluded = match persisted {
                            Ok(()) => self.redis.finish_key(uid, key, None).await,
                            Err(_) => self.redis.forget_key(uid, key).await,
                        };
                        if let Err(error) = concluded {
                            tracing::error!(%uid, %error, "could not conclude an adjustment's idempotency key; its retries answer in progress until it expires");
                        }
                    }
                    return persisted.map(|()| value);
                }
                Some((value, _)) => return Ok(value),
            }
        }
        Err(unsettled(uid))
    }

    /// A script's answer as a decision and its point; `None` once the user
    /// is ready to be decided on again: loaded from the source (Redis does
    /// not hold the user), or checked against it (too long unchecked). A
    /// check that is due runs in the background.
    async fn decision<T>(
        self: &Arc<Self>,
        uid: &Uid,
        now: DateTime<Utc>,
        answer: Cached<T>,
    ) -> Result<Option<(T, Option<Point>)>, StoreError> {
        match answer {
            Cached::Unseeded => {
                self.fill(uid, now).await?;
                Ok(None)
            }
            Cached::Stale => {
                self.check_before_deciding(uid, now).await;
                Ok(None)
            }
            Cached::Wait => {
                tokio::time::sleep(WAIT_POLL).await;
                Ok(None)
            }
            Cached::Seeded {
                value,
                point,
                check,
            } => {
                if check {
                    self.check_in_background(uid, now);
                }
                Ok(Some((value, point)))
            }
        }
    }

    /// Reads the user from the source and tells Redis what it holds: an
    /// edit made straight to the source (DESIGN.md §4), or a deleted
    /// document, drops Redis's state, which the next decision reloads (see
    /// `lua/check.lua`). Each user is checked at most once a second while
    /// active, by one caller of all instances (the scripts hand the check
    /// out), and not at all while its writes keep it checked.
    async fn check(&self, uid: &Uid, now: DateTime<Utc>) -> Result<(), StoreError> {
        let held = self.source.load(uid, now).await?;
        let read = match &held {
            // Async mode: charges answered and not written yet apply on top.
            Some(edit) if edit.lineage == 0 && self.mode == WriteMode::Async => {
                SourceRead::Edit(edit)
            }
            Some(held) => SourceRead::At(held.point()),
            None => SourceRead::Nothing,
        };
        match self.state.check(uid, read).await? {
            Checked::Kept => {}
            Checked::Dropped => {
                tracing::info!(%uid, "the user was changed in the source by somebody else: Redis reloads it");
            }
            Checked::Reseeded => {
                tracing::info!(%uid, "the user was edited in the source: Redis took the edit, with the charges not written yet on top");
                self.writer.nudge(uid, now);
            }
        }
        Ok(())
    }

    /// A check that is due, while the request goes on with Redis's state.
    /// It counts as a change under way ([`WriteThrough::settled`] waits for
    /// it): a check that read the source before an edit may still mark
    /// Redis's state checked after it (the edit is then seen at the next
    /// check, a second later).
    fn check_in_background(self: &Arc<Self>, uid: &Uid, now: DateTime<Utc>) {
        let (shared, uid) = (self.clone(), uid.clone());
        let under_way = ChangeUnderWay::new(&self.changes);
        tokio::spawn(async move {
            if let Err(error) = shared.check(&uid, now).await {
                tracing::debug!(%uid, %error, "could not check the source for an edit; the next due check tries again");
            }
            drop(under_way);
        });
    }

    /// A check that is overdue (the user was idle): the request waits for
    /// it, up to [`CHECK_TIMEOUT`], and the user's other requests wait for
    /// this one. If the source does not answer by then, the state is marked
    /// checked all the same, and Redis's state decides.
    async fn check_before_deciding(&self, uid: &Uid, now: DateTime<Utc>) {
        let failed = match tokio::time::timeout(CHECK_TIMEOUT, self.check(uid, now)).await {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {CHECK_TIMEOUT:?}"),
        };
        tracing::warn!(%uid, %failed, "could not check the source for an edit; deciding on Redis's state");
        if let Err(error) = self.state.check(uid, SourceRead::Unread).await {
            tracing::warn!(%uid, %error, "could not mark a check as done; the user's requests wait for its claim to end");
        }
    }

    async fn ensure_user(
        self: &Arc<Self>,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> Result<Vec<KindBalance>, StoreError> {
        let stored = self.source.load_or_create(uid, now).await?;
        self.hydration.seed(uid, &stored).await?;
        self.balances(uid, kinds, now).await
    }

    async fn fill(&self, uid: &Uid, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.hydration.fill(uid, now).await
    }
}

/// A change under way, counted in [`Shared::changes`] until dropped.
struct ChangeUnderWay(Arc<tokio::sync::watch::Sender<usize>>);

impl ChangeUnderWay {
    fn new(changes: &Arc<tokio::sync::watch::Sender<usize>>) -> Self {
        changes.send_modify(|n| *n += 1);
        Self(changes.clone())
    }
}

impl Drop for ChangeUnderWay {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

fn lost(uid: &Uid) -> StoreError {
    StoreError::new(
        StoreErrorKind::Unavailable,
        format!("Redis lost the balances of user {uid} during the request (flushed or expired)"),
    )
}

fn unsettled(uid: &Uid) -> StoreError {
    StoreError::new(
        StoreErrorKind::Unavailable,
        format!(
            "the balances of user {uid} kept disappearing from Redis while they were read \
             from the source of truth, or a check of the source never ended; gave up"
        ),
    )
}

impl WriteThrough {
    /// Runs a change as a task of its own: a caller that stops waiting (a
    /// dropped request) never leaves a change made in Redis and not carried
    /// to the source. The caller's future only awaits the task.
    fn detached<T: Send + 'static>(
        &self,
        change: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> StoreFuture<T> {
        let under_way = ChangeUnderWay::new(&self.shared.changes);
        let task = tokio::spawn(async move {
            let result = change.await;
            drop(under_way);
            result
        });
        Box::pin(async move {
            task.await.unwrap_or_else(|_| {
                Err(StoreError::new(
                    StoreErrorKind::Unavailable,
                    "the write-through's task for this change stopped",
                ))
            })
        })
    }

    /// Waits until no change of this instance is under way: every charge,
    /// refund and adjustment made through it, whether or not its caller
    /// still waits, has been decided and answered by its write round (a
    /// charge that timed out, until Redis's late reply is given back; in
    /// sync mode, a refund or a give-back whose round failed, until the
    /// source holds it or its retries give up: while the source is down,
    /// that can take about a minute). For a graceful shutdown, and for tests
    /// that look behind the store.
    pub async fn settled(&self) {
        let mut changes = self.shared.changes.subscribe();
        let _ = changes.wait_for(|n| *n == 0).await;
    }
}

impl TicketStore for WriteThrough {
    fn charge(&self, request: ChargeRequest) -> StoreFuture<ChargeOutcome> {
        let shared = self.shared.clone();
        self.detached(async move { shared.charge(request).await })
    }

    fn refund(&self, receipt: Receipt, now: DateTime<Utc>) -> StoreFuture<RefundOutcome> {
        let shared = self.shared.clone();
        self.detached(shared.refund(receipt, now))
    }

    fn finish(&self, receipt: &Receipt) -> StoreFuture<()> {
        // Keys live in Redis only: Firestore has nothing to record.
        self.shared.redis.finish(receipt)
    }

    fn balances(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>> {
        let (shared, uid, kinds) = (self.shared.clone(), uid.clone(), kinds.to_vec());
        Box::pin(async move { shared.balances(&uid, &kinds, now).await })
    }

    fn adjust(&self, request: AdjustRequest) -> StoreFuture<AdjustOutcome> {
        let shared = self.shared.clone();
        self.detached(async move { shared.adjust(request).await })
    }

    fn ensure_user(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>> {
        let (shared, uid, kinds) = (self.shared.clone(), uid.clone(), kinds.to_vec());
        Box::pin(async move { shared.ensure_user(&uid, &kinds, now).await })
    }

    fn check_kinds(&self, kinds: &[Arc<TicketKind>]) -> Result<(), ConfigError> {
        let stored = self.shared.source.kinds();
        let same = kinds.len() == stored.len()
            && kinds.iter().all(|kind| {
                stored.iter().any(|s| {
                    s.name() == kind.name()
                        && s.count_field() == kind.count_field()
                        && s.refill_field() == kind.refill_field()
                        && s.capacity() == kind.capacity()
                        && s.initial_balance() == kind.initial_balance()
                        && s.refill_schedule() == kind.refill_schedule()
                })
            });
        if same {
            Ok(())
        } else {
            Err(ConfigError::SourceKindsDiffer {
                registry: kinds.iter().map(|k| k.name().to_string()).collect(),
                source: stored.iter().map(|k| k.name().to_string()).collect(),
            })
        }
    }
}
