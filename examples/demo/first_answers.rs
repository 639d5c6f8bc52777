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

/// The most answers kept; when full, the expired ones go, and if none has
/// expired a new answer is not kept (its retries get 409).
const MAX_ANSWERS: usize = 10_000;

/// Successful answers by user and key. Cheap to clone; clones share them.
#[derive(Clone, Default)]
pub struct FirstAnswers(Arc<Mutex<HashMap<(Uid, IdempotencyKey), Answer>>>);

#[derive(Clone)]
struct Answer {
    /// When the key stops counting (the store forgets it then too).
    until: DateTime<Utc>,
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
}

impl Answer {
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
        let answers = self.0.lock();
        let answer = answers.get(&(uid.clone(), key.clone()))?;
        (answer.until > now).then(|| answer.clone())
    }

    fn keep(&self, uid: Uid, key: IdempotencyKey, answer: Answer, now: DateTime<Utc>) {
        let mut answers = self.0.lock();
        if answers.len() >= MAX_ANSWERS {
            answers.retain(|_, kept| kept.until > now);
        }
        if answers.len() < MAX_ANSWERS {
            answers.insert((uid, key), answer);
        }
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
    answers.keep(
        uid,
        key,
        Answer {
            until: now + IDEMPOTENCY_TTL,
            status: parts.status,
            content_type: parts.headers.get(CONTENT_TYPE).cloned(),
            body: body.clone(),
        },
        now,
    );
    Response::from_parts(parts, Body::from(body))
}
