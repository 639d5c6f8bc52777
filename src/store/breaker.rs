//! The circuit breaker: after repeated failures, answer at once instead of
//! waiting for each call's timeout, and probe now and then for recovery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::store::{StoreError, StoreErrorKind};

/// Counts consecutive failures of the calls it admits.
///
/// Closed: every call goes through; `threshold` failures in a row open it.
/// Failures of calls that were already under way when another failure was
/// recorded count as that one: a single stall (of the backend, or of this
/// process's CPU) that times out every call in flight at once is one
/// failure, not a wall of them. Open: calls fail at once with
/// [`StoreErrorKind::CircuitOpen`] until `open_for` has passed; then one
/// call goes through as a probe (others keep failing at once) and its
/// outcome closes or reopens the breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    /// The backend's name, for the error ("Redis", "Firestore").
    backend: &'static str,
    threshold: u32,
    open_for: Duration,
    counts: Mutex<Counts>,
}

#[derive(Debug, Clone, Copy)]
struct Counts {
    state: State,
    /// Failures recorded so far, of every kind: a call admitted when this
    /// read `n` whose failure finds it past `n` overlapped another failure.
    recorded_failures: u64,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    Probing,
}

/// The right to make one call; tell the breaker how it went with
/// [`Permit::succeeded`] or [`Permit::failed`]. A probe dropped without a
/// verdict (its caller gave up) counts as a failure, so the breaker never
/// waits for a probe that will not report.
#[derive(Debug)]
pub(crate) struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    reported: bool,
    /// [`Counts::recorded_failures`] when the call was admitted.
    failures_before: u64,
}

impl Breaker {
    pub(crate) fn new(backend: &'static str, threshold: u32, open_for: Duration) -> Self {
        Self {
            backend,
            threshold: threshold.max(1),
            open_for,
            counts: Mutex::new(Counts {
                state: State::Closed { failures: 0 },
                recorded_failures: 0,
            }),
        }
    }

    /// A permit for one call, or an error at once while the breaker is open.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Permit, StoreError> {
        let mut counts = self.counts.lock();
        let probe = match counts.state {
            State::Closed { .. } => false,
            State::Open { until } if Instant::now() >= until => {
                counts.state = State::Probing;
                true
            }
            State::Open { .. } | State::Probing => {
                return Err(StoreError::new(
                    StoreErrorKind::CircuitOpen,
                    format!(
                        "{} failed repeatedly; the breaker answers at once until a probe succeeds",
                        self.backend
                    ),
                ));
            }
        };
        Ok(Permit {
            breaker: self.clone(),
            probe,
            reported: false,
            failures_before: counts.recorded_failures,
        })
    }

    fn record(&self, permit: &Permit, success: bool) {
        let mut counts = self.counts.lock();
        if success {
            counts.state = State::Closed { failures: 0 };
            return;
        }
        let overlapped = permit.failures_before != counts.recorded_failures;
        counts.recorded_failures += 1;
        let reopen = State::Open {
            until: Instant::now() + self.open_for,
        };
        counts.state = match counts.state {
            State::Probing if permit.probe => reopen,
            State::Closed { failures } if !overlapped => {
                if failures + 1 < self.threshold {
                    State::Closed {
                        failures: failures + 1,
                    }
                } else {
                    reopen
                }
            }
            // Part of a failure already counted, or a call admitted before
            // the breaker opened: the probe alone decides.
            unchanged => unchanged,
        };
    }
}

impl Permit {
    /// The call reached the backend and got an answer.
    pub(crate) fn succeeded(mut self) {
        self.reported = true;
        self.breaker.record(&self, true);
    }

    /// The call failed to reach the backend or timed out.
    pub(crate) fn failed(mut self) {
        self.reported = true;
        self.breaker.record(&self, false);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            self.breaker.record(self, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_error(breaker: &Arc<Breaker>) -> bool {
        matches!(breaker.admit(), Err(e) if e.kind() == StoreErrorKind::CircuitOpen)
    }

    #[test]
    fn opens_after_threshold_failures_in_a_row_only() {
        let breaker = Arc::new(Breaker::new("Redis", 3, Duration::from_secs(3600)));
        breaker.admit().unwrap().failed();
        breaker.admit().unwrap().failed();
        breaker.admit().unwrap().succeeded();
        breaker.admit().unwrap().failed();
        breaker.admit().unwrap().failed();
        assert!(!open_error(&breaker), "a success reset the count");
        breaker.admit().unwrap().failed();
        assert!(open_error(&breaker));
    }

    #[test]
    fn calls_failing_together_count_as_one_failure() {
        let breaker = Arc::new(Breaker::new("Redis", 2, Duration::from_secs(3600)));
        // A stall times out every call in flight at once.
        let in_flight: Vec<Permit> = (0..10).map(|_| breaker.admit().unwrap()).collect();
        for permit in in_flight {
            permit.failed();
        }
        assert!(!open_error(&breaker), "one stall is one failure");
        // A call made after it fails too: two failures in a row.
        breaker.admit().unwrap().failed();
        assert!(open_error(&breaker));
    }

    #[test]
    fn only_the_probe_decides_while_probing() {
        let breaker = Arc::new(Breaker::new("Redis", 1, Duration::ZERO));
        let late = breaker.admit().unwrap();
        breaker.admit().unwrap().failed();
        let probe = breaker.admit().expect("a probe");
        late.failed();
        assert!(
            open_error(&breaker),
            "still probing: the late failure changed nothing"
        );
        probe.succeeded();
        assert!(breaker.admit().is_ok(), "closed by the probe");
    }

    #[test]
    fn one_probe_at_a_time_decides_after_the_open_time() {
        let breaker = Arc::new(Breaker::new("Redis", 1, Duration::ZERO));
        breaker.admit().unwrap().failed();
        let probe = breaker.admit().expect("the open time has passed: a probe");
        assert!(open_error(&breaker), "only one probe in flight");
        probe.failed();
        let probe = breaker.admit().expect("another probe");
        probe.succeeded();
        assert!(breaker.admit().is_ok() && breaker.admit().is_ok(), "closed");
    }

    #[test]
    fn a_dropped_probe_reopens_instead_of_blocking_forever() {
        let breaker = Arc::new(Breaker::new("Redis", 1, Duration::ZERO));
        breaker.admit().unwrap().failed();
        drop(breaker.admit().unwrap());
        assert!(breaker.admit().is_ok(), "a new probe is admitted");
    }
}
