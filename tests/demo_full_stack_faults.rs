//! The demo on the full stack under Redis faults (issue 9, "Done when"):
//! two demo instances on one Redis and one Firestore project, random
//! traffic while Redis is flushed, killed and restarted. Afterwards every
//! user's document (`users/{uid}`, read straight from the emulator) holds
//! the initial balance minus exactly the answered charges, and a client that
//! left while its upload waited for a write round is charged only if the
//! upload was stored.
//!
//! Black-box: the test only sends HTTP to the demo processes, breaks Redis,
//! holds the network between instance B and Firestore, and reads the
//! documents. Its choices come from a seed it prints (`DEMO_FAULTS_SEED=<n>`
//! replays them; the timing of a concurrent run is not replayed).
#![cfg(all(feature = "axum", feature = "jwt", feature = "firestore"))]

#[allow(dead_code)] // This binary uses part of the support code.
mod support {
    pub mod firestore_emulator;
    pub mod redis_server;
    pub mod tcp_gate;
}
#[allow(dead_code)] // Helpers for the other demo tests.
mod demo {
    pub mod server;
}

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use demo::server::Demo;
use firestore::FirestoreDb;
use firestore::gcloud_sdk::google::firestore::v1::value::ValueType;
use http::{Method, StatusCode};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use support::firestore_emulator::FirestoreEmulator;
use support::redis_server::RedisServer;
use support::tcp_gate::TcpGate;
use tokio::sync::oneshot;

/// What a new demo user holds (DESIGN.md §8); nothing refills during the
/// test (the demo's default refill period is 24 h).
const UPLOAD_TICKETS: u64 = 5;
const AI_TICKETS: u64 = 3;

const USERS: usize = 12;
/// Concurrent clients sending the random traffic.
const CLIENTS: u64 = 5;
/// How long the random traffic lasts.
const TRAFFIC: Duration = Duration::from_secs(9);
/// A request with no answer by then hangs (DESIGN.md §5 forbids it): the
/// Firestore timeout is 5 s and a write round's lease 10 s.
const REQUEST_LIMIT: Duration = Duration::from_secs(20);
/// How long the write rounds and refunds may take to reach Firestore
/// after the traffic (the recovery scan runs every 5 s).
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(200);
/// How long a client that left while its write round was held gives the
/// server to notice, before the round is let through. The assertion holds
/// whichever way this race goes; it only makes the refund path likely.
const NOTICE_GRACE: Duration = Duration::from_millis(300);

const IMAGE: &[u8] = b"\x89PNG\r\n\x1a\n not really an image";
const SECRET: &str = "one secret for both instances";
/// Instance B logs the refund of a request dropped while it was charging.
const LOG_FILTER: &str = "info,tower_tickets=debug";

/// One Redis, a Firestore project on the shared emulator, and two demo
/// instances on both; B reaches Firestore through a gate that can hold its
/// writes.
struct Stack {
    redis: RedisServer,
    gate: TcpGate,
    demos: Arc<[Demo; 2]>,
    db: FirestoreDb,
}

