//! Targets: each a fresh set of store instances per seed, with what its
//! faults and checks need to reach behind it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tower_tickets::store::{
    FirestoreSource, KindBalance, MemorySource, MemoryStore, RedisStore, RedisStoreBuilder,
    RefusalCache, SourceOfTruth, TicketStore, TimeSource, UserSnapshot, WriteMode, WriteThrough,
};
use tower_tickets::{FakeClock, TicketKind};

use crate::faults::{FaultKind, RedisFaults};
use crate::kinds;
use crate::model::{Birth, UserState};
use crate::support::firestore_emulator::{FIRESTORE_TIMEOUT, FirestoreEmulator, client_at};
use crate::support::redis_server::{RedisCluster, RedisServer};
use crate::support::tcp_gate::TcpGate;

/// The Redis call timeout of every Redis-backed instance: long enough that
/// a loaded machine does not time calls out, short enough to pause past.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(800);

/// How long a `PauseRedis` fault holds Redis's writes.
pub const PAUSE: Duration = Duration::from_millis(1000);

/// A write-through instance's Firestore timeout: a held gate costs this; a
/// shorter one times out creates on the loaded emulator that land later.
const FIRESTORE_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the in-memory source's caller waits for a held write.
const MEMORY_SOURCE_TIMEOUT: Duration = Duration::from_millis(500);

/// The stores a history runs against.
pub struct Target {
    pub instances: Vec<Arc<dyn TicketStore>>,
    pub birth: Birth,
    pub faults: Vec<FaultKind>,
    /// Whether charge futures may be dropped unanswered (stores with I/O).
    pub drops: bool,
    /// Whether a refusal reports the balances as they stand. A refusal
    /// cache answers a repeated refusal with the balances it cached, which
    /// this instance's own later charges may have lowered since.
    pub exact_refusals: bool,
    pub backend: Backend,
}

/// What stands behind the instances.
pub enum Backend {
    Memory,
    Redis {
        builder: Box<RedisStoreBuilder>,
        redis: RedisFaults,
        _server: Box<RedisServer>,
    },
    WriteThrough(Box<Behind>),
}

/// The Redis a write-through target runs on: its own (a FLUSHALL or a
/// pause touches no other history).
pub enum Deployment {
    Standalone(RedisServer),
    /// Three masters, a replica each.
    Cluster(RedisCluster),
}

impl Deployment {
    fn store(&self) -> RedisStoreBuilder {
        match self {
            Self::Standalone(server) => RedisStore::standalone(server.url()),
            Self::Cluster(cluster) => RedisStore::cluster(cluster.urls()),
        }
    }

    fn faults(&self, prefix: &str) -> RedisFaults {
        match self {
            Self::Standalone(server) => RedisFaults::new(&server.url(), prefix),
            Self::Cluster(cluster) => RedisFaults::cluster(cluster.urls(), prefix),
        }
    }
}

/// A write-through target's servers.
pub struct Behind {
    /// Every live instance, and restarted ones until their changes under
    /// way have landed (see [`Behind::settled`]).
    made: std::sync::Mutex<Vec<Arc<WriteThrough>>>,
    redis: RedisFaults,
    deployment: Deployment,
    prefix: String,
    truth: Truth,
    mode: WriteMode,
    clock: FakeClock,
}

/// The source of truth behind a write-through target.
pub enum Truth {
    /// The Firestore emulator: instances reach it through `gate`; `reader`
    /// reads it directly.
    Firestore {
        project: String,
        gate: TcpGate,
        reader: FirestoreSource,
    },
    /// The in-memory source, shared by every instance.
    Memory(MemorySource),
}

impl Truth {
    /// The Firestore emulator, a project of its own.
    pub async fn firestore(project: &str) -> Self {
        let emulator = FirestoreEmulator::shared();
        Truth::Firestore {
            project: project.to_string(),
            gate: TcpGate::start(&emulator.host()).await,
            reader: FirestoreSource::new(emulator.client(project).await, kinds())
                .timeout(FIRESTORE_TIMEOUT),
        }
    }

    /// The in-memory source.
    pub fn memory() -> Self {
        Truth::Memory(MemorySource::new(kinds()).timeout(MEMORY_SOURCE_TIMEOUT))
    }

