//! The demo server's HTTP contract (DESIGN.md §8), tested black-box against
//! the built `demo` example (see `server.rs` for how it is started).
//!
//! Refill timing is left to the library's tests, which drive a `FakeClock`:
//! a child process runs on the wall clock.
#![cfg(all(feature = "axum", feature = "jwt"))]

mod hardening;
#[allow(dead_code)] // Helpers for the full-stack demo tests too.
mod server;

use http::{Method, StatusCode};
use server::{ADMIN_TOKEN, Demo, demo_command};
use tower_tickets::{IDEMPOTENCY_KEY_REUSED_TYPE, QUOTA_EXCEEDED_TYPE};

const IMAGE: &[u8] = b"\x89PNG\r\n\x1a\n not really an image";

#[tokio::test]
async fn sign_up_gives_5_upload_and_3_ai_tickets() {
    let demo = Demo::start(&[]);
    let (uid, token) = demo.sign_up().await;
    assert_eq!(uid.len(), 28);
    assert!(uid.bytes().all(|b| b.is_ascii_alphanumeric()), "{uid}");
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let reply = demo
        .call(Method::GET, "/api/tickets")
        .bearer(&token)
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    for (kind, capacity) in [("upload", 5), ("ai", 3)] {
        assert_eq!(body[kind]["remaining"], capacity, "{body}");
        assert_eq!(body[kind]["capacity"], capacity, "{body}");
        let refill_at = body[kind]["refill_at"].as_str().expect("refill_at");
        assert!(
            chrono::DateTime::parse_from_rfc3339(refill_at).is_ok(),
            "{refill_at}"
        );
    }
    // Reading balances spends nothing.
    assert_eq!(demo.remaining(&token).await, (5, 3));
}

