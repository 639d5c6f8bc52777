//! What the hot paths ask of the allocator, counted by a global allocator
//! that tallies each thread's allocations (the tests run on
//! current-thread runtimes, so a test counts only its own work).
//!
//! glibc's malloc serves blocks up to 1,032 bytes from a per-thread cache;
//! a larger one takes its arenas' slow paths (bins, consolidation), which a
//! `perf` profile of the peers bench showed costing more than the rest of a
//! cached refusal. So a refusal answered from the registry's recent answers
//! must not need one, `Content-Length` included.
#![cfg(feature = "axum")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use chrono::{DateTime, Utc};
use http::header::CONTENT_LENGTH;
use http::request::Parts;
use http::{Request, StatusCode};
use tower::ServiceExt;
use tower_tickets::identity::{IdentityError, IdentityExtractor};
use tower_tickets::store::MemoryStore;
use tower_tickets::{Cost, FakeClock, TicketKind, Tickets, Uid};

/// The largest block glibc's per-thread cache serves.
const THREAD_CACHE_MAX: usize = 1032;

thread_local! {
    /// Blocks above [`THREAD_CACHE_MAX`] this thread asked for.
    static LARGE: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

impl Counting {
    fn count(size: usize) {
        if size > THREAD_CACHE_MAX {
            // `try_with`: the allocator also serves threads whose locals
            // are being torn down.
            let _ = LARGE.try_with(|large| large.set(large.get() + 1));
        }
    }
}

// SAFETY: every call is forwarded to `System` unchanged; counting touches
// only a thread-local `Cell` and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::count(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::count(new_size);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Large blocks this thread asked for while `work` ran.
async fn large_blocks_of<T>(work: impl Future<Output = T>) -> (T, usize) {
    let before = LARGE.with(Cell::get);
    let output = work.await;
    (output, LARGE.with(Cell::get) - before)
}

/// The uid in the `x-uid` header.
struct HeaderUid;

impl IdentityExtractor for HeaderUid {
    fn identify(&self, request: &Parts, _now: DateTime<Utc>) -> Result<Uid, IdentityError> {
        let uid = request
            .headers
            .get("x-uid")
            .and_then(|value| value.to_str().ok())
            .ok_or(IdentityError::Missing {
                expected: "an x-uid header",
            })?;
        Ok(Uid::parse(uid)?)
    }
}

/// `GET /upload` at 1 upload ticket, of a kind that starts users at none.
fn refusing_router() -> Router {
    let tickets = Tickets::builder()
        .kind(TicketKind::new("upload", 5).initial(0))
        .clock(FakeClock::at("2026-06-01T10:00:00Z".parse().unwrap()))
        .identity(HeaderUid)
        .store(MemoryStore::new())
        .build()
        .unwrap();
    let layer = tickets.layer(Cost::of("upload", 1)).unwrap();
    Router::new()
        .route("/upload", get(|| async { "uploaded" }))
        .route_layer(layer)
}

fn upload_by(uid: &str) -> Request<Body> {
    Request::get("/upload")
        .header("x-uid", uid)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn a_refusal_answered_from_recent_answers_takes_no_large_block() {
    let router = refusing_router();
    // The first refusal builds the answer; the next ones copy it.
    let first = router.clone().oneshot(upload_by("alice")).await.unwrap();
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    // axum sets the `Content-Length` of a body of known size.
    let (again, large) = large_blocks_of(router.clone().oneshot(upload_by("alice"))).await;
    let again = again.unwrap();
    assert_eq!(again.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(again.headers().contains_key(CONTENT_LENGTH));
    assert_eq!(
        again.headers().len(),
        first.headers().len(),
        "the copy carries the answer's headers"
    );
    assert_eq!(large, 0, "blocks above {THREAD_CACHE_MAX} bytes");
}