    /// Each user's write pace: short on the in-memory source, which has no
    /// rate to respect, so that sync charges do not wait for it.
    fn write_interval(&self) -> Duration {
        match self {
            Truth::Firestore { .. } => Duration::from_millis(10),
            Truth::Memory(_) => Duration::from_millis(2),
        }
    }

    /// A write round's lease: above the source's timeout, so that two rounds
    /// never write one user at once.
    fn lease(&self) -> Duration {
        let timeout = match self {
            Truth::Firestore { .. } => FIRESTORE_CALL_TIMEOUT,
            Truth::Memory(_) => MEMORY_SOURCE_TIMEOUT,
        };
        timeout + Duration::from_millis(500)
    }
}

impl Target {
    /// Two handles on one embedded store.
    pub fn memory() -> Self {
        let store = MemoryStore::new();
        Self::in_memory(vec![Arc::new(store.clone()), Arc::new(store)])
    }

    /// Two handles on one refusal cache over one embedded store.
    pub fn refusal_cache() -> Self {
        let store = RefusalCache::new(MemoryStore::new());
        Self {
            exact_refusals: false,
            ..Self::in_memory(vec![Arc::new(store.clone()), Arc::new(store)])
        }
    }

    fn in_memory(instances: Vec<Arc<dyn TicketStore>>) -> Self {
        Self {
            instances,
            birth: Birth::PerKind,
            faults: Vec::new(),
            drops: false,
            exact_refusals: true,
            backend: Backend::Memory,
        }
    }

    /// Three Redis stores on `server` (the target's own: a FLUSHALL or a
    /// pause touches no other history), under a key prefix of their own.
    pub async fn redis_stores(server: RedisServer, prefix: &str, faults: Vec<FaultKind>) -> Self {
        let url = server.url();
        let builder = RedisStore::standalone(&url)
            .key_prefix(prefix)
            .timeout(REDIS_TIMEOUT)
            .breaker(1, Duration::from_millis(50))
            .time_source(TimeSource::Caller);
        let mut instances: Vec<Arc<dyn TicketStore>> = Vec::new();
        for _ in 0..3 {
            instances.push(Arc::new(builder.clone().connect().await.expect("connect")));
        }
        Self {
            instances,
            birth: Birth::PerKind,
            faults,
            drops: true,
            exact_refusals: true,
            backend: Backend::Redis {
                builder: Box::new(builder),
                redis: RedisFaults::new(&url, prefix),
                _server: Box::new(server),
            },
        }
    }

    /// `count` write-through stores on `deployment` and `truth`.
    #[allow(clippy::too_many_arguments)]
    pub async fn write_through(
        deployment: Deployment,
        prefix: &str,
        truth: Truth,
        mode: WriteMode,
        count: usize,
        faults: Vec<FaultKind>,
        clock: &FakeClock,
    ) -> Self {
        let behind = Behind {
            made: std::sync::Mutex::default(),
            redis: deployment.faults(prefix),
            deployment,
            prefix: prefix.to_string(),
            truth,
            mode,
            clock: clock.clone(),
        };
        let mut instances: Vec<Arc<dyn TicketStore>> = Vec::new();
        for _ in 0..count {
            instances.push(behind.instance().await);
        }
        Self {
            instances,
            birth: Birth::WholeUser,
            faults,
            drops: true,
            exact_refusals: true,
            backend: Backend::WriteThrough(Box::new(behind)),
        }
    }

    /// Drops instance `i` and builds it again.
    pub async fn restart(&mut self, i: usize) {
        let fresh: Arc<dyn TicketStore> = match &self.backend {
            Backend::Memory => panic!("an embedded store has nothing to restart"),
            Backend::Redis { builder, .. } => {
                Arc::new(builder.clone().connect().await.expect("reconnect"))
            }
            Backend::WriteThrough(behind) => behind.instance().await,
        };
        self.instances[i] = fresh;
    }

    pub fn redis(&self) -> Option<&RedisFaults> {
        match &self.backend {
            Backend::Memory => None,
            Backend::Redis { redis, .. } => Some(redis),
            Backend::WriteThrough(behind) => Some(&behind.redis),
        }
    }

    pub fn behind(&self) -> Option<&Behind> {
        match &self.backend {
            Backend::WriteThrough(behind) => Some(behind),
            _ => None,
        }
    }

