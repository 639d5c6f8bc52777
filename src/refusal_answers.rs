//! Answers of recent refusals, built once and reused.
//!
//! A client hammering a route at zero gets the same 429 many times a second:
//! same kind, balance and refill, and a wait that changes once a second.
//! Building it (the sentences, the JSON, the `Retry-After` and `RateLimit`
//! headers) was most of the cost of a refusal, so the registry keeps recent
//! answers by everything the built-in catalogue
//! ([`DefaultMessages`](crate::messages::DefaultMessages)) and the headers
//! read. A registry with its own catalogue builds every refusal: the
//! registry cannot know what that catalogue reads.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::HeaderMap;

use crate::kind::TicketKind;
use crate::ratelimit_headers::seconds_until;

/// Answers kept at most; the map starts over when full. Refusing users each
/// need one entry per second, so this holds thousands of them.
const CAPACITY: usize = 4096;

/// The recent answers of one registry.
#[derive(Default)]
pub(crate) struct RefusalAnswers {
    answers: Mutex<HashMap<AnswerKey, Kept>>,
}

/// A refusal's headers and body, as sent. The headers include the body's
/// `Content-Length`: a cloned `HeaderMap` holds exactly its entries, and a
/// server that added one would reallocate them to twice as many, past the
/// allocator's per-thread cache, on every refusal answered from a kept
/// answer (tests/allocations.rs).
#[derive(Clone)]
pub(crate) struct Answer {
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// An answer, and the kind its key names by address: held, so that no
/// other kind takes that address while the entry lives.
struct Kept {
    answer: Arc<Answer>,
    _kind: Arc<TicketKind>,
}

impl RefusalAnswers {
    /// The answer for `key`, built by `build` unless a recent refusal had
    /// the same key. `build` runs outside the lock.
    pub(crate) fn get_or_build(
        &self,
        key: AnswerKey,
        kind: &Arc<TicketKind>,
        build: impl FnOnce() -> Answer,
    ) -> Arc<Answer> {
        if let Some(kept) = self.lock().get(&key) {
            return kept.answer.clone();
        }
        let answer = Arc::new(build());
        let mut answers = self.lock();
        if answers.len() >= CAPACITY {
            answers.clear();
        }
        let kept = Kept {
            answer: answer.clone(),
            _kind: kind.clone(),
        };
        answers.insert(key, kept);
        answer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AnswerKey, Kept>> {
        // A panic while holding the lock leaves a usable map behind.
        self.answers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything a one-kind 429 depends on when
/// [`DefaultMessages`](crate::messages::DefaultMessages) words it: the
/// language, the kind (its name, label, capacity and refill window), the
/// cost, the balance, the refill instant, and, of the decision's instant,
/// only the whole seconds left until the refill (`Retry-After`, the
/// `RateLimit` header's `t`, the wait in words) and whether it falls the
/// same day.
#[derive(PartialEq, Eq)]
pub(crate) struct AnswerKey {
    language: &'static str,
    /// The kind's address: the registry's kinds never change once built.
    kind: usize,
    cost: u32,
    remaining: u32,
    refill_at: DateTime<Utc>,
    wait_secs: u64,
    same_day: bool,
}

impl AnswerKey {
    pub(crate) fn new(
        language: &'static str,
        kind: &Arc<TicketKind>,
        cost: u32,
        remaining: u32,
        refill_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            language,
            kind: Arc::as_ptr(kind) as usize,
            cost,
            remaining,
            refill_at,
            wait_secs: seconds_until(refill_at, now),
            // UTC days (what the catalogue words), without `date_naive`'s
            // addition of the zero offset.
            same_day: refill_at.naive_utc().date() == now.naive_utc().date(),
        }
    }
}

/// Hashes the kind, the refill instant and the wait only: what tells most
/// answers apart. Hashing every field, each one a SipHash round, cost more
/// than the rest of a refusal's lookup; keys alike in these three (another
/// language, balance or cost) are told apart by `Eq`, and are few.
impl Hash for AnswerKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_usize(self.kind);
        state.write_i64(self.refill_at.timestamp_millis());
        state.write_u64(self.wait_secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: &Arc<TicketKind>, now: &str) -> AnswerKey {
        let refill_at = "2026-06-02T10:00:00Z".parse().unwrap();
        AnswerKey::new("en", kind, 1, 0, refill_at, now.parse().unwrap())
    }

    fn answer(text: &'static str) -> Answer {
        Answer {
            headers: HeaderMap::new(),
            body: Bytes::from_static(text.as_bytes()),
        }
    }

    #[test]
    fn builds_once_per_key() {
        let answers = RefusalAnswers::default();
        let kind = Arc::new(TicketKind::new("upload", 5));
        let mut builds = 0;
        let mut build = |text: &'static str| {
            builds += 1;
            answer(text)
        };
        let mut body = |now: &str, text: &'static str| {
            let key = key(&kind, now);
            answers
                .get_or_build(key, &kind, || build(text))
                .body
                .clone()
        };
        let first = body("2026-06-02T09:00:00.100Z", "a");
        let again = body("2026-06-02T09:00:00.900Z", "b");
        // One second later the wait reads differently.
        let later = body("2026-06-02T09:00:01.100Z", "c");
        assert_eq!((first, again, later), ("a".into(), "a".into(), "c".into()));
        assert_eq!(builds, 2);
    }

    #[test]
    fn kinds_with_the_same_name_do_not_share_answers() {
        let answers = RefusalAnswers::default();
        let (one, other) = (
            Arc::new(TicketKind::new("upload", 5)),
            Arc::new(TicketKind::new("upload", 9)),
        );
        let now = "2026-06-02T09:00:00Z";
        answers.get_or_build(key(&one, now), &one, || answer("5"));
        let kept = answers.get_or_build(key(&other, now), &other, || answer("9"));
        assert_eq!(kept.body, "9");
    }
}
