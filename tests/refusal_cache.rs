//! The refusal cache keeps the store contract: it may only answer what the
//! store would have answered.

mod contract;

use std::time::Duration;

use tower_tickets::store::{MemoryStore, RefusalCache};

tower_tickets_contract!(async {
    RefusalCache::with_ttl(MemoryStore::new(), Duration::from_secs(3600))
});
