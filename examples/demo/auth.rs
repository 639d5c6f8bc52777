//! Who is calling: a signed-up user (their JWT), or the administrator (the
//! admin token).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower_tickets::Tickets;
use tower_tickets::identity::IdentityError;

use crate::problem::Problems;

/// The shortest admin token not warned about: it should resist guessing
/// as well as a 128-bit key, e.g. 32 random hex digits.
const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// The admin token the server was started with, if any.
#[derive(Clone)]
pub struct AdminToken(Option<Arc<str>>);

impl AdminToken {
    /// Guards the admin routes with `token`; without one they always
    /// answer 401. A short token is warned about: it grants tickets to
    /// whoever guesses it.
    pub fn new(token: Option<String>) -> Self {
        match &token {
            None => tracing::warn!(
                "no --admin-token given: /api/admin/* answer 401 to everyone \
                 (start with --admin-token <secret> or TICKETS_ADMIN_TOKEN=<secret> to enable them)"
            ),
            Some(token) if token.len() < MIN_ADMIN_TOKEN_LEN => tracing::warn!(
                "the admin token is {} characters long: whoever guesses it can grant any user \
                 tickets; use at least {MIN_ADMIN_TOKEN_LEN} random characters \
                 (e.g. `openssl rand -hex 16`)",
                token.len()
            ),
            Some(_) => {}
        }
        Self(token.map(Arc::from))
    }

    /// Whether a request from `peer` with `headers` may read the metrics:
    /// from this machine, or with the admin token.
    pub fn may_read_metrics(&self, peer: IpAddr, headers: &HeaderMap) -> Result<(), IdentityError> {
        if peer.to_canonical().is_loopback() {
            return Ok(());
        }
        check_admin(headers, self.0.as_deref())
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
        match check_admin(&parts.headers, expected.as_deref()) {
            Ok(()) => Ok(Self),
            Err(e) => Err(Problems::new(Tickets::from_ref(state), &parts.headers).unauthorized(e)),
        }
    }
}

fn check_admin(headers: &HeaderMap, expected: Option<&str>) -> Result<(), IdentityError> {
    let Some(expected) = expected else {
        return Err(IdentityError::Invalid {
            reason: "admin routes are disabled; start the demo with --admin-token".into(),
        });
    };
    let header = headers.get(AUTHORIZATION).ok_or(IdentityError::Missing {
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

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn metrics_are_for_this_machine_or_the_admin() {
        let admin = AdminToken::new(Some(TOKEN.into()));
        let none = HeaderMap::new();
        let mut with_token = HeaderMap::new();
        let bearer = HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap();
        with_token.insert(AUTHORIZATION, bearer);
        let mut wrong = HeaderMap::new();
        wrong.insert(AUTHORIZATION, HeaderValue::from_static("Bearer guess"));
        for local in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            let local: IpAddr = local.parse().unwrap();
            assert!(admin.may_read_metrics(local, &none).is_ok(), "{local}");
        }
        for remote in ["192.0.2.7", "2001:db8::7", "::ffff:192.0.2.7"] {
            let remote: IpAddr = remote.parse().unwrap();
            assert!(admin.may_read_metrics(remote, &none).is_err(), "{remote}");
            assert!(admin.may_read_metrics(remote, &wrong).is_err(), "{remote}");
            assert!(
                admin.may_read_metrics(remote, &with_token).is_ok(),
                "{remote}"
            );
        }
        let disabled = AdminToken::new(None);
        let remote = "192.0.2.7".parse().unwrap();
        assert!(disabled.may_read_metrics(remote, &with_token).is_err());
    }
}
