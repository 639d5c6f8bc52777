//! Faults: what each target takes, and how they are done to Redis and
//! Firestore.
//!
//! | target | faults |
//! |---|---|
//! | memory, refusal cache | none (one process, no I/O) |
//! | Redis | FLUSHALL (every user starts over), an instance restarted with a charge in flight, a charge future dropped, Redis paused past the store timeout |
//! | write-through, sync | all of Redis's (the pause on the in-memory source only), plus deleting one user's hash, RESTORE of an earlier DUMP of it, Firestore unreachable for a few operations |
//! | write-through, async | as sync minus RESTORE (a rollback is an async loss of another name) |
//!
//! The in-memory write-through targets also take edits made straight to
//! the source (DESIGN.md §4), drawn as faults: they come from outside. On a
//! Redis Cluster they take the same faults: FLUSHALL and pauses on every
//! master, the others on the user's.

use rand::Rng;
use rand::rngs::StdRng;
use tower_tickets::store::source::Point;

/// One kind of fault on a target's menu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    FlushAll,
    DeleteUser,
    /// Dumps a user's hash now (kept), or restores the last dump.
    DumpOrRestore,
    FirestoreOutage,
    RestartInstance,
    PauseRedis,
    /// An edit made straight to the source, by somebody else.
    EditSource,
}

/// A fault drawn for one history step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    FlushAll,
    DeleteUser {
        user: usize,
    },
    DumpOrRestore {
        user: usize,
    },
    /// Holds Firestore's traffic for this many operations.
    FirestoreOutage {
        ops: usize,
    },
    /// Drops the instance while one charge of `user`'s is `polls` polls in.
    RestartInstance {
        instance: usize,
        user: usize,
        polls: usize,
    },
    /// Pauses Redis's writes past the store's timeout while `user` is
    /// charged.
    PauseRedis {
        user: usize,
    },
    /// Sets `user`'s balances in the source: per kind, `counts[k]` when
    /// `Some`; and moves kind `due`'s last refill a period and a
    /// millisecond back, so that a refill is due.
    EditSource {
        user: usize,
        counts: Vec<Option<u32>>,
        due: Option<usize>,
    },
}

impl FaultKind {
    /// A fault on a target of `users` users, `instances` instances and
    /// `kinds` kinds of ticket (up to `capacity` each).
    pub fn draw(
        self,
        rng: &mut StdRng,
        (users, instances): (usize, usize),
        (kinds, capacity): (usize, u32),
    ) -> Fault {
        let user = rng.gen_range(0..users);
        match self {
            Self::FlushAll => Fault::FlushAll,
            Self::DeleteUser => Fault::DeleteUser { user },
            Self::DumpOrRestore => Fault::DumpOrRestore { user },
            Self::FirestoreOutage => Fault::FirestoreOutage {
                ops: rng.gen_range(1..=4),
            },
            Self::RestartInstance => Fault::RestartInstance {
                instance: rng.gen_range(0..instances),
                user,
                polls: rng.gen_range(0..4),
            },
            Self::PauseRedis => Fault::PauseRedis { user },
            Self::EditSource => Fault::EditSource {
                user,
                counts: (0..kinds)
                    .map(|_| rng.gen_bool(0.5).then(|| rng.gen_range(0..=capacity + 2)))
                    .collect(),
                due: rng.gen_bool(0.3).then(|| rng.gen_range(0..kinds)),
            },
        }
    }
}

impl Fault {
    /// The user the fault concerns, when it concerns one.
    pub fn user(&self) -> Option<usize> {
        match self {
            Self::DeleteUser { user }
            | Self::DumpOrRestore { user }
            | Self::RestartInstance { user, .. }
            | Self::PauseRedis { user }
            | Self::EditSource { user, .. } => Some(*user),
            Self::FlushAll | Self::FirestoreOutage { .. } => None,
        }
    }
}

/// Redis commands the faults send, on a connection of their own (to the
/// server, or to the cluster: keyed commands go to the key's master).
#[derive(Clone)]
pub struct RedisFaults {
    client: Client,
    prefix: String,
}

