//! The ledger: a model-checked, randomized test that no ticket is minted or
//! lost (issue 9). `docs/ledger.md` says what is modelled, the faults per
//! target, the invariants and the commands.
//!
//! Each test runs seeded random histories (a fixed set of seeds, then a
//! fresh one that it prints) against one target, applying every operation
//! to the reference model and to the target's stores at once, and checks
//! every answer against the model. `LEDGER_SEED=<n>` replays one seed,
//! `LEDGER_OPS=<n>` sets the operations per seed.

#![cfg(feature = "firestore")]

mod checker;
mod faults;
mod history;
mod idempotency;
mod model;
mod targets;

#[allow(dead_code)] // This binary uses part of the support code.
#[path = "../support"]
mod support {
    pub mod eventually;
    pub mod firestore_emulator;
    pub mod redis_server;
    pub mod tcp_gate;
}

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveTime, TimeDelta, Utc};
use http::Method;
use tower_tickets::store::{
    AdjustRequest, ChargeOutcome, ChargeRequest, KindBalance, Receipt, StoreError, StoreErrorKind,
    TicketStore, WriteMode,
};
use tower_tickets::{
    Cost, FakeClock, IdempotencyKey, Refill, RequestFingerprint, TicketKind, Tickets, Uid,
};

use checker::Checker;
use faults::{Fault, FaultKind};
use history::{Generator, Op, Shape};
use model::{Charged, Decision, Model};
use support::redis_server::{RedisCluster, RedisServer};
use targets::{Deployment, PAUSE, Target, Truth};

/// How long a charge answered with an error may take to be given back in
/// the background, once Redis answers again.
const LATE_REFUND: Duration = Duration::from_secs(5);

/// Operations per seed of the sync target on the emulator, where a held
/// gate costs a Firestore timeout.
const SYNC_ON_FIRESTORE_OPS: usize = 1000;

/// Operations per seed of the targets on a Redis Cluster (six servers a
/// seed).
const ON_CLUSTER_OPS: usize = 1000;

/// A long run says how far it got this often (operations).
const PROGRESS_EVERY: usize = 50_000;

/// How many allowed charges a run keeps for refunds.
const RECEIPTS_KEPT: usize = 4_096;

/// The user of the charges that only order others (see
/// `Run::after_queued_charges`); no history's, so no check reads it.
const BARRIER_USER: &str = "barrier";

/// Seeds every run checks, before a fresh one.
const FIXED_SEEDS: [u64; 3] = [1, 2, 3];

/// Users per history: few, so that they run out of tickets.
const USERS: usize = 4;

/// The kinds of the reference app, plus a calendar kind whose new users
/// start below capacity.
pub fn kinds() -> Vec<TicketKind> {
    vec![
        TicketKind::new("upload", 5),
        TicketKind::new("ai", 3),
        TicketKind::new("daily", 2)
            .initial(1)
            .refill(Refill::daily_at(NaiveTime::MIN, chrono_tz::Europe::Paris)),
    ]
}

