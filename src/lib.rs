#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod admin;
mod balances;
mod charged;
mod clock;
mod config_error;
mod cost;
#[cfg(feature = "axum")]
mod extract;
mod future;
mod idempotency;
pub mod identity;
mod kind;
mod layer;
pub mod messages;
mod ratelimit_headers;
mod refill;
mod refusal_answers;
mod rejection;
mod service;
pub mod store;
pub mod telemetry;
mod tickets;
mod uid;
mod unanswered;

pub use self::admin::{Adjusted, AdminError};
pub use self::balances::{BalanceView, Balances};
pub use self::charged::Charged;
pub use self::clock::{Clock, FakeClock, SystemClock};
pub use self::config_error::ConfigError;
pub use self::cost::{CheckedCost, Cost, CostFn, CostItem, CostRejection};
pub use self::future::ResponseFuture;
pub use self::idempotency::{
    IDEMPOTENCY_KEY, IDEMPOTENCY_TTL, IdempotencyKey, InvalidIdempotencyKey, Replays,
    RequestFingerprint,
};
pub use self::kind::{FailMode, TicketKind};
pub use self::layer::TicketLayer;
pub use self::ratelimit_headers::{RATELIMIT, RATELIMIT_POLICY};
pub use self::refill::Refill;
pub use self::rejection::{
    ALREADY_PROCESSED_TYPE, IDEMPOTENCY_KEY_REUSED_TYPE, QUOTA_EXCEEDED_TYPE, QuotaExceeded,
    QuotaItem, REQUEST_IN_PROGRESS_TYPE, Rejection,
};
pub use self::service::TicketService;
pub use self::tickets::{Tickets, TicketsBuilder};
pub use self::uid::{MAX_UID_LEN, Uid, UidError, UidPolicy};