#[derive(Clone)]
enum Client {
    Standalone(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

impl RedisFaults {
    pub fn new(url: &str, prefix: &str) -> Self {
        Self {
            client: Client::Standalone(redis::Client::open(url).expect("a Redis URL")),
            prefix: prefix.to_string(),
        }
    }

    /// On the cluster whose masters are at `urls`.
    pub fn cluster(urls: Vec<String>, prefix: &str) -> Self {
        Self {
            client: Client::Cluster(Box::new(
                redis::cluster::ClusterClient::new(urls).expect("the cluster's URLs"),
            )),
            prefix: prefix.to_string(),
        }
    }

    fn connection(&self) -> Box<dyn redis::ConnectionLike> {
        match &self.client {
            Client::Standalone(client) => {
                Box::new(client.get_connection().expect("the test Redis answers"))
            }
            Client::Cluster(client) => {
                Box::new(client.get_connection().expect("the test cluster answers"))
            }
        }
    }

    /// Sends `command` to the server, or to every master of the cluster.
    fn on_every_master(&self, command: &redis::Cmd) {
        match &self.client {
            Client::Standalone(_) => command.exec(&mut *self.connection()).expect("a command"),
            Client::Cluster(client) => {
                use redis::cluster_routing::{
                    MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo,
                };
                let routing = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::AllSucceeded),
                ));
                client
                    .get_connection()
                    .expect("the test cluster answers")
                    .route_command(command, routing)
                    .expect("a command on every master");
            }
        }
    }

    /// The user's balances hash (the layout in `RedisStore`'s docs).
    pub fn hash(&self, uid: &str) -> String {
        format!("{}{{{uid}}}:t", self.prefix)
    }

    pub fn flush_all(&self) {
        self.on_every_master(&redis::cmd("FLUSHALL"));
    }

    /// Makes the user's state overdue for a check of the source, as two
    /// seconds of a user's silence would: the next script that touches it
    /// has its caller check the source first.
    pub fn overdue_for_check(&self, uid: &str) {
        redis::cmd("HDEL")
            .arg(self.hash(uid))
            .arg("f")
            .arg("fc")
            .exec(&mut *self.connection())
            .expect("HDEL");
    }

    pub fn delete(&self, uid: &str) {
        redis::cmd("DEL")
            .arg(self.hash(uid))
            .exec(&mut *self.connection())
            .expect("DEL");
    }

    /// The hash as `DUMP` serializes it, `None` when absent.
    pub fn dump(&self, uid: &str) -> Option<Vec<u8>> {
        redis::cmd("DUMP")
            .arg(self.hash(uid))
            .query(&mut *self.connection())
            .expect("DUMP")
    }

    /// Puts back a dumped hash, replacing what is there, without expiry.
    pub fn restore(&self, uid: &str, dump: &[u8]) {
        redis::cmd("RESTORE")
            .arg(self.hash(uid))
            .arg(0)
            .arg(dump)
            .arg("REPLACE")
            .exec(&mut *self.connection())
            .expect("RESTORE");
    }

    /// Holds every write command (scripts included) for `ms`.
    pub fn pause_writes(&self, ms: u64) {
        self.on_every_master(redis::cmd("CLIENT").arg("PAUSE").arg(ms).arg("WRITE"));
    }

    pub fn unpause(&self) {
        self.on_every_master(redis::cmd("CLIENT").arg("UNPAUSE"));
    }

    /// Whether a write-through store seeded the user's hash from Firestore
    /// (it carries a version); a hash without one holds nothing decided.
    pub fn seeded(&self, uid: &str) -> bool {
        redis::cmd("HEXISTS")
            .arg(self.hash(uid))
            .arg("v")
            .query(&mut *self.connection())
            .expect("HEXISTS")
    }

    /// Whether a write-through store has changes of the user that the
    /// source does not hold yet (its pending key, in `RedisState`'s layout).
    pub fn pending(&self, uid: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(format!("{}{{{uid}}}:w", self.prefix))
            .query(&mut *self.connection())
            .expect("EXISTS")
    }

    /// The point (lineage and version) of the user's state in Redis, for
    /// failure reports: `None` when Redis holds no seeded state.
    pub fn point(&self, uid: &str) -> Option<(u64, u64)> {
        let (lineage, version): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.hash(uid))
            .arg("l")
            .arg("v")
            .query(&mut *self.connection())
            .expect("HMGET");
        Some((lineage?, version?))
    }

    /// Whether the state Redis holds for the user includes a change made
    /// at `made_at`, read as the scripts' `includes` reads it (common.lua):
    /// `None` when Redis holds no seeded state of the user.
    pub fn includes(&self, uid: &str, made_at: Point) -> Option<bool> {
        let (lineage, version, origins): (Option<u64>, Option<u64>, Option<String>) =
            redis::cmd("HMGET")
                .arg(self.hash(uid))
                .arg("l")
                .arg("v")
                .arg("a")
                .query(&mut *self.connection())
                .expect("HMGET");
        let (lineage, version) = (lineage?, version?);
        if made_at.lineage == 0 {
            return Some(true);
        }
        if lineage == made_at.lineage {
            return Some(version >= made_at.version);
        }
        let named = origins
            .unwrap_or_default()
            .split_whitespace()
            .any(|origin| {
                origin.split_once('@').is_some_and(|(l, v)| {
                    l.parse() == Ok(made_at.lineage)
                        && v.parse::<u64>().is_ok_and(|v| v > made_at.version)
                })
            });
        Some(named)
    }

    /// Reads fields `n:<kind>` and `r:<kind>` of the user's hash.
    pub fn fields(&self, uid: &str, kinds: &[&str]) -> Vec<(Option<u32>, Option<i64>)> {
        let mut command = redis::cmd("HMGET");
        command.arg(self.hash(uid));
        for kind in kinds {
            command.arg(format!("n:{kind}")).arg(format!("r:{kind}"));
        }
        let values: Vec<Option<i64>> = command.query(&mut *self.connection()).expect("HMGET");
        values
            .chunks(2)
            .map(|pair| (pair[0].map(|n| n as u32), pair[1]))
            .collect()
    }
}
