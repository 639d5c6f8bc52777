//! The Redis store when Redis fails: killed mid-load, hung, or down for a
//! while. Requests turn into 503 problem+json (or pass, for fail-open
//! kinds), the breaker answers at once, and service resumes by itself.

#![cfg(feature = "redis")]

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::mpsc;
use tower_tickets::store::{
    ChargeOutcome, ChargeRequest, RedisSetupError, RedisStore, StoreError, StoreErrorKind,
    TicketStore,
};
use tower_tickets::{Cost, TicketKind, Tickets, Uid};

use support::eventually::eventually;
use support::redis_server::RedisServer;
use support::ticket_app::{self, Reply};

/// How long a test waits for service to come back before failing.
const RECOVERY_LIMIT: Duration = Duration::from_secs(20);

/// Concurrent clients of the load.
const CLIENTS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_mid_load_answers_503_then_service_resumes() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(server.url()).await.unwrap();
    let router = ticket_app::router(&ticket_app::tickets(store));

    // Each client uploads as a new user each time, so every answer is 201
    // while Redis is up.
    let (replies, mut received) = mpsc::channel::<(usize, Reply)>(1024);
    let load: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (router, replies) = (router.clone(), replies.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    let uid = format!("load-{client}-{n}");
                    let reply = ticket_app::post_as(&router, "/upload", uid.as_bytes()).await;
                    if replies.send((client, reply)).await.is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    drop(replies);

    let mut created = 0;
    while created < 50 {
        let (_, reply) = next(&mut received, "before the kill").await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        created += 1;
    }

    server.kill();
    let mut refused_clients = [false; CLIENTS];
    let mut unavailable = 0;
    while unavailable < 100 {
        let (client, reply) = next(&mut received, "Redis down").await;
        match reply.status {
            // A request that Redis answered before it died; each client
            // sends one request at a time, so none comes after its 503.
            StatusCode::CREATED => assert!(!refused_clients[client], "201 after a 503"),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(
                    reply.content_type.as_deref(),
                    Some("application/problem+json")
                );
                assert!(reply.retry_after.is_some(), "503 says when to retry");
                refused_clients[client] = true;
                unavailable += 1;
            }
            other => panic!("unexpected {other} while Redis is down: {reply:?}"),
        }
    }

    server.restart();
    loop {
        let (_, reply) = next(&mut received, "after the restart").await;
        match reply.status {
            StatusCode::CREATED => break,
            StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!("unexpected {other} after the restart: {reply:?}"),
        }
    }
    drop(received);
    for client in load {
        client.await.unwrap();
    }
}

/// The next answer of the load, or a failure naming the phase that stalled.
async fn next(received: &mut mpsc::Receiver<(usize, Reply)>, phase: &str) -> (usize, Reply) {
    tokio::time::timeout(RECOVERY_LIMIT, received.recv())
        .await
        .unwrap_or_else(|_| panic!("no answer within {RECOVERY_LIMIT:?} ({phase})"))
        .expect("the load runs")
}

fn upload_tickets() -> Tickets {
    Tickets::builder()
        .kind(TicketKind::new("upload", 5))
        .build()
        .unwrap()
}

async fn charge(
    store: &RedisStore,
    tickets: &Tickets,
    uid: &str,
) -> Result<ChargeOutcome, StoreError> {
    store
        .charge(ChargeRequest::new(
            Uid::parse(uid).unwrap(),
            tickets.check_cost(&Cost::of("upload", 1)).unwrap(),
            tickets.now(),
        ))
        .await
}

/// Charges until one succeeds (Redis is back and the breaker closed).
async fn charge_until_served(store: &RedisStore, tickets: &Tickets) {
    tokio::time::timeout(RECOVERY_LIMIT, async {
        while charge(store, tickets, "recovering").await.is_err() {}
    })
    .await
    .expect("service resumes by itself");
}

#[tokio::test]
async fn the_breaker_answers_at_once_after_repeated_failures() {
    let mut server = RedisServer::start();
    let tickets = upload_tickets();
    let store = RedisStore::standalone(server.url())
        .breaker(3, Duration::from_secs(3600))
        .connect()
        .await
        .unwrap();
    assert!(charge(&store, &tickets, "u").await.is_ok());

    server.kill();
    for _ in 0..3 {
        let error = charge(&store, &tickets, "u").await.unwrap_err();
        assert!(
            matches!(
                error.kind(),
                StoreErrorKind::Unavailable | StoreErrorKind::Timeout
            ),
            "{error}"
        );
    }
    let error = charge(&store, &tickets, "u").await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::CircuitOpen, "{error}");
    // Open for an hour: even with Redis back, calls are not tried.
    server.restart();
    let error = charge(&store, &tickets, "u").await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::CircuitOpen, "{error}");
}

