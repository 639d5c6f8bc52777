//! Checking a JWT the way `jsonwebtoken::decode` does, reading each part
//! once.
//!
//! `decode` parses the header twice and the claims twice (once for the
//! caller, once for its own checks): a third of the time a token took to
//! check (docs/benchmarks.md). [`verify`] makes the same checks, in the same
//! order, with the same errors, through `jsonwebtoken`'s own types and
//! signature code, parsing each part once. The tests hold it to `decode`'s
//! verdicts.

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::{DecodingKey, Header, Validation};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde::de::{Deserializer, IgnoredAny};

use super::IdentityError;

/// The claims read from a verified token.
#[derive(Deserialize)]
pub(super) struct Claims {
    /// The uid.
    pub(super) sub: String,
    /// Expiry, in seconds since the epoch; checked by the caller against its
    /// clock.
    pub(super) exp: i64,
    #[serde(default)]
    iss: Claim<OneOrMany>,
    #[serde(default)]
    aud: Claim<OneOrMany>,
    /// Not before, checked by the caller against its clock (see
    /// [`Claims::not_before`]). Declared as `decode` declares it, so that a
    /// repeated `nbf` is refused as it is there.
    #[serde(default)]
    nbf: Claim<NumericDate>,
}

/// A date claim: seconds since the epoch, or anything else (which
/// `decode`, not checking `nbf`, lets through, and the caller refuses).
#[derive(Deserialize)]
#[serde(untagged)]
enum NumericDate {
    Seconds(i64),
    Other(IgnoredAny),
}

/// A claim as `jsonwebtoken` sees it: absent (or null), of a type it cannot
/// read, or read.
#[derive(Default)]
enum Claim<T> {
    #[default]
    Absent,
    Unreadable,
    Read(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Claim<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(deserializer) {
            Ok(Some(value)) => Self::Read(value),
            Ok(None) => Self::Absent,
            Err(_) => Self::Unreadable,
        })
    }
}

/// `iss` and `aud` may be a string or an array of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// Whether this names any of `accepted`.
    fn names_any(&self, accepted: &HashSet<String>) -> bool {
        match self {
            Self::One(value) => accepted.contains(value),
            Self::Many(values) => values.iter().any(|v| accepted.contains(v)),
        }
    }
}

/// Verifies `token`: its header, its signature by the key `key_for` picks
/// from the header, then its claims against `validation`.
///
/// `validation` must leave `exp`, `nbf` and `sub` unchecked and not require
/// `nbf` (the caller checks `exp` and `nbf` against its own clock), as
/// [`JwtIdentity`] sets it up.
///
/// [`JwtIdentity`]: super::JwtIdentity
pub(super) fn verify<'k>(
    token: &str,
    validation: &Validation,
    key_for: impl FnOnce(&Header) -> Result<&'k DecodingKey, IdentityError>,
) -> Result<Claims, IdentityError> {
    debug_assert!(!validation.validate_exp && !validation.validate_nbf && validation.sub.is_none());
    debug_assert!(validation.required_spec_claims.iter().all(|c| c != "nbf"));
    let malformed = || invalid(ErrorKind::InvalidToken.into());
    let (message, signature) = token.rsplit_once('.').ok_or_else(malformed)?;
    let (header, payload) = message.rsplit_once('.').ok_or_else(malformed)?;
    let header: Header = decode_part(header).map_err(invalid)?;
    let key = key_for(&header)?;
    if !validation.algorithms.contains(&header.alg) {
        return Err(invalid(ErrorKind::InvalidAlgorithm.into()));
    }
    let signed = jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, header.alg);
    if !signed.map_err(invalid)? {
        return Err(invalid(ErrorKind::InvalidSignature.into()));
    }
    let claims: Claims = decode_part(payload).map_err(invalid)?;
    claims.check(validation).map_err(invalid)?;
    Ok(claims)
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

/// A base64url-encoded JSON part of a token.
fn decode_part<T: DeserializeOwned>(part: &str) -> Result<T, Error> {
    let json = URL_SAFE_NO_PAD.decode(part)?;
    Ok(serde_json::from_slice(&json)?)
}

impl Claims {
    /// The `nbf` claim, if any: the instant (seconds since the epoch) before
    /// which the token must not be accepted.
    pub(super) fn not_before(&self) -> Result<Option<i64>, IdentityError> {
        match &self.nbf {
            Claim::Absent => Ok(None),
            Claim::Read(NumericDate::Seconds(nbf)) => Ok(Some(*nbf)),
            Claim::Read(NumericDate::Other(_)) | Claim::Unreadable => Err(IdentityError::Invalid {
                reason: "the token's nbf claim is not a number of seconds".into(),
            }),
        }
    }

