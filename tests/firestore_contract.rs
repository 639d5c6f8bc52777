//! The shared store contract, unchanged, against Redis over Firestore (a
//! real `redis-server` and Google's Firestore emulator), in both write modes.
#![cfg(feature = "firestore")]

mod contract;
#[allow(dead_code)] // This binary uses part of the support code.
mod support {
    pub mod firestore_emulator;
    pub mod redis_server;
}

use std::time::Duration;

use chrono::NaiveTime;
use tower_tickets::store::{FirestoreSource, RedisStore, TimeSource, WriteMode, WriteThrough};
use tower_tickets::{Refill, TicketKind};

use support::firestore_emulator::{FIRESTORE_TIMEOUT, FirestoreEmulator};
use support::redis_server::shared_server;

/// The contract fixture's kinds: they name the Firestore fields.
fn kinds() -> [TicketKind; 3] {
    [
        TicketKind::new("upload", 5),
        TicketKind::new("ai", 3).label("AI"),
        TicketKind::new("daily", 2)
            .initial(1)
            .refill(Refill::daily_at(NaiveTime::MIN, chrono_tz::Europe::Paris)),
    ]
}

/// A store on the shared servers. The contract's uids are unique per test,
/// so tests share one Firestore project and one Redis key prefix per mode.
async fn store(mode: WriteMode, prefix: &str) -> WriteThrough {
    let db = FirestoreEmulator::shared().client("contract").await;
    let redis = RedisStore::standalone(shared_server().url())
        .key_prefix(prefix)
        // The contract drives a FakeClock; decisions take the caller's time.
        .time_source(TimeSource::Caller)
        // The emulator's JVM shares the CPU: a burst of 1,000 charges on a
        // loaded 2-core machine may see replies later than the 100 ms default.
        .timeout(Duration::from_secs(2));
    WriteThrough::builder(
        redis,
        FirestoreSource::new(db, kinds()).timeout(FIRESTORE_TIMEOUT),
    )
    .mode(mode)
    // The contract tests behaviour, not pacing: write often.
    .write_interval(Duration::from_millis(5))
    .connect()
    .await
    .expect("connect to the test servers")
}

mod sync_mode {
    use super::*;

    tower_tickets_contract!(store(WriteMode::Sync, "sync:"));
}

mod async_mode {
    use super::*;

    tower_tickets_contract!(store(WriteMode::Async, "async:"));
}
