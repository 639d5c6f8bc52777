//! [`RedisStore`]: the [`TicketStore`] operations as script calls.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use redis::RedisResult;

use super::batcher::Batcher;
use super::builder::Topology;
use super::charge_call::{Charge, decide};
use super::connection::{Connection, Node};
use super::error::{store_error, unexpected_reply};
use super::keys::KeyLayout;
use super::reply;
use super::scripts::{CallContext, Procedure, ScriptCall, Truth, millis, push_kind};
use crate::cost::CheckedCost;
use crate::idempotency::{IDEMPOTENCY_TTL, IdempotencyKey};
use crate::kind::TicketKind;
use crate::store::breaker::Breaker;
use crate::store::source::Point;
use crate::store::{
    AdjustOutcome, AdjustRequest, ChargeOutcome, ChargeRequest, KindBalance, Receipt,
    RefundOutcome, StoreError, StoreErrorKind, StoreFuture, TicketStore,
};
use crate::uid::Uid;

/// Balances in Redis, decided by one Lua script call per operation.
///
/// Made by [`RedisStore::connect`], [`RedisStore::standalone`] or
/// [`RedisStore::cluster`]. Clones share the connection, the breaker and
/// the configuration.
///
/// ```no_run
/// use tower_tickets::store::{RedisStore, RefusalCache};
/// use tower_tickets::{TicketKind, Tickets};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let tickets = Tickets::builder()
///     .kind(TicketKind::new("upload", 5))
///     // Repeated refusals of a user at zero are answered locally for 1 s.
///     .store(RefusalCache::new(store))
///     .build()?;
/// # let _ = tickets;
/// # Ok(())
/// # }
/// ```
///
/// Any number of app instances share one truth. Each operation is one `EVALSHA` of a script
/// from `lua/` (built once, reloaded after a `NOSCRIPT`), or for a charge on Redis 7 one
/// `FCALL` of the same Lua loaded as a function library (its helpers defined once per
/// server rather than on every call; reloaded when missing), sent over one
/// multiplexed connection per store (concurrent calls are pipelined on one
/// socket) that reconnects by itself. On a standalone server, charges that
/// come while a charge call is in flight go together in the next call, each
/// decided on its own ([`RedisStoreBuilder::batching`](crate::store::RedisStoreBuilder::batching)).
/// Standalone Redis and Redis Cluster run the same scripts.
///
/// # Keys
/// One user's keys share the hash tag `{uid}`, so every script on one user
/// touches a single cluster slot:
/// - `<prefix>{<uid>}:t`: a hash with, per kind, `n:<kind>` (tickets left)
///   and `r:<kind>` (last refill, Unix milliseconds). It expires a few
///   refill periods after its last refill ([`RedisStoreBuilder::idle_periods`](crate::store::RedisStoreBuilder::idle_periods);
///   an active user is refilled, and so kept, every period), so Redis memory
///   follows active users. An expired user starts over with the initial
///   balances, which mints and loses nothing: a refill was due anyway. A
///   user whom forgetting would change (a grant above capacity, a kind whose
///   initial balance is not its capacity) is marked `p:<kind>` and kept
///   until that no longer holds. Under `WriteThrough`
///   any idle user expires: Firestore reloads them.
/// - `<prefix>{<uid>}:i:<Idempotency-Key>`: a charged idempotency key, kept
///   24 h: the instant it stops counting, whether its request is still
///   running (`R`) or finished (`D`), and the
///   [`RequestFingerprint`](crate::RequestFingerprint) of that request.
///   Keys live in Redis only: a Redis that loses them (a flush, a restart
///   from an older dump) takes a retry for a new request, charged again.
///
/// Keys are only built from a validated [`Uid`](crate::Uid), so a hostile
/// id never reaches Redis; the prefix may not contain `{` or `}`.
///
/// # Time
/// Decisions across instances need one clock: app servers' clocks drift
/// apart, and a server whose clock runs ahead would refill early (a peer
/// behind it would then see refill timestamps from the future). By default
/// ([`TimeSource::Redis`](crate::store::TimeSource::Redis)) the scripts read Redis's own clock (`TIME`), so
/// every app server decides on the same time: the clock of the Redis server
/// that owns the user (in a cluster, the master of the user's slot). The
/// rolling refill cutoff is computed in Lua from the period; for calendar
/// refills (time zones are unknown to Lua) Rust sends the cutoffs around
/// its own instant and the script picks the one its clock has passed.
/// [`TimeSource::Caller`](crate::store::TimeSource::Caller) uses the instant the layer passes in instead (the
/// registry's [`Clock`](crate::Clock)), for tests with a
/// [`FakeClock`](crate::FakeClock) and for single-instance apps. Either way
/// a refill timestamp never moves backwards: a clock behind the stored last
/// refill sees no refill due.
///
/// # Faults
/// Every call is bounded by a timeout (100 ms by default). After repeated
/// failures a breaker answers [`CircuitOpen`](crate::store::StoreErrorKind)
/// at once, and lets one call through now and then to probe for recovery.
/// The layer turns errors into 503 (or lets fail-open kinds through). A
/// value under one of our keys that this crate did not write is a
/// [`Corrupt`](crate::store::StoreErrorKind) error naming the key.
#[derive(Clone)]
pub struct RedisStore {
    pub(super) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) connection: Connection,
    /// The servers, for connections of another kind (the change feed's).
    pub(crate) topology: Topology,
    pub(crate) keys: KeyLayout,
    pub(crate) context: CallContext,
    pub(crate) timeout: std::time::Duration,
    pub(crate) breaker: Arc<Breaker>,
    /// Sends charges queued while a call is in flight together; `None`
    /// sends each alone.
    pub(crate) batcher: Option<Batcher>,
    /// What decides charges: the charge library's function, or the script
    /// where the server has no functions.
    pub(crate) charge: Procedure,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.shared.keys)
            .field("context", &self.shared.context)
            .field("timeout", &self.shared.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    pub(crate) fn from_shared(shared: Shared) -> Self {
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Where this store keeps each user's values: the write-through keeps
    /// its own next to them.
    pub(crate) fn keys(&self) -> &KeyLayout {
        &self.shared.keys
    }

    /// The keys of a script on `uid`'s balances: the hash, then (caching a
    /// source) the user's high-water key, then the idempotency key if any
    /// (see `lua/common.lua`).
    fn user_keys(&self, uid: &Uid, idempotency_key: Option<&IdempotencyKey>) -> Vec<String> {
        let keys = &self.shared.keys;
        let mut user_keys = Vec::with_capacity(3);
        user_keys.push(keys.balances(uid));
        if self.shared.context.truth == Truth::InSource {
            user_keys.push(keys.high_water(uid));
        }
        if let Some(key) = idempotency_key {
            user_keys.push(keys.idempotency(uid, key));
        }
        user_keys
    }

    /// How long `kinds`' balances last in Redis without a refill.
    pub(crate) fn idle_ttl(&self, kinds: &[Arc<TicketKind>]) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.shared
                .context
                .idle_ttl(kinds.iter().map(|kind| &**kind)),
        )
    }

    /// Records balances for the kinds Redis does not hold for `uid` yet,
    /// leaving every kind it holds untouched, then applies due refills; returns the
    /// balances as stored. This is how a cache miss is filled from the source
    /// of truth without overwriting a concurrent charge.
    pub fn seed_if_absent(
        &self,
        uid: &Uid,
        seeds: &[(Arc<TicketKind>, KindBalance)],
        now: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>> {
        self.seed(
            uid,
            seeds
                .iter()
                .map(|(kind, balance)| (&**kind, balance.remaining, Some(balance.last_refill))),
            now,
        )
    }

    /// Calls the seed script with `(kind, balance, last refill)` triples; a
    /// missing last refill means the decision time.
    fn seed<'a>(
        &self,
        uid: &Uid,
        seeds: impl ExactSizeIterator<Item = (&'a TicketKind, u32, Option<DateTime<Utc>>)> + Clone,
        now: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>> {
        let context = &self.shared.context;
        let count = seeds.len();
        let mut call = ScriptCall::new(&context.scripts().seed, &[self.shared.keys.balances(uid)]);
        call.arg(context.time_arg(now))
            .arg(context.idle_ttl(seeds.clone().map(|(kind, ..)| kind)))
            .arg(count);
        for (kind, balance, last_refill) in seeds {
            match last_refill {
                Some(at) => call.arg(at.timestamp_millis()),
                None => call.arg(""),
            };
            push_kind(&mut call, kind, balance, now);
        }
        let reply = self.call("seed", call);
        Box::pin(async move { reply::balances("seed", &reply.await?, count) })
    }

    /// Runs one script call under the breaker and the timeout.
    pub(crate) fn call(
        &self,
        operation: &'static str,
        call: ScriptCall,
    ) -> impl Future<Output = Result<Vec<i64>, StoreError>> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            let mut connection = shared.connection.clone();
            let reply = std::pin::pin!(connection.invoke(&call));
            shared.bounded(operation, reply, drop).await
        }
    }

    /// The servers that hold the keys between them (see
    /// [`Connection::nodes`]), under the breaker and the timeout.
    pub(crate) async fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        let mut connection = self.shared.connection.clone();
        let reply = std::pin::pin!(connection.nodes());
        self.shared.bounded("nodes", reply, drop).await
    }

    /// One page of a `SCAN` of `node` for keys matching `pattern`, under
    /// the breaker and the timeout: the next cursor (0 at the end) and the
    /// keys.
    pub(crate) async fn scan(
        &self,
        node: &Node,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> Result<(u64, Vec<String>), StoreError> {
        let mut command = redis::cmd("SCAN");
        command
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        let mut connection = self.shared.connection.clone();
        let reply = std::pin::pin!(connection.query_on(node, &command));
        self.shared.bounded("scan", reply, drop).await
    }

    /// Gives back a charge whose reply came after the timeout: the request
    /// was answered 503, but Redis ran the script. Waits for that reply for
    /// at most [`LATE_REPLY_DEADLINE`], in the background, then refunds it
    /// with `refund` (by default, this store's own refund).
    fn undo_late_charge(
        &self,
        reply: LateReply,
        (uid, cost, idempotency_key, charge_id): Charging,
        now: DateTime<Utc>,
        refund: Option<RefundLate>,
    ) {
        let store = self.clone();
        tokio::spawn(async move {
            let reply = match tokio::time::timeout(LATE_REPLY_DEADLINE, reply).await {
                Ok(Ok(reply)) => reply,
                // Redis failed the script or never answered: nothing to undo
                // that can be known.
                Ok(Err(_)) => return,
                Err(_elapsed) => {
                    tracing::error!(%uid, "Redis never answered a charge that timed out; if it ran, its tickets stay spent");
                    return;
                }
            };
            let truth = store.shared.context.truth;
            let charging = (uid.clone(), cost, idempotency_key, charge_id);
            let Ok(Cached::Seeded {
                value: (ChargeOutcome::Allowed { receipt, .. }, _),
                ..
            }) = Cached::split(truth, "charge", &reply, 1)
                .and_then(|split| split.then(|rest, point| charge_decision(rest, charging, point)))
            else {
                return;
            };
            let replied = Instant::now();
            // Decided at the charge's instant (with `TimeSource::Caller`; Redis
            // reads its own clock otherwise): a refill timestamp never moves
            // backwards, so an instant behind the stored one refills nothing.
            loop {
                let refunded = match &refund {
                    Some(refund) => refund(receipt.clone(), now),
                    None => store.refund(receipt.clone(), now),
                };
                match refunded.await {
                    Ok(outcome) => {
                        tracing::info!(%uid, refunded = ?outcome.refunded, "gave back a charge answered after its timeout");
                    }
                    // The breaker opened on the timeouts: the refund was not
                    // sent, so trying again cannot give twice. A refund
                    // through a store caching a source gives each charge
                    // back once however often it runs: any failure (a
                    // timeout under load, say) is tried again.
                    Err(error)
                        if (error.kind() == StoreErrorKind::CircuitOpen || refund.is_some())
                            && replied.elapsed() < LATE_REPLY_DEADLINE =>
                    {
                        tokio::time::sleep(BREAKER_RETRY).await;
                        continue;
                    }
                    Err(error) => {
                        tracing::error!(%uid, %error, "could not give back a charge answered after its timeout; it stays spent");
                    }
                }
                return;
            }
        });
    }
}

