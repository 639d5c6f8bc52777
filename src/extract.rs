//! axum extractors: who is asking, and what they have left.
//!
//! Both identify the user with the registry's identity extractor, so the
//! router state must give a [`Tickets`] through `FromRef` (a `Tickets` state,
//! or a struct deriving `FromRef` with a `Tickets` field). Failures answer
//! problem+json in the client's language: 401 without a valid identity, 503
//! when the store cannot answer.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::response::Response;
use http::request::Parts;

use crate::balances::Balances;
use crate::rejection::Rejection;
use crate::tickets::Tickets;
use crate::uid::Uid;

/// The requesting user, verified; a handler on an unpriced route takes
/// `uid: Uid` to know who calls.
impl<S> FromRequestParts<S> for Uid
where
    Tickets: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let tickets = Tickets::from_ref(state);
        tickets
            .identify(parts)
            .map_err(|e| tickets.respond(Rejection::Unauthenticated(e), &parts.headers))
    }
}

/// The requesting user's balances of every kind, read without spending.
impl<S> FromRequestParts<S> for Balances
where
    Tickets: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let uid = Uid::from_request_parts(parts, state).await?;
        let tickets = Tickets::from_ref(state);
        tickets
            .balances(&uid)
            .await
            .map_err(|e| tickets.respond(Rejection::StoreUnavailable(Arc::new(e)), &parts.headers))
    }
}
