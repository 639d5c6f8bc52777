//! The Redis store: every decision is one atomic Lua script call. See
//! [`RedisStore`] for keys, time and faults.

mod builder;
mod connection;
mod error;
mod keys;
mod reply;
mod scripts;
mod store;

pub use self::builder::{RedisStoreBuilder, TimeSource};
#[cfg(feature = "firestore")]
pub(crate) use self::connection::Connection;
pub use self::error::RedisSetupError;
#[cfg(feature = "firestore")]
pub(crate) use self::keys::KeyLayout;
pub use self::store::RedisStore;
