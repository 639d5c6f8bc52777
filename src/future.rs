//! The response future: a small state machine that waits for the charge,
//! calls the inner service, then settles (refunds a failed request).

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::balances::BalanceView;
use crate::charged::Charged;
use crate::cost::CheckedCost;
use crate::idempotency::Replays;
use crate::kind::FailMode;
use crate::layer::{Plan, Pricing};
use crate::ratelimit_headers::{self, RATELIMIT_NAME, RATELIMIT_POLICY_NAME};
use crate::rejection::{QuotaExceeded, QuotaItem, Rejection};
use crate::store::{ChargeOutcome, KindBalance, Receipt, StoreError, StoreErrorKind, StoreFuture};
use crate::telemetry::{self, StoreOperation};
use crate::uid::Uid;
use crate::unanswered::{self, Settled, Settlement, Unanswered};

pin_project! {
    /// Response future of [`TicketService`](crate::TicketService).
    ///
    /// Dropped before the handler answered (the client left, an outer
    /// timeout), it gives an allowed charge back in the background: see
    /// [`TicketLayer::refund_unanswered`](crate::TicketLayer::refund_unanswered).
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
        settle: Option<Settle>,
    }

    impl<S, ReqBody> PinnedDrop for ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let Some(settle) = this.settle.as_ref() else {
                return;
            };
            // A finished future is `Answered`: only an unfinished one
            // leaves work behind.
            let unanswered = match this.state.project() {
                StateProj::Answered { .. } => return,
                StateProj::Charging { charge, .. } => Unanswered::Charging(taken(charge)),
                StateProj::Calling { receipt, .. } => match receipt.take() {
                    Some(receipt) => Unanswered::Called(receipt),
                    None => return,
                },
                StateProj::Settling { settlement, .. } => Unanswered::Settling(taken(settlement)),
            };
            unanswered::settle_in_background(
                unanswered,
                settle.plan.tickets.clone(),
                settle.cost.clone(),
                settle.plan.refund_unanswered,
                settle.span.clone(),
            );
        }
    }
}

/// What the later states need to know about the decision.
struct Settle {
    plan: Arc<Plan>,
    uid: Uid,
    cost: CheckedCost,
    now: DateTime<Utc>,
    /// `RateLimit` for the balances after the charge.
    ratelimit: Option<HeaderValue>,
    /// How long the pending store operation has been waited for.
    store_wait: StoreWait,
    span: tracing::Span,
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        /// Answered without calling the inner service, or done.
        Answered { response: Option<S::Response> },
        /// Waiting for the store's decision.
        Charging {
            charge: StoreFuture<ChargeOutcome>,
            request: Option<Request<ReqBody>>,
            inner: Option<S>,
        },
        /// The inner service is handling the request.
        Calling {
            #[pin]
            future: S::Future,
            receipt: Option<Receipt>,
        },
        /// Giving back the charge of a failed request, or recording that a
        /// request with an idempotency key finished.
        Settling {
            settlement: Settlement,
            result: Option<Result<S::Response, S::Error>>,
        },
    }
}

/// The future left in a dropped state, replaced by one that never completes
/// (a zero-sized box: no allocation).
fn taken<T: Send + 'static>(
    future: &mut Pin<Box<dyn Future<Output = T> + Send>>,
) -> Pin<Box<dyn Future<Output = T> + Send>> {
    std::mem::replace(future, Box::pin(std::future::pending()))
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn rejected(response: S::Response) -> Self {
        Self {
            state: State::Answered {
                response: Some(response),
            },
            settle: None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn charging(
        charge: StoreFuture<ChargeOutcome>,
        request: Request<ReqBody>,
        inner: S,
        plan: Arc<Plan>,
        uid: Uid,
        cost: CheckedCost,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            state: State::Charging {
                charge,
                request: Some(request),
                inner: Some(inner),
            },
            settle: Some(Settle::new(plan, uid, cost, now)),
        }
    }
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    /// The future of a request whose charge the store answered at once (the
    /// embedded store does): `inner`, driven to readiness, is called now
    /// if the charge allows it, so that no clone of it is needed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decided(
        outcome: Result<ChargeOutcome, StoreError>,
        request: Request<ReqBody>,
        inner: &mut S,
        plan: Arc<Plan>,
        uid: Uid,
        cost: CheckedCost,
        now: DateTime<Utc>,
    ) -> Self {
        let mut settle = Settle::new(plan, uid, cost, now);
        Self {
            state: settle.after_charge(outcome, request, inner),
            settle: Some(settle),
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            // What this turn leads to: another state, or the answer.
            let step = match this.state.as_mut().project() {
                StateProj::Answered { response } => ControlFlow::Break(Ok(response
                    .take()
                    .expect("ResponseFuture polled after completion"))),
                StateProj::Charging {
                    charge,
                    request,
                    inner,
                } => {
                    let settle = this.settle.as_mut().expect("settle is set while charging");
                    let outcome = ready!(settle.store_wait.poll(charge.as_mut(), cx));
                    let request = request.take().expect("polled after completion");
                    let mut inner = inner.take().expect("polled after completion");
                    ControlFlow::Continue(settle.after_charge(outcome, request, &mut inner))
                }
                StateProj::Calling { future, receipt } => {
                    let result = ready!(future.poll(cx));
                    let settle = this.settle.as_mut().expect("settle is set while calling");
                    let failed = match &result {
                        Ok(response) => (settle.plan.refund_on)(response.status()),
                        Err(_) => true,
                    };
                    match receipt.take().and_then(|r| settle.settlement(r, failed)) {
                        Some(settlement) => ControlFlow::Continue(State::Settling {
                            settlement,
                            result: Some(result),
                        }),
                        None => ControlFlow::Break(result.map(|r| settle.stamp(r))),
                    }
                }
                StateProj::Settling { settlement, result } => {
                    let settle = this.settle.as_mut().expect("settle is set while settling");
                    let outcome = ready!(settle.store_wait.poll(settlement.as_mut(), cx));
                    settle.after_settlement(outcome);
                    let result = result.take().expect("polled after completion");
                    ControlFlow::Break(result.map(|r| settle.stamp(r)))
                }
            };
            match step {
                ControlFlow::Continue(state) => this.state.set(state),
                ControlFlow::Break(output) => {
                    // Nothing is left to settle if this future is dropped.
                    this.state.set(State::Answered { response: None });
                    return Poll::Ready(output);
                }
            }
        }
    }
}

