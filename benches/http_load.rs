//! HTTP load: a bare axum router against the same router behind the ticket
//! layer, in one run.
//!
//! Run with `cargo bench --bench http_load` (about 35 s). Both routers serve
//! `POST /api/uploads` with the same handler, each on its own 127.0.0.1
//! ephemeral port, from one tokio runtime. The layered one charges one upload
//! ticket per request on the memory store and verifies an HS256 JWT, like the
//! demo; its user holds `u32::MAX` tickets, so every request takes the
//! allowed path (any other status than 201 aborts the run).
//!
//! The load comes from hyper client tasks on a second tokio runtime in the
//! same process: keep-alive connections, one request in flight on each.
//! Rounds alternate between the routers; each prints requests/s, p50/p99
//! latency, the server threads' CPU time per request, and the layered/bare
//! ratio. The load generator shares the machine's cores with the server, so
//! requests/s measure the pair; the CPU time per request isolates the server.
//!
//! Without `--bench` (`cargo test --benches`), one short round of each checks
//! that the set-up works. docs/benchmarks.md records results.

use std::fs;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use chrono::Utc;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::{Builder, Runtime};
use tower_tickets::identity::{JwtIdentity, JwtIssuer};
use tower_tickets::{Cost, TicketKind, Tickets, Uid};

type Error = Box<dyn std::error::Error + Send + Sync>;

const JWT_SECRET: &[u8] = b"benchmark secret, at least 32 bytes long";
/// What each request uploads.
const UPLOAD: &[u8] = &[0x42; 256];
/// Keep-alive connections driving one router, one request in flight each.
const CONNECTIONS: usize = 32;
/// Name prefixes of the two runtimes' threads, to tell their CPU time apart.
const SERVER_THREADS: &str = "load-server";
const CLIENT_THREADS: &str = "load-client";
/// A prefix of every thread name: the whole process.
const ALL_THREADS: &str = "";
/// The issue's acceptance criterion: layered requests/s over bare.
const GOAL: f64 = 0.85;

/// How long the run lasts.
struct Schedule {
    warm_up: Duration,
    rounds: usize,
    round: Duration,
    /// Whether the figures mean anything (an optimized build, warmed up).
    measures: bool,
}

impl Schedule {
    /// `cargo bench`: a warm-up of each router, then 8 interleaved rounds
    /// of 2 s each. Short rounds keep each bare/layered pair close in time,
    /// so that the other work on a shared machine weighs on both alike.
    const BENCH: Self = Self {
        warm_up: Duration::from_secs(1),
        rounds: 8,
        round: Duration::from_secs(2),
        measures: true,
    };
    /// `cargo test --benches`: checks the set-up, measures nothing.
    const SMOKE: Self = Self {
        warm_up: Duration::ZERO,
        rounds: 1,
        round: Duration::from_millis(200),
        measures: false,
    };
}

/// One round against one router.
struct Round {
    requests_per_sec: f64,
    p50: Duration,
    p99: Duration,
    /// CPU time of the server runtime's threads per request; `None` where
    /// /proc cannot tell.
    server_cpu: Option<Duration>,
    /// CPU time of the whole process (server and load generator) per
    /// request: what the pair needs when the cores are theirs alone.
    total_cpu: Option<Duration>,
}

impl Round {
    /// Each column's median over `rounds`.
    fn median<'a>(rounds: impl Iterator<Item = &'a Round> + Clone) -> Round {
        let durations = |pick: fn(&Round) -> Duration| {
            Duration::from_secs_f64(median(
                rounds.clone().map(|r| pick(r).as_secs_f64()).collect(),
            ))
        };
        let cpu = |pick: fn(&Round) -> Option<Duration>| {
            let cpu: Option<Vec<f64>> = rounds
                .clone()
                .map(|r| pick(r).map(|cpu| cpu.as_secs_f64()))
                .collect();
            cpu.map(|cpu| Duration::from_secs_f64(median(cpu)))
        };
        Round {
            requests_per_sec: median(rounds.clone().map(|r| r.requests_per_sec).collect()),
            p50: durations(|r| r.p50),
            p99: durations(|r| r.p99),
            server_cpu: cpu(|r| r.server_cpu),
            total_cpu: cpu(|r| r.total_cpu),
        }
    }
}

/// The handler both routers share: reads the upload, answers 201.
async fn upload(body: Bytes) -> (StatusCode, String) {
    (StatusCode::CREATED, format!("stored {} bytes", body.len()))
}

fn router() -> Router {
    Router::new().route("/api/uploads", post(upload))
}

/// Serves `router` on an ephemeral 127.0.0.1 port of the current runtime.
async fn serve(router: Router) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            eprintln!("server on {address} stopped: {e}");
        }
    });
    Ok(address)
}

