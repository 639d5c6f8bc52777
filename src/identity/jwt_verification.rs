//! The checks every built-in token extractor shares: what is refused before
//! anything is decoded (an oversized token, a `crit` header), then
//! `jsonwebtoken::decode` itself for the signature and the claims it knows.
//!
//! [`JwtIdentity`](super::JwtIdentity) and `FirebaseIdentity` both go
//! through here; what they add (their clock for `exp` and `nbf`, Firebase's
//! own claims) they check on the claims `decode` returns.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Header, Validation};
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};

use super::IdentityError;

/// The longest token read: far above any real ID token (Firebase's are
/// about 1 KiB, 2 with many custom claims), far below what would make a
/// request expensive to check.
pub(super) const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A token's header, read after the checks that come before decoding.
pub(super) enum TokenHeader {
    /// A signed token's header, for the caller to pick the key (boxed: it
    /// is large, and the other variant empty).
    Signed(Box<Header>),
    /// An unsigned token (`alg` `none`): only the Firebase Auth emulator
    /// issues them, and only an extractor in emulator mode accepts them.
    Unsigned,
}

/// The header of an unsigned token (which `jsonwebtoken`, rightly, cannot
/// read: it knows no `none` algorithm).
#[derive(Deserialize)]
struct UnsignedHeader {
    alg: String,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

/// Reads `token`'s header, refusing first, before decoding anything, a
/// token over [`MAX_TOKEN_BYTES`], then a header with a `crit` member
/// (RFC 7515, section 4.1.11: extensions the verifier must understand;
/// none are understood here, and `jsonwebtoken` would ignore them).
pub(super) fn read_header(token: &str) -> Result<TokenHeader, IdentityError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(IdentityError::Invalid {
            reason: format!(
                "the token is {} bytes long; at most {MAX_TOKEN_BYTES} are accepted",
                token.len()
            ),
        });
    }
    let header = match jsonwebtoken::decode_header(token) {
        Ok(header) => header,
        Err(e) => {
            return match unsigned_header(token) {
                Some(header) if header.crit.is_none() => Ok(TokenHeader::Unsigned),
                Some(_) => Err(critical_extensions()),
                None => Err(invalid(e)),
            };
        }
    };
    if header.crit.is_some() {
        return Err(critical_extensions());
    }
    Ok(TokenHeader::Signed(Box::new(header)))
}

fn critical_extensions() -> IdentityError {
    IdentityError::Invalid {
        reason: "the token's header lists critical extensions (crit), which are not supported"
            .into(),
    }
}

/// The header of `token` if it says `"alg": "none"`.
fn unsigned_header(token: &str) -> Option<UnsignedHeader> {
    let (header, _) = token.split_once('.')?;
    let json = URL_SAFE_NO_PAD.decode(header).ok()?;
    let header: UnsignedHeader = serde_json::from_slice(&json).ok()?;
    (header.alg == "none").then_some(header)
}

/// The claims of `token`, which `jsonwebtoken::decode` verified: its
/// signature by `key`, its algorithm, and the claims `validation` names.
pub(super) fn decode<C: DeserializeOwned>(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<C, IdentityError> {
    jsonwebtoken::decode::<C>(token, key, validation)
        .map(|data| data.claims)
        .map_err(invalid)
}

/// Puts a `jsonwebtoken` error into words for the client.
fn invalid(e: jsonwebtoken::errors::Error) -> IdentityError {
    let reason = match e.kind() {
        ErrorKind::InvalidSignature => "the token's signature does not verify",
        ErrorKind::InvalidIssuer => "the token was issued by another issuer",
        ErrorKind::InvalidAudience => "the token is meant for another audience",
        ErrorKind::InvalidAlgorithm => "the token is signed with an algorithm not accepted here",
        ErrorKind::MissingRequiredClaim(_) => {
            "the token lacks a required claim (sub, exp, and iss/aud where configured)"
        }
        _ => "the token is malformed",
    };
    IdentityError::Invalid {
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(header: &str, claims: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    fn reason(result: Result<TokenHeader, IdentityError>) -> String {
        match result {
            Err(IdentityError::Invalid { reason }) => reason,
            Err(other) => panic!("not an invalid token: {other}"),
            Ok(_) => panic!("the header was read"),
        }
    }

    #[test]
    fn an_oversized_token_is_refused_before_its_header_is_read() {
        // Not even base64: the size alone refuses it.
        let huge = "!".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            reason(read_header(&huge)),
            "the token is 8193 bytes long; at most 8192 are accepted"
        );
        let claims = format!(r#"{{"sub":"alice","pad":"{}"}}"#, "x".repeat(9 * 1024));
        let nine_kib = token(r#"{"alg":"HS256"}"#, &claims);
        assert!(reason(read_header(&nine_kib)).contains("at most 8192"));
    }

    #[test]
    fn a_crit_header_is_refused_signed_or_not() {
        for header in [
            r#"{"alg":"RS256","kid":"k","crit":["exp"],"exp":1}"#,
            r#"{"alg":"none","crit":["b64"]}"#,
        ] {
            let refused = reason(read_header(&token(header, "{}")));
            assert!(refused.contains("critical extensions (crit)"), "{refused}");
        }
    }

    #[test]
    fn headers_are_read_as_signed_unsigned_or_malformed() {
        let signed = read_header(&token(r#"{"alg":"RS256","kid":"k1"}"#, "{}"));
        assert!(matches!(signed, Ok(TokenHeader::Signed(h)) if h.kid.as_deref() == Some("k1")));
        let unsigned = read_header(&token(r#"{"alg":"none","typ":"JWT"}"#, "{}"));
        assert!(matches!(unsigned, Ok(TokenHeader::Unsigned)));
        for bad in [
            token(r#"{"alg":"HS999"}"#, "{}"),
            token("not json", "{}"),
            "only.two".into(),
            String::new(),
        ] {
            assert_eq!(reason(read_header(&bad)), "the token is malformed", "{bad}");
        }
    }
}
