//! The store contract: one suite that every `TicketStore` backend passes.
//!
//! A test file runs it against a backend with
//!
//! ```ignore
//! mod contract;
//! tower_tickets_contract!(async { MemoryStore::new() });
//! ```
//!
//! The expression is evaluated once per test and must give a fresh store in
//! which no user of the suite exists yet. Every test drives time with a
//! `FakeClock` and passes the instants in; no test sleeps. Uids are unique per
//! test so that backends may share one server between tests.

#![allow(dead_code)] // Each test binary uses the suite through the macro.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveTime, Utc};
use tower_tickets::store::{
    AdjustOutcome, AdjustRequest, Adjustment, ChargeOutcome, ChargeRequest, KindBalance, Receipt,
    TicketStore,
};
use tower_tickets::{
    Cost, FakeClock, IdempotencyKey, Refill, RequestFingerprint, TicketKind, Tickets, Uid,
};

pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// Expands to one `#[tokio::test]` per contract rule, each on a fresh store
/// built by `$make` (an expression of type `impl Future<Output = impl TicketStore>`).
#[macro_export]
macro_rules! tower_tickets_contract {
    ($make:expr) => {
        $crate::tower_tickets_contract!(@tests $make;
            new_user_starts_with_initial_balances,
            charge_spends_exactly_the_cost,
            refused_at_zero_changes_nothing,
            multi_kind_cost_is_all_or_nothing,
            rolling_refill_comes_after_the_period_not_earlier_not_twice,
            refill_never_lowers_a_granted_balance,
            calendar_refill_at_midnight_paris_across_daylight_saving,
            refund_gives_tickets_back,
            refund_is_void_across_a_refill,
            refund_across_a_refill_gives_back_what_it_did_not_restore,
            idempotency_key_is_charged_once_per_user,
            a_retry_is_in_progress_until_its_request_finishes,
            a_key_reused_for_another_request_charges_nothing,
            finish_without_a_key_or_after_a_refund_changes_nothing,
            refund_forgets_the_idempotency_key,
            idempotency_key_expires_after_a_day,
            a_late_refund_or_finish_leaves_a_key_reused_since_alone,
            grant_and_set,
            reset_refills_now_and_keeps_a_grant_above_capacity,
            a_keyed_grant_retried_grants_once,
            a_key_reused_for_another_change_changes_nothing,
            reading_balances_never_writes,
            ensure_user_never_resets_a_balance,
            thousand_concurrent_charges_on_balance_five_allow_five,
            users_are_independent,
        );
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = $make.await;
                contract::$name(::std::sync::Arc::new(store)).await;
            }
        )*
    };
}

/// The suite's fixture: the reference app's kinds plus a calendar kind.
pub struct Fixture {
    pub store: Arc<dyn TicketStore>,
    pub tickets: Tickets,
    pub clock: FakeClock,
    pub uid: Uid,
}

static NEXT_UID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A uid no other test of this process uses (tests may share a server).
pub fn fresh_uid(test: &str) -> Uid {
    let n = NEXT_UID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pid = std::process::id();
    Uid::parse(&format!("{test}-{pid}-{n}")).expect("valid test uid")
}

pub fn start() -> DateTime<Utc> {
    "2026-03-27T08:00:00Z".parse().unwrap()
}