/// A script reply still awaited after its call timed out.
type LateReply = Pin<Box<dyn Future<Output = RedisResult<Vec<i64>>> + Send>>;

/// How a charge whose reply came after its timeout is given back: by the
/// store itself, or by a store that caches a source of truth in it (the
/// refund must reach the source too). Such a refund must give each charge
/// back once however often it runs: it is retried after any failure.
pub(crate) type RefundLate =
    Box<dyn Fn(Receipt, DateTime<Utc>) -> StoreFuture<RefundOutcome> + Send + Sync>;

/// How long a reply that came too late for its request is still awaited,
/// to give back what the script charged.
pub(super) const LATE_REPLY_DEADLINE: Duration = Duration::from_secs(10);

/// How soon a late charge's refund tries again after it failed.
const BREAKER_RETRY: Duration = Duration::from_millis(20);

impl Shared {
    /// Awaits `reply` under the breaker and the timeout, mapping its errors
    /// (the one path of every Redis call); a reply still pending at the
    /// timeout goes to `late`.
    pub(super) async fn bounded<T, F>(
        &self,
        operation: &'static str,
        mut reply: F,
        late: impl FnOnce(F),
    ) -> Result<T, StoreError>
    where
        F: Future<Output = RedisResult<T>> + Unpin,
    {
        let permit = self.breaker.admit()?;
        match tokio::time::timeout(self.timeout, &mut reply).await {
            Ok(Ok(reply)) => {
                permit.succeeded();
                Ok(reply)
            }
            Ok(Err(error)) => {
                let error = store_error(operation, error);
                if error.kind() == StoreErrorKind::Corrupt {
                    // Redis answered: the data is wrong, not the link.
                    permit.succeeded();
                } else {
                    permit.failed();
                }
                Err(error)
            }
            Err(_elapsed) => {
                permit.failed();
                late(reply);
                Err(StoreError::new(
                    StoreErrorKind::Timeout,
                    format!("Redis {operation} got no answer within {:?}", self.timeout),
                ))
            }
        }
    }
}

