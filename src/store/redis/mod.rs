//! The Redis store: every decision is one atomic Lua script call.
//!
//! [`RedisStore`] keeps balances in Redis so that any number of app
//! instances share one truth. Each operation is one `EVALSHA` of a script
//! from `lua/` (built once, reloaded by the `redis` crate after a
//! `NOSCRIPT`), sent over one multiplexed connection per store (concurrent
//! calls are pipelined on one socket) that reconnects by itself. Standalone
//! Redis and Redis Cluster run the same scripts.
//!
//! # Keys
//! One user's keys share the hash tag `{uid}`, so every script touches a
//! single cluster slot:
//! - `<prefix>{<uid>}:t`: a hash with, per kind, `n:<kind>` (tickets left)
//!   and `r:<kind>` (last refill, Unix milliseconds). It expires a few
//!   refill periods after its last refill ([`RedisStoreBuilder::idle_periods`];
//!   an active user is refilled, and so kept, every period), so Redis memory
//!   follows active users. An expired user starts over with the initial
//!   balances, which never mints tickets: a refill was due anyway.
//! - `<prefix>{<uid>}:i:<Idempotency-Key>`: a charged idempotency key, kept
//!   24 h.
//!
//! Keys are only built from a validated [`Uid`](crate::Uid), so a hostile
//! id never reaches Redis; the prefix may not contain `{` or `}`.
//!
//! # Time
//! Decisions across instances need one clock: app servers' clocks drift
//! apart, and a server whose clock runs ahead would refill early (a peer
//! behind it would then see refill timestamps from the future). By default
//! ([`TimeSource::Redis`]) the scripts read Redis's own clock (`TIME`), so
//! every app server decides on the same time: the clock of the Redis server
//! that owns the user (in a cluster, the master of the user's slot). The
//! rolling refill cutoff is computed in Lua from the period; for calendar
//! refills (time zones are unknown to Lua) Rust sends the cutoffs around
//! its own instant and the script picks the one its clock has passed.
//! [`TimeSource::Caller`] uses the instant the layer passes in instead (the
//! registry's [`Clock`](crate::Clock)), for tests with a
//! [`FakeClock`](crate::FakeClock) and for single-instance apps. Either way
//! a refill timestamp never moves backwards: a clock behind the stored last
//! refill sees no refill due.
//!
//! # Faults
//! Every call is bounded by a timeout (100 ms by default). After repeated
//! failures a breaker answers [`CircuitOpen`](crate::store::StoreErrorKind)
//! at once, and lets one call through now and then to probe for recovery.
//! The layer turns errors into 503 (or lets fail-open kinds through). A
//! value under one of our keys that this crate did not write is a
//! [`Corrupt`](crate::store::StoreErrorKind) error naming the key.

mod breaker;
mod builder;
mod connection;
mod error;
mod keys;
mod reply;
mod scripts;
mod store;

pub use self::builder::{RedisStoreBuilder, TimeSource};
pub use self::error::RedisSetupError;
pub use self::store::RedisStore;
