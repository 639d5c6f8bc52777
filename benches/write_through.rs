//! Redis over Firestore over HTTP: one priced router on the Redis store
//! alone, then on the write-through store in sync and in async mode, on a
//! standalone Redis and on a 3-master Redis Cluster (a replica each), with
//! Google's Firestore emulator as Firestore. Then one user charged as fast
//! as possible through three sync instances on the cluster: how often its
//! document is written.
//!
//! Run with `cargo bench --features firestore --bench write_through` (about
//! 5 min). It starts its own `redis-server`s and Firestore emulator on free
//! 127.0.0.1 ports (the tests' harness) and drives the routers with `wrk`
//! (Debian package `wrk`), which must be on the PATH. Without `--bench`
//! (`cargo test --features firestore --benches`) it sends one request to
//! each router, to check the set-up, and measures nothing.
//! docs/benchmarks.md ("Redis over Firestore") records results.
//!
//! Every router serves `POST /upload` at one upload ticket, the user named
//! by an `x-user-id` header (the development identity: no JWT to verify, so
//! the store's cost stands out). Users start with a million tickets, so every
//! request is allowed, and are created beforehand (their documents too), so
//! no request reads Firestore. `wrk` runs 2 threads, 32 keep-alive
//! connections; each thread cycles through 2,000 users of its own, so a user
//! gets a request every second or so: what the sync figures show is the cost
//! of a Firestore write, not the one-write-per-second pacing of a single
//! user's burst. Each router is first warmed up for 10 s (the emulator's JVM
//! compiles its hot paths meanwhile); then the stores take turns, round after
//! round, each round waiting for the async writes of the one before; the
//! table gives each round and the medians, with the load average around the
//! run.

#[path = "../tests/support/firestore_emulator.rs"]
mod firestore_emulator;
#[allow(dead_code)]
#[path = "../tests/support/redis_server.rs"]
mod redis_server;

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, StatusCode};
use axum::routing::post;
use firestore_emulator::{FIRESTORE_TIMEOUT, FirestoreEmulator};
use redis_server::{RedisCluster, RedisServer};
use support::{Error, load_average};
use tokio::net::TcpListener;
use tower_tickets::identity::HeaderIdentity;
use tower_tickets::store::{
    ChargeOutcome, ChargeRequest, FirestoreSource, RedisStore, TicketStore, WriteMode, WriteThrough,
};
use tower_tickets::{Cost, TicketKind, Tickets, Uid};

const USER_HEADER: &str = "x-user-id";
const WRK_THREADS: usize = 2;
const CONNECTIONS: usize = 32;

/// How long the run lasts.
struct Schedule {
    /// Load on each router before anything is measured (the emulator's JVM
    /// compiles its hot paths meanwhile).
    warm_up: Duration,
    rounds: usize,
    round: Duration,
    /// Users per `wrk` thread.
    users: usize,
    /// Whether to measure at all (else: one request per router).
    measures: bool,
}

impl Schedule {
    const BENCH: Self = Self {
        warm_up: Duration::from_secs(10),
        rounds: 3,
        round: Duration::from_secs(10),
        users: 2000,
        measures: true,
    };
    const SMOKE: Self = Self {
        warm_up: Duration::ZERO,
        rounds: 1,
        round: Duration::ZERO,
        users: 1,
        measures: false,
    };
}

/// A router under test, and what it writes to Firestore.
struct Target {
    name: &'static str,
    address: SocketAddr,
    write_through: Option<WriteThrough>,
}

/// What `wrk` measured in one round.
struct Run {
    requests_per_sec: f64,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    /// Answers other than 2xx.
    failed: u64,
    firestore_writes_per_sec: Option<f64>,
}

