//! The ticket layer against its peers, like with like, in one run: the same
//! trivial handler on `GET /u/{id}` (the user id from the path), 100,000
//! users picked at random per request, behind
//!
//! - nothing (**bare**);
//! - **tower_governor** (GCRA in memory), keyed by the same string uid, its
//!   headers on, a quota no user exhausts;
//! - a **naive** `from_fn` middleware: one `EVALSHA` of a 20-line
//!   `HMGET`/`HSET` script ([`NAIVE_SCRIPT`]) per request on one multiplexed
//!   connection, 429 when refused;
//! - the ticket layer on the embedded store (**memory**), a quota no user
//!   exhausts;
//! - the ticket layer on Redis alone (`RefusalCache<RedisStore>`, Redis
//!   `TIME`, batching on: the defaults), users with tickets (**redis
//!   allowed**), the same with batching off (**redis unbatched**: one call
//!   per charge), users at zero (**redis refused, many users**), and one
//!   user at zero (**redis refused, one user**: answered by the refusal
//!   cache);
//! - no layer, but a handler that answers with the bytes of one refusal
//!   taken beforehand (**canned 429**): the floor of the refused path.
//!
//! Run with `cargo bench --features redis --bench peers` (about 3 min);
//! append path names (`-- governor memory`) to run only those. It starts its own
//! `redis-server` on a free 127.0.0.1 port (the tests' harness) and stops
//! it by pid. Every user is created before the first round (each path's
//! store holds all 100,000), so no round measures first sight.
//!
//! The load comes from **a separate process**: this executable started
//! again as a hyper load generator (64 keep-alive connections, one request in
//! flight on each, 2 tokio worker threads), so that the server's CPU time
//! (`/proc/self/stat`) counts the server only; Redis's comes from
//! `/proc/<pid>/stat`. Both are divided by the answers of the expected
//! status. Paths take turns within a round; a ratio in a median row is the
//! median of the rounds' ratios (each round's samples are seconds apart,
//! under the same outside load). For the Redis paths, `INFO commandstats`
//! (reset before each run) gives the script's (or the charge function's)
//! µs per call in Redis.
//!
//! Without `--bench` (`cargo test --benches`), one short round on 1,000
//! users checks the set-up and measures nothing. docs/benchmarks.md
//! ("Peers") records results.

/// The tests' harness; the benchmark uses its standalone server only.
#[allow(dead_code)]
#[path = "../tests/support/redis_server.rs"]
mod redis_server;

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request as AxumRequest;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::routing::get;
use http::header::HOST;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use redis_server::RedisServer;
use support::peer_routers::{
    self, CAPACITY, KIND, PathIdentity, create_users, handler, path_uid, priced, tickets, uids,
    user,
};
use support::{Error, load_average, median, runtime, serve};
use tokio::net::TcpStream;
use tower::ServiceExt;
use tower_tickets::store::{RedisStore, RefusalCache};
use tower_tickets::{TicketKind, Tickets};

/// Keep-alive connections of the load generator, one request in flight each.
const CONNECTIONS: usize = 64;
/// Name of the server runtime's threads.
const SERVER_THREADS: &str = "peers-server";
/// The first argument that makes this executable a load generator.
const GENERATOR: &str = "--load-generator";

/// The naive middleware's decision: refill to capacity once a period has
/// passed since the last refill, then spend if the balance allows.
/// ARGV: cost, capacity, period (ms). Reply: {allowed, remaining, refill}.
const NAIVE_SCRIPT: &str = include_str!("lua/naive.lua");

/// How long the run lasts.
struct Schedule {
    users: usize,
    rounds: usize,
    round: Duration,
    /// Load on each path before the first round.
    warm_up: Duration,
    /// Whether the figures mean anything (an optimized build, many users).
    measures: bool,
}

