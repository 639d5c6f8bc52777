//! The Redis store, in one run on one machine: store charges/s against
//! `redis-benchmark` sending the same script, HTTP requests/s and latency of
//! a priced router against the bare router (allowed and refused paths), and
//! what requests see while Redis is killed and restarted.
//!
//! Run with `cargo bench --features redis --bench redis_store` (about 3 min);
//! append `-- store`, `-- http` or `-- faults` to run one part.
//! It starts its own `redis-server` processes on free 127.0.0.1 ports (the
//! tests' harness) and stops them by pid. Without `--bench`
//! (`cargo test --features redis --benches`) one short round of each part
//! checks the set-up and measures nothing. docs/benchmarks.md ("Redis store") records
//! results.
//!
//! 1. **Store vs redis-benchmark.** 50 tokio tasks call
//!    `RedisStore::charge` in a loop (allowed charges spread over 50 users);
//!    then `redis-benchmark -c 50` sends the very command the store sent
//!    (`FCALL` of the charge function on Redis 7; captured with `MONITOR`),
//!    its key spread over the same 50 users with `-r 50`. Rounds alternate;
//!    the ratio is store/redis-benchmark.
//! 2. **HTTP.** `POST /api/uploads` with an HS256 JWT, as in the demo, on a
//!    bare router and on the same router behind the ticket layer with
//!    `RefusalCache<RedisStore>`: once for users with `u32::MAX` tickets
//!    (allowed path, 201) and once for users at zero (refused path, 429).
//!    A fourth router, the *round-trip floor*, puts in front of the bare one
//!    a middleware that only sends `EVALSHA` of `return 1` per request: the
//!    ceiling of any design that asks Redis once per request, measured in
//!    the same run; a fifth, the *canned 429*, answers every request with
//!    the bytes of one refusal taken beforehand, with no layer: the ceiling
//!    of the refused path. Keep-alive hyper connections, one request in
//!    flight on each, from a separate tokio runtime in the same process.
//!    Each row gives the CPU time per answer of the server runtime, of
//!    redis-server and of the load generator.
//! 3. **Faults.** The allowed-path load runs while Redis is killed, then
//!    restarted: the slowest request during the outage, the statuses seen,
//!    and how long until the first 201 after the restart.

/// The tests' harness; the benchmark uses its standalone server only.
#[allow(dead_code)]
#[path = "../tests/support/redis_server.rs"]
mod redis_server;

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use axum::middleware::Next;
use axum::response::IntoResponse;
use bytes::Bytes;
use chrono::Utc;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use redis_server::RedisServer;
use support::{Error, median, router, runtime, serve};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tower::ServiceExt;
use tower_tickets::identity::{JwtIdentity, JwtIssuer};
use tower_tickets::store::{ChargeRequest, RedisStore, RefusalCache, TicketStore};
use tower_tickets::{Cost, TicketKind, Tickets, Uid};

/// Concurrent callers of the store, and `redis-benchmark`'s `-c`.
const CALLERS: usize = 50;
/// Keep-alive HTTP connections, one request in flight on each.
const CONNECTIONS: usize = 32;
const JWT_SECRET: &[u8] = b"benchmark secret, at least 32 bytes long";
/// Names of the two runtimes' threads, to tell their CPU time apart.
const SERVER_THREADS: &str = "bench-server";
const CLIENT_THREADS: &str = "bench-client";
/// The store's default per-call timeout, which the fault part checks.
const STORE_TIMEOUT: Duration = Duration::from_millis(100);
const UPLOAD: &[u8] = &[0x42; 256];

/// How long each part runs.
struct Schedule {
    rounds: usize,
    round: Duration,
    /// `redis-benchmark -n` per round.
    benchmark_requests: u64,
    /// Load before the kill, outage, load after the restart.
    fault_phase: Duration,
}

impl Schedule {
    const BENCH: Self = Self {
        rounds: 5,
        round: Duration::from_secs(4),
        benchmark_requests: 200_000,
        fault_phase: Duration::from_secs(2),
    };
    const SMOKE: Self = Self {
        rounds: 1,
        round: Duration::from_millis(200),
        benchmark_requests: 1_000,
        fault_phase: Duration::from_millis(300),
    };
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let schedule = if args.iter().any(|arg| arg == "--bench") {
        Schedule::BENCH
    } else {
        Schedule::SMOKE
    };
    // `cargo bench ... -- http` runs only the parts whose name is given.
    let parts: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let runs = |part: &str| parts.is_empty() || parts.contains(&part);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let redis_version = Command::new("redis-server").arg("--version").output()?;
    println!(
        "Machine: {cores} cores shared by redis-server, the server runtime (2 worker threads) \
         and the load generator (2 worker threads, or redis-benchmark). {}",
        String::from_utf8_lossy(&redis_version.stdout).trim()
    );
    let server_runtime = runtime(SERVER_THREADS)?;
    let client_runtime = runtime(CLIENT_THREADS)?;