    /// The user's state as Redis holds it (`None` per kind it lacks; all
    /// `None` for a write-through hash not seeded from Firestore), for
    /// Redis-backed targets.
    pub fn raw(&self, uid: &str, kinds: &[Arc<TicketKind>]) -> Option<UserState> {
        let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        let redis = self.redis()?;
        if self.behind().is_some() && !redis.seeded(uid) {
            return Some(vec![None; kinds.len()]);
        }
        let fields = redis.fields(uid, &names);
        Some(
            fields
                .into_iter()
                .map(|field| match field {
                    (Some(remaining), Some(ms)) => Some(KindBalance {
                        remaining,
                        last_refill: DateTime::from_timestamp_millis(ms).expect("an instant"),
                    }),
                    _ => None,
                })
                .collect(),
        )
    }
}

impl Behind {
    async fn instance(&self) -> Arc<WriteThrough> {
        let redis = self
            .deployment
            .store()
            .key_prefix(self.prefix.clone())
            .time_source(TimeSource::Caller)
            .timeout(REDIS_TIMEOUT);
        let builder = match &self.truth {
            Truth::Firestore { project, gate, .. } => {
                let source = FirestoreSource::new(client_at(gate.host(), project).await, kinds())
                    .timeout(FIRESTORE_CALL_TIMEOUT)
                    .breaker(1, Duration::from_millis(100));
                WriteThrough::builder(redis, source)
            }
            Truth::Memory(source) => WriteThrough::builder(redis, source.clone()),
        };
        let instance = builder
            .mode(self.mode)
            .write_interval(self.truth.write_interval())
            // An instance restarted mid-round leaves its lease behind.
            .round_lease(self.truth.lease())
            .recovery_interval(Duration::from_millis(200))
            .clock(self.clock.clone())
            .connect()
            .await
            .expect("connect the write-through store");
        let instance = Arc::new(instance);
        self.made.lock().unwrap().push(instance.clone());
        instance
    }

    /// Waits until no instance has a change under way: a dropped or
    /// failed operation's fate is known only then. A restarted instance
    /// (no target slot holds it any more) with nothing under way or left to
    /// write is then let go: kept, its recovery task would scan Redis for
    /// the rest of the run (hundreds of them slowed a long run fivefold).
    pub async fn settled(&self) {
        let made = self.made.lock().unwrap().clone();
        for instance in &made {
            instance.settled().await;
        }
        drop(made);
        self.made
            .lock()
            .unwrap()
            .retain(|instance| Arc::strong_count(instance) > 1 || instance.pending_writes() > 0);
    }

    /// Whether no instance has a write round under way or wanted.
    pub fn rounds_done(&self) -> bool {
        let made = self.made.lock().unwrap().clone();
        made.iter().all(|instance| instance.pending_writes() == 0)
    }

    pub fn sync(&self) -> bool {
        self.mode == WriteMode::Sync
    }

    /// Holds the source's traffic (writes, for the in-memory source): held
    /// writes land once released.
    pub fn hold(&self) {
        match &self.truth {
            Truth::Firestore { gate, .. } => gate.hold(),
            Truth::Memory(source) => source.hold_writes(true),
        }
    }

    /// Lets the held traffic through.
    pub fn release(&self) {
        match &self.truth {
            Truth::Firestore { gate, .. } => gate.release(),
            Truth::Memory(source) => source.hold_writes(false),
        }
    }

    /// Edits the user's state in the source, as somebody else would:
    /// `balances` (one per kind), absolute. The in-memory source only.
    pub fn edit(&self, uid: &tower_tickets::Uid, balances: Vec<KindBalance>) {
        match &self.truth {
            Truth::Memory(source) => source.edit(uid, balances),
            Truth::Firestore { .. } => panic!("edits are drawn for the in-memory source only"),
        }
    }

    /// The user's state in the source, read directly.
    pub async fn document(
        &self,
        uid: &tower_tickets::Uid,
        now: DateTime<Utc>,
    ) -> Option<UserSnapshot> {
        match &self.truth {
            Truth::Firestore { reader, .. } => reader
                .load(uid, now)
                .await
                .expect("the emulator answers the checker"),
            Truth::Memory(source) => SourceOfTruth::load(source, uid, now)
                .await
                .expect("the in-memory source answers the checker"),
        }
    }
}
