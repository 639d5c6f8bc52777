//! `POST /api/admin/grant` and `POST /api/admin/set`: change a user's
//! balance, guarded by the admin token.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use tower_tickets::{AdminError, Balances, Tickets, Uid};

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

/// Adds `amount` tickets of `kind` to `uid` (above capacity if need be; a
/// refill never takes them away) and answers all their balances.
pub async fn grant(
    _: Admin,
    State(tickets): State<Tickets>,
    problems: Problems,
    Payload(Json(GrantRequest { uid, kind, amount })): Payload<Json<GrantRequest>>,
) -> Result<Json<Balances>, Response> {
    adjust(&tickets, &problems, &uid, &kind, Change::Grant(amount)).await
}

/// Sets `uid`'s balance of `kind` to `balance` and answers all their
/// balances.
pub async fn set(
    _: Admin,
    State(tickets): State<Tickets>,
    problems: Problems,
    Payload(Json(SetRequest { uid, kind, balance })): Payload<Json<SetRequest>>,
) -> Result<Json<Balances>, Response> {
    adjust(&tickets, &problems, &uid, &kind, Change::Set(balance)).await
}

enum Change {
    Grant(u32),
    Set(u32),
}

async fn adjust(
    tickets: &Tickets,
    problems: &Problems,
    uid: &str,
    kind: &str,
    change: Change,
) -> Result<Json<Balances>, Response> {
    let uid = Uid::parse(uid).map_err(|e| problems.bad_request(e.to_string()))?;
    let adjusted = match change {
        Change::Grant(amount) => tickets.grant(&uid, kind, amount).await,
        Change::Set(balance) => tickets.set(&uid, kind, balance).await,
    };
    match adjusted {
        Ok(view) => tracing::info!(%uid, kind, remaining = view.remaining, "balance adjusted"),
        Err(AdminError::UnknownKind(kind)) => {
            let known: Vec<_> = tickets.kinds().iter().map(|k| k.name()).collect();
            return Err(problems.bad_request(format!(
                "unknown ticket kind {kind:?}; the kinds are {}",
                known.join(", ")
            )));
        }
        Err(AdminError::Store(e)) => return Err(problems.store_unavailable(e)),
        Err(e) => return Err(problems.bad_request(e.to_string())),
    }
    let balances = tickets
        .balances(&uid)
        .await
        .map_err(|e| problems.store_unavailable(e))?;
    Ok(Json(balances))
}
