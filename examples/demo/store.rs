//! Which store keeps the balances: the one place a backend is plugged in.

use std::sync::Arc;

use tower_tickets::store::{MemoryStore, TicketStore};

use crate::cli::{StoreArgs, StoreKind};

/// Opens the store the flags ask for, or says why it cannot.
pub fn open(args: &StoreArgs) -> Result<Arc<dyn TicketStore>, String> {
    if let Some(project) = &args.firestore_project {
        return Err(format!(
            "--firestore-project {project}: the Firestore backend is not built yet \
             (the `firestore` feature enables nothing so far); \
             run without --firestore-project (and TICKETS_FIRESTORE_PROJECT) to keep balances in memory"
        ));
    }
    match args.store {
        StoreKind::Memory => Ok(Arc::new(MemoryStore::new())),
        StoreKind::Redis => Err(format!(
            "--store redis ({}): the Redis backend is not built yet \
             (the `redis` feature enables nothing so far); use --store memory, the default",
            args.redis_url
        )),
    }
}
