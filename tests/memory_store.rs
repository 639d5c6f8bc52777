//! The embedded store against the shared store contract.

mod contract;

use tower_tickets::store::MemoryStore;

tower_tickets_contract!(async { MemoryStore::new() });
