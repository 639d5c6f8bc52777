//! The Firestore source against Google's Firestore emulator: documents,
//! field types, creation, versioned writes.
#![cfg(feature = "firestore")]

mod support {
    pub mod firestore_emulator;
}

use chrono::{DateTime, Utc};
use firestore::FirestoreDb;
use firestore::gcloud_sdk::google::firestore::v1::value::ValueType;
use firestore::gcloud_sdk::google::firestore::v1::{Document, Value};
use tower_tickets::store::source::{Origins, Point};
use tower_tickets::store::{
    FirestoreSource, KindBalance, StoreErrorKind, UserSnapshot, WriteCondition, WriteOutcome,
};
use tower_tickets::{TicketKind, Uid, UidPolicy};

use support::firestore_emulator::{FIRESTORE_TIMEOUT, FirestoreEmulator};

fn kinds() -> [TicketKind; 2] {
    [TicketKind::new("upload", 5), TicketKind::new("ai", 3)]
}

/// A client of the shared emulator, in a project of the test's own.
async fn connect(project: &str) -> (FirestoreSource, FirestoreDb) {
    let db = FirestoreEmulator::shared().client(project).await;
    (
        FirestoreSource::new(db.clone(), kinds()).timeout(FIRESTORE_TIMEOUT),
        db,
    )
}

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn uid(s: &str) -> Uid {
    Uid::parse(s).unwrap()
}

/// A state of lineage 1, seeded from a new user's document.
fn snapshot(version: u64, upload: u32, ai: u32, at: &str) -> UserSnapshot {
    UserSnapshot {
        version,
        lineage: 1,
        origins: Origins::from_points([NEW_USER]),
        balances: vec![
            KindBalance {
                remaining: upload,
                last_refill: t(at),
            },
            KindBalance {
                remaining: ai,
                last_refill: t(at),
            },
        ],
    }
}

/// The point of a document the source created.
const NEW_USER: Point = Point {
    lineage: 0,
    version: 0,
};

/// Lands on the state `state`'s lineage was seeded from, or an earlier one
/// of its own.
fn after(state: &UserSnapshot) -> WriteCondition {
    WriteCondition {
        point: state.point(),
        seeded_from: state.origins.points()[0],
    }
}

async fn raw_document(db: &FirestoreDb, uid: &str) -> Option<Document> {
    db.fluent()
        .select()
        .by_id_in("users")
        .one(uid)
        .await
        .expect("the emulator answers")
}

async fn put_raw(db: &FirestoreDb, uid: &str, fields: Vec<(&str, ValueType)>) {
    let document = Document {
        name: format!("{}/users/{uid}", db.get_documents_path()),
        fields: fields
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value {
                        value_type: Some(v),
                    },
                )
            })
            .collect(),
        ..Document::default()
    };
    db.fluent()
        .update()
        .in_col("users")
        .document(document)
        .execute()
        .await
        .expect("the emulator stores the document");
}

fn field<'a>(document: &'a Document, name: &str) -> &'a ValueType {
    document.fields[name]
        .value_type
        .as_ref()
        .expect("a typed value")
}

#[tokio::test]
async fn a_new_user_document_holds_the_initial_balances_as_integers_and_timestamps() {
    let (source, db) = connect("create").await;
    let now = t("2026-03-01T08:00:00.250Z");
    let alice = uid("alice");
    assert_eq!(source.load(&alice, now).await.unwrap(), None);

    let created = source.load_or_create(&alice, now).await.unwrap();
    assert_eq!(created.point(), NEW_USER);
    assert_eq!(
        created.balances,
        snapshot(0, 5, 3, "2026-03-01T08:00:00.250Z").balances
    );

    let document = raw_document(&db, "alice").await.expect("created");
    assert_eq!(field(&document, "ticketCount"), &ValueType::IntegerValue(5));
    assert_eq!(
        field(&document, "aiTicketCount"),
        &ValueType::IntegerValue(3)
    );
    assert_eq!(
        field(&document, "ticketsVersion"),
        &ValueType::IntegerValue(0)
    );
    for refill in ["lastTicketRefill", "lastAiTicketRefill"] {
        let ValueType::TimestampValue(ts) = field(&document, refill) else {
            panic!("{refill} is not a timestamp");
        };
        assert_eq!((ts.seconds, ts.nanos), (now.timestamp(), 250_000_000));
    }

    // A second sign-up neither resets nor rewrites the balances.
    let charged = snapshot(1, 4, 3, "2026-03-01T08:00:00.250Z");
    source
        .write(&alice, &charged, after(&charged))
        .await
        .unwrap();
    let later = t("2026-03-01T09:00:00Z");
    assert_eq!(
        source.load_or_create(&alice, later).await.unwrap(),
        snapshot(1, 4, 3, "2026-03-01T08:00:00.250Z")
    );
}