impl Stack {
    async fn start(project: &str) -> Self {
        let emulator = FirestoreEmulator::shared();
        let redis = RedisServer::start();
        let gate = TcpGate::start(&emulator.host()).await;
        let url = redis.url();
        let args = [
            "--store",
            "redis",
            "--redis-url",
            &url,
            "--firestore-project",
            project,
            "--jwt-secret",
            SECRET,
        ];
        let start = |firestore: &str| {
            Demo::start_with_env(
                &args,
                &[
                    ("FIRESTORE_EMULATOR_HOST", firestore),
                    ("RUST_LOG", LOG_FILTER),
                ],
            )
        };
        let demos = Arc::new([start(&emulator.host()), start(gate.host())]);
        let db = emulator.client(project).await;
        Self {
            redis,
            gate,
            demos,
            db,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_document_holds_exactly_the_answered_charges_after_redis_faults() {
    let seed: u64 = std::env::var("DEMO_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (DEMO_FAULTS_SEED={seed} replays the choices)");
    let started = Instant::now();
    let Stack {
        redis, demos, db, ..
    } = Stack::start(&format!("demo-faults-{}", std::process::id())).await;
    let timeline = Timeline::new();

    let mut users = Vec::new();
    for n in 0..USERS {
        let (uid, token) = demos[n % 2].sign_up().await;
        users.push(User { uid, token });
    }
    let users = Arc::new(users);
    timeline.note(format!("{USERS} users signed up"));

    let traffic_start = Instant::now();
    timeline.note(format!("traffic starts ({CLIENTS} clients, {TRAFFIC:?})"));
    let faults = FaultPlan::draw(seed).start(redis, timeline.clone());
    let tallies = Arc::new(Mutex::new(vec![Tally::default(); USERS]));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            tokio::spawn(random_traffic(
                StdRng::seed_from_u64(seed.wrapping_add(client + 1)),
                client,
                demos.clone(),
                users.clone(),
                tallies.clone(),
                timeline.clone(),
                traffic_start,
            ))
        })
        .collect();
    for client in clients {
        client.await.expect("a client task");
    }
    let redis = faults.join().expect("the fault thread");
    timeline.note("traffic over; Redis up".to_string());
    let tallies = tallies.lock().unwrap().clone();

    let settled = settle(&db, &demos, &users, &tallies).await;
    if let Err((table, failing)) = settled {
        panic!(
            "seed {seed}: a document does not hold exactly the answered charges after \
             {SETTLE_LIMIT:?}\n{table}\ntimeline:\n{}\n{}",
            timeline.render(true),
            logs_about(&demos, &failing),
        );
    }
    let traffic: Tally = tallies.iter().fold(Tally::default(), |sum, t| sum.plus(t));
    println!(
        "traffic ({TRAFFIC:?}): {traffic}\nfaults:\n{}\ntotal {:?}",
        timeline.render(false),
        started.elapsed()
    );
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_its_upload_waits_for_a_write_round_is_charged_only_if_stored() {
    let started = Instant::now();
    let stack = Stack::start(&format!("demo-leaving-{}", std::process::id())).await;
    let report =
        leave_during_write_rounds(&stack.db, &stack.demos, &stack.gate, &Timeline::new()).await;
    println!("{report}total {:?}", started.elapsed());
}

struct User {
    uid: String,
    token: String,
}

/// What one user's requests were answered.
#[derive(Clone, Default)]
struct Tally {
    /// 201: an upload charged (and stored).
    uploads: u64,
    /// 200: a generation charged.
    generations: u64,
    /// 429.
    refused: u64,
    /// 503.
    unavailable: u64,
    /// No answer: the connection failed or broke.
    broken: u64,
    /// Uploads whose client left before the answer.
    left: u64,
    /// Requests not answered within [`REQUEST_LIMIT`].
    hung: u64,
    /// Any other answer.
    unexpected: Vec<String>,
}

impl Tally {
    fn plus(mut self, other: &Tally) -> Tally {
        self.uploads += other.uploads;
        self.generations += other.generations;
        self.refused += other.refused;
        self.unavailable += other.unavailable;
        self.broken += other.broken;
        self.left += other.left;
        self.hung += other.hung;
        self.unexpected.extend(other.unexpected.iter().cloned());
        self
    }

    /// Counts an answer to a charged route; whether it was a charge.
    fn count(&mut self, status: StatusCode, success: StatusCode, detail: impl FnOnce() -> String) {
        match status {
            s if s == success && s == StatusCode::CREATED => self.uploads += 1,
            s if s == success => self.generations += 1,
            StatusCode::TOO_MANY_REQUESTS => self.refused += 1,
            StatusCode::SERVICE_UNAVAILABLE => self.unavailable += 1,
            _ => self.unexpected.push(detail()),
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} uploads (201), {} generations (200), {} refused (429), {} unavailable (503), \
             {} broken connections, {} uploads left unanswered, {} hung, {} unexpected",
            self.uploads,
            self.generations,
            self.refused,
            self.unavailable,
            self.broken,
            self.left,
            self.hung,
            self.unexpected.len()
        )
    }
}

/// One client: random requests of random users to random instances until
/// [`TRAFFIC`] is over. Some uploads are sent by a client that leaves
/// after a random while, answered or not.
async fn random_traffic(
    mut rng: StdRng,
    client: u64,
    demos: Arc<[Demo; 2]>,
    users: Arc<Vec<User>>,
    tallies: Arc<Mutex<Vec<Tally>>>,
    timeline: Timeline,
    start: Instant,
) {
    while start.elapsed() < TRAFFIC {
        let (user, instance) = (rng.gen_range(0..USERS), rng.gen_range(0..2));
        let (demo, token) = (&demos[instance], &users[user].token);
        let sent = Instant::now();
        let what = format!("client {client}: u{user} on {}", instance_name(instance));
        match rng.gen_range(0..10) {
            0..=4 => {
                let reply = demo
                    .call(Method::POST, "/api/uploads")
                    .bearer(token)
                    .header("content-type", "image/png")
                    .body(IMAGE);
                let answer = tokio::time::timeout(REQUEST_LIMIT, reply.try_send()).await;
                record(&tallies, &timeline, user, sent, &what, "upload", answer);
            }
            5 => {
                let patience = Duration::from_millis(rng.gen_range(0..800));
                let status = demo
                    .upload_then_leave(token, IMAGE, tokio::time::sleep(patience))
                    .await;
                let mut tallies = tallies.lock().unwrap();
                match status {
                    Some(status) => tallies[user].count(status, StatusCode::CREATED, || {
                        format!("{what}: upload (leaving) answered {status}")
                    }),
                    None => {
                        tallies[user].left += 1;
                        timeline.answer(sent, format!("{what}: upload left after {patience:?}"));
                    }
                }
            }
            _ => {
                let reply = demo
                    .call(Method::POST, "/api/ai/generate")
                    .bearer(token)
                    .json(r#"{"prompt": "a lighthouse in a storm"}"#);
                let answer = tokio::time::timeout(REQUEST_LIMIT, reply.try_send()).await;
                record(&tallies, &timeline, user, sent, &what, "generate", answer);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..20))).await;
    }
}

fn record(
    tallies: &Mutex<Vec<Tally>>,
    timeline: &Timeline,
    user: usize,
    sent: Instant,
    what: &str,
    route: &str,
    answer: Result<Result<demo::server::Reply, String>, tokio::time::error::Elapsed>,
) {
    let success = if route == "upload" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut tallies = tallies.lock().unwrap();
    let tally = &mut tallies[user];
    match answer {
        Ok(Ok(reply)) => {
            if reply.status == StatusCode::SERVICE_UNAVAILABLE {
                timeline.answer(sent, format!("{what}: {route} 503"));
            }
            tally.count(reply.status, success, || {
                format!(
                    "{what}: {route} answered {}: {}",
                    reply.status,
                    reply.text()
                )
            });
        }
        Ok(Err(error)) => {
            tally.broken += 1;
            timeline.answer(sent, format!("{what}: {route} broke: {error}"));
        }
        Err(_) => {
            tally.hung += 1;
            timeline.answer(sent, format!("{what}: {route} HUNG (> {REQUEST_LIMIT:?})"));
        }
    }
}

fn instance_name(instance: usize) -> &'static str {
    ["A", "B"][instance]
}

