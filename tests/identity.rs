//! Every way a request can fail to identify its user is a 401 that touches no
//! store; the built-in JWT extractor checks signature, expiry, issuer and
//! audience.
#![cfg(all(feature = "axum", feature = "jwt"))]

mod app;

use std::time::Duration;

use app::App;
use axum::body::Body;
use axum::http::StatusCode;
use http::request::Parts;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tower_tickets::identity::{IdentityError, IdentityExtractor, JwtIdentity};
use tower_tickets::{Tickets, Uid, UidPolicy};

fn hs256(claims: serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn rs256(claims: serde_json::Value, private_pem: &[u8], kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(private_pem).unwrap(),
    )
    .unwrap()
}

fn exp_in(app: &App, secs: i64) -> i64 {
    app.tickets.now().timestamp() + secs
}

async fn assert_unauthorized(app: &App, authorization: Option<&str>) -> serde_json::Value {
    let mut request = app.request("POST", "/upload", None);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let reply = app.send(request.body(Body::empty()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.json);
    assert_eq!(reply.header("content-type"), "application/problem+json");
    assert_eq!(reply.header("www-authenticate"), "Bearer");
    assert_eq!(reply.json["status"], 401);
    assert_eq!(app.store.calls(), 0, "no store was touched");
    assert_eq!(app.handled(), 0, "the handler never ran");
    reply.json
}

#[tokio::test]
async fn no_token_is_a_401_that_charges_nothing() {
    let app = App::new();
    let body = assert_unauthorized(&app, None).await;
    assert_eq!(body["title"], "Sign-in required");
    assert_eq!(
        body["detail"],
        "Sign in to continue (no credentials were sent)."
    );
}

#[tokio::test]
async fn a_malformed_authorization_header_is_a_401() {
    let app = App::new();
    for value in [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer ",
        "Bearer not.a.jwt",
        "Bearer .....",
    ] {
        assert_unauthorized(&app, Some(value)).await;
    }
}

#[tokio::test]
async fn a_bad_signature_is_a_401_that_charges_nothing() {
    let app = App::new();
    let forged = hs256(
        json!({"sub": "alice", "exp": exp_in(&app, 3600)}),
        b"another secret",
    );
    let body = assert_unauthorized(&app, Some(&format!("Bearer {forged}"))).await;
    assert!(
        body["detail"].as_str().unwrap().contains("signature"),
        "{body}"
    );
}

#[tokio::test]
async fn an_expired_token_is_a_401_by_the_injected_clock() {
    let app = App::new();
    let token = app.token("alice"); // valid for 30 days from the fake now
    app.clock.advance(Duration::from_secs(31 * 24 * 3600));
    let body = assert_unauthorized(&app, Some(&format!("Bearer {token}"))).await;
    assert!(
        body["detail"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    let stale = hs256(
        json!({"sub": "alice", "exp": exp_in(&app, -60)}),
        app::SECRET,
    );
    assert_unauthorized(&app, Some(&format!("Bearer {stale}"))).await;
}

#[tokio::test]
async fn a_token_without_exp_or_sub_is_a_401() {
    let app = App::new();
    let no_exp = hs256(json!({"sub": "alice"}), app::SECRET);
    assert_unauthorized(&app, Some(&format!("Bearer {no_exp}"))).await;
    let no_sub = hs256(json!({"exp": exp_in(&app, 3600)}), app::SECRET);
    assert_unauthorized(&app, Some(&format!("Bearer {no_sub}"))).await;
}

#[tokio::test]
async fn a_hostile_uid_in_a_valid_token_is_a_401_that_touches_no_store() {
    let app = App::new();
    let long = "a".repeat(129);
    for sub in [
        "",
        "a}b",
        "{alice}",
        "../users/admin",
        "a/b",
        "__name__",
        "a b",
        "é",
        &long,
    ] {
        let token = hs256(json!({"sub": sub, "exp": exp_in(&app, 3600)}), app::SECRET);
        let body = assert_unauthorized(&app, Some(&format!("Bearer {token}"))).await;
        assert!(
            body["detail"].as_str().unwrap().contains("user id"),
            "{sub:?}: {body}"
        );
    }
}

#[tokio::test]
async fn a_401_speaks_french_when_asked() {
    let app = App::new();
    let reply = app
        .send(
            app.request("POST", "/upload", None)
                .header("accept-language", "fr")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json["title"], "Identification requise");
}

#[tokio::test]
async fn reading_balances_needs_an_identity_too() {
    let app = App::new();
    let reply = app
        .send(
            app.request("GET", "/tickets", None)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.store.calls(), 0);
}

fn parts(authorization: &str) -> Parts {
    let (parts, ()) = http::Request::builder()
        .header("authorization", authorization)
        .body(())
        .unwrap()
        .into_parts();
    parts
}

fn now() -> chrono::DateTime<chrono::Utc> {
    "2026-06-01T10:00:00Z".parse().unwrap()
}

/// A token of alice's, signed with `secret`, valid for a minute from now().
fn alice_for_a_minute() -> String {
    hs256(
        json!({"sub": "alice", "exp": now().timestamp() + 60}),
        b"secret",
    )
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let verify = JwtIdentity::hs256(b"secret")
        .issuer("https://securetoken.google.com/demo")
        .audience("demo");
    let exp = now().timestamp() + 3600;
    let token = |claims: serde_json::Value| parts(&format!("Bearer {}", hs256(claims, b"secret")));
    let good = token(json!({
        "sub": "alice", "exp": exp,
        "iss": "https://securetoken.google.com/demo", "aud": "demo",
    }));
    assert_eq!(
        verify.identify(&good, now()),
        Ok(Uid::parse("alice").unwrap())
    );
    let wrong_iss =
        token(json!({"sub": "alice", "exp": exp, "iss": "https://evil", "aud": "demo"}));
    let wrong_aud = token(json!({
        "sub": "alice", "exp": exp,
        "iss": "https://securetoken.google.com/demo", "aud": "other",
    }));
    let missing = token(json!({"sub": "alice", "exp": exp}));
    for bad in [wrong_iss, wrong_aud, missing] {
        assert!(matches!(
            verify.identify(&bad, now()),
            Err(IdentityError::Invalid { .. })
        ));
    }
}

#[test]
fn rs256_tokens_verify_with_the_public_key_picked_by_kid() {
    let private = include_bytes!("fixtures/rs256-private.pem");
    let other = include_bytes!("fixtures/rs256-other-private.pem");
    let public = include_str!("fixtures/rs256-public.pem");
    let verify = JwtIdentity::firebase("demo", [("key-1", public)]).unwrap();
    let claims = json!({
        "sub": "alice", "exp": now().timestamp() + 60,
        "iss": "https://securetoken.google.com/demo", "aud": "demo",
    });
    let signed = parts(&format!(
        "Bearer {}",
        rs256(claims.clone(), private, Some("key-1"))
    ));
    assert_eq!(verify.identify(&signed, now()).unwrap().as_str(), "alice");
    let unnamed = parts(&format!("Bearer {}", rs256(claims.clone(), private, None)));
    assert!(
        verify.identify(&unnamed, now()).is_ok(),
        "one key: kid optional"
    );
    let unknown_kid = parts(&format!(
        "Bearer {}",
        rs256(claims.clone(), private, Some("key-9"))
    ));
    assert!(verify.identify(&unknown_kid, now()).is_err());
    let forged = parts(&format!(
        "Bearer {}",
        rs256(claims.clone(), other, Some("key-1"))
    ));
    assert!(verify.identify(&forged, now()).is_err());
    // An HS256 token must not pass as RS256 (algorithm confusion).
    let hs = parts(&format!("Bearer {}", hs256(claims, public.as_bytes())));
    assert!(verify.identify(&hs, now()).is_err());
    assert!(JwtIdentity::rs256("https://issuer", "app", [("bad", "not a pem")]).is_err());
}

/// Google signs every Firebase project's tokens with the same keys, so an
/// RS256 token is only accepted for the configured issuer and audience:
/// a user of another project, even with the victim's uid, is refused.
#[test]
fn rs256_tokens_of_another_project_are_refused() {
    let private = include_bytes!("fixtures/rs256-private.pem");
    let public = include_str!("fixtures/rs256-public.pem");
    let verify = JwtIdentity::firebase("victim-app", [("key-1", public)]).unwrap();
    let exp = now().timestamp() + 60;
    let token = |claims: serde_json::Value| {
        parts(&format!("Bearer {}", rs256(claims, private, Some("key-1"))))
    };
    let own = token(json!({
        "sub": "alice", "exp": exp,
        "iss": "https://securetoken.google.com/victim-app", "aud": "victim-app",
    }));
    assert!(verify.identify(&own, now()).is_ok());
    for claims in [
        json!({
            "sub": "alice", "exp": exp,
            "iss": "https://securetoken.google.com/attacker-app", "aud": "attacker-app",
        }),
        json!({
            "sub": "alice", "exp": exp,
            "iss": "https://securetoken.google.com/victim-app", "aud": "attacker-app",
        }),
        json!({"sub": "alice", "exp": exp}),
    ] {
        assert!(
            matches!(
                verify.identify(&token(claims.clone()), now()),
                Err(IdentityError::Invalid { .. })
            ),
            "{claims}"
        );
    }
}

/// A proxy that appends its header instead of replacing the client's would
/// leave the client's value first: a repeated header is refused.
#[test]
fn a_repeated_identity_header_is_refused() {
    use tower_tickets::identity::HeaderIdentity;
    let token = alice_for_a_minute();
    let (twice, ()) = http::Request::builder()
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", format!("Bearer {token}"))
        .header("x-user-id", "mallory")
        .header("x-user-id", "alice")
        .body(())
        .unwrap()
        .into_parts();
    for identity in [
        &JwtIdentity::hs256(b"secret") as &dyn IdentityExtractor,
        &HeaderIdentity::new(http::HeaderName::from_static("x-user-id")),
    ] {
        let error = identity.identify(&twice, now()).unwrap_err();
        assert!(error.to_string().contains("repeats the"), "{error}");
    }
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let verify = JwtIdentity::hs256(b"secret");
    let token = alice_for_a_minute();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        assert!(
            verify
                .identify(&parts(&format!("{scheme} {token}")), now())
                .is_ok(),
            "{scheme}"
        );
    }
    assert!(
        verify
            .identify(&parts(&format!("Basic {token}")), now())
            .is_err()
    );
}

#[test]
fn a_token_is_refused_before_its_nbf_and_past_its_exp_whatever_the_leeway() {
    let verify = JwtIdentity::hs256(b"secret").leeway(Duration::from_secs(30));
    let at = now().timestamp();
    let token = |claims: serde_json::Value| parts(&format!("Bearer {}", hs256(claims, b"secret")));
    let valid_from =
        |nbf: serde_json::Value| token(json!({"sub": "alice", "exp": at + 3600, "nbf": nbf}));
    assert!(verify.identify(&valid_from(json!(at - 60)), now()).is_ok());
    assert!(
        verify.identify(&valid_from(json!(at + 20)), now()).is_ok(),
        "within the leeway"
    );
    for refused in [json!(at + 3600), json!("soon"), json!(1.5)] {
        let error = verify
            .identify(&valid_from(refused.clone()), now())
            .unwrap_err();
        assert!(error.to_string().contains("nbf"), "{refused}: {error}");
    }
    // A not-yet-valid token is not remembered as valid: it counts once due.
    let early = valid_from(json!(at + 3600));
    assert!(verify.identify(&early, now()).is_err());
    let due = now() + chrono::TimeDelta::seconds(3600);
    assert!(verify.identify(&early, due).is_ok());
    // The leeway is capped at 5 minutes: a day-old token stays expired.
    let lenient = JwtIdentity::hs256(b"secret").leeway(Duration::MAX);
    let day_old = token(json!({"sub": "alice", "exp": at - 86_400}));
    assert!(lenient.identify(&day_old, now()).is_err());
    let minute_old = token(json!({"sub": "alice", "exp": at - 60}));
    assert!(lenient.identify(&minute_old, now()).is_ok());
}

#[test]
fn the_header_identity_validates_the_uid() {
    use tower_tickets::identity::HeaderIdentity;
    let identity = HeaderIdentity::new(http::HeaderName::from_static("x-user-id"));
    let request = |value: &str| {
        http::Request::builder()
            .header("x-user-id", value)
            .body(())
            .unwrap()
            .into_parts()
            .0
    };
    assert_eq!(
        identity.identify(&request("bob"), now()).unwrap().as_str(),
        "bob"
    );
    assert!(matches!(
        identity.identify(&request("a}b"), now()),
        Err(IdentityError::InvalidUid(_))
    ));
}

#[test]
fn the_extension_identity_fails_closed_without_an_auth_layer() {
    use tower_tickets::identity::ExtensionIdentity;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    assert!(matches!(
        ExtensionIdentity.identify(&parts, now()),
        Err(IdentityError::Missing { .. })
    ));
    parts.extensions.insert(Uid::parse("carol").unwrap());
    assert_eq!(
        ExtensionIdentity.identify(&parts, now()).unwrap().as_str(),
        "carol"
    );
    let _ = Tickets::builder(); // The extension identity is the registry's default.
}

#[test]
fn a_remembered_token_still_expires_and_only_its_exact_text_is_remembered() {
    let verify = JwtIdentity::hs256(b"secret");
    let token = alice_for_a_minute();
    let bearer = |token: &str| parts(&format!("Bearer {token}"));
    assert!(verify.identify(&bearer(&token), now()).is_ok());
    // The same text again is answered from memory, and expiry still counts.
    assert!(verify.identify(&bearer(&token), now()).is_ok());
    let later = now() + chrono::TimeDelta::seconds(3600);
    assert!(matches!(
        verify.identify(&bearer(&token), later),
        Err(IdentityError::Invalid { .. })
    ));
    // A tampered signature is another text: verified, and refused.
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert!(verify.identify(&bearer(&forged), now()).is_err());
}

#[test]
fn a_stricter_copy_forgets_what_the_looser_one_verified() {
    let loose = JwtIdentity::hs256(b"secret");
    let token = parts(&format!("Bearer {}", alice_for_a_minute()));
    assert!(loose.identify(&token, now()).is_ok());
    let strict = loose.clone().issuer("https://issuer");
    assert!(strict.identify(&token, now()).is_err(), "no iss claim");
    let forgetful = JwtIdentity::hs256(b"secret").remember(0);
    assert!(forgetful.identify(&token, now()).is_ok());
}

#[test]
fn oversized_tokens_and_crit_headers_are_refused_before_decoding() {
    let verify = JwtIdentity::hs256(b"secret");
    let exp = now().timestamp() + 60;
    let padded = hs256(
        json!({"sub": "alice", "exp": exp, "pad": "x".repeat(9 * 1024)}),
        b"secret",
    );
    let error = verify.identify(&parts(&format!("Bearer {padded}")), now());
    let error = error.unwrap_err().to_string();
    assert!(error.contains("at most 8192 are accepted"), "{error}");

    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["exp".into()]);
    let critical = jsonwebtoken::encode(
        &header,
        &json!({"sub": "alice", "exp": exp}),
        &EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    let error = verify.identify(&parts(&format!("Bearer {critical}")), now());
    let error = error.unwrap_err().to_string();
    assert!(error.contains("critical extensions (crit)"), "{error}");
    // The same claims without `crit` verify: the header alone refused it.
    let plain = format!("Bearer {}", alice_for_a_minute());
    assert!(verify.identify(&parts(&plain), now()).is_ok());
}

#[test]
fn custom_token_uids_need_the_wider_uid_policy() {
    let exp = now().timestamp() + 60;
    let token = hs256(json!({"sub": "auth0|123", "exp": exp}), b"secret");
    let request = parts(&format!("Bearer {token}"));
    let strict = JwtIdentity::hs256(b"secret");
    assert!(matches!(
        strict.identify(&request, now()),
        Err(IdentityError::InvalidUid(_))
    ));
    let wide = JwtIdentity::hs256(b"secret").uid_policy(UidPolicy::Firebase);
    let uid = wide.identify(&request, now()).unwrap();
    assert_eq!(uid.as_str(), "auth0|123");
    assert_eq!(uid.encoded(), "auth0%7C123");
}
