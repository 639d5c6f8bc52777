//! Answering repeated refusals locally, for a short time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use parking_lot::Mutex;

use super::{
    AdjustOutcome, AdjustRequest, ChargeOutcome, ChargeRequest, KindBalance, Receipt,
    RefundOutcome, StoreFuture, TicketStore,
};
use crate::cost::CheckedCost;
use crate::kind::TicketKind;
use crate::uid::Uid;

/// How many users' refusals are kept at most; past that, expired entries are
/// dropped, and new ones are not kept while it stays full.
const MAX_ENTRIES: usize = 100_000;

/// A store wrapper that answers a user's repeated refusals from this
/// instance's memory instead of asking the store each time.
///
/// A client hammering a route at zero tickets then costs about one store
/// call per [TTL](Self::with_ttl) instead of one per request. An entry
/// lives at most the TTL (1 s by default), never past the next refill of the
/// kinds it holds, and is dropped by this instance's grants, sets and
/// refunds for that user. A grant or refund made through *another* instance
/// is seen once the entry expires, within the TTL, or at once with
/// [`shared_through`](Self::shared_through) (Redis pub/sub). Charges with
/// an `Idempotency-Key` always reach the store (they may be replays).
///
/// ```
/// use tower_tickets::store::{MemoryStore, RefusalCache};
///
/// let store = RefusalCache::new(MemoryStore::new());
/// # let _ = store;
/// ```
#[derive(Clone)]
pub struct RefusalCache<S> {
    inner: S,
    shared: Arc<Shared>,
    #[cfg(feature = "redis")]
    feed: Option<Arc<Feed>>,
}

/// How the instances tell each other of balance changes (see
/// [`RefusalCache::shared_through`]).
#[cfg(feature = "redis")]
struct Feed {
    /// Tells the other instances that a user's balance changed.
    redis: super::RedisStore,
    /// Hears theirs while held.
    _subscription: super::ChangeSubscription,
}

struct Shared {
    ttl: TimeDelta,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_user: HashMap<Uid, Refusal>,
    /// Bumped by every grant, set and refund: a refusal decided before one of
    /// them completed must not be kept after it.
    epoch: u64,
}

/// The balances a refused charge reported, and how long they may be reused.
struct Refusal {
    balances: Vec<(Arc<str>, KindBalance)>,
    cached_at: DateTime<Utc>,
    until: DateTime<Utc>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for RefusalCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefusalCache")
            .field("inner", &self.inner)
            .field("ttl", &self.shared.ttl)
            .finish_non_exhaustive()
    }
}

impl<S> RefusalCache<S> {
    /// Wraps `inner`, reusing a refusal for at most 1 s.
    pub fn new(inner: S) -> Self {
        Self::with_ttl(inner, Duration::from_secs(1))
    }

