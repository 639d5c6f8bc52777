//! Redis over Firestore, seen from Firestore: the document after requests,
//! a flushed Redis, a burst of one user, a late write.
#![cfg(feature = "firestore")]

#[allow(dead_code)] // This binary uses part of the support code.
mod support {
    pub mod eventually;
    pub mod firestore_emulator;
    pub mod redis_server;
    pub mod tcp_gate;
    pub mod ticket_app;
}

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, StatusCode};
use chrono::{DateTime, Utc};
use firestore::FirestoreDb;
use firestore::gcloud_sdk::google::firestore::v1::Document;
use firestore::gcloud_sdk::google::firestore::v1::value::ValueType;
use support::eventually::eventually;
use tower_tickets::identity::HeaderIdentity;
use tower_tickets::store::{
    AdjustRequest, Adjustment, ChargeOutcome, ChargeRequest, FirestoreSource, KindBalance,
    RedisStore, TicketStore, TimeSource, WriteMode, WriteThrough,
};
use tower_tickets::{Clock, Cost, FakeClock, TicketKind, Tickets, Uid};

use support::firestore_emulator::{
    FIRESTORE_TIMEOUT, FirestoreEmulator, client_at, edit_through_rest,
};
use support::redis_server::{RedisServer, shared_server};
use support::tcp_gate::TcpGate;
use support::ticket_app::{USER_HEADER, post_as, router};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn kinds() -> [TicketKind; 2] {
    [TicketKind::new("upload", 5), TicketKind::new("ai", 3)]
}

fn start() -> DateTime<Utc> {
    "2026-03-27T08:00:00Z".parse().unwrap()
}

/// One app instance: a write-through store in the test's own Firestore
/// project (on the shared emulator) and Redis key prefix, its registry on a
/// fake clock, and the priced router of `ticket_app`.
struct App {
    store: WriteThrough,
    tickets: Tickets,
    router: Router,
    db: FirestoreDb,
}

impl App {
    /// An instance on the shared Redis server.
    async fn start(
        test: &str,
        mode: WriteMode,
        write_interval: Duration,
        clock: &FakeClock,
    ) -> Self {
        let db = FirestoreEmulator::shared().client(test).await;
        Self::on(
            &shared_server().url(),
            db,
            test,
            mode,
            write_interval,
            clock,
        )
        .await
    }

    /// An instance on the Redis at `redis_url`, whose Firestore client is
    /// `db`.
    async fn on(
        redis_url: &str,
        db: FirestoreDb,
        test: &str,
        mode: WriteMode,
        write_interval: Duration,
        clock: &FakeClock,
    ) -> Self {
        let redis = RedisStore::standalone(redis_url)
            .key_prefix(format!("{test}:"))
            .time_source(TimeSource::Caller)
            .timeout(Duration::from_secs(2));
        let store = WriteThrough::builder(
            redis,
            FirestoreSource::new(db.clone(), kinds()).timeout(FIRESTORE_TIMEOUT),
        )
        .mode(mode)
        .write_interval(write_interval)
        .connect()
        .await
        .expect("connect to the test servers");
        let [upload, ai] = kinds();
        let tickets = Tickets::builder()
            .kind(upload)
            .kind(ai)
            .store(store.clone())
            .clock(clock.clone())
            .identity(HeaderIdentity::new(HeaderName::from_static(USER_HEADER)))
            .build()
            .unwrap();
        let router = router(&tickets);
        Self {
            store,
            tickets,
            router,
            db,
        }
    }

    async fn post(&self, path: &str, uid: &Uid) -> StatusCode {
        post_as(&self.router, path, uid.as_str().as_bytes())
            .await
            .status
    }

    /// The user's balances as Redis decides them.
    async fn balances(&self, uid: &Uid) -> Vec<KindBalance> {
        self.store
            .balances(uid, self.tickets.kinds(), self.tickets.now())
            .await
            .expect("the store answers")
    }

    async fn grant(&self, uid: &Uid, kind: &str, amount: u32) {
        let kind = self.tickets.kind(kind).unwrap().clone();
        self.store
            .adjust(AdjustRequest::new(
                uid.clone(),
                [(kind, Adjustment::Grant(amount))],
                self.tickets.now(),
            ))
            .await
            .expect("the store answers");
    }

    /// The user's document, read back through the emulator.
    async fn document(&self, uid: &Uid) -> Option<Stored> {
        let document = self
            .db
            .fluent()
            .select()
            .by_id_in("users")
            .one(uid.as_str())
            .await
            .expect("the emulator answers")?;
        Some(Stored::of(&document))
    }
}

/// The ticket fields of a document, by their Firestore types.
#[derive(Debug, PartialEq, Eq)]
struct Stored {
    upload: (i64, DateTime<Utc>),
    ai: (i64, DateTime<Utc>),
    version: i64,
}

