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

/// A write-through on the shared cluster, with a source of its own, and
/// so a key prefix of its own: another store's recovery scan would find its
/// pending users and write them to a source that never held them.
async fn contract_store(mode: WriteMode, prefix: &str) -> WriteThrough {
    static STORES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STORES.fetch_add(1, Ordering::Relaxed);
    let redis = RedisStore::cluster(shared_cluster().urls())
        .key_prefix(format!("{prefix}{n}:"))
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

    tower_tickets_contract!(contract_store(WriteMode::Sync, "wt-sync-"));
}

mod async_mode {
    use super::*;

    tower_tickets_contract!(contract_store(WriteMode::Async, "wt-async-"));
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

/// A sync write-through on `cluster` over an in-memory source, its users
/// created.
async fn sync_store(
    cluster: &RedisCluster,
    users: &[(Uid, usize)],
) -> (WriteThrough, MemorySource) {
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
    for (uid, _) in users {
        tickets(&store).ensure_user(uid).await.unwrap();
    }
    (store, source)
}

/// Eight clients charging the users in turn until stopped; every answer is
/// recorded, and for the users of one watched master, when each allowed
/// charge was sent and answered.
struct Load {
    answers: Arc<Mutex<HashMap<Uid, Answers>>>,
    watched_allowed: Arc<Mutex<Vec<(Instant, Instant)>>>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(store: &WriteThrough, users: &[(Uid, usize)], watched: usize) -> Self {
        let answers: Arc<Mutex<HashMap<Uid, Answers>>> = Arc::default();
        let watched_allowed: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..8)
            .map(|client| {
                let (answers, watched_allowed, stop) =
                    (answers.clone(), watched_allowed.clone(), stop.clone());
                let (store, users) = (store.clone(), users.to_vec());
                let tickets = tickets(&store);
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
                                if *master == watched {
                                    watched_allowed.lock().push((sent, Instant::now()));
                                }
                            }
                            Some(false) => panic!("{uid} ran out of tickets"),
                            None => entry.errors += 1,
                        }
                    }
                })
            })
            .collect();
        Self {
            answers,
            watched_allowed,
            stop,
            clients,
        }
    }

    /// Charges of the watched master's users allowed so far.
    fn watched(&self) -> usize {
        self.watched_allowed.lock().len()
    }

    /// Waits until the watched master's users were allowed `n` times.
    async fn until_watched(&self, n: usize, what: &str) {
        eventually(what, || {
            let allowed = self.watched();
            async move { allowed >= n }
        })
        .await;
    }

    /// When a charge of the watched users sent after `since` was first
    /// allowed.
    fn first_allowed_since(&self, since: Instant) -> Instant {
        self.watched_allowed
            .lock()
            .iter()
            .filter(|(sent, _)| *sent > since)
            .map(|(_, answered)| *answered)
            .min()
            .expect("allowed since")
    }

    /// Stops the clients, lets the store settle, and checks every user:
    /// every allowed charge is in the source (none minted); a charge
    /// answered with an error may be there too (a ticket lost, never one
    /// minted), but nothing else is.
    async fn stop_and_check(
        self,
        store: &WriteThrough,
        source: &MemorySource,
        users: &[(Uid, usize)],
    ) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.unwrap();
        }
        store.settled().await;
        let answers = self.answers.lock();
        for (uid, _) in users {
            let Answers { allowed, errors } = answers.get(uid).copied().unwrap_or_default();
            let spent = spent(source, uid);
            assert!(
                (allowed..=allowed + errors).contains(&spent),
                "{uid}: {allowed} allowed, {errors} errors, the source counts {spent}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_under_load_loses_and_mints_nothing_and_service_comes_back() {
    let mut cluster = RedisCluster::failing_over_quickly();
    let users = users_on_every_master(&cluster, "failover", 24);
    let victim = users[0].1;
    let (store, source) = sync_store(&cluster, &users).await;
    let load = Load::start(&store, &users, victim);
    load.until_watched(100, "load on the victim master").await;

    // The victim master dies; the cluster promotes its replica.
    let before_kill = load.watched();
    cluster.nodes[victim].kill();
    let killed_at = Instant::now();
    load.until_watched(
        before_kill + 100,
        "the victim's users allowed again, 100 times",
    )
    .await;
    // Service is back when a charge sent after the kill is allowed.
    let back_at = load.first_allowed_since(killed_at);
    eprintln!(
        "failover: no charge of the killed master's users was allowed for {:?} \
         (cluster-node-timeout {} ms)",
        back_at - killed_at,
        support::redis_server::QUICK_NODE_TIMEOUT_MS
    );
    load.stop_and_check(&store, &source, &users).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resharding_under_load_loses_and_mints_nothing() {
    let cluster = RedisCluster::start();
    let users = users_on_every_master(&cluster, "resharded", 24);
    let (from, to) = (users[0].1, (users[0].1 + 1) % 3);
    let (store, source) = sync_store(&cluster, &users).await;
    let load = Load::start(&store, &users, from);
    load.until_watched(100, "load on the first master").await;

    // Every slot of the first master's users moves to the next master,
    // keys and all, while the clients charge them (ASK, then MOVED).
    let moved: Vec<u16> = users
        .iter()
        .filter(|(_, master)| *master == from)
        .map(|(uid, _)| cluster.slot_of(&format!("{{{}}}", uid.as_str())))
        .collect();
    let before = load.watched();
    let cluster = tokio::task::spawn_blocking({
        let moved = moved.clone();
        move || {
            for slot in moved {
                cluster.move_slot(slot, from, to);
            }
            cluster
        }
    })
    .await
    .unwrap();
    load.until_watched(before + 100, "the moved users allowed again, 100 times")
        .await;
    load.stop_and_check(&store, &source, &users).await;
    // The users' keys live on their new master only.
    let keys_in = |node: usize, slot: u16| -> usize {
        redis::cmd("CLUSTER")
            .arg("COUNTKEYSINSLOT")
            .arg(slot)
            .query(&mut cluster.nodes[node].connection())
            .unwrap()
    };
    for slot in moved {
        assert_eq!(
            (keys_in(from, slot), keys_in(to, slot) > 0),
            (0, true),
            "slot {slot}"
        );
    }
}
