//! Which store keeps the balances: the one place a backend is plugged in.

use std::sync::Arc;

use tower_tickets::TicketKind;
use tower_tickets::store::{MemoryStore, TicketStore};

use crate::cli::{StoreArgs, StoreKind};

/// Opens the store the flags ask for, or says why it cannot. `kinds` are the
/// registry's: the Firestore source maps each to its document fields.
pub async fn open(args: &StoreArgs, kinds: &[TicketKind]) -> Result<Arc<dyn TicketStore>, String> {
    if let Some(project) = &args.firestore_project {
        return firestore(project, &args.redis_url, kinds).await;
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
         rebuild it with `--features redis` (`--features redis,firestore,firebase` has every \
         flag)"
    ))
}

/// Redis decides, Firestore keeps `users/{uid}` (sync write-through: a
/// request is answered once Firestore holds its charge).
#[cfg(feature = "firestore")]
async fn firestore(
    project: &str,
    redis_url: &str,
    kinds: &[TicketKind],
) -> Result<Arc<dyn TicketStore>, String> {
    use tower_tickets::store::{FirestoreSource, RedisStore, RefusalCache, WriteThrough};

    let source = FirestoreSource::connect(project, kinds.iter().cloned())
        .await
        .map_err(|e| format!("--firestore-project {project}: {e}"))?;
    let store = WriteThrough::builder(RedisStore::standalone(redis_url), source)
        .connect()
        .await
        .map_err(|e| format!("--firestore-project {project} --redis-url {redis_url}: {e}"))?;
    Ok(Arc::new(RefusalCache::new(store)))
}

#[cfg(not(feature = "firestore"))]
async fn firestore(
    project: &str,
    _redis_url: &str,
    _kinds: &[TicketKind],
) -> Result<Arc<dyn TicketStore>, String> {
    Err(format!(
        "--firestore-project {project}: this demo was built without the `firestore` feature; \
         rebuild it with `--features firestore` (`--features redis,firestore,firebase` has \
         every flag)"
    ))
}
