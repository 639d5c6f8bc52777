//! Command-line flags; each has an environment variable of the same meaning.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::NonEmptyStringValueParser;
use clap::{Args, Parser, ValueEnum};

/// The tower-tickets demo server: 5 upload and 3 AI tickets per user,
/// refilled every --refill-period.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Every flag can also be set through the environment variable shown in brackets."
)]
pub struct Cli {
    /// Address to listen on. Port 0 picks a free port; the address actually
    /// bound is logged as "listening on http://<address>".
    #[arg(long, env = "TICKETS_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Time between two refills of a user's tickets (rolling: counted from
    /// the last refill), e.g. 24h, 10m, 2s.
    #[arg(
        long,
        env = "TICKETS_REFILL_PERIOD",
        default_value = "24h",
        value_parser = humantime::parse_duration
    )]
    pub refill_period: Duration,

    /// Secret that signs the tokens /api/signup hands out (HS256). Without
    /// it a random secret is generated, and tokens stop working when the
    /// server restarts.
    #[arg(
        long,
        env = "TICKETS_JWT_SECRET",
        hide_env_values = true,
        value_parser = NonEmptyStringValueParser::new()
    )]
    pub jwt_secret: Option<String>,

    /// Longest wait for a request's headers; a client that sends less in
    /// that time is disconnected.
    #[arg(
        long,
        env = "TICKETS_HEADER_READ_TIMEOUT",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub header_read_timeout: Duration,

    /// Bearer token that /api/admin/* require (and /metrics from another
    /// machine). Without it the admin routes answer 401 to everyone. Use 32
    /// or more random characters.
    #[arg(
        long,
        env = "TICKETS_ADMIN_TOKEN",
        hide_env_values = true,
        value_parser = NonEmptyStringValueParser::new()
    )]
    pub admin_token: Option<String>,

    /// Who the users are: the demo's own tokens, or Firebase Auth's.
    #[command(flatten)]
    pub identity: IdentityArgs,

    /// Where balances live (listed last: its help heading applies to the
    /// flags after it).
    #[command(flatten)]
    pub store: StoreArgs,
}

/// The identity flags, read by `identity::install`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Identity")]
pub struct IdentityArgs {
    /// Firebase project whose ID tokens the priced and balance routes take
    /// instead of the demo's own (POST /api/signup then answers 404); needs
    /// the `firebase` feature. With FIREBASE_AUTH_EMULATOR_HOST set, the
    /// Firebase Auth emulator's tokens are accepted.
    #[arg(long, env = "TICKETS_FIREBASE_AUTH", value_name = "PROJECT")]
    pub firebase_auth: Option<String>,

    /// Where --firebase-auth fetches the keys that sign ID tokens (default:
    /// Google's); for tests.
    #[arg(long, env = "TICKETS_FIREBASE_KEYS_URL", requires = "firebase_auth")]
    pub firebase_keys_url: Option<String>,
}

/// The store flags, read by `store::open`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Store")]
pub struct StoreArgs {
    /// Which store keeps balances: `memory` (in this process, forgotten on
    /// restart) or `redis` (shared by every instance; see --redis-url).
    #[arg(long, env = "TICKETS_STORE", value_enum, default_value_t = StoreKind::Memory)]
    pub store: StoreKind,

    /// Redis server used by `--store redis`.
    #[arg(
        long,
        env = "TICKETS_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// A Redis Cluster instead of --redis-url: some of its nodes, as
    /// `host:port,host:port,…` (the others are found from them).
    #[arg(
        long,
        env = "TICKETS_REDIS_CLUSTER",
        value_delimiter = ',',
        conflicts_with = "redis_url"
    )]
    pub redis_cluster: Vec<String>,

    /// Google Cloud project whose Firestore holds users/{uid}, written
    /// through from Redis (--redis-url), which decides; needs the `firestore`
    /// feature (`--features firestore`). Set FIRESTORE_EMULATOR_HOST=host:port to use
    /// the emulator; otherwise Google's usual credential discovery applies.
    #[arg(long, env = "TICKETS_FIRESTORE_PROJECT")]
    pub firestore_project: Option<String>,
}

impl StoreArgs {
    /// Where balances live, for the start-up log.
    pub fn describe(&self) -> String {
        match (&self.firestore_project, self.store) {
            (Some(project), _) => format!("{} over firestore {project}", self.redis()),
            (None, StoreKind::Memory) => "memory".into(),
            (None, StoreKind::Redis) => self.redis().to_string(),
        }
    }

    /// The Redis that --redis-url or --redis-cluster names.
    pub fn redis(&self) -> RedisTarget {
        if self.redis_cluster.is_empty() {
            RedisTarget::Standalone(self.redis_url.clone())
        } else {
            RedisTarget::Cluster(
                self.redis_cluster
                    .iter()
                    .map(|node| match node.contains("://") {
                        true => node.clone(),
                        false => format!("redis://{node}"),
                    })
                    .collect(),
            )
        }
    }
}

/// A standalone Redis by URL, or a cluster by the URLs of some nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Standalone(String),
    Cluster(Vec<String>),
}

impl fmt::Display for RedisTarget {
    /// As the flag that names it, for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Standalone(url) => write!(f, "--redis-url {url}"),
            Self::Cluster(nodes) => write!(f, "--redis-cluster {}", nodes.join(",")),
        }
    }
}

/// The `--store` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// In this process's memory.
    Memory,
    /// A Redis server.
    Redis,
}
