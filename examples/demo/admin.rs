//! `POST /api/admin/grant`, `/api/admin/set` and `/api/admin/reset`: change
//! a user's balances, guarded by the admin token. Each takes an optional
//! `Idempotency-Key`: a retried payment webhook grants once.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use tower_tickets::{Adjusted, AdminError, Balances, IdempotencyKey, Tickets, Uid};

use crate::auth::Admin;
use crate::problem::{Payload, Problems};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    uid: String,
    kind: String,
    amount: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRequest {
    uid: String,
    kind: String,
    balance: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    uid: String,
    kind: Option<String>,
}

/// Adds `amount` tickets of `kind` to `uid` (above capacity if need be; a
/// refill never takes them away) and answers all their balances.
pub async fn grant(
    _: Admin,
    State(tickets): State<Tickets>,
    problems: Problems,
    headers: HeaderMap,
    Payload(Json(GrantRequest { uid, kind, amount })): Payload<Json<GrantRequest>>,
) -> Result<Json<Balances>, Response> {
    let (uid, key) =
        admin_request(&uid, &headers).map_err(|reason| problems.bad_request(reason))?;
    let granted = tickets.grant(&uid, &kind, amount, key).await;
    answer(&tickets, &problems, &uid, granted).await
}

/// Sets `uid`'s balance of `kind` to `balance` and answers all their
/// balances.
pub async fn set(
    _: Admin,
    State(tickets): State<Tickets>,
    problems: Problems,
    headers: HeaderMap,
    Payload(Json(SetRequest { uid, kind, balance })): Payload<Json<SetRequest>>,
) -> Result<Json<Balances>, Response> {
    let (uid, key) =
        admin_request(&uid, &headers).map_err(|reason| problems.bad_request(reason))?;
    let set = tickets.set(&uid, &kind, balance, key).await;
    answer(&tickets, &problems, &uid, set).await
}

/// Refills `uid`'s `kind` now (every kind when absent): each balance at
/// least its capacity, refilled now; answers all their balances.
pub async fn reset(
    _: Admin,
    State(tickets): State<Tickets>,
    problems: Problems,
    headers: HeaderMap,
    Payload(Json(ResetRequest { uid, kind })): Payload<Json<ResetRequest>>,
) -> Result<Json<Balances>, Response> {
    let (uid, key) =
        admin_request(&uid, &headers).map_err(|reason| problems.bad_request(reason))?;
    let reset = tickets.reset(&uid, kind.as_deref(), key).await;
    answer(&tickets, &problems, &uid, reset).await
}

/// The uid an admin request names and its `Idempotency-Key`, or why
/// they cannot be used (a 400).
fn admin_request(uid: &str, headers: &HeaderMap) -> Result<(Uid, Option<IdempotencyKey>), String> {
    let uid = Uid::parse(uid).map_err(|e| e.to_string())?;
    let key = IdempotencyKey::from_headers(headers).map_err(|e| e.to_string())?;
    Ok((uid, key))
}

/// Answers an admin operation: all of `uid`'s balances, the kinds it
/// changed as it left them (for a retry under the same `Idempotency-Key`,
/// as the first request left them: that answer again), the others as they
/// stand.
async fn answer(
    tickets: &Tickets,
    problems: &Problems,
    uid: &Uid,
    adjusted: Result<Adjusted, AdminError>,
) -> Result<Json<Balances>, Response> {
    let adjusted = match adjusted {
        Ok(adjusted) => adjusted,
        Err(AdminError::UnknownKind(kind)) => {
            let known: Vec<_> = tickets.kinds().iter().map(|k| k.name()).collect();
            return Err(problems.bad_request(format!(
                "unknown ticket kind {kind:?}; the kinds are {}",
                known.join(", ")
            )));
        }
        Err(AdminError::KeyReused) => return Err(problems.key_reused()),
        Err(AdminError::InProgress) => return Err(problems.in_progress()),
        Err(AdminError::Store(e)) => return Err(problems.store_unavailable(e)),
        Err(e) => return Err(problems.bad_request(e.to_string())),
    };
    for view in &adjusted.balances {
        let (kind, remaining, replayed) = (view.kind.name(), view.remaining, adjusted.replayed);
        tracing::info!(%uid, kind, remaining, replayed, "balance adjusted");
    }
    let mut balances = tickets
        .balances(uid)
        .await
        .map_err(|e| problems.store_unavailable(e))?;
    for view in &mut balances.kinds {
        if let Some(changed) = adjusted
            .balances
            .iter()
            .find(|changed| changed.kind.name() == view.kind.name())
        {
            view.clone_from(changed);
        }
    }
    Ok(Json(balances))
}
