//! The demo server with `--store redis`: two instances on one Redis share
//! one truth, a user at zero is refilled each period on Redis's clock, and
//! an unreachable Redis stops the server at start-up.
#![cfg(all(feature = "axum", feature = "jwt", feature = "redis"))]

#[path = "support/eventually.rs"]
mod eventually;
#[allow(dead_code)] // The cluster half of the harness is for other tests.
#[path = "support/redis_server.rs"]
mod redis_server;
#[allow(dead_code)] // Helpers for the other demo tests.
#[path = "demo/server.rs"]
mod server;

use eventually::eventually;
use http::{Method, StatusCode};
use redis_server::RedisServer;
use server::{Demo, demo_command};

const SECRET: &str = "one secret for both instances";

/// A demo instance on the Redis at `url`, with `more` flags.
fn demo_on(url: &str, more: &[&str]) -> Demo {
    let mut args = vec![
        "--store",
        "redis",
        "--redis-url",
        url,
        "--jwt-secret",
        SECRET,
    ];
    args.extend_from_slice(more);
    Demo::start(&args)
}

#[tokio::test]
async fn two_instances_on_one_redis_share_the_balances() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (a, b) = (demo_on(&url, &[]), demo_on(&url, &[]));
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

/// On Redis (where the charge runs as a function, deciding at Redis's
/// clock) a user who spent every upload ticket is refilled once the period
/// has passed, and again the period after: each call reads the clock anew.
/// (The charge function once kept its first call's instant, and no refill
/// ever came.) The test polls the balance; it waits about two periods.
#[tokio::test]
async fn a_user_at_zero_is_refilled_each_period() {
    let redis = RedisServer::start();
    let demo = demo_on(&redis.url(), &["--refill-period", "1s"]);
    let (_, token) = demo.sign_up().await;
    let upload = || {
        demo.call(Method::POST, "/api/uploads")
            .bearer(&token)
            .body(b"image")
            .send()
    };
    for period in 0..2 {
        // Spend until refused (a refill may land meanwhile on a slow run).
        let mut spent = 0;
        loop {
            let reply = upload().await;
            if reply.status == StatusCode::TOO_MANY_REQUESTS {
                break;
            }
            assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
            spent += 1;
            assert!(spent < 50, "period {period}: never refused");
        }
        eventually(&format!("refilled after period {period}"), || async {
            demo.remaining(&token).await.0 == 5
        })
        .await;
        assert_eq!(
            upload().await.status,
            StatusCode::CREATED,
            "period {period}"
        );
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
