//! The routers that `benches/peers.rs` (over HTTP) and
//! `benches/peer_layers.rs` (in process) compare: the same trivial handler
//! on `GET /u/{id}`, the user id from the path, bare, behind
//! tower_governor, or behind the ticket layer on the embedded store.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use chrono::{DateTime, Utc};
use http::Request;
use http::request::Parts;
use tower_governor::GovernorLayer;
use tower_governor::errors::GovernorError;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;
use tower_tickets::identity::{IdentityError, IdentityExtractor};
use tower_tickets::store::MemoryStore;
use tower_tickets::{Cost, TicketKind, Tickets, Uid};

use super::Error;

/// The kind every priced path charges one of. Its capacity is out of reach
/// of any run, so that the allowed paths stay allowed.
pub const KIND: &str = "req";
pub const CAPACITY: u32 = 1_000_000_000;

/// The uid of user `n`, as the load names them in paths.
pub fn user(n: usize) -> String {
    format!("user-{n:06}")
}

/// The uids of users `0..users`.
pub fn uids(users: usize) -> Arc<[Uid]> {
    (0..users)
        .map(|n| Uid::parse(&user(n)).expect("the benchmarks' uids are valid"))
        .collect()
}

/// The trivial handler on `GET /u/{id}`.
pub fn handler() -> Router {
    Router::new().route("/u/{id}", get(|| async { "ok" }))
}

/// The uid is the path's last segment; `/u/` paths only.
pub fn path_uid(path: &str) -> Option<&str> {
    path.strip_prefix("/u/")
}

/// The layer's identity: the uid from the path (a benchmark's stand-in for
/// an authenticated id).
pub struct PathIdentity;

impl IdentityExtractor for PathIdentity {
    fn identify(&self, request: &Parts, _now: DateTime<Utc>) -> Result<Uid, IdentityError> {
        let id = path_uid(request.uri.path()).ok_or(IdentityError::Missing {
            expected: "a /u/{id} path",
        })?;
        Ok(Uid::parse(id)?)
    }
}

/// tower_governor's key: the same string uid from the path.
#[derive(Clone)]
struct PathKey;

impl KeyExtractor for PathKey {
    type Key = String;

    fn extract<T>(&self, request: &Request<T>) -> Result<String, GovernorError> {
        path_uid(request.uri().path())
            .map(str::to_owned)
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

/// The handler behind tower_governor (GCRA in memory, its headers on, a
/// quota no user exhausts), every one of `users` seen once.
pub fn governor(users: usize) -> Result<Router, Error> {
    let governor = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(1_000_000)
        .key_extractor(PathKey)
        .use_headers()
        .finish()
        .ok_or("tower_governor's configuration")?;
    for n in 0..users {
        let _ = governor.limiter().check_key(&user(n));
    }
    Ok(handler().route_layer(GovernorLayer::new(governor)))
}

/// The registry of the priced paths, on `store` (1 ticket of [`KIND`] a
/// request, [`CAPACITY`] of them), identifying users by [`PathIdentity`].
pub fn tickets(store: impl tower_tickets::store::TicketStore) -> Result<Tickets, Error> {
    Ok(Tickets::builder()
        .kind(TicketKind::new(KIND, CAPACITY))
        .identity(PathIdentity)
        .store(store)
        .build()?)
}

/// The handler behind the ticket layer of `tickets`.
pub fn priced(tickets: &Tickets) -> Result<Router, Error> {
    Ok(handler().route_layer(tickets.layer(Cost::of(KIND, 1))?))
}

/// The handler behind the ticket layer on the embedded store, every one of
/// `uids` created.
pub async fn memory(uids: &Arc<[Uid]>) -> Result<Router, Error> {
    let tickets = tickets(MemoryStore::new())?;
    create_users(&tickets, uids).await?;
    priced(&tickets)
}

/// Creates every user in `tickets`' store, 64 at a time. A call that fails
/// (a timeout while the shared machine stalls) is tried again, up to 5
/// times.
pub async fn create_users(tickets: &Tickets, uids: &Arc<[Uid]>) -> Result<(), Error> {
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..64 {
        let (tickets, uids) = (tickets.clone(), uids.clone());
        tasks.spawn(async move {
            for uid in uids.iter().skip(lane).step_by(64) {
                let mut tries = 1;
                while let Err(e) = tickets.ensure_user(uid).await {
                    if tries == 5 {
                        return Err(e);
                    }
                    tries += 1;
                }
            }
            Ok::<_, tower_tickets::store::StoreError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}
