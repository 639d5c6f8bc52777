//! What the layer does when its store cannot answer: 503 problem+json for
//! kinds that fail closed (the default), an uncharged pass for kinds that
//! fail open. (Real outages of real backends are tested with each backend.)
#![cfg(all(feature = "axum", feature = "jwt"))]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::Extension;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use chrono::{DateTime, Utc};
use tower::ServiceExt;
use tower_tickets::store::{
    AdjustOutcome, AdjustRequest, ChargeOutcome, ChargeRequest, KindBalance, Receipt,
    RefundOutcome, StoreError, StoreErrorKind, StoreFuture, TicketStore,
};
use tower_tickets::{Charged, Cost, FailMode, TicketKind, Tickets, Uid};

/// A store whose backend is down: every operation fails at once.
struct Down;

fn down<T: Send + 'static>() -> StoreFuture<T> {
    Box::pin(std::future::ready(Err(StoreError::new(
        StoreErrorKind::Unavailable,
        "connection refused",
    ))))
}

impl TicketStore for Down {
    fn charge(&self, _: ChargeRequest) -> StoreFuture<ChargeOutcome> {
        down()
    }
    fn refund(&self, _: Receipt, _: DateTime<Utc>) -> StoreFuture<RefundOutcome> {
        down()
    }
    fn finish(&self, _: &Receipt) -> StoreFuture<()> {
        down()
    }
    fn balances(
        &self,
        _: &Uid,
        _: &[Arc<TicketKind>],
        _: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>> {
        down()
    }
    fn adjust(&self, _: AdjustRequest) -> StoreFuture<AdjustOutcome> {
        down()
    }
    fn ensure_user(
        &self,
        _: &Uid,
        _: &[Arc<TicketKind>],
        _: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>> {
        down()
    }
}

fn app() -> Router {
    let tickets = Tickets::builder()
        .kind(TicketKind::new("upload", 5))
        .kind(TicketKind::new("thumbnail", 50).on_store_error(FailMode::Open))
        .store(Down)
        .build()
        .unwrap();
    let handler = |Extension(charged): Extension<Charged>| async move {
        format!("charged={}", charged.charged)
    };
    Router::new()
        .route(
            "/upload",
            post(handler).route_layer(tickets.layer(Cost::of("upload", 1)).unwrap()),
        )
        .route(
            "/thumbnail",
            post(handler).route_layer(tickets.layer(Cost::of("thumbnail", 1)).unwrap()),
        )
        .route(
            "/both",
            post(handler).route_layer(
                tickets
                    .layer(Cost::of("thumbnail", 1).and("upload", 1))
                    .unwrap(),
            ),
        )
}

async fn post_as_alice(path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut request = Request::post(path).body(Body::empty()).unwrap();
    request
        .extensions_mut()
        .insert(Uid::parse("alice").unwrap());
    let response = app().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn a_fail_closed_kind_answers_503_problem_json() {
    let (status, headers, body) = post_as_alice("/upload").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(headers["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], 503);
    assert_eq!(body["title"], "Temporarily unavailable");
}

#[tokio::test]
async fn a_fail_open_kind_lets_the_request_through_uncharged() {
    let (status, headers, body) = post_as_alice("/thumbnail").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "charged=false");
    assert!(headers.get("ratelimit").is_none(), "no balance to report");
}

#[tokio::test]
async fn a_cost_fails_open_only_if_every_kind_does() {
    let (status, _, _) = post_as_alice("/both").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}
