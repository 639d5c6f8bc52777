//! Cost of the ticket layer per request, measured without any network.
//!
//! Run with `cargo bench --bench layer` (about a minute). Every benchmark
//! sends a request through a trivial `tower::service_fn` service, either bare
//! or wrapped in the ticket layer on the embedded memory store. Building the
//! request is timed too, alike on both sides: compare the layered figures
//! with `allowed/bare`. docs/benchmarks.md records results.

use std::convert::Infallible;
use std::hint::black_box;
use std::slice;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_tickets::identity::{ExtensionIdentity, IdentityExtractor, JwtIdentity, JwtIssuer};
use tower_tickets::{Cost, TicketKind, Tickets, Uid};

#[cfg(feature = "firebase")]
#[allow(dead_code)] // The benchmark uses part of the tests' key server.
#[path = "../tests/support/key_server.rs"]
mod key_server;

const JWT_SECRET: &[u8] = b"benchmark secret, at least 32 bytes long";
/// Users of the many-users benchmark, charged in turn.
const MANY_USERS: usize = 10_000;
/// Users of the random-users benchmark (as in `benches/peers.rs`): more
/// than the caches hold, so each charge meets a cold record.
const RANDOM_USERS: usize = 100_000;

/// The handler: answers at once, so what is measured is the layer.
fn handler() -> impl Service<Request<()>, Response = Response<Bytes>, Error = Infallible> + Clone {
    service_fn(|_request: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Bytes::from_static(b"stored")))
    })
}

/// The handler behind the ticket layer (1 upload ticket a request), on a
/// fresh memory store where each of `users` holds `balance` upload tickets:
/// `u32::MAX` keeps the allowed path for the whole run, 0 the refused one.
fn layered(
    rt: &Runtime,
    identity: impl IdentityExtractor,
    users: &[Uid],
    balance: u32,
) -> impl Service<Request<()>, Response = Response<Bytes>, Error = Infallible> + Clone {
    let tickets = Tickets::builder()
        .kind(TicketKind::new("upload", 5))
        .identity(identity)
        .build()
        .expect("the benchmark's registry is valid");
    for user in users {
        rt.block_on(tickets.set(user, "upload", balance, None))
            .expect("the memory store sets balances");
    }
    let layer = tickets.layer(Cost::of("upload", 1)).expect("a valid cost");
    layer.layer(handler())
}

fn uid(name: &str) -> Uid {
    Uid::parse(name).expect("the benchmark's uids are valid")
}

/// A request whose user an auth layer already identified.
fn identified(uid: &Uid) -> Request<()> {
    let mut request = Request::new(());
    request.extensions_mut().insert(uid.clone());
    request
}

/// A request carrying a bearer token.
fn bearer(token: &HeaderValue) -> Request<()> {
    let mut request = Request::new(());
    request.headers_mut().insert(AUTHORIZATION, token.clone());
    request
}

/// Sends each request produced by `make_request` through `service`.
///
/// The request is built inside the timed section, the same way for the bare
/// and the layered service, so that memory is freed as it is in a server:
/// batching prepared requests would time the heap's growth too.
fn bench_service<S>(
    c: &mut Criterion,
    rt: &Runtime,
    name: &str,
    service: S,
    mut make_request: impl FnMut() -> Request<()>,
) where
    S: Service<Request<()>, Response = Response<Bytes>, Error = Infallible> + Clone,
{
    c.bench_function(name, |b| {
        b.to_async(rt)
            .iter(|| service.clone().oneshot(make_request()));
    });
}

fn allowed(c: &mut Criterion) {
    let rt = Runtime::new().expect("a tokio runtime");
    let user = uid("bench-user");
    let one = slice::from_ref(&user);
    bench_service(c, &rt, "allowed/bare", handler(), || identified(&user));
    bench_service(
        c,
        &rt,
        "allowed/memory, one user",
        layered(&rt, ExtensionIdentity, one, u32::MAX),
        || identified(&user),
    );
    let users: Vec<Uid> = (0..MANY_USERS).map(|i| uid(&format!("user-{i}"))).collect();
    let mut turn = users.iter().cycle();
    bench_service(
        c,
        &rt,
        "allowed/memory, 10k users in turn",
        layered(&rt, ExtensionIdentity, &users, u32::MAX),
        || identified(turn.next().expect("a cycle never ends")),
    );
    let users: Vec<Uid> = (0..RANDOM_USERS)
        .map(|i| uid(&format!("user-{i}")))
        .collect();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    bench_service(
        c,
        &rt,
        "allowed/memory, 100k users at random",
        layered(&rt, ExtensionIdentity, &users, u32::MAX),
        || {
            // xorshift64: cheap next to what is measured.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            identified(&users[(state % RANDOM_USERS as u64) as usize])
        },
    );
}

