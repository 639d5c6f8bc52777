//! Every error the demo answers is `application/problem+json` (RFC 9457),
//! shaped like the ticket layer's own refusals and worded in the request's
//! language.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::header::{CONTENT_LANGUAGE, CONTENT_TYPE, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tower_tickets::identity::IdentityError;
use tower_tickets::messages::negotiate;
use tower_tickets::store::StoreError;
use tower_tickets::{Rejection, Tickets};

/// Turns a request's errors into problem+json responses in the language its
/// `Accept-Language` asks for. Handlers that can fail extract it first.
pub struct Problems {
    tickets: Tickets,
    headers: HeaderMap,
}

impl<S> FromRequestParts<S> for Problems
where
    Tickets: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Infallible> {
        Ok(Self::new(Tickets::from_ref(state), &parts.headers))
    }
}

impl Problems {
    /// Problems for a request with these headers.
    pub fn new(tickets: Tickets, headers: &HeaderMap) -> Self {
        Self {
            tickets,
            headers: headers.clone(),
        }
    }

    /// 400: the request cannot be processed; `reason` says why, in English.
    pub fn bad_request(&self, reason: impl Into<String>) -> Response {
        self.rejection(Rejection::BadRequest(reason.into()))
    }

    /// 401: no usable credentials.
    pub fn unauthorized(&self, error: IdentityError) -> Response {
        self.rejection(Rejection::Unauthenticated(error))
    }

    /// 503: the ticket store cannot answer.
    pub fn store_unavailable(&self, error: StoreError) -> Response {
        self.rejection(Rejection::StoreUnavailable(Arc::new(error)))
    }

    /// 409: the request's `Idempotency-Key` already paid for this request,
    /// which finished, and its first answer is not at hand.
    pub fn already_processed(&self) -> Response {
        self.rejection(Rejection::AlreadyProcessed)
    }

    /// 422: the request's `Idempotency-Key` already served another request.
    pub fn key_reused(&self) -> Response {
        self.rejection(Rejection::KeyReused)
    }

    /// 409 with `Retry-After`: the request's `Idempotency-Key` already made
    /// this change, which is still being written.
    pub fn in_progress(&self) -> Response {
        self.rejection(Rejection::InProgress)
    }

    /// 500: the demo failed on its side.
    pub fn internal(&self) -> Response {
        self.own(StatusCode::INTERNAL_SERVER_ERROR, Words::Internal)
    }

    /// 429: this client address made too many accounts lately; it may
    /// make another after `retry_after`.
    pub fn too_many_signups(&self, retry_after: Duration) -> Response {
        let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        let mut response = self.own(
            StatusCode::TOO_MANY_REQUESTS,
            Words::TooManySignups { secs },
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
        response
    }

    /// 404: accounts are made with Firebase Auth, not here.
    pub fn signup_with_firebase(&self) -> Response {
        self.own(StatusCode::NOT_FOUND, Words::SignUpWithFirebase)
    }

    /// 404: no route for this path.
    pub fn not_found(&self, method: &Method, uri: &Uri) -> Response {
        self.own(
            StatusCode::NOT_FOUND,
            Words::NotFound {
                method: method.as_str(),
                path: uri.path(),
            },
        )
    }

    /// 405: the path exists but not with this method.
    pub fn method_not_allowed(&self, method: &Method, uri: &Uri) -> Response {
        self.own(
            StatusCode::METHOD_NOT_ALLOWED,
            Words::MethodNotAllowed {
                method: method.as_str(),
                path: uri.path(),
            },
        )
    }

    fn rejection(&self, rejection: Rejection) -> Response {
        self.tickets.reject(&rejection, &self.headers)
    }

    /// A problem the ticket layer has no words for, in the same shape.
    fn own(&self, status: StatusCode, words: Words<'_>) -> Response {
        let language = negotiate(&self.headers, &["en", "fr"]);
        let (title, detail) = words.render(language == "fr");
        let body = Problem {
            kind: "about:blank",
            title,
            status: status.as_u16(),
            detail: &detail,
        };
        (
            status,
            [
                (
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/problem+json"),
                ),
                (CONTENT_LANGUAGE, HeaderValue::from_static(language)),
            ],
            serde_json::to_string(&body).unwrap_or_default(),
        )
            .into_response()
    }
}

/// A request body read by the extractor `E` (`Json<T>`, `Bytes`), whose
/// failure is answered as problem+json instead of axum's plain text: 413
/// when too large, 400 otherwise (malformed JSON, wrong content type,
/// missing field).
pub struct Payload<E>(pub E);

impl<S, E> FromRequest<S> for Payload<E>
where
    E: FromRequest<S>,
    E::Rejection: BodyRejection,
    Tickets: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let problems = Problems::new(Tickets::from_ref(state), request.headers());
        match E::from_request(request, state).await {
            Ok(payload) => Ok(Self(payload)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(problems.own(StatusCode::PAYLOAD_TOO_LARGE, Words::TooLarge))
            }
            Err(e) => Err(problems.bad_request(e.body_text())),
        }
    }
}

