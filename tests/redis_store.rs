//! The Redis store on a standalone server: the shared contract, then what
//! only Redis can show (connections of several instances, commands sent,
//! keys written, values it did not write).

#![cfg(feature = "redis")]

mod contract;
mod support;

use tower_tickets::store::{RedisStore, TimeSource};

use support::redis_server::shared_server;

/// A store deciding on the caller's clock, as the contract's `FakeClock`
/// needs.
async fn caller_time_store(url: String) -> RedisStore {
    RedisStore::standalone(url)
        .time_source(TimeSource::Caller)
        // The contract is about decisions, not latency: 1,000 charges at
        // once on a busy debug build may queue past the default 100 ms.
        .timeout(CONTRACT_TIMEOUT)
        .connect()
        .await
        .expect("connect to the test server")
}

const CONTRACT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

tower_tickets_contract!(caller_time_store(shared_server().url()));

mod focused {
    use std::sync::Arc;

    use tower_tickets::store::{
        AdjustRequest, Adjustment, ChargeOutcome, ChargeRequest, KindBalance, RedisStore,
        RefusalCache, StoreErrorKind, TicketStore, TimeSource,
    };
    use tower_tickets::{Cost, FakeClock, IdempotencyKey, Refill, TicketKind, Tickets, Uid};

    use futures::future::join_all;

    use super::contract::{fresh_uid, start};
    use super::support::race::allowed_among_concurrent_charges;
    use super::support::redis_server::{RedisServer, shared_server};
    use super::support::ticket_app;

    /// Kinds for tests that call the store directly.
    fn tickets() -> Tickets {
        Tickets::builder()
            .kind(TicketKind::new("upload", 5))
            .kind(TicketKind::new("ai", 3))
            .clock(FakeClock::at(start()))
            .build()
            .unwrap()
    }

    fn charge_request(tickets: &Tickets, uid: &Uid, kind: &str) -> ChargeRequest {
        ChargeRequest::new(
            uid.clone(),
            tickets.check_cost(&Cost::of(kind, 1)).unwrap(),
            tickets.now(),
        )
    }

    async fn store_on(server: &RedisServer, prefix: &str) -> RedisStore {
        RedisStore::standalone(server.url())
            .key_prefix(prefix)
            .connect()
            .await
            .expect("connect to the test server")
    }

    /// A store on `server`, batching its charges or not.
    async fn batching_store(server: &RedisServer, batching: bool) -> RedisStore {
        RedisStore::standalone(server.url())
            .batching(batching)
            .connect()
            .await
            .expect("connect to the test server")
    }

    /// [`store_on`] the shared server, deciding on the caller's clock (the
    /// tests' `FakeClock`).
    async fn caller_clock_store(prefix: &str) -> RedisStore {
        RedisStore::standalone(shared_server().url())
            .key_prefix(prefix)
            .time_source(TimeSource::Caller)
            .connect()
            .await
            .expect("connect to the test server")
    }