    let redis = RedisServer::start();
    if runs("store") {
        store_versus_redis_benchmark(&schedule, &redis, &client_runtime)?;
    }
    if runs("http") {
        http_paths(&schedule, &redis, &server_runtime, &client_runtime)?;
    }
    drop(redis);
    if runs("faults") {
        faults(&schedule, &server_runtime, &client_runtime)?;
    }
    Ok(())
}

/// The demo's upload kind and JWT identity, over `store`.
fn upload_tickets(store: impl TicketStore) -> Result<Tickets, Error> {
    Ok(Tickets::builder()
        .kind(TicketKind::new("upload", 5))
        .identity(JwtIdentity::hs256(JWT_SECRET))
        .store(store)
        .build()?)
}

/// Users named as `redis-benchmark -r` names its keys: 12 digits.
fn bench_user(n: usize) -> Uid {
    Uid::parse(&format!("bench-{n:012}")).expect("a valid uid")
}

/// Sets each user's upload balance.
async fn set_balances(
    tickets: &Tickets,
    users: impl IntoIterator<Item = Uid>,
    balance: u32,
) -> Result<(), Error> {
    for uid in users {
        tickets.set(&uid, "upload", balance, None).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 1. Store charges/s against redis-benchmark
// ---------------------------------------------------------------------------

fn store_versus_redis_benchmark(
    schedule: &Schedule,
    redis: &RedisServer,
    client: &Runtime,
) -> Result<(), Error> {
    let store = client.block_on(RedisStore::connect(redis.url()))?;
    let tickets = upload_tickets(store.clone())?;
    client.block_on(set_balances(
        &tickets,
        (0..CALLERS).map(bench_user),
        u32::MAX,
    ))?;
    let command = capture_charge_command(redis, &store, &tickets, client)?;

    println!();
    println!(
        "## 1. Store charges/s vs redis-benchmark (the charge command the store sends, {CALLERS} concurrent callers)"
    );
    println!();
    println!(
        "| round | store charges/s | failed | client CPU/charge | Redis CPU/charge | redis-benchmark calls/s | Redis CPU/call | ratio (store/redis-benchmark) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut rounds = Vec::new();
    for round in 1..=schedule.rounds {
        let before = Cpu::now(redis, CLIENT_THREADS);
        let (store_rate, charges, failed) =
            client.block_on(store_charges(&store, &tickets, schedule.round))?;
        let store_cpu = Cpu::now(redis, CLIENT_THREADS).since(&before, charges);
        let before = Cpu::now(redis, CLIENT_THREADS);
        let benchmark_rate = redis_benchmark(redis, &command, schedule.benchmark_requests)?;
        let benchmark_cpu =
            Cpu::now(redis, CLIENT_THREADS).since(&before, schedule.benchmark_requests);
        let ratio = store_rate / benchmark_rate;
        println!(
            "| {round} | {store_rate:.0} | {failed} | {} | {} | {benchmark_rate:.0} | {} | {ratio:.3} |",
            micros(store_cpu.app),
            micros(store_cpu.redis),
            micros(benchmark_cpu.redis),
        );
        rounds.push([
            store_rate,
            store_cpu.app.as_secs_f64(),
            store_cpu.redis.as_secs_f64(),
            benchmark_rate,
            benchmark_cpu.redis.as_secs_f64(),
            ratio,
        ]);
    }
    let column = |i: usize| median(rounds.iter().map(|r| r[i]).collect());
    println!(
        "| **median** | {:.0} | | {} | {} | {:.0} | {} | {:.3} |",
        column(0),
        micros(Duration::from_secs_f64(column(1))),
        micros(Duration::from_secs_f64(column(2))),
        column(3),
        micros(Duration::from_secs_f64(column(4))),
        column(5),
    );
    println!();
    println!(
        "redis-benchmark command: `redis-benchmark -h 127.0.0.1 -p <port> -c {CALLERS} -n {} -r {CALLERS} --csv {}`",
        schedule.benchmark_requests,
        command
            .iter()
            .map(|arg| if arg.is_empty() { "''" } else { arg })
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}

/// The command line the store sends for a charge (`FCALL` of the charge
/// function on Redis 7, else `EVALSHA` of the script), read with
/// `MONITOR`, its user replaced by `redis-benchmark`'s random placeholder.
fn capture_charge_command(
    redis: &RedisServer,
    store: &RedisStore,
    tickets: &Tickets,
    client: &Runtime,
) -> Result<Vec<String>, Error> {
    let mut monitor = redis.connection();
    redis::cmd("MONITOR").exec(&mut monitor)?;
    client.block_on(store.charge(charge_request(tickets, bench_user(0))))?;
    loop {
        let line: String = redis::from_redis_value(monitor.recv_response()?)?;
        // `<time> [<db> <client>] "FCALL" "<function>" ...` (or `"EVALSHA"
        // "<sha>"`); script-run commands show `[<db> lua]`.
        for name in ["FCALL", "EVALSHA"] {
            if let Some((_, args)) = line.split_once(&format!("] \"{name}\"")) {
                let mut command = vec![name.to_string()];
                command.extend(
                    args.trim()
                        .trim_matches('"')
                        .split("\" \"")
                        .map(|arg| arg.replace(bench_user(0).as_str(), "bench-__rand_int__")),
                );
                return Ok(command);
            }
        }
    }
}

fn charge_request(tickets: &Tickets, uid: Uid) -> ChargeRequest {
    ChargeRequest::new(
        uid,
        tickets
            .check_cost(&Cost::of("upload", 1))
            .expect("a valid cost"),
        tickets.now(),
    )
}

/// Successful charges per second, how many there were, and how many
/// failed (timeouts when the machine stalls; they count as no work done).
async fn store_charges(
    store: &RedisStore,
    tickets: &Tickets,
    duration: Duration,
) -> Result<(f64, u64, u64), Error> {
    let started = Instant::now();
    let deadline = started + duration;
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (store, request) = (store.clone(), charge_request(tickets, bench_user(caller)));
            tokio::spawn(async move {
                let (mut charged, mut failed) = (0u64, 0u64);
                while Instant::now() < deadline {
                    match store.charge(request.clone()).await {
                        Ok(_) => charged += 1,
                        Err(_) => failed += 1,
                    }
                }
                (charged, failed)
            })
        })
        .collect();
    let (mut charged, mut failed) = (0, 0);
    for caller in callers {
        let (c, f) = caller.await?;
        charged += c;
        failed += f;
    }
    let rate = charged as f64 / started.elapsed().as_secs_f64();
    Ok((rate, charged, failed))
}

/// Runs `redis-benchmark` with `command`; returns its requests/s.
fn redis_benchmark(redis: &RedisServer, command: &[String], requests: u64) -> Result<f64, Error> {
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &redis.port().to_string()])
        .args(["-c", &CALLERS.to_string(), "-n", &requests.to_string()])
        .args(["-r", &CALLERS.to_string(), "--csv"])
        .args(command)
        .output()?;
    let csv = String::from_utf8_lossy(&output.stdout);
    // `"test","rps",...` then `"FCALL ...","51234.56",...`
    let rps = csv
        .lines()
        .nth(1)
        .and_then(|row| row.split("\",\"").nth(1))
        .and_then(|rps| rps.trim_matches('"').parse().ok())
        .ok_or_else(|| format!("unexpected redis-benchmark output: {csv}"))?;
    Ok(rps)
}

