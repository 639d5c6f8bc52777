//! A retried request gets its first answer.
//!
//! tower-tickets answers a retry (same `Idempotency-Key`) of a finished
//! request 409 by default, since it cannot give the first answer again. The
//! demo's priced routes opt in to `Replays::CallUncharged` instead, so that
//! such a retry reaches this middleware uncharged; it sits between the
//! ticket layer and the handler, keeps each key's successful answer for as
//! long as the key counts (a day) and sends it again: a client whose first
//! response was lost gets it, and running the handler again (a second
//! upload, another generation, for free) never happens. A retry whose answer
//! this process no longer holds (it restarted, or kept too many) gets the
//! library's 409 "already processed".
//!
//! The answers kept are bounded in bytes, in all and per user: sign-ups are
//! free, so a bound per user alone would let many users pin the memory, and
//! a bound in all alone would let one user fill it.
//!
//! The library answers everything else before the handler: a retry while
//! the first request still runs (409 with `Retry-After`) and the same key
//! on another route or cost (422). So a request that reaches this
//! middleware uncharged is a retry of the same request, finished. (The
//! demo's kinds fail closed: nothing else is let through uncharged.)

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tower_tickets::{Charged, IDEMPOTENCY_TTL, IdempotencyKey, Tickets, Uid};

use crate::problem::Problems;

/// The most bytes of answers kept in all; when full, the expired ones go,
/// and if that is not enough a new answer is not kept (its retries get
/// 409).
const MAX_BYTES: usize = 16 * 1024 * 1024;

/// The most bytes of answers kept for one user (a day of the demo's paid
/// requests takes a few KiB).
const MAX_USER_BYTES: usize = 64 * 1024;

/// What an answer costs besides its body: its key, headers and the maps'
/// own entries, roughly.
const ANSWER_OVERHEAD: usize = 256;

/// Successful answers by user and key. Cheap to clone; clones share them.
#[derive(Clone, Default)]
pub struct FirstAnswers(Arc<Mutex<Kept>>);

#[derive(Default)]
struct Kept {
    answers: HashMap<(Uid, IdempotencyKey), Answer>,
    /// Bytes kept per user, users with none left out.
    user_bytes: HashMap<Uid, usize>,
    /// Bytes kept in all.
    bytes: usize,
}

#[derive(Clone)]
struct Answer {
    /// When the key stops counting (the store forgets it then too).
    until: DateTime<Utc>,
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
}

impl Answer {
    fn bytes(&self, key: &IdempotencyKey) -> usize {
        self.body.len() + key.as_str().len() + ANSWER_OVERHEAD
    }

    fn to_response(&self) -> Response {
        let mut response = (self.status, self.body.clone()).into_response();
        if let Some(content_type) = &self.content_type {
            response
                .headers_mut()
                .insert(CONTENT_TYPE, content_type.clone());
        }
        response
    }
}

impl FirstAnswers {
    fn recall(&self, uid: &Uid, key: &IdempotencyKey, now: DateTime<Utc>) -> Option<Answer> {
        let kept = self.0.lock();
        let answer = kept.answers.get(&(uid.clone(), key.clone()))?;
        (answer.until > now).then(|| answer.clone())
    }

    /// Keeps `answer` if the bounds allow; whether it was kept.
    fn keep(&self, uid: Uid, key: IdempotencyKey, answer: Answer, now: DateTime<Utc>) -> bool {
        let mut kept = self.0.lock();
        let bytes = answer.bytes(&key);
        let fits = |kept: &Kept| {
            let user = kept.user_bytes.get(&uid).copied().unwrap_or(0);
            user + bytes <= MAX_USER_BYTES && kept.bytes + bytes <= MAX_BYTES
        };
        if !fits(&kept) {
            kept.forget_expired(now);
        }
        if !fits(&kept) || kept.answers.contains_key(&(uid.clone(), key.clone())) {
            return false;
        }
        kept.bytes += bytes;
        *kept.user_bytes.entry(uid.clone()).or_default() += bytes;
        kept.answers.insert((uid, key), answer);
        true
    }
}

