//! Redis over Firestore when things die: the emulator killed mid-run (sync
//! answers 503 and refunds; async keeps answering and catches up), and an
//! app instance killed with writes pending (another one finishes them).
#![cfg(feature = "firestore")]

#[allow(dead_code)] // This binary uses part of the support code.
mod support {
    pub mod eventually;
    pub mod firestore_emulator;
    pub mod redis_server;
    pub mod tcp_gate;
    pub mod ticket_app;
}

use std::time::Duration;

use axum::http::StatusCode;
use firestore::FirestoreDb;
use support::eventually::eventually;
use tower_tickets::store::{
    FirestoreSource, RedisStore, StoreErrorKind, UserSnapshot, WriteMode, WriteThrough,
};
use tower_tickets::{TicketKind, Tickets, Uid};

use support::firestore_emulator::{FIRESTORE_TIMEOUT, FirestoreEmulator, client_at};
use support::redis_server::shared_server;
use support::tcp_gate::TcpGate;
use support::ticket_app::{post_as, router, tickets};

fn kinds() -> [TicketKind; 2] {
    [TicketKind::new("upload", 5), TicketKind::new("ai", 3)]
}

/// A store on the shared Redis under the test's prefix, writing through
/// `db`; its recovery scan runs often, so that catching up shows quickly.
async fn store(db: FirestoreDb, mode: WriteMode, test: &str) -> WriteThrough {
    store_with_timeout(db, mode, test, FIRESTORE_TIMEOUT).await
}

async fn store_with_timeout(
    db: FirestoreDb,
    mode: WriteMode,
    test: &str,
    firestore_timeout: Duration,
) -> WriteThrough {
    let source = FirestoreSource::new(db, kinds()).timeout(firestore_timeout);
    let redis = RedisStore::standalone(shared_server().url())
        .key_prefix(format!("{test}:"))
        .timeout(Duration::from_secs(2));
    WriteThrough::builder(redis, source)
        .mode(mode)
        .write_interval(Duration::from_millis(5))
        .recovery_interval(Duration::from_millis(50))
        .connect()
        .await
        .expect("connect to the test servers")
}

/// The user's upload tickets in Redis.
async fn redis_uploads(tickets: &Tickets, uid: &Uid) -> u32 {
    let balances = tickets.balances(uid).await.expect("Redis answers");
    balances.get("upload").unwrap().remaining
}

/// The user's upload tickets in Firestore, read through `source`.
async fn firestore_uploads(source: &FirestoreSource, uid: &Uid) -> Option<u32> {
    let stored: Option<UserSnapshot> = source.load(uid, chrono::Utc::now()).await.ok()?;
    stored.map(|s| s.balances[0].remaining)
}

async fn post(router: &axum::Router, path: &str, uid: &Uid) -> StatusCode {
    post_as(router, path, uid.as_str().as_bytes()).await.status
}