#[tokio::test]
async fn an_app_document_gains_the_ticket_fields_and_keeps_its_own() {
    let (source, db) = connect("complete").await;
    put_raw(
        &db,
        "bob",
        vec![
            ("email", ValueType::StringValue("bob@example.com".into())),
            ("ticketCount", ValueType::IntegerValue(1)),
            (
                "lastTicketRefill",
                ValueType::TimestampValue(firestore::gcloud_sdk::prost_types::Timestamp {
                    seconds: t("2026-02-28T10:00:00Z").timestamp(),
                    nanos: 0,
                }),
            ),
        ],
    )
    .await;
    let now = t("2026-03-01T08:00:00Z");
    let loaded = source.load_or_create(&uid("bob"), now).await.unwrap();
    assert_eq!(loaded.balances[0].remaining, 1);
    assert_eq!(loaded.balances[0].last_refill, t("2026-02-28T10:00:00Z"));
    assert_eq!(loaded.balances[1].remaining, 3, "the AI kind was missing");

    let document = raw_document(&db, "bob").await.unwrap();
    assert_eq!(
        field(&document, "email"),
        &ValueType::StringValue("bob@example.com".into())
    );
    assert_eq!(
        field(&document, "aiTicketCount"),
        &ValueType::IntegerValue(3)
    );
    assert_eq!(field(&document, "ticketCount"), &ValueType::IntegerValue(1));
}

#[tokio::test]
async fn a_write_lands_only_on_a_state_it_descends_from() {
    let (source, db) = connect("versions").await;
    let carol = uid("carol");
    let now = t("2026-03-01T08:00:00Z");
    let newer = snapshot(7, 15, 3, "2026-03-01T08:00:00Z");
    assert_eq!(
        source.write(&carol, &newer, after(&newer)).await.unwrap(),
        WriteOutcome::Refused { stored: None },
        "no document: the user was deleted, nothing descends from that"
    );
    source.load_or_create(&carol, now).await.unwrap();
    assert_eq!(
        source.write(&carol, &newer, after(&newer)).await.unwrap(),
        WriteOutcome::Written
    );

    let late = snapshot(6, 2, 3, "2026-03-01T08:00:00Z");
    assert_eq!(
        source.write(&carol, &late, after(&late)).await.unwrap(),
        WriteOutcome::Refused {
            stored: Some(newer.clone())
        }
    );
    assert!(
        matches!(
            source.write(&carol, &newer, after(&newer)).await.unwrap(),
            WriteOutcome::Refused { .. }
        ),
        "the same version is not written twice"
    );
    // Another lineage seeded from the new user's document: Redis lost the
    // state of lineage 1 and started over from an older document.
    let mut forked = snapshot(9, 5, 3, "2026-03-01T08:00:00Z");
    forked.lineage = 2;
    assert!(matches!(
        source.write(&carol, &forked, after(&forked)).await.unwrap(),
        WriteOutcome::Refused { .. }
    ));
    // Seeded from what the source holds: it descends.
    forked.origins = Origins::seeded_from(&newer);
    assert_eq!(
        source.write(&carol, &forked, after(&forked)).await.unwrap(),
        WriteOutcome::Written
    );
    assert_eq!(
        source
            .load(&carol, t("2026-03-02T00:00:00Z"))
            .await
            .unwrap(),
        Some(forked)
    );
    let document = raw_document(&db, "carol").await.unwrap();
    assert_eq!(field(&document, "ticketCount"), &ValueType::IntegerValue(5));
}