fn start() -> DateTime<Utc> {
    "2026-03-27T08:00:00Z".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store() {
    ledger("memory_store", &FIXED_SEEDS, 3000, |_, _| async {
        Target::memory()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_cache_over_memory() {
    ledger(
        "refusal_cache_over_memory",
        &FIXED_SEEDS,
        3000,
        |_, _| async { Target::refusal_cache() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stores() {
    ledger("redis_stores", &FIXED_SEEDS, 2000, |seed, _| async move {
        let faults = vec![FaultKind::FlushAll, FaultKind::RestartInstance];
        Target::redis_stores(RedisServer::start(), &format!("ledger-{seed}:"), faults).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stores_paused() {
    ledger(
        "redis_stores_paused",
        &FIXED_SEEDS,
        120,
        |seed, _| async move {
            let faults = vec![FaultKind::PauseRedis];
            Target::redis_stores(RedisServer::start(), &format!("ledger-{seed}:"), faults).await
        },
    )
    .await;
}

/// The write-through faults both modes take, besides losing and rolling
/// back users (added by `write_through`).
const WRITE_THROUGH_FAULTS: [FaultKind; 3] = [
    FaultKind::FlushAll,
    FaultKind::FirestoreOutage,
    FaultKind::RestartInstance,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_sync_in_memory() {
    write_through(
        "write_through_sync_in_memory",
        Backing::Memory,
        WriteMode::Sync,
        (&FIXED_SEEDS, 1500),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_async_in_memory() {
    write_through(
        "write_through_async_in_memory",
        Backing::Memory,
        WriteMode::Async,
        (&FIXED_SEEDS, 2000),
    )
    .await;
}

/// The emulator's share: fewer seeds, each operation costing a round trip
/// to the emulator (and a held gate its timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_sync_on_cluster() {
    write_through(
        "write_through_sync_on_cluster",
        Backing::MemoryOnCluster,
        WriteMode::Sync,
        (&FIXED_SEEDS, ON_CLUSTER_OPS),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_async_on_cluster() {
    write_through(
        "write_through_async_on_cluster",
        Backing::MemoryOnCluster,
        WriteMode::Async,
        (&FIXED_SEEDS, ON_CLUSTER_OPS),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_sync_on_firestore() {
    write_through(
        "write_through_sync_on_firestore",
        Backing::Firestore,
        WriteMode::Sync,
        (&FIXED_SEEDS[..1], SYNC_ON_FIRESTORE_OPS),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_async_on_firestore() {
    write_through(
        "write_through_async_on_firestore",
        Backing::Firestore,
        WriteMode::Async,
        (&FIXED_SEEDS[..1], 1000),
    )
    .await;
}

/// What a write-through target keeps its truth in, and on which Redis.
#[derive(Clone, Copy)]
enum Backing {
    Memory,
    Firestore,
    /// The in-memory source behind a 3-master Redis Cluster.
    MemoryOnCluster,
}

/// Runs a write-through target on `seeds` (and a fresh one), `ops`
/// operations each by default.
async fn write_through(
    test: &'static str,
    backing: Backing,
    mode: WriteMode,
    (seeds, ops): (&[u64], usize),
) {
    ledger(test, seeds, ops, |seed, clock| {
        async move {
            let mut faults = WRITE_THROUGH_FAULTS.to_vec();
            faults.extend([FaultKind::DumpOrRestore, FaultKind::DeleteUser]);
            if let Backing::Memory | Backing::MemoryOnCluster = backing {
                faults.push(FaultKind::EditSource);
                // Each pause costs over a second: one fault in nineteen.
                faults = faults.repeat(3);
                faults.push(FaultKind::PauseRedis);
            }
            let prefix = format!("{}-{seed}:", test.replace('_', "-"));
            let (truth, deployment) = match backing {
                Backing::Memory => (
                    Truth::memory(),
                    Deployment::Standalone(RedisServer::start()),
                ),
                Backing::Firestore => (
                    Truth::firestore(prefix.trim_end_matches(':')).await,
                    Deployment::Standalone(RedisServer::start()),
                ),
                Backing::MemoryOnCluster => {
                    (Truth::memory(), Deployment::Cluster(RedisCluster::start()))
                }
            };
            let count = 2 + (seed % 2) as usize;
            Target::write_through(deployment, &prefix, truth, mode, count, faults, &clock).await
        }
    })
    .await;
}

/// Runs the seeds (`LEDGER_SEED`, or `fixed` and a fresh one) on targets
/// made by `make`, `LEDGER_OPS` (or `default_ops`) operations each, all at
/// once: a history spends most of its time waiting (on Redis, write rounds,
/// timeouts), and each has targets of its own (its own Redis server, so
/// that a FLUSHALL or a pause touches no other history).
///
/// `LEDGER_HISTORIES=<n>` with `LEDGER_SEED=<s>` runs seeds `s` to
/// `s + n - 1`, `LEDGER_OPS` operations in all (the long mode).
async fn ledger<F, Fut>(test: &'static str, fixed: &[u64], default_ops: usize, mut make: F)
where
    F: FnMut(u64, FakeClock) -> Fut,
    Fut: Future<Output = Target>,
{
    // `RUST_LOG=tower_tickets=warn`, say, shows what the stores logged
    // (a refund retried or given up) next to a failing history.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let ops = std::env::var("LEDGER_OPS")
        .map(|n| n.parse().expect("LEDGER_OPS is a number"))
        .unwrap_or(default_ops);
    let histories: u64 = std::env::var("LEDGER_HISTORIES")
        .map(|n| n.parse().expect("LEDGER_HISTORIES is a number"))
        .unwrap_or(1);
    let (seeds, each): (Vec<u64>, usize) = match std::env::var("LEDGER_SEED") {
        Ok(seed) => {
            let first: u64 = seed.parse().expect("LEDGER_SEED is a number");
            (
                (first..first + histories).collect(),
                ops / histories as usize,
            )
        }
        Err(_) => {
            assert_eq!(histories, 1, "LEDGER_HISTORIES needs LEDGER_SEED");
            let fresh = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            eprintln!("ledger: {test} runs seeds {fixed:?} and the fresh seed {fresh}");
            (fixed.iter().copied().chain([fresh]).collect(), ops)
        }
    };
    let began = Instant::now();
    let mut running = tokio::task::JoinSet::new();
    for &seed in &seeds {
        let clock = FakeClock::at(start());
        let target = make(seed, clock.clone()).await;
        running.spawn(async move {
            let began = Instant::now();
            Run::new(test, seed, target, clock).execute(each).await;
            eprintln!(
                "ledger: {test} seed {seed}: {each} operations in {:.1?}",
                began.elapsed()
            );
        });
    }
    while let Some(done) = running.join_next().await {
        if let Err(failed) = done {
            std::panic::resume_unwind(failed.into_panic());
        }
    }
    eprintln!(
        "ledger: {test}: {} × {each} operations in {:.1?}",
        seeds.len(),
        began.elapsed()
    );
}

/// An allowed charge not refunded yet: the store's receipt and the model's.
struct Outstanding {
    receipt: Receipt,
    charged: Charged,
}

/// What became of an operation that got no clean answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unanswered {
    /// The store answered an error: nothing may have been charged.
    Error,
    /// Dropped or crashed in flight: either way.
    Lost,
}

struct Run {
    target: Target,
    model: Model,
    tickets: Tickets,
    clock: FakeClock,
    checker: Checker,
    uids: Vec<Uid>,
    receipts: Vec<Outstanding>,
    /// Hashes dumped for a later RESTORE, per user.
    dumps: HashMap<usize, Vec<u8>>,
    /// Operations left before a held Firestore is released.
    outage: usize,
    generator: Generator,
}

impl Run {
    fn new(test: &'static str, seed: u64, target: Target, clock: FakeClock) -> Self {
        let mut builder = Tickets::builder().clock(clock.clone());
        for kind in kinds() {
            builder = builder.kind(kind);
        }
        let tickets = builder.build().expect("valid kinds");
        let shape = Shape {
            users: USERS,
            instances: target.instances.len(),
            faults: target.faults.clone(),
            drops: target.drops,
        };
        Self {
            model: Model::new(tickets.kinds().to_vec(), target.birth),
            target,
            tickets,
            clock,
            checker: Checker::new(test, seed),
            uids: (0..USERS)
                .map(|u| Uid::parse(&format!("u{u}")).unwrap())
                .collect(),
            receipts: Vec::new(),
            dumps: HashMap::new(),
            outage: 0,
            generator: Generator::new(seed, shape),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.tickets.now()
    }

    fn all_kinds(&self) -> Vec<usize> {
        (0..self.model.kinds().len()).collect()
    }

    async fn execute(mut self, ops: usize) {
        for index in 0..ops {
            let op = self
                .generator
                .next(&self.model, self.receipts.len(), self.now());
            self.checker.note(index, op.user(), op.to_string());
            self.apply(index, op).await;
            if index > 0 && index % PROGRESS_EVERY == 0 {
                eprintln!(
                    "ledger: {} seed {}: {index} operations so far",
                    self.checker.test(),
                    self.checker.seed()
                );
            }
            if self.outage > 0 {
                self.outage -= 1;
                if self.outage == 0 {
                    self.end_outage(index);
                }
            }
        }
        self.quiesce(ops).await;
    }

    async fn apply(&mut self, index: usize, op: Op) {
        match op {
            Op::Charge {
                user,
                cost,
                key,
                instance,
                drop_after,
            } => {
                let store = self.target.instances[instance].clone();
                let future = store.charge(self.request(user, &cost, key.as_deref()));
                let answer = match drop_after {
                    None => Some(future.await),
                    Some(polls) => poll_then_drop(future, polls).await,
                };
                self.settle_charge(index, user, &cost, key.as_deref(), instance, answer)
                    .await;
            }
            Op::Refund { receipt, instance } => self.refund(index, receipt, instance).await,
            Op::Adjust {
                user,
                kind,
                adjustment,
                instance,
            } => {
                let now = self.now();
                let change = [(self.model.kinds()[kind].clone(), adjustment)];
                let request = AdjustRequest::new(self.uids[user].clone(), change, now);
                let answer = self.target.instances[instance]
                    .adjust(request)
                    .await
                    .map(|outcome| outcome.balances().map(|balances| balances[0]));
                let mut adjusted = self.model.clone();
                let want = Some(adjusted.adjust(self.uids[user].as_str(), kind, adjustment, now));
                match answer {
                    Ok(got) => {
                        self.checker
                            .note(index, Some(user), format!("  -> {got:?}"));
                        self.checker.same(index, Some(user), "adjust", &got, &want);
                        self.model = adjusted;
                    }
                    Err(error) => {
                        let mut touched = self.model.clone();
                        touched.touch_only(self.uids[user].as_str(), &vec![(kind, 0)], now);
                        let candidates = vec![
                            ("not sent", self.model.clone()),
                            ("not adjusted", touched),
                            ("adjusted", adjusted),
                        ];
                        self.resolve(index, user, instance, &error, candidates)
                            .await;
                    }
                }
            }
            Op::Advance(by) => self.clock.set(self.now() + by),
            Op::Burst { user, charges } => self.burst(index, user, charges).await,
            Op::Fault(fault) => self.fault(index, fault).await,
            Op::Quiesce => self.quiesce(index).await,
        }
    }

    fn request(&self, user: usize, cost: &model::Cost, key: Option<&str>) -> ChargeRequest {
        let kinds = self.model.kinds();
        let (first, rest) = cost.split_first().expect("a cost names a kind");
        let cost = rest.iter().fold(
            Cost::of(kinds[first.0].name(), first.1),
            |cost, &(k, amount)| cost.and(kinds[k].name(), amount),
        );
        let cost = self.tickets.check_cost(&cost).expect("a valid cost");
        // Every charge is one route's: the key binds to the cost.
        let fingerprint = RequestFingerprint::new(&Method::POST, "/ledger", &cost);
        ChargeRequest::new(self.uids[user].clone(), cost, self.now())
            .with_idempotency_key(key.map(|k| IdempotencyKey::parse(k).expect("a valid key")))
            .with_fingerprint(fingerprint)
    }

    /// Returns once the charges `instance` queued so far have been sent:
    /// charges the barrier user (one the model leaves out) through it.
    async fn after_queued_charges(&self, instance: usize) {
        let kinds = self.model.kinds();
        let cost = self
            .tickets
            .check_cost(&Cost::of(kinds[0].name(), 1))
            .expect("a valid cost");
        let barrier = Uid::parse(BARRIER_USER).expect("a valid uid");
        let request = ChargeRequest::new(barrier, cost, self.now());
        // Its answer tells nothing about the users checked.
        let _ = self.target.instances[instance].charge(request).await;
    }

    /// Marks an answered keyed charge finished, as the layer does once its
    /// handler answered: a retry is then `Replayed`, not `InProgress`.
    async fn finish(&self, instance: usize, receipt: &Receipt) {
        if receipt.idempotency_key.is_some()
            && let Err(error) = self.target.instances[instance].finish(receipt).await
        {
            // The key stays "in progress"; a replay of it would tell.
            eprintln!("ledger: could not finish a keyed charge: {error}");
        }
    }

    /// Keeps an allowed charge for a later refund; a long run forgets the
    /// oldest ones (never refunded, like most charges).
    fn outstanding(&mut self, charge: Outstanding) {
        if self.receipts.len() == RECEIPTS_KEPT {
            self.receipts.remove(0);
        }
        self.receipts.push(charge);
    }

    /// Checks a sequential charge's answer against the model, or resolves
    /// what became of it.
    async fn settle_charge(
        &mut self,
        index: usize,
        user: usize,
        cost: &model::Cost,
        key: Option<&str>,
        instance: usize,
        answer: Option<Result<ChargeOutcome, StoreError>>,
    ) {
        let uid = self.uids[user].as_str().to_string();
        let now = self.now();
        let mut charged_model = self.model.clone();
        let (want, charged) = charged_model.charge(&uid, cost, key, now);
        let outcome = match answer {
            Some(Ok(outcome)) => outcome,
            Some(Err(error)) => {
                return self
                    .unanswered(index, user, instance, cost, &error, charged_model)
                    .await;
            }
            None => {
                self.checker.note(index, Some(user), "  -> dropped".into());
                // Charged, nobody finishes its request: its key stays running.
                charged_model.leave_key_running(&uid, key);
                let mut touched = self.model.clone();
                touched.touch_only(&uid, cost, now);
                let candidates = vec![
                    ("not sent", self.model.clone()),
                    ("not charged", touched),
                    ("charged", charged_model),
                ];
                let unanswered =
                    StoreError::new(StoreErrorKind::Unavailable, "the future was dropped");
                self.resolve_as(
                    index,
                    user,
                    instance,
                    &unanswered,
                    candidates,
                    Unanswered::Lost,
                )
                .await;
                return;
            }
        };
        let (decision, balances) = split(&outcome);
        self.checker
            .note(index, Some(user), format!("  -> {decision:?} {balances:?}"));
        if decision == Decision::Refused && !self.target.exact_refusals {
            self.checker
                .same(index, Some(user), "the decision", &decision, &want.decision);
        } else {
            self.checker.same(
                index,
                Some(user),
                "the charge's answer",
                &(decision, balances.to_vec()),
                &(want.decision, want.balances.clone()),
            );
        }
        let kinds: Vec<usize> = cost.iter().map(|&(k, _)| k).collect();
        self.checker.refills(index, user, &uid, &kinds, balances);
        if let (ChargeOutcome::Allowed { receipt, .. }, Some(charged)) = (outcome, charged) {
            self.checker.same(
                index,
                Some(user),
                "the receipt",
                &(
                    receipt.last_refills.clone(),
                    receipt.remaining_after.clone(),
                ),
                &(
                    charged.last_refills.clone(),
                    charged.remaining_after.clone(),
                ),
            );
            self.finish(instance, &receipt).await;
            self.outstanding(Outstanding { receipt, charged });
        }
        self.model = charged_model;
    }

    /// An error answer: the charge must not have stayed.
    async fn unanswered(
        &mut self,
        index: usize,
        user: usize,
        instance: usize,
        cost: &model::Cost,
        error: &StoreError,
        charged: Model,
    ) {
        let mut touched = self.model.clone();
        touched.touch_only(self.uids[user].as_str(), cost, self.now());
        let candidates = vec![
            ("not sent", self.model.clone()),
            ("not charged, refilled", touched),
            ("charged", charged),
        ];
        self.resolve(index, user, instance, error, candidates).await;
    }

    async fn resolve(
        &mut self,
        index: usize,
        user: usize,
        instance: usize,
        error: &StoreError,
        candidates: Vec<(&'static str, Model)>,
    ) {
        self.resolve_as(index, user, instance, error, candidates, Unanswered::Error)
            .await;
    }

    /// Finds which of `candidates` (the first: the operation never reached
    /// Redis) the store's raw state matches and takes it as the model; an
    /// error answer must not have charged.
    async fn resolve_as(
        &mut self,
        index: usize,
        user: usize,
        instance: usize,
        error: &StoreError,
        candidates: Vec<(&'static str, Model)>,
        how: Unanswered,
    ) {
        let uid = self.uids[user].clone();
        self.checker
            .note(index, Some(user), format!("  -> {how:?}: {error}"));
        // A dropped charge may sit in the instance's batching queue, to be
        // sent after the drop: a charge through the same instance goes after
        // it (batches are sent in order, one call at a time), and once that
        // one is answered the dropped one has reached Redis or never will.
        // (Not while writes are held: it would wait out the fault.)
        if how == Unanswered::Lost && self.outage == 0 {
            self.after_queued_charges(instance).await;
        }
        // A write-through change goes on without its caller: its fate is
        // known once it settles (after the outage, which the error ends: a
        // refund made in the background is followed until the source holds
        // it).
        if self.outage > 0 {
            self.end_outage_for(index, user, error).await;
        } else if let Some(behind) = self.target.behind() {
            behind.settled().await;
        }
        // A call through the same instance's connection comes after the
        // abandoned one, if Redis got it.
        let now = self.now();
        let kinds = self.model.kinds().to_vec();
        // (A write-through store may have dropped the user: this reloads it,
        // waiting out a breaker that the fault left open.)
        read_balances(&self.target.instances[instance], &uid, &kinds, now).await;
        let Some(mut raw) = self.target.raw(uid.as_str(), &kinds) else {
            self.checker.fail(
                index,
                Some(user),
                &format!("an embedded store failed: {error}"),
            );
        };
        // A charge answered with an error whose script ran all the same is
        // given back in the background (DESIGN §5): wait for it.
        let charged = candidates
            .iter()
            .find(|(name, _)| *name == "charged")
            .map(|(_, m)| m.raw(uid.as_str()));
        let deadline = Instant::now() + LATE_REFUND;
        while how == Unanswered::Error
            && charged.as_ref() == Some(&raw)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            raw = self.target.raw(uid.as_str(), &kinds).expect("Redis-backed");
        }
        for (name, candidate) in &candidates {
            if candidate.raw(uid.as_str()) == raw {
                if how == Unanswered::Error && (*name == "charged") {
                    let redis = self
                        .target
                        .redis()
                        .and_then(|redis| redis.point(uid.as_str()));
                    let source = match self.target.behind() {
                        Some(behind) => format!("{:?}", behind.document(&uid, now).await),
                        None => "none".to_string(),
                    };
                    self.checker.fail(
                        index,
                        Some(user),
                        &format!(
                            "the store answered an error ({error}) but the charge stayed: {raw:?}\n    \
                             Redis's (lineage, version): {redis:?}\n    the source: {source}"
                        ),
                    );
                }
                self.checker.note(index, Some(user), format!("  => {name}"));
                self.model = candidate.clone();
                // A charge whose script ran after its timeout held Redis's
                // state until given back; an async round may have carried
                // that state to the source meanwhile, and a Redis loss
                // before the refund's own write brings it back (a ticket
                // lost, never one minted).
                let late_charge = candidates.iter().find(|(name, _)| *name == "charged");
                let async_behind = self.target.behind().is_some_and(|b| !b.sync());
                if let (Some((_, charged)), true) = (late_charge, async_behind)
                    && how == Unanswered::Error
                    && error.kind() == StoreErrorKind::Timeout
                    && let Some(state) = charged.state(uid.as_str())
                {
                    self.model.may_have_held(uid.as_str(), state);
                }
                return;
            }
        }
        // A write-through store drops a state the source did not take (an
        // administrative change, a refused write): Redis then holds what the
        // source does, one of the states it may hold.
        if let Some(behind) = self.target.behind() {
            let sync = behind.sync();
            let reloadable = self.model.reloadable(uid.as_str(), sync);
            if let Some(found) = reloadable.iter().rev().find(|r| r.state == raw) {
                self.checker.note(
                    index,
                    Some(user),
                    format!("  => reloaded state #{}", found.seq),
                );
                self.model.adopt(uid.as_str(), found.seq);
                self.checker.forget_refills(Some(uid.as_str()));
                return;
            }
        }
        let states: Vec<String> = candidates
            .iter()
            .map(|(name, m)| format!("\n    {name}: {:?}", m.raw(uid.as_str())))
            .collect();
        self.checker.fail(
            index,
            Some(user),
            &format!(
                "after {how:?} ({error}), Redis holds {raw:?}, none of{}",
                states.concat()
            ),
        );
    }

    async fn refund(&mut self, index: usize, at: usize, instance: usize) {
        let Outstanding { receipt, charged } = self.receipts.swap_remove(at);
        let user: usize = charged.uid[1..].parse().expect("u<n>");
        self.checker
            .note(index, Some(user), format!("  refunds {charged:?}"));
        let now = self.now();
        let mut refunded_model = self.model.clone();
        let want = refunded_model.refund(&charged, now);
        // A write-through refund gives nothing back for a charge that the
        // state it meets does not include: an async charge lost with Redis's
        // state, or one made in a lineage that the state's origins no longer
        // name (they remember a few reseeds back). The refund leaves that
        // state's lineage and origins as they were: Redis says which.
        let made_at = receipt.made_at();
        match self.target.instances[instance].refund(receipt, now).await {
            Ok(outcome) => {
                self.checker
                    .note(index, Some(user), format!("  -> {outcome:?}"));
                let forgotten = self
                    .target
                    .redis()
                    .zip(made_at)
                    .and_then(|(redis, made_at)| redis.includes(charged.uid.as_str(), made_at))
                    == Some(false);
                if forgotten && outcome.refunded.iter().all(|n| *n == 0) {
                    let mut touched = self.model.clone();
                    touched.touch_only(&charged.uid, &charged.cost, now);
                    touched.forget_key_of(&charged);
                    self.model = touched;
                    return;
                }
                self.checker.same(
                    index,
                    Some(user),
                    "the refund",
                    &(outcome.refunded, outcome.balances),
                    &want,
                );
                self.model = refunded_model;
            }
            Err(error) => {
                let mut touched = self.model.clone();
                touched.touch_only(&charged.uid, &charged.cost, now);
                let candidates = vec![
                    ("not sent", self.model.clone()),
                    ("not refunded", touched),
                    ("refunded", refunded_model),
                ];
                self.resolve_as(index, user, instance, &error, candidates, Unanswered::Lost)
                    .await;
            }
        }
    }

    /// Charges sent at once: none may be allowed beyond what the model
    /// affords; the answered ones are then applied.
    async fn burst(
        &mut self,
        index: usize,
        user: usize,
        charges: Vec<(model::Cost, Option<String>)>,
    ) {
        let instances = self.target.instances.len();
        let tasks: Vec<_> = charges
            .iter()
            .enumerate()
            .map(|(j, (cost, key))| {
                let store = self.target.instances[j % instances].clone();
                tokio::spawn(store.charge(self.request(user, cost, key.as_deref())))
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.expect("a charge task"));
        }
        let uid = self.uids[user].as_str().to_string();
        let now = self.now();
        let mut errors = false;
        // Allowed charges first: the model must afford all of them at once.
        let mut order: Vec<usize> = (0..answers.len()).collect();
        order.sort_by_key(|&j| !matches!(answers[j], Ok(ChargeOutcome::Allowed { .. })));
        for j in order {
            let (cost, key) = &charges[j];
            match &answers[j] {
                Ok(outcome) => {
                    let (decision, balances) = split(outcome);
                    self.checker.note(
                        index,
                        Some(user),
                        format!("  -> {cost:?} {key:?}: {decision:?} {balances:?}"),
                    );
                    if decision == Decision::Allowed {
                        let (want, charged) = self.model.charge(&uid, cost, key.as_deref(), now);
                        if want.decision != Decision::Allowed {
                            self.checker.fail(
                                index,
                                Some(user),
                                &format!("a burst allowed {cost:?} {key:?}, more than the model affords ({:?})", want.decision),
                            );
                        }
                        if let (ChargeOutcome::Allowed { receipt, .. }, Some(mut charged)) =
                            (outcome.clone(), charged)
                        {
                            charged.last_refills = receipt.last_refills.clone();
                            charged.remaining_after = receipt.remaining_after.clone();
                            self.finish(j % instances, &receipt).await;
                            self.outstanding(Outstanding { receipt, charged });
                        }
                    } else {
                        // A key still running in the burst answers
                        // "in progress": a replay, as far as tickets go.
                        if matches!(decision, Decision::Replayed | Decision::InProgress) {
                            let (want, _) =
                                self.model.clone().charge(&uid, cost, key.as_deref(), now);
                            if !matches!(want.decision, Decision::Replayed | Decision::InProgress) {
                                self.checker.fail(
                                    index,
                                    Some(user),
                                    &format!("a burst replayed {key:?}, which paid for nothing"),
                                );
                            }
                        }
                        self.model.touch_only(&uid, cost, now);
                    }
                }
                Err(error) => {
                    self.checker
                        .note(index, Some(user), format!("  -> {cost:?}: {error}"));
                    errors = true;
                }
            }
        }
        // An async write may take a state in the middle of the burst, in an
        // order of its charges the model does not know (it applies the
        // allowed ones first), and a Redis loss would then reload it: so
        // async targets let the burst's last state reach the source first.
        if self.target.behind().is_some_and(|behind| !behind.sync()) {
            self.end_outage(index);
            self.caught_up(index, user).await;
        }
        if errors {
            // An error charged nothing, but may have applied a refill.
            let mut touched = self.model.clone();
            for (cost, _) in &charges {
                touched.touch_only(&uid, cost, now);
            }
            let candidates = vec![
                ("not sent", self.model.clone()),
                ("not charged, refilled", touched),
            ];
            let error = StoreError::new(StoreErrorKind::Unavailable, "a burst's charge failed");
            self.resolve(index, user, 0, &error, candidates).await;
        }
    }

    async fn fault(&mut self, index: usize, fault: Fault) {
        let redis = self.target.redis().expect("faults need Redis").clone();
        match fault {
            Fault::FlushAll => {
                self.end_outage(index);
                redis.flush_all();
                self.dumps.clear();
                if self.target.behind().is_some() {
                    self.model.forget_keys();
                    for user in 0..USERS {
                        self.reload(index, user, "FLUSHALL").await;
                    }
                } else {
                    self.model.forget_users();
                    self.checker.forget_refills(None);
                }
            }
            Fault::DeleteUser { user } => {
                self.end_outage(index);
                redis.delete(self.uids[user].as_str());
                self.reload(index, user, "DEL of the user's hash").await;
            }
            Fault::DumpOrRestore { user } => {
                let uid = self.uids[user].as_str().to_string();
                match self.dumps.remove(&user) {
                    Some(dump) => {
                        self.end_outage(index);
                        redis.restore(&uid, &dump);
                        self.reload(index, user, "RESTORE of an earlier DUMP").await;
                    }
                    None => {
                        if let Some(dump) = redis.dump(&uid) {
                            self.dumps.insert(user, dump);
                        }
                    }
                }
            }
            Fault::FirestoreOutage { ops } => {
                self.target.behind().expect("write-through").hold();
                self.outage = ops + 1;
            }
            Fault::RestartInstance {
                instance,
                user,
                polls,
            } => {
                let cost = vec![(0, 1)];
                let store = self.target.instances[instance].clone();
                let future = store.charge(self.request(user, &cost, None));
                let answer = poll_then_drop(future, polls).await;
                drop(store);
                self.target.restart(instance).await;
                self.settle_charge(index, user, &cost, None, instance, answer.filter(|_| false))
                    .await;
            }
            Fault::EditSource { user, counts, due } => {
                self.edit_source(index, user, &counts, due).await;
            }
            Fault::PauseRedis { user } => {
                let cost = vec![(0, 1)];
                redis.pause_writes(PAUSE.as_millis() as u64);
                let answer = self.target.instances[0]
                    .charge(self.request(user, &cost, None))
                    .await;
                redis.unpause();
                self.settle_charge(index, user, &cost, None, 0, Some(answer))
                    .await;
            }
        }
    }

    /// Somebody edits the user's state in the source (DESIGN.md §4): it is
    /// the truth as of then, absolute. The user's Redis state is then made
    /// overdue for a check, as two seconds of silence would (the harness
    /// moves the wall clock no other way): the next operation on the user,
    /// through any instance, must decide on the edit. The source is first
    /// let take every change Redis made to the user (an async store's
    /// unwritten charges would apply on top of the edit; that is not
    /// modelled).
    async fn edit_source(
        &mut self,
        index: usize,
        user: usize,
        counts: &[Option<u32>],
        due: Option<usize>,
    ) {
        let uid = self.uids[user].clone();
        let Some(mut state) = self.model.state(uid.as_str()) else {
            return;
        };
        if state.iter().any(Option::is_none) {
            return;
        }
        self.end_outage(index);
        self.caught_up(index, user).await;
        let period = TimeDelta::hours(24) + TimeDelta::milliseconds(1);
        for (k, balance) in state.iter_mut().enumerate() {
            let balance = balance.as_mut().expect("every kind is held");
            if let Some(count) = counts[k] {
                balance.remaining = count;
            }
            if due == Some(k) {
                balance.last_refill -= period;
            }
        }
        let balances: Vec<KindBalance> = state.iter().map(|b| b.expect("held")).collect();
        let behind = self.target.behind().expect("write-through");
        behind.edit(&uid, balances.clone());
        self.target
            .redis()
            .expect("write-through")
            .overdue_for_check(uid.as_str());
        self.checker.note(
            index,
            Some(user),
            format!("  the source's state edited to {balances:?}"),
        );
        self.model.edit(uid.as_str(), state);
        self.checker.forget_refills(Some(uid.as_str()));
        self.checker.forget_document(uid.as_str());
    }

    /// An operation answered with an error while the source's writes were
    /// held: its write timed out, and may land when they are released. An
    /// admin is told its outcome is unknown (a retry with the same key
    /// settles it); a charge was refunded in Redis, and that refund must
    /// reach the source after the late write. So the outage ends here, and
    /// the operation is judged once the source holds Redis's changes: what
    /// the source shows decides, as it would for the admin retrying.
    async fn end_outage_for(&mut self, index: usize, user: usize, error: &StoreError) {
        self.checker.note(
            index,
            Some(user),
            format!("  an error while writes are held ({error}): the outage ends"),
        );
        self.end_outage(index);
        self.caught_up(index, user).await;
    }

    /// Waits until the source holds every change Redis made to the user.
    async fn caught_up(&mut self, index: usize, user: usize) {
        let uid = self.uids[user].as_str().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let behind = self.target.behind().expect("write-through");
            behind.settled().await;
            if behind.rounds_done() && !self.target.redis().expect("write-through").pending(&uid) {
                return;
            }
            if Instant::now() > deadline {
                let what = "the source never took the changes Redis holds";
                self.checker.fail(index, Some(user), what);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Releases a held Firestore.
    fn end_outage(&mut self, index: usize) {
        if let Some(behind) = self.target.behind() {
            behind.release();
            if self.outage > 0 {
                self.checker.note(index, None, "  Firestore back".into());
            }
        }
        self.outage = 0;
    }

    /// After Redis lost or rolled back a user, the write-through store must
    /// reload one of the states Firestore may hold; the model takes it.
    async fn reload(&mut self, index: usize, user: usize, why: &str) {
        let uid = self.uids[user].clone();
        if !self.model.users().any(|u| u == uid.as_str()) {
            return;
        }
        let kinds = self.model.kinds().to_vec();
        let store = self.target.instances[0].clone();
        let now = self.now();
        // A reload may be dropped again by the round that finds the source
        // ahead of it (a write that landed meanwhile): the store has settled
        // once Redis holds the user with nothing left to write, and what it
        // holds is what the source holds. A write that landed after the
        // reload read the source (a refusal's refill, whose round was on its
        // way) would make the store reload at its next round; the harness
        // drops the user again instead, as if the fault had come a moment
        // later, so that the model adopts what the store will decide on.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let behind = self.target.behind().expect("write-through");
            behind.settled().await;
            let read = store.balances(&uid, &kinds, now).await;
            let redis = self.target.redis().expect("write-through");
            if read.is_ok()
                && behind.rounds_done()
                && redis.seeded(uid.as_str())
                && !redis.pending(uid.as_str())
            {
                let held = self.target.raw(uid.as_str(), &kinds);
                let document: Option<model::UserState> = behind
                    .document(&uid, now)
                    .await
                    .map(|d| d.balances.iter().copied().map(Some).collect());
                if document.is_none() || document == held {
                    break;
                }
                self.checker.note(
                    index,
                    Some(user),
                    format!(
                        "  the source moved on to {document:?} after the reload: dropped again"
                    ),
                );
                redis.delete(uid.as_str());
            }
            if Instant::now() > deadline {
                let what = format!("the store never settled on a reload after {why}");
                self.checker.fail(index, Some(user), &what);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let raw = self.target.raw(uid.as_str(), &kinds).expect("Redis-backed");
        let sync = self.target.behind().expect("write-through").sync();
        let reloadable = self.model.reloadable(uid.as_str(), sync);
        match reloadable.iter().rev().find(|r| r.state == raw) {
            Some(found) => {
                self.checker.note(
                    index,
                    Some(user),
                    format!("  {why}: reloaded state #{} {raw:?}", found.seq),
                );
                self.model.adopt(uid.as_str(), found.seq);
                self.checker.forget_refills(Some(uid.as_str()));
            }
            None => self.checker.fail(
                index,
                Some(user),
                &format!(
                    "after {why}, Redis reloaded {raw:?}, none of the states Firestore may hold: {reloadable:?}"
                ),
            ),
        }
    }

    /// Lets background work finish, then compares every user's balances
    /// through every instance, Redis's raw state and the document with the
    /// model.
    async fn quiesce(&mut self, index: usize) {
        self.end_outage(index);
        if self.target.behind().is_some() {
            for user in 0..USERS {
                self.caught_up(index, user).await;
            }
        }
        let now = self.now();
        let all = self.all_kinds();
        let kinds = self.model.kinds().to_vec();
        for user in 0..USERS {
            let uid = self.uids[user].clone();
            let want = self.model.view(uid.as_str(), &all, now);
            for (i, store) in self.target.instances.clone().iter().enumerate() {
                let got = read_balances(store, &uid, &kinds, now).await;
                let what = format!("balances through instance {i} after quiescing");
                self.checker.same(index, Some(user), &what, &got, &want);
            }
            if let Some(raw) = self.target.raw(uid.as_str(), &kinds) {
                let want = self.model.raw(uid.as_str());
                let what = "Redis's raw state after quiescing";
                self.checker.same(index, Some(user), what, &raw, &want);
            }
            if let Some(behind) = self.target.behind() {
                let reloadable = self.model.reloadable(uid.as_str(), true);
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let document = behind.document(&uid, now).await;
                    let state: model::UserState = match &document {
                        Some(d) => d.balances.iter().copied().map(Some).collect(),
                        None => vec![None; kinds.len()],
                    };
                    if let Some(d) = &document {
                        self.checker.document(index, user, uid.as_str(), d);
                    }
                    // A user the model never touched has no document.
                    let untouched = reloadable.is_empty() && document.is_none();
                    if untouched || reloadable.iter().any(|r| r.state == state) {
                        break;
                    }
                    if Instant::now() > deadline {
                        let what = format!(
                            "the document holds {state:?}, none of the model's states {reloadable:?}"
                        );
                        self.checker.fail(index, Some(user), &what);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                self.model.checkpoint(uid.as_str());
            }
        }
    }
}

/// The decision and balances of a store's answer.
fn split(outcome: &ChargeOutcome) -> (Decision, &[KindBalance]) {
    match outcome {
        ChargeOutcome::Allowed { balances, .. } => (Decision::Allowed, balances),
        ChargeOutcome::Refused { balances } => (Decision::Refused, balances),
        ChargeOutcome::Replayed { balances } => (Decision::Replayed, balances),
        ChargeOutcome::KeyReused => (Decision::KeyReused, &[]),
        ChargeOutcome::InProgress => (Decision::InProgress, &[]),
        other => panic!("the model does not know {other:?}"),
    }
}

/// Reads balances, waiting out a breaker that a fault left open.
async fn read_balances(
    store: &Arc<dyn TicketStore>,
    uid: &Uid,
    kinds: &[Arc<TicketKind>],
    now: DateTime<Utc>,
) -> Vec<KindBalance> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.balances(uid, kinds, now).await {
            Ok(balances) => return balances,
            Err(error) if Instant::now() > deadline => panic!("the store never answered: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Polls `future` up to `polls` times (yielding in between so that its I/O
/// moves), then drops it; `None` when it had not finished.
async fn poll_then_drop<T>(
    mut future: std::pin::Pin<Box<dyn Future<Output = T> + Send>>,
    polls: usize,
) -> Option<T> {
    for _ in 0..polls {
        let polled = poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await;
        if let Poll::Ready(answer) = polled {
            return Some(answer);
        }
        tokio::task::yield_now().await;
    }
    None
}