#[tokio::test]
async fn the_breaker_probes_and_closes_once_redis_is_back() {
    let mut server = RedisServer::start();
    let tickets = upload_tickets();
    let store = RedisStore::standalone(server.url())
        .breaker(1, Duration::ZERO)
        .connect()
        .await
        .unwrap();
    server.kill();
    assert!(charge(&store, &tickets, "u").await.is_err());
    server.restart();
    charge_until_served(&store, &tickets).await;
    assert!(charge(&store, &tickets, "u").await.is_ok(), "closed again");
}

#[tokio::test]
async fn a_hung_redis_times_out_instead_of_hanging_requests() {
    let server = RedisServer::start();
    let tickets = upload_tickets();
    let store = RedisStore::connect(server.url()).await.unwrap();
    assert!(charge(&store, &tickets, "u").await.is_ok());
    server.signal("STOP");
    let error = charge(&store, &tickets, "u").await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Timeout, "{error}");
    server.signal("CONT");
    charge_until_served(&store, &tickets).await;
}

#[tokio::test]
async fn connecting_to_a_hung_redis_fails_instead_of_hanging() {
    let server = RedisServer::start();
    server.signal("STOP");
    let connect = RedisStore::standalone(server.url())
        .timeout(Duration::from_millis(100))
        .connect();
    // A guard against a hang, far above the timeout: not a timing claim.
    let outcome = tokio::time::timeout(RECOVERY_LIMIT, connect).await;
    server.signal("CONT");
    let error = outcome.expect("connect gave up").unwrap_err();
    assert!(matches!(error, RedisSetupError::Unreachable(_)), "{error}");
}

#[tokio::test]
async fn fail_open_kinds_pass_while_fail_closed_kinds_answer_503() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(server.url()).await.unwrap();
    let router = ticket_app::router(&ticket_app::tickets(store));
    server.kill();
    let upload = ticket_app::post_as(&router, "/upload", b"someone").await;
    assert_eq!(upload.status, StatusCode::SERVICE_UNAVAILABLE);
    let ai = ticket_app::post_as(&router, "/ai", b"someone").await;
    assert_eq!(ai.status, StatusCode::OK, "the ai kind fails open");
}

/// Redis paused past the store's timeout still runs the charge once the pause
/// ends: the request got 503, so the store gives the ticket back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_that_times_out_but_runs_later_is_given_back() {
    let server = RedisServer::start();
    let tickets = upload_tickets();
    let store = RedisStore::standalone(server.url())
        .timeout(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let uid = Uid::parse("late").unwrap();
    let remaining = || async {
        let kinds = tickets.kinds();
        let read = store.balances(&uid, kinds, tickets.now()).await;
        read.ok().map(|balances| balances[0].remaining)
    };
    assert!(matches!(
        charge(&store, &tickets, "late").await.unwrap(),
        ChargeOutcome::Allowed { .. }
    ));
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(400)
        .arg("ALL")
        .exec(&mut server.connection())
        .unwrap();
    let error = charge(&store, &tickets, "late").await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Timeout, "{error}");
    // Reads queue behind the charge: once Redis answers one, the charge ran.
    eventually("Redis answers again", || async {
        remaining().await.is_some()
    })
    .await;
    eventually("the late charge is given back", || async {
        remaining().await == Some(4)
    })
    .await;
}

/// DESIGN §5: a Redis that evicts any key (`allkeys-*`) would forget users
/// whose balances only it holds: the store refuses to start on it; another
/// evicting policy starts, with a warning.
#[tokio::test]
async fn an_evicting_redis_holding_the_only_truth_refuses_to_start() {
    let server = RedisServer::start();
    let set_policy = |policy: &str| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg(policy)
            .query(&mut server.connection())
            .unwrap();
    };
    set_policy("allkeys-lru");
    let refused = RedisStore::connect(server.url()).await.unwrap_err();
    assert!(
        matches!(&refused, RedisSetupError::EvictingPolicy { policy } if policy == "allkeys-lru"),
        "{refused}"
    );
    assert!(refused.to_string().contains("noeviction"), "{refused}");
    set_policy("volatile-lru");
    RedisStore::connect(server.url())
        .await
        .expect("volatile-* spares keys without expiry: a warning only");
}
