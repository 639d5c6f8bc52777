//! The layer in front of axum routes: the reference app's rules, end to end
//! through HTTP, with the embedded store and a fake clock.
#![cfg(all(feature = "axum", feature = "jwt"))]

mod app;

use std::time::Duration;

use app::{App, DAY};
use axum::body::Body;
use axum::http::StatusCode;
use tower_tickets::{
    ALREADY_PROCESSED_TYPE, IDEMPOTENCY_KEY_REUSED_TYPE, QUOTA_EXCEEDED_TYPE,
    REQUEST_IN_PROGRESS_TYPE,
};

#[tokio::test]
async fn a_new_user_has_five_upload_and_three_ai_tickets() {
    let app = App::new();
    let balances = app.balances("alice").await;
    assert_eq!(balances["upload"]["remaining"], 5);
    assert_eq!(balances["upload"]["capacity"], 5);
    assert_eq!(balances["ai"]["remaining"], 3);
    assert_eq!(balances["ai"]["capacity"], 3);
    assert_eq!(balances["upload"]["refill_at"], "2026-06-02T10:00:00Z");
}

#[tokio::test]
async fn an_upload_spends_exactly_one_and_says_what_is_left() {
    let app = App::new();
    let reply = app.post("/upload", "alice").await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(
        reply.json,
        serde_json::json!([4]),
        "the handler sees the balance"
    );
    assert_eq!(reply.header("ratelimit"), "\"upload\";r=4;t=86400");
    assert_eq!(reply.header("ratelimit-policy"), "\"upload\";q=5;w=86400");
    assert_eq!(app.remaining("alice", "upload").await, 4);
    assert_eq!(app.remaining("alice", "ai").await, 3);
}

#[tokio::test]
async fn at_zero_uploads_are_refused_clearly_and_the_handler_never_runs() {
    let app = App::new();
    for left in (0..5).rev() {
        let reply = app.post("/upload", "alice").await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.json, serde_json::json!([left]));
    }
    app.clock.advance(Duration::from_secs(3600 + 48 * 60));
    let reply = app.post("/upload", "alice").await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        app.handled(),
        5,
        "the refused request never reached the handler"
    );
    assert_eq!(reply.header("content-type"), "application/problem+json");
    assert_eq!(reply.header("retry-after"), "79920");
    assert_eq!(reply.header("ratelimit"), "\"upload\";r=0;t=79920");
    assert_eq!(reply.header("ratelimit-policy"), "\"upload\";q=5;w=86400");
    assert_eq!(
        reply.json,
        serde_json::json!({
            "type": QUOTA_EXCEEDED_TYPE,
            "title": "No upload tickets left",
            "status": 429,
            "detail": "You have used all 5 upload tickets. They refill on 2026-06-02 at 10:00 UTC, in 22 h 12 min.",
            "kind": "upload",
            "cost": 1,
            "remaining": 0,
            "capacity": 5,
            "refill_at": "2026-06-02T10:00:00Z",
            "violated-policies": ["upload"],
        })
    );
    assert_eq!(app.remaining("alice", "upload").await, 0);
}