#[tokio::test]
async fn an_upload_costs_exactly_one_upload_ticket() {
    let demo = Demo::start(&[]);
    let (_, token) = demo.sign_up().await;

    let reply = demo
        .call(Method::POST, "/api/uploads")
        .bearer(&token)
        .header("content-type", "image/png")
        .body(IMAGE)
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["bytes"], IMAGE.len());
    assert!(body["id"].is_string(), "{body}");
    assert_eq!(body["tickets"]["upload"]["remaining"], 4, "{body}");
    assert_eq!(reply.header("ratelimit-policy"), r#""upload";q=5;w=86400"#);
    assert!(
        reply.header("ratelimit").starts_with(r#""upload";r=4;t="#),
        "{}",
        reply.header("ratelimit")
    );

    assert_eq!(demo.remaining(&token).await, (4, 3));
    assert_eq!(demo.stored_uploads(&token).await, 1);
}

/// A retry (same `Idempotency-Key`) is charged once and answered with the
/// first answer: no second upload, no free uploads at zero by reusing a key.
#[tokio::test]
async fn a_retried_upload_gets_its_first_answer_and_costs_nothing_more() {
    let demo = Demo::start(&[]);
    let (_, token) = demo.sign_up().await;
    let upload = |key: &str| {
        demo.call(Method::POST, "/api/uploads")
            .bearer(&token)
            .header("idempotency-key", key)
            .body(IMAGE)
            .send()
    };
    let first = upload("photo-1").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let retry = upload("photo-1").await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text());
    assert_eq!(retry.json()["id"], first.json()["id"], "the same upload");
    assert_eq!(demo.remaining(&token).await, (4, 3));
    assert_eq!(demo.stored_uploads(&token).await, 1);

    for n in 2..=5 {
        let reply = upload(&format!("photo-{n}")).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    }
    assert_eq!(demo.remaining(&token).await, (0, 3));
    let reused = upload("photo-1").await;
    assert_eq!(reused.json()["id"], first.json()["id"], "{}", reused.text());
    assert_eq!(
        demo.stored_uploads(&token).await,
        5,
        "nothing stored for free"
    );
    let fresh = upload("photo-6").await;
    fresh.problem(StatusCode::TOO_MANY_REQUESTS);

    // The AI route likewise.
    let generate = || {
        demo.call(Method::POST, "/api/ai/generate")
            .bearer(&token)
            .header("idempotency-key", "idea-1")
            .json(r#"{"prompt": "a lighthouse"}"#)
            .send()
    };
    let first = generate().await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(generate().await.json(), first.json());
    assert_eq!(demo.remaining(&token).await, (0, 2));
}

/// A key paid on an upload is not a retry of a generation: 422, nothing
/// charged, nothing generated.
#[tokio::test]
async fn a_key_paid_on_an_upload_is_refused_on_a_generation() {
    let demo = Demo::start(&[]);
    let (_, token) = demo.sign_up().await;
    let upload = demo
        .call(Method::POST, "/api/uploads")
        .bearer(&token)
        .header("idempotency-key", "shared-1")
        .body(IMAGE)
        .send()
        .await;
    assert_eq!(upload.status, StatusCode::CREATED, "{}", upload.text());
    let generate = demo
        .call(Method::POST, "/api/ai/generate")
        .bearer(&token)
        .header("idempotency-key", "shared-1")
        .json(r#"{"prompt": "a lighthouse"}"#)
        .send()
        .await;
    let problem = generate.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["type"], IDEMPOTENCY_KEY_REUSED_TYPE);
    assert_eq!(demo.remaining(&token).await, (4, 3));
    assert_eq!(demo.stored_uploads(&token).await, 1);
}

#[tokio::test]
async fn the_sixth_upload_is_refused_with_a_quota_problem_and_not_stored() {
    let demo = Demo::start(&[]);
    let (_, token) = demo.sign_up().await;
    let upload = || {
        demo.call(Method::POST, "/api/uploads")
            .bearer(&token)
            .body(IMAGE)
            .send()
    };
    for _ in 0..5 {
        assert_eq!(upload().await.status, StatusCode::CREATED);
    }

    let refused = upload().await;
    let problem = refused.problem(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem["type"], QUOTA_EXCEEDED_TYPE);
    assert_eq!(problem["title"], "No upload tickets left");
    let detail = problem["detail"].as_str().expect("detail");
    assert!(
        detail.starts_with("You have used all 5 upload tickets. They refill "),
        "{detail}"
    );
    assert_eq!(problem["kind"], "upload");
    assert_eq!(problem["cost"], 1);
    assert_eq!(problem["remaining"], 0);
    assert_eq!(problem["capacity"], 5);
    assert!(problem["refill_at"].is_string(), "{problem}");
    assert_eq!(problem["violated-policies"], serde_json::json!(["upload"]));

    let retry_after: u64 = refused.header("retry-after").parse().expect("Retry-After");
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
    assert_eq!(
        refused.header("ratelimit"),
        format!(r#""upload";r=0;t={retry_after}"#)
    );
    assert_eq!(
        refused.header("ratelimit-policy"),
        r#""upload";q=5;w=86400"#
    );

    // The handler did not run: five uploads stored, not six.
    assert_eq!(demo.stored_uploads(&token).await, 5);
    assert_eq!(demo.remaining(&token).await, (0, 3));

    // The balances say, for the kind at zero only, what a request would be
    // told, so the page can disable the action before the user tries.
    let balances = demo
        .call(Method::GET, "/api/tickets")
        .bearer(&token)
        .header("accept-language", "fr")
        .send()
        .await
        .json();
    assert_eq!(
        balances["upload"]["refusal"]["title"],
        "Plus de tickets d'envoi"
    );
    let detail = balances["upload"]["refusal"]["detail"]
        .as_str()
        .expect("detail");
    assert!(
        detail.starts_with("Vous avez utilisé vos 5 tickets d'envoi."),
        "{detail}"
    );
    assert!(balances["ai"].get("refusal").is_none(), "{balances}");
}

#[tokio::test]
async fn french_speakers_are_refused_in_french() {
    let demo = Demo::start(&[]);
    let (_, token) = demo.sign_up().await;
    let generate = || {
        demo.call(Method::POST, "/api/ai/generate")
            .bearer(&token)
            .header("accept-language", "fr-FR,fr;q=0.9,en;q=0.5")
            .json(r#"{"prompt":"un chat sur un toit"}"#)
            .send()
    };
    for _ in 0..3 {
        let reply = generate().await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert!(reply.json()["result"].is_string());
    }

    let refused = generate().await;
    let problem = refused.problem(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("content-language"), "fr");
    assert_eq!(problem["title"], "Plus de tickets IA");
    let detail = problem["detail"].as_str().expect("detail");
    assert!(
        detail.starts_with("Vous avez utilisé vos 3 tickets IA. Ils seront rechargés "),
        "{detail}"
    );
    assert_eq!(demo.remaining(&token).await, (5, 0));
}

#[tokio::test]
async fn malformed_bodies_are_400_problems_that_cost_nothing() {
    let demo = Demo::start(&[]);
    let (_, token) = demo.sign_up().await;

    let empty_upload = demo
        .call(Method::POST, "/api/uploads")
        .bearer(&token)
        .send()
        .await;
    empty_upload.problem(StatusCode::BAD_REQUEST);

    let bad_prompts = [
        ("application/json", r#"{"prompt":"#),
        ("application/json", r#"{"prompt":"   "}"#),
        ("application/json", r#"{"text":"a cat"}"#),
        ("application/json", r#"{"prompt":42}"#),
        ("text/plain", r#"{"prompt":"a cat"}"#),
    ];
    for (content_type, body) in bad_prompts {
        let reply = demo
            .call(Method::POST, "/api/ai/generate")
            .bearer(&token)
            .header("content-type", content_type)
            .body(body.as_bytes())
            .send()
            .await;
        reply.problem(StatusCode::BAD_REQUEST);
        // The charge was given back before the answer left.
        assert!(
            reply.header("ratelimit").starts_with(r#""ai";r=3;t="#),
            "{}",
            reply.header("ratelimit")
        );
    }

    for body in [r#"{"email":"#, r#"{"email":""}"#, r#"{"email":"nobody"}"#] {
        demo.call(Method::POST, "/api/signup")
            .json(body)
            .send()
            .await
            .problem(StatusCode::BAD_REQUEST);
    }

    assert_eq!(demo.remaining(&token).await, (5, 3));
    assert_eq!(demo.stored_uploads(&token).await, 0);
}

#[tokio::test]
async fn admins_grant_and_set_balances_with_the_admin_token() {
    let demo = Demo::with_admin();
    let (uid, token) = demo.sign_up().await;
    let admin = |path: &str, body: String, bearer: Option<&str>| {
        let call = demo.call(Method::POST, path).json(&body);
        match bearer {
            Some(bearer) => call.bearer(bearer),
            None => call,
        }
        .send()
    };
    let grant = format!(r#"{{"uid":"{uid}","kind":"upload","amount":10}}"#);

    admin("/api/admin/grant", grant.clone(), None)
        .await
        .problem(StatusCode::UNAUTHORIZED);
    admin("/api/admin/grant", grant.clone(), Some("not-the-token"))
        .await
        .problem(StatusCode::UNAUTHORIZED);
    // A user's own token is no admin token.
    admin("/api/admin/grant", grant.clone(), Some(&token))
        .await
        .problem(StatusCode::UNAUTHORIZED);
    assert_eq!(demo.remaining(&token).await, (5, 3));

    let granted = admin("/api/admin/grant", grant, Some(ADMIN_TOKEN)).await;
    assert_eq!(granted.status, StatusCode::OK, "{}", granted.text());
    let body = granted.json();
    assert_eq!(body["upload"]["remaining"], 15, "{body}");
    assert_eq!(body["upload"]["capacity"], 5, "{body}");
    assert_eq!(body["ai"]["remaining"], 3, "{body}");

    // The scheme is case-insensitive, as for users' tokens.
    let lowercase = demo
        .call(Method::POST, "/api/admin/grant")
        .header("authorization", &format!("bearer {ADMIN_TOKEN}"))
        .json(&format!(r#"{{"uid":"{uid}","kind":"upload","amount":0}}"#))
        .send()
        .await;
    assert_eq!(lowercase.status, StatusCode::OK, "{}", lowercase.text());

    let set = format!(r#"{{"uid":"{uid}","kind":"ai","balance":0}}"#);
    let set = admin("/api/admin/set", set, Some(ADMIN_TOKEN)).await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text());
    assert_eq!(set.json()["ai"]["remaining"], 0);
    assert_eq!(demo.remaining(&token).await, (15, 0));

    let unknown_kind = format!(r#"{{"uid":"{uid}","kind":"gold","amount":1}}"#);
    let bad_uid = r#"{"uid":"../users/x","kind":"upload","amount":1}"#.to_string();
    let negative = format!(r#"{{"uid":"{uid}","kind":"upload","balance":-1}}"#);
    for (path, body) in [
        ("/api/admin/grant", unknown_kind),
        ("/api/admin/grant", bad_uid),
        ("/api/admin/set", negative),
    ] {
        admin(path, body, Some(ADMIN_TOKEN))
            .await
            .problem(StatusCode::BAD_REQUEST);
    }
    assert_eq!(demo.remaining(&token).await, (15, 0));
}

#[tokio::test]
async fn admins_reset_balances_and_a_retried_webhook_grants_once() {
    let demo = Demo::with_admin();
    let (uid, token) = demo.sign_up().await;
    let admin = |path: &str, body: String, key: Option<&str>| {
        let call = demo
            .call(Method::POST, path)
            .json(&body)
            .bearer(ADMIN_TOKEN);
        match key {
            Some(key) => call.header("idempotency-key", key),
            None => call,
        }
        .send()
    };
    let grant = format!(r#"{{"uid":"{uid}","kind":"upload","amount":10}}"#);
    let first = admin("/api/admin/grant", grant.clone(), Some("payment-1")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(first.json()["upload"]["remaining"], 15);
    // The webhook is retried: the first answer again, granted once.
    let retry = admin("/api/admin/grant", grant.clone(), Some("payment-1")).await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.text());
    assert_eq!(retry.json(), first.json());
    assert_eq!(demo.remaining(&token).await, (15, 3));
    // The same key for another grant: 422, nothing granted.
    let other = format!(r#"{{"uid":"{uid}","kind":"upload","amount":11}}"#);
    let reused = admin("/api/admin/grant", other, Some("payment-1")).await;
    let problem = reused.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        problem["type"],
        tower_tickets::IDEMPOTENCY_KEY_REUSED_TYPE,
        "{problem}"
    );
    admin("/api/admin/grant", grant, Some(""))
        .await
        .problem(StatusCode::BAD_REQUEST);
    assert_eq!(demo.remaining(&token).await, (15, 3));

    // Reset one kind, then every kind: each at least its capacity.
    for _ in 0..2 {
        demo.call(Method::POST, "/api/ai/generate")
            .bearer(&token)
            .json(r#"{"prompt":"a cat"}"#)
            .send()
            .await;
    }
    let set = format!(r#"{{"uid":"{uid}","kind":"upload","balance":1}}"#);
    admin("/api/admin/set", set, Some("set-1")).await;
    assert_eq!(demo.remaining(&token).await, (1, 1));
    let reset_ai = format!(r#"{{"uid":"{uid}","kind":"ai"}}"#);
    let reset = admin("/api/admin/reset", reset_ai, None).await;
    assert_eq!(reset.status, StatusCode::OK, "{}", reset.text());
    assert_eq!(reset.json()["ai"]["remaining"], 3);
    assert_eq!(reset.json()["upload"]["remaining"], 1, "only ai");
    let reset_all = format!(r#"{{"uid":"{uid}"}}"#);
    let reset = admin("/api/admin/reset", reset_all.clone(), Some("reset-1")).await;
    assert_eq!(reset.status, StatusCode::OK, "{}", reset.text());
    assert_eq!(demo.remaining(&token).await, (5, 3));
    let unknown = format!(r#"{{"uid":"{uid}","kind":"gold"}}"#);
    admin("/api/admin/reset", unknown, None)
        .await
        .problem(StatusCode::BAD_REQUEST);
    demo.call(Method::POST, "/api/admin/reset")
        .json(&reset_all)
        .send()
        .await
        .problem(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn admin_routes_refuse_everyone_without_an_admin_token() {
    let demo = Demo::start(&[]);
    let (uid, token) = demo.sign_up().await;
    for bearer in ["", "anything", ADMIN_TOKEN] {
        demo.call(Method::POST, "/api/admin/grant")
            .bearer(bearer)
            .json(&format!(r#"{{"uid":"{uid}","kind":"upload","amount":10}}"#))
            .send()
            .await
            .problem(StatusCode::UNAUTHORIZED);
    }
    assert_eq!(demo.remaining(&token).await, (5, 3));
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems_that_cost_nothing() {
    let demo = Demo::start(&[]);
    let (_, token) = demo.sign_up().await;

    for path in ["/api/nope", "/api/uploads/extra", "/nope"] {
        demo.call(Method::POST, path)
            .bearer(&token)
            .body(IMAGE)
            .send()
            .await
            .problem(StatusCode::NOT_FOUND);
    }
    for (method, path) in [
        (Method::GET, "/api/ai/generate"),
        (Method::DELETE, "/api/uploads"),
    ] {
        demo.call(method, path)
            .bearer(&token)
            .send()
            .await
            .problem(StatusCode::METHOD_NOT_ALLOWED);
    }
    assert_eq!(demo.remaining(&token).await, (5, 3));
}

#[tokio::test]
async fn requests_without_a_valid_token_are_401_problems() {
    let demo = Demo::start(&[]);
    let (_, token) = demo.sign_up().await;
    // A token signed by another server's secret.
    let other = Demo::start(&["--jwt-secret", "another secret"]);
    let (_, foreign) = other.sign_up().await;

    for (method, path) in [
        (Method::GET, "/api/tickets"),
        (Method::GET, "/api/uploads"),
        (Method::POST, "/api/uploads"),
        (Method::POST, "/api/ai/generate"),
    ] {
        demo.call(method.clone(), path)
            .body(IMAGE)
            .send()
            .await
            .problem(StatusCode::UNAUTHORIZED);
        let reply = demo
            .call(method, path)
            .bearer(&foreign)
            .body(IMAGE)
            .send()
            .await;
        reply.problem(StatusCode::UNAUTHORIZED);
        assert_eq!(reply.header("www-authenticate"), "Bearer");
    }
    assert_eq!(demo.remaining(&token).await, (5, 3));
}

#[tokio::test]
async fn metrics_count_charged_and_refused_tickets_per_kind() {
    let demo = Demo::start(&[]);
    let (_, token) = demo.sign_up().await;
    for _ in 0..4 {
        let reply = demo
            .call(Method::POST, "/api/ai/generate")
            .bearer(&token)
            .json(r#"{"prompt":"a cat"}"#)
            .send()
            .await;
        assert!(matches!(
            reply.status,
            StatusCode::OK | StatusCode::TOO_MANY_REQUESTS
        ));
    }
    let upload = demo
        .call(Method::POST, "/api/uploads")
        .bearer(&token)
        .body(IMAGE)
        .send()
        .await;
    assert_eq!(upload.status, StatusCode::CREATED);

    let metrics = demo.call(Method::GET, "/metrics").send().await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.text();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    assert_eq!(value(r#"tickets_charged_total{kind="ai"}"#), 3.0);
    assert_eq!(value(r#"tickets_refused_total{kind="ai"}"#), 1.0);
    assert_eq!(value(r#"tickets_charged_total{kind="upload"}"#), 1.0);
    assert!(
        !text.contains(r#"tickets_refused_total{kind="upload"}"#),
        "{text}"
    );
    assert!(
        text.contains("tickets_store_latency_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn health_check_and_page_answer() {
    let demo = Demo::start(&[]);
    let health = demo.call(Method::GET, "/healthz").send().await;
    assert_eq!(health.status, StatusCode::OK);
    let page = demo.call(Method::GET, "/").send().await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.header("content-type").starts_with("text/html"));
}

#[test]
fn an_unreachable_firestore_stops_the_server_at_start_up() {
    // Nothing listens on port 1; without the `firestore` feature the demo
    // says to rebuild with it.
    for env in [None, Some(("TICKETS_FIRESTORE_PROJECT", "demo"))] {
        let mut command = demo_command();
        command
            .args([
                "--bind",
                "127.0.0.1:0",
                "--redis-url",
                "redis://127.0.0.1:1",
            ])
            .env("FIRESTORE_EMULATOR_HOST", "127.0.0.1:1");
        match env {
            Some((name, value)) => command.env(name, value),
            None => command.args(["--firestore-project", "demo"]),
        };
        let output = command.output().expect("run the demo");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{env:?} started");
        assert!(
            stderr.contains("--firestore-project demo"),
            "{env:?}: {stderr}"
        );
    }
}
