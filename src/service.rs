//! The tower [`Service`]: identify, price, then start the charge.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use tower_service::Service;

use crate::config_error::ConfigError;
use crate::cost::CheckedCost;
use crate::future::ResponseFuture;
use crate::idempotency::{IdempotencyKey, RequestFingerprint};
use crate::layer::{Plan, Pricing};
use crate::rejection::Rejection;
use crate::store::ChargeRequest;

/// Wraps a service so that every request pays its cost first. Made by
/// [`TicketLayer`](crate::TicketLayer).
#[derive(Clone)]
pub struct TicketService<S> {
    inner: S,
    plan: Arc<Plan>,
}

impl<S> TicketService<S> {
    pub(crate) fn new(inner: S, plan: Arc<Plan>) -> Self {
        Self { inner, plan }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for TicketService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for TicketService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let tickets = &self.plan.tickets;
        let now = tickets.now();
        let shared = &tickets.shared;
        let (parts, body) = request.into_parts();
        let reject = |rejection: Rejection| {
            ResponseFuture::rejected(tickets.respond(rejection, &parts.headers))
        };

        // 1. Identify: no store is touched for an unknown or hostile user.
        let uid = match shared.identity.identify(&parts, now) {
            Ok(uid) => uid,
            Err(e) => return reject(Rejection::Unauthenticated(e)),
        };
        // 2. Price.
        let cost = match &self.plan.pricing {
            Pricing::Fixed { cost, .. } => cost.clone(),
            Pricing::Dynamic(price) => {
                let checked = price
                    .price(&parts)
                    .map_err(|e| e.detail().to_string())
                    .and_then(|cost| {
                        CheckedCost::check(&cost, &shared.kinds).map_err(|e| unpayable(&e))
                    });
                match checked {
                    Ok(cost) => cost,
                    Err(reason) => return reject(Rejection::BadRequest(reason)),
                }
            }
        };
        let idempotency_key = match IdempotencyKey::from_headers(&parts.headers) {
            Ok(key) => key,
            Err(e) => return reject(Rejection::BadRequest(e.to_string())),
        };
        // 3. Charge; the future calls the inner service once allowed.
        let mut charge = ChargeRequest::new(uid.clone(), cost.clone(), now);
        if idempotency_key.is_some() {
            charge = charge
                .with_fingerprint(RequestFingerprint::new(&parts.method, route(&parts), &cost))
                .with_idempotency_key(idempotency_key);
        }
        let mut charge = shared.store.charge(charge);
        // A store that answers at once (the embedded one) is heard now, and
        // the service driven to readiness called now: no clone of it. Only
        // within a Tokio task (a server's connection): a store's future
        // may need the runtime from its first poll.
        let request = Request::from_parts(parts, body);
        if tokio::task::try_id().is_some()
            && let Poll::Ready(outcome) = charge
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
        {
            let plan = self.plan.clone();
            return ResponseFuture::decided(
                outcome,
                request,
                &mut self.inner,
                plan,
                uid,
                cost,
                now,
            );
        }
        // The service that was driven to readiness is the one to call: take
        // it, and leave a fresh clone in its place for the next request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::charging(charge, request, inner, self.plan.clone(), uid, cost, now)
    }
}

/// The route a request matched (axum's `MatchedPath`, e.g.
/// `/api/items/{id}`), or else its path.
fn route(parts: &http::request::Parts) -> &str {
    #[cfg(feature = "axum")]
    if let Some(matched) = parts.extensions.get::<axum::extract::MatchedPath>() {
        return matched.as_str();
    }
    parts.uri.path()
}

/// Puts a computed cost that cannot be paid into words for the client.
fn unpayable(error: &ConfigError) -> String {
    match error {
        ConfigError::CostAboveCapacity {
            kind,
            cost,
            capacity,
        } => format!(
            "this request costs {cost} {kind} tickets, more than the {capacity} a refill gives"
        ),
        other => {
            tracing::error!(error = %other, "a cost function returned an invalid cost");
            "the request's cost cannot be computed".into()
        }
    }
}