impl Fixture {
    pub fn new(store: Arc<dyn TicketStore>, test: &str) -> Self {
        let clock = FakeClock::at(start());
        let tickets = Tickets::builder()
            .kind(TicketKind::new("upload", 5))
            .kind(TicketKind::new("ai", 3).label("AI"))
            .kind(
                TicketKind::new("daily", 2)
                    .initial(1)
                    .refill(Refill::daily_at(NaiveTime::MIN, chrono_tz::Europe::Paris)),
            )
            .clock(clock.clone())
            .build()
            .expect("valid kinds");
        Self {
            store,
            tickets,
            clock,
            uid: fresh_uid(test),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.tickets.now()
    }

    pub fn kind(&self, name: &str) -> Arc<TicketKind> {
        self.tickets.kind(name).expect("registered kind").clone()
    }

    /// Charges `cost` to `uid`, with `key` on a `POST /same` request.
    pub async fn charge_as(&self, uid: &Uid, cost: Cost, key: Option<&str>) -> ChargeOutcome {
        self.charge_request(uid, cost, key, "/same").await
    }

    /// Charges `cost` to `uid`, with `key` on a `POST` request to `route`.
    pub async fn charge_request(
        &self,
        uid: &Uid,
        cost: Cost,
        key: Option<&str>,
        route: &str,
    ) -> ChargeOutcome {
        let cost = self.tickets.check_cost(&cost).expect("valid cost");
        let fingerprint = RequestFingerprint::new(&http::Method::POST, route, &cost);
        let request = ChargeRequest::new(uid.clone(), cost, self.now())
            .with_idempotency_key(key.map(|k| IdempotencyKey::parse(k).expect("valid key")))
            .with_fingerprint(fingerprint);
        self.store.charge(request).await.expect("store answers")
    }

    /// Records that the request of `outcome`'s charge finished.
    pub async fn finish(&self, outcome: ChargeOutcome) {
        self.store
            .finish(&receipt(outcome))
            .await
            .expect("store answers");
    }

    pub async fn charge(&self, cost: Cost) -> ChargeOutcome {
        self.charge_as(&self.uid, cost, None).await
    }

    pub async fn charge_one(&self, kind: &str) -> ChargeOutcome {
        self.charge(Cost::of(kind, 1)).await
    }

    pub async fn balance(&self, kind: &str) -> KindBalance {
        self.balance_of(&self.uid, kind).await
    }

    pub async fn balance_of(&self, uid: &Uid, kind: &str) -> KindBalance {
        let balances = self
            .store
            .balances(uid, &[self.kind(kind)], self.now())
            .await
            .expect("store answers");
        balances[0]
    }

    pub async fn remaining(&self, kind: &str) -> u32 {
        self.balance(kind).await.remaining
    }

    pub async fn adjust(&self, kind: &str, adjustment: Adjustment) -> KindBalance {
        let outcome = self.adjust_as(&self.uid, &[(kind, adjustment)], None).await;
        match outcome {
            AdjustOutcome::Applied { balances } => balances[0],
            other => panic!("expected an applied adjustment, got {other:?}"),
        }
    }

    /// Makes `changes` to `uid`'s balances, under `key`.
    pub async fn adjust_as(
        &self,
        uid: &Uid,
        changes: &[(&str, Adjustment)],
        key: Option<&str>,
    ) -> AdjustOutcome {
        let changes = changes
            .iter()
            .map(|(kind, adjustment)| (self.kind(kind), *adjustment));
        let request = AdjustRequest::new(uid.clone(), changes, self.now())
            .with_idempotency_key(key.map(|k| IdempotencyKey::parse(k).expect("valid key")));
        self.store.adjust(request).await.expect("store answers")
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
}

pub fn allowed(outcome: &ChargeOutcome) -> bool {
    matches!(outcome, ChargeOutcome::Allowed { .. })
}

pub fn receipt(outcome: ChargeOutcome) -> Receipt {
    match outcome {
        ChargeOutcome::Allowed { receipt, .. } => receipt,
        other => panic!("expected an allowed charge, got {other:?}"),
    }
}

pub fn balances(outcome: &ChargeOutcome) -> &[KindBalance] {
    match outcome {
        ChargeOutcome::Allowed { balances, .. }
        | ChargeOutcome::Refused { balances }
        | ChargeOutcome::Replayed { balances } => balances,
        other => panic!("unexpected outcome {other:?}"),
    }
}

pub async fn new_user_starts_with_initial_balances(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "initial");
    assert_eq!(f.remaining("upload").await, 5);
    assert_eq!(f.remaining("ai").await, 3);
    assert_eq!(f.remaining("daily").await, 1, "initial below capacity");
    let created = f
        .store
        .ensure_user(&f.uid, f.tickets.kinds(), f.now())
        .await
        .unwrap();
    let remaining: Vec<u32> = created.iter().map(|b| b.remaining).collect();
    assert_eq!(remaining, [5, 3, 1]);
    assert!(created.iter().all(|b| b.last_refill == f.now()));
}

pub async fn charge_spends_exactly_the_cost(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "spend");
    let outcome = f.charge_one("upload").await;
    assert!(allowed(&outcome));
    assert_eq!(balances(&outcome)[0].remaining, 4);
    assert_eq!(f.remaining("upload").await, 4);
    assert_eq!(f.remaining("ai").await, 3, "other kinds untouched");
    let outcome = f.charge(Cost::of("upload", 3)).await;
    assert_eq!(balances(&outcome)[0].remaining, 1);
    assert_eq!(f.remaining("upload").await, 1);
}