/// When Redis is flushed, killed and restarted during the traffic.
struct FaultPlan(Vec<(Duration, Fault)>);

#[derive(Clone, Copy, Debug)]
enum Fault {
    FlushAll,
    /// Killed (SIGKILL), then restarted empty this long after.
    Kill {
        down: Duration,
    },
}

impl FaultPlan {
    /// Two flushes and two kills in random order, one in each quarter of
    /// the traffic after its first 0.7 s.
    fn draw(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut faults = vec![Fault::FlushAll, Fault::FlushAll];
        for _ in 0..2 {
            faults.push(Fault::Kill {
                down: Duration::from_millis(rng.gen_range(100..1000)),
            });
        }
        faults.shuffle(&mut rng);
        let window = (TRAFFIC - Duration::from_millis(700)) / 4;
        let plan = faults
            .into_iter()
            .enumerate()
            .map(|(n, fault)| {
                let offset = Duration::from_millis(rng.gen_range(0..800));
                let at = Duration::from_millis(700) + window * n as u32 + offset;
                (at, fault)
            })
            .collect();
        Self(plan)
    }

    /// Runs the plan on a thread of its own (killing and restarting are
    /// blocking calls); the thread gives the server back, running.
    fn start(
        self,
        mut redis: RedisServer,
        timeline: Timeline,
    ) -> std::thread::JoinHandle<RedisServer> {
        let start = Instant::now();
        std::thread::spawn(move || {
            for (at, fault) in self.0 {
                // Spacing the faults in time, not waiting for a server.
                std::thread::sleep(at.saturating_sub(start.elapsed()));
                match fault {
                    Fault::FlushAll => {
                        let _: () = redis::cmd("FLUSHALL")
                            .query(&mut redis.connection())
                            .expect("flush Redis");
                        timeline.note("FLUSHALL".to_string());
                    }
                    Fault::Kill { down } => {
                        redis.kill();
                        timeline.note("Redis killed".to_string());
                        std::thread::sleep(down);
                        redis.restart();
                        timeline.note("Redis restarted (empty), answers".to_string());
                    }
                }
            }
            redis
        })
    }
}