// ---------------------------------------------------------------------------
// 2. HTTP: bare router against the priced router
// ---------------------------------------------------------------------------

/// One load run against one router.
struct Run {
    /// Expected answers per second.
    requests_per_sec: f64,
    p50: Duration,
    p99: Duration,
    /// CPU time per expected answer: the server runtime's and Redis's.
    cpu: Cpu,
    /// CPU time per expected answer of the load generator's threads.
    generator_cpu: Duration,
    /// Answers with another status (503 when the store timed out).
    unexpected: usize,
}

fn http_paths(
    schedule: &Schedule,
    redis: &RedisServer,
    server: &Runtime,
    client: &Runtime,
) -> Result<(), Error> {
    let tickets = server.block_on(priced_tickets(redis.url(), "http:"))?;
    let users = |path: &str| -> Vec<Uid> {
        (0..CONNECTIONS)
            .map(|n| Uid::parse(&format!("{path}-{n}")).unwrap())
            .collect()
    };
    let (allowed, refused) = (users("allowed"), users("refused"));
    server.block_on(set_balances(&tickets, allowed.clone(), u32::MAX))?;
    server.block_on(set_balances(&tickets, refused.clone(), 0))?;
    let (allowed, refused) = (tokens(&allowed), tokens(&refused));
    let bare = server.block_on(serve(router()))?;
    let floor = server.block_on(async { serve(round_trip_floor(&redis.url()).await?).await })?;
    let priced_router = router().route_layer(tickets.layer(Cost::of("upload", 1))?);
    let canned = server.block_on(async {
        serve(canned_refusal(priced_router.clone(), &refused[0]).await?).await
    })?;
    let priced = server.block_on(serve(priced_router))?;
    let paths = [
        ("bare", bare, &allowed, StatusCode::CREATED),
        ("round-trip floor", floor, &allowed, StatusCode::CREATED),
        ("allowed", priced, &allowed, StatusCode::CREATED),
        (
            "canned 429",
            canned,
            &refused,
            StatusCode::TOO_MANY_REQUESTS,
        ),
        ("refused", priced, &refused, StatusCode::TOO_MANY_REQUESTS),
    ];

    println!();
    println!(
        "## 2. HTTP: POST /api/uploads (JWT HS256, {} B body), {CONNECTIONS} keep-alive connections",
        UPLOAD.len()
    );
    println!();
    println!(
        "| round | path | req/s | req/s vs bare | p50 | p99 | server CPU/req | Redis CPU/req | load generator CPU/req | other statuses |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut runs: Vec<[Run; 5]> = Vec::new();
    for round in 1..=schedule.rounds {
        let mut measured = Vec::with_capacity(paths.len());
        for (_, address, tokens, expected) in &paths {
            let run = load(client, redis, *address, tokens, *expected, schedule.round)?;
            measured.push(run);
        }
        let measured: [Run; 5] = measured.try_into().map_err(|_| "five paths")?;
        for ((path, ..), run) in paths.iter().zip(&measured) {
            let ratio = run.requests_per_sec / measured[0].requests_per_sec;
            println!("{}", http_row(&round.to_string(), path, run, ratio));
        }
        runs.push(measured);
    }
    let medians: Vec<Run> = (0..paths.len())
        .map(|path| {
            let column =
                |pick: fn(&Run) -> f64| median(runs.iter().map(|r| pick(&r[path])).collect());
            let seconds = |pick: fn(&Run) -> f64| Duration::from_secs_f64(column(pick));
            Run {
                requests_per_sec: column(|r| r.requests_per_sec),
                p50: seconds(|r| r.p50.as_secs_f64()),
                p99: seconds(|r| r.p99.as_secs_f64()),
                cpu: Cpu {
                    app: seconds(|r| r.cpu.app.as_secs_f64()),
                    redis: seconds(|r| r.cpu.redis.as_secs_f64()),
                },
                generator_cpu: seconds(|r| r.generator_cpu.as_secs_f64()),
                unexpected: runs.iter().map(|r| r[path].unexpected).sum(),
            }
        })
        .collect();
    for (n, ((path, ..), run)) in paths.iter().zip(&medians).enumerate() {
        // The median of each round's ratio: a round's two samples were taken
        // seconds apart, under the same outside load.
        let ratio = median(
            runs.iter()
                .map(|r| r[n].requests_per_sec / r[0].requests_per_sec)
                .collect(),
        );
        println!("{}", http_row("**median**", path, run, ratio));
    }
    Ok(())
}

fn http_row(round: &str, path: &str, run: &Run, ratio_to_bare: f64) -> String {
    format!(
        "| {round} | {path} | {:.0} | {ratio_to_bare:.2} | {} | {} | {} | {} | {} | {} |",
        run.requests_per_sec,
        millis(run.p50),
        millis(run.p99),
        micros(run.cpu.app),
        micros(run.cpu.redis),
        micros(run.generator_cpu),
        run.unexpected,
    )
}

/// The ceiling of any design that asks Redis once per request: the bare
/// router behind a middleware that sends `EVALSHA` of `return 1` on a
/// multiplexed connection and then calls the handler. No identity, no
/// script work, no timeout, no headers.
async fn round_trip_floor(url: &str) -> Result<axum::Router, Error> {
    let connection = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let script = redis::Script::new("return 1");
    script.load_async(&mut connection.clone()).await?;
    let round_trip = move |request: axum::extract::Request, next: Next| {
        let (mut connection, script) = (connection.clone(), script.clone());
        async move {
            match script.invoke_async::<_, i64>(&mut connection).await {
                Ok(_) => next.run(request).await,
                Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
            }
        }
    };
    Ok(router().route_layer(axum::middleware::from_fn(round_trip)))
}

/// The ceiling of the refused path: a handler that answers, without reading
/// the upload, with the very status, headers and body `priced` gave `token`
/// (one refusal taken beforehand). What is left between it and `refused`
/// is the layer's work; what is left between it and `bare` is the cost of a
/// larger answer, for the server and the load generator alike.
async fn canned_refusal(priced: axum::Router, token: &HeaderValue) -> Result<axum::Router, Error> {
    let request = Request::post("/api/uploads")
        .header(AUTHORIZATION, token.clone())
        .body(axum::body::Body::from(UPLOAD))?;
    let refusal = priced.oneshot(request).await?;
    let status = refusal.status();
    let mut headers = refusal.headers().clone();
    headers.remove(http::header::CONTENT_LENGTH);
    let body = refusal.into_body().collect().await?.to_bytes();
    let answer = move || {
        let (headers, body) = (headers.clone(), body.clone());
        async move { (status, headers, body) }
    };
    Ok(axum::Router::new().route("/api/uploads", axum::routing::post(answer)))
}

/// The demo's set-up: the refusal cache in front of the Redis store.
async fn priced_tickets(url: String, prefix: &str) -> Result<Tickets, Error> {
    let store = RedisStore::standalone(url)
        .key_prefix(prefix)
        .connect()
        .await?;
    upload_tickets(RefusalCache::new(store))
}

/// Bearer header values for `users`.
fn tokens(users: &[Uid]) -> Vec<HeaderValue> {
    let issuer = JwtIssuer::hs256(JWT_SECRET);
    users
        .iter()
        .map(|uid| {
            let token = issuer.issue(uid, Utc::now(), Duration::from_secs(3600));
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
        })
        .collect()
}

/// One answer: when its request was sent, how long it took, its status.
struct Sample {
    sent: Instant,
    latency: Duration,
    status: StatusCode,
}

/// Sends uploads on one keep-alive connection until `deadline`.
async fn connection(
    address: SocketAddr,
    token: HeaderValue,
    deadline: Instant,
) -> Result<Vec<Sample>, Error> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (mut sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(driver);
    let host = HeaderValue::from_str(&address.to_string())?;
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        let request = Request::post("/api/uploads")
            .header(HOST, host.clone())
            .header(AUTHORIZATION, token.clone())
            .body(Full::new(Bytes::from_static(UPLOAD)))?;
        let sent = Instant::now();
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        samples.push(Sample {
            sent,
            latency: sent.elapsed(),
            status,
        });
    }
    drop(sender);
    driver.await??;
    Ok(samples)
}