pub async fn refused_at_zero_changes_nothing(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "zero");
    for _ in 0..3 {
        assert!(allowed(&f.charge_one("ai").await));
    }
    let refused = f.charge_one("ai").await;
    assert!(
        matches!(refused, ChargeOutcome::Refused { .. }),
        "{refused:?}"
    );
    assert_eq!(balances(&refused)[0].remaining, 0);
    assert_eq!(f.remaining("ai").await, 0);
    // A cost larger than what is left is refused too, and spends nothing.
    let f2 = Fixture::new(f.store.clone(), "partial");
    assert!(allowed(&f2.charge(Cost::of("upload", 4)).await));
    assert!(!allowed(&f2.charge(Cost::of("upload", 2)).await));
    assert_eq!(f2.remaining("upload").await, 1);
}

pub async fn multi_kind_cost_is_all_or_nothing(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "multi");
    assert!(allowed(&f.charge(Cost::of("ai", 2)).await));
    // ai has 1 left: a cost of 1 upload + 2 ai must charge neither.
    let refused = f.charge(Cost::of("upload", 1).and("ai", 2)).await;
    assert!(matches!(refused, ChargeOutcome::Refused { .. }));
    let reported: Vec<u32> = balances(&refused).iter().map(|b| b.remaining).collect();
    assert_eq!(reported, [5, 1], "balances in the cost's order");
    assert_eq!(f.remaining("upload").await, 5);
    assert_eq!(f.remaining("ai").await, 1);
    // 1 upload + 1 ai can pay: both are charged.
    let outcome = f.charge(Cost::of("upload", 1).and("ai", 1)).await;
    assert!(allowed(&outcome));
    assert_eq!(f.remaining("upload").await, 4);
    assert_eq!(f.remaining("ai").await, 0);
}

pub async fn rolling_refill_comes_after_the_period_not_earlier_not_twice(
    store: Arc<dyn TicketStore>,
) {
    let f = Fixture::new(store, "rolling");
    for _ in 0..5 {
        assert!(allowed(&f.charge_one("upload").await));
    }
    assert!(!allowed(&f.charge_one("upload").await));
    let first_charge = f.now();
    // One millisecond before the period ends: still nothing.
    f.advance(DAY - Duration::from_millis(1));
    assert_eq!(f.remaining("upload").await, 0);
    assert!(!allowed(&f.charge_one("upload").await));
    // Exactly one period after the last refill (the user's creation): 5 again.
    f.advance(Duration::from_millis(1));
    assert_eq!(f.now(), first_charge + DAY);
    assert_eq!(f.remaining("upload").await, 5);
    let outcome = f.charge_one("upload").await;
    assert_eq!(balances(&outcome)[0].remaining, 4);
    assert_eq!(balances(&outcome)[0].last_refill, f.now());
    // Not twice: later in the same period the spent ticket stays spent.
    f.advance(DAY - Duration::from_secs(1));
    assert_eq!(f.remaining("upload").await, 4);
    f.advance(Duration::from_secs(1));
    assert_eq!(f.remaining("upload").await, 5);
}

pub async fn refill_never_lowers_a_granted_balance(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "granted");
    let granted = f.adjust("upload", Adjustment::Grant(7)).await;
    assert_eq!(granted.remaining, 12);
    f.advance(DAY);
    assert_eq!(f.remaining("upload").await, 12);
    assert!(allowed(&f.charge_one("upload").await));
    assert_eq!(f.remaining("upload").await, 11);
}

