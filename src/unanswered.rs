//! Settling a charge: after its handler answered, or in the background
//! after its request was dropped unanswered (DESIGN.md §5: unanswered
//! charges are given back, exactly once).

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::cost::CheckedCost;
use crate::store::{
    ChargeOutcome, Receipt, RefundOutcome, StoreError, StoreErrorKind, StoreFuture,
};
use crate::telemetry::{self, StoreOperation};
use crate::tickets::Tickets;

/// How many times a background refund is tried again while the store is
/// unreachable (Redis killed, the breaker open): pauses from
/// [`FIRST_RETRY`] doubling up to [`LONGEST_RETRY`], about a minute in all.
const REFUND_RETRIES: u32 = 10;
const FIRST_RETRY: Duration = Duration::from_millis(250);
const LONGEST_RETRY: Duration = Duration::from_secs(8);

/// A settlement under way; it reports its own failure.
pub(crate) type Settlement = Pin<Box<dyn Future<Output = Settled> + Send>>;

/// How a charge was settled.
pub(crate) enum Settled {
    /// Given back (the request failed, or was never answered).
    Refunded(Result<RefundOutcome, StoreError>),
    /// Kept, and its idempotency key marked finished.
    Finished(Result<(), StoreError>),
}

impl Settled {
    /// Gives the charge of `receipt` back.
    pub(crate) fn refund(tickets: &Tickets, receipt: Receipt) -> Settlement {
        let refund = tickets.shared.store.refund(receipt, tickets.now());
        Box::pin(async move { Settled::Refunded(refund.await) })
    }

    /// Gives the charge of `receipt` back, in the background: while the
    /// store answers [`StoreErrorKind::Unavailable`] or
    /// [`StoreErrorKind::CircuitOpen`] (the refund did not reach it, so
    /// trying again cannot give it back twice), it tries again for about a
    /// minute. A request dropped while Redis was down, or just after, kept
    /// its charge before. (A timeout is not retried: the refund may have
    /// been applied, and a plain Redis store does not remember it.)
    fn refund_in_background(tickets: Tickets, receipt: Receipt) -> Settlement {
        Box::pin(async move {
            let mut pause = FIRST_RETRY;
            for _ in 0..REFUND_RETRIES {
                match tickets
                    .shared
                    .store
                    .refund(receipt.clone(), tickets.now())
                    .await
                {
                    Err(error)
                        if matches!(
                            error.kind(),
                            StoreErrorKind::Unavailable | StoreErrorKind::CircuitOpen
                        ) =>
                    {
                        tracing::warn!(%error, "the store did not take a refund; trying again");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(LONGEST_RETRY);
                    }
                    outcome => return Settled::Refunded(outcome),
                }
            }
            Settled::Refunded(tickets.shared.store.refund(receipt, tickets.now()).await)
        })
    }

    /// Records that the request of `receipt` finished.
    pub(crate) fn finish(tickets: &Tickets, receipt: &Receipt) -> Settlement {
        let finish = tickets.shared.store.finish(receipt);
        Box::pin(async move { Settled::Finished(finish.await) })
    }

    /// Reports a settlement of `cost` that `took` so long; gives the
    /// refund's outcome, if it was one and succeeded.
    pub(crate) fn record(self, cost: &CheckedCost, took: Duration) -> Option<RefundOutcome> {
        match self {
            Self::Refunded(outcome) => {
                telemetry::store_call(StoreOperation::Refund, took, &outcome);
                match outcome {
                    Ok(outcome) => {
                        telemetry::refunded(cost, &outcome.refunded);
                        tracing::debug!(refunded = ?outcome.refunded, "charge given back");
                        Some(outcome)
                    }
                    Err(error) => {
                        tracing::error!(%error, "refund failed; the charge stands");
                        None
                    }
                }
            }
            Self::Finished(outcome) => {
                telemetry::store_call(StoreOperation::Finish, took, &outcome);
                if let Err(error) = outcome {
                    tracing::warn!(
                        %error,
                        "could not record that the request finished; its retries are answered \
                         'in progress' until the Idempotency-Key expires"
                    );
                }
                None
            }
        }
    }
}

/// What a response future was waiting on when it was dropped unanswered.
pub(crate) enum Unanswered {
    /// The store's decision: it may still allow the charge.
    Charging(StoreFuture<ChargeOutcome>),
    /// Nothing: the charge was allowed and the handler had not answered.
    Called(Receipt),
    /// A refund or finish, already decided.
    Settling(Settlement),
}

/// Settles in the background, on the current Tokio runtime, what a
/// response future dropped unanswered leaves: a pending charge is awaited
/// and given back if allowed; an allowed charge is given back, or kept
/// (and its key marked finished) when the route opted out with
/// `refund_unanswered` false, its handler's work outliving the request; a
/// settlement under way is completed.
pub(crate) fn settle_in_background(
    unanswered: Unanswered,
    tickets: Tickets,
    cost: CheckedCost,
    refund_unanswered: bool,
    span: tracing::Span,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        let _entered = span.enter();
        tracing::error!("request dropped outside a Tokio runtime; its charge stays spent");
        return;
    };
    let work = async move {
        let settlement = match unanswered {
            Unanswered::Charging(charge) => match charge.await {
                Ok(ChargeOutcome::Allowed { receipt, .. }) => {
                    tracing::debug!("request dropped while charging; giving the charge back");
                    Settled::refund_in_background(tickets.clone(), receipt)
                }
                // Nothing was charged, or the store's error says why not.
                _ => return,
            },
            Unanswered::Called(receipt) if refund_unanswered => {
                tracing::debug!(
                    "request dropped before its handler answered; giving the charge back"
                );
                Settled::refund_in_background(tickets.clone(), receipt)
            }
            Unanswered::Called(receipt) => Settled::finish(&tickets, &receipt),
            Unanswered::Settling(settlement) => settlement,
        };
        let started = Instant::now();
        settlement.await.record(&cost, started.elapsed());
    };
    runtime.spawn(work.instrument(span));
}
