//! The write-through on a local Redis Cluster: three masters, a replica
//! each. The store contract in both write modes; the async recovery finding
//! pending users on every master; and a master killed under load in sync
//! mode, its replica taking over: no answered charge lost or minted, and the
//! service back by itself. The source is the in-memory one: these tests are
//! about Redis (the Firestore emulator runs the contract in
//! `firestore_contract.rs`).

#![cfg(feature = "redis")]

mod contract;
mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::NaiveTime;
use parking_lot::Mutex;
use tower_tickets::store::{
    ChargeOutcome, ChargeRequest, MemorySource, RedisStore, TicketStore, TimeSource, WriteMode,
    WriteThrough,
};
use tower_tickets::{Cost, Refill, TicketKind, Tickets, Uid};

use support::eventually::eventually;
use support::redis_server::{RedisCluster, shared_cluster};

/// The contract fixture's kinds: the source must know the registry's.
fn contract_kinds() -> [TicketKind; 3] {
    [
        TicketKind::new("upload", 5),
        TicketKind::new("ai", 3).label("AI"),
        TicketKind::new("daily", 2)
            .initial(1)
            .refill(Refill::daily_at(NaiveTime::MIN, chrono_tz::Europe::Paris)),
    ]
}

/// A write-through on the shared cluster, with a source of its own.
async fn contract_store(mode: WriteMode, prefix: &str) -> WriteThrough {
    let redis = RedisStore::cluster(shared_cluster().urls())
        .key_prefix(prefix)
        // The contract drives a FakeClock; decisions take the caller's time.
        .time_source(TimeSource::Caller)
        // 1,000 charges at once on a busy debug build queue past 100 ms.
        .timeout(Duration::from_secs(10));
    WriteThrough::builder(redis, MemorySource::new(contract_kinds()))
        .mode(mode)
        // The contract tests behaviour, not pacing: write often.
        .write_interval(Duration::from_millis(5))
        .connect()
        .await
        .expect("connect to the test cluster")
}

mod sync_mode {
    use super::*;

    tower_tickets_contract!(contract_store(WriteMode::Sync, "wt-sync:"));
}

mod async_mode {
    use super::*;

    tower_tickets_contract!(contract_store(WriteMode::Async, "wt-async:"));
}

/// A kind with room for every charge of the load below.
fn roomy() -> TicketKind {
    TicketKind::new("upload", 100_000)
}

fn tickets(store: &WriteThrough) -> Tickets {
    Tickets::builder()
        .kind(roomy())
        .store(store.clone())
        .build()
        .expect("the source has the registry's kinds")
}

/// Users whose hash tags spread over every master of `cluster`, with the
/// master of each.
fn users_on_every_master(cluster: &RedisCluster, test: &str, n: usize) -> Vec<(Uid, usize)> {
    let users: Vec<(Uid, usize)> = (0..n)
        .map(|i| {
            let uid = Uid::parse(&format!("{test}-{i}")).unwrap();
            let master = cluster.master_of(&format!("{{{}}}", uid.as_str()));
            (uid, master)
        })
        .collect();
    let masters: BTreeSet<usize> = users.iter().map(|(_, m)| *m).collect();
    assert_eq!(masters.len(), 3, "the users cover every master");
    users
}

async fn charge_one(tickets: &Tickets, store: &WriteThrough, uid: &Uid) -> Option<bool> {
    let cost = tickets.check_cost(&Cost::of("upload", 1)).unwrap();
    match store
        .charge(ChargeRequest::new(uid.clone(), cost, tickets.now()))
        .await
    {
        Ok(ChargeOutcome::Allowed { .. }) => Some(true),
        Ok(_) => Some(false),
        Err(_) => None,
    }
}