    /// `(command, calls)` from `INFO commandstats`.
    fn command_calls(server: &RedisServer) -> Vec<(String, u64)> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut server.connection())
            .unwrap();
        info.lines()
            .filter_map(|line| {
                let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = stats.strip_prefix("calls=")?.split(',').next()?;
                Some((name.to_string(), calls.parse().ok()?))
            })
            .collect()
    }

    /// How often `command` ran since the stats were reset.
    fn calls_of(server: &RedisServer, command: &str) -> u64 {
        command_calls(server)
            .iter()
            .find(|(name, _)| name == command)
            .map_or(0, |(_, calls)| *calls)
    }

    /// How many scripts (`EVALSHA`) and functions (`FCALL`: the charge, on
    /// this Redis 7) ran since the stats were reset.
    fn store_calls(server: &RedisServer) -> u64 {
        calls_of(server, "evalsha") + calls_of(server, "fcall")
    }

    /// Charges `uid` once (allowed); returns how many functions (`FCALL`)
    /// and scripts (`EVALSHA`) that took.
    async fn calls_of_one_charge(
        store: &RedisStore,
        server: &RedisServer,
        tickets: &Tickets,
        uid: &Uid,
    ) -> (u64, u64) {
        reset_stats(server);
        let charge = store.charge(charge_request(tickets, uid, "upload"));
        assert!(matches!(charge.await, Ok(ChargeOutcome::Allowed { .. })));
        (calls_of(server, "fcall"), calls_of(server, "evalsha"))
    }

    fn reset_stats(server: &RedisServer) {
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .exec(&mut server.connection())
            .unwrap();
    }

    /// The commands a script may run; `INFO commandstats` counts them too.
    const SCRIPT_COMMANDS: [&str; 11] = [
        "hmget", "hset", "hdel", "hkeys", "pttl", "pexpire", "persist", "time", "get", "set", "del",
    ];

    /// How many scripts the store ran since the stats were reset, after
    /// checking that it sent nothing else and decided one charge per call:
    /// every other command counted is one a script runs, and each decision
    /// reads the user's hash once, so `hmget` counts the scripts run (none
    /// loaded, none sent as `EVAL`).
    fn script_calls(server: &RedisServer) -> u64 {
        let calls = command_calls(server);
        let count = |name: &str| calls.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c);
        for (name, _) in &calls {
            assert!(
                // The test's own commands are INFO and CONFIG RESETSTAT.
                name == "evalsha"
                    || name == "fcall"
                    || name == "info"
                    || name.starts_with("config")
                    || SCRIPT_COMMANDS.contains(&name.as_str()),
                "the store sent {name}: {calls:?}"
            );
        }
        let store_calls = count("evalsha") + count("fcall");
        assert_eq!(count("hmget"), store_calls, "{calls:?}");
        store_calls
    }

    fn keys(server: &RedisServer, pattern: &str) -> Vec<String> {
        let mut connection = server.connection();
        let mut keys: Vec<String> = redis::Commands::scan_match(&mut connection, pattern)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        keys.sort();
        keys
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn four_instances_with_their_own_connections_allow_exactly_five() {
        let builder = RedisStore::standalone(shared_server().url()).key_prefix("race:");
        let uid = fresh_uid("four-instances");
        assert_eq!(
            allowed_among_concurrent_charges(builder, 4, 1000, &uid).await,
            5
        );
    }

    #[tokio::test]
    async fn each_decision_is_one_script_call_allowed_or_refused() {
        let server = RedisServer::start();
        let store = store_on(&server, "calls:").await;
        let tickets = tickets();
        let (alice, bob) = (fresh_uid("alice"), fresh_uid("bob"));
        // Warm up: the scripts are loaded and the connection is open.
        store
            .charge(charge_request(&tickets, &alice, "ai"))
            .await
            .unwrap();
        reset_stats(&server);
        let mut outcomes = (0, 0);
        for uid in [&alice, &bob].into_iter().cycle().take(20) {
            match store
                .charge(charge_request(&tickets, uid, "ai"))
                .await
                .unwrap()
            {
                ChargeOutcome::Allowed { .. } => outcomes.0 += 1,
                _ => outcomes.1 += 1,
            }
        }
        assert_eq!(outcomes, (5, 15), "alice had 2 left, bob 3");
        assert_eq!(script_calls(&server), 20);
    }

    #[tokio::test]
    async fn charges_queued_together_go_in_fewer_calls_each_decided() {
        let server = RedisServer::start();
        let store = store_on(&server, "batched:").await;
        let tickets = tickets();
        let users: Vec<Uid> = (0..40)
            .map(|n| fresh_uid(&format!("batched-{n}")))
            .collect();
        store
            .charge(charge_request(&tickets, &users[0], "upload"))
            .await
            .unwrap();
        reset_stats(&server);
        // 4 charges of "ai" (capacity 3) per user, all in flight at once.
        let charges = users
            .iter()
            .cycle()
            .take(4 * users.len())
            .map(|uid| store.charge(charge_request(&tickets, uid, "ai")));
        let mut allowed = std::collections::HashMap::<&Uid, usize>::new();
        for (uid, outcome) in users.iter().cycle().zip(join_all(charges).await) {
            if let ChargeOutcome::Allowed { .. } = outcome.unwrap() {
                *allowed.entry(uid).or_default() += 1;
            }
        }
        assert!(allowed.values().all(|&n| n == 3), "{allowed:?}");
        assert_eq!(allowed.len(), users.len());
        assert_eq!(calls_of(&server, "hmget"), 160, "one decision per charge");
        let calls = store_calls(&server);
        assert!(
            calls < 160,
            "charges queued while a call was in flight went together: {calls} calls"
        );
    }

    #[tokio::test]
    async fn charges_of_different_shapes_in_one_call() {
        // Per user, at once: a charge of one kind, one of two kinds, and a
        // keyed charge sent twice (the retry finds it in progress).
        let server = RedisServer::start();
        let store = store_on(&server, "shapes:").await;
        let tickets = tickets();
        let users: Vec<Uid> = (0..6).map(|n| fresh_uid(&format!("shapes-{n}"))).collect();
        let both = tickets
            .check_cost(&Cost::of("upload", 2).and("ai", 1))
            .unwrap();
        let mut charges = Vec::new();
        for uid in &users {
            charges.push(charge_request(&tickets, uid, "upload"));
            let mut two_kinds = charge_request(&tickets, uid, "upload");
            two_kinds.cost = both.clone();
            charges.push(two_kinds);
            for _ in 0..2 {
                let mut keyed = charge_request(&tickets, uid, "ai");
                keyed.idempotency_key = Some(IdempotencyKey::parse("retry-1").unwrap());
                charges.push(keyed);
            }
        }
        reset_stats(&server);
        let outcomes = join_all(charges.into_iter().map(|request| store.charge(request))).await;
        for (uid, outcomes) in users.iter().zip(outcomes.chunks(4)) {
            let kinds: Vec<_> = outcomes
                .iter()
                .map(|outcome| match outcome {
                    Ok(ChargeOutcome::Allowed { .. }) => "allowed",
                    Ok(ChargeOutcome::InProgress) => "in progress",
                    other => panic!("{uid}: {other:?}"),
                })
                .collect();
            assert_eq!(
                kinds,
                ["allowed", "allowed", "allowed", "in progress"],
                "{uid}"
            );
            let read = store
                .balances(uid, tickets.kinds(), tickets.now())
                .await
                .unwrap();
            assert_eq!((read[0].remaining, read[1].remaining), (2, 1), "{uid}");
        }
        let calls = store_calls(&server);
        assert!(calls < 24, "the charges went together: {calls} calls");
    }

    #[tokio::test]
    async fn charges_alike_but_for_their_amounts_each_pay_their_own() {
        // One shape (one kind), two amounts, in one call: each decision
        // pays its own amount, not its neighbour's.
        let server = RedisServer::start();
        let store = store_on(&server, "amounts:").await;
        let tickets = tickets();
        let users: Vec<Uid> = (0..8).map(|n| fresh_uid(&format!("amounts-{n}"))).collect();
        let three = tickets.check_cost(&Cost::of("upload", 3)).unwrap();
        let mut charges = Vec::new();
        for uid in &users {
            charges.push(charge_request(&tickets, uid, "upload"));
            let mut more = charge_request(&tickets, uid, "upload");
            more.cost = three.clone();
            charges.push(more);
            charges.push(charge_request(&tickets, uid, "upload"));
        }
        reset_stats(&server);
        let outcomes = join_all(charges.into_iter().map(|request| store.charge(request))).await;
        for outcome in outcomes {
            assert!(
                matches!(outcome, Ok(ChargeOutcome::Allowed { .. })),
                "{outcome:?}"
            );
        }
        for uid in &users {
            let read = store
                .balances(uid, tickets.kinds(), tickets.now())
                .await
                .unwrap();
            assert_eq!(read[0].remaining, 0, "{uid}: 5 - 1 - 3 - 1");
        }
        let calls = store_calls(&server);
        assert!(calls < 24, "the charges went together: {calls} calls");
    }

    #[tokio::test]
    async fn without_batching_each_charge_is_its_own_call() {
        let server = RedisServer::start();
        let store = batching_store(&server, false).await;
        let tickets = tickets();
        let uid = fresh_uid("unbatched");
        store
            .charge(charge_request(&tickets, &uid, "upload"))
            .await
            .unwrap();
        reset_stats(&server);
        let charges = (0..10).map(|_| store.charge(charge_request(&tickets, &uid, "upload")));
        let allowed = join_all(charges)
            .await
            .into_iter()
            .filter(|outcome| matches!(outcome, Ok(ChargeOutcome::Allowed { .. })))
            .count();
        assert_eq!(allowed, 4);
        assert_eq!(script_calls(&server), 10);
    }

    /// On Redis 7 a charge is the charge library's function (`FCALL`), its
    /// helpers defined once; a server that lost its functions (`FUNCTION
    /// FLUSH`, as a restart that does not persist them) is given the
    /// library again by the next charge, which is decided all the same.
    #[tokio::test]
    async fn charges_run_as_a_function_a_server_that_lost_it_gets_again() {
        let server = RedisServer::start();
        for batching in [true, false] {
            let store = batching_store(&server, batching).await;
            let tickets = tickets();
            let uid = fresh_uid("function");
            let calls = calls_of_one_charge(&store, &server, &tickets, &uid).await;
            assert_eq!(calls, (1, 0), "FCALL, EVALSHA; batching {batching}");

            redis::cmd("FUNCTION")
                .arg("FLUSH")
                .exec(&mut server.connection())
                .unwrap();
            reset_stats(&server);
            let after = store.charge(charge_request(&tickets, &uid, "upload"));
            let Ok(ChargeOutcome::Allowed { balances, .. }) = after.await else {
                panic!("decided once the library is back (batching {batching})");
            };
            assert_eq!(balances[0].remaining, 3, "two charges, each once");
            assert_eq!(calls_of(&server, "function|load"), 1, "{batching}");
            assert_eq!(calls_of(&server, "fcall"), 2, "the call, then again");
        }
    }

    /// Every charge decides at Redis's clock of its own call: the charge
    /// library keeps its Lua from call to call, and the instant it read
    /// once must not outlive that call, or no refill would ever come due.
    /// (The test waits, by polling Redis `TIME`, for Redis's clock to pass
    /// the refill.)
    #[tokio::test]
    async fn each_charge_reads_the_redis_clock_anew() {
        let period = std::time::Duration::from_millis(40);
        let tickets = Tickets::builder()
            .kind(TicketKind::new("burst", 1).refill(Refill::rolling(period)))
            .build()
            .unwrap();
        for batching in [true, false] {
            let store = batching_store(shared_server(), batching).await;
            let uid = fresh_uid("redis-clock");
            let charge = || store.charge(charge_request(&tickets, &uid, "burst"));
            let Ok(ChargeOutcome::Allowed { balances, .. }) = charge().await else {
                panic!("a new user's first ticket (batching {batching})");
            };
            let refilled = balances[0].last_refill;
            assert!(matches!(charge().await, Ok(ChargeOutcome::Refused { .. })));
            let due = refilled + period;
            while redis_time(shared_server()) <= due {
                tokio::task::yield_now().await;
            }
            let Ok(ChargeOutcome::Allowed { balances, .. }) = charge().await else {
                panic!("refilled once Redis's clock passed the period (batching {batching})");
            };
            assert!(
                balances[0].last_refill >= due,
                "refilled at the new instant"
            );
        }
    }

    /// The server's clock (`TIME`).
    fn redis_time(server: &RedisServer) -> chrono::DateTime<chrono::Utc> {
        let (secs, micros): (i64, u32) =
            redis::cmd("TIME").query(&mut server.connection()).unwrap();
        chrono::DateTime::from_timestamp(secs, micros * 1000).unwrap()
    }

    /// The charge library keeps the plans it read (kind specs, shapes), a
    /// bounded number of them: charges of many different plans on one
    /// server, more than it keeps, are each decided on their own plan, the
    /// first ones again after they were dropped.
    #[tokio::test]
    async fn each_plan_is_decided_as_sent_however_many_there_are() {
        let server = RedisServer::start();
        let store = store_on(&server, "plans:").await;
        let registries: Vec<(u32, Tickets)> = (1..=80)
            .map(|capacity| {
                let tickets = Tickets::builder()
                    .kind(TicketKind::new("upload", capacity))
                    .build()
                    .unwrap();
                (capacity, tickets)
            })
            .collect();
        for round in 0..2 {
            for (capacity, tickets) in &registries {
                let uid = fresh_uid("plan");
                let charge = store.charge(charge_request(tickets, &uid, "upload"));
                let Ok(ChargeOutcome::Allowed { balances, .. }) = charge.await else {
                    panic!("a new user of capacity {capacity} (round {round}) pays one");
                };
                assert_eq!(balances[0].remaining, capacity - 1, "round {round}");
            }
        }
        assert_eq!(
            calls_of(&server, "evalsha"),
            0,
            "every charge was the function"
        );
    }

    /// A server that refuses `FUNCTION LOAD` (here an ACL; a server before
    /// Redis 7 does not know the command) keeps the charge as a script.
    #[tokio::test]
    async fn a_server_that_refuses_functions_charges_by_script() {
        let server = RedisServer::start();
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg("-function")
            .exec(&mut server.connection())
            .unwrap();
        let tickets = tickets();
        for batching in [false, true] {
            // It connects, keeping the script.
            let store = batching_store(&server, batching).await;
            let uid = fresh_uid("no-functions");
            let calls = calls_of_one_charge(&store, &server, &tickets, &uid).await;
            assert_eq!(calls, (0, 1), "FCALL, EVALSHA; batching {batching}");
            // Several users at once: with batching, in fewer calls than
            // charges, each decided on its own.
            let uids: Vec<Uid> = (0..20).map(|_| fresh_uid("no-functions")).collect();
            let charges = uids
                .iter()
                .map(|uid| store.charge(charge_request(&tickets, uid, "upload")));
            for outcome in join_all(charges).await {
                let Ok(ChargeOutcome::Allowed { balances, .. }) = outcome else {
                    panic!("each new user pays one (batching {batching}): {outcome:?}");
                };
                assert_eq!(balances[0].remaining, 4);
            }
            let calls = calls_of(&server, "evalsha");
            assert_eq!(calls == 21, !batching, "{calls} calls for 21 charges");
        }
    }

    /// A charge dropped while it waits in the batching queue (a call is in
    /// flight) is never sent: nobody would hear whether it was spent.
    #[tokio::test]
    async fn a_queued_charge_dropped_before_it_is_sent_is_not_sent() {
        let server = RedisServer::start();
        let tickets = tickets();
        let store = RedisStore::standalone(server.url())
            .key_prefix("dropped:")
            .timeout(std::time::Duration::from_secs(10))
            .connect()
            .await
            .unwrap();
        let mut admin = server.connection();
        let (first, dropped) = (fresh_uid("first"), fresh_uid("dropped"));
        redis::cmd("CLIENT")
            .arg(&["PAUSE", "10000", "WRITE"])
            .exec(&mut admin)
            .unwrap();
        let mut in_flight = store.charge(charge_request(&tickets, &first, "upload"));
        assert!(futures::poll!(&mut in_flight).is_pending());
        // The batcher's turn (one thread): it sends that charge, whose call
        // waits on the paused server.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let mut queued = store.charge(charge_request(&tickets, &dropped, "upload"));
        assert!(futures::poll!(&mut queued).is_pending());
        drop(queued);
        redis::cmd("CLIENT")
            .arg("UNPAUSE")
            .exec(&mut admin)
            .unwrap();
        assert!(matches!(
            in_flight.await.unwrap(),
            ChargeOutcome::Allowed { .. }
        ));
        // A later charge goes after the dropped one's turn.
        let after = fresh_uid("after");
        store
            .charge(charge_request(&tickets, &after, "upload"))
            .await
            .unwrap();
        let sent: bool = redis::cmd("EXISTS")
            .arg(format!("dropped:{{{dropped}}}:t"))
            .query(&mut admin)
            .unwrap();
        assert!(!sent, "the dropped charge reached Redis");
    }

    #[tokio::test]
    async fn a_corrupt_user_fails_alone_in_a_batch() {
        let server = RedisServer::start();
        let store = store_on(&server, "mixed:").await;
        let tickets = tickets();
        let corrupt = fresh_uid("corrupt");
        redis::cmd("SET")
            .arg(format!("mixed:{{{corrupt}}}:t"))
            .arg("hello")
            .exec(&mut server.connection())
            .unwrap();
        let healthy: Vec<Uid> = (0..8).map(|n| fresh_uid(&format!("healthy-{n}"))).collect();
        reset_stats(&server);
        let charges = std::iter::once(&corrupt)
            .chain(&healthy)
            .cycle()
            .take(3 * (healthy.len() + 1))
            .map(|uid| store.charge(charge_request(&tickets, uid, "upload")));
        let outcomes = join_all(charges).await;
        for (uid, outcome) in std::iter::once(&corrupt)
            .chain(&healthy)
            .cycle()
            .zip(&outcomes)
        {
            match outcome {
                Err(error) if uid == &corrupt => {
                    assert_eq!(error.kind(), StoreErrorKind::Corrupt, "{error}");
                    assert!(error.to_string().contains("holds a string"), "{error}");
                }
                Ok(ChargeOutcome::Allowed { .. }) if uid != &corrupt => {}
                other => panic!("{uid}: {other:?}"),
            }
        }
        let read = store
            .balances(&healthy[0], tickets.kinds(), tickets.now())
            .await;
        assert_eq!(read.unwrap()[0].remaining, 2);
        let calls = store_calls(&server);
        assert!(calls < 27, "the charges went together: {calls} calls");
    }

    #[tokio::test]
    async fn charges_in_one_call_each_decide_at_their_own_instant() {
        // An hourly refill; two users at zero since `start()`, charged in
        // one call at two instants on the caller's clock: only the one past
        // the refill is allowed.
        let server = RedisServer::start();
        let store = RedisStore::standalone(server.url())
            .time_source(TimeSource::Caller)
            .connect()
            .await
            .unwrap();
        let tickets = Tickets::builder()
            .kind(
                TicketKind::new("ai", 3)
                    .initial(0)
                    .refill(Refill::rolling(std::time::Duration::from_secs(3600))),
            )
            .clock(FakeClock::at(start()))
            .build()
            .unwrap();
        let (early, late) = (fresh_uid("early"), fresh_uid("late"));
        for uid in [&early, &late] {
            store
                .ensure_user(uid, tickets.kinds(), start())
                .await
                .unwrap();
        }
        let at = |uid: &Uid, minutes| {
            let mut request = charge_request(&tickets, uid, "ai");
            request.now = start() + chrono::TimeDelta::minutes(minutes);
            store.charge(request)
        };
        let (early_outcome, late_outcome) = tokio::join!(at(&early, 10), at(&late, 70));
        assert!(matches!(
            early_outcome.unwrap(),
            ChargeOutcome::Refused { .. }
        ));
        assert!(matches!(
            late_outcome.unwrap(),
            ChargeOutcome::Allowed { .. }
        ));
    }

    #[tokio::test]
    async fn scripts_flushed_from_redis_are_loaded_again() {
        let server = RedisServer::start();
        let store = store_on(&server, "flushed:").await;
        let tickets = tickets();
        let uid = fresh_uid("flushed");
        redis::cmd("SCRIPT")
            .arg("FLUSH")
            .exec(&mut server.connection())
            .unwrap();
        let outcome = store
            .charge(charge_request(&tickets, &uid, "upload"))
            .await
            .expect("NOSCRIPT, then loaded and run");
        assert!(matches!(outcome, ChargeOutcome::Allowed { .. }));
        let read = store.balances(&uid, tickets.kinds(), tickets.now()).await;
        assert_eq!(read.unwrap()[0].remaining, 4);
    }

    #[tokio::test]
    async fn refusals_at_zero_cost_one_call_per_cache_lifetime() {
        let server = RedisServer::start();
        let store = RefusalCache::new(store_on(&server, "cached:").await);
        let clock = FakeClock::at(start());
        let tickets = Tickets::builder()
            .kind(TicketKind::new("ai", 3))
            .clock(clock.clone())
            .build()
            .unwrap();
        let uid = fresh_uid("hammer");
        let charge = || store.charge(charge_request(&tickets, &uid, "ai"));
        for _ in 0..3 {
            charge().await.unwrap();
        }
        reset_stats(&server);
        for _ in 0..100 {
            let refused = charge().await.unwrap();
            assert!(matches!(refused, ChargeOutcome::Refused { .. }));
        }
        assert_eq!(script_calls(&server), 1);
        // One second later the refusal is asked again, once.
        clock.advance(std::time::Duration::from_secs(1));
        for _ in 0..100 {
            charge().await.unwrap();
        }
        assert_eq!(script_calls(&server), 2);
        // A grant through this instance is seen at once.
        let ai = tickets.kind("ai").unwrap();
        store
            .adjust(AdjustRequest::new(
                uid.clone(),
                [(ai.clone(), Adjustment::Grant(1))],
                tickets.now(),
            ))
            .await
            .unwrap();
        assert!(matches!(
            charge().await.unwrap(),
            ChargeOutcome::Allowed { .. }
        ));
    }

    #[tokio::test]
    async fn hostile_uids_never_reach_redis() {
        let server = RedisServer::start();
        let tickets = ticket_app::tickets(store_on(&server, "app:").await);
        let router = ticket_app::router(&tickets);
        let hostile: [&[u8]; 12] = [
            b"a}{b",
            b"{victim}",
            b"victim}:t",
            b"../users/admin",
            b"a b",
            b"*",
            b"a:b",
            b"__name__",
            b"",
            "é".as_bytes(),
            b"\xff\xfe",
            &[b'a'; 129],
        ];
        for uid in hostile {
            let reply = ticket_app::post_as(&router, "/upload", uid).await;
            assert_eq!(reply.status, 401, "{:?}", String::from_utf8_lossy(uid));
            assert_eq!(
                reply.content_type.as_deref(),
                Some("application/problem+json")
            );
        }
        assert_eq!(
            keys(&server, "*"),
            Vec::<String>::new(),
            "nothing reached Redis"
        );
        let reply = ticket_app::post_as(&router, "/upload", b"fine_uid-1").await;
        assert_eq!(reply.status, 201);
        assert_eq!(keys(&server, "*"), ["app:{fine_uid-1}:t"]);
    }

    #[tokio::test]
    async fn foreign_values_under_our_keys_are_clear_errors() {
        let tickets = tickets();
        let store = store_on(shared_server(), "foreign:").await;
        let mut redis = shared_server().connection();
        let charge = |uid: &Uid, key: Option<&str>| {
            let mut request = charge_request(&tickets, uid, "upload");
            request.idempotency_key = key.map(|k| IdempotencyKey::parse(k).unwrap());
            store.charge(request)
        };

        let string_user = fresh_uid("string");
        redis::cmd("SET")
            .arg(format!("foreign:{{{string_user}}}:t"))
            .arg("hello")
            .exec(&mut redis)
            .unwrap();
        let error = charge(&string_user, None).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Corrupt);
        let message = error.to_string();
        assert!(
            message.contains(&format!("foreign:{{{string_user}}}:t holds a string")),
            "{message}"
        );

        let garbled_user = fresh_uid("garbled");
        redis::cmd("HSET")
            .arg(format!("foreign:{{{garbled_user}}}:t"))
            .arg("n:upload")
            .arg("-3")
            .arg("r:upload")
            .arg("1")
            .exec(&mut redis)
            .unwrap();
        let error = charge(&garbled_user, None).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Corrupt);
        assert!(
            error.to_string().contains("n:upload holds \"-3\""),
            "{error}"
        );
        let read = store
            .balances(&garbled_user, tickets.kinds(), tickets.now())
            .await;
        assert_eq!(read.unwrap_err().kind(), StoreErrorKind::Corrupt);

        let keyed_user = fresh_uid("keyed");
        redis::cmd("LPUSH")
            .arg(format!("foreign:{{{keyed_user}}}:i:retry-1"))
            .arg("x")
            .exec(&mut redis)
            .unwrap();
        let error = charge(&keyed_user, Some("retry-1")).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Corrupt);
        assert!(error.to_string().contains("idempotency key"), "{error}");
        // Nothing was spent by the failed calls, and others are unaffected.
        assert!(matches!(
            charge(&fresh_uid("healthy"), None).await.unwrap(),
            ChargeOutcome::Allowed { .. }
        ));
    }

    #[tokio::test]
    async fn idle_users_expire_after_a_few_of_their_longest_periods() {
        let hour = std::time::Duration::from_secs(3600);
        let tickets = Tickets::builder()
            .kind(TicketKind::new("hourly", 5).refill(tower_tickets::Refill::rolling(hour)))
            .kind(TicketKind::new("daily", 5))
            .build()
            .unwrap();
        let store = RedisStore::standalone(shared_server().url())
            .key_prefix("idle:")
            .idle_periods(2)
            .connect()
            .await
            .unwrap();
        let uid = fresh_uid("idle");
        let key = format!("idle:{{{uid}}}:t");
        let ttl = || -> i64 {
            redis::cmd("PTTL")
                .arg(&key)
                .query(&mut shared_server().connection())
                .unwrap()
        };
        store
            .charge(charge_request(&tickets, &uid, "hourly"))
            .await
            .unwrap();
        assert!((1..=2 * 3_600_000).contains(&ttl()), "two hours");
        store
            .charge(charge_request(&tickets, &uid, "daily"))
            .await
            .unwrap();
        assert!(ttl() > 2 * 3_600_000, "two days: {}", ttl());
        store
            .charge(charge_request(&tickets, &uid, "hourly"))
            .await
            .unwrap();
        assert!(ttl() > 2 * 3_600_000, "never shortened: {}", ttl());
    }

    /// With Redis alone, forgetting a user must lose nothing: a grant above
    /// capacity, or a kind whose new users start elsewhere than at capacity,
    /// keeps the hash until that no longer holds.
    #[tokio::test]
    async fn a_user_whom_forgetting_would_change_is_kept() {
        let tickets = Tickets::builder()
            .kind(TicketKind::new("upload", 5))
            .kind(TicketKind::new("welcome", 3).initial(1))
            .build()
            .unwrap();
        let store = store_on(shared_server(), "kept:").await;
        let upload = tickets.kind("upload").unwrap();
        let ttl_of = |uid: &Uid| -> i64 {
            redis::cmd("PTTL")
                .arg(format!("kept:{{{uid}}}:t"))
                .query(&mut shared_server().connection())
                .unwrap()
        };
        let charge_upload = |uid: &Uid| store.charge(charge_request(&tickets, uid, "upload"));

        let granted = fresh_uid("granted");
        charge_upload(&granted).await.unwrap();
        assert!(ttl_of(&granted) > 0, "a user at capacity expires");
        let granted_to = [(upload.clone(), Adjustment::Grant(3))];
        let outcome = store
            .adjust(AdjustRequest::new(
                granted.clone(),
                granted_to,
                tickets.now(),
            ))
            .await
            .unwrap();
        assert_eq!(outcome.balances().unwrap()[0].remaining, 7);
        assert_eq!(ttl_of(&granted), -1, "a grant above capacity is kept");
        charge_upload(&granted).await.unwrap();
        assert_eq!(ttl_of(&granted), -1, "still above capacity");
        charge_upload(&granted).await.unwrap();
        assert!(ttl_of(&granted) > 0, "back at capacity, it expires again");

        let welcomed = fresh_uid("welcomed");
        store
            .ensure_user(&welcomed, tickets.kinds(), tickets.now())
            .await
            .unwrap();
        assert_eq!(
            ttl_of(&welcomed),
            -1,
            "a forgotten user would come back with 1 welcome ticket, not 3"
        );
        let set = [(upload.clone(), Adjustment::Set(2))];
        let outcome = store
            .adjust(AdjustRequest::new(welcomed.clone(), set, tickets.now()))
            .await
            .unwrap();
        assert_eq!(outcome.balances().unwrap()[0].remaining, 2);
        assert_eq!(
            ttl_of(&welcomed),
            -1,
            "a call on another kind leaves the welcome kind's hold"
        );

        let returning = fresh_uid("returning");
        let welcome = tickets.kind("welcome").unwrap();
        store
            .ensure_user(&returning, std::slice::from_ref(welcome), tickets.now())
            .await
            .unwrap();
        assert_eq!(ttl_of(&returning), -1, "the welcome kind holds the user");
        charge_upload(&returning).await.unwrap();
        assert_eq!(
            ttl_of(&returning),
            -1,
            "a kind's first charge leaves another kind's hold"
        );
        let newcomer = fresh_uid("newcomer");
        charge_upload(&newcomer).await.unwrap();
        assert!(ttl_of(&newcomer) > 0, "a new user's hash expires");
    }

    /// A charge of one kind without an idempotency key is decided by the
    /// charge's plain path when the user's state allows it (charge.lua,
    /// `decided_plainly`), else by the general one; a keyed charge always by
    /// the general one. From each stored state, both must answer alike and
    /// leave the same hash and expiry.
    #[tokio::test]
    async fn the_plain_decision_agrees_with_the_general_one() {
        let tickets = tickets();
        let store = caller_clock_store("plain:").await;
        let mut redis = shared_server().connection();
        let t = tickets.now().timestamp_millis();
        let (recent, old) = ((t - 1_000).to_string(), (t - 25 * 3_600_000).to_string());
        let states: [&[(&str, &str)]; 10] = [
            &[("n:upload", "3"), ("r:upload", &recent)],
            &[("n:upload", "0"), ("r:upload", &recent)],
            &[("n:upload", "5"), ("r:upload", &recent)],
            &[("n:upload", "7"), ("r:upload", &recent)],
            &[("n:upload", "3"), ("r:upload", &recent), ("p:upload", "1")],
            &[("n:upload", "3"), ("r:upload", &old)],
            &[("n:upload", "1e0"), ("r:upload", &recent)],
            &[("n:upload", "x"), ("r:upload", &recent)],
            &[("n:upload", "3")],
            &[],
        ];
        let summary =
            |outcome: Result<ChargeOutcome, tower_tickets::store::StoreError>| match outcome {
                Ok(ChargeOutcome::Allowed { balances, .. }) => format!("allowed {balances:?}"),
                Ok(ChargeOutcome::Refused { balances }) => format!("refused {balances:?}"),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => format!("{:?}", e.kind()),
            };
        for (s, state) in states.iter().enumerate() {
            let mut after = Vec::new();
            for keyed in [false, true] {
                let uid = fresh_uid(&format!("state-{s}"));
                let key = format!("plain:{{{uid}}}:t");
                for (field, value) in state.iter() {
                    redis::cmd("HSET")
                        .arg(&key)
                        .arg(field)
                        .arg(value)
                        .exec(&mut redis)
                        .unwrap();
                }
                let mut request = charge_request(&tickets, &uid, "upload");
                if keyed {
                    request.idempotency_key = Some(IdempotencyKey::parse("plain-1").unwrap());
                }
                let outcome = summary(store.charge(request).await);
                let fields: std::collections::BTreeMap<String, String> =
                    redis::cmd("HGETALL").arg(&key).query(&mut redis).unwrap();
                let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut redis).unwrap();
                after.push((outcome, fields, ttl.signum()));
            }
            assert_eq!(after[0], after[1], "state {state:?}: plain, then general");
        }
    }

    #[tokio::test]
    async fn decisions_use_the_redis_clock_by_default() {
        let tickets = tickets();
        let store = store_on(shared_server(), "clock:").await;
        let redis_now = || -> i64 {
            let (secs, micros): (i64, i64) = redis::cmd("TIME")
                .query(&mut shared_server().connection())
                .unwrap();
            secs * 1000 + micros / 1000
        };
        let uid = fresh_uid("clock");
        // The caller's clock says March 2026; Redis's is the real one.
        let before = redis_now();
        let outcome = store
            .charge(charge_request(&tickets, &uid, "upload"))
            .await
            .unwrap();
        let after = redis_now();
        let ChargeOutcome::Allowed { balances, .. } = outcome else {
            panic!("{outcome:?}")
        };
        let refilled = balances[0].last_refill.timestamp_millis();
        assert!(
            (before..=after).contains(&refilled),
            "{before} <= {refilled} <= {after}"
        );
    }

    #[tokio::test]
    async fn seeding_never_overwrites_what_redis_holds() {
        let tickets = tickets();
        let store = caller_clock_store("seed:").await;
        let upload = tickets.kind("upload").unwrap().clone();
        let uid = fresh_uid("seed");
        let seeded_at = tickets.now() - chrono::TimeDelta::hours(2);
        let seed = |remaining| {
            let balance = KindBalance {
                remaining,
                last_refill: seeded_at,
            };
            store.seed_if_absent(&uid, &[(upload.clone(), balance)], tickets.now())
        };
        assert_eq!(seed(2).await.unwrap()[0].remaining, 2);
        assert_eq!(seed(2).await.unwrap()[0].last_refill, seeded_at);
        store
            .charge(charge_request(&tickets, &uid, "upload"))
            .await
            .unwrap();
        assert_eq!(seed(5).await.unwrap()[0].remaining, 1, "kept, not reseeded");
        let both: Vec<Arc<TicketKind>> = tickets.kinds().to_vec();
        let read = store.balances(&uid, &both, tickets.now()).await.unwrap();
        assert_eq!(read.iter().map(|b| b.remaining).collect::<Vec<_>>(), [1, 3]);
    }
}
