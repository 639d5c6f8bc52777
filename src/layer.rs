//! The tower [`Layer`] that puts a price on a route.

use std::fmt;
use std::sync::Arc;

use http::{HeaderValue, StatusCode};
use tower_layer::Layer;

use crate::cost::{CheckedCost, CostFn};
use crate::idempotency::Replays;
use crate::ratelimit_headers;
use crate::service::TicketService;
use crate::tickets::Tickets;

/// Charges tickets for every request to the routes it wraps.
///
/// Made by [`Tickets::layer`] (fixed cost) or [`Tickets::layer_fn`] (cost
/// computed per request). Attach it with axum's `route_layer`, never
/// `layer`, so that a request to an unknown path stays a 404 and costs
/// nothing:
///
/// ```
/// use axum::{Router, routing::post};
/// use tower_tickets::{Cost, TicketKind, Tickets};
///
/// let tickets = Tickets::builder().kind(TicketKind::new("upload", 5)).build()?;
/// let app: Router = Router::new()
///     .route("/api/uploads", post(|| async { "stored" }))
///     .route_layer(tickets.layer(Cost::of("upload", 1))?);
/// # Ok::<(), tower_tickets::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct TicketLayer {
    pub(crate) plan: Arc<Plan>,
}

/// How a layer prices requests, when it refunds and what it does with a
/// replayed `Idempotency-Key`; with the registry it charges, so that a
/// request clones one `Arc` for both.
#[derive(Clone)]
pub(crate) struct Plan {
    /// The registry the layer charges.
    pub(crate) tickets: Tickets,
    pub(crate) pricing: Pricing,
    pub(crate) refund_on: Arc<dyn Fn(StatusCode) -> bool + Send + Sync>,
    pub(crate) replays: Replays,
    /// Whether a charge whose request is dropped unanswered is given back.
    pub(crate) refund_unanswered: bool,
}

#[derive(Clone)]
pub(crate) enum Pricing {
    /// Checked once when the layer was built; the policy header is
    /// precomputed.
    Fixed {
        cost: CheckedCost,
        policy: HeaderValue,
    },
    /// Priced and checked per request.
    Dynamic(Arc<dyn CostFn>),
}

impl fmt::Debug for TicketLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pricing = match &self.plan.pricing {
            Pricing::Fixed { cost, .. } => format!("{:?}", cost.items()),
            Pricing::Dynamic(_) => "computed per request".into(),
        };
        f.debug_struct("TicketLayer")
            .field("cost", &pricing)
            .finish_non_exhaustive()
    }
}

impl TicketLayer {
    pub(crate) fn fixed(tickets: Tickets, cost: CheckedCost) -> Self {
        let policy = ratelimit_headers::policy(cost.items().iter().map(|i| &*i.kind));
        Self::with(tickets, Pricing::Fixed { cost, policy })
    }

    pub(crate) fn dynamic(tickets: Tickets, price: Arc<dyn CostFn>) -> Self {
        Self::with(tickets, Pricing::Dynamic(price))
    }

    fn with(tickets: Tickets, pricing: Pricing) -> Self {
        Self {
            plan: Arc::new(Plan {
                tickets,
                pricing,
                refund_on: Arc::new(|status: StatusCode| status.is_server_error()),
                replays: Replays::default(),
                refund_unanswered: true,
            }),
        }
    }

    /// Which response statuses give the charge back (default: 5xx). A
    /// handler error (the inner service's `Err`) always does.
    pub fn refund_when(
        self,
        refund_on: impl Fn(StatusCode) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.replanned(|plan| plan.refund_on = Arc::new(refund_on))
    }

    /// What to do with a retry of a finished request: one whose
    /// `Idempotency-Key` this user already paid with, for the same method,
    /// route and cost (default [`Replays::Refuse`]: 409 without calling the
    /// handler). Either way it is not charged again.
    ///
    /// Whatever this says, a retry while the first request still runs is
    /// answered 409 with `Retry-After`, and the same key on another request
    /// 422; neither is charged nor reaches the handler.
    pub fn replays(self, replays: Replays) -> Self {
        self.replanned(|plan| plan.replays = replays)
    }

    /// Whether a charge is given back when its request ends before the
    /// handler answered (default `true`): the client disconnected, or an
    /// outer timeout dropped the request's future. The refund runs in the
    /// background on the current Tokio runtime, exactly once; a request
    /// dropped while the store was still deciding is refunded too if the
    /// store allows it.
    ///
    /// Pass `false` for a route whose handler starts work that outlives its
    /// future (a task it spawns, a job it queues): that work was paid for,
    /// so the charge stands once the handler has been called.
    pub fn refund_unanswered(self, refund: bool) -> Self {
        self.replanned(|plan| plan.refund_unanswered = refund)
    }

    fn replanned(self, change: impl FnOnce(&mut Plan)) -> Self {
        let mut plan = Plan::clone(&self.plan);
        change(&mut plan);
        Self {
            plan: Arc::new(plan),
        }
    }
}

impl<S> Layer<S> for TicketLayer {
    type Service = TicketService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TicketService::new(inner, self.plan.clone())
    }
}