#[tokio::test]
async fn after_the_period_the_balance_is_five_again_not_earlier_not_twice() {
    let app = App::new();
    for _ in 0..5 {
        assert_eq!(
            app.post("/upload", "alice").await.status,
            StatusCode::CREATED
        );
    }
    app.clock.advance(DAY - Duration::from_secs(1));
    assert_eq!(app.remaining("alice", "upload").await, 0);
    assert_eq!(
        app.post("/upload", "alice").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    app.clock.advance(Duration::from_secs(1));
    assert_eq!(app.remaining("alice", "upload").await, 5);
    assert_eq!(
        app.post("/upload", "alice").await.status,
        StatusCode::CREATED
    );
    app.clock.advance(DAY / 2);
    assert_eq!(
        app.remaining("alice", "upload").await,
        4,
        "no second refill"
    );
}

#[tokio::test]
async fn ai_tickets_follow_the_same_rules_with_three() {
    let app = App::new();
    for _ in 0..3 {
        assert_eq!(app.post("/ai", "alice").await.status, StatusCode::OK);
    }
    let reply = app.post("/ai", "alice").await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.json["title"], "No AI tickets left");
    assert_eq!(reply.json["kind"], "ai");
    assert_eq!(app.handled(), 3);
    assert_eq!(
        app.remaining("alice", "upload").await,
        5,
        "uploads untouched"
    );
    app.clock.advance(DAY - Duration::from_millis(1));
    assert_eq!(app.remaining("alice", "ai").await, 0);
    app.clock.advance(Duration::from_millis(1));
    assert_eq!(app.remaining("alice", "ai").await, 3);
    assert_eq!(app.post("/ai", "alice").await.status, StatusCode::OK);
    app.clock.advance(DAY - Duration::from_secs(1));
    assert_eq!(app.remaining("alice", "ai").await, 2, "no second refill");
}

#[tokio::test]
async fn a_multi_kind_cost_is_all_or_nothing() {
    let app = App::new();
    assert_eq!(app.post("/ai", "alice").await.status, StatusCode::OK);
    assert_eq!(app.post("/ai", "alice").await.status, StatusCode::OK);
    // /both costs 1 upload + 2 ai; ai has 1 left.
    let reply = app.post("/both", "alice").await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.json["kind"], "ai");
    assert_eq!(reply.json["violated-policies"], serde_json::json!(["ai"]));
    assert_eq!(
        reply.header("ratelimit-policy"),
        "\"upload\";q=5;w=86400, \"ai\";q=3;w=86400"
    );
    assert_eq!(app.remaining("alice", "upload").await, 5, "nothing charged");
    assert_eq!(app.remaining("alice", "ai").await, 1);
}

#[tokio::test]
async fn a_5xx_is_refunded() {
    let app = App::new();
    let reply = app.post("/broken", "alice").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(app.handled(), 1);
    assert_eq!(reply.header("ratelimit"), "\"upload\";r=5;t=86400");
    assert_eq!(app.remaining("alice", "upload").await, 5);
}

