//! Problem bodies of recent refusals, rendered once and reused.
//!
//! A client hammering a route at zero gets the same 429 body many times a
//! second: same kind, balance and refill, and a wait that changes once a
//! second. Rendering it (the sentences, then the JSON) was most of the cost
//! of a refusal, so the registry keeps recent bodies by everything the
//! built-in catalogue ([`DefaultMessages`](crate::messages::DefaultMessages))
//! reads. A registry with its own catalogue renders every refusal: the
//! registry cannot know what that catalogue reads.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::kind::TicketKind;
use crate::ratelimit_headers::seconds_until;

/// Bodies kept at most; the map starts over when full. Refusing users each
/// need one entry per second, so this holds thousands of them.
const CAPACITY: usize = 4096;

/// The recent bodies of one registry.
#[derive(Default)]
pub(crate) struct RefusalBodies {
    bodies: Mutex<HashMap<BodyKey, Bytes>>,
}

impl RefusalBodies {
    /// The body for `key`, rendered by `render` unless a recent refusal had
    /// the same key. `render` runs outside the lock.
    pub(crate) fn get_or_render(&self, key: BodyKey, render: impl FnOnce() -> Bytes) -> Bytes {
        if let Some(body) = self.lock().get(&key) {
            return body.clone();
        }
        let body = render();
        let mut bodies = self.lock();
        if bodies.len() >= CAPACITY {
            bodies.clear();
        }
        bodies.insert(key, body.clone());
        body
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BodyKey, Bytes>> {
        // A panic while holding the lock leaves a usable map behind.
        self.bodies.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything the body of a one-kind 429 depends on when
/// [`DefaultMessages`](crate::messages::DefaultMessages) words it: the
/// language, the kind (its name, label and capacity), the cost, the
/// balance, the refill instant, and, of the decision's instant, only the
/// whole seconds left until the refill and whether it falls the same day.
#[derive(PartialEq, Eq, Hash)]
pub(crate) struct BodyKey {
    language: &'static str,
    kind: KindIdentity,
    cost: u32,
    remaining: u32,
    refill_at: DateTime<Utc>,
    wait_secs: u64,
    same_day: bool,
}

impl BodyKey {
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
            kind: KindIdentity(kind.clone()),
            cost,
            remaining,
            refill_at,
            wait_secs: seconds_until(refill_at, now),
            same_day: refill_at.date_naive() == now.date_naive(),
        }
    }
}

/// A kind compared by identity: the registry's kinds never change once
/// built, and holding the `Arc` keeps its address from being reused.
struct KindIdentity(Arc<TicketKind>);

impl PartialEq for KindIdentity {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for KindIdentity {}

impl Hash for KindIdentity {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.0).hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: &Arc<TicketKind>, now: &str) -> BodyKey {
        let refill_at = "2026-06-02T10:00:00Z".parse().unwrap();
        BodyKey::new("en", kind, 1, 0, refill_at, now.parse().unwrap())
    }

    #[test]
    fn renders_once_per_key() {
        let bodies = RefusalBodies::default();
        let kind = Arc::new(TicketKind::new("upload", 5));
        let mut renders = 0;
        let mut render = |text: &'static str| {
            renders += 1;
            Bytes::from_static(text.as_bytes())
        };
        let first = bodies.get_or_render(key(&kind, "2026-06-02T09:00:00.100Z"), || render("a"));
        let again = bodies.get_or_render(key(&kind, "2026-06-02T09:00:00.900Z"), || render("b"));
        // One second later the wait reads differently.
        let later = bodies.get_or_render(key(&kind, "2026-06-02T09:00:01.100Z"), || render("c"));
        assert_eq!((first, again, later), ("a".into(), "a".into(), "c".into()));
        assert_eq!(renders, 2);
    }

    #[test]
    fn kinds_with_the_same_name_do_not_share_bodies() {
        let bodies = RefusalBodies::default();
        let (one, other) = (
            Arc::new(TicketKind::new("upload", 5)),
            Arc::new(TicketKind::new("upload", 9)),
        );
        let now = "2026-06-02T09:00:00Z";
        bodies.get_or_render(key(&one, now), || Bytes::from_static(b"5"));
        let body = bodies.get_or_render(key(&other, now), || Bytes::from_static(b"9"));
        assert_eq!(body, "9");
    }
}
