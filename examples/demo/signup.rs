//! `POST /api/signup`: a new user with a fresh balance and a token.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tower_tickets::Tickets;
use tower_tickets::identity::JwtIssuer;

use crate::ids::new_uid;
use crate::problem::{Payload, Problems};
use crate::signup_limit::SignupLimit;

/// How long a sign-up token stays valid.
const TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The longest email address accepted (RFC 5321's path limit).
const MAX_EMAIL_LEN: usize = 254;

#[derive(Deserialize)]
pub struct SignupRequest {
    email: String,
}

#[derive(Serialize)]
pub struct SignedUp {
    uid: String,
    token: String,
}

/// Creates a user holding every kind's initial tickets (5 upload, 3 AI) and
/// answers 201 with their uid and a bearer token. The email is only checked
/// for shape: each sign-up is a new user, so sign-ups are limited per client
/// address (429 past the limit). With `--firebase-auth`, accounts are made
/// with Firebase Auth instead: 404.
pub async fn signup(
    State(tickets): State<Tickets>,
    State(issuer): State<Option<JwtIssuer>>,
    State(limit): State<SignupLimit>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    problems: Problems,
    Payload(Json(request)): Payload<Json<SignupRequest>>,
) -> Result<(StatusCode, Json<SignedUp>), Response> {
    // The router sends sign-ups to `with_firebase` when there is no issuer.
    let issuer = issuer.ok_or_else(|| problems.signup_with_firebase())?;
    check_email(&request.email).map_err(|reason| problems.bad_request(reason))?;
    limit
        .take(peer.ip(), Instant::now())
        .map_err(|wait| problems.too_many_signups(wait))?;
    let uid = new_uid();
    tickets
        .ensure_user(&uid)
        .await
        .map_err(|e| problems.store_unavailable(e))?;
    let token = issuer.issue(&uid, tickets.now(), TOKEN_TTL);
    tracing::info!(%uid, "signed up");
    Ok((
        StatusCode::CREATED,
        Json(SignedUp {
            uid: uid.to_string(),
            token,
        }),
    ))
}

/// `POST /api/signup` with `--firebase-auth`: 404, whatever the body, saying
/// to sign up with Firebase Auth.
pub async fn with_firebase(problems: Problems) -> Response {
    problems.signup_with_firebase()
}

/// A loose check: something on each side of an `@`, at most 254
/// characters.
fn check_email(email: &str) -> Result<(), String> {
    if email.chars().count() > MAX_EMAIL_LEN {
        return Err(format!(
            "the email address is longer than {MAX_EMAIL_LEN} characters"
        ));
    }
    match email.split_once('@') {
        Some((name, domain)) if !name.is_empty() && !domain.is_empty() => Ok(()),
        _ => Err("the email address is not of the form name@domain".into()),
    }
}