impl Kept {
    fn forget_expired(&mut self, now: DateTime<Utc>) {
        let Self {
            answers,
            user_bytes,
            bytes,
        } = self;
        answers.retain(|(uid, key), answer| {
            if answer.until > now {
                return true;
            }
            let freed = answer.bytes(key);
            *bytes -= freed;
            if let Some(user) = user_bytes.get_mut(uid) {
                *user -= freed;
                if *user == 0 {
                    user_bytes.remove(uid);
                }
            }
            false
        });
    }
}

/// Sends a retry its first answer; runs any other request and keeps its
/// answer when it succeeded and carries a key.
pub async fn answer_retries(
    State(answers): State<FirstAnswers>,
    State(tickets): State<Tickets>,
    request: Request,
    next: Next,
) -> Response {
    // The ticket layer already refused a malformed key.
    let Some(key) = IdempotencyKey::from_headers(request.headers())
        .ok()
        .flatten()
    else {
        return next.run(request).await;
    };
    let Some(charged) = request.extensions().get::<Charged>() else {
        return next.run(request).await;
    };
    let (uid, paid) = (charged.uid.clone(), charged.charged);
    let now = tickets.now();
    if !paid {
        return match answers.recall(&uid, &key, now) {
            Some(answer) => answer.to_response(),
            None => Problems::new(tickets, request.headers()).already_processed(),
        };
    }
    let response = next.run(request).await;
    if !response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    // The demo's answers are small JSON, already in memory.
    let Ok(body) = to_bytes(body, usize::MAX).await else {
        return Problems::new(tickets, &parts.headers).internal();
    };
    let answer = Answer {
        until: now + IDEMPOTENCY_TTL,
        status: parts.status,
        content_type: parts.headers.get(CONTENT_TYPE).cloned(),
        body: body.clone(),
    };
    if !answers.keep(uid.clone(), key, answer, now) {
        tracing::debug!(%uid, "first answer not kept: the memory for them is full");
    }
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    fn answer(bytes: usize, until: DateTime<Utc>) -> Answer {
        Answer {
            until,
            status: StatusCode::CREATED,
            content_type: None,
            body: Bytes::from(vec![b'x'; bytes]),
        }
    }

    fn key(n: usize) -> IdempotencyKey {
        IdempotencyKey::parse(&format!("key-{n}")).unwrap()
    }

    fn now() -> DateTime<Utc> {
        "2026-06-01T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn one_user_cannot_keep_more_than_their_share() {
        let answers = FirstAnswers::default();
        let (ada, bob) = (Uid::parse("ada").unwrap(), Uid::parse("bob").unwrap());
        let until = now() + TimeDelta::days(1);
        let mut kept = 0;
        for n in 0..100 {
            kept += usize::from(answers.keep(ada.clone(), key(n), answer(4096, until), now()));
        }
        assert!(kept > 0 && kept < 100, "{kept} of 100 kept");
        assert!(kept * 4096 <= MAX_USER_BYTES);
        assert!(answers.recall(&ada, &key(0), now()).is_some());
        assert!(answers.recall(&ada, &key(99), now()).is_none());
        assert!(
            answers.keep(bob, key(0), answer(4096, until), now()),
            "bob has his own share"
        );
    }

    #[test]
    fn all_users_together_cannot_keep_more_than_the_total() {
        let answers = FirstAnswers::default();
        let until = now() + TimeDelta::days(1);
        let per_user = MAX_USER_BYTES / 2;
        let users = 2 * MAX_BYTES / per_user;
        let kept = (0..users)
            .filter(|n| {
                let uid = Uid::parse(&format!("u{n}")).unwrap();
                answers.keep(uid, key(0), answer(per_user, until), now())
            })
            .count();
        assert!(kept < users, "the total bound refused some");
        assert!(answers.0.lock().bytes <= MAX_BYTES);
        // Once they expire, their room is free again.
        let later = until + TimeDelta::seconds(1);
        let uid = Uid::parse("late").unwrap();
        assert!(answers.keep(
            uid,
            key(0),
            answer(per_user, later + TimeDelta::days(1)),
            later
        ));
        let kept = answers.0.lock();
        assert_eq!(kept.answers.len(), 1);
        assert_eq!(kept.user_bytes.len(), 1);
    }
}
