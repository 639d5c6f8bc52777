//! Google's published signing keys, read from either of the forms Google
//! serves them in: a JSON object of X.509 certificates in PEM by key id
//! (the securetoken `x509` document), or a JWK Set (`{"keys": [...]}`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use serde_json::Value;

/// Signing keys by key id (`kid`).
pub(super) type Keys = HashMap<String, Arc<DecodingKey>>;

/// The most keys a document may hold (Google publishes two or three).
const MAX_KEYS: usize = 32;

/// Reads the keys of a key document, in either form. A key that cannot be
/// read is skipped (logged): the others still verify tokens. A document
/// with no readable key is an error.
pub(super) fn parse_keys(body: &[u8]) -> Result<Keys, String> {
    let document: Value =
        serde_json::from_slice(body).map_err(|e| format!("the key document is not JSON: {e}"))?;
    let keys = if document.get("keys").is_some() {
        jwks(document)?
    } else {
        certificates(document)?
    };
    if keys.is_empty() {
        return Err("the key document holds no RSA key that can be read".into());
    }
    if keys.len() > MAX_KEYS {
        return Err(format!(
            "the key document holds {} keys; at most {MAX_KEYS} are read",
            keys.len()
        ));
    }
    Ok(keys)
}

/// `{"<kid>": "-----BEGIN CERTIFICATE-----...", ...}`.
fn certificates(document: Value) -> Result<Keys, String> {
    let Value::Object(by_kid) = document else {
        return Err("the key document is neither a JWK Set nor an object of certificates".into());
    };
    let mut keys = Keys::new();
    for (kid, pem) in by_kid {
        let key = pem
            .as_str()
            .ok_or_else(|| "not a string".to_string())
            .and_then(|pem| DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| e.to_string()));
        match key {
            Ok(key) => {
                keys.insert(kid, Arc::new(key));
            }
            Err(e) => tracing::warn!(kid, "skipping a signing key that cannot be read: {e}"),
        }
    }
    Ok(keys)
}

/// `{"keys": [{"kid": ..., "kty": "RSA", "n": ..., "e": ...}, ...]}`.
fn jwks(document: Value) -> Result<Keys, String> {
    let set: JwkSet =
        serde_json::from_value(document).map_err(|e| format!("not a JWK Set: {e}"))?;
    let mut keys = Keys::new();
    for jwk in &set.keys {
        let Some(kid) = &jwk.common.key_id else {
            tracing::warn!("skipping a signing key without a key id (kid)");
            continue;
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid.clone(), Arc::new(key));
            }
            Err(e) => tracing::warn!(kid, "skipping a signing key that cannot be read: {e}"),
        }
    }
    Ok(keys)
}

/// The `max-age` of a `Cache-Control` header value, if it has one
/// (`public, max-age=19137, must-revalidate`).
pub(super) fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        let seconds = value.trim().trim_matches('"').parse().ok()?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| Duration::from_secs(seconds))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_among_other_directives() {
        assert_eq!(
            max_age("public, max-age=19137, must-revalidate, no-transform"),
            Some(Duration::from_secs(19137))
        );
        assert_eq!(max_age("Max-Age=\"5\""), Some(Duration::from_secs(5)));
        assert_eq!(max_age("no-cache"), None);
        assert_eq!(max_age("max-age=soon"), None);
        assert_eq!(max_age("s-maxage=5"), None);
    }

    #[test]
    fn documents_without_a_readable_key_are_refused() {
        for (body, why) in [
            (&b"not json"[..], "not JSON"),
            (b"[1]", "neither a JWK Set"),
            (b"{}", "no RSA key"),
            (br#"{"k1": "not a certificate"}"#, "no RSA key"),
            (br#"{"keys": []}"#, "no RSA key"),
            (br#"{"keys": 5}"#, "not a JWK Set"),
        ] {
            let error = parse_keys(body).unwrap_err();
            assert!(error.contains(why), "{error}");
        }
    }
}
