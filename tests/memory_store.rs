//! The embedded store against the shared store contract.

mod contract;

use tower_tickets::store::MemoryStore;

tower_tickets_contract!(async { MemoryStore::new() });

mod idle_users {
    use std::sync::Arc;
    use std::time::Duration;

    use tower_tickets::store::{
        AdjustRequest, Adjustment, ChargeOutcome, ChargeRequest, MemoryStore, TicketStore,
    };
    use tower_tickets::{Cost, FakeClock, TicketKind, Tickets, Uid};

    /// DESIGN §4: memory follows active users. A user idle for a few periods
    /// whom forgetting changes nothing is forgotten; one above capacity is
    /// kept; either way every balance reads as before.
    #[tokio::test]
    async fn idle_users_are_forgotten_when_that_changes_no_balance() {
        let clock = FakeClock::at("2026-03-27T08:00:00Z".parse().unwrap());
        let store = MemoryStore::new();
        let tickets = Tickets::builder()
            .kind(TicketKind::new("upload", 5))
            .store(store.clone())
            .clock(clock.clone())
            .build()
            .unwrap();
        let upload: Arc<TicketKind> = tickets.kind("upload").unwrap().clone();
        let cost = tickets.check_cost(&Cost::of("upload", 1)).unwrap();
        for n in 0..2000 {
            let uid = Uid::parse(&format!("idle-{n}")).unwrap();
            let request = ChargeRequest::new(uid, cost.clone(), tickets.now());
            store.charge(request).await.unwrap();
        }
        let granted = Uid::parse("granted").unwrap();
        store
            .adjust(AdjustRequest::new(
                granted.clone(),
                [(upload.clone(), Adjustment::Set(50))],
                tickets.now(),
            ))
            .await
            .unwrap();
        assert_eq!(store.users(), 2001);

        clock.advance(Duration::from_secs(3 * 24 * 3600));
        // Activity sweeps the stripes in turn.
        let active = Uid::parse("active").unwrap();
        for _ in 0..20_000 {
            let request = ChargeRequest::new(active.clone(), cost.clone(), tickets.now());
            let ChargeOutcome::Allowed { receipt, .. } = store.charge(request).await.unwrap()
            else {
                panic!("refunded each time: always affordable");
            };
            store.refund(receipt, tickets.now()).await.unwrap();
        }
        assert!(store.users() <= 3, "{} users kept", store.users());
        let kinds = [upload];
        let idle = Uid::parse("idle-7").unwrap();
        let read = store.balances(&idle, &kinds, tickets.now()).await.unwrap();
        assert_eq!(read[0].remaining, 5, "forgotten: what the refill gives");
        let read = store
            .balances(&granted, &kinds, tickets.now())
            .await
            .unwrap();
        assert_eq!(read[0].remaining, 50, "kept: a grant above capacity");
    }
}