impl Schedule {
    /// Many short rounds rather than a few long ones: on a shared machine,
    /// outside load shifts within seconds, and a median over more
    /// interleaved rounds is steadier.
    const BENCH: Self = Self {
        users: 100_000,
        rounds: 7,
        round: Duration::from_millis(1500),
        warm_up: Duration::from_secs(1),
        measures: true,
    };
    const SMOKE: Self = Self {
        users: 1_000,
        rounds: 1,
        round: Duration::from_millis(200),
        warm_up: Duration::from_millis(50),
        measures: false,
    };
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(GENERATOR) {
        return generate_load(&args[1..]);
    }
    let schedule = if args.iter().any(|arg| arg == "--bench") {
        Schedule::BENCH
    } else {
        Schedule::SMOKE
    };
    // `cargo bench ... --bench peers -- memory governor` runs only those paths
    // (and bare, the reference).
    let chosen: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let server = runtime(SERVER_THREADS)?;
    let redis = RedisServer::start();
    let chosen_path = |name: &str| chosen.is_empty() || chosen.iter().any(|c| name.starts_with(c));
    // A set-up serves several paths: it runs when any of them is chosen.
    let mut paths = server.block_on(paths(&redis, schedule.users, |set_up: &str| {
        chosen_path(set_up) || chosen.iter().any(|c| c.starts_with(set_up))
    }))?;
    paths.retain(|path| path.name == "bare" || chosen_path(path.name));

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let redis_version = Command::new("redis-server").arg("--version").output()?;
    println!(
        "Peers: GET /u/{{id}}, {} users picked at random per request, {CONNECTIONS} keep-alive \
         connections from a separate load-generator process (2 tokio worker threads); \
         server: axum on a tokio runtime with 2 worker threads. {} rounds of {:?} per path \
         after a {:?} warm-up of each. {cores} cores shared by the server, the load generator \
         and redis-server ({}). Load average at start: {}.",
        schedule.users,
        schedule.rounds,
        schedule.round,
        schedule.warm_up,
        String::from_utf8_lossy(&redis_version.stdout).trim(),
        load_average(),
    );
    for path in &paths {
        load(path, &redis, schedule.users, schedule.warm_up)?;
    }

