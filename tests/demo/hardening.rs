//! What the demo does against abuse: sign-ups limited per address, a
//! deadline for request headers, its own tokens bound to it by `iss` and
//! `aud`, a warning for a guessable admin token.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Method, StatusCode};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server::Demo;

#[tokio::test]
async fn sign_ups_are_limited_per_client_address() {
    let demo = Demo::start(&[]);
    for _ in 0..10 {
        demo.sign_up().await;
    }
    let reply = demo.try_sign_up().await;
    let problem = reply.problem(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem["title"], "Too many sign-ups");
    let retry_after: u64 = reply.header("retry-after").parse().unwrap();
    assert!((1..=6).contains(&retry_after), "{retry_after}");
}

#[tokio::test]
async fn a_half_sent_request_loses_its_connection() {
    let demo = Demo::start(&["--header-read-timeout", "1s"]);
    let mut stream = TcpStream::connect(demo.address()).await.unwrap();
    // The request line and one header, then nothing.
    let head = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n", demo.address());
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer));
    // The end of the stream or a reset: either way the connection is gone.
    let _end = closed.await.expect("the server closed the connection");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(10), "closed after {waited:?}");
    // A whole request is still served.
    let reply = demo.call(Method::GET, "/healthz").send().await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// The claims of a token, unverified.
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn the_demo_issues_and_requires_its_own_iss_and_aud() {
    const SECRET: &str = "a secret shared with some other service";
    let demo = Demo::start(&["--jwt-secret", SECRET]);
    let (uid, token) = demo.sign_up().await;
    let claims = claims_of(&token);
    assert_eq!(claims["iss"], "tower-tickets-demo");
    assert_eq!(claims["aud"], "tower-tickets-demo");
    assert_eq!(demo.remaining(&token).await, (5, 3));

    // Another service's token, signed with the same secret, for the user.
    let exp = claims["exp"].as_i64().unwrap();
    // This process has not picked jsonwebtoken's crypto yet.
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let foreign = [
        json!({"sub": uid, "exp": exp}),
        json!({"sub": uid, "exp": exp, "iss": "tower-tickets-demo", "aud": "elsewhere"}),
        json!({"sub": uid, "exp": exp, "iss": "elsewhere", "aud": "tower-tickets-demo"}),
    ];
    for claims in foreign {
        let token = jsonwebtoken::encode(&Header::default(), &claims, &key).unwrap();
        let reply = demo
            .call(Method::GET, "/api/tickets")
            .bearer(&token)
            .send()
            .await;
        reply.problem(StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn a_short_admin_token_is_warned_about_at_start() {
    let short = Demo::start(&["--admin-token", "hunter2"]);
    let warning = "the admin token is 7 characters long";
    assert!(short.log().contains(warning), "{}", short.log());
    let long = Demo::start(&["--admin-token", "0f3c9a7e5b1d2c4e6a8b0d9f1e3c5a7b"]);
    assert!(!long.log().contains("the admin token is"), "{}", long.log());
}
