//! Three demo instances on one Redis Cluster (three masters, a replica
//! each) and one Firestore project (DESIGN.md §4, §8): concurrent uploads
//! of the same users through all three are counted exactly, and one busy
//! user's document is written about once a second in all, not once a
//! second per instance.
#![cfg(all(feature = "axum", feature = "jwt", feature = "firestore"))]

#[allow(dead_code)] // This binary uses part of the support code.
mod support {
    pub mod eventually;
    pub mod firestore_emulator;
    pub mod redis_server;
}
#[allow(dead_code)] // Helpers for the other demo tests.
mod demo {
    pub mod server;
}

use std::sync::Arc;
use std::time::{Duration, Instant};

use demo::server::{ADMIN_TOKEN, Demo};
use firestore::FirestoreDb;
use firestore::gcloud_sdk::google::firestore::v1::value::ValueType;
use http::{Method, StatusCode};
use support::eventually::eventually;
use support::firestore_emulator::FirestoreEmulator;
use support::redis_server::RedisCluster;

const SECRET: &str = "one secret for the three instances";
/// What a new demo user holds (DESIGN.md §8).
const UPLOAD_TICKETS: usize = 5;
/// Uploads sent per user at once, spread over the instances.
const UPLOADS_PER_USER: usize = 9;
/// How long the busy user sends uploads through every instance.
const BUSY: Duration = Duration::from_secs(4);
/// Clients per instance sending the busy user's uploads.
const BUSY_CLIENTS: usize = 4;

struct Stack {
    _cluster: RedisCluster,
    demos: [Demo; 3],
    db: FirestoreDb,
}

impl Stack {
    async fn start(project: &str) -> Self {
        let cluster = RedisCluster::start();
        let nodes: Vec<String> = cluster
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let nodes = nodes.join(",");
        let emulator = FirestoreEmulator::shared();
        let host = emulator.host();
        let start = || {
            Demo::start_with_env(
                &[
                    "--firestore-project",
                    project,
                    "--redis-cluster",
                    &nodes,
                    "--jwt-secret",
                    SECRET,
                    "--admin-token",
                    ADMIN_TOKEN,
                ],
                &[("FIRESTORE_EMULATOR_HOST", &host)],
            )
        };
        Self {
            demos: [start(), start(), start()],
            _cluster: cluster,
            db: emulator.client(project).await,
        }
    }

    async fn upload(&self, instance: usize, token: &str) -> StatusCode {
        self.demos[instance % 3]
            .call(Method::POST, "/api/uploads")
            .bearer(token)
            .body(b"\x89PNG not really")
            .send()
            .await
            .status
    }

    async fn ticket_count(&self, uid: &str) -> i64 {
        let document = self
            .db
            .fluent()
            .select()
            .by_id_in("users")
            .one(uid)
            .await
            .expect("the emulator answers")
            .expect("users/{uid} exists");
        match &document.fields["ticketCount"].value_type {
            Some(ValueType::IntegerValue(n)) => *n,
            other => panic!("ticketCount: {other:?}"),
        }
    }

    /// Firestore writes made by all three instances so far (their
    /// `/metrics`, read from loopback).
    async fn firestore_writes(&self) -> u64 {
        let mut total = 0;
        for demo in &self.demos {
            let metrics = demo.call(Method::GET, "/metrics").send().await.text();
            total += metrics
                .lines()
                .find_map(|line| line.strip_prefix("tickets_firestore_writes_total "))
                .map_or(0, |n| n.trim().parse::<u64>().expect("a count"));
        }
        total
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_a_cluster_count_exactly_and_pace_one_users_writes_together() {
    let project = format!("demo-cluster-{}", std::process::id());
    let stack = Arc::new(Stack::start(&project).await);

    // Users signed up on different instances, each sending more uploads
    // than it has tickets through all three at once.
    let mut users = Vec::new();
    for i in 0..4 {
        users.push(stack.demos[i % 3].sign_up().await);
    }
    let sends: Vec<_> = users
        .iter()
        .flat_map(|(_, token)| {
            (0..UPLOADS_PER_USER).map(|i| {
                let (stack, token) = (stack.clone(), token.clone());
                tokio::spawn(async move { stack.upload(i, &token).await })
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for send in sends {
        statuses.push(send.await.unwrap());
    }
    for ((uid, _), statuses) in users.iter().zip(statuses.chunks(UPLOADS_PER_USER)) {
        let count = |status: StatusCode| statuses.iter().filter(|s| **s == status).count();
        let (created, refused) = (
            count(StatusCode::CREATED),
            count(StatusCode::TOO_MANY_REQUESTS),
        );
        // A 503 (a backend too slow on a loaded machine) charges nothing,
        // and a refusal may meet the tickets of an upload answered 503
        // before they are given back; anything else is wrong.
        let unavailable = count(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            created + refused + unavailable,
            UPLOADS_PER_USER,
            "{uid}: {statuses:?}"
        );
        if unavailable == 0 {
            assert_eq!(created, UPLOAD_TICKETS, "{uid}: {statuses:?}");
        }
        // Sync write-through: a 201 is answered once Firestore holds it;
        // an upload answered 503 is given back in the background.
        let left = (UPLOAD_TICKETS - created) as i64;
        eventually(&format!("{uid}'s document at {left}"), || {
            let stack = stack.clone();
            let uid = uid.clone();
            async move { stack.ticket_count(&uid).await == left }
        })
        .await;
    }

    // One busy user with plenty of tickets, uploading through every
    // instance at once: the instances share one write pace for the user.
    let (uid, token) = stack.demos[0].sign_up().await;
    let granted = stack.demos[1]
        .call(Method::POST, "/api/admin/grant")
        .bearer(ADMIN_TOKEN)
        .json(&format!(
            r#"{{"uid":"{uid}","kind":"upload","amount":1000}}"#
        ))
        .send()
        .await;
    assert_eq!(granted.status, StatusCode::OK, "{}", granted.text());
    let writes_before = stack.firestore_writes().await;
    let started = Instant::now();
    let clients: Vec<_> = (0..3 * BUSY_CLIENTS)
        .map(|client| {
            let (stack, token) = (stack.clone(), token.clone());
            tokio::spawn(async move {
                let mut created = 0_i64;
                while started.elapsed() < BUSY {
                    match stack.upload(client, &token).await {
                        StatusCode::CREATED => created += 1,
                        // A backend too slow on a loaded machine: nothing
                        // charged (checked below).
                        StatusCode::SERVICE_UNAVAILABLE => {}
                        other => panic!("a busy upload answered {other}"),
                    }
                }
                created
            })
        })
        .collect();
    let mut created = 0;
    for client in clients {
        created += client.await.unwrap();
    }
    let elapsed = started.elapsed();
    let writes = stack.firestore_writes().await - writes_before;
    eventually("the busy user's document counts exactly the 201s", || {
        let (stack, uid) = (stack.clone(), uid.clone());
        async move { stack.ticket_count(&uid).await == 1005 - created }
    })
    .await;
    // About one write a second: the first may come at once, and the last
    // round may start just before the clients stop.
    let allowed = elapsed.as_secs() + 2;
    eprintln!(
        "the busy user: {created} uploads in {elapsed:?} through 3 instances, \
         {writes} Firestore writes"
    );
    assert!(
        writes <= allowed,
        "{writes} writes of one user in {elapsed:?} through three instances"
    );
    assert!(created > writes as i64, "rounds carry several uploads each");
}