fn spent(source: &MemorySource, uid: &Uid) -> u32 {
    let stored = source.stored(uid).expect("the user is stored");
    roomy().capacity() - stored.balances[0].remaining
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_recovery_finds_pending_users_on_every_master() {
    let cluster = shared_cluster();
    let users = users_on_every_master(cluster, "recovered", 12);
    let source = MemorySource::new([roomy()]);
    let connect = |recovery: Duration| {
        WriteThrough::builder(
            RedisStore::cluster(cluster.urls())
                .key_prefix("wt-recovery:")
                .timeout(Duration::from_secs(10)),
            source.clone(),
        )
        .mode(WriteMode::Async)
        .write_interval(Duration::from_millis(5))
        .recovery_interval(recovery)
        .connect()
    };

    // An instance charges every user while the source is down, and dies:
    // the changes wait in Redis, on every master.
    let dying = connect(Duration::from_secs(3600)).await.unwrap();
    let on_dying = tickets(&dying);
    for (uid, _) in &users {
        on_dying.ensure_user(uid).await.unwrap();
    }
    source.set_reachable(false);
    for (uid, _) in &users {
        assert_eq!(charge_one(&on_dying, &dying, uid).await, Some(true));
    }
    // Its failed rounds end; it writes nothing more.
    eventually("the dying instance's rounds end", || {
        let idle = dying.pending_writes() == 0;
        async move { idle }
    })
    .await;
    drop(dying);
    source.set_reachable(true);
    for (uid, _) in &users {
        assert_eq!(spent(&source, uid), 0, "nothing reached the source yet");
    }

    // Another instance's first scan, the only one in this test, finds them.
    let survivor = connect(Duration::from_secs(3600)).await.unwrap();
    eventually("every pending user written by the survivor's scan", || {
        let all = users.iter().all(|(uid, _)| spent(&source, uid) == 1);
        async move { all }
    })
    .await;
    assert!(survivor.firestore_writes() >= users.len() as u64);
}

/// Per user: charges answered allowed, and answered with an error.
#[derive(Default, Clone, Copy)]
struct Answers {
    allowed: u32,
    errors: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_under_load_loses_and_mints_nothing_and_service_comes_back() {
    let mut cluster = RedisCluster::start();
    let users = users_on_every_master(&cluster, "failover", 24);
    let victim = users[0].1;
    let source = MemorySource::new([roomy()]).timeout(Duration::from_secs(30));
    let store = WriteThrough::builder(
        RedisStore::cluster(cluster.urls()).timeout(Duration::from_millis(500)),
        source.clone(),
    )
    .mode(WriteMode::Sync)
    .write_interval(Duration::from_millis(5))
    .connect()
    .await
    .unwrap();
    let tickets = tickets(&store);
    for (uid, _) in &users {
        tickets.ensure_user(uid).await.unwrap();
    }

    // Eight clients charge the users in turn until told to stop; each
    // answer is recorded, and for the victim's users, when each allowed
    // charge was sent and answered.
    let answers: Arc<Mutex<HashMap<Uid, Answers>>> = Arc::default();
    let victim_allowed_at: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let (answers, victim_allowed_at, stop) =
                (answers.clone(), victim_allowed_at.clone(), stop.clone());
            let (store, tickets, users) = (store.clone(), tickets.clone(), users.clone());
            tokio::spawn(async move {
                let mut turn = client;
                while !stop.load(Ordering::Relaxed) {
                    let (uid, master) = &users[turn % users.len()];
                    turn += 1;
                    let sent = Instant::now();
                    let answer = charge_one(&tickets, &store, uid).await;
                    let mut answers = answers.lock();
                    let entry = answers.entry(uid.clone()).or_default();
                    match answer {
                        Some(true) => {
                            entry.allowed += 1;
                            if *master == victim {
                                victim_allowed_at.lock().push((sent, Instant::now()));
                            }
                        }
                        Some(false) => panic!("{uid} ran out of tickets"),
                        None => entry.errors += 1,
                    }
                }
            })
        })
        .collect();
    let allowed_on_victim = || victim_allowed_at.lock().len();
    eventually("load on the victim master", || {
        let n = allowed_on_victim();
        async move { n >= 100 }
    })
    .await;

    // The victim master dies; the cluster promotes its replica.
    let before_kill = allowed_on_victim();
    cluster.nodes[victim].kill();
    let killed_at = Instant::now();
    eventually("the victim's users allowed again, 100 times", || {
        let n = allowed_on_victim();
        async move { n >= before_kill + 100 }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    store.settled().await;

    // Service is back when a charge sent after the kill is allowed.
    let back_at = victim_allowed_at
        .lock()
        .iter()
        .filter(|(sent, _)| *sent > killed_at)
        .map(|(_, answered)| *answered)
        .min()
        .expect("allowed since");
    eprintln!(
        "failover: no charge of the killed master's users was allowed for {:?} \
         (cluster-node-timeout {} ms)",
        back_at - killed_at,
        support::redis_server::NODE_TIMEOUT_MS
    );
    // Every allowed charge is in the source (none minted); a charge
    // answered with an error may be there too (a ticket lost, never one
    // minted), but nothing else is.
    let answers = answers.lock();
    for (uid, _) in &users {
        let Answers { allowed, errors } = answers.get(uid).copied().unwrap_or_default();
        let spent = spent(&source, uid);
        assert!(
            (allowed..=allowed + errors).contains(&spent),
            "{uid}: {allowed} allowed, {errors} errors, the source counts {spent}"
        );
    }
}