/// What [`Payload`] needs to know of axum's body rejections (which have
/// these as inherent methods: the impls below call those, not themselves).
pub trait BodyRejection {
    /// The status axum would answer.
    fn status(&self) -> StatusCode;
    /// What went wrong, in English.
    fn body_text(&self) -> String;
}

impl BodyRejection for JsonRejection {
    fn status(&self) -> StatusCode {
        self.status()
    }

    fn body_text(&self) -> String {
        self.body_text()
    }
}

impl BodyRejection for BytesRejection {
    fn status(&self) -> StatusCode {
        self.status()
    }

    fn body_text(&self) -> String {
        self.body_text()
    }
}

/// The problem document, members in the order the ticket layer writes them.
#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

/// The demo's own problems.
enum Words<'a> {
    NotFound { method: &'a str, path: &'a str },
    MethodNotAllowed { method: &'a str, path: &'a str },
    TooLarge,
    Internal,
    TooManySignups { secs: u64 },
    SignUpWithFirebase,
}

impl Words<'_> {
    /// `(title, detail)`, in French or English.
    fn render(&self, french: bool) -> (&'static str, String) {
        match (self, french) {
            (Self::NotFound { method, path }, false) => (
                "Not found",
                format!("There is no route for {method} {path}."),
            ),
            (Self::NotFound { method, path }, true) => (
                "Introuvable",
                format!("Aucune route ne correspond à {method} {path}."),
            ),
            (Self::MethodNotAllowed { method, path }, false) => (
                "Method not allowed",
                format!("{path} does not accept {method}."),
            ),
            (Self::MethodNotAllowed { method, path }, true) => (
                "Méthode non autorisée",
                format!("{path} n'accepte pas {method}."),
            ),
            (Self::TooLarge, false) => (
                "Body too large",
                "The request body is larger than this route accepts.".into(),
            ),
            (Self::TooLarge, true) => (
                "Corps trop volumineux",
                "Le corps de la requête dépasse la taille acceptée par cette route.".into(),
            ),
            (Self::Internal, false) => (
                "Internal error",
                "Something went wrong on our side; try again.".into(),
            ),
            (Self::TooManySignups { secs }, false) => (
                "Too many sign-ups",
                format!(
                    "Too many accounts were made from your address lately; \
                     try again in {secs} s."
                ),
            ),
            (Self::TooManySignups { secs }, true) => (
                "Trop d'inscriptions",
                format!(
                    "Trop de comptes ont été créés depuis votre adresse récemment ; \
                     réessayez dans {secs} s."
                ),
            ),
            (Self::SignUpWithFirebase, false) => (
                "Sign up with Firebase Auth",
                "This server takes Firebase ID tokens: sign up and sign in with Firebase \
                 Auth, then send your ID token as Authorization: Bearer <token>."
                    .into(),
            ),
            (Self::SignUpWithFirebase, true) => (
                "Inscrivez-vous avec Firebase Auth",
                "Ce serveur accepte les jetons d'identité Firebase : inscrivez-vous et \
                 connectez-vous avec Firebase Auth, puis envoyez votre jeton en \
                 Authorization: Bearer <jeton>."
                    .into(),
            ),
            (Self::Internal, true) => (
                "Erreur interne",
                "Un problème est survenu de notre côté ; réessayez.".into(),
            ),
        }
    }
}
