//! The refusal cache keeps the store contract: it may only answer what the
//! store would have answered.

mod contract;
#[cfg(feature = "redis")]
#[allow(dead_code)] // This binary uses part of the support code.
mod support {
    pub mod eventually;
    pub mod redis_server;
}

use std::time::Duration;

use tower_tickets::store::{MemoryStore, RefusalCache};

tower_tickets_contract!(async {
    RefusalCache::with_ttl(MemoryStore::new(), Duration::from_secs(3600))
});

/// Instances on one Redis tell each other of balance changes: a grant
/// through one drops the other's cached refusal at once. The TTL is an
/// hour, so only the change feed can make the second charge below allowed.
#[cfg(feature = "redis")]
mod across_instances {
    use std::time::Duration;

    use tower_tickets::store::{
        AdjustRequest, Adjustment, ChargeOutcome, ChargeRequest, RedisStore, RedisStoreBuilder,
        RefusalCache, TicketStore,
    };
    use tower_tickets::{Cost, TicketKind, Tickets};

    use super::contract::fresh_uid;
    use super::support::eventually::eventually;
    use super::support::redis_server::{shared_cluster, shared_server};

    async fn instance(redis: RedisStoreBuilder) -> RefusalCache<RedisStore> {
        let store = redis.key_prefix("feed:").connect().await.unwrap();
        RefusalCache::with_ttl(store.clone(), Duration::from_secs(3600))
            .shared_through(&store)
            .await
            .unwrap()
    }

    async fn a_grant_through_one_drops_the_others_refusal(redis: impl Fn() -> RedisStoreBuilder) {
        let tickets = Tickets::builder()
            .kind(TicketKind::new("upload", 1))
            .build()
            .unwrap();
        let (granting, refusing) = (instance(redis()).await, instance(redis()).await);
        let uid = fresh_uid("feed");
        let cost = tickets.check_cost(&Cost::of("upload", 1)).unwrap();
        let charge =
            || refusing.charge(ChargeRequest::new(uid.clone(), cost.clone(), tickets.now()));
        let allowed = |outcome: &ChargeOutcome| matches!(outcome, ChargeOutcome::Allowed { .. });
        assert!(allowed(&charge().await.unwrap()));
        // Refused, and cached for an hour.
        assert!(!allowed(&charge().await.unwrap()));

        let upload = tickets.kind("upload").unwrap().clone();
        granting
            .adjust(AdjustRequest::new(
                uid.clone(),
                [(upload, Adjustment::Grant(1))],
                tickets.now(),
            ))
            .await
            .unwrap();
        eventually("the other instance's cached refusal dropped", || async {
            allowed(&charge().await.unwrap())
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_one_server() {
        a_grant_through_one_drops_the_others_refusal(|| {
            RedisStore::standalone(shared_server().url())
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_a_cluster() {
        a_grant_through_one_drops_the_others_refusal(|| {
            RedisStore::cluster(shared_cluster().urls())
        })
        .await;
    }
}
