//! The peers of `benches/peers.rs` in process, without the network: what
//! each layer costs per request, on the same trivial handler on
//! `GET /u/{id}` (the uid from the path), 100,000 users picked at random
//! per request (more than the caches hold, so each request meets a cold
//! record): bare, tower_governor (GCRA in memory, keyed by the same string
//! uid, its headers on), and the ticket layer on the embedded store. Each
//! request runs in a Tokio task of its own, as a server's connection would
//! run it, on a current-thread runtime: on a multi-thread one, handing each
//! task to another worker and waking the bench back cost about 20 µs and
//! swamped what is measured (bare read slower than the layers).
//!
//! Run with `cargo bench --bench peer_layers` (about 30 s). Building the
//! request is timed too, alike on every path: compare each figure with
//! `peer_layers/bare`. docs/benchmarks.md records results.

mod support;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Uri};
use tokio::runtime::Builder;
use tower::ServiceExt;

use support::peer_routers::{self, handler, uids, user};

/// Users picked at random (as in `benches/peers.rs`).
const USERS: usize = 100_000;

fn peer_layers(c: &mut Criterion) {
    let rt = Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let paths: Vec<Uri> = (0..USERS)
        .map(|n| format!("/u/{}", user(n)).parse().expect("a valid path"))
        .collect();
    let uids = uids(USERS);
    let routers: [(&str, Router); 3] = [
        ("bare", handler()),
        (
            "governor",
            peer_routers::governor(USERS).expect("tower_governor's router"),
        ),
        (
            "tickets, memory store",
            rt.block_on(peer_routers::memory(&uids))
                .expect("the ticket layer's router"),
        ),
    ];
    for (name, router) in routers {
        // xorshift64: cheap next to what is measured.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        c.bench_function(&format!("peer_layers/{name}"), |b| {
            b.to_async(&rt).iter(|| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let path = paths[(state % USERS as u64) as usize].clone();
                let request = Request::get(path).body(Body::empty()).expect("a request");
                // In a task of its own, as a server's connection calls the
                // router (the layer answers a store that decides at once
                // from `call()` only there).
                let response = tokio::spawn(router.clone().oneshot(request));
                async move { response.await.expect("the request's task") }
            });
        });
    }
}

/// Short runs on two shared cores.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = benches;
    config = config();
    targets = peer_layers
}
criterion_main!(benches);