#[tokio::test]
async fn a_custom_refund_predicate_picks_the_statuses() {
    use axum::routing::post;
    let app = App::new();
    let layer = app
        .tickets
        .layer(tower_tickets::Cost::of("upload", 1))
        .unwrap()
        .refund_when(|status| status == StatusCode::UNPROCESSABLE_ENTITY);
    let router = axum::Router::new()
        .route("/422", post(|| async { StatusCode::UNPROCESSABLE_ENTITY }))
        .route("/500", post(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route_layer(layer)
        .merge(app.router.clone());
    let app = App { router, ..app };
    app.post("/422", "alice").await;
    assert_eq!(app.remaining("alice", "upload").await, 5, "422 refunded");
    app.post("/500", "alice").await;
    assert_eq!(app.remaining("alice", "upload").await, 4, "500 kept");
}

#[tokio::test]
async fn a_handler_error_is_refunded_and_passed_on() {
    use tower::{Layer, ServiceExt};
    let app = App::new();
    let failing = tower::service_fn(|_req: axum::http::Request<Body>| async {
        Err::<axum::http::Response<Body>, std::io::Error>(std::io::Error::other("disk full"))
    });
    let service = app
        .tickets
        .layer(tower_tickets::Cost::of("upload", 2))
        .unwrap()
        .layer(failing);
    let token = app.token("alice");
    let request = app
        .request("POST", "/upload", Some(&token))
        .body(Body::empty())
        .unwrap();
    let error = service.oneshot(request).await.unwrap_err();
    assert_eq!(error.to_string(), "disk full");
    assert_eq!(app.remaining("alice", "upload").await, 5);
}

#[tokio::test]
async fn no_refund_across_a_refill() {
    use axum::routing::post;
    let app = App::new();
    for _ in 0..4 {
        app.post("/upload", "alice").await;
    }
    // A handler that takes so long that the period ends while it runs.
    let clock = app.clock.clone();
    let slow = post(move || {
        let clock = clock.clone();
        async move {
            clock.advance(DAY);
            StatusCode::BAD_GATEWAY
        }
    });
    let router = axum::Router::new()
        .route("/slow", slow)
        .route_layer(
            app.tickets
                .layer(tower_tickets::Cost::of("upload", 1))
                .unwrap(),
        )
        .merge(app.router.clone());
    let app = App { router, ..app };
    assert_eq!(
        app.post("/slow", "alice").await.status,
        StatusCode::BAD_GATEWAY
    );
    // The refill already gave 5; refunding the last ticket would make 6.
    assert_eq!(app.remaining("alice", "upload").await, 5);
}

#[tokio::test]
async fn a_retry_of_a_finished_request_is_answered_409_without_running_again() {
    let app = App::new();
    let token = app.token("alice");
    let send = |language: &str| {
        let mut request = app.keyed("POST", "/upload", &token, "upload-7f3a");
        request
            .headers_mut()
            .insert("accept-language", language.parse().unwrap());
        app.send(request)
    };
    assert_eq!(send("en").await.status, StatusCode::CREATED);
    for language in ["en", "fr"] {
        let retry = send(language).await;
        assert_eq!(retry.status, StatusCode::CONFLICT);
        assert_eq!(retry.header("content-type"), "application/problem+json");
        assert_eq!(retry.header("content-language"), language);
        assert_eq!(retry.json["type"], ALREADY_PROCESSED_TYPE);
        assert!(
            retry.headers.get("retry-after").is_none(),
            "nothing to wait for"
        );
        assert!(
            retry.json["detail"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key"),
            "{:?}",
            retry.json
        );
    }
    assert_eq!(app.handled(), 1, "the handler ran once");
    assert_eq!(app.remaining("alice", "upload").await, 4, "charged once");
    // Another key is another request.
    let other = app.send(app.keyed("POST", "/upload", &token, "upload-7f3b"));
    assert_eq!(other.await.status, StatusCode::CREATED);
    assert_eq!(app.remaining("alice", "upload").await, 3);
    let bad = app.send(app.keyed("POST", "/upload", &token, ""));
    assert_eq!(bad.await.status, StatusCode::BAD_REQUEST);
    assert_eq!(app.remaining("alice", "upload").await, 3);
}

#[tokio::test]
async fn a_route_can_opt_in_to_running_a_retry_uncharged() {
    let app = App::new();
    let token = app.token("alice");
    let send = || app.send(app.keyed("POST", "/upload-again", &token, "k-1"));
    assert_eq!(send().await.status, StatusCode::CREATED);
    let retry = send().await;
    assert_eq!(retry.status, StatusCode::CREATED, "the retry is answered");
    assert_eq!(app.handled(), 2, "by the handler, which sees it uncharged");
    assert_eq!(retry.header("ratelimit"), "\"upload\";r=4;t=86400");
    assert_eq!(app.remaining("alice", "upload").await, 4, "charged once");
}

#[tokio::test]
async fn a_key_paid_on_one_route_is_refused_on_another_and_charges_nothing() {
    let app = App::new();
    let token = app.token("alice");
    let upload = app.send(app.keyed("POST", "/upload", &token, "k"));
    assert_eq!(upload.await.status, StatusCode::CREATED);
    for language in ["en", "fr"] {
        let mut request = app.keyed("POST", "/upload-again", &token, "k");
        request
            .headers_mut()
            .insert("accept-language", language.parse().unwrap());
        let reused = app.send(request).await;
        assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reused.header("content-type"), "application/problem+json");
        assert_eq!(reused.json["type"], IDEMPOTENCY_KEY_REUSED_TYPE);
        assert_eq!(reused.json["status"], 422);
    }
    let generate = app.send(app.keyed("POST", "/ai", &token, "k")).await;
    assert_eq!(generate.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.handled(), 1, "only the first request ran");
    assert_eq!(app.remaining("alice", "upload").await, 4);
    assert_eq!(app.remaining("alice", "ai").await, 3, "nothing charged");
}

#[tokio::test]
async fn a_key_paid_for_one_cost_is_refused_for_another_on_the_same_route() {
    let app = App::new();
    let token = app.token("alice");
    let batch = |count: &str| {
        let mut request = app.keyed("POST", "/batch", &token, "k");
        request
            .headers_mut()
            .insert("x-count", count.parse().unwrap());
        app.send(request)
    };
    assert_eq!(batch("1").await.status, StatusCode::CREATED);
    assert_eq!(batch("2").await.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(batch("1").await.status, StatusCode::CONFLICT);
    assert_eq!(app.remaining("alice", "upload").await, 4);
}

#[tokio::test]
async fn a_retry_while_the_first_request_runs_is_told_to_come_back() {
    use axum::routing::post;
    let app = App::new();
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let handler = {
        let release = release.clone();
        post(move || async move {
            release.notified().await;
            StatusCode::CREATED
        })
    };
    let router = axum::Router::new()
        .route("/slow", handler)
        .route_layer(
            app.tickets
                .layer(tower_tickets::Cost::of("upload", 1))
                .unwrap(),
        )
        .merge(app.router.clone());
    let app = App { router, ..app };
    let token = app.token("alice");
    let first = tokio::spawn({
        let request = app.keyed("POST", "/slow", &token, "k");
        let router = app.router.clone();
        async move { tower::ServiceExt::oneshot(router, request).await }
    });
    app.settles_to("alice", "upload", 4).await;
    let retry = app.send(app.keyed("POST", "/slow", &token, "k")).await;
    assert_eq!(retry.status, StatusCode::CONFLICT);
    assert_eq!(retry.json["type"], REQUEST_IN_PROGRESS_TYPE);
    assert_eq!(retry.header("retry-after"), "1");
    release.notify_one();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let retry = app.send(app.keyed("POST", "/slow", &token, "k")).await;
    assert_eq!(retry.status, StatusCode::CONFLICT);
    assert_eq!(retry.json["type"], ALREADY_PROCESSED_TYPE);
    assert_eq!(app.remaining("alice", "upload").await, 4, "charged once");
}

#[tokio::test]
async fn a_failed_keyed_request_is_refunded_and_its_retry_charged_again() {
    let app = App::new();
    let token = app.token("alice");
    let broken = app.send(app.keyed("POST", "/broken", &token, "k")).await;
    assert_eq!(broken.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(app.remaining("alice", "upload").await, 5);
    let retry = app.send(app.keyed("POST", "/broken", &token, "k")).await;
    assert_eq!(retry.status, StatusCode::INTERNAL_SERVER_ERROR, "run again");
    assert_eq!(app.handled(), 2);
    assert_eq!(app.remaining("alice", "upload").await, 5);
}

/// Polls `future` once, then drops it: a client that left, or an outer
/// timeout.
async fn poll_once_then_drop<F: std::future::Future>(future: F) {
    let mut future = Box::pin(future);
    std::future::poll_fn(|cx| {
        assert!(future.as_mut().poll(cx).is_pending(), "still running");
        std::task::Poll::Ready(())
    })
    .await;
    drop(future);
}

/// `app` with a `/hang` route that `layer` prices and that never answers.
fn hanging(app: App, layer: tower_tickets::TicketLayer) -> App {
    use axum::routing::post;
    let router = axum::Router::new()
        .route("/hang", post(std::future::pending::<StatusCode>))
        .route_layer(layer)
        .merge(app.router.clone());
    App { router, ..app }
}

#[tokio::test]
async fn a_request_dropped_before_its_handler_answered_is_refunded_once() {
    let app = App::new();
    let layer = app
        .tickets
        .layer(tower_tickets::Cost::of("upload", 1))
        .unwrap();
    let app = hanging(app, layer);
    let token = app.token("alice");
    let request = app.keyed("POST", "/hang", &token, "k");
    poll_once_then_drop(tower::ServiceExt::oneshot(app.router.clone(), request)).await;
    app.settles_to("alice", "upload", 5).await;
    assert_eq!(app.store.refunds(), 1, "exactly once");
    // The refund forgot the key: the retry is a new request, charged.
    let request = app.keyed("POST", "/hang", &token, "k");
    poll_once_then_drop(tower::ServiceExt::oneshot(app.router.clone(), request)).await;
    app.settles_to("alice", "upload", 5).await;
    assert_eq!(app.store.refunds(), 2);
}

#[tokio::test]
async fn a_request_dropped_while_charging_is_refunded_once_the_store_allows_it() {
    let app = App::new();
    let layer = app
        .tickets
        .layer(tower_tickets::Cost::of("upload", 1))
        .unwrap();
    let app = hanging(app, layer);
    let token = app.token("alice");
    let closed = app.store.gate.clone().write_owned().await;
    let request = app.keyed("POST", "/hang", &token, "k");
    poll_once_then_drop(tower::ServiceExt::oneshot(app.router.clone(), request)).await;
    drop(closed);
    for _ in 0..100 {
        if app.store.refunds() == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(app.store.refunds(), 1, "the late charge was given back");
    assert_eq!(app.remaining("alice", "upload").await, 5);
    assert_eq!(app.handled(), 0);
}

/// The store's breaker is open when the request is dropped (Redis just
/// went down): the refund was not sent, so it is tried again until the
/// store takes it. Before, the charge stood: a ticket lost.
#[tokio::test(start_paused = true)]
async fn a_dropped_request_is_refunded_once_the_breaker_lets_the_refund_through() {
    let app = App::new();
    let layer = app
        .tickets
        .layer(tower_tickets::Cost::of("upload", 1))
        .unwrap();
    let app = hanging(app, layer);
    let token = app.token("alice");
    app.store
        .refused_refunds
        .store(3, std::sync::atomic::Ordering::SeqCst);
    let request = app.keyed("POST", "/hang", &token, "k");
    poll_once_then_drop(tower::ServiceExt::oneshot(app.router.clone(), request)).await;
    // The paused clock runs ahead through the retries' pauses.
    for _ in 0..600 {
        if app.remaining("alice", "upload").await == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.remaining("alice", "upload").await, 5, "given back");
    assert_eq!(app.store.refunds(), 4, "three refused, then taken once");
}

#[tokio::test]
async fn a_route_whose_work_outlives_its_request_keeps_the_charge() {
    let app = App::new();
    let layer = app
        .tickets
        .layer(tower_tickets::Cost::of("upload", 1))
        .unwrap()
        .refund_unanswered(false);
    let app = hanging(app, layer);
    let token = app.token("alice");
    let request = app.keyed("POST", "/hang", &token, "k");
    poll_once_then_drop(tower::ServiceExt::oneshot(app.router.clone(), request)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(app.remaining("alice", "upload").await, 4, "kept");
    assert_eq!(app.store.refunds(), 0);
    // Its key was marked finished: a retry is told so, not to wait.
    let retry = app.send(app.keyed("POST", "/hang", &token, "k")).await;
    assert_eq!(retry.status, StatusCode::CONFLICT);
    assert_eq!(retry.json["type"], ALREADY_PROCESSED_TYPE);
}

#[tokio::test]
async fn a_computed_cost_is_charged_and_an_unpayable_one_is_a_400() {
    let app = App::new();
    let token = app.token("alice");
    let batch = |count: Option<&str>| {
        let mut request = app.request("POST", "/batch", Some(&token));
        if let Some(count) = count {
            request = request.header("x-count", count);
        }
        app.send(request.body(Body::empty()).unwrap())
    };
    assert_eq!(batch(Some("3")).await.status, StatusCode::CREATED);
    assert_eq!(app.remaining("alice", "upload").await, 2);
    let too_many = batch(Some("3")).await;
    assert_eq!(too_many.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(too_many.json["cost"], 3);
    assert_eq!(too_many.json["remaining"], 2);
    assert_eq!(
        too_many.json["detail"],
        "This needs 3 upload tickets and you have 2 left. They refill on 2026-06-02 at 10:00 UTC, in 24 h."
    );
    // More than any refill gives: never payable, so not a 429.
    let never = batch(Some("6")).await;
    assert_eq!(never.status, StatusCode::BAD_REQUEST);
    assert_eq!(never.header("content-type"), "application/problem+json");
    assert!(
        never.json["detail"]
            .as_str()
            .unwrap()
            .contains("more than the 5 a refill gives"),
        "{}",
        never.json
    );
    let unpriced = batch(None).await;
    assert_eq!(unpriced.status, StatusCode::BAD_REQUEST);
    assert!(
        unpriced.json["detail"]
            .as_str()
            .unwrap()
            .contains("X-Count")
    );
    assert_eq!(
        app.remaining("alice", "upload").await,
        2,
        "400s charge nothing"
    );
    assert_eq!(app.handled(), 1);
}

#[tokio::test]
async fn accept_language_fr_gives_a_french_message() {
    let app = App::new();
    for _ in 0..3 {
        app.post("/ai", "alice").await;
    }
    let token = app.token("alice");
    let reply = app
        .send(
            app.request("POST", "/ai", Some(&token))
                .header("accept-language", "fr-FR,fr;q=0.9,en;q=0.5")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("content-language"), "fr");
    assert_eq!(reply.json["title"], "Plus de tickets IA");
    assert_eq!(
        reply.json["detail"],
        "Vous avez utilisé vos 3 tickets IA. Ils seront rechargés le 2026-06-02 à 10:00 UTC, dans 24 h."
    );
}

#[tokio::test]
async fn unmatched_routes_are_never_charged() {
    let app = App::new();
    let reply = app.post("/nowhere", "alice").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(app.store.calls(), 0);
    assert_eq!(app.remaining("alice", "upload").await, 5);
}

#[tokio::test]
async fn thousand_concurrent_uploads_on_five_tickets_allow_five() {
    let app = std::sync::Arc::new(App::new());
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.post("/upload", "alice").await.status })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 5);
    assert_eq!(app.handled(), 5);
}

#[tokio::test]
async fn repeated_refusals_are_answered_as_of_each_request() {
    use tower::ServiceExt;
    use tower_tickets::Rejection;
    use tower_tickets::messages::DefaultMessages;

    let app = App::new();
    for _ in 0..5 {
        app.post("/upload", "alice").await;
    }
    let token = app.token("alice");
    // Steps within one second, across seconds, minutes and, at the end,
    // midnight UTC, when the refill (10:00 the next day) becomes "today".
    let steps_ms = [0, 300, 600, 150, 1_000, 58_000, 2_000, 50_399_000, 600, 400];
    for step in steps_ms {
        app.clock.advance(Duration::from_millis(step));
        for language in ["en", "fr"] {
            let request = app
                .request("POST", "/upload", Some(&token))
                .header("accept-language", language)
                .body(Body::empty())
                .unwrap();
            let headers = request.headers().clone();
            let response = app.router.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            let rejection = response.extensions().get::<Rejection>().unwrap().clone();
            let answered = response.headers().clone();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            // The same refusal answered afresh, without any reuse.
            let fresh: axum::http::Response<Body> =
                rejection.to_response(&DefaultMessages, &headers);
            assert_eq!(
                &answered,
                fresh.headers(),
                "after {step} ms more, in {language}"
            );
            let fresh = axum::body::to_bytes(fresh.into_body(), usize::MAX)
                .await
                .unwrap();
            assert_eq!(body, fresh, "after {step} ms more, in {language}");
        }
    }
    let reply = app.post("/upload", "alice").await;
    assert_eq!(
        reply.json["detail"],
        "You have used all 5 upload tickets. They refill at 10:00 UTC, in 9 h 59 min."
    );
}
