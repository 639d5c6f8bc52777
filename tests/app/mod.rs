//! A small reference app, the way a user of the crate would build one: the
//! reference app's kinds, JWT identity, priced routes; plus a store wrapper
//! that counts what reaches the store.

#![allow(dead_code)] // Each test binary uses part of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Extension;
use axum::http::{Request, Response, StatusCode};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use tower::ServiceExt;
use tower_tickets::identity::{IdentityExtractor, JwtIdentity, JwtIssuer};
use tower_tickets::store::{
    AdjustOutcome, AdjustRequest, ChargeOutcome, ChargeRequest, KindBalance, MemoryStore, Receipt,
    RefundOutcome, StoreError, StoreErrorKind, StoreFuture, TicketStore,
};
use tower_tickets::{
    Balances, Charged, Cost, CostRejection, FakeClock, Replays, TicketKind, Tickets, Uid,
};

pub const SECRET: &[u8] = b"test secret, long enough for HS256";
pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// Counts every call that reaches the wrapped store, and the refunds apart;
/// holding `gate` for writing keeps charges waiting; the next
/// `refused_refunds` refunds answer that the breaker is open (not sent).
#[derive(Clone, Default)]
pub struct CountingStore {
    inner: MemoryStore,
    pub calls: Arc<AtomicUsize>,
    pub refunds: Arc<AtomicUsize>,
    pub gate: Arc<tokio::sync::RwLock<()>>,
    pub refused_refunds: Arc<AtomicUsize>,
}

impl CountingStore {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn refunds(&self) -> usize {
        self.refunds.load(Ordering::SeqCst)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

impl TicketStore for CountingStore {
    fn charge(&self, request: ChargeRequest) -> StoreFuture<ChargeOutcome> {
        self.count();
        let (inner, gate) = (self.inner.clone(), self.gate.clone());
        Box::pin(async move {
            let _open = gate.read().await;
            inner.charge(request).await
        })
    }

    fn refund(&self, receipt: Receipt, now: DateTime<Utc>) -> StoreFuture<RefundOutcome> {
        self.count();
        self.refunds.fetch_add(1, Ordering::SeqCst);
        let refused = self
            .refused_refunds
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if refused.is_ok() {
            return Box::pin(std::future::ready(Err(StoreError::new(
                StoreErrorKind::CircuitOpen,
                "the breaker is open",
            ))));
        }
        self.inner.refund(receipt, now)
    }

    fn finish(&self, receipt: &Receipt) -> StoreFuture<()> {
        self.count();
        self.inner.finish(receipt)
    }

    fn balances(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>> {
        self.count();
        self.inner.balances(uid, kinds, now)
    }

    fn adjust(&self, request: AdjustRequest) -> StoreFuture<AdjustOutcome> {
        self.count();
        self.inner.adjust(request)
    }

    fn ensure_user(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>> {
        self.count();
        self.inner.ensure_user(uid, kinds, now)
    }
}

pub struct App {
    pub tickets: Tickets,
    pub clock: FakeClock,
    pub store: CountingStore,
    pub router: Router,
    /// How many times a priced handler ran.
    pub handled: Arc<AtomicUsize>,
    pub issuer: JwtIssuer,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub json: serde_json::Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("missing header {name}"))
            .to_str()
            .unwrap()
    }
}

impl App {
    pub fn new() -> Self {
        Self::with_identity(JwtIdentity::hs256(SECRET))
    }