pub async fn calendar_refill_at_midnight_paris_across_daylight_saving(store: Arc<dyn TicketStore>) {
    // 2026-03-29: Paris moves from CET (+1) to CEST (+2); that day lasts 23 h.
    let f = Fixture::new(store, "calendar");
    f.clock.set("2026-03-28T12:00:00Z".parse().unwrap());
    assert!(allowed(&f.charge_one("daily").await));
    assert_eq!(f.remaining("daily").await, 0);
    let outcome = f.charge_one("daily").await;
    assert!(!allowed(&outcome));
    // Midnight of the 29th in Paris is 23:00 UTC on the 28th.
    let refill_at = f
        .kind("daily")
        .refill_schedule()
        .next_after(balances(&outcome)[0].last_refill);
    assert_eq!(
        refill_at,
        "2026-03-28T23:00:00Z".parse::<DateTime<Utc>>().unwrap()
    );
    f.clock.set("2026-03-28T22:59:59.999Z".parse().unwrap());
    assert_eq!(f.remaining("daily").await, 0);
    f.clock.set("2026-03-28T23:00:00Z".parse().unwrap());
    assert_eq!(
        f.remaining("daily").await,
        2,
        "refilled to capacity at midnight"
    );
    assert!(allowed(&f.charge_one("daily").await));
    assert!(allowed(&f.charge_one("daily").await));
    // The next midnight (CEST) is 22:00 UTC on the 29th: 23 h later, not 24.
    f.clock.set("2026-03-29T21:59:59.999Z".parse().unwrap());
    assert_eq!(f.remaining("daily").await, 0);
    f.clock.set("2026-03-29T22:00:00Z".parse().unwrap());
    assert_eq!(f.remaining("daily").await, 2);
}

pub async fn refund_gives_tickets_back(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "refund");
    let receipt = receipt(f.charge(Cost::of("upload", 2).and("ai", 1)).await);
    assert_eq!(f.remaining("upload").await, 3);
    f.advance(Duration::from_secs(60));
    let refund = f.store.refund(receipt, f.now()).await.unwrap();
    assert_eq!(refund.refunded, [2, 1]);
    let remaining: Vec<u32> = refund.balances.iter().map(|b| b.remaining).collect();
    assert_eq!(remaining, [5, 3]);
    assert_eq!(f.remaining("upload").await, 5);
    assert_eq!(f.remaining("ai").await, 3);
}

pub async fn refund_is_void_across_a_refill(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "void");
    for _ in 0..4 {
        assert!(allowed(&f.charge_one("upload").await));
    }
    let receipt = receipt(f.charge_one("upload").await);
    f.advance(DAY);
    // A refill is due: refunding would mint a ticket on top of a full balance.
    let refund = f.store.refund(receipt.clone(), f.now()).await.unwrap();
    assert_eq!(refund.refunded, [0]);
    assert_eq!(f.remaining("upload").await, 5);
    // Once applied, the refill is still in the way of the old receipt.
    assert!(allowed(&f.charge_one("upload").await));
    let refund = f.store.refund(receipt, f.now()).await.unwrap();
    assert_eq!(refund.refunded, [0]);
    assert_eq!(f.remaining("upload").await, 4);
}

pub async fn refund_across_a_refill_gives_back_what_it_did_not_restore(
    store: Arc<dyn TicketStore>,
) {
    let f = Fixture::new(store, "granted-refund");
    f.adjust("upload", Adjustment::Set(10)).await;
    // 10 - 2 = 8: a refill keeps 8 (above capacity 5), restoring nothing.
    let granted = receipt(f.charge(Cost::of("upload", 2)).await);
    f.advance(DAY);
    let refund = f.store.refund(granted, f.now()).await.unwrap();
    assert_eq!(refund.refunded, [2], "the refill restored none of it");
    assert_eq!(f.remaining("upload").await, 10);
    // 6 - 3 = 3: a refill brings 5, restoring 2 of the 3.
    f.adjust("upload", Adjustment::Set(6)).await;
    let partly = receipt(f.charge(Cost::of("upload", 3)).await);
    f.advance(DAY);
    let refund = f.store.refund(partly, f.now()).await.unwrap();
    assert_eq!(refund.refunded, [1], "the refill restored 2 of 3");
    assert_eq!(f.remaining("upload").await, 6);
}