/// What a store caching a source of truth answers: the decision, made at
/// a point of the user's history, or why nothing was decided.
pub(crate) enum Cached<T> {
    /// Decided on the state at `point` (lineage and version; `None` when
    /// Redis holds the truth). With `check`, the caller was given the
    /// check of the source that is due (see `seeded_point` in
    /// `lua/common.lua`): it reads the source, in the background.
    Seeded {
        value: T,
        point: Option<Point>,
        check: bool,
    },
    /// The user must be loaded from the source first.
    Unseeded,
    /// The user's state went unchecked against the source for too long:
    /// the caller checks it (somebody may have edited the source) first.
    Stale,
    /// The same, while another caller checks: ask again shortly.
    Wait,
}

impl Cached<Vec<i64>> {
    /// Splits a script's reply: nothing decided, or the point it was decided
    /// at, the check flag (when caching a source; both follow the first
    /// `point_at` values) and the rest of the reply.
    fn split(
        truth: Truth,
        operation: &str,
        reply: &[i64],
        point_at: usize,
    ) -> Result<Self, StoreError> {
        if truth == Truth::InRedis {
            return Ok(Cached::Seeded {
                value: reply.to_vec(),
                point: None,
                check: false,
            });
        }
        match reply {
            [-1] => return Ok(Cached::Unseeded),
            [-2] => return Ok(Cached::Stale),
            [-3] => return Ok(Cached::Wait),
            _ => {}
        }
        let bad = || unexpected_reply(operation, reply);
        let (lineage, version, check) = match reply.get(point_at..point_at + 3) {
            Some(&[l, v, c]) => (l, v, c),
            _ => return Err(bad()),
        };
        let point = Point {
            lineage: u64::try_from(lineage).map_err(|_| bad())?,
            version: u64::try_from(version).map_err(|_| bad())?,
        };
        let mut rest = reply[..point_at].to_vec();
        rest.extend_from_slice(&reply[point_at + 3..]);
        Ok(Cached::Seeded {
            value: rest,
            point: Some(point),
            check: check == 1,
        })
    }