    println!();
    println!(
        "| round | path | req/s | vs bare | vs peer | p50 | p99 | server CPU/req | Redis CPU/req | script µs/call (commandstats) | other statuses |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut rounds: Vec<Vec<Run>> = Vec::new();
    for round in 1..=schedule.rounds {
        let runs = paths
            .iter()
            .map(|path| load(path, &redis, schedule.users, schedule.round))
            .collect::<Result<Vec<Run>, Error>>()?;
        for (path, run) in paths.iter().zip(&runs) {
            let (to_bare, to_peer) = ratios(&paths, &runs, path, run);
            println!("{}", row(&round.to_string(), path, run, to_bare, to_peer));
        }
        rounds.push(runs);
    }
    let mut verdicts = Vec::new();
    for (p, path) in paths.iter().enumerate() {
        let column = |pick: fn(&Run) -> f64| median(rounds.iter().map(|r| pick(&r[p])).collect());
        let seconds = |pick: fn(&Run) -> f64| Duration::from_secs_f64(column(pick));
        let median_run = Run {
            requests_per_sec: column(|r| r.requests_per_sec),
            p50: seconds(|r| r.p50.as_secs_f64()),
            p99: seconds(|r| r.p99.as_secs_f64()),
            server_cpu: seconds(|r| r.server_cpu.as_secs_f64()),
            redis_cpu: seconds(|r| r.redis_cpu.as_secs_f64()),
            script_usec: column(|r| r.script_usec),
            unexpected: rounds.iter().map(|r| r[p].unexpected).sum(),
        };
        let ratio = |pick: fn(f64, f64) -> Option<f64>| {
            let per_round: Vec<f64> = rounds
                .iter()
                .filter_map(|runs| {
                    let (to_bare, to_peer) = ratios(&paths, runs, path, &runs[p]);
                    pick(to_bare, to_peer.unwrap_or(f64::NAN))
                })
                .filter(|r| !r.is_nan())
                .collect();
            (!per_round.is_empty()).then(|| median(per_round))
        };
        let to_bare = ratio(|bare, _| Some(bare)).unwrap_or(f64::NAN);
        let to_peer = ratio(|_, peer| Some(peer));
        println!("{}", row("**median**", path, &median_run, to_bare, to_peer));
        if let Some((goal, against)) = path.goal {
            let measured = match against {
                Against::Bare => Some(to_bare),
                Against::Peer => to_peer,
            };
            if let Some(measured) = measured {
                let reference = match against {
                    Against::Bare => "bare",
                    Against::Peer => path.peer.unwrap_or("its peer"),
                };
                verdicts.push(format!(
                    "{}: {measured:.2} of {reference}'s requests/s (goal ≥ {goal:.2}): {}; \
                     server CPU per request {:.2} of {reference}'s",
                    path.name,
                    if measured >= goal { "met" } else { "not met" },
                    cpu_ratio(&paths, &rounds, path.name, reference, |r| r.server_cpu)
                        .unwrap_or(f64::NAN),
                ));
            }
        }
    }
    if let Some(cpu) = cpu_ratio(&paths, &rounds, "redis allowed", "naive", |r| r.redis_cpu) {
        verdicts.push(format!(
            "Redis CPU per decision, redis allowed (batched) / naive: {cpu:.2} (goal ≤ 0.60): {}",
            if cpu <= 0.6 { "met" } else { "not met" }
        ));
    }
    if let Some(cpu) = cpu_ratio(&paths, &rounds, "redis unbatched", "naive", |r| r.redis_cpu) {
        verdicts.push(format!(
            "Redis CPU per decision, redis unbatched / naive: {cpu:.2}"
        ));
    }
    println!();
    if schedule.measures {
        for verdict in verdicts {
            println!("- {verdict}");
        }
    } else {
        println!("Smoke run (without --bench): the set-up works; nothing is measured.");
    }
    println!("Load average at end: {}.", load_average());
    Ok(())
}

/// What a path's figures are compared with for its goal.
#[derive(Clone, Copy)]
enum Against {
    Bare,
    Peer,
}

/// One router under test.
struct Path {
    name: &'static str,
    address: SocketAddr,
    /// How many distinct users the load generator picks from.
    users: usize,
    expected: StatusCode,
    /// The path whose requests/s this one is held against.
    peer: Option<&'static str>,
    goal: Option<(f64, Against)>,
    /// Whether it asks Redis (then `INFO commandstats` is read).
    redis: bool,
}

/// Builds and serves the routers of the paths `wanted` (and bare);
/// creates every user in each store.
async fn paths(
    redis: &RedisServer,
    users: usize,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<Path>, Error> {
    let uids = uids(users);
    let on_redis = |prefix: &'static str, batching: bool| {
        let url = redis.url();
        async move {
            Ok::<_, Error>(RefusalCache::new(
                RedisStore::standalone(url)
                    .key_prefix(prefix)
                    .batching(batching)
                    .connect()
                    .await?,
            ))
        }
    };
    let path = |name, address, expected| Path {
        name,
        address,
        users,
        expected,
        peer: None,
        goal: None,
        redis: false,
    };
    let mut paths = vec![path("bare", serve(handler()).await?, StatusCode::OK)];
    if wanted("governor") {
        let router = peer_routers::governor(users)?;
        paths.push(path("governor", serve(router).await?, StatusCode::OK));
    }
    if wanted("naive") {
        paths.push(Path {
            redis: true,
            ..path(
                "naive",
                serve(naive(&redis.url()).await?).await?,
                StatusCode::OK,
            )
        });
    }
    if wanted("memory") {
        let router = peer_routers::memory(&uids).await?;
        paths.push(Path {
            peer: Some("governor"),
            goal: Some((1.0, Against::Peer)),
            ..path("memory", serve(router).await?, StatusCode::OK)
        });
    }
    for (name, prefix, batching, goal) in [
        ("redis allowed", "allowed:", true, 1.15),
        ("redis unbatched", "unbatched:", false, 1.0),
    ] {
        if !wanted(name) {
            continue;
        }
        let allowed = tickets(on_redis(prefix, batching).await?)?;
        create_users(&allowed, &uids).await?;
        let router = priced(&allowed)?;
        paths.push(Path {
            peer: Some("naive"),
            goal: Some((goal, Against::Peer)),
            redis: true,
            ..path(name, serve(router).await?, StatusCode::OK)
        });
    }
    if wanted("redis refused") {
        // Users at zero: the kind starts new users with none.
        let refused = Tickets::builder()
            .kind(TicketKind::new(KIND, 5).initial(0))
            .identity(PathIdentity)
            .store(on_redis("refused:", true).await?)
            .build()?;
        create_users(&refused, &uids).await?;
        let refused_router = priced(&refused)?;
        let canned = canned_refusal(refused_router.clone()).await?;
        let address = serve(refused_router).await?;
        let refusal = StatusCode::TOO_MANY_REQUESTS;
        paths.push(Path {
            redis: true,
            ..path("redis refused, many users", address, refusal)
        });
        // Its goal is against bare; against the canned 429 (the same
        // answer without the layer) it shows what the layer's work costs.
        paths.push(Path {
            users: 1,
            peer: Some("canned 429"),
            goal: Some((0.9, Against::Bare)),
            redis: true,
            ..path("redis refused, one user", address, refusal)
        });
        paths.push(Path {
            users: 1,
            ..path("canned 429", serve(canned).await?, refusal)
        });
    }
    Ok(paths)
}

/// The floor of the refused path: a handler that answers every request,
/// with no layer, with the very status, headers and body `priced` gave
/// user 0 (one refusal taken beforehand). What is left between it and
/// bare is the cost of the larger answer, for the server and the load
/// generator alike; between it and the refused path, the layer's work.
async fn canned_refusal(priced: Router) -> Result<Router, Error> {
    let request = Request::get(format!("/u/{}", user(0))).body(axum::body::Body::empty())?;
    let refusal = priced.oneshot(request).await?;
    let status = refusal.status();
    let mut headers = refusal.headers().clone();
    headers.remove(http::header::CONTENT_LENGTH);
    let body = refusal.into_body().collect().await?.to_bytes();
    let answer = move || {
        let (headers, body) = (headers.clone(), body.clone());
        async move { (status, headers, body) }
    };
    Ok(Router::new().route("/u/{id}", get(answer)))
}

/// The naive middleware: one `EVALSHA` of [`NAIVE_SCRIPT`] per request on
/// one multiplexed connection; 429 when refused, 503 when Redis fails.
async fn naive(url: &str) -> Result<Router, Error> {
    let connection = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let script = redis::Script::new(NAIVE_SCRIPT);
    script.load_async(&mut connection.clone()).await?;
    let period_ms = 24 * 3600 * 1000u64;
    let decide = move |request: AxumRequest, next: Next| {
        let (mut connection, script) = (connection.clone(), script.clone());
        async move {
            let Some(id) = path_uid(request.uri().path()) else {
                return StatusCode::UNAUTHORIZED.into_response();
            };
            let decision: redis::RedisResult<(i64, i64, i64)> = script
                .key(format!("naive:{{{id}}}"))
                .arg(1)
                .arg(CAPACITY)
                .arg(period_ms)
                .invoke_async(&mut connection)
                .await;
            match decision {
                Ok((1, ..)) => next.run(request).await,
                Ok(_) => StatusCode::TOO_MANY_REQUESTS.into_response(),
                Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
            }
        }
    };
    Ok(handler().route_layer(axum::middleware::from_fn(decide)))
}

/// One load run against one path.
struct Run {
    requests_per_sec: f64,
    p50: Duration,
    p99: Duration,
    /// This process's CPU time (the server) per expected answer.
    server_cpu: Duration,
    /// redis-server's CPU time per expected answer.
    redis_cpu: Duration,
    /// The script's µs per call in Redis (`INFO commandstats`), or NaN.
    script_usec: f64,
    unexpected: u64,
}

/// Drives `path` from a load-generator process for `duration`.
fn load(path: &Path, redis: &RedisServer, users: usize, duration: Duration) -> Result<Run, Error> {
    let users = users.min(path.users);
    let mut stats = redis.connection();
    if path.redis {
        redis::cmd("CONFIG").arg("RESETSTAT").exec(&mut stats)?;
    }
    let server_before = process_cpu("self");
    let redis_before = process_cpu(&redis.pid().to_string());
    let output = Command::new(std::env::current_exe()?)
        .arg(GENERATOR)
        .arg(path.address.to_string())
        .arg(users.to_string())
        .arg(duration.as_millis().to_string())
        .output()?;
    let server_cpu = process_cpu("self").saturating_sub(server_before);
    let redis_cpu = process_cpu(&redis.pid().to_string()).saturating_sub(redis_before);
    if !output.status.success() {
        return Err(format!(
            "the load generator failed on {}: {}",
            path.name,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let report = Report::parse(&String::from_utf8_lossy(&output.stdout))?;
    let expected = report.count(path.expected);
    let per = |cpu: Duration| cpu / u32::try_from(expected.max(1)).unwrap_or(u32::MAX);
    let script_usec = if path.redis {
        let info: String = redis::cmd("INFO").arg("commandstats").query(&mut stats)?;
        // The layer's charges are `FCALL`s on Redis 7; the naive
        // middleware's are `EVALSHA`s.
        let function = usec_per_call(&info, "fcall");
        if function.is_nan() {
            usec_per_call(&info, "evalsha")
        } else {
            function
        }
    } else {
        f64::NAN
    };
    Ok(Run {
        requests_per_sec: expected as f64 / report.elapsed.as_secs_f64(),
        p50: report.p50,
        p99: report.p99,
        server_cpu: per(server_cpu),
        redis_cpu: per(redis_cpu),
        script_usec,
        unexpected: report.total() - expected,
    })
}

/// This run's requests/s against bare's and against its peer's.
fn ratios(paths: &[Path], runs: &[Run], path: &Path, run: &Run) -> (f64, Option<f64>) {
    let rate = |name: &str| {
        paths
            .iter()
            .position(|p| p.name == name)
            .map(|i| runs[i].requests_per_sec)
    };
    let to_bare = rate("bare").map_or(f64::NAN, |bare| run.requests_per_sec / bare);
    let to_peer = path
        .peer
        .and_then(rate)
        .map(|peer| run.requests_per_sec / peer);
    (to_bare, to_peer)
}

/// The median over rounds of `pick`'s figure, path `name` over path
/// `reference`, when both ran.
fn cpu_ratio(
    paths: &[Path],
    rounds: &[Vec<Run>],
    name: &str,
    reference: &str,
    pick: fn(&Run) -> Duration,
) -> Option<f64> {
    let index = |name: &str| paths.iter().position(|path| path.name == name);
    let (p, reference) = (index(name)?, index(reference)?);
    let per_round = rounds
        .iter()
        .map(|runs| pick(&runs[p]).as_secs_f64() / pick(&runs[reference]).as_secs_f64())
        .filter(|r| r.is_finite())
        .collect::<Vec<_>>();
    (!per_round.is_empty()).then(|| median(per_round))
}

fn row(round: &str, path: &Path, run: &Run, to_bare: f64, to_peer: Option<f64>) -> String {
    let peer = match (path.peer, to_peer) {
        (Some(peer), Some(ratio)) => format!("{ratio:.2} of {peer}"),
        _ => "–".into(),
    };
    let script = if run.script_usec.is_nan() {
        "–".into()
    } else {
        format!("{:.2}", run.script_usec)
    };
    let redis = if path.redis {
        micros(run.redis_cpu)
    } else {
        "–".into()
    };
    format!(
        "| {round} | {} | {:.0} | {to_bare:.2} | {peer} | {} | {} | {} | {redis} | {script} | {} |",
        path.name,
        run.requests_per_sec,
        millis(run.p50),
        millis(run.p99),
        micros(run.server_cpu),
        run.unexpected,
    )
}

/// `usec_per_call` of `command` in an `INFO commandstats` reply, or NaN.
fn usec_per_call(info: &str, command: &str) -> f64 {
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:")))
        .and_then(|stats| {
            stats
                .split(',')
                .find_map(|field| field.strip_prefix("usec_per_call="))
        })
        .and_then(|value| value.parse().ok())
        .unwrap_or(f64::NAN)
}

/// User and system CPU time so far of process `pid` (`self` for this one),
/// from `/proc/<pid>/stat` (Linux; zero elsewhere).
fn process_cpu(pid: &str) -> Duration {
    let ticks_per_sec = clock_ticks();
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may hold spaces): state
            // is field 3, utime 14, stime 15.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(Duration::from_secs_f64(
                (utime + stime) as f64 / ticks_per_sec,
            ))
        })
        .unwrap_or_default()
}

