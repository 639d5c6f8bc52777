//! Who is spending: extracting a verified [`Uid`] from a request.
//!
//! The layer calls an [`IdentityExtractor`] first. No identity, an invalid
//! one, or an identity that is not a valid uid is answered with 401 before
//! any store is touched; an identity that cannot be checked yet (no signing
//! key fetched so far) with 503 and `Retry-After`.
//!
//! Built-ins:
//! - [`ExtensionIdentity`]: a uid that an authentication layer in front of
//!   this one placed in the request's extensions (the usual production set-up
//!   behind an auth middleware);
//! - `JwtIdentity` (feature `jwt`, on by default): a verified JWT bearer
//!   token (HS256 or RS256), its `sub` claim being the uid;
//! - [`FirebaseIdentity`] (feature `firebase`): a Firebase Auth ID token,
//!   verified with Google's rotating keys, fetched in the background;
//! - [`HeaderIdentity`]: a plain header, **trusted blindly: development only**.

#[cfg(feature = "jwt")]
mod bearer;
mod extension;
#[cfg(feature = "firebase")]
mod firebase;
mod header;
#[cfg(feature = "jwt")]
mod jwt;
#[cfg(feature = "jwt")]
mod jwt_verification;
#[cfg(feature = "jwt")]
mod verified_tokens;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::request::Parts;
use http::{HeaderName, HeaderValue};

pub use self::extension::ExtensionIdentity;
#[cfg(feature = "firebase")]
pub use self::firebase::{
    FirebaseIdentity, FirebaseIdentityBuilder, FirebaseSetupError, GOOGLE_SECURETOKEN_KEYS_URL,
};
pub use self::header::HeaderIdentity;
#[cfg(feature = "jwt")]
pub use self::jwt::{JwtIdentity, JwtIssuer};
use crate::uid::{Uid, UidError};

/// Finds and verifies the user a request acts for.
pub trait IdentityExtractor: Send + Sync + 'static {
    /// The request's user, checked at `now` (token expiry is read against the
    /// layer's clock, not the system's).
    fn identify(&self, request: &Parts, now: DateTime<Utc>) -> Result<Uid, IdentityError>;
}

/// Why a request has no usable identity; answered with 401, except
/// [`IdentityError::Unavailable`] (503).
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
    /// The credentials cannot be checked yet: the key that signed them is
    /// still being fetched (a cold start, or a key new to this process).
    /// Answered with 503 and `Retry-After`, since the same request may
    /// succeed in a moment.
    Unavailable {
        /// What is missing, in words fit for the client.
        reason: String,
        /// When to try again.
        retry_after: Duration,
    },
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { expected } => write!(f, "no credentials: expected {expected}"),
            Self::Invalid { reason } => write!(f, "invalid credentials: {reason}"),
            Self::InvalidUid(e) => write!(f, "invalid user id: {e}"),
            Self::Unavailable { reason, .. } => {
                write!(f, "credentials cannot be checked yet: {reason}")
            }
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
