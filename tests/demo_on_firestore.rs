//! The demo server on the full stack: Redis decides, Firestore holds
//! `users/{uid}` (sync write-through), both real servers started here.
#![cfg(all(feature = "axum", feature = "jwt", feature = "firestore"))]

#[allow(dead_code)] // This binary uses part of the support code.
mod support {
    pub mod firestore_emulator;
    pub mod redis_server;
}
#[allow(dead_code)] // Helpers for the other demo tests.
#[path = "demo/server.rs"]
mod server;

use firestore::gcloud_sdk::google::firestore::v1::value::ValueType;
use http::{Method, StatusCode};
use server::Demo;
use support::firestore_emulator::FirestoreEmulator;
use support::redis_server::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_and_uploads_reach_the_users_document_and_survive_a_flushed_redis() {
    let emulator = FirestoreEmulator::shared();
    let redis = RedisServer::start();
    let project = format!("demo-full-stack-{}", std::process::id());
    let url = redis.url();
    let host = emulator.host();
    let demo = Demo::start_with_env(
        &["--firestore-project", &project, "--redis-url", &url],
        &[("FIRESTORE_EMULATOR_HOST", &host)],
    );
    let db = emulator.client(&project).await;
    let count = |document: &firestore::gcloud_sdk::google::firestore::v1::Document, field: &str| {
        match document.fields[field].value_type.clone() {
            Some(ValueType::IntegerValue(n)) => n,
            other => panic!("{field}: {other:?}"),
        }
    };
    let read = |uid: String| {
        let db = db.clone();
        async move {
            db.fluent()
                .select()
                .by_id_in("users")
                .one(&uid)
                .await
                .expect("the emulator answers")
        }
    };

    let (uid, token) = demo.sign_up().await;
    let created = read(uid.clone())
        .await
        .expect("sign-up creates users/{uid}");
    assert_eq!(count(&created, "ticketCount"), 5);
    assert_eq!(count(&created, "aiTicketCount"), 3);

    let upload = demo
        .call(Method::POST, "/api/uploads")
        .bearer(&token)
        .body(b"image")
        .send()
        .await;
    assert_eq!(upload.status, StatusCode::CREATED, "{}", upload.text());
    // Sync write-through: the 201 came once Firestore held the charge.
    let written = read(uid.clone()).await.expect("the document");
    assert_eq!(count(&written, "ticketCount"), 4);

    let _: () = redis::cmd("FLUSHALL")
        .query(&mut redis.connection())
        .expect("flush Redis");
    assert_eq!(
        demo.remaining(&token).await,
        (4, 3),
        "rebuilt from Firestore"
    );

    let metrics = demo.call(Method::GET, "/metrics").send().await.text();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    assert!(value("tickets_firestore_writes_total") >= 2.0, "{metrics}");
    assert!(
        value("tickets_cache_misses_total") >= 2.0,
        "sign-up and the flush"
    );
    assert_eq!(value(r#"tickets_charged_total{kind="upload"}"#), 1.0);
}