/// What each user's document and both instances' views must come to.
struct Expected {
    upload: u64,
    ai: u64,
}

/// Polls until every user's document, and both instances' balances, equal
/// the initial balances minus the answered charges (uploads: minus the
/// stored ones, which also covers clients that left); gives the per-user
/// table and the uids of the users in error if they never do.
async fn settle(
    db: &FirestoreDb,
    demos: &[Demo; 2],
    users: &[User],
    tallies: &[Tally],
) -> Result<(), (String, Vec<String>)> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let mut table = String::from(
            "user  uid                           answered       stored(A+B)  expected  \
             document  A sees    B sees    problem\n",
        );
        let mut failing = Vec::new();
        for (n, (user, tally)) in users.iter().zip(tallies).enumerate() {
            let stored = demos[0].stored_uploads(&user.token).await
                + demos[1].stored_uploads(&user.token).await;
            let stored = stored as u64;
            let expected = Expected {
                upload: UPLOAD_TICKETS.saturating_sub(stored),
                ai: AI_TICKETS.saturating_sub(tally.generations),
            };
            let document = read_document(db, &user.uid).await;
            let views = [
                demos[0].try_remaining(&user.token).await,
                demos[1].try_remaining(&user.token).await,
            ];
            let mut problems = Vec::new();
            if stored < tally.uploads || stored > tally.uploads + tally.left {
                problems.push(format!(
                    "stored {stored} but {} answered 201 and {} left",
                    tally.uploads, tally.left
                ));
            }
            if tally.hung > 0 || !tally.unexpected.is_empty() {
                problems.push(format!(
                    "{} hung, unexpected: {:?}",
                    tally.hung, tally.unexpected
                ));
            }
            let want = (expected.upload, expected.ai);
            if document != Ok(want) {
                problems.push("document".into());
            }
            for (view, name) in views.iter().zip(["A", "B"]) {
                if *view != Ok(want) {
                    problems.push(format!("{name} sees"));
                }
            }
            if !problems.is_empty() {
                failing.push(user.uid.clone());
            }
            let show = |r: &Result<(u64, u64), String>| match r {
                Ok((u, a)) => format!("{u}/{a}"),
                Err(e) => format!("error: {}", e.chars().take(40).collect::<String>()),
            };
            let _ = writeln!(
                table,
                "u{n:<3} {:<29} {:>2} up {:>2} ai  {stored:>11}  {:>4}/{:<3}  {:>8}  {:>8}  {:>8}  {}",
                user.uid,
                tally.uploads,
                tally.generations,
                expected.upload,
                expected.ai,
                show(&document),
                show(&views[0]),
                show(&views[1]),
                problems.join("; "),
            );
        }
        if failing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let table = format!(
                "(upload/ai; answered: 201s and 200s; a user's uploads are the ones stored, which \
                 counts clients that left)\n{table}"
            );
            return Err((table, failing));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The user's `(ticketCount, aiTicketCount)` as the emulator holds them.
