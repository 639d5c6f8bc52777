//! The write-through when Redis loses or rolls back state between a charge
//! and its write (DESIGN.md §4): a flush while a charge waits for its round,
//! a refund of a charge Redis lost, a hash rolled back to an old dump, a
//! grant the source did not take. Each test forces its interleaving with
//! the in-memory source's held writes and outages, on a real `redis-server`
//! of its own (the tests flush it).

#![cfg(feature = "redis")]

#[allow(dead_code)] // This binary uses part of the support code.
mod support {
    pub mod eventually;
    pub mod redis_server;
    pub mod tcp_gate;
}

use std::time::Duration;

use tower_tickets::store::{
    AdjustOutcome, AdjustRequest, Adjustment, ChargeOutcome, ChargeRequest, MemorySource,
    RedisStore, SourceOfTruth, StoreError, TicketStore, TimeSource, WriteMode, WriteThrough,
};
use tower_tickets::{
    Clock, ConfigError, Cost, FakeClock, IdempotencyKey, Refill, SystemClock, TicketKind, Tickets,
    Uid,
};

use support::eventually::eventually;
use support::redis_server::RedisServer;
use support::tcp_gate::TcpGate;

fn upload() -> TicketKind {
    TicketKind::new("upload", 5)
}

struct Fixture {
    server: RedisServer,
    source: MemorySource,
    store: WriteThrough,
    tickets: Tickets,
    uid: Uid,
}

impl Fixture {
    async fn new(mode: WriteMode) -> Self {
        Self::with(mode, SystemClock, vec![upload()]).await
    }

    /// The store on `clock`, for the `kinds` (the first is the one
    /// [`charge`](Self::charge) spends).
    async fn with(mode: WriteMode, clock: impl Clock + Clone, kinds: Vec<TicketKind>) -> Self {
        let server = RedisServer::start();
        let source = MemorySource::new(kinds.clone()).timeout(Duration::from_secs(30));
        let store = WriteThrough::builder(
            RedisStore::standalone(server.url())
                .timeout(Duration::from_secs(2))
                .time_source(TimeSource::Caller),
            source.clone(),
        )
        .mode(mode)
        .write_interval(Duration::from_millis(5))
        .recovery_interval(Duration::from_millis(50))
        .clock(clock.clone())
        .connect()
        .await
        .expect("connect to the test server");
        let tickets = kinds
            .into_iter()
            .fold(Tickets::builder(), |builder, kind| builder.kind(kind))
            .store(store.clone())
            .clock(clock)
            .build()
            .expect("the source has the registry's kinds");
        let uid = Uid::parse("lineage-user").unwrap();
        tickets.ensure_user(&uid).await.expect("created");
        Self {
            server,
            source,
            store,
            tickets,
            uid,
        }
    }

    fn store(&self) -> &WriteThrough {
        &self.store
    }

    fn charge(&self) -> impl Future<Output = Result<ChargeOutcome, StoreError>> + 'static {
        self.charge_of(Cost::of("upload", 1))
    }

    fn charge_of(
        &self,
        cost: Cost,
    ) -> impl Future<Output = Result<ChargeOutcome, StoreError>> + 'static {
        let cost = self.tickets.check_cost(&cost).unwrap();
        let request = ChargeRequest::new(self.uid.clone(), cost, self.tickets.now());
        self.store.charge(request)
    }

    /// The balance the source holds.
    fn in_source(&self) -> u32 {
        self.source.stored(&self.uid).expect("a document").balances[0].remaining
    }

    /// The balance the store answers (reloading from the source if Redis
    /// dropped the user).
    async fn answered(&self) -> u32 {
        self.tickets
            .balances(&self.uid)
            .await
            .unwrap()
            .get("upload")
            .unwrap()
            .remaining
    }

    fn redis(&self, command: &str, args: &[&str]) -> redis::Value {
        let mut command = redis::cmd(command);
        for arg in args {
            command.arg(*arg);
        }
        command.query(&mut self.server.connection()).unwrap()
    }

    fn hash(&self) -> String {
        format!("tickets:{{{}}}:t", self.uid)
    }

    fn high_water(&self) -> String {
        format!("tickets:{{{}}}:h", self.uid)
    }

    /// Waits until a write round holds the user's lease in Redis.
    async fn round_in_flight(&self) {
        eventually("a write round takes the user", || async {
            self.redis("HEXISTS", &[&self.hash(), "k"]) == redis::Value::Int(1)
        })
        .await;
    }
}

