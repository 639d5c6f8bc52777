//! Pacing the attempts of a read followed by a conditional write.
//!
//! A conditional write fails when another writer changed the document after
//! it was read. Every such loss means that writer stored something newer: a
//! higher version, or the fields of kinds the document lacked. So a writer
//! loses at most once per other writer of the same document, and the attempts
//! below cover fifteen of them at once. Between attempts each writer waits a
//! random pause under a bound that doubles ("full jitter"), so writers that
//! collided spread out instead of colliding again in step.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// How many times a read-then-write is tried before it gives up.
pub(super) const WRITE_ATTEMPTS: u32 = 16;

/// The bound of the pause before the first retry.
const FIRST_PAUSE_BOUND: Duration = Duration::from_millis(2);

/// The bound stops doubling here.
const LONGEST_PAUSE_BOUND: Duration = Duration::from_millis(64);

/// The attempts of one read-then-write.
#[derive(Debug, Default)]
pub(super) struct Attempts {
    made: u32,
}

impl Attempts {
    /// Waits out the pause before the next attempt; `false` once all
    /// [`WRITE_ATTEMPTS`] are made.
    pub(super) async fn next(&mut self) -> bool {
        if self.made == WRITE_ATTEMPTS {
            return false;
        }
        if self.made > 0 {
            tokio::time::sleep(pause_before_retry(self.made)).await;
        }
        self.made += 1;
        true
    }
}

/// A random pause under the bound for the `retry`th retry (from 1).
fn pause_before_retry(retry: u32) -> Duration {
    let bound = FIRST_PAUSE_BOUND
        .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)))
        .min(LONGEST_PAUSE_BOUND);
    // Each RandomState holds fresh keys, so the hash is a random number.
    let random = RandomState::new().hash_one(retry);
    bound.mul_f64(random as f64 / u64::MAX as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_stay_under_a_bound_that_doubles_up_to_the_longest() {
        for (retry, bound_ms) in [(1, 2), (2, 4), (3, 8), (5, 32), (6, 64), (7, 64), (15, 64)] {
            let pauses: Vec<Duration> = (0..200).map(|_| pause_before_retry(retry)).collect();
            let bound = Duration::from_millis(bound_ms);
            assert!(
                pauses.iter().all(|p| *p <= bound),
                "retry {retry}: {pauses:?}"
            );
            // Jittered: the pauses spread over the range instead of repeating.
            assert!(
                pauses.iter().any(|p| *p < bound / 4) && pauses.iter().any(|p| *p > bound * 3 / 4),
                "retry {retry}: {pauses:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_end_after_the_last_one() {
        let mut attempts = Attempts::default();
        let mut made = 0;
        while attempts.next().await {
            made += 1;
        }
        assert_eq!(made, WRITE_ATTEMPTS);
        assert!(!attempts.next().await, "no attempt after the last");
    }
}
