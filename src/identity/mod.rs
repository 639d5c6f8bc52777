//! Who is spending: extracting a verified [`Uid`] from a request.
//!
//! The layer calls an [`IdentityExtractor`] first. No identity, an invalid
//! one, or an identity that is not a valid uid is answered with 401 before
//! any store is touched.
//!
//! Built-ins:
//! - [`ExtensionIdentity`]: a uid that an authentication layer in front of
//!   this one placed in the request's extensions (the usual production set-up
//!   behind an auth middleware);
//! - [`JwtIdentity`]: a verified JWT bearer token (HS256 or RS256), its `sub`
//!   claim being the uid;
//! - [`HeaderIdentity`]: a plain header, **trusted blindly: development only**.

mod extension;
mod header;
mod jwt;
mod jwt_verification;
mod verified_tokens;

use std::fmt;

use chrono::{DateTime, Utc};
use http::request::Parts;
use http::{HeaderName, HeaderValue};

pub use self::extension::ExtensionIdentity;
pub use self::header::HeaderIdentity;
pub use self::jwt::{JwtIdentity, JwtIssuer};
use crate::uid::{Uid, UidError};

/// Finds and verifies the user a request acts for.
pub trait IdentityExtractor: Send + Sync + 'static {
    /// The request's user, checked at `now` (token expiry is read against the
    /// layer's clock, not the system's).
    fn identify(&self, request: &Parts, now: DateTime<Utc>) -> Result<Uid, IdentityError>;
}

/// Why a request has no usable identity; answered with 401.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityError {
    /// The request carries no credentials where the extractor looks.
    Missing {
        /// Where the extractor looked, e.g. "an Authorization: Bearer header".
        expected: &'static str,
    },
    /// Credentials are present but do not verify (bad signature, expired,
    /// wrong issuer or audience, malformed).
    Invalid {
        /// What is wrong, in words fit for the client.
        reason: String,
    },
    /// The identity verified but is not a valid uid.
    InvalidUid(UidError),
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { expected } => write!(f, "no credentials: expected {expected}"),
            Self::Invalid { reason } => write!(f, "invalid credentials: {reason}"),
            Self::InvalidUid(e) => write!(f, "invalid user id: {e}"),
        }
    }
}

impl std::error::Error for IdentityError {}

impl From<UidError> for IdentityError {
    fn from(e: UidError) -> Self {
        Self::InvalidUid(e)
    }
}

/// The one value of the header `name`. A request that repeats it is
/// refused: a proxy that appends its own value instead of replacing the
/// client's would otherwise leave the client's value first.
fn only_header<'a>(
    request: &'a Parts,
    name: &HeaderName,
    expected: &'static str,
) -> Result<&'a HeaderValue, IdentityError> {
    let mut values = request.headers.get_all(name).iter();
    let value = values.next().ok_or(IdentityError::Missing { expected })?;
    if values.next().is_some() {
        return Err(IdentityError::Invalid {
            reason: format!("the request repeats the {name} header"),
        });
    }
    Ok(value)
}