    /// The decision made of the rest of the reply by `decide`, which also
    /// gets the point.
    fn then<T>(
        self,
        decide: impl FnOnce(Vec<i64>, Option<Point>) -> Result<T, StoreError>,
    ) -> Result<Cached<T>, StoreError> {
        Ok(match self {
            Cached::Seeded {
                value,
                point,
                check,
            } => Cached::Seeded {
                value: decide(value, point)?,
                point,
                check,
            },
            Cached::Unseeded => Cached::Unseeded,
            Cached::Stale => Cached::Stale,
            Cached::Wait => Cached::Wait,
        })
    }
}

impl<T> Cached<T> {
    /// The decision of a store that holds the truth itself.
    fn decided(self, operation: &str) -> Result<T, StoreError> {
        match self {
            Cached::Seeded { value, .. } => Ok(value),
            Cached::Unseeded | Cached::Stale | Cached::Wait => Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!("Redis {operation}: the user is not seeded from a source of truth"),
            )),
        }
    }
}

impl RedisStore {
    /// Decides a charge; caching a source, says where it was made (the
    /// receipt carries it) and whether it applied a due refill (a change
    /// to write even when nothing was charged), or that the user is
    /// unseeded. A charge that Redis runs after the call timed out (the
    /// caller answered an error) is given back with `refund_late`, or by
    /// this store's own refund.
    pub(crate) fn charge_cached(
        &self,
        request: ChargeRequest,
        refund_late: Option<RefundLate>,
    ) -> StoreFuture<Cached<(ChargeOutcome, bool)>> {
        let ChargeRequest {
            uid,
            cost,
            now,
            idempotency_key,
            fingerprint,
        } = request;
        let context = &self.shared.context;
        let charge_id = new_charge_id();
        let charge = Charge {
            keys: self.user_keys(&uid, idempotency_key.as_ref()),
            time: context.time_ms(now),
            idle_ttl: context.idle_ttl(cost.items().iter().map(|item| &*item.kind)),
            fingerprint: idempotency_key
                .as_ref()
                .map(|_| format!("{}#{charge_id}", fingerprint.as_str())),
            cost: cost.clone(),
            now,
        };
        // The reply is boxed so that, past the timeout, it can be awaited in
        // the background: Redis may still run the script and charge.
        let truth = context.truth;
        let shared = self.shared.clone();
        let reply: LateReply = Box::pin(async move {
            match &shared.batcher {
                Some(batcher) => batcher.charge(charge).await,
                None => {
                    let mut connection = shared.connection.clone();
                    let once = std::iter::once(&charge);
                    let replies = decide(&mut connection, shared.charge, once).await?;
                    // `decide` answered one reply per charge: exactly one.
                    replies.into_iter().next().unwrap_or_else(|| {
                        Err(redis::RedisError::from((
                            redis::ErrorKind::UnexpectedReturnType,
                            "the charge script answered no decision",
                        )))
                    })
                }
            }
        });
        let (store, charged) = (
            self.clone(),
            (
                uid.clone(),
                cost.clone(),
                idempotency_key.clone(),
                charge_id,
            ),
        );
        Box::pin(async move {
            let late = |reply| store.undo_late_charge(reply, charged, now, refund_late);
            let reply = store.shared.bounded("charge", reply, late).await?;
            let charging = (uid, cost, idempotency_key, charge_id);
            Cached::split(truth, "charge", &reply, 1)?
                .then(|rest, point| charge_decision(rest, charging, point))
        })
    }

