//! Many app instances charging one user at once.

use std::time::Duration;

use tower_tickets::store::{ChargeOutcome, ChargeRequest, RedisStoreBuilder, TicketStore};
use tower_tickets::{Cost, TicketKind, Tickets, Uid};

/// Connects `instances` stores (each with its own connection) from
/// `builder`, sends `per_instance` concurrent one-ticket charges from each
/// on one new user with 5 upload tickets, and returns how many were allowed.
pub async fn allowed_among_concurrent_charges(
    builder: RedisStoreBuilder,
    instances: usize,
    per_instance: usize,
    uid: &Uid,
) -> usize {
    let tickets = Tickets::builder()
        .kind(TicketKind::new("upload", 5))
        .build()
        .unwrap();
    let cost = tickets.check_cost(&Cost::of("upload", 1)).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..instances {
        // Thousands of calls at once queue longer than the default 100 ms;
        // this is about atomicity, not latency.
        let store = builder
            .clone()
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .expect("connect");
        for _ in 0..per_instance {
            tasks.push(tokio::spawn(store.charge(ChargeRequest::new(
                uid.clone(),
                cost.clone(),
                tickets.now(),
            ))));
        }
    }
    let mut allowed = 0;
    for task in tasks {
        if let ChargeOutcome::Allowed { .. } = task.await.unwrap().expect("Redis answers") {
            allowed += 1;
        }
    }
    allowed
}
