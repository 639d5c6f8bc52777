//! Waiting for something that happens in the background (an async write
//! reaching Firestore, a server coming back) by polling it, with a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long a background effect may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// The pause between two checks.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `check` until it holds; fails the test, naming `what`, if it never
/// does.
pub async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}
