//! The signing keys a request may use, and what a request does when the
//! key it needs is missing. Time comes in as arguments: the request side
//! reads the layer's clock, the refresher counts durations, and the tests
//! pass both by hand.
//!
//! A request never waits here. It takes the key it needs, or learns that
//! it cannot be checked yet (503: no key fetched so far, or a key id new to
//! this process that a refetch may bring), or that no key will ever verify
//! it (401: an unknown key id just after a refetch that did not bring it).
//! A key id new to this process asks for a refetch at most once per
//! [`KID_REFETCH_INTERVAL`], whatever the requests send.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use jsonwebtoken::DecodingKey;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::key_set::Keys;
use crate::identity::IdentityError;

/// The least time between two refetches asked for by unknown key ids.
pub(super) const KID_REFETCH_INTERVAL: Duration = Duration::from_secs(5);

/// Refresh the keys no sooner than this after a fetch, whatever `max-age`
/// says (`max-age=0` would otherwise mean a fetch loop).
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// Refresh the keys this long after a fetch whose answer has no `max-age`.
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);

/// Refresh the keys at least this often.
const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// After failed fetches, retry after 1, 2, 4 ... seconds, up to this.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// `Retry-After` of a request that waits for a fetch.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The keys and the state of their fetching, shared by the requests and the
/// refresher.
#[derive(Default)]
pub(super) struct KeyCache {
    state: Mutex<State>,
    /// Wakes the refresher for a refetch.
    wake: Notify,
}

#[derive(Default)]
struct State {
    /// The last keys fetched, kept while fetches fail.
    keys: Arc<Keys>,
    /// Whether a fetch ever succeeded.
    fetched: bool,
    /// The latest refetch asked for by an unknown key id.
    kid_refetch: Option<KidRefetch>,
    /// Fetches failed in a row.
    failures: u32,
}

struct KidRefetch {
    asked_at: DateTime<Utc>,
    outcome: Outcome,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Running,
    Fetched,
    Failed,
}

/// What one fetch of the key document brought.
pub(super) type Fetch = Result<Fetched, String>;

/// A key document that was read.
pub(super) struct Fetched {
    /// Its keys.
    pub(super) keys: Keys,
    /// Its `Cache-Control: max-age`, if it had one.
    pub(super) max_age: Option<Duration>,
}

impl KeyCache {
    /// The key `kid` names, for a request at `now`.
    pub(super) fn key(
        &self,
        kid: &str,
        now: DateTime<Utc>,
    ) -> Result<Arc<DecodingKey>, IdentityError> {
        let mut state = self.state.lock();
        if let Some(key) = state.keys.get(kid) {
            return Ok(key.clone());
        }
        if !state.fetched {
            return Err(unavailable(
                "Firebase's signing keys have not been fetched yet",
                RETRY_AFTER,
            ));
        }
        let interval = TimeDelta::from_std(KID_REFETCH_INTERVAL).unwrap_or(TimeDelta::MAX);
        let recent = state
            .kid_refetch
            .as_ref()
            .filter(|r| now.signed_duration_since(r.asked_at) < interval);
        let next_refetch = |r: &KidRefetch| {
            let next = r.asked_at.checked_add_signed(interval);
            (r.outcome, next.unwrap_or(DateTime::<Utc>::MAX_UTC))
        };
        match recent.map(next_refetch) {
            Some((Outcome::Fetched, _)) => Err(IdentityError::Invalid {
                reason: "the token is signed by a key Firebase does not publish".into(),
            }),
            Some((Outcome::Running, _)) => Err(unavailable(
                "the key that signed the token is being fetched",
                RETRY_AFTER,
            )),
            Some((Outcome::Failed, next)) => {
                let wait = (next - now).to_std().unwrap_or_default();
                Err(unavailable(
                    "the key that signed the token cannot be fetched right now",
                    wait.max(RETRY_AFTER),
                ))
            }
            None => {
                state.kid_refetch = Some(KidRefetch {
                    asked_at: now,
                    outcome: Outcome::Running,
                });
                drop(state);
                self.wake.notify_one();
                Err(unavailable(
                    "the key that signed the token is being fetched",
                    RETRY_AFTER,
                ))
            }
        }
    }