    /// Gives a charge back; caching a source, nothing for a charge the held
    /// state does not include, and says at which point it was decided.
    pub(crate) fn refund_cached(
        &self,
        receipt: Receipt,
        now: DateTime<Utc>,
    ) -> StoreFuture<Cached<RefundOutcome>> {
        let context = &self.shared.context;
        let items = receipt.cost.items();
        let count = items
            .len()
            .min(receipt.last_refills.len())
            .min(receipt.remaining_after.len());
        let mut call = ScriptCall::new(
            &context.scripts().refund,
            &self.user_keys(&receipt.uid, receipt.idempotency_key.as_ref()),
        );
        call.arg(context.time_arg(now))
            .arg(context.idle_ttl(items.iter().map(|item| &*item.kind)))
            .arg(count);
        let charged = receipt.last_refills.iter().zip(&receipt.remaining_after);
        for (item, (charged_at, remaining_after)) in items.iter().zip(charged) {
            call.arg(item.amount)
                .arg(charged_at.timestamp_millis())
                .arg(*remaining_after);
            push_kind(&mut call, &item.kind, item.kind.initial_balance(), now);
        }
        let truth = context.truth;
        if truth == Truth::InSource {
            // A receipt made without a point (by another store) matches no
            // lineage: the largest id Lua holds, at a version no state
            // reaches.
            let made_at = receipt.made_at.unwrap_or(Point {
                lineage: u64::MAX >> 11,
                version: u64::MAX >> 11,
            });
            call.arg(made_at.lineage).arg(made_at.version);
        }
        call.arg(receipt.charge_id);
        let reply = self.call("refund", call);
        Box::pin(async move {
            let reply = reply.await?;
            Cached::split(truth, "refund", &reply, 0)?.then(|reply, _| {
                if reply.len() != 3 * count {
                    return Err(unexpected_reply("refund", &reply));
                }
                let mut outcome = RefundOutcome {
                    refunded: Vec::with_capacity(count),
                    balances: Vec::with_capacity(count),
                };
                for triple in reply.chunks_exact(3) {
                    let balance = reply::balance(triple[1], triple[2])
                        .ok_or_else(|| unexpected_reply("refund", &reply))?;
                    let refunded =
                        u32::try_from(triple[0]).map_err(|_| unexpected_reply("refund", &reply))?;
                    outcome.refunded.push(refunded);
                    outcome.balances.push(balance);
                }
                Ok(outcome)
            })
        })
    }