fn allowed(outcome: &Result<ChargeOutcome, StoreError>) -> bool {
    matches!(outcome, Ok(ChargeOutcome::Allowed { .. }))
}

/// A charge waits for its write; Redis is flushed; another charge reloads
/// the user from the source (which lacks the first) and is charged on that
/// state. Then the first write lands, and the second charge's round writes.
/// Before lineages, both charges were answered as allowed while the source
/// held one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_while_a_charge_waits_for_its_write_never_answers_both() {
    let f = Fixture::new(WriteMode::Sync).await;
    f.source.hold_writes(true);
    let first = tokio::spawn(f.charge());
    f.round_in_flight().await;
    f.redis("FLUSHALL", &[]);
    let second = tokio::spawn(f.charge());
    eventually("the second charge reloads the user", || async {
        f.redis("HEXISTS", &[&f.hash(), "l"]) == redis::Value::Int(1)
    })
    .await;
    f.source.hold_writes(false);

    let outcomes = [first.await.unwrap(), second.await.unwrap()];
    let answered = outcomes.iter().filter(|o| allowed(o)).count();
    assert_eq!(answered, 1, "{outcomes:?}");
    assert_eq!(
        f.in_source(),
        4,
        "the source holds exactly the answered charge"
    );
    assert_eq!(
        f.answered().await,
        4,
        "Redis reloaded what the source holds"
    );
}

/// Async mode: a charge's write is on its way when Redis is flushed; a
/// second charge reloads the user from the source (which lacks the first)
/// and is answered; then the first write lands. Before the reload stamped
/// the source with its lineage, the second charge's round was refused and
/// dropped: a charge answered after the loss was lost too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_landing_after_a_flush_never_loses_a_later_charge() {
    let f = Fixture::new(WriteMode::Async).await;
    f.source.hold_writes(true);
    assert!(allowed(&f.charge().await));
    eventually("the first charge's write is on its way", || async {
        f.source.held_writes() == 1
    })
    .await;
    f.redis("FLUSHALL", &[]);
    let second = tokio::spawn(f.charge());
    eventually("the reload stamps the source", || async {
        f.source.held_writes() == 2
    })
    .await;
    f.source.hold_writes(false);

    assert!(allowed(&second.await.unwrap()));
    eventually("the source holds both answered charges", || async {
        f.source.stored(&f.uid).unwrap().balances[0].remaining == 3
    })
    .await;
    assert_eq!(f.answered().await, 3);
}

/// Async mode: a charge is answered, Redis is flushed before it is written
/// (async mode's documented loss), then the charge is refunded. Before
/// lineages, the refund gave a ticket back on top of the reloaded balance:
/// a ticket minted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_of_a_charge_redis_lost_gives_nothing_back() {
    let f = Fixture::new(WriteMode::Async).await;
    f.source.set_reachable(false);
    let Ok(ChargeOutcome::Allowed { receipt, .. }) = f.charge().await else {
        panic!("async mode answers from Redis");
    };
    f.redis("FLUSHALL", &[]);
    // A round that took the state before the flush must fail while the
    // source is down, not land once it is back.
    eventually("no write round is under way", || async {
        f.store().pending_writes() == 0
    })
    .await;
    f.source.set_reachable(true);

    let refund = f.store().refund(receipt, f.tickets.now()).await.unwrap();
    assert_eq!(
        refund.refunded,
        [0],
        "the charge is not in the reloaded state"
    );
    assert_eq!(f.answered().await, 5);
    assert_eq!(f.in_source(), 5);
}

/// Sync mode: a charge the source holds, then a flush, then its refund
/// (the handler failed): the reloaded state includes the charge, so the
/// refund gives it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_after_a_flush_gives_back_a_charge_the_source_holds() {
    let f = Fixture::new(WriteMode::Sync).await;
    let Ok(ChargeOutcome::Allowed { receipt, .. }) = f.charge().await else {
        panic!("allowed");
    };
    assert_eq!(f.in_source(), 4);
    f.redis("FLUSHALL", &[]);

    let refund = f.store().refund(receipt, f.tickets.now()).await.unwrap();
    assert_eq!(refund.refunded, [1]);
    assert_eq!(f.in_source(), 5);
    assert_eq!(f.answered().await, 5);
}

