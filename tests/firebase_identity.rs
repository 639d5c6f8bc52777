//! `FirebaseIdentity` in production mode, against a key server the tests
//! start on 127.0.0.1: both key forms, a cold start (503, then 200), a key
//! rotation fetched once, the key server down (the last keys kept),
//! `max-age` honoured; and every token Firebase would refuse is a 401 that
//! charges nothing.
#![cfg(all(feature = "firebase", feature = "axum"))]

mod app;
#[allow(dead_code)] // This binary uses part of the support code.
mod support {
    pub mod eventually;
    pub mod key_server;
}

use std::time::Duration;

use app::App;
use axum::body::Body;
use axum::http::StatusCode;
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Value, json};
use support::eventually::eventually;
use support::key_server::{KeyServer, TestKey, emulator_token, id_token_claims};
use tower_tickets::UidPolicy;
use tower_tickets::identity::{FirebaseIdentity, FirebaseIdentityBuilder};

const PROJECT: &str = "tickets-test";

/// The app with a Firebase identity of [`PROJECT`] reading keys from
/// `server`, configured by `configure`.
fn app_with(
    server: &KeyServer,
    configure: impl FnOnce(FirebaseIdentityBuilder) -> FirebaseIdentityBuilder,
) -> App {
    let builder = FirebaseIdentity::builder(PROJECT).keys_url(server.url());
    App::with_identity(configure(builder).build().unwrap())
}

fn claims(app: &App, sub: &str) -> Value {
    id_token_claims(PROJECT, sub, app.tickets.now().timestamp())
}

/// `GET /tickets` (identifies, charges nothing) with `token`.
async fn balances(app: &App, token: &str) -> app::Reply {
    let request = app.request("GET", "/tickets", Some(token));
    app.send(request.body(Body::empty()).unwrap()).await
}

