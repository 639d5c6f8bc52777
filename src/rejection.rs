//! The HTTP face of a refusal: problem+json (RFC 9457) with the right status
//! and headers.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Timelike, Utc};
use http::header::{CONTENT_LANGUAGE, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::identity::IdentityError;
use crate::kind::TicketKind;
use crate::messages::{Day, Message, Messages, negotiate};
use crate::ratelimit_headers::{self, RATELIMIT_NAME, RATELIMIT_POLICY_NAME, seconds_until};
use crate::refusal_answers::{Answer, AnswerKey, RefusalAnswers};
use crate::store::StoreError;

/// The problem type of a 429.
pub const QUOTA_EXCEEDED_TYPE: &str =
    "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// The problem type of a 409 that answers a retry (same `Idempotency-Key`)
/// while the first request still runs: the retry may be sent again after
/// `Retry-After`.
pub const REQUEST_IN_PROGRESS_TYPE: &str = "tag:tower-tickets,2026:request-in-progress";

/// The problem type of a 409 that answers a retry (same `Idempotency-Key`)
/// of a request that already finished: sending it again changes nothing.
pub const ALREADY_PROCESSED_TYPE: &str = "tag:tower-tickets,2026:already-processed";

/// The problem type of a 422 that refuses an `Idempotency-Key` already used
/// for another request (another method, route or cost).
pub const IDEMPOTENCY_KEY_REUSED_TYPE: &str = "tag:tower-tickets,2026:idempotency-key-reused";

/// `Retry-After` of a 503 (the store may be back in a moment) and of a 409
/// for a request in progress.
const RETRY_AFTER_SECS: u64 = 1;

/// Why the layer answered instead of the handler.
///
/// The response carries this value in its extensions, so a logging layer can
/// read the underlying error.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Rejection {
    /// A kind cannot pay (429).
    QuotaExceeded(QuotaExceeded),
    /// No usable identity (401), or one that cannot be checked yet
    /// ([`IdentityError::Unavailable`]: 503 with `Retry-After`).
    Unauthenticated(IdentityError),
    /// The store cannot decide and a kind fails closed (503).
    StoreUnavailable(Arc<StoreError>),
    /// The request cannot be priced, or its `Idempotency-Key` is malformed
    /// (400). Nothing is charged.
    BadRequest(String),
    /// The request's `Idempotency-Key` already paid for this request, which
    /// finished, and the layer refuses replays
    /// ([`Replays::Refuse`](crate::Replays::Refuse), the default): 409
    /// ([`ALREADY_PROCESSED_TYPE`]), nothing charged, the handler not called.
    AlreadyProcessed,
    /// The request's `Idempotency-Key` already paid for this request, which
    /// is still running: 409 ([`REQUEST_IN_PROGRESS_TYPE`]) with
    /// `Retry-After`, nothing charged, the handler not called.
    InProgress,
    /// The request's `Idempotency-Key` already paid for another request
    /// (another method, route or cost): 422
    /// ([`IDEMPOTENCY_KEY_REUSED_TYPE`]), nothing charged, the handler not
    /// called.
    KeyReused,
}

/// The balances that refused a request (made by the layer only).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QuotaExceeded {
    /// The instant of the decision.
    pub now: DateTime<Utc>,
    /// Every kind of the cost, in the cost's order.
    pub items: Vec<QuotaItem>,
}

/// One kind of a refused cost.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QuotaItem {
    /// The kind.
    pub kind: Arc<TicketKind>,
    /// What the request needs.
    pub cost: u32,
    /// What is left.
    pub remaining: u32,
    /// When the next refill comes.
    pub refill_at: DateTime<Utc>,
}

impl QuotaItem {
    fn violated(&self) -> bool {
        self.remaining < self.cost
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::QuotaExceeded(q) => {
                let names: Vec<_> = q.violated().map(|i| i.kind.name()).collect();
                write!(f, "quota exceeded for {}", names.join(", "))
            }
            Self::Unauthenticated(e) => write!(f, "unauthenticated: {e}"),
            Self::StoreUnavailable(e) => write!(f, "ticket store unavailable: {e}"),
            Self::BadRequest(reason) => write!(f, "bad request: {reason}"),
            Self::AlreadyProcessed => {
                write!(
                    f,
                    "retry of a request already processed (same Idempotency-Key)"
                )
            }
            Self::InProgress => {
                write!(
                    f,
                    "retry of a request still in progress (same Idempotency-Key)"
                )
            }
            Self::KeyReused => write!(f, "Idempotency-Key already used for another request"),
        }
    }
}

