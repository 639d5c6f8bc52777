//! The demo with `--firebase-auth <project>` (DESIGN.md §8): the priced and
//! balance routes take Firebase ID tokens of that project, signed by keys
//! from a key server this test starts; `/api/signup` says to sign up with
//! Firebase Auth; the Auth emulator's unsigned tokens pass only with
//! `FIREBASE_AUTH_EMULATOR_HOST` set.
#![cfg(all(feature = "axum", feature = "firebase"))]

#[allow(dead_code)] // This binary uses part of the support code.
mod support {
    pub mod eventually;
    pub mod key_server;
}
#[allow(dead_code)] // Helpers for the other demo tests.
mod demo {
    pub mod server;
}

use demo::server::Demo;
use http::{Method, StatusCode};
use support::eventually::eventually;
use support::key_server::{KeyServer, TestKey, emulator_token, id_token_claims};

const PROJECT: &str = "demo-tickets";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test(flavor = "multi_thread")]
async fn firebase_users_spend_their_tickets_and_sign_up_elsewhere() {
    let keys = KeyServer::start().await;
    keys.serve_certificates(&[("k1", TestKey::A)], 3600);
    let demo = Demo::start(&[
        "--firebase-auth",
        PROJECT,
        "--firebase-keys-url",
        keys.url(),
    ]);
    let signup = demo.try_sign_up().await;
    let problem = signup.problem(StatusCode::NOT_FOUND);
    assert_eq!(problem["title"], "Sign up with Firebase Auth");

    let token = TestKey::A.sign("k1", &id_token_claims(PROJECT, "fbUser1", now()));
    eventually("the keys are fetched", || async {
        demo.try_remaining(&token).await == Ok((5, 3))
    })
    .await;
    let upload = demo
        .call(Method::POST, "/api/uploads")
        .bearer(&token)
        .header("content-type", "image/png")
        .body(b"\x89PNG not really")
        .send()
        .await;
    assert_eq!(upload.status, StatusCode::CREATED, "{}", upload.text());
    assert_eq!(demo.remaining(&token).await, (4, 3));

    for refused in [
        TestKey::A.sign("k1", &id_token_claims("another-project", "fbUser1", now())),
        emulator_token(&id_token_claims(PROJECT, "fbUser1", now())),
    ] {
        let reply = demo
            .call(Method::GET, "/api/tickets")
            .bearer(&refused)
            .send()
            .await;
        reply.problem(StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_auth_emulators_tokens_pass_only_with_its_variable_set() {
    let demo = Demo::start_with_env(
        &["--firebase-auth", PROJECT],
        &[("FIREBASE_AUTH_EMULATOR_HOST", "127.0.0.1:9099")],
    );
    assert!(
        demo.log()
            .contains("the Firebase Auth emulator's unsigned tokens are accepted"),
        "{}",
        demo.log()
    );
    let token = emulator_token(&id_token_claims(PROJECT, "emulated1", now()));
    assert_eq!(demo.remaining(&token).await, (5, 3));
}