/// How long a store operation has been waited for, timed from its first
/// pending poll: a store that answers at once (the embedded one) costs no
/// clock reads, and is reported as taking no time.
#[derive(Default)]
struct StoreWait(Option<Instant>);

impl StoreWait {
    fn poll<T>(
        &mut self,
        operation: Pin<&mut (impl Future<Output = T> + ?Sized)>,
        cx: &mut Context<'_>,
    ) -> Poll<T> {
        let polled = operation.poll(cx);
        if polled.is_pending() {
            self.0.get_or_insert_with(Instant::now);
        }
        polled
    }

    fn took(&self) -> Duration {
        self.0.map_or(Duration::ZERO, |started| started.elapsed())
    }
}

enum Decision {
    Call { receipt: Option<Receipt> },
    Answer(Rejection),
}

impl Settle {
    fn new(plan: Arc<Plan>, uid: Uid, cost: CheckedCost, now: DateTime<Utc>) -> Self {
        Self {
            span: telemetry::decision_span(&uid, &cost),
            plan,
            uid,
            cost,
            now,
            ratelimit: None,
            store_wait: StoreWait::default(),
        }
    }

    /// What follows the store's answer: `inner` handling the request, or
    /// the layer's refusal.
    fn after_charge<S, ReqBody, ResBody>(
        &mut self,
        outcome: Result<ChargeOutcome, StoreError>,
        mut request: Request<ReqBody>,
        inner: &mut S,
    ) -> State<S, ReqBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: From<Bytes>,
    {
        match self.decide(outcome, &mut request) {
            Decision::Call { receipt } => State::Calling {
                future: inner.call(request),
                receipt,
            },
            Decision::Answer(rejection) => State::Answered {
                response: Some(self.plan.tickets.respond(rejection, request.headers())),
            },
        }
    }