pub async fn idempotency_key_is_charged_once_per_user(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "idem");
    let first = f
        .charge_as(&f.uid, Cost::of("upload", 1), Some("req-1"))
        .await;
    assert!(allowed(&first));
    f.finish(first).await;
    let retry = f
        .charge_as(&f.uid, Cost::of("upload", 1), Some("req-1"))
        .await;
    assert!(matches!(retry, ChargeOutcome::Replayed { .. }), "{retry:?}");
    assert_eq!(balances(&retry)[0].remaining, 4);
    assert_eq!(f.remaining("upload").await, 4);
    // Another key is another request.
    assert!(allowed(
        &f.charge_as(&f.uid, Cost::of("upload", 1), Some("req-2"))
            .await
    ));
    assert_eq!(f.remaining("upload").await, 3);
    // Keys are per user.
    let other = fresh_uid("idem-other");
    assert!(allowed(
        &f.charge_as(&other, Cost::of("upload", 1), Some("req-1"))
            .await
    ));
    assert_eq!(f.balance_of(&other, "upload").await.remaining, 4);
}

pub async fn a_retry_is_in_progress_until_its_request_finishes(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "idem-running");
    let first = f.charge_as(&f.uid, Cost::of("ai", 1), Some("k")).await;
    assert!(allowed(&first));
    for _ in 0..2 {
        let retry = f.charge_as(&f.uid, Cost::of("ai", 1), Some("k")).await;
        assert!(matches!(retry, ChargeOutcome::InProgress), "{retry:?}");
    }
    assert_eq!(f.remaining("ai").await, 2, "charged once");
    f.finish(first.clone()).await;
    let retry = f.charge_as(&f.uid, Cost::of("ai", 1), Some("k")).await;
    assert!(matches!(retry, ChargeOutcome::Replayed { .. }), "{retry:?}");
    // Finishing twice changes nothing.
    f.finish(first).await;
    let retry = f.charge_as(&f.uid, Cost::of("ai", 1), Some("k")).await;
    assert!(matches!(retry, ChargeOutcome::Replayed { .. }), "{retry:?}");
    assert_eq!(f.remaining("ai").await, 2);
}

pub async fn a_key_reused_for_another_request_charges_nothing(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "idem-reused");
    let upload = Cost::of("upload", 1);
    let first = f
        .charge_request(&f.uid, upload.clone(), Some("k"), "/uploads")
        .await;
    assert!(allowed(&first));
    let elsewhere = f
        .charge_request(&f.uid, Cost::of("ai", 1), Some("k"), "/generate")
        .await;
    assert!(
        matches!(elsewhere, ChargeOutcome::KeyReused),
        "{elsewhere:?}"
    );
    // Another route with the same cost, or another cost on the same route.
    let route = f
        .charge_request(&f.uid, upload.clone(), Some("k"), "/avatars")
        .await;
    assert!(matches!(route, ChargeOutcome::KeyReused), "{route:?}");
    let cost = f
        .charge_request(&f.uid, Cost::of("upload", 2), Some("k"), "/uploads")
        .await;
    assert!(matches!(cost, ChargeOutcome::KeyReused), "{cost:?}");
    f.finish(first).await;
    let finished = f
        .charge_request(&f.uid, Cost::of("ai", 1), Some("k"), "/generate")
        .await;
    assert!(matches!(finished, ChargeOutcome::KeyReused), "{finished:?}");
    assert_eq!(f.remaining("upload").await, 4, "charged once");
    assert_eq!(f.remaining("ai").await, 3, "never charged");
}

pub async fn finish_without_a_key_or_after_a_refund_changes_nothing(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "idem-finish");
    let keyless = f.charge_one("upload").await;
    f.finish(keyless).await;
    assert_eq!(f.remaining("upload").await, 4);
    let keyed = f.charge_as(&f.uid, Cost::of("upload", 1), Some("k")).await;
    f.store
        .refund(receipt(keyed.clone()), f.now())
        .await
        .unwrap();
    // A late finish of a refunded charge does not bring the key back.
    f.finish(keyed).await;
    assert!(allowed(
        &f.charge_as(&f.uid, Cost::of("upload", 1), Some("k")).await
    ));
    assert_eq!(f.remaining("upload").await, 3);
}

