//! The Redis store: every decision is one atomic Lua script call. See
//! [`RedisStore`] for keys, time and faults.

mod batcher;
mod builder;
mod changes;
mod charge_call;
mod connection;
mod error;
mod eviction;
mod keys;
mod library;
mod reply;
mod scripts;
mod store;

pub use self::builder::{RedisStoreBuilder, TimeSource};
pub use self::changes::ChangeSubscription;

pub use self::error::RedisSetupError;
pub(crate) use self::keys::KeyLayout;
pub(crate) use self::scripts::ScriptCall;
pub use self::store::RedisStore;
pub(crate) use self::store::{Cached, RefundLate};
