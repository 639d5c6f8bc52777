//! The Redis store on a local 3-master Redis Cluster: the same scripts,
//! each on the single slot of the user's hash tag.

#![cfg(feature = "redis")]

mod contract;
mod support;

use tower_tickets::store::{RedisStore, TimeSource};

use support::redis_server::shared_cluster;

async fn caller_time_store(nodes: Vec<String>) -> RedisStore {
    RedisStore::cluster(nodes)
        .time_source(TimeSource::Caller)
        // The contract is about decisions, not latency: 1,000 charges at
        // once on a busy debug build may queue past the default 100 ms.
        .timeout(CONTRACT_TIMEOUT)
        .connect()
        .await
        .expect("connect to the test cluster")
}

const CONTRACT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

tower_tickets_contract!(caller_time_store(shared_cluster().urls()));

mod focused {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use tower_tickets::store::{ChargeOutcome, ChargeRequest, RedisStore, TicketStore};
    use tower_tickets::{Cost, IdempotencyKey, TicketKind, Tickets};

    use super::contract::fresh_uid;
    use super::support::race::allowed_among_concurrent_charges;
    use super::support::redis_server::shared_cluster;

    fn tickets() -> Tickets {
        Tickets::builder()
            .kind(TicketKind::new("upload", 5))
            .kind(TicketKind::new("ai", 3))
            .build()
            .unwrap()
    }

    async fn store() -> RedisStore {
        RedisStore::cluster(shared_cluster().urls())
            .key_prefix("cluster:")
            // 4,000 calls at once queue longer than the default 100 ms; these
            // tests are about atomicity and routing, not latency.
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn four_instances_with_their_own_connections_allow_exactly_five() {
        let builder = RedisStore::cluster(shared_cluster().urls()).key_prefix("cluster:");
        let uid = fresh_uid("cluster-race");
        assert_eq!(
            allowed_among_concurrent_charges(builder, 4, 1000, &uid).await,
            5
        );
    }

    #[tokio::test]
    async fn users_spread_over_every_master() {
        let tickets = tickets();
        let store = store().await;
        for n in 0..30 {
            let outcome = store
                .charge(
                    ChargeRequest::new(
                        fresh_uid(&format!("spread{n}")),
                        tickets
                            .check_cost(&Cost::of("upload", 1).and("ai", 1))
                            .unwrap(),
                        tickets.now(),
                    )
                    .with_idempotency_key(Some(IdempotencyKey::parse("k").unwrap())),
                )
                .await
                .expect("a multi-kind, keyed charge runs on one slot");
            assert!(matches!(outcome, ChargeOutcome::Allowed { .. }));
        }
        let masters_used: BTreeSet<u16> = shared_cluster()
            .nodes
            .iter()
            .filter(|node| {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg("cluster:{spread*")
                    .query(&mut node.connection())
                    .unwrap();
                !keys.is_empty()
            })
            .map(|node| node.port())
            .collect();
        assert_eq!(masters_used.len(), 3, "30 users land on all 3 masters");
        // Each master decided its users' charges with the charge library's
        // function (loaded on every master), not the script.
        for node in &shared_cluster().nodes {
            let role: redis::Value = redis::cmd("ROLE").query(&mut node.connection()).unwrap();
            let redis::Value::Array(role) = role else {
                panic!("ROLE is a list: {role:?}")
            };
            if role.first() != Some(&redis::Value::BulkString(b"master".to_vec())) {
                continue;
            }
            let stats: String = redis::cmd("INFO")
                .arg("commandstats")
                .query(&mut node.connection())
                .unwrap();
            assert!(
                stats
                    .lines()
                    .any(|line| line.starts_with("cmdstat_fcall:calls=")),
                "master {} ran no FCALL: {stats}",
                node.port()
            );
        }
    }
}