    /// Takes the outcome of a fetch; the wait before the next one.
    ///
    /// Fetched keys replace the old ones, and the next fetch comes when
    /// their `max-age` runs out. A failed fetch keeps the old keys and is
    /// retried sooner, backing off.
    pub(super) fn fetched(&self, fetch: Fetch) -> Duration {
        let mut state = self.state.lock();
        let ok = fetch.is_ok();
        if let Some(refetch) = &mut state.kid_refetch
            && refetch.outcome == Outcome::Running
        {
            refetch.outcome = if ok {
                Outcome::Fetched
            } else {
                Outcome::Failed
            };
        }
        match fetch {
            Ok(Fetched { keys, max_age }) => {
                state.keys = Arc::new(keys);
                state.fetched = true;
                state.failures = 0;
                max_age
                    .unwrap_or(DEFAULT_REFRESH)
                    .clamp(MIN_REFRESH, MAX_REFRESH)
            }
            Err(error) => {
                state.failures = state.failures.saturating_add(1);
                let retry = Duration::from_secs(1 << state.failures.min(7).saturating_sub(1));
                tracing::warn!(
                    failures = state.failures,
                    kept_keys = state.keys.len(),
                    "cannot fetch Firebase's signing keys ({error}); keeping the last ones \
                     and retrying in {} s",
                    retry.min(MAX_RETRY).as_secs()
                );
                retry.min(MAX_RETRY)
            }
        }
    }

    /// Resolves when a request asks for a refetch (at once if one asked
    /// since the last call).
    pub(super) async fn refetch_asked(&self) {
        self.wake.notified().await;
    }
}