/// Twelve writers of one document at once. None gives up: a writer loses a
/// race at most once per other writer, and it has attempts for fifteen.
#[tokio::test]
async fn racing_writers_leave_the_highest_version() {
    let (source, _db) = connect("race").await;
    let dave = uid("dave");
    source
        .load_or_create(&dave, t("2026-03-01T08:00:00Z"))
        .await
        .unwrap();
    let writes = (1..=12u32).map(|v| {
        let source = source.clone();
        let dave = dave.clone();
        tokio::spawn(async move {
            let state = snapshot(v.into(), v, 0, "2026-03-01T08:00:00Z");
            source.write(&dave, &state, after(&state)).await
        })
    });
    for write in writes.collect::<Vec<_>>() {
        write.await.unwrap().expect("every write decides");
    }
    let stored = source.load(&dave, t("2026-03-01T08:00:00Z")).await.unwrap();
    assert_eq!(stored, Some(snapshot(12, 12, 0, "2026-03-01T08:00:00Z")));
}

#[tokio::test]
async fn a_field_of_the_wrong_type_is_a_clear_error() {
    let (source, db) = connect("corrupt").await;
    put_raw(
        &db,
        "erin",
        vec![
            ("ticketCount", ValueType::StringValue("five".into())),
            (
                "lastTicketRefill",
                ValueType::StringValue("yesterday".into()),
            ),
        ],
    )
    .await;
    let erin = uid("erin");
    let now = t("2026-03-01T08:00:00Z");
    for error in [
        source.load(&erin, now).await.unwrap_err(),
        source.load_or_create(&erin, now).await.unwrap_err(),
    ] {
        assert_eq!(error.kind(), StoreErrorKind::Corrupt);
        assert!(
            error.to_string().contains(
                "users/erin: field `ticketCount` holds the string \"five\"; expected an integer"
            ),
            "{error}"
        );
    }
    let document = raw_document(&db, "erin").await.unwrap();
    assert_eq!(
        field(&document, "ticketCount"),
        &ValueType::StringValue("five".into()),
        "a corrupt document is left as it is"
    );
}

#[tokio::test]
async fn custom_collection_and_field_names() {
    let db = FirestoreEmulator::shared().client("custom").await;
    let source = FirestoreSource::new(
        db.clone(),
        [TicketKind::new("upload", 5).fields("uploads.left", "uploads_refilled")],
    )
    .collection("accounts")
    .version_field("rev")
    .timeout(FIRESTORE_TIMEOUT);
    let frank = uid("frank");
    let mut state = snapshot(3, 4, 0, "2026-03-01T08:00:00Z");
    state.balances.truncate(1);
    source
        .load_or_create(&frank, t("2026-03-01T08:00:00Z"))
        .await
        .unwrap();
    source.write(&frank, &state, after(&state)).await.unwrap();
    let document = db
        .fluent()
        .select()
        .by_id_in("accounts")
        .one("frank")
        .await
        .unwrap()
        .expect("written under accounts/");
    assert_eq!(
        field(&document, "uploads.left"),
        &ValueType::IntegerValue(4)
    );
    assert_eq!(field(&document, "rev"), &ValueType::IntegerValue(3));
    assert_eq!(
        source
            .load(&frank, t("2026-03-02T00:00:00Z"))
            .await
            .unwrap(),
        Some(state)
    );
}

#[tokio::test]
async fn a_custom_token_uid_lives_under_its_encoded_document_id() {
    let (source, db) = connect("wide-uids").await;
    let now = t("2026-03-01T08:00:00Z");
    for (raw, id) in [("auth0|123", "auth0%7C123"), ("../admin", "%2E%2E%2Fadmin")] {
        let uid = Uid::parse_with(raw, UidPolicy::Firebase).unwrap();
        source.load_or_create(&uid, now).await.unwrap();
        let document = raw_document(&db, id)
            .await
            .expect("created under the encoded id");
        assert_eq!(field(&document, "ticketCount"), &ValueType::IntegerValue(5));
        assert!(source.load(&uid, now).await.unwrap().is_some(), "{raw}");
    }
    assert!(raw_document(&db, "auth0|123").await.is_none());
}
