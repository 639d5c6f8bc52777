//! The token of an `Authorization: Bearer <token>` header.

use http::header::AUTHORIZATION;
use http::request::Parts;

use super::{IdentityError, only_header};

/// The authentication scheme, with the space that ends it.
const BEARER: &str = "Bearer ";

/// The bearer token of `request`. A request without the header, with two of
/// them, or with another scheme is refused.
pub(super) fn bearer_token(request: &Parts) -> Result<&str, IdentityError> {
    let header = only_header(
        request,
        &AUTHORIZATION,
        "an Authorization: Bearer <token> header",
    )?;
    header
        .to_str()
        .ok()
        .and_then(|v| v.split_at_checked(BEARER.len()))
        // The scheme is case-insensitive (RFC 9110, section 11.1).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(BEARER))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .ok_or(IdentityError::Invalid {
            reason: "the Authorization header is not of the form 'Bearer <token>'".into(),
        })
}
