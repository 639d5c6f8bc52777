//! Command-line flags; each has an environment variable of the same meaning.

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

    /// Bearer token that /api/admin/* require. Without it the admin routes
    /// answer 401 to everyone.
    #[arg(
        long,
        env = "TICKETS_ADMIN_TOKEN",
        hide_env_values = true,
        value_parser = NonEmptyStringValueParser::new()
    )]
    pub admin_token: Option<String>,

    /// Where balances live (listed last: its help heading applies to the
    /// flags after it).
    #[command(flatten)]
    pub store: StoreArgs,
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

    /// Google Cloud project whose Firestore holds users/{uid}, written
    /// through from Redis (--redis-url), which decides; needs the `firestore`
    /// feature (on by default). Set FIRESTORE_EMULATOR_HOST=host:port to use
    /// the emulator; otherwise Google's usual credential discovery applies.
    #[arg(long, env = "TICKETS_FIRESTORE_PROJECT")]
    pub firestore_project: Option<String>,
}

impl StoreArgs {
    /// Where balances live, for the start-up log.
    pub fn describe(&self) -> String {
        match (&self.firestore_project, self.store) {
            (Some(project), _) => format!("redis {} over firestore {project}", self.redis_url),
            (None, StoreKind::Memory) => "memory".into(),
            (None, StoreKind::Redis) => format!("redis {}", self.redis_url),
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
