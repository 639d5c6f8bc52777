//! [`RedisStore`]: the [`TicketStore`] operations as script calls.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use redis::ScriptInvocation;

use super::breaker::Breaker;
use super::connection::Connection;
use super::error::{store_error, unexpected_reply};
use super::keys::KeyLayout;
use super::reply;
use super::scripts::{CallContext, SCRIPTS, push_kind};
use crate::idempotency::IDEMPOTENCY_TTL;
use crate::kind::TicketKind;
use crate::store::{
    Adjustment, ChargeOutcome, ChargeRequest, KindBalance, Receipt, RefundOutcome, StoreError,
    StoreErrorKind, StoreFuture, TicketStore,
};
use crate::uid::Uid;

/// Balances in Redis, decided by one Lua script call per operation.
///
/// Made by [`RedisStore::connect`], [`RedisStore::standalone`] or
/// [`RedisStore::cluster`]. Clones share the connection, the breaker and
/// the configuration. See the [module docs](super) for keys, time and
/// faults.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) connection: Connection,
    pub(crate) keys: KeyLayout,
    pub(crate) context: CallContext,
    pub(crate) timeout: std::time::Duration,
    pub(crate) breaker: Arc<Breaker>,
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
        let mut invocation = SCRIPTS.seed.prepare_invoke();
        invocation
            .key(self.shared.keys.balances(uid))
            .arg(context.time_arg(now))
            .arg(context.idle_ttl(seeds.clone().map(|(kind, ..)| kind)))
            .arg(count);
        for (kind, balance, last_refill) in seeds {
            match last_refill {
                Some(at) => invocation.arg(at.timestamp_millis()),
                None => invocation.arg(""),
            };
            push_kind(&mut invocation, kind, balance, now);
        }
        let call = self.call("seed", invocation);
        Box::pin(async move { reply::balances("seed", &call.await?, count) })
    }

    /// Runs one script call under the breaker and the timeout.
    fn call(
        &self,
        operation: &'static str,
        invocation: ScriptInvocation<'static>,
    ) -> impl Future<Output = Result<Vec<i64>, StoreError>> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            let permit = shared.breaker.admit()?;
            let mut connection = shared.connection.clone();
            match tokio::time::timeout(shared.timeout, connection.invoke(&invocation)).await {
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
                    Err(StoreError::new(
                        StoreErrorKind::Timeout,
                        format!(
                            "Redis {operation} got no answer within {:?}",
                            shared.timeout
                        ),
                    ))
                }
            }
        }
    }
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl TicketStore for RedisStore {
    fn charge(&self, request: ChargeRequest) -> StoreFuture<ChargeOutcome> {
        let ChargeRequest {
            uid,
            cost,
            now,
            idempotency_key,
        } = request;
        let (keys, context) = (&self.shared.keys, &self.shared.context);
        let items = cost.items();
        let mut invocation = SCRIPTS.charge.prepare_invoke();
        invocation.key(keys.balances(&uid));
        if let Some(key) = &idempotency_key {
            invocation.key(keys.idempotency(&uid, key));
        }
        invocation
            .arg(context.time_arg(now))
            .arg(context.idle_ttl(items.iter().map(|item| &*item.kind)))
            .arg(millis(IDEMPOTENCY_TTL))
            .arg(items.len());
        for item in items {
            invocation.arg(item.amount);
            push_kind(
                &mut invocation,
                &item.kind,
                item.kind.initial_balance(),
                now,
            );
        }
        let call = self.call("charge", invocation);
        Box::pin(async move {
            let reply = call.await?;
            let Some((&outcome, rest)) = reply.split_first() else {
                return Err(unexpected_reply("charge", &reply));
            };
            let balances = reply::balances("charge", rest, cost.items().len())?;
            Ok(match outcome {
                0 => ChargeOutcome::Refused { balances },
                1 => ChargeOutcome::Allowed {
                    receipt: Receipt {
                        uid,
                        cost,
                        last_refills: balances.iter().map(|b| b.last_refill).collect(),
                        idempotency_key,
                    },
                    balances,
                },
                2 => ChargeOutcome::Replayed { balances },
                _ => return Err(unexpected_reply("charge", &reply)),
            })
        })
    }

    fn refund(&self, receipt: Receipt, now: DateTime<Utc>) -> StoreFuture<RefundOutcome> {
        let (keys, context) = (&self.shared.keys, &self.shared.context);
        let items = receipt.cost.items();
        let count = items.len().min(receipt.last_refills.len());
        let mut invocation = SCRIPTS.refund.prepare_invoke();
        invocation.key(keys.balances(&receipt.uid));
        if let Some(key) = &receipt.idempotency_key {
            invocation.key(keys.idempotency(&receipt.uid, key));
        }
        invocation
            .arg(context.time_arg(now))
            .arg(context.idle_ttl(items.iter().map(|item| &*item.kind)))
            .arg(count);
        for (item, charged_at) in items.iter().zip(&receipt.last_refills) {
            invocation
                .arg(item.amount)
                .arg(charged_at.timestamp_millis());
            push_kind(
                &mut invocation,
                &item.kind,
                item.kind.initial_balance(),
                now,
            );
        }
        let call = self.call("refund", invocation);
        Box::pin(async move {
            let reply = call.await?;
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
                outcome.refunded.push(triple[0] == 1);
                outcome.balances.push(balance);
            }
            Ok(outcome)
        })
    }

    fn balances(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>> {
        let mut invocation = SCRIPTS.balances.prepare_invoke();
        invocation
            .key(self.shared.keys.balances(uid))
            .arg(self.shared.context.time_arg(now))
            .arg(kinds.len());
        for kind in kinds {
            push_kind(&mut invocation, kind, kind.initial_balance(), now);
        }
        let count = kinds.len();
        let call = self.call("balances", invocation);
        Box::pin(async move { reply::balances("balances", &call.await?, count) })
    }

    fn adjust(
        &self,
        uid: &Uid,
        kind: &Arc<TicketKind>,
        adjustment: Adjustment,
        now: DateTime<Utc>,
    ) -> StoreFuture<KindBalance> {
        let context = &self.shared.context;
        let (operation, amount) = match adjustment {
            Adjustment::Grant(amount) => ("grant", amount),
            Adjustment::Set(balance) => ("set", balance),
        };
        let mut invocation = SCRIPTS.adjust.prepare_invoke();
        invocation
            .key(self.shared.keys.balances(uid))
            .arg(context.time_arg(now))
            .arg(context.idle_ttl([&**kind]))
            .arg(1)
            .arg(operation)
            .arg(amount);
        push_kind(&mut invocation, kind, kind.initial_balance(), now);
        let call = self.call(operation, invocation);
        Box::pin(async move {
            let balances = reply::balances(operation, &call.await?, 1)?;
            Ok(balances[0])
        })
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