/// Drives `address` from [`CONNECTIONS`] connections, one per token, for
/// `duration`; counts answers other than `expected` apart.
fn load(
    client: &Runtime,
    redis: &RedisServer,
    address: SocketAddr,
    tokens: &[HeaderValue],
    expected: StatusCode,
    duration: Duration,
) -> Result<Run, Error> {
    let before = Cpu::now(redis, SERVER_THREADS);
    let generator_before = threads_cpu(CLIENT_THREADS);
    let started = Instant::now();
    let samples = client.block_on(drive(address, tokens, started + duration))?;
    let elapsed = started.elapsed();
    let mut latencies: Vec<Duration> = samples
        .iter()
        .filter(|s| s.status == expected)
        .map(|s| s.latency)
        .collect();
    latencies.sort_unstable();
    let answers = u32::try_from(latencies.len().max(1)).unwrap_or(u32::MAX);
    Ok(Run {
        generator_cpu: threads_cpu(CLIENT_THREADS).saturating_sub(generator_before) / answers,
        requests_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 50),
        p99: percentile(&latencies, 99),
        cpu: Cpu::now(redis, SERVER_THREADS).since(&before, latencies.len() as u64),
        unexpected: samples.len() - latencies.len(),
    })
}

async fn drive(
    address: SocketAddr,
    tokens: &[HeaderValue],
    deadline: Instant,
) -> Result<Vec<Sample>, Error> {
    let connections: Vec<_> = tokens
        .iter()
        .map(|token| tokio::spawn(connection(address, token.clone(), deadline)))
        .collect();
    let mut samples = Vec::new();
    for connection in connections {
        samples.extend(connection.await??);
    }
    Ok(samples)
}

