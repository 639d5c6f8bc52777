//! The demo's routes (DESIGN.md §8) and the state they share.

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_tickets::identity::JwtIssuer;
use tower_tickets::{ConfigError, Cost, Replays, TicketLayer, Tickets};

use crate::auth::AdminToken;
use crate::first_answers::FirstAnswers;
use crate::problem::Problems;
use crate::signup_limit::SignupLimit;
use crate::uploads::{MAX_UPLOAD_BYTES, Uploads};
use crate::{admin, ai, balances, first_answers, metrics, page, signup, uploads};

/// What every handler can extract with `State<_>`.
#[derive(Clone, FromRef)]
pub struct AppState {
    /// The ticket registry (also read by the `Balances` extractor).
    pub tickets: Tickets,
    /// Mints the tokens /api/signup hands out; `None` when Firebase Auth
    /// does (`--firebase-auth`).
    pub issuer: Option<JwtIssuer>,
    /// Guards /api/admin/*.
    pub admin: AdminToken,
    /// What users uploaded.
    pub uploads: Uploads,
    /// The answers retries of a paid request get.
    pub first_answers: FirstAnswers,
    /// Sign-ups left per client address.
    pub signup_limit: SignupLimit,
    /// Renders `GET /metrics`.
    pub metrics: PrometheusHandle,
}

/// The demo's router.
///
/// Costs are attached with `route_layer`, so they apply only to the routes
/// named: an unknown path (404) or method (405) is never charged. Inside the
/// ticket layer, `first_answers` answers a retry of a finished request (same
/// `Idempotency-Key`, route and cost) with its first answer instead of
/// running the handler again for free.
pub fn router(state: AppState) -> Result<Router, ConfigError> {
    let tickets = &state.tickets;
    let signup = match state.issuer {
        Some(_) => post(signup::signup),
        None => post(signup::with_firebase),
    };
    Ok(Router::new()
        .merge(page::router())
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics::render))
        .route("/api/signup", signup)
        .route("/api/tickets", get(balances::balances))
        .route(
            "/api/uploads",
            get(uploads::list).merge(
                post(uploads::store)
                    .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES))
                    .layer(from_fn_with_state(
                        state.clone(),
                        first_answers::answer_retries,
                    ))
                    .route_layer(one_ticket(tickets, "upload")?),
            ),
        )
        .route(
            "/api/ai/generate",
            post(ai::generate)
                .layer(from_fn_with_state(
                    state.clone(),
                    first_answers::answer_retries,
                ))
                .route_layer(one_ticket(tickets, "ai")?),
        )
        .route("/api/admin/grant", post(admin::grant))
        .route("/api/admin/set", post(admin::set))
        .route("/api/admin/reset", post(admin::reset))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state))
}

/// Charges one ticket of `kind`, and gives it back when the handler answers
/// 4xx or 5xx; lets a retry of a finished request through uncharged, for
/// `first_answers` to answer.
///
/// The layer charges before the handler reads the body, so a malformed
/// body is only found out after the charge; refunding 4xx makes that 400
/// cost nothing (DESIGN.md §8). A user with no tickets left gets 429 before
/// the body is looked at.
fn one_ticket(tickets: &Tickets, kind: &str) -> Result<TicketLayer, ConfigError> {
    Ok(tickets
        .layer(Cost::of(kind, 1))?
        .refund_when(|status: StatusCode| status.is_client_error() || status.is_server_error())
        .replays(Replays::CallUncharged))
}

async fn not_found(problems: Problems, method: Method, uri: Uri) -> Response {
    problems.not_found(&method, &uri)
}

async fn method_not_allowed(problems: Problems, method: Method, uri: Uri) -> Response {
    problems.method_not_allowed(&method, &uri)
}