pub async fn refund_forgets_the_idempotency_key(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "idem-refund");
    let receipt = receipt(f.charge_as(&f.uid, Cost::of("upload", 1), Some("k")).await);
    f.store.refund(receipt, f.now()).await.unwrap();
    assert_eq!(f.remaining("upload").await, 5);
    // The request failed and was refunded: its retry must be charged.
    assert!(allowed(
        &f.charge_as(&f.uid, Cost::of("upload", 1), Some("k")).await
    ));
    assert_eq!(f.remaining("upload").await, 4);
}

pub async fn idempotency_key_expires_after_a_day(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "idem-ttl");
    let first = f.charge_as(&f.uid, Cost::of("ai", 1), Some("k")).await;
    assert!(allowed(&first));
    f.finish(first).await;
    f.advance(DAY - Duration::from_secs(1));
    let retry = f.charge_as(&f.uid, Cost::of("ai", 1), Some("k")).await;
    assert!(matches!(retry, ChargeOutcome::Replayed { .. }), "{retry:?}");
    f.advance(Duration::from_secs(1));
    // A day later the key is forgotten (and the refill came: 3 - 1 = 2).
    assert!(allowed(
        &f.charge_as(&f.uid, Cost::of("ai", 1), Some("k")).await
    ));
    assert_eq!(f.remaining("ai").await, 2);
}

/// A key expires after a day, and a new request may take it; a refund (or
/// a finish) of the old charge that comes after that concerns the old
/// request only. Found by the ledger's long run: the late refund forgot the
/// new request's key, so its retry was charged again.
pub async fn a_late_refund_or_finish_leaves_a_key_reused_since_alone(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "idem-late-refund");
    let old = receipt(f.charge_as(&f.uid, Cost::of("upload", 1), Some("k")).await);
    f.advance(DAY + Duration::from_secs(1));
    let new = f.charge_as(&f.uid, Cost::of("ai", 1), Some("k")).await;
    assert!(allowed(&new), "the expired key is a new request's: {new:?}");
    f.store.finish(&old).await.unwrap();
    let retry = f.charge_as(&f.uid, Cost::of("ai", 1), Some("k")).await;
    assert!(
        matches!(retry, ChargeOutcome::InProgress),
        "the old request's finish left the new one running: {retry:?}"
    );
    f.store.refund(old, f.now()).await.unwrap();
    let retry = f.charge_as(&f.uid, Cost::of("ai", 1), Some("k")).await;
    assert!(
        matches!(retry, ChargeOutcome::InProgress),
        "the old charge's refund kept the new request's key: {retry:?}"
    );
    let other = f.charge_as(&f.uid, Cost::of("upload", 1), Some("k")).await;
    assert!(matches!(other, ChargeOutcome::KeyReused), "{other:?}");
    assert_eq!(f.remaining("ai").await, 2, "the new request charged once");
}

pub async fn grant_and_set(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "admin");
    assert_eq!(
        f.adjust("upload", Adjustment::Grant(10)).await.remaining,
        15
    );
    assert_eq!(f.remaining("upload").await, 15);
    assert_eq!(f.adjust("upload", Adjustment::Set(2)).await.remaining, 2);
    assert_eq!(f.remaining("upload").await, 2);
    assert_eq!(f.adjust("ai", Adjustment::Set(0)).await.remaining, 0);
    assert!(!allowed(&f.charge_one("ai").await));
    // A grant applies a due refill first, then adds.
    f.advance(DAY);
    assert_eq!(f.adjust("ai", Adjustment::Grant(1)).await.remaining, 4);
}