// ---------------------------------------------------------------------------
// 3. Faults: Redis killed and restarted under load
// ---------------------------------------------------------------------------

fn faults(schedule: &Schedule, server: &Runtime, client: &Runtime) -> Result<(), Error> {
    let mut redis = RedisServer::start();
    let tickets = server.block_on(priced_tickets(redis.url(), "faults:"))?;
    let users: Vec<Uid> = (0..CONNECTIONS)
        .map(|n| Uid::parse(&format!("faults-{n}")).unwrap())
        .collect();
    server.block_on(set_balances(&tickets, users.clone(), u32::MAX))?;
    let tokens = tokens(&users);
    let priced = server.block_on(serve(
        router().route_layer(tickets.layer(Cost::of("upload", 1))?),
    ))?;

    let phase = schedule.fault_phase;
    let started = Instant::now();
    let load = client.spawn({
        let tokens = tokens.clone();
        async move { drive(priced, &tokens, started + 3 * phase).await }
    });
    std::thread::sleep(phase);
    let killed = Instant::now();
    redis.kill();
    std::thread::sleep(phase);
    redis.restart();
    let restarted = Instant::now();
    let samples = client.block_on(load)??;

    let during_outage = |s: &&Sample| s.sent + s.latency > killed && s.sent < restarted;
    let outage: Vec<&Sample> = samples.iter().filter(during_outage).collect();
    let mut latencies: Vec<Duration> = outage.iter().map(|s| s.latency).collect();
    latencies.sort_unstable();
    let slowest = latencies.last().copied().unwrap_or_default();
    let bound = STORE_TIMEOUT + Duration::from_millis(50);
    let over_bound = latencies.iter().filter(|l| **l > bound).count();
    let count = |status: StatusCode| outage.iter().filter(|s| s.status == status).count();
    let others = outage.len() - count(StatusCode::CREATED) - count(StatusCode::SERVICE_UNAVAILABLE);
    let resumed = samples
        .iter()
        .filter(|s| s.sent >= restarted && s.status == StatusCode::CREATED)
        .map(|s| s.sent + s.latency - restarted)
        .min();

    println!();
    println!(
        "## 3. Redis killed under the allowed-path load ({CONNECTIONS} connections), restarted {phase:?} later"
    );
    println!();
    println!(
        "| requests during the outage | 201 (answered before the kill) | 503 | other | p99 | slowest | over {} | first 201 after the restart |",
        millis(bound)
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {others} | {} | {} | {over_bound} | {} |",
        outage.len(),
        count(StatusCode::CREATED),
        count(StatusCode::SERVICE_UNAVAILABLE),
        millis(percentile(&latencies, 99)),
        millis(slowest),
        resumed.map_or_else(|| "never".to_string(), millis),
    );
    Ok(())
}