/// Clock ticks per second of `/proc/*/stat` (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn micros(duration: Duration) -> String {
    format!("{:.1} µs", duration.as_secs_f64() * 1e6)
}

fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1e3)
}

// ---------------------------------------------------------------------------
// The load generator (this executable started with `--load-generator`)
// ---------------------------------------------------------------------------

/// What the load generator prints: `<elapsed ns> <p50 ns> <p99 ns>`, then
/// `<status>:<count>` per status seen.
struct Report {
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    statuses: Vec<(u16, u64)>,
}

impl Report {
    fn parse(text: &str) -> Result<Self, Error> {
        let mut words = text.split_whitespace();
        let mut nanos = || -> Result<Duration, Error> {
            Ok(Duration::from_nanos(
                words.next().ok_or("a short report")?.parse()?,
            ))
        };
        let (elapsed, p50, p99) = (nanos()?, nanos()?, nanos()?);
        let statuses = words
            .map(|word| {
                let (status, count) = word.split_once(':').ok_or("a status:count pair")?;
                Ok((status.parse()?, count.parse()?))
            })
            .collect::<Result<_, Error>>()?;
        Ok(Self {
            elapsed,
            p50,
            p99,
            statuses,
        })
    }

    fn count(&self, status: StatusCode) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| *s == status.as_u16())
            .map(|(_, n)| n)
            .sum()
    }

    fn total(&self) -> u64 {
        self.statuses.iter().map(|(_, n)| n).sum()
    }
}