/// Starts both routers; returns their addresses and the bearer token of a
/// user with `u32::MAX` upload tickets.
async fn start_servers() -> Result<(SocketAddr, SocketAddr, HeaderValue), Error> {
    let tickets = Tickets::builder()
        .kind(TicketKind::new("upload", 5))
        .identity(JwtIdentity::hs256(JWT_SECRET))
        .build()?;
    let uid = Uid::parse("load-user")?;
    tickets.set(&uid, "upload", u32::MAX).await?;
    let token = JwtIssuer::hs256(JWT_SECRET).issue(&uid, Utc::now(), Duration::from_secs(3600));
    let token = HeaderValue::from_str(&format!("Bearer {token}"))?;

    let bare = serve(router()).await?;
    let layered = serve(router().route_layer(tickets.layer(Cost::of("upload", 1))?)).await?;
    Ok((bare, layered, token))
}

/// One keep-alive connection sending uploads until `deadline`; returns each
/// request's latency.
async fn connection(
    address: SocketAddr,
    token: HeaderValue,
    deadline: Instant,
) -> Result<Vec<Duration>, Error> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let host = HeaderValue::from_str(&address.to_string())?;
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let request = Request::post("/api/uploads")
            .header(HOST, host.clone())
            .header(AUTHORIZATION, token.clone())
            .body(Full::new(Bytes::from_static(UPLOAD)))?;
        let start = Instant::now();
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        latencies.push(start.elapsed());
        if status != StatusCode::CREATED {
            return Err(format!("{address} answered {status}; every request must be 201").into());
        }
    }
    drop(sender);
    driver.await??;
    Ok(latencies)
}

/// Drives `address` with [`CONNECTIONS`] connections for `duration`.
fn load(
    client: &Runtime,
    address: SocketAddr,
    token: &HeaderValue,
    duration: Duration,
) -> Result<Round, Error> {
    let server_before = cpu_time(SERVER_THREADS);
    let total_before = cpu_time(ALL_THREADS);
    let started = Instant::now();
    let mut latencies = client.block_on(async {
        let deadline = started + duration;
        let connections: Vec<_> = (0..CONNECTIONS)
            .map(|_| tokio::spawn(connection(address, token.clone(), deadline)))
            .collect();
        let mut latencies = Vec::new();
        for connection in connections {
            latencies.extend(connection.await??);
        }
        Ok::<_, Error>(latencies)
    })?;
    let elapsed = started.elapsed();
    let server_cpu = cpu_time(SERVER_THREADS).zip(server_before);
    let total_cpu = cpu_time(ALL_THREADS).zip(total_before);
    latencies.sort_unstable();
    let requests = latencies.len();
    if requests == 0 {
        return Err(format!("no request to {address} completed").into());
    }
    Ok(Round {
        requests_per_sec: requests as f64 / elapsed.as_secs_f64(),
        p50: latencies[requests / 2],
        p99: latencies[(requests * 99 / 100).min(requests - 1)],
        server_cpu: server_cpu
            .map(|(after, before)| per_request(after.saturating_sub(before), requests)),
        total_cpu: total_cpu
            .map(|(after, before)| per_request(after.saturating_sub(before), requests)),
    })
}

fn per_request(cpu: Duration, requests: usize) -> Duration {
    cpu / u32::try_from(requests).unwrap_or(u32::MAX)
}

/// CPU time used so far by this process's threads whose name starts with
/// `threads`, from `/proc/self/task/*/schedstat` (Linux); `None` elsewhere.
fn cpu_time(threads: &str) -> Option<Duration> {
    let mut nanos = 0u64;
    for task in fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path();
        let Ok(name) = fs::read_to_string(path.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if !name.starts_with(threads) {
            continue;
        }
        let Ok(schedstat) = fs::read_to_string(path.join("schedstat")) else {
            continue;
        };
        nanos += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(nanos))
}

/// The 1, 5 and 15 minute load averages (Linux): how busy the machine was
/// with other work, which this bench does not control.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".into())
}