    /// Wraps `inner`, reusing a refusal for at most `ttl`.
    pub fn with_ttl(inner: S, ttl: Duration) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                ttl: TimeDelta::from_std(ttl).unwrap_or(TimeDelta::MAX),
                entries: Mutex::default(),
            }),
            #[cfg(feature = "redis")]
            feed: None,
        }
    }

    /// Makes the instances on `redis` tell each other of balance changes:
    /// a grant, set, reset or refund made through another instance drops
    /// this one's cached refusal of the user at once, not within the TTL.
    /// Each such change costs one `PUBLISH`, and each instance holds one
    /// subscribed connection ([`RedisStore::subscribe_changes`](super::RedisStore::subscribe_changes)); a message
    /// missed while that connection reconnects leaves the TTL as the bound.
    #[cfg(feature = "redis")]
    pub async fn shared_through(
        mut self,
        redis: &super::RedisStore,
    ) -> Result<Self, super::RedisSetupError> {
        let cache = Arc::downgrade(&self.shared);
        let subscription = redis
            .subscribe_changes(move |uid| {
                if let Some(cache) = cache.upgrade() {
                    cache.forget(&uid);
                }
            })
            .await?;
        self.feed = Some(Arc::new(Feed {
            redis: redis.clone(),
            _subscription: subscription,
        }));
        Ok(self)
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl Shared {
    /// The balances of a still-valid refusal of `uid` that `cost` cannot pay.
    fn refusal(
        &self,
        uid: &Uid,
        cost: &CheckedCost,
        now: DateTime<Utc>,
    ) -> Option<Vec<KindBalance>> {
        let entries = self.entries.lock();
        let refusal = entries.by_user.get(uid)?;
        if now < refusal.cached_at || now >= refusal.until {
            return None;
        }
        let balances = cost
            .items()
            .iter()
            .map(|item| {
                refusal
                    .balances
                    .iter()
                    .find(|(name, _)| **name == *item.kind.name())
                    .map(|(_, balance)| *balance)
            })
            .collect::<Option<Vec<_>>>()?;
        let short = cost
            .items()
            .iter()
            .zip(&balances)
            .any(|(item, balance)| balance.remaining < item.amount);
        short.then_some(balances)
    }

    /// Keeps a refusal unless a grant, set or refund completed since `epoch`.
    fn remember(
        &self,
        uid: Uid,
        cost: &CheckedCost,
        balances: &[KindBalance],
        now: DateTime<Utc>,
        epoch: u64,
    ) {
        let next_refill = cost
            .items()
            .iter()
            .zip(balances)
            .map(|(item, balance)| item.kind.refill_schedule().next_after(balance.last_refill))
            .min();
        let until = next_refill.map_or(now, |refill| refill.min(now + self.ttl));
        let mut entries = self.entries.lock();
        if entries.epoch != epoch || until <= now {
            return;
        }
        if entries.by_user.len() >= MAX_ENTRIES {
            entries.by_user.retain(|_, refusal| refusal.until > now);
            if entries.by_user.len() >= MAX_ENTRIES {
                return;
            }
        }
        let balances = cost
            .items()
            .iter()
            .zip(balances)
            .map(|(item, balance)| (item.kind.shared_name().clone(), *balance))
            .collect();
        entries.by_user.insert(
            uid,
            Refusal {
                balances,
                cached_at: now,
                until,
            },
        );
    }

    fn epoch(&self) -> u64 {
        self.entries.lock().epoch
    }

    /// Drops `uid`'s refusal after their balance changed.
    fn forget(&self, uid: &Uid) {
        let mut entries = self.entries.lock();
        entries.by_user.remove(uid);
        entries.epoch += 1;
    }
}

impl<S: TicketStore> RefusalCache<S> {
    /// Runs `change`, then forgets `uid`'s refusal, whatever the outcome (a
    /// failed call may still have changed the balance).
    fn changing<T: Send + 'static>(&self, uid: &Uid, change: StoreFuture<T>) -> StoreFuture<T> {
        let (shared, uid) = (self.shared.clone(), uid.clone());
        #[cfg(feature = "redis")]
        let feed = self.feed.clone();
        Box::pin(async move {
            let result = change.await;
            shared.forget(&uid);
            // Told in the background: the change's caller (a request's
            // refund, an admin) does not wait one more round trip for it.
            #[cfg(feature = "redis")]
            if let Some(feed) = feed {
                tokio::spawn(async move {
                    if let Err(error) = feed.redis.publish_change(&uid).await {
                        tracing::debug!(%uid, %error, "could not tell the other instances of a change");
                    }
                });
            }
            result
        })
    }
}

impl<S: TicketStore> TicketStore for RefusalCache<S> {
    fn charge(&self, request: ChargeRequest) -> StoreFuture<ChargeOutcome> {
        if request.idempotency_key.is_none()
            && let Some(balances) = self
                .shared
                .refusal(&request.uid, &request.cost, request.now)
        {
            return Box::pin(std::future::ready(Ok(ChargeOutcome::Refused { balances })));
        }
        let shared = self.shared.clone();
        let epoch = shared.epoch();
        let (uid, cost, now) = (request.uid.clone(), request.cost.clone(), request.now);
        let charge = self.inner.charge(request);
        Box::pin(async move {
            let outcome = charge.await?;
            if let ChargeOutcome::Refused { balances } = &outcome {
                shared.remember(uid, &cost, balances, now, epoch);
            }
            Ok(outcome)
        })
    }

    fn refund(&self, receipt: Receipt, now: DateTime<Utc>) -> StoreFuture<RefundOutcome> {
        let uid = receipt.uid.clone();
        self.changing(&uid, self.inner.refund(receipt, now))
    }

    fn finish(&self, receipt: &Receipt) -> StoreFuture<()> {
        self.inner.finish(receipt)
    }

    fn balances(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>> {
        self.inner.balances(uid, kinds, now)
    }

    fn adjust(&self, request: AdjustRequest) -> StoreFuture<AdjustOutcome> {
        let uid = request.uid.clone();
        self.changing(&uid, self.inner.adjust(request))
    }

    fn ensure_user(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>> {
        self.inner.ensure_user(uid, kinds, now)
    }

    fn check_kinds(&self, kinds: &[Arc<TicketKind>]) -> Result<(), crate::ConfigError> {
        self.inner.check_kinds(kinds)
    }
}