    /// The app with another identity extractor.
    pub fn with_identity(identity: impl IdentityExtractor) -> Self {
        let clock = FakeClock::at("2026-06-01T10:00:00Z".parse().unwrap());
        let store = CountingStore::default();
        let tickets = Tickets::builder()
            .kind(TicketKind::new("upload", 5))
            .kind(TicketKind::new("ai", 3).label("AI").label_in("fr", "IA"))
            .store(store.clone())
            .clock(clock.clone())
            .identity(identity)
            .build()
            .unwrap();
        let handled = Arc::new(AtomicUsize::new(0));
        let count = |status: StatusCode| {
            let handled = handled.clone();
            move |charged: Option<Extension<Charged>>| {
                let handled = handled.clone();
                async move {
                    handled.fetch_add(1, Ordering::SeqCst);
                    let remaining: Vec<u32> = charged
                        .map(|Extension(c)| c.balances.iter().map(|b| b.remaining).collect())
                        .unwrap_or_default();
                    (status, axum::Json(remaining))
                }
            }
        };
        let batch_price = |parts: &axum::http::request::Parts| {
            let count = parts
                .headers
                .get("x-count")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| CostRejection::new("send the number of images in X-Count"))?;
            Ok(Cost::of("upload", count))
        };
        let router = Router::new()
            .route(
                "/upload",
                post(count(StatusCode::CREATED))
                    .route_layer(tickets.layer(Cost::of("upload", 1)).unwrap()),
            )
            .route(
                "/upload-again",
                post(count(StatusCode::CREATED)).route_layer(
                    tickets
                        .layer(Cost::of("upload", 1))
                        .unwrap()
                        .replays(Replays::CallUncharged),
                ),
            )
            .route(
                "/ai",
                post(count(StatusCode::OK)).route_layer(tickets.layer(Cost::of("ai", 1)).unwrap()),
            )
            .route(
                "/both",
                post(count(StatusCode::OK))
                    .route_layer(tickets.layer(Cost::of("upload", 1).and("ai", 2)).unwrap()),
            )
            .route(
                "/broken",
                post(count(StatusCode::INTERNAL_SERVER_ERROR))
                    .route_layer(tickets.layer(Cost::of("upload", 1)).unwrap()),
            )
            .route(
                "/batch",
                post(count(StatusCode::CREATED)).route_layer(tickets.layer_fn(batch_price)),
            )
            .route(
                "/tickets",
                get(|balances: Balances| async move { axum::Json(balances) }),
            )
            .with_state(tickets.clone());
        Self {
            issuer: JwtIssuer::hs256(SECRET),
            tickets,
            clock,
            store,
            router,
            handled,
        }
    }

    pub fn handled(&self) -> usize {
        self.handled.load(Ordering::SeqCst)
    }

    pub fn token(&self, uid: &str) -> String {
        self.issuer
            .issue(&Uid::parse(uid).unwrap(), self.tickets.now(), DAY * 30)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> axum::http::request::Builder {
        let builder = Request::builder().method(method).uri(path);
        match token {
            Some(token) => builder.header("authorization", format!("Bearer {token}")),
            None => builder,
        }
    }

    /// A request with `key` as its `Idempotency-Key`.
    pub fn keyed(&self, method: &str, path: &str, token: &str, key: &str) -> Request<Body> {
        self.request(method, path, Some(token))
            .header("idempotency-key", key)
            .body(Body::empty())
            .unwrap()
    }

    /// Lets background work (a refund of a dropped request) run, until
    /// `uid` has `expected` tickets of `kind`.
    pub async fn settles_to(&self, uid: &str, kind: &str, expected: u64) {
        for _ in 0..100 {
            if self.remaining(uid, kind).await == expected {
                return;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(self.remaining(uid, kind).await, expected, "{kind} of {uid}");
    }

    /// Sends `request` in a task of its own, as a server's connection does
    /// (the layer answers a store that decides at once from `call()` only
    /// within a task; the tests that poll a request by hand cover the rest).
    pub async fn send(&self, request: Request<Body>) -> Reply {
        let sent = tokio::spawn(self.router.clone().oneshot(request));
        let response: Response<Body> = sent.await.unwrap().unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into())
            })
        };
        Reply {
            status,
            headers,
            json,
        }
    }

    pub async fn post(&self, path: &str, uid: &str) -> Reply {
        let token = self.token(uid);
        self.send(
            self.request("POST", path, Some(&token))
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    pub async fn balances(&self, uid: &str) -> serde_json::Value {
        let token = self.token(uid);
        let reply = self
            .send(
                self.request("GET", "/tickets", Some(&token))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
        reply.json
    }

    pub async fn remaining(&self, uid: &str, kind: &str) -> u64 {
        self.balances(uid).await[kind]["remaining"]
            .as_u64()
            .unwrap()
    }
}