/// Redis comes back with an old copy of the user (a restart from an old
/// dump, a failover to a lagging replica): a charge decided on it is not
/// answered, and the next one is decided on the source's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_rolled_back_to_an_old_dump_is_reloaded_not_written() {
    let f = Fixture::new(WriteMode::Sync).await;
    assert!(allowed(&f.charge().await));
    let redis::Value::BulkString(dump) = f.redis("DUMP", &[&f.hash()]) else {
        panic!("the hash exists");
    };
    let redis::Value::BulkString(high_water) = f.redis("DUMP", &[&f.high_water()]) else {
        panic!("the high-water mark exists");
    };
    assert!(allowed(&f.charge().await));
    assert!(allowed(&f.charge().await));
    assert_eq!(f.in_source(), 2);

    let _: () = redis::cmd("RESTORE")
        .arg(f.hash())
        .arg(0)
        .arg(dump.clone())
        .arg("REPLACE")
        .query(&mut f.server.connection())
        .unwrap();
    // The user's high-water mark says the hash is older than what the
    // source took: the charge reloads the user first.
    let Ok(ChargeOutcome::Allowed { balances, .. }) = f.charge().await else {
        panic!("reloaded and charged");
    };
    assert_eq!(balances[0].remaining, 1);
    assert_eq!(f.in_source(), 1);

    // A whole Redis rolled back (the high-water mark with it): the charge is
    // decided on the old state, but its write round finds the source ahead,
    // answers it with an error and drops the state; the next one reloads.
    for (key, dumped) in [(f.hash(), dump), (f.high_water(), high_water)] {
        let _: () = redis::cmd("RESTORE")
            .arg(key)
            .arg(0)
            .arg(dumped)
            .arg("REPLACE")
            .query(&mut f.server.connection())
            .unwrap();
    }
    let stale = f.charge().await;
    assert!(stale.is_err(), "decided on a rolled-back state: {stale:?}");
    assert_eq!(f.in_source(), 1, "the stale state was not written");
    let Ok(ChargeOutcome::Allowed { balances, .. }) = f.charge().await else {
        panic!("reloaded and charged");
    };
    assert_eq!(balances[0].remaining, 0);
    assert_eq!(f.in_source(), 0);
}

/// Sync mode: a grant that the source does not take is answered with an
/// error and not kept in Redis (before, it was acknowledged while only Redis
/// held it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_the_source_does_not_take_is_an_error_and_not_kept() {
    let f = Fixture::new(WriteMode::Sync).await;
    f.source.set_reachable(false);
    let upload = f.tickets.kind("upload").unwrap().clone();
    let granted = f
        .store()
        .adjust(AdjustRequest::new(
            f.uid.clone(),
            [(upload, Adjustment::Grant(10))],
            f.tickets.now(),
        ))
        .await;
    assert!(granted.is_err(), "{granted:?}");
    f.source.set_reachable(true);
    assert_eq!(f.answered().await, 5);
    assert_eq!(f.in_source(), 5);
}