fn refused(c: &mut Criterion) {
    let rt = Runtime::new().expect("a tokio runtime");
    let user = uid("bench-user");
    bench_service(
        c,
        &rt,
        "refused/memory, balance 0 (429 problem+json)",
        layered(&rt, ExtensionIdentity, slice::from_ref(&user), 0),
        || identified(&user),
    );
}

fn identity(c: &mut Criterion) {
    let rt = Runtime::new().expect("a tokio runtime");
    let user = uid("bench-user");
    let one = slice::from_ref(&user);
    let token = JwtIssuer::hs256(JWT_SECRET).issue(&user, Utc::now(), Duration::from_secs(3600));
    let token = HeaderValue::from_str(&format!("Bearer {token}")).expect("a JWT is ASCII");

    // The extractors alone.
    let (with_uid, ()) = identified(&user).into_parts();
    let (with_token, ()) = bearer(&token).into_parts();
    let now = Utc::now();
    c.bench_function("identity/extractor, extension", |b| {
        b.iter(|| ExtensionIdentity.identify(black_box(&with_uid), now));
    });
    // One token sent again and again: verified once, then remembered.
    let jwt = JwtIdentity::hs256(JWT_SECRET);
    c.bench_function("identity/extractor, jwt hs256 remembered", |b| {
        b.iter(|| jwt.identify(black_box(&with_token), now));
    });
    // Every request's signature checked: what a token seen for the first
    // time costs.
    let jwt = JwtIdentity::hs256(JWT_SECRET).remember(0);
    c.bench_function("identity/extractor, jwt hs256 verified", |b| {
        b.iter(|| jwt.identify(black_box(&with_token), now));
    });

    // The whole layer, allowed path, with each extractor.
    bench_service(
        c,
        &rt,
        "identity/layer, extension",
        layered(&rt, ExtensionIdentity, one, u32::MAX),
        || identified(&user),
    );
    bench_service(
        c,
        &rt,
        "identity/layer, jwt hs256 remembered",
        layered(&rt, JwtIdentity::hs256(JWT_SECRET), one, u32::MAX),
        || bearer(&token),
    );
    bench_service(
        c,
        &rt,
        "identity/layer, jwt hs256 verified",
        layered(
            &rt,
            JwtIdentity::hs256(JWT_SECRET).remember(0),
            one,
            u32::MAX,
        ),
        || bearer(&token),
    );
}

/// `FirebaseIdentity` with Google's keys served by the tests' key server on
/// 127.0.0.1: a Firebase ID token (RS256) seen before (remembered) and one
/// whose signature is checked every time (what a token seen for the first
/// time costs), alone and through the layer.
#[cfg(feature = "firebase")]
fn firebase_identity(c: &mut Criterion) {
    use key_server::{KeyServer, TestKey, id_token_claims};
    use tower_tickets::identity::FirebaseIdentity;

    const PROJECT: &str = "bench-project";
    let rt = Runtime::new().expect("a tokio runtime");
    let server = rt.block_on(KeyServer::start());
    server.serve_certificates(&[("k1", TestKey::A)], 3600);
    let user = uid("bench-user");
    let claims = id_token_claims(PROJECT, user.as_str(), Utc::now().timestamp());
    let token = TestKey::A.sign("k1", &claims);
    let token = HeaderValue::from_str(&format!("Bearer {token}")).expect("a JWT is ASCII");
    let (with_token, ()) = bearer(&token).into_parts();
    let firebase = |remember: usize| {
        let _runtime = rt.enter();
        let identity = FirebaseIdentity::builder(PROJECT)
            .keys_url(server.url())
            .remember(remember)
            .build()
            .expect("a Firebase identity");
        // The keys arrive in the background: wait for them.
        while identity.identify(&with_token, Utc::now()).is_err() {
            rt.block_on(tokio::time::sleep(Duration::from_millis(10)));
        }
        identity
    };
    let now = Utc::now();
    let remembered = firebase(10_000);
    c.bench_function("identity/extractor, firebase rs256 remembered", |b| {
        b.iter(|| remembered.identify(black_box(&with_token), now));
    });
    let verified = firebase(0);
    c.bench_function("identity/extractor, firebase rs256 verified", |b| {
        b.iter(|| verified.identify(black_box(&with_token), now));
    });
    let one = slice::from_ref(&user);
    bench_service(
        c,
        &rt,
        "identity/layer, firebase rs256 remembered",
        layered(&rt, remembered, one, u32::MAX),
        || bearer(&token),
    );
    bench_service(
        c,
        &rt,
        "identity/layer, firebase rs256 verified",
        layered(&rt, verified, one, u32::MAX),
        || bearer(&token),
    );
}

#[cfg(not(feature = "firebase"))]
fn firebase_identity(_: &mut Criterion) {}

/// Short runs: the whole file takes about a minute on two shared cores.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = allowed, refused, identity, firebase_identity
}
criterion_main!(benches);