fn main() -> Result<(), Error> {
    let schedule = if std::env::args().any(|a| a == "--bench") {
        Schedule::BENCH
    } else {
        Schedule::SMOKE
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let redis = RedisServer::start();
    let cluster = RedisCluster::start();
    let emulator = FirestoreEmulator::start();
    let targets = runtime.block_on(start_targets(&redis, &cluster, &emulator, &schedule))?;
    let burst = runtime.block_on(one_users_burst(&cluster, &emulator, &schedule))?;
    if !schedule.measures {
        for target in &targets {
            assert_eq!(post_once(target.address)?, 201, "{}", target.name);
        }
        println!("write_through: every router answered 201 (smoke run, nothing measured)");
        return Ok(());
    }
    println!("{burst}");
    println!();

    let script = wrk_script(schedule.users)?;
    for target in &targets {
        measure(target, &script, schedule.warm_up)?;
    }
    println!(
        "## Redis over Firestore (emulator): POST /upload, wrk {WRK_THREADS} threads, {CONNECTIONS} connections, {} users",
        WRK_THREADS * schedule.users
    );
    println!();
    println!("Load average before the run: {}", load_average());
    println!();
    println!("| round | store | req/s | p50 | p90 | p99 | non-2xx | Firestore writes/s |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut runs: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 1..=schedule.rounds {
        for (target, runs) in targets.iter().zip(&mut runs) {
            let run = measure(target, &script, schedule.round)?;
            println!("{}", row(&round.to_string(), target.name, &run));
            runs.push(run);
        }
    }
    for (target, runs) in targets.iter().zip(&runs) {
        println!("{}", row("**median**", target.name, &median_run(runs)));
    }
    println!();
    println!("Load average after the run: {}", load_average());
    Ok(())
}

/// Serves the routers, their users created beforehand: Redis alone, and
/// the write-through in both modes on the standalone server and on the
/// 3-master cluster (a replica each).
async fn start_targets(
    redis: &RedisServer,
    cluster: &RedisCluster,
    emulator: &FirestoreEmulator,
    schedule: &Schedule,
) -> Result<Vec<Target>, Error> {
    let redis_only = RedisStore::standalone(redis.url())
        .key_prefix("redis-only:")
        .connect()
        .await?;
    let mut targets = vec![serve("Redis only", redis_only, None, schedule).await?];
    for (name, mode, on_cluster) in [
        ("Redis + Firestore, sync", WriteMode::Sync, false),
        ("Redis + Firestore, async", WriteMode::Async, false),
        ("Redis Cluster + Firestore, sync", WriteMode::Sync, true),
        ("Redis Cluster + Firestore, async", WriteMode::Async, true),
    ] {
        let project = format!("bench-{mode:?}-{on_cluster}").to_lowercase();
        let source = FirestoreSource::new(emulator.client(&project).await, [kind()])
            .timeout(FIRESTORE_TIMEOUT);
        let redis = match on_cluster {
            false => RedisStore::standalone(redis.url()),
            true => RedisStore::cluster(cluster.urls()),
        };
        let store = WriteThrough::builder(redis.key_prefix(format!("{project}:")), source)
            .mode(mode)
            .connect()
            .await?;
        targets.push(serve(name, store.clone(), Some(store), schedule).await?);
    }
    Ok(targets)
}

/// Instances sharing one busy user, and the clients each serves at once.
const BURST_INSTANCES: usize = 3;
const BURST_CLIENTS: usize = 8;

/// One user charged as fast as possible through three sync write-through
/// instances on the cluster, for one round: how many writes its document
/// takes per second (the pace holds across instances: about one).
async fn one_users_burst(
    cluster: &RedisCluster,
    emulator: &FirestoreEmulator,
    schedule: &Schedule,
) -> Result<String, Error> {
    let db = emulator.client("bench-burst").await;
    let mut instances = Vec::new();
    for _ in 0..BURST_INSTANCES {
        let source = FirestoreSource::new(db.clone(), [kind()]).timeout(FIRESTORE_TIMEOUT);
        let store = WriteThrough::builder(
            RedisStore::cluster(cluster.urls()).key_prefix("bench-burst:"),
            source,
        )
        .connect()
        .await?;
        let tickets = Tickets::builder()
            .kind(kind())
            .store(store.clone())
            .build()?;
        instances.push((store, tickets));
    }
    let uid = Uid::parse("bench-busy")?;
    instances[0].1.ensure_user(&uid).await?;
    let duration = schedule.round.max(Duration::from_millis(1));
    let started = std::time::Instant::now();
    let clients: Vec<_> = instances
        .iter()
        .flat_map(|instance| (0..BURST_CLIENTS).map(move |_| instance.clone()))
        .map(|(store, tickets)| {
            let uid = uid.clone();
            tokio::spawn(async move {
                let cost = tickets.check_cost(&Cost::of("upload", 1))?;
                let mut allowed = 0_u64;
                loop {
                    let request = ChargeRequest::new(uid.clone(), cost.clone(), tickets.now());
                    if let Ok(ChargeOutcome::Allowed { .. }) = store.charge(request).await {
                        allowed += 1;
                    }
                    if started.elapsed() >= duration {
                        return Ok::<_, Error>(allowed);
                    }
                }
            })
        })
        .collect();
    let mut allowed = 0;
    for client in clients {
        allowed += client.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let writes: u64 = instances
        .iter()
        .map(|(store, _)| store.firestore_writes())
        .sum();
    Ok(format!(
        "One user, {BURST_INSTANCES} sync instances on the cluster, {BURST_CLIENTS} clients each: \
         {allowed} charges in {elapsed:.1} s, {writes} Firestore writes of its document \
         ({:.2} per second)",
        writes as f64 / elapsed
    ))
}

fn kind() -> TicketKind {
    TicketKind::new("upload", 1_000_000)
}

async fn serve(
    name: &'static str,
    store: impl TicketStore,
    write_through: Option<WriteThrough>,
    schedule: &Schedule,
) -> Result<Target, Error> {
    let tickets = Tickets::builder()
        .kind(kind())
        .store(store)
        .identity(HeaderIdentity::new(HeaderName::from_static(USER_HEADER)))
        .build()?;
    create_users(&tickets, schedule.users).await?;
    let router = Router::new().route(
        "/upload",
        post(|| async { StatusCode::CREATED }).route_layer(tickets.layer(Cost::of("upload", 1))?),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(Target {
        name,
        address,
        write_through,
    })
}

/// The users `wrk` sends as: `bench-<thread>-<n>`, threads numbered from 1.
async fn create_users(tickets: &Tickets, per_thread: usize) -> Result<(), Error> {
    let uids: Vec<Uid> = (1..=WRK_THREADS)
        .flat_map(|thread| (0..per_thread).map(move |n| format!("bench-{thread}-{n}")))
        .map(|uid| Uid::parse(&uid))
        .collect::<Result<_, _>>()?;
    for batch in uids.chunks(64) {
        let created: Vec<_> = batch
            .iter()
            .map(|uid| {
                let (tickets, uid) = (tickets.clone(), uid.clone());
                tokio::spawn(async move { tickets.ensure_user(&uid).await })
            })
            .collect();
        for user in created {
            user.await??;
        }
    }
    Ok(())
}

/// A `wrk` script: each thread cycles through `users` users of its own.
fn wrk_script(users: usize) -> Result<TempFile, Error> {
    let script = format!(
        r#"local next_id = 1
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end
local n = 0
function request()
  n = (n + 1) % {users}
  return wrk.format("POST", "/upload", {{["{USER_HEADER}"] = "bench-" .. id .. "-" .. n}}, "")
end
"#
    );
    TempFile::write("tower-tickets-write-through.lua", &script)
}

/// Runs `wrk` against `target` for `duration`.
fn measure(target: &Target, script: &TempFile, duration: Duration) -> Result<Run, Error> {
    let writes_before = target
        .write_through
        .as_ref()
        .map(WriteThrough::firestore_writes);
    let output = Command::new("wrk")
        .arg(format!("-t{WRK_THREADS}"))
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-d{}s", duration.as_secs()))
        .arg("--latency")
        .arg("-s")
        .arg(&script.0)
        .arg(format!("http://{}/upload", target.address))
        .output()
        .map_err(|e| format!("could not run wrk ({e}): install the Debian package wrk"))?;
    let report = String::from_utf8(output.stdout)?;
    if !output.status.success() {
        return Err(format!(
            "wrk failed: {report}{}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let writes = target
        .write_through
        .as_ref()
        .zip(writes_before)
        .map(|(store, before)| (store.firestore_writes() - before) as f64 / duration.as_secs_f64());
    // Async writes go on after the load: let them finish, so that they do
    // not weigh on the next router's round.
    if let Some(store) = &target.write_through {
        while store.pending_writes() > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    parse_wrk(&report, writes).ok_or_else(|| format!("unexpected wrk report:\n{report}").into())
}

/// Reads requests/s, the latency percentiles and the non-2xx count.
fn parse_wrk(report: &str, firestore_writes_per_sec: Option<f64>) -> Option<Run> {
    let value_after = |label: &str| {
        report
            .lines()
            .find_map(|line| line.trim().strip_prefix(label).map(str::trim))
    };
    let latency = |percent: &str| value_after(percent).and_then(parse_duration);
    Some(Run {
        requests_per_sec: value_after("Requests/sec:")?.parse().ok()?,
        p50: latency("50%")?,
        p90: latency("90%")?,
        p99: latency("99%")?,
        failed: value_after("Non-2xx or 3xx responses:").map_or(Some(0), |n| n.parse().ok())?,
        firestore_writes_per_sec,
    })
}

/// `wrk`'s durations: `812.00us`, `1.23ms`, `2.01s`.
fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

fn median_run(runs: &[Run]) -> Run {
    let median = |pick: &dyn Fn(&Run) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let duration =
        |pick: fn(&Run) -> Duration| Duration::from_secs_f64(median(&|r| pick(r).as_secs_f64()));
    Run {
        requests_per_sec: median(&|r| r.requests_per_sec),
        p50: duration(|r| r.p50),
        p90: duration(|r| r.p90),
        p99: duration(|r| r.p99),
        failed: runs.iter().map(|r| r.failed).sum(),
        firestore_writes_per_sec: runs[0]
            .firestore_writes_per_sec
            .map(|_| median(&|r| r.firestore_writes_per_sec.unwrap_or_default())),
    }
}

fn row(round: &str, store: &str, run: &Run) -> String {
    let millis = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    format!(
        "| {round} | {store} | {:.0} | {} | {} | {} | {} | {} |",
        run.requests_per_sec,
        millis(run.p50),
        millis(run.p90),
        millis(run.p99),
        run.failed,
        run.firestore_writes_per_sec
            .map_or_else(|| "-".to_string(), |w| format!("{w:.0}")),
    )
}

/// One `POST /upload` as user `bench-1-0`; the status code.
fn post_once(address: SocketAddr) -> Result<u16, Error> {
    let mut stream = TcpStream::connect(address)?;
    write!(
        stream,
        "POST /upload HTTP/1.1\r\nHost: {address}\r\n{USER_HEADER}: bench-1-0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer.split(' ').nth(1).ok_or("an empty answer")?;
    Ok(status.parse()?)
}

/// A file in the temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn write(name: &str, contents: &str) -> Result<Self, Error> {
        let path = std::env::temp_dir().join(format!("{}-{name}", std::process::id()));
        std::fs::write(&path, contents)?;
        Ok(Self(path))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