/// Sync mode: a keyed grant (a payment webhook's) that the source does not
/// take is not remembered, so its retry grants; while a grant's write is
/// under way its retry is in progress; once written, a retry gets the first
/// answer and grants nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_grant_is_granted_once_the_source_holds_it_and_only_once() {
    let f = Fixture::new(WriteMode::Sync).await;
    let upload = f.tickets.kind("upload").unwrap().clone();
    let key = IdempotencyKey::parse("payment-1").unwrap();
    let grant = || {
        let change = [(upload.clone(), Adjustment::Grant(10))];
        let request = AdjustRequest::new(f.uid.clone(), change, f.tickets.now());
        f.store()
            .adjust(request.with_idempotency_key(Some(key.clone())))
    };
    f.source.set_reachable(false);
    let refused = grant().await;
    assert!(refused.is_err(), "{refused:?}");
    f.source.set_reachable(true);
    assert_eq!(f.answered().await, 5);

    f.source.hold_writes(true);
    let first = tokio::spawn(grant());
    eventually("the grant's write is held", || async {
        f.source.held_writes() > 0
    })
    .await;
    assert_eq!(grant().await.unwrap(), AdjustOutcome::InProgress);
    f.source.hold_writes(false);
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.balances().unwrap()[0].remaining, 15);
    let retry = grant().await.unwrap();
    assert_eq!(
        retry,
        AdjustOutcome::Replayed {
            balances: first.balances().unwrap().to_vec()
        }
    );
    assert_eq!(f.in_source(), 15, "granted once");
    assert_eq!(f.answered().await, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_with_other_kinds_than_the_registry_is_a_config_error() {
    let server = RedisServer::start();
    let source = MemorySource::new([TicketKind::new("upload", 6)]);
    let store = WriteThrough::builder(RedisStore::standalone(server.url()), source.clone())
        .connect()
        .await
        .unwrap();
    let built = Tickets::builder().kind(upload()).store(store).build();
    assert!(
        matches!(built, Err(ConfigError::SourceKindsDiffer { .. })),
        "{built:?}"
    );
    assert_eq!(source.kinds().len(), 1);
}

/// An edit made straight to the source while Redis holds the user (async
/// mode, nothing left to write), who then stays idle: the first request two
/// seconds later checks the source before deciding (DESIGN.md §4: an edit
/// is seen within 2 s), loads the edit, and charges apply on top of it;
/// nothing writes Redis's older state over it. A deleted user starts over,
/// seen by the check that an active user's requests hand out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_to_the_source_is_seen_two_seconds_later_and_never_undone() {
    let f = Fixture::new(WriteMode::Async).await;
    assert!(allowed(&f.charge().await));
    eventually("the charge is written", || async { f.in_source() == 4 }).await;
    let mut edited = f.source.stored(&f.uid).unwrap().balances;
    edited[0].remaining = 2;
    f.source.edit(&f.uid, edited);
    // Not waiting for a server: the rule is about time passing (Redis's
    // clock decides when a state is overdue for a check).
    tokio::time::sleep(Duration::from_millis(2050)).await;
    assert_eq!(f.answered().await, 2, "the first request sees the edit");
    assert!(allowed(&f.charge().await));
    eventually(
        "the source holds the edit and the charge after it",
        || async { f.in_source() == 1 },
    )
    .await;
    assert_eq!(f.answered().await, 1);

    f.source.delete(&f.uid);
    eventually("a deleted user starts over", || async {
        f.answered().await == 5
    })
    .await;
}

/// A charge times out while Redis is paused, then Redis runs it; before its
/// refund reaches Redis (held at a gate), another instance's charge is
/// written, and the state it writes includes the late charge. Before, the
/// late charge was given back in Redis only: the source kept it, a ticket
/// lost for good at the next Redis loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_that_runs_after_its_timeout_is_given_back_in_the_source_too() {
    let f = Fixture::new(WriteMode::Sync).await;
    let gate = TcpGate::start(f.server.url().trim_start_matches("redis://")).await;
    let impatient = WriteThrough::builder(
        RedisStore::standalone(format!("redis://{}", gate.host())).timeout(Duration::from_secs(1)),
        f.source.clone(),
    )
    .write_interval(Duration::from_millis(5))
    .connect()
    .await
    .expect("connect through the gate");
    let cost = f.tickets.check_cost(&Cost::of("upload", 1)).unwrap();
    let charge = |store: &WriteThrough| {
        store.charge(ChargeRequest::new(
            f.uid.clone(),
            cost.clone(),
            f.tickets.now(),
        ))
    };

    f.redis("CLIENT", &["PAUSE", "5000", "WRITE"]);
    let late = charge(&impatient).await;
    assert!(late.is_err(), "the paused charge times out: {late:?}");
    gate.hold();
    f.redis("CLIENT", &["UNPAUSE"]);
    // The charge ran; its refund waits at the gate.
    gate.holding().await;
    assert!(allowed(&charge(f.store()).await));
    assert_eq!(
        f.in_source(),
        3,
        "the written state includes the late charge"
    );
    gate.release();

    eventually("the late charge's refund reaches the source", || async {
        f.in_source() == 4
    })
    .await;
    impatient.settled().await;
    assert_eq!(f.answered().await, 4);
}

