//! Which store keeps the balances: the one place a backend is plugged in.

use std::sync::Arc;

use tower_tickets::store::{MemoryStore, TicketStore};

use crate::cli::{StoreArgs, StoreKind};

/// Opens the store the flags ask for, or says why it cannot.
pub async fn open(args: &StoreArgs) -> Result<Arc<dyn TicketStore>, String> {
    if let Some(project) = &args.firestore_project {
        return Err(format!(
            "--firestore-project {project}: the Firestore backend is not built yet \
             (the `firestore` feature enables nothing so far); \
             run without --firestore-project (and TICKETS_FIRESTORE_PROJECT)"
        ));
    }
    match args.store {
        StoreKind::Memory => Ok(Arc::new(MemoryStore::new())),
        StoreKind::Redis => redis(&args.redis_url).await,
    }
}

/// Redis decides; repeated refusals of a user at zero are answered from a
/// local cache for up to a second, so a client hammering at zero costs
/// about one Redis call per second.
#[cfg(feature = "redis")]
async fn redis(url: &str) -> Result<Arc<dyn TicketStore>, String> {
    use tower_tickets::store::{RedisStore, RefusalCache};

    let store = RedisStore::connect(url)
        .await
        .map_err(|e| format!("--store redis --redis-url {url}: {e}"))?;
    Ok(Arc::new(RefusalCache::new(store)))
}

#[cfg(not(feature = "redis"))]
async fn redis(url: &str) -> Result<Arc<dyn TicketStore>, String> {
    Err(format!(
        "--store redis --redis-url {url}: this demo was built without the `redis` feature; \
         rebuild it with the default features (or --features redis)"
    ))
}