    /// Turns the store's answer into what happens next.
    fn decide<B>(
        &mut self,
        outcome: Result<ChargeOutcome, StoreError>,
        request: &mut Request<B>,
    ) -> Decision {
        let outcome = outcome.and_then(|o| self.checked(o));
        telemetry::store_call(StoreOperation::Charge, self.store_wait.took(), &outcome);
        let _entered = self.span.enter();
        let (balances, receipt) = match outcome {
            Ok(ChargeOutcome::Allowed { balances, receipt }) => (balances, Some(receipt)),
            Ok(ChargeOutcome::Replayed { .. }) if self.plan.replays == Replays::Refuse => {
                self.span.record("outcome", "already_processed");
                return Decision::Answer(Rejection::AlreadyProcessed);
            }
            Ok(ChargeOutcome::InProgress) => {
                self.span.record("outcome", "in_progress");
                return Decision::Answer(Rejection::InProgress);
            }
            Ok(ChargeOutcome::KeyReused) => {
                self.span.record("outcome", "key_reused");
                return Decision::Answer(Rejection::KeyReused);
            }
            Ok(ChargeOutcome::Replayed { balances }) => (balances, None),
            Ok(ChargeOutcome::Refused { balances }) => {
                self.span.record("outcome", "refused");
                telemetry::refused(
                    self.cost
                        .items()
                        .iter()
                        .zip(&balances)
                        .filter(|(item, balance)| balance.remaining < item.amount)
                        .map(|(item, _)| &*item.kind),
                );
                return Decision::Answer(Rejection::QuotaExceeded(QuotaExceeded {
                    now: self.now,
                    items: self
                        .cost
                        .items()
                        .iter()
                        .zip(&balances)
                        .map(|(item, balance)| QuotaItem {
                            kind: item.kind.clone(),
                            cost: item.amount,
                            remaining: balance.remaining,
                            refill_at: item.kind.refill_schedule().next_after(balance.last_refill),
                        })
                        .collect(),
                }));
            }
            Err(error) => {
                let fail_open = self
                    .cost
                    .items()
                    .iter()
                    .all(|item| item.kind.fail_mode() == FailMode::Open);
                if !fail_open {
                    self.span.record("outcome", "store_unavailable");
                    tracing::error!(%error, "ticket store unavailable; failing closed");
                    return Decision::Answer(Rejection::StoreUnavailable(Arc::new(error)));
                }
                self.span.record("outcome", "failed_open");
                telemetry::failed_open(&self.cost);
                tracing::warn!(%error, "ticket store unavailable; failing open, request not charged");
                request.extensions_mut().insert(Charged {
                    uid: self.uid.clone(),
                    balances: Vec::new(),
                    charged: false,
                });
                return Decision::Call { receipt: None };
            }
        };
        if receipt.is_some() {
            self.span.record("outcome", "allowed");
            telemetry::charged(&self.cost);
        } else {
            self.span.record("outcome", "replayed");
        }
        let views: Vec<BalanceView> = self
            .cost
            .items()
            .iter()
            .zip(&balances)
            .map(|(item, balance)| BalanceView::new(&item.kind, *balance))
            .collect();
        // Each next refill computed once, for the header and the extension.
        self.ratelimit = Some(ratelimit_headers::remaining(
            views
                .iter()
                .map(|view| (&*view.kind, view.remaining, view.refill_at)),
            self.now,
        ));
        request.extensions_mut().insert(Charged {
            uid: self.uid.clone(),
            balances: views,
            charged: receipt.is_some(),
        });
        Decision::Call { receipt }
    }

    /// A store's answer with one balance per kind of the cost, or an error:
    /// a backend that miscounts must not make the layer misreport.
    fn checked(&self, outcome: ChargeOutcome) -> Result<ChargeOutcome, StoreError> {
        let count = match &outcome {
            ChargeOutcome::Allowed { balances, .. }
            | ChargeOutcome::Refused { balances }
            | ChargeOutcome::Replayed { balances } => balances.len(),
            // Nothing to report: the layer answers without balances.
            _ => return Ok(outcome),
        };
        if count == self.cost.items().len() {
            Ok(outcome)
        } else {
            Err(StoreError::new(
                StoreErrorKind::Corrupt,
                format!(
                    "the store answered {count} balances for a cost of {} kinds",
                    self.cost.items().len()
                ),
            ))
        }
    }

    fn ratelimit_value(&self, balances: &[KindBalance]) -> HeaderValue {
        ratelimit_headers::remaining(
            self.cost
                .items()
                .iter()
                .zip(balances)
                .map(|(item, balance)| {
                    (
                        &*item.kind,
                        balance.remaining,
                        item.kind.refill_schedule().next_after(balance.last_refill),
                    )
                }),
            self.now,
        )
    }

    /// What settles an allowed charge once its handler answered: a refund
    /// when the request `failed`, a finish when it carries an idempotency
    /// key (so that its retries are told it was processed), else nothing.
    fn settlement(&mut self, receipt: Receipt, failed: bool) -> Option<Settlement> {
        let settlement = if failed {
            Settled::refund(&self.plan.tickets, receipt)
        } else if receipt.idempotency_key.is_some() {
            Settled::finish(&self.plan.tickets, &receipt)
        } else {
            return None;
        };
        self.store_wait = StoreWait::default();
        Some(settlement)
    }

    fn after_settlement(&mut self, settled: Settled) {
        let _entered = self.span.enter();
        if let Some(outcome) = settled.record(&self.cost, self.store_wait.took()) {
            self.ratelimit = Some(self.ratelimit_value(&outcome.balances));
        }
    }

    /// Adds the `RateLimit` headers of the kinds charged (once: the value
    /// is handed over, not copied).
    fn stamp<B>(&mut self, mut response: Response<B>) -> Response<B> {
        if let Some(ratelimit) = self.ratelimit.take() {
            let headers: &mut HeaderMap = response.headers_mut();
            let policy = match &self.plan.pricing {
                Pricing::Fixed { policy, .. } => policy.clone(),
                Pricing::Dynamic(_) => {
                    ratelimit_headers::policy(self.cost.items().iter().map(|i| &*i.kind))
                }
            };
            headers.insert(RATELIMIT_POLICY_NAME, policy);
            headers.insert(RATELIMIT_NAME, ratelimit);
        }
        response
    }
}