impl QuotaExceeded {
    fn violated(&self) -> impl Iterator<Item = &QuotaItem> {
        self.items.iter().filter(|i| i.violated())
    }
}

/// The problem+json body (RFC 9457), with the quota members of a 429.
struct Problem<'a> {
    kind: &'a str,
    title: String,
    status: u16,
    detail: String,
    quota: Option<QuotaMembers<'a>>,
}

/// The members a 429 adds to the problem.
struct QuotaMembers<'a> {
    kind: &'a str,
    cost: u32,
    remaining: u32,
    capacity: u32,
    refill_at: DateTime<Utc>,
    violated_policies: Vec<&'a str>,
}

/// `message` in `language` as a problem+json body of type `kind`.
fn problem_body(
    messages: &dyn Messages,
    language: &str,
    (kind, status): (&str, StatusCode),
    message: &Message<'_>,
    quota: Option<QuotaMembers<'_>>,
) -> Bytes {
    let rendered = messages.render(message, language);
    let problem = Problem {
        kind,
        title: rendered.title,
        status: status.as_u16(),
        detail: rendered.detail,
        quota,
    };
    Bytes::from(serde_json::to_vec(&problem).unwrap_or_default())
}

// Written by hand: serde's `flatten` would serialize the whole body
// through a map, and this body is written on every refusal.
impl Serialize for Problem<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let members = if self.quota.is_some() { 10 } else { 4 };
        let mut body = serializer.serialize_struct("Problem", members)?;
        body.serialize_field("type", self.kind)?;
        body.serialize_field("title", &self.title)?;
        body.serialize_field("status", &self.status)?;
        body.serialize_field("detail", &self.detail)?;
        if let Some(quota) = &self.quota {
            body.serialize_field("kind", quota.kind)?;
            body.serialize_field("cost", &quota.cost)?;
            body.serialize_field("remaining", &quota.remaining)?;
            body.serialize_field("capacity", &quota.capacity)?;
            body.serialize_field("refill_at", &Rfc3339Seconds(quota.refill_at))?;
            body.serialize_field("violated-policies", &quota.violated_policies)?;
        }
        body.end()
    }
}

/// `2026-06-02T10:00:00Z`, written without a format string to parse.
struct Rfc3339Seconds(DateTime<Utc>);

impl fmt::Display for Rfc3339Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = self.0.time();
        write!(
            f,
            "{}T{:02}:{:02}:{:02}Z",
            Day(self.0),
            time.hour(),
            time.minute(),
            time.second()
        )
    }
}

impl Serialize for Rfc3339Seconds {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Rejection {
    /// The status this rejection answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unauthenticated(IdentityError::Unavailable { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::AlreadyProcessed | Self::InProgress => StatusCode::CONFLICT,
            Self::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// The problem type (RFC 9457 `type` member) this rejection answers
    /// with.
    pub fn problem_type(&self) -> &'static str {
        match self {
            Self::QuotaExceeded(_) => QUOTA_EXCEEDED_TYPE,
            Self::AlreadyProcessed => ALREADY_PROCESSED_TYPE,
            Self::InProgress => REQUEST_IN_PROGRESS_TYPE,
            Self::KeyReused => IDEMPOTENCY_KEY_REUSED_TYPE,
            Self::Unauthenticated(_) | Self::StoreUnavailable(_) | Self::BadRequest(_) => {
                "about:blank"
            }
        }
    }

    /// The problem+json response, worded in the language `request_headers`
    /// ask for.
    pub fn to_response<B: From<Bytes>>(
        &self,
        messages: &dyn Messages,
        request_headers: &HeaderMap,
    ) -> Response<B> {
        self.clone().respond(messages, request_headers, None)
    }

