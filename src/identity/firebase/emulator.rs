//! The Firebase Auth emulator's tokens: unsigned (`alg` `none`), accepted
//! only while `FIREBASE_AUTH_EMULATOR_HOST` is set, as Firebase's Admin SDK
//! does.

use super::claims::FirebaseClaims;
use crate::identity::IdentityError;

/// The variable that points Firebase's SDKs at the Auth emulator.
pub(super) const EMULATOR_HOST_VAR: &str = "FIREBASE_AUTH_EMULATOR_HOST";

/// The emulator's address, if the environment names one.
pub(super) fn emulator_host() -> Option<String> {
    std::env::var(EMULATOR_HOST_VAR)
        .ok()
        .filter(|host| !host.trim().is_empty())
}

/// The claims of an unsigned emulator token, which nothing else checked:
/// `iss` and `aud` are checked here, the rest as for signed tokens.
pub(super) fn unsigned_claims(
    token: &str,
    project: &str,
    issuer: &str,
) -> Result<FirebaseClaims, IdentityError> {
    let claims: FirebaseClaims =
        jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| {
            IdentityError::Invalid {
                reason: "the token is malformed".into(),
            }
        })?;
    claims.check_issued_for(project, issuer)?;
    Ok(claims)
}