impl Stored {
    fn of(document: &Document) -> Self {
        let field = |name: &str| document.fields[name].value_type.clone().expect(name);
        let count = |name: &str| match field(name) {
            ValueType::IntegerValue(n) => n,
            other => panic!("{name} is not an integer: {other:?}"),
        };
        let instant = |name: &str| match field(name) {
            ValueType::TimestampValue(t) => {
                DateTime::from_timestamp(t.seconds, t.nanos as u32).unwrap()
            }
            other => panic!("{name} is not a timestamp: {other:?}"),
        };
        Self {
            upload: (count("ticketCount"), instant("lastTicketRefill")),
            ai: (count("aiTicketCount"), instant("lastAiTicketRefill")),
            version: count("ticketsVersion"),
        }
    }

    fn counts(&self) -> (i64, i64) {
        (self.upload.0, self.ai.0)
    }
}

fn uid(s: &str) -> Uid {
    Uid::parse(s).unwrap()
}

async fn firestore_holds_exact_counts_and_timestamps(mode: WriteMode, test: &str) {
    let clock = FakeClock::at(start());
    let app = App::start(test, mode, Duration::from_millis(5), &clock).await;
    let alice = uid("alice");
    for _ in 0..3 {
        assert_eq!(app.post("/upload", &alice).await, StatusCode::CREATED);
    }
    assert_eq!(app.post("/ai", &alice).await, StatusCode::OK);
    let expected = |upload, upload_at, ai| {
        move |stored: &Stored| stored.upload == (upload, upload_at) && stored.ai == (ai, start())
    };
    let first = expected(2, start(), 2);
    eventually("3 uploads and 1 AI request in Firestore", || async {
        app.document(&alice).await.is_some_and(|s| first(&s))
    })
    .await;

    // A day later the upload kind refills at the decision instant: 5 - 1.
    clock.advance(DAY);
    assert_eq!(app.post("/upload", &alice).await, StatusCode::CREATED);
    let refilled = expected(4, start() + DAY, 2);
    eventually("the refill and the charge in Firestore", || async {
        app.document(&alice).await.is_some_and(|s| refilled(&s))
    })
    .await;
    if mode == WriteMode::Sync {
        // Sync: Firestore held it before the response.
        let stored = app.document(&alice).await.unwrap();
        assert!(refilled(&stored), "{stored:?}");
    }
}

#[tokio::test]
async fn sync_firestore_holds_exact_counts_and_timestamps() {
    firestore_holds_exact_counts_and_timestamps(WriteMode::Sync, "exact-sync").await;
}

#[tokio::test]
async fn async_firestore_holds_exact_counts_and_timestamps() {
    firestore_holds_exact_counts_and_timestamps(WriteMode::Async, "exact-async").await;
}

/// An instance on a Redis server of its own, which the test flushes.
async fn flushable(test: &str, mode: WriteMode, clock: &FakeClock) -> (App, RedisServer) {
    let redis = RedisServer::start();
    let db = FirestoreEmulator::shared().client(test).await;
    let app = App::on(
        &redis.url(),
        db,
        test,
        mode,
        Duration::from_millis(5),
        clock,
    )
    .await;
    (app, redis)
}

fn flushall(redis: &RedisServer) {
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut redis.connection())
        .unwrap();
}

async fn flushall_loses_nothing(mode: WriteMode, test: &str) {
    let clock = FakeClock::at(start());
    let (app, redis) = flushable(test, mode, &clock).await;
    let bob = uid("bob");
    for _ in 0..2 {
        assert_eq!(app.post("/upload", &bob).await, StatusCode::CREATED);
    }
    clock.advance(Duration::from_secs(60));
    assert_eq!(app.post("/ai", &bob).await, StatusCode::OK);
    let before = app.balances(&bob).await;
    eventually("Firestore caught up", || async {
        app.document(&bob)
            .await
            .is_some_and(|s| s.counts() == (3, 2))
    })
    .await;

    flushall(&redis);
    // Balances come back from Firestore exactly, timestamps included...
    assert_eq!(app.balances(&bob).await, before);
    // ...and the next charges continue from them.
    assert_eq!(app.post("/upload", &bob).await, StatusCode::CREATED);
    assert_eq!(app.balances(&bob).await[0].remaining, 2);
    eventually("the next charge in Firestore", || async {
        app.document(&bob)
            .await
            .is_some_and(|s| s.counts() == (2, 2))
    })
    .await;
}

#[tokio::test]
async fn sync_flushall_loses_nothing() {
    flushall_loses_nothing(WriteMode::Sync, "flush-sync").await;
}