// ---------------------------------------------------------------------------

/// CPU time used: by this process's threads of one runtime, and by
/// redis-server's main thread (which runs every command). Read from
/// `/proc/*/schedstat` (Linux; zero elsewhere), so it stays meaningful on a
/// machine whose other processes make requests/s swing.
struct Cpu {
    app: Duration,
    redis: Duration,
}

impl Cpu {
    fn now(redis: &RedisServer, threads: &str) -> Self {
        let app = threads_cpu(threads);
        let redis = schedstat(&std::path::Path::new("/proc").join(redis.pid().to_string()));
        Self { app, redis }
    }

    /// The CPU time per operation since `before`, over `operations`.
    fn since(&self, before: &Self, operations: u64) -> Self {
        let per = |after: Duration, before: Duration| {
            after.saturating_sub(before) / u32::try_from(operations.max(1)).unwrap_or(u32::MAX)
        };
        Self {
            app: per(self.app, before.app),
            redis: per(self.redis, before.redis),
        }
    }
}

/// Time on CPU so far of this process's threads whose name starts with
/// `threads`.
fn threads_cpu(threads: &str) -> Duration {
    let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten();
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.starts_with(threads))
        })
        .map(|task| schedstat(&task.path()))
        .sum()
}

/// Time on CPU of the task at `dir` (its first schedstat field, in ns).
fn schedstat(dir: &std::path::Path) -> Duration {
    std::fs::read_to_string(dir.join("schedstat"))
        .ok()
        .and_then(|stat| stat.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

fn micros(duration: Duration) -> String {
    format!("{:.1} µs", duration.as_secs_f64() * 1e6)
}

fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * percent / 100).min(sorted.len() - 1)]
}

fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1e3)
}