    /// The checks of `jsonwebtoken`'s `validate` that `validation` enables.
    fn check(&self, validation: &Validation) -> Result<(), Error> {
        for claim in &validation.required_spec_claims {
            let present = match claim.as_str() {
                // `exp` is read as an unsigned number there.
                "exp" => self.exp >= 0,
                "sub" => true,
                "iss" => matches!(self.iss, Claim::Read(_)),
                "aud" => matches!(self.aud, Claim::Read(_)),
                _ => continue,
            };
            if !present {
                return Err(ErrorKind::MissingRequiredClaim(claim.clone()).into());
            }
        }
        if let (Claim::Read(iss), Some(accepted)) = (&self.iss, &validation.iss)
            && !iss.names_any(accepted)
        {
            return Err(ErrorKind::InvalidIssuer.into());
        }
        if !validation.validate_aud {
            return Ok(());
        }
        match (&self.aud, &validation.aud) {
            (Claim::Read(_), None) => Err(ErrorKind::InvalidAudience.into()),
            (Claim::Read(aud), Some(accepted)) if !aud.names_any(accepted) => {
                Err(ErrorKind::InvalidAudience.into())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Algorithm, EncodingKey};

    use super::*;
    use crate::identity::JwtIdentity;

    const SECRET: &[u8] = b"a secret of the differential test";
    const ISSUER: &str = "https://securetoken.google.com/demo";
    const AUDIENCE: &str = "demo";

    /// What the extractor did before: `jsonwebtoken::decode`.
    fn decoded(token: &str, validation: &Validation) -> Result<(String, i64), String> {
        #[derive(Deserialize)]
        struct Claims {
            sub: String,
            exp: i64,
        }
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(SECRET), validation)
            .map(|data| (data.claims.sub, data.claims.exp))
            .map_err(|e| invalid(e).to_string())
    }

    fn verified(token: &str, validation: &Validation) -> Result<(String, i64), String> {
        let key = DecodingKey::from_secret(SECRET);
        verify(token, validation, |_| Ok(&key))
            .map(|claims| (claims.sub, claims.exp))
            .map_err(|e| e.to_string())
    }

    fn signed(header: &str, claims: &str, secret: &[u8]) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let key = EncodingKey::from_secret(secret);
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
            .expect("HS256 signs anything");
        format!("{message}.{signature}")
    }

    #[test]
    fn verify_agrees_with_jsonwebtoken_decode() {
        let exp = 4_000_000_000_i64;
        let claims = [
            format!(r#"{{"sub":"alice","exp":{exp}}}"#),
            format!(r#"{{"exp":{exp}}}"#),
            r#"{"sub":"alice"}"#.into(),
            format!(r#"{{"sub":5,"exp":{exp}}}"#),
            format!(r#"{{"sub":null,"exp":{exp}}}"#),
            r#"{"sub":"alice","exp":1.5e9}"#.into(),
            r#"{"sub":"alice","exp":-5}"#.into(),
            r#"{"sub":"alice","exp":"soon"}"#.into(),
            r#"{"sub":"alice","exp":null}"#.into(),
            r#"{"sub":"alice","exp":18446744073709551615}"#.into(),
            format!(r#"{{"sub":"al\u0069ce","exp":{exp}}}"#),
            format!(r#"{{"sub":"alice","sub":"bob","exp":{exp}}}"#),
            format!(r#"{{"sub":"alice","exp":{exp},"exp":{exp}}}"#),
            format!(r#"{{"sub":"alice","exp":{exp},"nbf":"later","foo":{{"bar":[1]}}}}"#),
            format!(r#"{{"sub":"alice","exp":{exp},"nbf":1,"nbf":2}}"#),
            "not json".into(),
            "[1,2]".into(),
        ]
        .into_iter()
        .chain(
            [
                format!("{ISSUER:?}"),
                r#""https://elsewhere""#.into(),
                format!(r#"["x",{ISSUER:?}]"#),
                r#"["x"]"#.into(),
                "[]".into(),
                "5".into(),
                "null".into(),
            ]
            .into_iter()
            .flat_map(|value| {
                [
                    format!(r#"{{"sub":"alice","exp":{exp},"iss":{value}}}"#),
                    format!(
                        r#"{{"sub":"alice","exp":{exp},"aud":{}}}"#,
                        value.replace(ISSUER, AUDIENCE)
                    ),
                    format!(r#"{{"sub":"alice","exp":{exp},"iss":{value},"iss":{value}}}"#),
                    format!(
                        r#"{{"sub":"alice","exp":{exp},"iss":{ISSUER:?},"aud":{}}}"#,
                        value.replace(ISSUER, AUDIENCE)
                    ),
                ]
            }),
        );
        let headers = [
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"alg":"HS256","kid":"k1","custom":[1,{"a":null}]}"#,
            r#"{"alg":"RS256"}"#,
            r#"{"alg":"HS384"}"#,
            r#"{"alg":"none"}"#,
            r#"{"typ":"JWT"}"#,
            r#"{"alg":"HS256","typ":5}"#,
            r#"{"alg":"HS256","jwk":"not a key"}"#,
            r#"{"alg":"HS256","alg":"HS256"}"#,
            "not json",
        ];
        let validations = [
            JwtIdentity::hs256(SECRET),
            JwtIdentity::hs256(SECRET).issuer(ISSUER),
            JwtIdentity::hs256(SECRET).audience(AUDIENCE),
            JwtIdentity::hs256(SECRET).issuer(ISSUER).audience(AUDIENCE),
        ];
        let mut tokens = Vec::new();
        for claims in claims {
            for header in headers {
                tokens.push(signed(header, &claims, SECRET));
            }
            tokens.push(signed(headers[0], &claims, b"another secret"));
        }
        let good = signed(
            headers[0],
            &format!(r#"{{"sub":"alice","exp":{exp}}}"#),
            SECRET,
        );
        let (message, signature) = good.rsplit_once('.').unwrap();
        tokens.extend([
            message.to_string(),
            format!("{message}.!!!"),
            format!("{good}.{signature}"),
            format!("%%.{}", good.split_once('.').unwrap().1),
            format!("{}.%%.{signature}", good.split_once('.').unwrap().0),
            String::new(),
            "..".into(),
        ]);

        let mut accepted = 0;
        for identity in &validations {
            for token in &tokens {
                let expected = decoded(token, identity.validation());
                assert_eq!(verified(token, identity.validation()), expected, "{token}");
                accepted += usize::from(expected.is_ok());
            }
        }
        assert!(accepted > 10, "the cases include tokens that verify");
    }
}