/// Waits until `token` is accepted.
async fn accepted(app: &App, token: &str) {
    eventually("the token is accepted", || async {
        balances(app, token).await.status == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn a_cold_start_is_503_with_retry_after_then_200_once_the_keys_arrive() {
    let server = KeyServer::start().await;
    let app = app_with(&server, |b| b);
    let token = TestKey::A.sign("k1", &claims(&app, "alice"));
    // The server fails: no key yet, and the request does not wait for one.
    eventually("a first fetch failed", || async { server.hits() >= 1 }).await;
    let reply = balances(&app, &token).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.json
    );
    assert_eq!(reply.header("retry-after"), "1");
    assert_eq!(reply.header("content-type"), "application/problem+json");
    assert_eq!(reply.json["title"], "Sign-in temporarily unavailable");
    assert_eq!(app.store.calls(), 0, "no store was touched");

    server.serve_certificates(&[("k1", TestKey::A)], 3600);
    accepted(&app, &token).await;
    let upload = app.request("POST", "/upload", Some(&token));
    let reply = app.send(upload.body(Body::empty()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::CREATED);
}

#[tokio::test]
async fn keys_verify_in_both_of_googles_forms() {
    for jwks in [false, true] {
        let server = KeyServer::start().await;
        let keys = [("k1", TestKey::A), ("k2", TestKey::B)];
        if jwks {
            server.serve_jwks(&keys, 3600);
        } else {
            server.serve_certificates(&keys, 3600);
        }
        let app = app_with(&server, |b| b);
        accepted(&app, &TestKey::A.sign("k1", &claims(&app, "alice"))).await;
        accepted(&app, &TestKey::B.sign("k2", &claims(&app, "bob"))).await;
        // A key under another key's id does not verify.
        let swapped = TestKey::B.sign("k1", &claims(&app, "carol"));
        let reply = balances(&app, &swapped).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "jwks: {jwks}");
        assert_eq!(server.hits(), 1, "jwks: {jwks}");
    }
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_then_unknown_keys_are_401_for_a_while() {
    let server = KeyServer::start().await;
    server.serve_certificates(&[("k1", TestKey::A)], 3600);
    let app = app_with(&server, |b| b);
    accepted(&app, &TestKey::A.sign("k1", &claims(&app, "alice"))).await;
    assert_eq!(server.hits(), 1);

    // Google rotates: k2 appears, k1 goes.
    server.serve_certificates(&[("k2", TestKey::B)], 3600);
    let rotated = TestKey::B.sign("k2", &claims(&app, "bob"));
    let first = balances(&app, &rotated).await;
    assert_eq!(
        first.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        first.json
    );
    accepted(&app, &rotated).await;
    assert_eq!(server.hits(), 2, "one refetch for the new key");

    // A key Google does not publish: the refetch just made did not bring
    // it, so it is refused at once, and asks for no fetch.
    for i in 0..20 {
        let forged = TestKey::A.sign("k9", &claims(&app, &format!("mallory{i}")));
        let reply = balances(&app, &forged).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.json);
    }
    assert_eq!(server.hits(), 2);
    // Once the interval has passed, an unknown key asks again, once.
    app.clock.advance(Duration::from_secs(5));
    let forged = TestKey::A.sign("k9", &claims(&app, "mallory"));
    assert_eq!(
        balances(&app, &forged).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    eventually("the refetch", || async { server.hits() == 3 }).await;
    eventually("the unknown key is refused", || async {
        balances(&app, &forged).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn max_age_is_honoured_and_the_last_keys_are_kept_while_the_server_is_down() {
    let server = KeyServer::start().await;
    server.serve_jwks(&[("k1", TestKey::A)], 1);
    let app = app_with(&server, |b| b);
    accepted(&app, &TestKey::A.sign("k1", &claims(&app, "alice"))).await;
    // max-age=1: the keys are fetched again without any request asking.
    eventually("a refresh after max-age", || async { server.hits() >= 3 }).await;

    server.fail();
    let failing_from = server.hits();
    eventually("a failed refresh", || async {
        server.hits() > failing_from
    })
    .await;
    server.stop();
    // Tokens not met before still verify with the keys last fetched.
    for sub in ["bob", "carol"] {
        let reply = balances(&app, &TestKey::A.sign("k1", &claims(&app, sub))).await;
        assert_eq!(reply.status, StatusCode::OK, "{sub}: {}", reply.json);
    }
}

/// Sends `token` to a priced route; asserts a 401 problem that charged
/// nothing and names `why`.
async fn assert_refused(app: &App, token: &str, why: &str) {
    let (calls, handled) = (app.store.calls(), app.handled());
    let upload = app.request("POST", "/upload", Some(token));
    let reply = app.send(upload.body(Body::empty()).unwrap()).await;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "{why}: {}",
        reply.json
    );
    let detail = reply.json["detail"].as_str().unwrap();
    assert!(detail.contains(why), "{why}: {detail}");
    assert_eq!(app.store.calls(), calls, "{why}: no store was touched");
    assert_eq!(app.handled(), handled, "{why}: the handler never ran");
}

#[tokio::test]
async fn tokens_firebase_would_refuse_are_401s_that_charge_nothing() {
    let server = KeyServer::start().await;
    server.serve_certificates(&[("k1", TestKey::A)], 3600);
    let app = app_with(&server, |b| b);
    accepted(&app, &TestKey::A.sign("k1", &claims(&app, "alice"))).await;
    let now = app.tickets.now().timestamp();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = claims(&app, "bob");
        change(&mut claims);
        TestKey::A.sign("k1", &claims)
    };
    let cases: Vec<(String, &str)> = vec![
        (
            with(&|c| c["aud"] = json!("another-project")),
            "another audience",
        ),
        (
            with(&|c| {
                c["iss"] = json!("https://securetoken.google.com/another-project");
                c["aud"] = json!("another-project");
            }),
            "another",
        ),
        (
            with(&|c| c["iss"] = json!("https://accounts.google.com")),
            "another issuer",
        ),
        (with(&|c| c["exp"] = json!(now - 3600)), "expired"),
        (
            with(&|c| c["iat"] = json!(now + 600)),
            "issued in the future",
        ),
        (
            with(&|c| c["auth_time"] = json!(now + 600)),
            "signed in in the future",
        ),
        (
            with(&|c| {
                c.as_object_mut().unwrap().remove("auth_time");
            }),
            "auth_time",
        ),
        (with(&|c| c["sub"] = json!("")), "user id"),
        (with(&|c| c["sub"] = json!("../users/admin")), "user id"),
        (with(&|c| c["sub"] = json!("a".repeat(129))), "user id"),
        (
            TestKey::B.sign("k1", &claims(&app, "bob")),
            "signature does not verify",
        ),
        (
            TestKey::A.sign_with(Header::new(Algorithm::RS256), &claims(&app, "bob")),
            "names no signing key",
        ),
        (
            {
                let mut header = Header::new(Algorithm::RS256);
                header.kid = Some("k1".into());
                header.crit = Some(vec!["exp".into()]);
                TestKey::A.sign_with(header, &claims(&app, "bob"))
            },
            "critical extensions",
        ),
        (
            with(&|c| c["pad"] = json!("x".repeat(9 * 1024))),
            "at most 8192",
        ),
        (emulator_token(&claims(&app, "bob")), "not signed"),
    ];
    for (token, why) in &cases {
        assert_refused(&app, token, why).await;
    }
}

#[tokio::test]
async fn the_options_against_farming_refuse_what_they_say() {
    let server = KeyServer::start().await;
    server.serve_certificates(&[("k1", TestKey::A)], 3600);
    let signed = |app: &App, change: &dyn Fn(&mut Value)| {
        let mut claims = claims(app, "bob");
        change(&mut claims);
        TestKey::A.sign("k1", &claims)
    };
    let anonymous = |c: &mut Value| c["firebase"]["sign_in_provider"] = json!("anonymous");
    let unverified = |c: &mut Value| c["email_verified"] = json!(false);
    let by_phone = |c: &mut Value| c["firebase"]["sign_in_provider"] = json!("phone");

    // Without options, all three are users.
    let open = app_with(&server, |b| b);
    for change in [&anonymous as &dyn Fn(&mut Value), &unverified, &by_phone] {
        accepted(&open, &signed(&open, change)).await;
    }

    let strict = app_with(&server, |b| {
        b.refuse_anonymous()
            .require_email_verified()
            .allow_providers(["password", "google.com", "anonymous"])
    });
    accepted(&strict, &signed(&strict, &|_| {})).await;
    assert_refused(&strict, &signed(&strict, &anonymous), "anonymous sign-ins").await;
    assert_refused(&strict, &signed(&strict, &unverified), "not verified").await;
    assert_refused(
        &strict,
        &signed(&strict, &by_phone),
        "phone are not accepted",
    )
    .await;
}

#[tokio::test]
async fn custom_token_uids_pass_with_the_firebase_uid_policy() {
    let server = KeyServer::start().await;
    server.serve_certificates(&[("k1", TestKey::A)], 3600);
    let strict = app_with(&server, |b| b);
    let token = TestKey::A.sign("k1", &claims(&strict, "auth0|123"));
    accepted(&strict, &TestKey::A.sign("k1", &claims(&strict, "alice"))).await;
    assert_refused(&strict, &token, "user id").await;

    let wide = app_with(&server, |b| b.uid_policy(UidPolicy::Firebase));
    accepted(&wide, &token).await;
    let upload = wide.request("POST", "/upload", Some(&token));
    let reply = wide.send(upload.body(Body::empty()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.json, json!([4]), "charged to auth0|123");
}