async fn read_document(db: &FirestoreDb, uid: &str) -> Result<(u64, u64), String> {
    let document = db
        .fluent()
        .select()
        .by_id_in("users")
        .one(uid)
        .await
        .map_err(|e| format!("read users/{uid}: {e}"))?
        .ok_or_else(|| format!("no users/{uid}"))?;
    let count = |field: &str| match document
        .fields
        .get(field)
        .and_then(|v| v.value_type.clone())
    {
        Some(ValueType::IntegerValue(n)) => u64::try_from(n).map_err(|_| format!("{field} {n}")),
        other => Err(format!("{field}: {other:?}")),
    };
    Ok((count("ticketCount")?, count("aiTicketCount")?))
}

/// When a probe's client leaves.
#[derive(Clone, Copy, Debug)]
enum Leave {
    /// While B's write round is held at the gate.
    WhileHeld,
    /// This long after the round is let through: the upload may or may not
    /// be answered (and stored) by then.
    AfterRelease(Duration),
}

/// For fresh users on instance B: hold B's Firestore traffic, send an
/// upload, leave (while the write round is held, or just after it is let
/// through), and check that the user's document shows the charge exactly
/// when the upload was stored.
async fn leave_during_write_rounds(
    db: &FirestoreDb,
    demos: &[Demo; 2],
    gate: &TcpGate,
    timeline: &Timeline,
) -> String {
    let probes = [
        Leave::WhileHeld,
        Leave::WhileHeld,
        Leave::WhileHeld,
        Leave::AfterRelease(Duration::from_millis(30)),
        Leave::AfterRelease(Duration::from_millis(150)),
        Leave::AfterRelease(Duration::from_millis(1000)),
    ];
    let b = &demos[1];
    let mut report = String::from("clients leaving during a write round on B:\n");
    let mut stored_when_held = 0;
    for (n, leave) in probes.into_iter().enumerate() {
        let (uid, token) = b.sign_up().await;
        gate.hold();
        let (leave_now, left) = oneshot::channel::<()>();
        let upload = b.upload_then_leave(&token, IMAGE, async {
            let _ = left.await;
        });
        let control = async {
            tokio::time::timeout(REQUEST_LIMIT, gate.holding())
                .await
                .unwrap_or_else(|_| {
                    panic!("probe {n}: B's write round never reached the held gate")
                });
            match leave {
                Leave::WhileHeld => {
                    let _ = leave_now.send(());
                    tokio::time::sleep(NOTICE_GRACE).await;
                    gate.release();
                }
                Leave::AfterRelease(after) => {
                    gate.release();
                    tokio::time::sleep(after).await;
                    let _ = leave_now.send(());
                }
            }
        };
        let (status, ()) = tokio::join!(upload, control);
        timeline.note(format!("probe {n} ({leave:?}): {uid} answered {status:?}"));

        let deadline = Instant::now() + SETTLE_LIMIT;
        let (stored, document) = loop {
            let stored = b.stored_uploads(&token).await as u64;
            let want = Ok((UPLOAD_TICKETS - stored, AI_TICKETS));
            let document = read_document(db, &uid).await;
            let views = [
                demos[0].try_remaining(&token).await,
                b.try_remaining(&token).await,
            ];
            if stored <= 1 && document == want && views.iter().all(|v| *v == want) {
                break (stored, document);
            }
            assert!(
                Instant::now() < deadline,
                "probe {n} ({leave:?}), user {uid}: answered {status:?}, stored {stored} upload(s) \
                 on B, so its document should hold {want:?} (upload, ai); it holds {document:?}, \
                 A sees {:?}, B sees {:?} after {SETTLE_LIMIT:?}\ntimeline:\n{}\nB's log about \
                 the user:\n{}",
                views[0],
                views[1],
                timeline.render(true),
                lines_about(&b.log(), &uid),
            );
            tokio::time::sleep(POLL_EVERY).await;
        };
        if matches!(leave, Leave::WhileHeld) {
            stored_when_held += stored;
        }
        let _ = writeln!(
            report,
            "  probe {n} {leave:?}: answered {status:?}, stored {stored}, document {document:?}"
        );
    }
    // Each held probe's client left 300 ms before its round could end: at
    // least one of them must have been noticed and refunded, or the test
    // did not test the case.
    assert!(
        stored_when_held < 3,
        "no client that left while its write round was held was noticed: every such upload was \
         stored\n{report}"
    );
    let refunds = b
        .log()
        .matches("request dropped while charging; giving the charge back")
        .count();
    let _ = writeln!(
        report,
        "  B logged {refunds} refund(s) of requests dropped while charging"
    );
    report
}