    /// [`Self::to_response`], reusing the answer of a recent identical
    /// one-kind refusal from `answers` (only for the built-in catalogue: see
    /// [`RefusalAnswers`]). The rejection moves into the response's
    /// extensions.
    pub(crate) fn respond<B: From<Bytes>>(
        self,
        messages: &dyn Messages,
        request_headers: &HeaderMap,
        answers: Option<&RefusalAnswers>,
    ) -> Response<B> {
        let language = negotiate(request_headers, messages.languages());
        let status = self.status();
        let mut headers = HeaderMap::new();
        let message = match &self {
            Self::QuotaExceeded(q) => {
                // The first kind that cannot pay speaks for the refusal.
                let Some(first) = q.violated().next().or(q.items.first()) else {
                    let message = Message::BadRequest {
                        reason: "no tickets left",
                    };
                    let answer = problem(messages, language, &self, headers, &message);
                    return self.response(status, answer);
                };
                // Built only when no recent identical refusal left its answer.
                let build = || {
                    let mut headers = HeaderMap::new();
                    let retry_after = q
                        .violated()
                        .map(|i| seconds_until(i.refill_at, q.now))
                        .max()
                        .unwrap_or(0);
                    headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
                    headers.insert(
                        RATELIMIT_POLICY_NAME,
                        ratelimit_headers::policy(q.items.iter().map(|i| &*i.kind)),
                    );
                    headers.insert(
                        RATELIMIT_NAME,
                        ratelimit_headers::remaining(
                            q.items.iter().map(|i| (&*i.kind, i.remaining, i.refill_at)),
                            q.now,
                        ),
                    );
                    let message = Message::QuotaExceeded {
                        label: first.kind.display_label(language),
                        cost: first.cost,
                        remaining: first.remaining,
                        capacity: first.kind.capacity(),
                        refill_at: first.refill_at,
                        now: q.now,
                    };
                    let members = QuotaMembers {
                        kind: first.kind.name(),
                        cost: first.cost,
                        remaining: first.remaining,
                        capacity: first.kind.capacity(),
                        refill_at: first.refill_at,
                        violated_policies: q.violated().map(|i| i.kind.name()).collect(),
                    };
                    let kind = (QUOTA_EXCEEDED_TYPE, status);
                    let body = problem_body(messages, language, kind, &message, Some(members));
                    problem_answer(headers, language, body)
                };
                let answer = match (answers, q.items.as_slice()) {
                    (Some(answers), [only]) => {
                        let key = AnswerKey::new(
                            language,
                            &only.kind,
                            only.cost,
                            only.remaining,
                            only.refill_at,
                            q.now,
                        );
                        Answer::clone(&answers.get_or_build(key, &only.kind, build))
                    }
                    _ => build(),
                };
                return self.response(status, answer);
            }
            Self::Unauthenticated(IdentityError::Unavailable { retry_after, .. }) => {
                let secs = retry_after.as_secs().max(1);
                headers.insert(RETRY_AFTER, HeaderValue::from(secs));
                Message::IdentityUnavailable
            }
            Self::Unauthenticated(e) => {
                headers.insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
                let reason = match e {
                    IdentityError::Missing { .. } => "no credentials were sent".to_string(),
                    other => other.to_string(),
                };
                let message = Message::Unauthenticated { reason: &reason };
                let answer = problem(messages, language, &self, headers, &message);
                return self.response(status, answer);
            }
            Self::StoreUnavailable(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
                Message::StoreUnavailable
            }
            Self::BadRequest(reason) => Message::BadRequest { reason },
            Self::AlreadyProcessed => Message::AlreadyProcessed,
            Self::InProgress => {
                headers.insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
                Message::InProgress
            }
            Self::KeyReused => Message::KeyReused,
        };
        let answer = problem(messages, language, &self, headers, &message);
        self.response(status, answer)
    }

    /// The response: `status`, `answer`, and this rejection in its
    /// extensions.
    fn response<B: From<Bytes>>(self, status: StatusCode, answer: Answer) -> Response<B> {
        let mut response = Response::new(B::from(answer.body));
        *response.status_mut() = status;
        *response.headers_mut() = answer.headers;
        response.extensions_mut().insert(self);
        response
    }
}

/// `rejection`'s problem, without the quota members of a 429.
fn problem(
    messages: &dyn Messages,
    language: &str,
    rejection: &Rejection,
    headers: HeaderMap,
    message: &Message<'_>,
) -> Answer {
    let kind = (rejection.problem_type(), rejection.status());
    let body = problem_body(messages, language, kind, message, None);
    problem_answer(headers, language, body)
}

/// `headers` with the problem's content type, language and length, and
/// `body`. (With its length set, a kept answer's copy is sent as it is: a
/// server that would add it grows a copied map, see [`Answer`].)
fn problem_answer(mut headers: HeaderMap, language: &str, body: Bytes) -> Answer {
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Ok(language) = HeaderValue::from_str(language) {
        headers.insert(CONTENT_LANGUAGE, language);
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    Answer { headers, body }
}