    /// Reads balances; caching a source, or says the user is unseeded.
    pub(crate) fn balances_cached(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> StoreFuture<Cached<Vec<KindBalance>>> {
        let context = &self.shared.context;
        let mut call = ScriptCall::new(&context.scripts().balances, &self.user_keys(uid, None));
        call.arg(context.time_arg(now)).arg(kinds.len());
        for kind in kinds {
            push_kind(&mut call, kind, kind.initial_balance(), now);
        }
        let (count, truth) = (kinds.len(), context.truth);
        let reply = self.call("balances", call);
        Box::pin(async move {
            let reply = reply.await?;
            Cached::split(truth, "balances", &reply, 0)?
                .then(|reply, _| reply::balances("balances", &reply, count))
        })
    }

    /// Grants, sets or resets balances; caching a source, says at which
    /// point, or that the user is unseeded.
    pub(crate) fn adjust_cached(
        &self,
        request: &AdjustRequest,
    ) -> StoreFuture<Cached<AdjustOutcome>> {
        let context = &self.shared.context;
        let key = request.idempotency_key.as_ref();
        let fingerprint = key.map(|_| request.fingerprint()).unwrap_or_default();
        let changes = &request.changes;
        let mut call = ScriptCall::new(
            &context.scripts().adjust,
            &self.user_keys(&request.uid, key),
        );
        call.arg(context.time_arg(request.now))
            .arg(context.idle_ttl(changes.iter().map(|(kind, _)| &**kind)))
            .arg(millis(IDEMPOTENCY_TTL))
            .arg(fingerprint.as_str())
            .arg(changes.len());
        for (kind, adjustment) in changes {
            call.arg(adjustment.operation()).arg(adjustment.amount());
            push_kind(&mut call, kind, kind.initial_balance(), request.now);
        }
        let (truth, count) = (context.truth, changes.len());
        let reply = self.call("adjust", call);
        Box::pin(async move {
            let reply = reply.await?;
            Cached::split(truth, "adjust", &reply, 1)?.then(|reply, _| {
                let Some((&outcome, rest)) = reply.split_first() else {
                    return Err(unexpected_reply("adjust", &reply));
                };
                Ok(match outcome {
                    1 => AdjustOutcome::Applied {
                        balances: reply::balances("adjust", rest, count)?,
                    },
                    2 => AdjustOutcome::Replayed {
                        balances: reply::balances("adjust", rest, count)?,
                    },
                    3 => AdjustOutcome::InProgress,
                    4 => AdjustOutcome::KeyReused,
                    _ => return Err(unexpected_reply("adjust", &reply)),
                })
            })
        })
    }

    /// Marks `uid`'s idempotency `key` finished (its request is done), as
    /// [`TicketStore::finish`] does for a charge's: the key of the charge
    /// `charge_id`, or of an adjustment (`None`). A key that serves another
    /// request by now is left alone.
    pub(crate) fn finish_key(
        &self,
        uid: &Uid,
        key: &IdempotencyKey,
        charge_id: Option<u64>,
    ) -> StoreFuture<()> {
        let mut call = ScriptCall::new(
            &self.shared.context.scripts().finish,
            &[self.shared.keys.idempotency(uid, key)],
        );
        call.arg(charge_id.map_or_else(String::new, |id| id.to_string()));
        let reply = self.call("finish", call);
        Box::pin(async move {
            match reply.await?.as_slice() {
                [0 | 1] => Ok(()),
                other => Err(unexpected_reply("finish", other)),
            }
        })
    }

    /// Forgets `uid`'s idempotency `key`, so that a retry of a change that
    /// did not take is made again.
    pub(crate) fn forget_key(&self, uid: &Uid, key: &IdempotencyKey) -> StoreFuture<()> {
        let shared = self.shared.clone();
        let mut command = redis::cmd("DEL");
        command.arg(shared.keys.idempotency(uid, key));
        Box::pin(async move {
            let mut connection = shared.connection.clone();
            let reply = std::pin::pin!(connection.query::<i64>(&command));
            shared.bounded("forget key", reply, drop).await.map(drop)
        })
    }
}

impl TicketStore for RedisStore {
    fn charge(&self, request: ChargeRequest) -> StoreFuture<ChargeOutcome> {
        let decided = self.charge_cached(request, None);
        Box::pin(async move { Ok(decided.await?.decided("charge")?.0) })
    }

