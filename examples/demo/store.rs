//! Which store keeps the balances: the one place a backend is plugged in.

use std::sync::Arc;

use tower_tickets::TicketKind;
use tower_tickets::store::{MemoryStore, TicketStore};

use crate::cli::{RedisTarget, StoreArgs, StoreKind};

/// Opens the store the flags ask for, or says why it cannot. `kinds` are the
/// registry's: the Firestore source maps each to its document fields.
pub async fn open(args: &StoreArgs, kinds: &[TicketKind]) -> Result<Arc<dyn TicketStore>, String> {
    if let Some(project) = &args.firestore_project {
        return firestore(project, args.redis(), kinds).await;
    }
    match (args.store, args.redis()) {
        (StoreKind::Memory, RedisTarget::Cluster(_)) => Err(format!(
            "{}: the embedded store uses no Redis; add --store redis (or --firestore-project)",
            args.redis()
        )),
        (StoreKind::Memory, RedisTarget::Standalone(_)) => Ok(Arc::new(MemoryStore::new())),
        (StoreKind::Redis, target) => redis(target).await,
    }
}

/// Redis decides; repeated refusals of a user at zero are answered from a
/// local cache for up to a second, so a client hammering at zero costs
/// about one Redis call per second. A grant or refund through another
/// instance drops the cached refusal at once (Redis pub/sub).
#[cfg(feature = "redis")]
async fn redis(target: RedisTarget) -> Result<Arc<dyn TicketStore>, String> {
    use tower_tickets::store::RefusalCache;

    let store = redis_store(&target)
        .connect()
        .await
        .map_err(|e| format!("--store redis {target}: {e}"))?;
    let cache = RefusalCache::new(store.clone())
        .shared_through(&store)
        .await
        .map_err(|e| format!("--store redis {target}: {e}"))?;
    Ok(Arc::new(cache))
}

/// The Redis store's configuration for `target`, with the defaults.
#[cfg(feature = "redis")]
fn redis_store(target: &RedisTarget) -> tower_tickets::store::RedisStoreBuilder {
    use tower_tickets::store::RedisStore;

    match target {
        RedisTarget::Standalone(url) => RedisStore::standalone(url.clone()),
        RedisTarget::Cluster(nodes) => RedisStore::cluster(nodes.clone()),
    }
}

#[cfg(not(feature = "redis"))]
async fn redis(target: RedisTarget) -> Result<Arc<dyn TicketStore>, String> {
    Err(format!(
        "--store redis {target}: this demo was built without the `redis` feature; \
         rebuild it with `--features redis` (`--features redis,firestore,firebase` has every \
         flag)"
    ))
}

/// Redis decides, Firestore keeps `users/{uid}` (sync write-through: a
/// request is answered once Firestore holds its charge).
#[cfg(feature = "firestore")]
async fn firestore(
    project: &str,
    redis: RedisTarget,
    kinds: &[TicketKind],
) -> Result<Arc<dyn TicketStore>, String> {
    use tower_tickets::store::{FirestoreSource, RefusalCache, WriteThrough};

    let source = FirestoreSource::connect(project, kinds.iter().cloned())
        .await
        .map_err(|e| format!("--firestore-project {project}: {e}"))?;
    let store = WriteThrough::builder(redis_store(&redis), source)
        .connect()
        .await
        .map_err(|e| format!("--firestore-project {project} {redis}: {e}"))?;
    let cache = RefusalCache::new(store.clone())
        .shared_through(store.redis())
        .await
        .map_err(|e| format!("--firestore-project {project} {redis}: {e}"))?;
    Ok(Arc::new(cache))
}

#[cfg(not(feature = "firestore"))]
async fn firestore(
    project: &str,
    _redis: RedisTarget,
    _kinds: &[TicketKind],
) -> Result<Arc<dyn TicketStore>, String> {
    Err(format!(
        "--firestore-project {project}: this demo was built without the `firestore` feature; \
         rebuild it with `--features firestore` (`--features redis,firestore,firebase` has \
         every flag)"
    ))
}