/// A keyed charge waits for its round (held back by the user's write pace);
/// meanwhile Redis loses the user's hash, but not the key, which lives
/// apart. The round finds nothing to write, and the charge is answered with
/// an error. Before, its key stayed "running": the request's retry was told
/// it was in progress, for a request never charged (found by the ledger's
/// edit fault, whose check drops a hash the same way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_charge_lost_with_redis_state_leaves_no_key_behind() {
    let f = Fixture::new(WriteMode::Sync).await;
    let paced = WriteThrough::builder(RedisStore::standalone(f.server.url()), f.source.clone())
        .write_interval(Duration::from_secs(3))
        .connect()
        .await
        .expect("connect");
    let cost = f.tickets.check_cost(&Cost::of("upload", 1)).unwrap();
    let keyed = || {
        let key = IdempotencyKey::parse("retry-me").unwrap();
        paced.charge(
            ChargeRequest::new(f.uid.clone(), cost.clone(), f.tickets.now())
                .with_idempotency_key(Some(key)),
        )
    };
    // A first charge written now: the next round must wait out the pace.
    assert!(allowed(
        &paced
            .charge(ChargeRequest::new(
                f.uid.clone(),
                cost.clone(),
                f.tickets.now()
            ))
            .await
    ));
    let waiting = tokio::spawn(keyed());
    eventually("the keyed charge is made in Redis", || async {
        f.redis("HGET", &[&f.hash(), "n:upload"]) == redis::Value::BulkString(b"3".to_vec())
    })
    .await;
    f.redis("DEL", &[&f.hash()]);
    let lost = waiting.await.unwrap();
    assert!(
        lost.is_err(),
        "the charge went with Redis's state: {lost:?}"
    );

    let retry = keyed().await;
    assert!(allowed(&retry), "the retry is charged: {retry:?}");
    assert_eq!(f.answered().await, 3);
}

/// Async mode: two charges are answered while the source's writes are
/// held (not written yet), then somebody edits the source (4 uploads). The
/// edit is the truth as of its commit and the two unwritten charges apply on
/// top (DESIGN.md §4): 2, in Redis at once and in the source once written;
/// a refund of one of them then gives it back. Before, the check dropped
/// Redis's state and the two answered charges with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_takes_the_unwritten_async_charges_on_top() {
    let f = Fixture::new(WriteMode::Async).await;
    f.source.hold_writes(true);
    let Ok(ChargeOutcome::Allowed { receipt, .. }) = f.charge().await else {
        panic!("async mode answers from Redis");
    };
    assert!(allowed(&f.charge().await));
    let mut edited = f.source.stored(&f.uid).unwrap().balances;
    assert_eq!(edited[0].remaining, 5, "nothing written yet");
    edited[0].remaining = 4;
    f.source.edit(&f.uid, edited);
    // As two seconds of the user's silence would: the next read checks the
    // source first.
    f.redis("HDEL", &[&f.hash(), "f", "fc"]);
    assert_eq!(f.answered().await, 2, "the edit, the two charges on top");

    f.source.hold_writes(false);
    eventually("the source holds the edit and the charges", || async {
        f.in_source() == 2
    })
    .await;
    let refund = f.store().refund(receipt, f.tickets.now()).await.unwrap();
    assert_eq!(refund.refunded, [1], "a carried charge is given back");
    eventually("the source holds the refund", || async {
        f.in_source() == 3
    })
    .await;
    assert_eq!(f.answered().await, 3);
}

/// A refused charge applies the day's upload refill (refused for the AI
/// generation it also costs, whose refill is weekly), and the round that
/// should write it fails (the source unreachable). The refill is counted
/// pending like a charge, so the recovery scan writes it once the source is
/// back. Before, the round's failure forgot it: the source (and the app's
/// UI reading it) kept showing no uploads left until the user's next
/// change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refill_whose_write_failed_still_reaches_the_source() {
    let clock = FakeClock::at("2026-03-29T10:00:00Z".parse().unwrap());
    let weekly = Refill::rolling(Duration::from_secs(7 * 24 * 3600));
    let ai = TicketKind::new("ai", 1).refill(weekly);
    let f = Fixture::with(WriteMode::Async, clock.clone(), vec![upload(), ai]).await;
    let everything = Cost::of("upload", 5).and("ai", 1);
    assert!(allowed(&f.charge_of(everything).await));
    eventually("the spend is written", || async { f.in_source() == 0 }).await;

    f.source.set_reachable(false);
    clock.advance(Duration::from_secs(24 * 3600));
    let refused = f.charge_of(Cost::of("upload", 1).and("ai", 1)).await;
    assert!(
        matches!(&refused, Ok(ChargeOutcome::Refused { balances }) if balances[0].remaining == 5),
        "refused, on the refilled upload balance: {refused:?}"
    );
    eventually("the refill's round fails", || async {
        f.store().pending_writes() == 0
    })
    .await;
    assert_eq!(f.in_source(), 0, "the source was unreachable");

    f.source.set_reachable(true);
    eventually("the recovery scan writes the refill", || async {
        f.in_source() == 5
    })
    .await;
    assert_eq!(f.answered().await, 5);
}
