//! Who is calling: a signed-up user (their JWT), or the administrator (the
//! admin token).

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower_tickets::Tickets;
use tower_tickets::identity::IdentityError;

use crate::problem::Problems;

/// The admin token the server was started with, if any.
#[derive(Clone)]
pub struct AdminToken(Option<Arc<str>>);

impl AdminToken {
    /// Guards the admin routes with `token`; without one they always
    /// answer 401.
    pub fn new(token: Option<String>) -> Self {
        if token.is_none() {
            tracing::warn!(
                "no --admin-token given: /api/admin/* answer 401 to everyone \
                 (start with --admin-token <secret> or TICKETS_ADMIN_TOKEN=<secret> to enable them)"
            );
        }
        Self(token.map(Arc::from))
    }
}

/// Proof that a request carries the admin token as `Authorization: Bearer`.
/// Missing, wrong, or no admin token configured: 401.
pub struct Admin;

impl<S> FromRequestParts<S> for Admin
where
    AdminToken: FromRef<S>,
    Tickets: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let AdminToken(expected) = AdminToken::from_ref(state);
        match check_admin(parts, expected.as_deref()) {
            Ok(()) => Ok(Self),
            Err(e) => Err(Problems::new(Tickets::from_ref(state), &parts.headers).unauthorized(e)),
        }
    }
}

fn check_admin(parts: &Parts, expected: Option<&str>) -> Result<(), IdentityError> {
    let Some(expected) = expected else {
        return Err(IdentityError::Invalid {
            reason: "admin routes are disabled; start the demo with --admin-token".into(),
        });
    };
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or(IdentityError::Missing {
            expected: "an Authorization: Bearer <admin token> header",
        })?;
    let given = match header.as_bytes().split_at_checked(7) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"Bearer ") => token,
        _ => b"",
    };
    // Digests all have one length, so comparing them in constant time
    // reveals neither how much of the token matched nor how long it is.
    let (given, expected) = (Sha256::digest(given), Sha256::digest(expected));
    if bool::from(given[..].ct_eq(&expected[..])) {
        Ok(())
    } else {
        Err(IdentityError::Invalid {
            reason: "the admin token does not match".into(),
        })
    }
}
