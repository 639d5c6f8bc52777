//! HTTP load: a bare axum router against the same router behind the ticket
//! layer, in one run.
//!
//! Run with `cargo bench --bench http_load` (about 35 s). Both routers serve
//! `POST /api/uploads` with the same handler, each on its own 127.0.0.1
//! ephemeral port, from one tokio runtime. The layered one charges one upload
//! ticket per request on the memory store and checks an HS256 JWT, like the
//! demo; its user holds `u32::MAX` tickets, so every request takes the
//! allowed path (any other status than 201 aborts the run). The client sends
//! one token throughout, as a signed-in browser does, so after the first
//! request `JwtIdentity` answers from its memory of verified tokens; the
//! criterion bench (`benches/layer.rs`) gives what a token's first check
//! costs.
//!
//! The load comes from hyper client tasks on a second tokio runtime in the
//! same process: 32 keep-alive connections per router, opened once, one
//! request in flight on each. The routers take turns in slices of 250 ms; a
//! round gathers 8 slices of each, and prints requests/s, p50/p99 latency,
//! the server threads' CPU time per request and two layered/bare ratios:
//! requests/s, and requests per CPU-second of the whole process. The load
//! generator shares the machine's cores with the server, so requests/s
//! measure the pair, and other work on a shared machine sways them; CPU time
//! per request does not depend on how much CPU the process was given.
//!
//! Without `--bench` (`cargo test --benches`), one short slice of each checks
//! that the set-up works. docs/benchmarks.md records results.

mod support;

use std::fs;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use support::{Error, load_average, median, router, runtime, serve};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tower_tickets::identity::{JwtIdentity, JwtIssuer};
use tower_tickets::{Cost, TicketKind, Tickets, Uid};

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
    /// Load on each router before anything is measured.
    warm_up: Duration,
    rounds: usize,
    /// Slices per router in a round; the routers take turns slice by slice.
    slices: usize,
    slice: Duration,
    /// Whether the figures mean anything (an optimized build, warmed up).
    measures: bool,
}

impl Schedule {
    /// `cargo bench`: a warm-up of each router, then 8 rounds; in each, the
    /// routers take turns for 8 slices of 250 ms each (2 s per router per
    /// round). Short turns keep the two routers' samples close in time, so
    /// that the other work on a shared machine weighs on both alike.
    const BENCH: Self = Self {
        warm_up: Duration::from_secs(1),
        rounds: 8,
        slices: 8,
        slice: Duration::from_millis(250),
        measures: true,
    };
    /// `cargo test --benches`: checks the set-up, measures nothing.
    const SMOKE: Self = Self {
        warm_up: Duration::ZERO,
        rounds: 1,
        slices: 1,
        slice: Duration::from_millis(100),
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

/// Starts both routers; returns their addresses and the bearer token of a
/// user with `u32::MAX` upload tickets.
async fn start_servers() -> Result<(SocketAddr, SocketAddr, HeaderValue), Error> {
    let tickets = Tickets::builder()
        .kind(TicketKind::new("upload", 5))
        .identity(JwtIdentity::hs256(JWT_SECRET))
        .build()?;
    let uid = Uid::parse("load-user")?;
    tickets.set(&uid, "upload", u32::MAX, None).await?;
    let token = JwtIssuer::hs256(JWT_SECRET).issue(&uid, Utc::now(), Duration::from_secs(3600));
    let token = HeaderValue::from_str(&format!("Bearer {token}"))?;

    let bare = serve(router()).await?;
    let layered = serve(router().route_layer(tickets.layer(Cost::of("upload", 1))?)).await?;
    Ok((bare, layered, token))
}

/// Keep-alive connections to one router, opened once and reused by every
/// slice of the run.
struct Connections {
    address: SocketAddr,
    host: HeaderValue,
    token: HeaderValue,
    senders: Vec<SendRequest<Full<Bytes>>>,
}

/// What one router did in one or more slices.
struct Tally {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    server_cpu: Option<Duration>,
    total_cpu: Option<Duration>,
}

impl Connections {
    /// Opens [`CONNECTIONS`] connections to `address`; their drivers run
    /// on the current runtime.
    async fn open(address: SocketAddr, token: &HeaderValue) -> Result<Self, Error> {
        let mut senders = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let stream = TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    eprintln!("connection to {address} failed: {e}");
                }
            });
            senders.push(sender);
        }
        Ok(Self {
            address,
            host: HeaderValue::from_str(&address.to_string())?,
            token: token.clone(),
            senders,
        })
    }

    /// Sends uploads on every connection, one in flight on each, until
    /// `duration` has passed.
    fn drive(&mut self, client: &Runtime, duration: Duration) -> Result<Tally, Error> {
        let server_before = cpu_time(SERVER_THREADS);
        let total_before = cpu_time(ALL_THREADS);
        let started = Instant::now();
        let deadline = started + duration;
        let senders = std::mem::take(&mut self.senders);
        let (senders, latencies) = client.block_on(async {
            let tasks: Vec<_> = senders
                .into_iter()
                .map(|sender| {
                    let (host, token) = (self.host.clone(), self.token.clone());
                    tokio::spawn(upload_until(sender, host, token, deadline))
                })
                .collect();
            let mut senders = Vec::with_capacity(tasks.len());
            let mut latencies = Vec::new();
            for task in tasks {
                let (sender, sent) = task.await??;
                senders.push(sender);
                latencies.extend(sent);
            }
            Ok::<_, Error>((senders, latencies))
        })?;
        self.senders = senders;
        let spent = |threads, before: Option<Duration>| {
            cpu_time(threads)
                .zip(before)
                .map(|(after, before)| after.saturating_sub(before))
        };
        Ok(Tally {
            requests: latencies.len(),
            elapsed: started.elapsed(),
            latencies,
            server_cpu: spent(SERVER_THREADS, server_before),
            total_cpu: spent(ALL_THREADS, total_before),
        })
    }
}