pub async fn reset_refills_now_and_keeps_a_grant_above_capacity(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "reset");
    for _ in 0..3 {
        assert!(allowed(&f.charge_one("upload").await));
    }
    f.advance(Duration::from_secs(3600));
    let reset = f.adjust("upload", Adjustment::Reset).await;
    assert_eq!(reset.remaining, 5, "refilled to capacity");
    assert_eq!(reset.last_refill, f.now(), "refilled now");
    assert_eq!(f.balance("upload").await, reset);
    // The next refill counts from the reset, not from the user's creation.
    assert!(allowed(&f.charge_one("upload").await));
    f.advance(DAY - Duration::from_millis(1));
    assert_eq!(f.remaining("upload").await, 4);
    f.advance(Duration::from_millis(1));
    assert_eq!(f.remaining("upload").await, 5);
    // A granted balance above capacity is kept; only its refill moves.
    f.adjust("upload", Adjustment::Set(12)).await;
    f.advance(Duration::from_secs(60));
    let reset = f.adjust("upload", Adjustment::Reset).await;
    assert_eq!(reset.remaining, 12);
    assert_eq!(reset.last_refill, f.now());
    // Every kind at once: each up to its own capacity.
    f.adjust("ai", Adjustment::Set(0)).await;
    f.charge_one("daily").await;
    let all = f
        .adjust_as(
            &f.uid,
            &[
                ("upload", Adjustment::Reset),
                ("ai", Adjustment::Reset),
                ("daily", Adjustment::Reset),
            ],
            None,
        )
        .await;
    let remaining: Vec<u32> = all
        .balances()
        .unwrap()
        .iter()
        .map(|b| b.remaining)
        .collect();
    assert_eq!(remaining, [12, 3, 2]);
    assert!(
        all.balances()
            .unwrap()
            .iter()
            .all(|b| b.last_refill == f.now())
    );
    assert_eq!(
        f.remaining("daily").await,
        2,
        "up to capacity, not to initial"
    );
}

pub async fn a_keyed_grant_retried_grants_once(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "admin-idem");
    let grant = [("upload", Adjustment::Grant(10))];
    let first = f.adjust_as(&f.uid, &grant, Some("payment-1")).await;
    assert!(matches!(first, AdjustOutcome::Applied { .. }), "{first:?}");
    assert_eq!(first.balances().unwrap()[0].remaining, 15);
    assert!(allowed(&f.charge_one("upload").await));
    f.advance(Duration::from_secs(60));
    // The webhook retried: granted once, answered the first answer again.
    for _ in 0..2 {
        let retry = f.adjust_as(&f.uid, &grant, Some("payment-1")).await;
        assert_eq!(
            retry,
            AdjustOutcome::Replayed {
                balances: first.balances().unwrap().to_vec()
            }
        );
    }
    assert_eq!(f.remaining("upload").await, 14, "granted once");
    // Another key is another payment; keys are per user.
    f.adjust_as(&f.uid, &grant, Some("payment-2")).await;
    assert_eq!(f.remaining("upload").await, 24);
    let other = fresh_uid("admin-idem-other");
    let theirs = f.adjust_as(&other, &grant, Some("payment-1")).await;
    assert!(
        matches!(theirs, AdjustOutcome::Applied { .. }),
        "{theirs:?}"
    );
    // Sets and resets are made once per key too.
    let set = [("ai", Adjustment::Set(1))];
    f.adjust_as(&f.uid, &set, Some("set-1")).await;
    f.adjust("ai", Adjustment::Grant(1)).await;
    let retry = f.adjust_as(&f.uid, &set, Some("set-1")).await;
    assert!(matches!(retry, AdjustOutcome::Replayed { .. }), "{retry:?}");
    assert_eq!(f.remaining("ai").await, 2, "not set back to 1");
    let reset = [("ai", Adjustment::Reset)];
    f.adjust_as(&f.uid, &reset, Some("reset-1")).await;
    assert!(allowed(&f.charge_one("ai").await));
    let retry = f.adjust_as(&f.uid, &reset, Some("reset-1")).await;
    assert!(matches!(retry, AdjustOutcome::Replayed { .. }), "{retry:?}");
    assert_eq!(f.remaining("ai").await, 2, "not reset twice");
    // A day later the key is forgotten: the same key grants again.
    f.advance(DAY);
    let later = f.adjust_as(&f.uid, &grant, Some("payment-1")).await;
    assert!(matches!(later, AdjustOutcome::Applied { .. }), "{later:?}");
}