/// The timeline of faults and unusual answers, for a failure to show.
#[derive(Clone)]
struct Timeline {
    start: Instant,
    /// When, whether it is a fault or a phase (not a request's answer), what.
    events: Arc<Mutex<Vec<(Instant, bool, String)>>>,
}

impl Timeline {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            events: Arc::default(),
        }
    }

    /// Records a fault or a phase, now.
    fn note(&self, what: String) {
        self.events
            .lock()
            .unwrap()
            .push((Instant::now(), true, what));
    }

    /// Records what a request sent at `sent` got.
    fn answer(&self, sent: Instant, what: String) {
        self.events.lock().unwrap().push((sent, false, what));
    }

    /// The events in the order they happened (a request at its start);
    /// with `answers`, the requests' too.
    fn render(&self, answers: bool) -> String {
        let mut events = self.events.lock().unwrap().clone();
        events.sort_by_key(|(at, _, _)| *at);
        events
            .iter()
            .filter(|(_, major, _)| *major || answers)
            .fold(String::new(), |mut out, (at, _, what)| {
                let at = at.duration_since(self.start).as_secs_f64();
                let _ = writeln!(out, "  +{at:.3}s {what}");
                out
            })
    }
}

/// Both demos' warnings and errors, and their lines about the users that
/// `failing` names.
fn logs_about(demos: &[Demo; 2], failing: &[String]) -> String {
    let mut out = String::new();
    for (demo, name) in demos.iter().zip(["A", "B"]) {
        let log = demo.log();
        let _ = writeln!(out, "instance {name}, warnings and errors (first 200):");
        for line in log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(200)
        {
            let _ = writeln!(out, "  {line}");
        }
        for uid in failing {
            let _ = writeln!(
                out,
                "instance {name}, about {uid}:\n{}",
                lines_about(&log, uid)
            );
        }
    }
    out
}

fn lines_about(log: &str, uid: &str) -> String {
    log.lines()
        .filter(|line| line.contains(uid))
        .fold(String::new(), |mut out, line| {
            let _ = writeln!(out, "  {line}");
            out
        })
}
