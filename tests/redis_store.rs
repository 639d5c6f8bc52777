//! The Redis store on a standalone server: the shared contract, then what
//! only Redis can show (connections of several instances, commands sent,
//! keys written, values it did not write).

#![cfg(feature = "redis")]

mod contract;
mod support;

use tower_tickets::store::{RedisStore, TimeSource};

use support::redis_server::shared_server;

/// A store deciding on the caller's clock, as the contract's `FakeClock`
/// needs.
async fn caller_time_store(url: String) -> RedisStore {
    RedisStore::standalone(url)
        .time_source(TimeSource::Caller)
        .connect()
        .await
        .expect("connect to the test server")
}

tower_tickets_contract!(caller_time_store(shared_server().url()));