fn runtime(threads: &str) -> Result<Runtime, Error> {
    Ok(Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(threads)
        .enable_all()
        .build()?)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

fn micros(duration: Duration) -> String {
    format!("{:.0} µs", duration.as_secs_f64() * 1e6)
}

fn cpu_micros(cpu: Option<Duration>) -> String {
    cpu.map_or_else(
        || "n/a".into(),
        |cpu| format!("{:.1} µs", cpu.as_secs_f64() * 1e6),
    )
}

/// Two ratios, layered over bare: requests/s, and requests per CPU-second
/// of the whole process (`None` where /proc cannot tell).
struct Ratios {
    throughput: f64,
    per_cpu: Option<f64>,
}

impl Ratios {
    fn of(bare: &Round, layered: &Round) -> Self {
        Self {
            throughput: layered.requests_per_sec / bare.requests_per_sec,
            per_cpu: bare
                .total_cpu
                .zip(layered.total_cpu)
                .map(|(bare, layered)| bare.as_secs_f64() / layered.as_secs_f64()),
        }
    }

    fn median(all: &[Ratios]) -> Self {
        let per_cpu: Option<Vec<f64>> = all.iter().map(|r| r.per_cpu).collect();
        Self {
            throughput: median(all.iter().map(|r| r.throughput).collect()),
            per_cpu: per_cpu.map(median),
        }
    }
}

const TABLE_HEAD: &str = "| round | bare req/s | bare p50 | bare p99 | bare server CPU/req \
    | layered req/s | layered p50 | layered p99 | layered server CPU/req \
    | ratio req/s | ratio req per process CPU-s |\n\
    |---|---|---|---|---|---|---|---|---|---|---|";

fn row(label: &str, bare: &Round, layered: &Round, ratios: &Ratios) -> String {
    format!(
        "| {label} | {:.0} | {} | {} | {} | {:.0} | {} | {} | {} | {:.3} | {} |",
        bare.requests_per_sec,
        micros(bare.p50),
        micros(bare.p99),
        cpu_micros(bare.server_cpu),
        layered.requests_per_sec,
        micros(layered.p50),
        micros(layered.p99),
        cpu_micros(layered.server_cpu),
        ratios.throughput,
        ratios
            .per_cpu
            .map_or_else(|| "n/a".into(), |ratio| format!("{ratio:.3}")),
    )
}

/// The issue's criterion, and the two views of the same run that other work
/// on the machine does not blur.
fn print_verdict(rounds: usize, ratios: &Ratios, bare: &Round, layered: &Round) {
    let ratio = ratios.throughput;
    println!(
        "Median of the {rounds} per-round ratios of requests/s, layered/bare: {ratio:.3} \
         (goal >= {GOAL}: {}).",
        if ratio >= GOAL { "met" } else { "NOT met" },
    );
    if let Some(ratio) = ratios.per_cpu {
        println!(
            "Median ratio of requests per CPU-second of the whole process (load generator \
             and server): {ratio:.3}. It is what the requests/s ratio would be if the \
             process had the cores to itself."
        );
    }
    if let (Some(bare_cpu), Some(layered_cpu)) = (bare.server_cpu, layered.server_cpu) {
        println!(
            "Server threads' CPU per request, medians: bare {}, layered {}: per server \
             CPU-second the layered router serves {:.3} of the bare one's requests.",
            cpu_micros(Some(bare_cpu)),
            cpu_micros(Some(layered_cpu)),
            bare_cpu.as_secs_f64() / layered_cpu.as_secs_f64(),
        );
    }
}

fn main() -> Result<(), Error> {
    let schedule = if std::env::args().any(|arg| arg == "--bench") {
        Schedule::BENCH
    } else {
        Schedule::SMOKE
    };
    let server = runtime(SERVER_THREADS)?;
    let client = runtime(CLIENT_THREADS)?;
    let (bare, layered, token) = server.block_on(start_servers())?;

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "HTTP load: POST /api/uploads ({} B body), {CONNECTIONS} keep-alive connections, \
         one request in flight on each; {} interleaved rounds of {:?} per router.",
        UPLOAD.len(),
        schedule.rounds,
        schedule.round,
    );
    println!(
        "Server: axum on a tokio runtime with 2 worker threads; bare router on {bare}, \
         ticket layer (memory store, JWT HS256) on {layered}."
    );
    println!(
        "Load generator: hyper client tasks on a separate tokio runtime (2 worker threads) \
         in the same process, competing with the server for the machine's {cores} cores: \
         requests/s measure client and server together; \"server CPU/req\" counts only \
         the server runtime's threads."
    );
    println!(
        "Machine: {cores} cores; load average (1, 5, 15 min) at start: {}.",
        load_average()
    );
    println!();

    if !schedule.warm_up.is_zero() {
        for address in [bare, layered] {
            load(&client, address, &token, schedule.warm_up)?;
        }
    }
    let run = |address| load(&client, address, &token, schedule.round);
    let mut rounds = Vec::with_capacity(schedule.rounds);
    for round in 0..schedule.rounds {
        // Alternate which router goes first, so a drift favours neither.
        rounds.push(if round.is_multiple_of(2) {
            let bare = run(bare)?;
            (bare, run(layered)?)
        } else {
            let layered = run(layered)?;
            (run(bare)?, layered)
        });
    }
    let ratios: Vec<Ratios> = rounds
        .iter()
        .map(|(bare, layered)| Ratios::of(bare, layered))
        .collect();

    println!("{TABLE_HEAD}");
    for (i, ((bare, layered), ratios)) in rounds.iter().zip(&ratios).enumerate() {
        println!("{}", row(&(i + 1).to_string(), bare, layered, ratios));
    }
    let bare_median = Round::median(rounds.iter().map(|(bare, _)| bare));
    let layered_median = Round::median(rounds.iter().map(|(_, layered)| layered));
    let ratios = Ratios::median(&ratios);
    println!(
        "{}",
        row("**median**", &bare_median, &layered_median, &ratios)
    );
    println!();
    println!("Load average at the end: {}.", load_average());
    if schedule.measures {
        print_verdict(rounds.len(), &ratios, &bare_median, &layered_median);
    } else {
        println!(
            "Smoke run (no --bench): it checks the set-up only, its figures measure nothing; \
             `cargo bench --bench http_load` measures."
        );
    }
    drop(client);
    server.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