#[tokio::test]
async fn sync_mode_answers_503_and_refunds_while_firestore_is_down() {
    let mut emulator = FirestoreEmulator::start();
    let db = emulator.client("down-sync").await;
    let probe = FirestoreSource::new(db.clone(), kinds()).timeout(FIRESTORE_TIMEOUT);
    let tickets = tickets(store(db, WriteMode::Sync, "down-sync").await);
    let router = router(&tickets);
    let frank = Uid::parse("frank").unwrap();
    for _ in 0..2 {
        assert_eq!(post(&router, "/upload", &frank).await, StatusCode::CREATED);
    }
    assert_eq!(firestore_uploads(&probe, &frank).await, Some(3));

    emulator.kill();
    for _ in 0..2 {
        assert_eq!(
            post(&router, "/upload", &frank).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(
        redis_uploads(&tickets, &frank).await,
        3,
        "refunded in Redis"
    );

    // The emulator comes back empty: every document is gone, and a deleted
    // document is a user seen for the first time (DESIGN 4). The state
    // Redis still holds is not written over that: the source refuses it,
    // Redis drops it, and Frank starts over (a request that met the old
    // state in between is answered 503 and charges nothing).
    emulator.restart();
    eventually("Frank is served again", || async {
        post(&router, "/upload", &frank).await == StatusCode::CREATED
    })
    .await;
    assert_eq!(redis_uploads(&tickets, &frank).await, 4);
    assert_eq!(firestore_uploads(&probe, &frank).await, Some(4));
}

#[tokio::test]
async fn sync_mode_answers_503_when_firestore_hangs_and_catches_up_after() {
    let emulator = FirestoreEmulator::start();
    let db = emulator.client("hung-sync").await;
    let probe = FirestoreSource::new(db.clone(), kinds()).timeout(FIRESTORE_TIMEOUT);
    let judy = Uid::parse("judy").unwrap();
    // A patient instance warms the emulator up (its first requests are slow)
    // and charges once.
    let patient = router(&tickets(
        store(db.clone(), WriteMode::Sync, "hung-sync").await,
    ));
    assert_eq!(post(&patient, "/upload", &judy).await, StatusCode::CREATED);
    // The timeout is what this test is about: a hung Firestore costs a
    // request one timeout, then 503, never a hang.
    let probe_db = db.clone();
    let store = store_with_timeout(db, WriteMode::Sync, "hung-sync", Duration::from_secs(2)).await;
    let tickets = tickets(store);
    let router = router(&tickets);

    emulator.pause();
    assert_eq!(
        post(&router, "/upload", &judy).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(redis_uploads(&tickets, &judy).await, 4, "refunded in Redis");
    // Repeated timeouts open the breaker: then calls fail at once instead of
    // each waiting out its timeout.
    let breaking = FirestoreSource::new(probe_db, kinds())
        .timeout(Duration::from_millis(200))
        .breaker(2, Duration::from_secs(3600));
    let now = chrono::Utc::now();
    for _ in 0..2 {
        let error = breaking.load(&judy, now).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Timeout, "{error}");
    }
    let error = breaking.load(&judy, now).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::CircuitOpen, "{error}");
    assert!(
        error.to_string().contains("Firestore failed repeatedly"),
        "{error}"
    );
    emulator.resume();

    eventually("Firestore agrees with Redis", || async {
        firestore_uploads(&probe, &judy).await == Some(4)
    })
    .await;
    assert_eq!(post(&router, "/upload", &judy).await, StatusCode::CREATED);
    assert_eq!(firestore_uploads(&probe, &judy).await, Some(3));
}

#[tokio::test]
async fn async_mode_keeps_answering_and_firestore_converges_after_an_outage() {
    let emulator = FirestoreEmulator::start();
    let db = emulator.client("down-async").await;
    let probe = FirestoreSource::new(db.clone(), kinds()).timeout(FIRESTORE_TIMEOUT);
    let tickets = tickets(store(db, WriteMode::Async, "down-async").await);
    let router = router(&tickets);
    let grace = Uid::parse("grace").unwrap();
    assert_eq!(post(&router, "/upload", &grace).await, StatusCode::CREATED);
    eventually("the first charge in Firestore", || async {
        firestore_uploads(&probe, &grace).await == Some(4)
    })
    .await;

    // Firestore stops answering (its data kept, as a real outage does).
    emulator.pause();
    for _ in 0..3 {
        assert_eq!(post(&router, "/upload", &grace).await, StatusCode::CREATED);
    }
    assert_eq!(redis_uploads(&tickets, &grace).await, 1);

    emulator.resume();
    eventually("Firestore caught up: nothing lost", || async {
        firestore_uploads(&probe, &grace).await == Some(1)
    })
    .await;
}

/// An instance dies with writes pending (its runtime is dropped, as a
/// killed process's tasks vanish); a new instance finishes them.
#[test]
fn a_new_instance_writes_what_a_dead_one_left_pending() {
    let test_runtime = tokio::runtime::Runtime::new().unwrap();
    let emulator = FirestoreEmulator::shared();
    let heidi = Uid::parse("heidi").unwrap();
    // The doomed instance reaches Firestore through a gate that never
    // opens again once its charges start: their writes stay pending.
    let gate = test_runtime.block_on(TcpGate::start(&emulator.host()));
    let doomed_runtime = tokio::runtime::Runtime::new().unwrap();
    doomed_runtime.block_on(async {
        let db = client_at(gate.host(), "dead-instance").await;
        let tickets = tickets(store(db, WriteMode::Async, "dead-instance").await);
        let router = router(&tickets);
        tickets.ensure_user(&heidi).await.unwrap();
        gate.hold();
        for _ in 0..3 {
            assert_eq!(post(&router, "/upload", &heidi).await, StatusCode::CREATED);
        }
    });
    doomed_runtime.shutdown_background();

    test_runtime.block_on(async {
        let probe = FirestoreSource::new(emulator.client("dead-instance").await, kinds())
            .timeout(FIRESTORE_TIMEOUT);
        assert_eq!(
            firestore_uploads(&probe, &heidi).await,
            Some(5),
            "the dead instance's writes never landed"
        );
        let db = emulator.client("dead-instance").await;
        let _heir = store(db, WriteMode::Async, "dead-instance").await;
        eventually("the new instance wrote the pending charges", || async {
            firestore_uploads(&probe, &heidi).await == Some(2)
        })
        .await;
    });
}