/// `--load-generator <address> <users> <millis>`: [`CONNECTIONS`]
/// connections send `GET /u/<random user>` for that long; prints a
/// [`Report`].
fn generate_load(args: &[String]) -> Result<(), Error> {
    let [address, users, millis] = args else {
        return Err("usage: --load-generator <address> <users> <millis>".into());
    };
    let address: SocketAddr = address.parse()?;
    let users: usize = users.parse()?;
    let duration = Duration::from_millis(millis.parse()?);
    let client = runtime("peers-load")?;
    let (elapsed, mut latencies, statuses) = client.block_on(drive(address, users, duration))?;
    latencies.sort_unstable();
    let percentile = |percent: usize| {
        latencies
            .get((latencies.len() * percent / 100).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    print!(
        "{} {} {}",
        elapsed.as_nanos(),
        percentile(50).as_nanos(),
        percentile(99).as_nanos()
    );
    for (status, count) in statuses {
        print!(" {status}:{count}");
    }
    println!();
    Ok(())
}

type Answers = (Duration, Vec<Duration>, Vec<(u16, u64)>);

/// Opens every connection, then loads them all until the same deadline.
async fn drive(address: SocketAddr, users: usize, duration: Duration) -> Result<Answers, Error> {
    let mut senders = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(driver);
        senders.push(sender);
    }
    let started = Instant::now();
    let deadline = started + duration;
    let host = HeaderValue::from_str(&address.to_string())?;
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(seed, sender)| tokio::spawn(connection(sender, host.clone(), users, seed, deadline)))
        .collect();
    let (mut latencies, mut statuses) = (Vec::new(), Vec::<(u16, u64)>::new());
    for task in tasks {
        let (lat, seen) = task.await??;
        latencies.extend(lat);
        for (status, count) in seen {
            match statuses.iter_mut().find(|(s, _)| *s == status) {
                Some((_, total)) => *total += count,
                None => statuses.push((status, count)),
            }
        }
    }
    Ok((started.elapsed(), latencies, statuses))
}

/// Sends requests for random users on one connection until `deadline`.
async fn connection(
    mut sender: hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>,
    host: HeaderValue,
    users: usize,
    seed: usize,
    deadline: Instant,
) -> Result<(Vec<Duration>, Vec<(u16, u64)>), Error> {
    // xorshift64: cheap, and the same sequence on every run.
    let mut state =
        0x9E37_79B9_7F4A_7C15u64 ^ (seed as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407);
    let mut latencies = Vec::new();
    let mut statuses: Vec<(u16, u64)> = Vec::new();
    while Instant::now() < deadline {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let uid = user((state % users as u64) as usize);
        let request = Request::get(format!("/u/{uid}"))
            .header(HOST, host.clone())
            .body(Empty::new())?;
        let sent = Instant::now();
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        latencies.push(sent.elapsed());
        match statuses.iter_mut().find(|(s, _)| *s == status) {
            Some((_, count)) => *count += 1,
            None => statuses.push((status, 1)),
        }
    }
    Ok((latencies, statuses))
}