pub async fn a_key_reused_for_another_change_changes_nothing(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "admin-reused");
    f.adjust_as(&f.uid, &[("upload", Adjustment::Grant(10))], Some("k"))
        .await;
    for other in [
        Adjustment::Grant(11),
        Adjustment::Set(10),
        Adjustment::Reset,
    ] {
        let reused = f.adjust_as(&f.uid, &[("upload", other)], Some("k")).await;
        assert_eq!(reused, AdjustOutcome::KeyReused, "{other:?}");
    }
    let kind = f
        .adjust_as(&f.uid, &[("ai", Adjustment::Grant(10))], Some("k"))
        .await;
    assert_eq!(kind, AdjustOutcome::KeyReused);
    // Charges and adjustments share a user's keys.
    let charge = f.charge_as(&f.uid, Cost::of("upload", 1), Some("k")).await;
    assert!(matches!(charge, ChargeOutcome::KeyReused), "{charge:?}");
    assert!(allowed(
        &f.charge_as(&f.uid, Cost::of("upload", 1), Some("c")).await
    ));
    let grant = f
        .adjust_as(&f.uid, &[("upload", Adjustment::Grant(10))], Some("c"))
        .await;
    assert_eq!(grant, AdjustOutcome::KeyReused);
    assert_eq!(
        f.remaining("upload").await,
        14,
        "granted once, charged once"
    );
    assert_eq!(f.remaining("ai").await, 3, "never granted");
}

pub async fn reading_balances_never_writes(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "read");
    assert!(allowed(&f.charge_one("upload").await));
    let created = f.now();
    f.advance(DAY + Duration::from_secs(3600));
    let read = f.balance("upload").await;
    assert_eq!(read.remaining, 5, "a due refill shows");
    assert_eq!(read.last_refill, f.now());
    // Had the read written the refill, this charge would see it an hour old.
    f.advance(Duration::from_secs(3600));
    let outcome = f.charge_one("upload").await;
    assert_eq!(balances(&outcome)[0].last_refill, f.now());
    assert_ne!(balances(&outcome)[0].last_refill, created);
    // Reading an unknown user creates nothing either: their balance starts
    // when first charged.
    let ghost = fresh_uid("ghost");
    assert_eq!(f.balance_of(&ghost, "upload").await.remaining, 5);
    f.advance(Duration::from_secs(60));
    let outcome = f.charge_as(&ghost, Cost::of("upload", 1), None).await;
    assert_eq!(balances(&outcome)[0].last_refill, f.now());
}

pub async fn ensure_user_never_resets_a_balance(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "ensure");
    f.store
        .ensure_user(&f.uid, f.tickets.kinds(), f.now())
        .await
        .unwrap();
    assert!(allowed(&f.charge_one("upload").await));
    f.advance(Duration::from_secs(10));
    let again = f
        .store
        .ensure_user(&f.uid, f.tickets.kinds(), f.now())
        .await
        .unwrap();
    assert_eq!(again[0].remaining, 4);
    assert_eq!(again[0].last_refill, start());
}

pub async fn thousand_concurrent_charges_on_balance_five_allow_five(store: Arc<dyn TicketStore>) {
    let f = Arc::new(Fixture::new(store, "race"));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let f = f.clone();
            tokio::spawn(async move { allowed(&f.charge_one("upload").await) })
        })
        .collect();
    let mut allowed_count = 0;
    for task in tasks {
        if task.await.expect("task completes") {
            allowed_count += 1;
        }
    }
    assert_eq!(allowed_count, 5);
    assert_eq!(f.remaining("upload").await, 0);
}

pub async fn users_are_independent(store: Arc<dyn TicketStore>) {
    let f = Fixture::new(store, "alice");
    let bob = fresh_uid("bob");
    for _ in 0..3 {
        assert!(allowed(&f.charge_one("ai").await));
    }
    assert!(!allowed(&f.charge_one("ai").await));
    assert!(allowed(&f.charge_as(&bob, Cost::of("ai", 1), None).await));
    assert_eq!(f.balance_of(&bob, "ai").await.remaining, 2);
}
