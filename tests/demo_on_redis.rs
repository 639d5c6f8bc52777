//! The demo server with `--store redis`: two instances on one Redis share
//! one truth, and an unreachable Redis stops the server at start-up.
#![cfg(all(feature = "axum", feature = "jwt", feature = "redis"))]

#[allow(dead_code)] // The cluster half of the harness is for other tests.
#[path = "support/redis_server.rs"]
mod redis_server;
#[allow(dead_code)] // Helpers for the other demo tests.
#[path = "demo/server.rs"]
mod server;

use http::{Method, StatusCode};
use redis_server::RedisServer;
use server::{Demo, demo_command};

const SECRET: &str = "one secret for both instances";

#[tokio::test]
async fn two_instances_on_one_redis_share_the_balances() {
    let redis = RedisServer::start();
    let url = redis.url();
    let args = [
        "--store",
        "redis",
        "--redis-url",
        &url,
        "--jwt-secret",
        SECRET,
    ];
    let (a, b) = (Demo::start(&args), Demo::start(&args));
    let (_, token) = a.sign_up().await;
    assert_eq!(b.remaining(&token).await, (5, 3), "B sees A's new user");

    for (n, demo) in [&a, &b, &a, &b, &a].into_iter().enumerate() {
        let reply = demo
            .call(Method::POST, "/api/uploads")
            .bearer(&token)
            .body(b"image")
            .send()
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "upload {n}: {}",
            reply.text()
        );
    }
    for demo in [&a, &b] {
        let refused = demo
            .call(Method::POST, "/api/uploads")
            .bearer(&token)
            .body(b"image")
            .send()
            .await;
        refused.problem(StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(demo.remaining(&token).await, (0, 3));
    }
}

#[test]
fn an_unreachable_redis_stops_the_server_at_start_up() {
    // Nothing listens on port 1.
    let output = demo_command()
        .args([
            "--bind",
            "127.0.0.1:0",
            "--store",
            "redis",
            "--redis-url",
            "redis://127.0.0.1:1",
        ])
        .output()
        .expect("run the demo");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("--store redis --redis-url redis://127.0.0.1:1"),
        "{stderr}"
    );
}