/// Sends uploads on one connection until `deadline`; gives the connection
/// back with each request's latency.
async fn upload_until(
    mut sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
    token: HeaderValue,
    deadline: Instant,
) -> Result<(SendRequest<Full<Bytes>>, Vec<Duration>), Error> {
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
            return Err(format!("{host:?} answered {status}; every request must be 201").into());
        }
    }
    Ok((sender, latencies))
}

impl Tally {
    fn empty() -> Self {
        Self {
            requests: 0,
            elapsed: Duration::ZERO,
            latencies: Vec::new(),
            server_cpu: Some(Duration::ZERO),
            total_cpu: Some(Duration::ZERO),
        }
    }

    fn add(&mut self, slice: Tally) {
        self.requests += slice.requests;
        self.elapsed += slice.elapsed;
        self.latencies.extend(slice.latencies);
        self.server_cpu = self.server_cpu.zip(slice.server_cpu).map(|(a, b)| a + b);
        self.total_cpu = self.total_cpu.zip(slice.total_cpu).map(|(a, b)| a + b);
    }

    fn round(mut self, address: SocketAddr) -> Result<Round, Error> {
        let requests = self.requests;
        if requests == 0 {
            return Err(format!("no request to {address} completed").into());
        }
        self.latencies.sort_unstable();
        Ok(Round {
            requests_per_sec: requests as f64 / self.elapsed.as_secs_f64(),
            p50: self.latencies[requests / 2],
            p99: self.latencies[(requests * 99 / 100).min(requests - 1)],
            server_cpu: self.server_cpu.map(|cpu| per_request(cpu, requests)),
            total_cpu: self.total_cpu.map(|cpu| per_request(cpu, requests)),
        })
    }
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
        "Median of the {rounds} per-round ratios of requests/s, layered/bare: {ratio:.4} \
         (goal >= {GOAL}: {}).",
        if ratio >= GOAL { "met" } else { "NOT met" },
    );
    if let Some(ratio) = ratios.per_cpu {
        println!(
            "Median ratio of requests per CPU-second of the whole process (load generator \
             and server): {ratio:.4}. It is what the requests/s ratio would be if the \
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
    let (bare_address, layered_address, token) = server.block_on(start_servers())?;
    let (mut bare, mut layered) = client.block_on(async {
        let bare = Connections::open(bare_address, &token).await?;
        let layered = Connections::open(layered_address, &token).await?;
        Ok::<_, Error>((bare, layered))
    })?;

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "HTTP load: POST /api/uploads ({} B body) on {CONNECTIONS} keep-alive connections \
         per router, one request in flight on each. {} rounds; in each, the routers take \
         turns for {} slices of {:?} each.",
        UPLOAD.len(),
        schedule.rounds,
        schedule.slices,
        schedule.slice,
    );
    println!(
        "Server: axum on a tokio runtime with 2 worker threads; bare router on \
         {bare_address}, ticket layer (memory store, JWT HS256, one token sent throughout, \
         so verified once and then remembered) on {layered_address}."
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
        bare.drive(&client, schedule.warm_up)?;
        layered.drive(&client, schedule.warm_up)?;
    }
    let mut rounds = Vec::with_capacity(schedule.rounds);
    for _ in 0..schedule.rounds {
        let (mut bare_tally, mut layered_tally) = (Tally::empty(), Tally::empty());
        for slice in 0..schedule.slices {
            // Alternate which router goes first, so a drift favours neither.
            if slice.is_multiple_of(2) {
                bare_tally.add(bare.drive(&client, schedule.slice)?);
                layered_tally.add(layered.drive(&client, schedule.slice)?);
            } else {
                layered_tally.add(layered.drive(&client, schedule.slice)?);
                bare_tally.add(bare.drive(&client, schedule.slice)?);
            }
        }
        rounds.push((
            bare_tally.round(bare.address)?,
            layered_tally.round(layered.address)?,
        ));
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
    drop((bare, layered));
    drop(client);
    server.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