#[tokio::test]
async fn async_flushall_after_the_writes_loses_nothing() {
    flushall_loses_nothing(WriteMode::Async, "flush-async").await;
}

#[tokio::test]
async fn sync_flushall_under_load_keeps_firestore_equal_to_the_answers() {
    let clock = FakeClock::at(start());
    let (app, redis) = flushable("flush-load", WriteMode::Sync, &clock).await;
    let (app, redis) = (Arc::new(app), Arc::new(redis));
    let carol = uid("carol");
    app.grant(&carol, "upload", 95).await;
    let requests: Vec<_> = (0..90)
        .map(|i| {
            let (app, carol, redis) = (app.clone(), carol.clone(), redis.clone());
            tokio::spawn(async move {
                if i == 30 {
                    flushall(&redis);
                }
                app.post("/upload", &carol).await
            })
        })
        .collect();
    let mut allowed = 0;
    for request in requests {
        match request.await.unwrap() {
            StatusCode::CREATED => allowed += 1,
            // A request caught by the flush fails, charged nowhere.
            StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!(allowed >= 60, "only {allowed} of 90 allowed");
    let left = 100 - allowed;
    assert_eq!(app.balances(&carol).await[0].remaining, left as u32);
    let stored = app.document(&carol).await.unwrap();
    assert_eq!(
        stored.upload.0,
        i64::from(left),
        "Firestore lost or minted tickets"
    );
}

async fn burst_costs_at_most_two_writes(mode: WriteMode, test: &str) {
    let clock = FakeClock::at(start());
    // Firestore's pace: at most one write per user per second.
    let app = Arc::new(App::start(test, mode, Duration::from_secs(1), &clock).await);
    let dave = uid("dave");
    app.grant(&dave, "upload", 995).await;
    eventually("the grant in Firestore", || async {
        app.document(&dave)
            .await
            .is_some_and(|s| s.upload.0 == 1000)
    })
    .await;
    let writes_before = app.store.firestore_writes();
    let version_before = app.document(&dave).await.unwrap().version;

    let burst: Vec<_> = (0..200)
        .map(|_| {
            let (app, dave) = (app.clone(), dave.clone());
            tokio::spawn(async move { app.post("/upload", &dave).await })
        })
        .collect();
    for request in burst {
        assert_eq!(request.await.unwrap(), StatusCode::CREATED);
    }
    eventually("the burst in Firestore", || async {
        app.document(&dave).await.is_some_and(|s| s.upload.0 == 800)
    })
    .await;

    // (Versions are drawn with random steps, so the stored version does not
    // count writes: the store's own count does.)
    let writes = app.store.firestore_writes() - writes_before;
    assert!(writes <= 2, "{writes} Firestore writes for 200 charges");
    assert!(app.document(&dave).await.unwrap().version > version_before);
    assert_eq!(app.balances(&dave).await[0].remaining, 800);
}

#[tokio::test]
async fn sync_burst_of_200_charges_costs_at_most_two_writes() {
    burst_costs_at_most_two_writes(WriteMode::Sync, "burst-sync").await;
}

#[tokio::test]
async fn async_burst_of_200_charges_costs_at_most_two_writes() {
    burst_costs_at_most_two_writes(WriteMode::Async, "burst-async").await;
}

#[tokio::test]
async fn a_delayed_write_never_undoes_a_grant_made_meanwhile() {
    let clock = FakeClock::at(start());
    let emulator = FirestoreEmulator::shared();
    let gate = TcpGate::start(&emulator.host()).await;
    // Two instances: `slow` reaches Firestore through the gate.
    let slow_db = client_at(gate.host(), "late-write").await;
    let slow = App::on(
        &shared_server().url(),
        slow_db,
        "late-write",
        WriteMode::Sync,
        Duration::from_millis(5),
        &clock,
    )
    .await;
    let fast = App::start(
        "late-write",
        WriteMode::Sync,
        Duration::from_millis(5),
        &clock,
    )
    .await;
    let erin = uid("erin");
    fast.store
        .ensure_user(&erin, fast.tickets.kinds(), fast.tickets.now())
        .await
        .unwrap();

    gate.hold();
    let charge = {
        let (router, erin) = (slow.router.clone(), erin.clone());
        tokio::spawn(async move { post_as(&router, "/upload", erin.as_str().as_bytes()).await })
    };
    // The slow instance took its snapshot (4 left) and is writing it; the
    // grant's round waits for the user's round lease.
    gate.holding().await;
    let grant = {
        let (store, erin, kind, now) = (
            fast.store.clone(),
            erin.clone(),
            fast.tickets.kind("upload").unwrap().clone(),
            fast.tickets.now(),
        );
        let request = AdjustRequest::new(erin.clone(), [(kind, Adjustment::Grant(10))], now);
        tokio::spawn(async move { store.adjust(request).await })
    };

    gate.release();
    assert_eq!(charge.await.unwrap().status, StatusCode::CREATED);
    let granted = grant.await.unwrap().unwrap();
    assert_eq!(granted.balances().unwrap()[0].remaining, 14);
    let stored = fast.document(&erin).await.unwrap();
    assert_eq!(
        stored.upload.0, 14,
        "the late write undid the grant: {stored:?}"
    );
    assert_eq!(fast.balances(&erin).await[0].remaining, 14);
    // Firestore holds the grant, so Redis may still forget the user when idle.
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("late-write:{{{erin}}}:t"))
        .query(&mut shared_server().connection())
        .unwrap();
    assert!(ttl > 0, "a granted user never expires: PTTL {ttl}");
}

#[tokio::test]
async fn a_kind_added_later_is_read_from_firestore_before_the_next_write() {
    let clock = FakeClock::at(start());
    let ivan = uid("ivan");
    let store_of = |kinds: Vec<TicketKind>| async {
        let db = FirestoreEmulator::shared().client("new-kind").await;
        let source = FirestoreSource::new(db, kinds).timeout(FIRESTORE_TIMEOUT);
        let redis = RedisStore::standalone(shared_server().url())
            .key_prefix("new-kind:")
            .time_source(TimeSource::Caller);
        WriteThrough::builder(redis, source)
            .write_interval(Duration::from_millis(5))
            .connect()
            .await
            .unwrap()
    };
    let tickets_of = |store: WriteThrough, kinds: Vec<TicketKind>| {
        kinds
            .into_iter()
            .fold(Tickets::builder(), |b, k| b.kind(k))
            .store(store)
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let charge = |store: WriteThrough, tickets: Tickets| {
        let ivan = ivan.clone();
        async move {
            let request = ChargeRequest::new(
                ivan,
                tickets.check_cost(&Cost::of("upload", 1)).unwrap(),
                tickets.now(),
            );
            let outcome = store.charge(request).await.unwrap();
            assert!(
                matches!(outcome, ChargeOutcome::Allowed { .. }),
                "{outcome:?}"
            );
        }
    };
    // Version 1 of the app knows uploads only.
    let old = vec![TicketKind::new("upload", 5)];
    let store = store_of(old.clone()).await;
    charge(store.clone(), tickets_of(store, old)).await;
    // Version 2 adds AI tickets; Redis holds the user without them.
    let new = kinds().to_vec();
    let store = store_of(new.clone()).await;
    charge(store.clone(), tickets_of(store, new)).await;
    let db = FirestoreEmulator::shared().client("new-kind").await;
    let stored = FirestoreSource::new(db, kinds())
        .load(&ivan, clock.now())
        .await
        .unwrap()
        .unwrap();
    let counts: Vec<u32> = stored.balances.iter().map(|b| b.remaining).collect();
    assert_eq!(counts, [3, 3], "two uploads spent; AI tickets created at 3");
}

/// An edit made straight to the document through Firestore's REST API
/// (the `ticketCount` field alone, as the Firebase console does) while two
/// instances hold the user in Redis: two seconds later both answer the
/// edit (DESIGN.md §4; the check of `seeded_point`), the next upload
/// leaves 1 in the document, and no write of this crate undoes the edit.
/// Before the digest, the next round wrote Redis's older state over it.
#[tokio::test]
async fn an_edit_made_through_rest_is_seen_within_2s_and_never_undone() {
    let clock = FakeClock::at(start());
    let a = App::start("edited", WriteMode::Sync, Duration::from_millis(5), &clock).await;
    let b = App::start("edited", WriteMode::Sync, Duration::from_millis(5), &clock).await;
    let gina = uid("gina");
    assert_eq!(a.post("/upload", &gina).await, StatusCode::CREATED);
    assert_eq!(b.balances(&gina).await[0].remaining, 4);

    let host = FirestoreEmulator::shared().host();
    edit_through_rest(&host, "edited", gina.as_str(), &[("ticketCount", 2)]).await;
    // Not waiting for a server: the rule is about time passing (Redis's
    // clock says when a state is overdue for a check). No request came in
    // between, so each instance's first one after that sees the edit.
    tokio::time::sleep(Duration::from_millis(2050)).await;
    assert_eq!(a.balances(&gina).await[0].remaining, 2, "A sees the edit");
    assert_eq!(b.balances(&gina).await[0].remaining, 2, "B sees the edit");

    assert_eq!(b.post("/upload", &gina).await, StatusCode::CREATED);
    assert_eq!(a.document(&gina).await.unwrap().upload.0, 1);
    assert_eq!(a.balances(&gina).await[0].remaining, 1);
}