fn unavailable(reason: &str, retry_after: Duration) -> IdentityError {
    IdentityError::Unavailable {
        reason: reason.into(),
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    use super::*;
    use crate::clock::{Clock, FakeClock};

    fn keys(kids: &[&str]) -> Keys {
        let key = Arc::new(DecodingKey::from_secret(b"unused"));
        kids.iter().map(|k| (k.to_string(), key.clone())).collect()
    }

    fn fetched(kids: &[&str], max_age: Option<u64>) -> Fetch {
        Ok(Fetched {
            keys: keys(kids),
            max_age: max_age.map(Duration::from_secs),
        })
    }

    fn clock() -> FakeClock {
        FakeClock::at("2026-06-01T10:00:00Z".parse().unwrap())
    }

    fn status(result: Result<Arc<DecodingKey>, IdentityError>) -> String {
        match result {
            Ok(_) => "key".into(),
            Err(IdentityError::Unavailable { retry_after, .. }) => {
                format!("503 after {}s", retry_after.as_secs())
            }
            Err(IdentityError::Invalid { .. }) => "401".into(),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn a_cold_start_is_503_until_the_first_fetch_then_keys_verify() {
        let (cache, clock) = (KeyCache::default(), clock());
        assert_eq!(status(cache.key("k1", clock.now())), "503 after 1s");
        cache.fetched(fetched(&["k1"], Some(600)));
        assert_eq!(status(cache.key("k1", clock.now())), "key");
    }

    #[test]
    fn the_next_fetch_follows_max_age_within_bounds() {
        let cache = KeyCache::default();
        assert_eq!(
            cache.fetched(fetched(&["k1"], Some(19_137))),
            Duration::from_secs(19_137)
        );
        assert_eq!(cache.fetched(fetched(&["k1"], Some(0))), MIN_REFRESH);
        assert_eq!(cache.fetched(fetched(&["k1"], None)), DEFAULT_REFRESH);
        assert_eq!(
            cache.fetched(fetched(&["k1"], Some(10 * 24 * 3600))),
            MAX_REFRESH
        );
    }

    #[test]
    fn failed_fetches_keep_the_old_keys_and_back_off() {
        let (cache, clock) = (KeyCache::default(), clock());
        cache.fetched(fetched(&["k1"], Some(600)));
        let waits: Vec<u64> = (0..8)
            .map(|_| cache.fetched(Err("down".into())).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(status(cache.key("k1", clock.now())), "key", "kept");
        cache.fetched(fetched(&["k2"], Some(600)));
        assert_eq!(cache.fetched(Err("down".into())).as_secs(), 1, "reset");
    }

    #[test]
    fn rotation_replaces_the_keys() {
        let (cache, clock) = (KeyCache::default(), clock());
        cache.fetched(fetched(&["k1", "k2"], Some(600)));
        cache.fetched(fetched(&["k2", "k3"], Some(600)));
        let now = clock.now();
        assert_eq!(status(cache.key("k2", now)), "key");
        assert_eq!(status(cache.key("k3", now)), "key");
        // k1 is gone: its first request asks for a refetch (503).
        assert_eq!(status(cache.key("k1", now)), "503 after 1s");
    }

    #[test]
    fn an_unknown_kid_asks_for_one_refetch_per_interval() {
        let (cache, clock) = (KeyCache::default(), clock());
        cache.fetched(fetched(&["k1"], Some(600)));
        // Whether the refresher would wake now.
        let woken = || {
            let notified = pin!(cache.refetch_asked());
            notified
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_ready()
        };

        // A new key id: 503, and the refresher is woken once, however many
        // requests bring it while the refetch runs.
        for _ in 0..10 {
            assert_eq!(status(cache.key("k2", clock.now())), "503 after 1s");
        }
        assert!(woken());
        assert!(!woken(), "one wake for ten requests");

        // The refetch brought k2.
        cache.fetched(fetched(&["k1", "k2"], Some(600)));
        assert_eq!(status(cache.key("k2", clock.now())), "key");

        // A key id that even a fresh refetch lacks is 401 until the
        // interval since that refetch passes, then asks again, once.
        clock.advance(Duration::from_secs(1));
        assert_eq!(status(cache.key("forged", clock.now())), "401");
        assert!(!woken());
        clock.advance(KID_REFETCH_INTERVAL - Duration::from_millis(1001));
        assert_eq!(status(cache.key("forged", clock.now())), "401");
        assert!(!woken());
        clock.advance(Duration::from_millis(1));
        assert_eq!(status(cache.key("forged", clock.now())), "503 after 1s");
        assert_eq!(status(cache.key("forged", clock.now())), "503 after 1s");
        assert!(woken());
        assert!(!woken());
        cache.fetched(fetched(&["k1", "k2"], Some(600)));
        assert_eq!(status(cache.key("forged", clock.now())), "401");
    }

    #[test]
    fn an_unknown_kid_while_the_key_server_is_down_is_503_not_401() {
        let (cache, clock) = (KeyCache::default(), clock());
        cache.fetched(fetched(&["k1"], Some(600)));
        assert_eq!(status(cache.key("k2", clock.now())), "503 after 1s");
        cache.fetched(Err("connection refused".into()));
        clock.advance(Duration::from_secs(2));
        assert_eq!(status(cache.key("k2", clock.now())), "503 after 3s");
        assert_eq!(status(cache.key("k1", clock.now())), "key");
    }

    #[test]
    fn a_clock_at_the_end_of_time_does_not_panic() {
        let cache = KeyCache::default();
        cache.fetched(fetched(&["k1"], Some(600)));
        let end = DateTime::<Utc>::MAX_UTC;
        assert_eq!(status(cache.key("k2", end)), "503 after 1s");
        cache.fetched(Err("down".into()));
        assert_eq!(status(cache.key("k2", end)), "503 after 1s");
    }
}