    fn finish(&self, receipt: &Receipt) -> StoreFuture<()> {
        match &receipt.idempotency_key {
            Some(key) => self.finish_key(&receipt.uid, key, Some(receipt.charge_id)),
            None => Box::pin(std::future::ready(Ok(()))),
        }
    }

    fn refund(&self, receipt: Receipt, now: DateTime<Utc>) -> StoreFuture<RefundOutcome> {
        let decided = self.refund_cached(receipt, now);
        Box::pin(async move { decided.await?.decided("refund") })
    }

    fn balances(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>> {
        let decided = self.balances_cached(uid, kinds, now);
        Box::pin(async move { decided.await?.decided("balances") })
    }

    fn adjust(&self, request: AdjustRequest) -> StoreFuture<AdjustOutcome> {
        let decided = self.adjust_cached(&request);
        Box::pin(async move { decided.await?.decided("adjust") })
    }

    fn ensure_user(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>> {
        self.seed(
            uid,
            kinds
                .iter()
                .map(|kind| (&**kind, kind.initial_balance(), None)),
            now,
        )
    }
}

/// What a charge was asked: whose, its cost, its key, and its id.
type Charging = (Uid, CheckedCost, Option<IdempotencyKey>, u64);

/// The charge script's reply after its point: the outcome, and (caching a
/// source) whether it applied a due refill, a change to write even when
/// nothing was charged.
fn charge_decision(
    mut reply: Vec<i64>,
    charging: Charging,
    made_at: Option<Point>,
) -> Result<(ChargeOutcome, bool), StoreError> {
    let refilled = made_at.is_some() && reply.len() > 1 && reply.remove(1) == 1;
    Ok((charge_outcome(&reply, charging, made_at)?, refilled))
}

/// The charge script's reply (without its point) as an outcome; an allowed
/// charge's receipt holds what it was asked and `made_at`.
fn charge_outcome(
    reply: &[i64],
    (uid, cost, idempotency_key, charge_id): Charging,
    made_at: Option<Point>,
) -> Result<ChargeOutcome, StoreError> {
    let Some((&outcome, rest)) = reply.split_first() else {
        return Err(unexpected_reply("charge", reply));
    };
    let balances = reply::balances("charge", rest, cost.items().len())?;
    Ok(match outcome {
        0 => ChargeOutcome::Refused { balances },
        1 => ChargeOutcome::Allowed {
            receipt: Receipt {
                uid,
                cost,
                last_refills: balances.iter().map(|b| b.last_refill).collect(),
                remaining_after: balances.iter().map(|b| b.remaining).collect(),
                idempotency_key,
                made_at,
                charge_id,
            },
            balances,
        },
        2 => ChargeOutcome::Replayed { balances },
        3 => ChargeOutcome::InProgress,
        4 => ChargeOutcome::KeyReused,
        _ => return Err(unexpected_reply("charge", reply)),
    })
}

/// A random id for a charge (below 2^53, as Lua holds it exactly).
fn new_charge_id() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static DRAWN: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static RANDOMNESS: RandomState = RandomState::new();
    }
    let n = DRAWN.fetch_add(1, Ordering::Relaxed);
    RANDOMNESS.with(|randomness| randomness.hash_one((n, Instant::now())) >> 11)
}
