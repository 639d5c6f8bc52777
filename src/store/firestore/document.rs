//! The user document: which fields hold what, and their Firestore types.
//!
//! Per kind, a count (a Firestore integer) and a last-refill instant (a
//! Firestore timestamp), under the field names the kind configures; plus,
//! for the whole user, the state's version (`ticketsVersion`), lineage
//! (`ticketsLineage`, an integer) and the lineage's origins
//! (`ticketsOrigins`, a string of `lineage@version` points; see
//! [`crate::store::source`]) and a digest of the state (`ticketsDigest`).
//! Other fields of the document (the app's profile data) are never read or
//! written.
//!
//! # Edits made straight to the document
//! The digest is how a state this crate wrote is told from one somebody
//! else wrote (the Firebase console, a Cloud Function, the app's own
//! sign-up code): such an editor changes a count or a refill time and
//! leaves the digest as it was. A document whose digest does not match what
//! it holds is read as an **edit**: a state of no lineage, versioned by
//! Firestore's update time, with no origins. No write of a Redis lineage is
//! allowed over it (see [`WriteCondition`](crate::store::source::WriteCondition)):
//! the lineage is refused, dropped and reloaded from the edit, so no later
//! write of this crate undoes it (DESIGN.md §4).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use firestore::gcloud_sdk::google::firestore::v1::value::ValueType;
use firestore::gcloud_sdk::google::firestore::v1::{Document, Value};
use firestore::gcloud_sdk::prost_types::Timestamp;
use sha2::{Digest, Sha256};

use crate::kind::TicketKind;
use crate::store::source::{Origins, UserSnapshot};
use crate::store::{KindBalance, StoreError, StoreErrorKind};
use crate::uid::Uid;

/// The collection and field names of user documents.
#[derive(Debug)]
pub(super) struct DocumentLayout {
    pub(super) collection: String,
    pub(super) version_field: String,
    pub(super) kinds: Vec<Arc<TicketKind>>,
}

/// The field holding the lineage of the stored state.
const LINEAGE_FIELD: &str = "ticketsLineage";
/// The field holding where that lineage came from.
const ORIGINS_FIELD: &str = "ticketsOrigins";
/// The field holding the digest of the state this crate wrote.
const DIGEST_FIELD: &str = "ticketsDigest";

/// A stored document, read through a [`DocumentLayout`].
#[derive(Debug)]
pub(super) struct StoredDocument {
    /// The balances; kinds the document lacks hold their initial balance.
    pub(super) snapshot: UserSnapshot,
    /// Whether every kind had its fields (`false`: the document needs a
    /// write to hold the initial balances).
    pub(super) complete: bool,
    /// Firestore's last-update instant, the precondition of the next write.
    pub(super) update_time: Option<Timestamp>,
}

impl DocumentLayout {
    /// The user's document path relative to the database's documents; its
    /// id is the uid's safe encoding (see [`Uid::encoded`]).
    pub(super) fn path(&self, uid: &Uid) -> String {
        format!("{}/{}", self.collection, uid.encoded())
    }

    /// A new user's balances: each kind's initial balance, refilled `now`.
    pub(super) fn initial(&self, now: DateTime<Utc>) -> UserSnapshot {
        UserSnapshot::initial(&self.kinds, now)
    }

    /// Reads `document`; kinds it lacks get their initial balance at `now`.
    /// A field of the wrong type is a [`StoreErrorKind::Corrupt`] error that
    /// names the document and the field.
    pub(super) fn parse(
        &self,
        uid: &Uid,
        document: &Document,
        now: DateTime<Utc>,
    ) -> Result<StoredDocument, StoreError> {
        let field = |name: &str| {
            document
                .fields
                .get(name)
                .and_then(|v| v.value_type.as_ref())
        };
        let corrupt = |name: &str, found: &ValueType, expected: &str| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                format!(
                    "Firestore document {}: field `{name}` holds {}; expected {expected}. \
                     Fix or delete the field; tower-tickets will not overwrite it",
                    self.path(uid),
                    describe(found),
                ),
            )
        };
        let counter = |name: &str| match field(name) {
            None => Ok(0),
            Some(ValueType::IntegerValue(v)) if *v >= 0 => Ok(*v as u64),
            Some(other) => Err(corrupt(name, other, "a non-negative integer")),
        };
        let version = counter(&self.version_field)?;
        let lineage = counter(LINEAGE_FIELD)?;
        let origins = match field(ORIGINS_FIELD) {
            None => Origins::none(),
            Some(ValueType::StringValue(text)) => text.parse().map_err(|_| {
                corrupt(
                    ORIGINS_FIELD,
                    field(ORIGINS_FIELD).expect("present"),
                    "lineage@version points",
                )
            })?,
            Some(other) => return Err(corrupt(ORIGINS_FIELD, other, "a string")),
        };
        let digest = match field(DIGEST_FIELD) {
            None => None,
            Some(ValueType::StringValue(text)) => Some(text.as_str()),
            Some(other) => return Err(corrupt(DIGEST_FIELD, other, "a string")),
        };
        let mut complete = true;
        let mut present = Vec::with_capacity(self.kinds.len());
        let mut balances = Vec::with_capacity(self.kinds.len());
        for kind in &self.kinds {
            let (count_name, refill_name) = (kind.count_field(), kind.refill_field());
            let balance = match (field(count_name), field(refill_name)) {
                (None, None) => {
                    complete = false;
                    KindBalance {
                        remaining: kind.initial_balance(),
                        last_refill: now,
                    }
                }
                (Some(count), Some(refill)) => KindBalance {
                    remaining: match count {
                        ValueType::IntegerValue(n) => u32::try_from(*n).map_err(|_| {
                            corrupt(count_name, count, "a count from 0 to 4294967295")
                        })?,
                        other => return Err(corrupt(count_name, other, "an integer")),
                    },
                    last_refill: match refill {
                        ValueType::TimestampValue(t) => from_timestamp(t)
                            .ok_or_else(|| corrupt(refill_name, refill, "a valid timestamp"))?,
                        other => return Err(corrupt(refill_name, other, "a timestamp")),
                    },
                },
                (Some(_), None) | (None, Some(_)) => {
                    return Err(StoreError::new(
                        StoreErrorKind::Corrupt,
                        format!(
                            "Firestore document {}: the {} kind needs both `{count_name}` and \
                             `{refill_name}`, and only one is present",
                            self.path(uid),
                            kind.name()
                        ),
                    ));
                }
            };
            if field(count_name).is_some() {
                present.push((kind.as_ref(), balance));
            }
            balances.push(balance);
        }
        // Somebody other than this crate wrote what the document holds when
        // its digest does not match.
        let edited = digest != Some(state_digest(version, lineage, &present).as_str());
        let written = UserSnapshot {
            version,
            lineage,
            origins,
            balances,
        };
        let snapshot = if !edited {
            written
        } else {
            // An edit: absolute, as of its commit, made on top of the state
            // this crate last wrote, whose charges it includes (a refund of
            // one gives back, on top of the edit).
            let committed = document.update_time.as_ref().map_or(0, |t| {
                let micros = t.seconds.saturating_mul(1_000_000) + i64::from(t.nanos / 1_000);
                u64::try_from(micros).unwrap_or(0)
            });
            UserSnapshot {
                version: committed.max(version),
                lineage: 0,
                origins: Origins::seeded_from(&written),
                balances: written.balances.clone(),
            }
        };
        Ok(StoredDocument {
            snapshot,
            complete,
            update_time: document.update_time,
        })
    }

    /// The fields that hold `snapshot`.
    pub(super) fn fields(&self, snapshot: &UserSnapshot) -> HashMap<String, Value> {
        let value = |value_type| Value {
            value_type: Some(value_type),
        };
        let integer = |n: u64| {
            value(ValueType::IntegerValue(
                i64::try_from(n).unwrap_or(i64::MAX),
            ))
        };
        let mut fields = HashMap::with_capacity(4 + 2 * self.kinds.len());
        fields.insert(self.version_field.clone(), integer(snapshot.version));
        fields.insert(LINEAGE_FIELD.into(), integer(snapshot.lineage));
        fields.insert(
            ORIGINS_FIELD.into(),
            value(ValueType::StringValue(snapshot.origins.to_string())),
        );
        let present: Vec<(&TicketKind, KindBalance)> = self
            .kinds
            .iter()
            .map(Arc::as_ref)
            .zip(snapshot.balances.iter().copied())
            .collect();
        fields.insert(
            DIGEST_FIELD.into(),
            value(ValueType::StringValue(state_digest(
                snapshot.version,
                snapshot.lineage,
                &present,
            ))),
        );
        for (kind, balance) in self.kinds.iter().zip(&snapshot.balances) {
            fields.insert(
                kind.count_field().to_string(),
                value(ValueType::IntegerValue(balance.remaining.into())),
            );
            fields.insert(
                kind.refill_field().to_string(),
                value(ValueType::TimestampValue(to_timestamp(balance.last_refill))),
            );
        }
        fields
    }

    /// The field paths a write replaces: this crate's fields, nothing else.
    pub(super) fn field_mask(&self) -> Vec<String> {
        [
            self.version_field.as_str(),
            LINEAGE_FIELD,
            ORIGINS_FIELD,
            DIGEST_FIELD,
        ]
        .into_iter()
        .chain(
            self.kinds
                .iter()
                .flat_map(|k| [k.count_field(), k.refill_field()]),
        )
        .map(field_path)
        .collect()
    }
}

/// The digest of a state as this crate writes it: its point and, per kind
/// the document holds, the kind's count and refill instant (to the
/// millisecond). 16 hex digits of SHA-256: enough to tell an edit from a
/// write, not a secret.
fn state_digest(version: u64, lineage: u64, kinds: &[(&TicketKind, KindBalance)]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!("{version}/{lineage}"));
    for (kind, balance) in kinds {
        hasher.update(format!(
            "/{}={}@{}",
            kind.name(),
            balance.remaining,
            balance.last_refill.timestamp_millis()
        ));
    }
    hasher.finalize()[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A field name as a Firestore field path: simple names as they are, others
/// quoted in backticks.
fn field_path(name: &str) -> String {
    let simple = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if simple {
        name.to_string()
    } else {
        format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
    }
}

fn describe(value: &ValueType) -> String {
    match value {
        ValueType::NullValue(_) => "null".into(),
        ValueType::BooleanValue(b) => format!("the boolean {b}"),
        ValueType::IntegerValue(n) => format!("the integer {n}"),
        ValueType::DoubleValue(x) => format!("the double {x}"),
        ValueType::TimestampValue(t) => format!("the timestamp {}s {}ns", t.seconds, t.nanos),
        ValueType::StringValue(s) => format!("the string {s:?}"),
        ValueType::BytesValue(_) => "bytes".into(),
        ValueType::ReferenceValue(r) => format!("a reference to {r}"),
        ValueType::GeoPointValue(_) => "a geo point".into(),
        ValueType::ArrayValue(_) => "an array".into(),
        ValueType::MapValue(_) => "a map".into(),
        _ => "a value of another type".into(),
    }
}

/// `instant` as a Firestore timestamp (stores keep millisecond precision).
fn to_timestamp(instant: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: instant.timestamp(),
        nanos: instant.timestamp_subsec_nanos() as i32,
    }
}

/// A Firestore timestamp, truncated to the millisecond like every instant a
/// store keeps.
fn from_timestamp(timestamp: &Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(timestamp.nanos).ok()?;
    let instant = DateTime::from_timestamp(timestamp.seconds, nanos)?;
    DateTime::from_timestamp_millis(instant.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> DocumentLayout {
        DocumentLayout {
            collection: "users".into(),
            version_field: "ticketsVersion".into(),
            kinds: vec![
                Arc::new(TicketKind::new("upload", 5)),
                Arc::new(TicketKind::new("ai", 3)),
            ],
        }
    }

    fn document(fields: &[(&str, ValueType)]) -> Document {
        Document {
            fields: fields
                .iter()
                .map(|(name, v)| {
                    (
                        name.to_string(),
                        Value {
                            value_type: Some(v.clone()),
                        },
                    )
                })
                .collect(),
            ..Document::default()
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn encoded_fields_parse_back_to_the_same_snapshot() {
        let layout = layout();
        let snapshot = UserSnapshot {
            version: 42,
            lineage: 7,
            origins: "3@40 1@12".parse().unwrap(),
            balances: vec![
                KindBalance {
                    remaining: 4,
                    last_refill: t("2026-01-01T10:00:00.123Z"),
                },
                KindBalance {
                    remaining: 0,
                    last_refill: t("2026-01-02T00:00:00Z"),
                },
            ],
        };
        let stored = Document {
            fields: layout.fields(&snapshot),
            ..Document::default()
        };
        let parsed = layout
            .parse(
                &Uid::parse("u1").unwrap(),
                &stored,
                t("2030-01-01T00:00:00Z"),
            )
            .unwrap();
        assert!(parsed.complete);
        assert_eq!(parsed.snapshot, snapshot);
        assert_eq!(
            stored.fields.keys().count(),
            layout.field_mask().len(),
            "the mask names every field written"
        );
    }

    #[test]
    fn missing_kinds_start_with_their_initial_balance() {
        let now = t("2026-03-01T08:00:00Z");
        let doc = document(&[
            ("email", ValueType::StringValue("a@b.c".into())),
            ("ticketCount", ValueType::IntegerValue(2)),
            (
                "lastTicketRefill",
                ValueType::TimestampValue(to_timestamp(now)),
            ),
        ]);
        let parsed = layout()
            .parse(&Uid::parse("u1").unwrap(), &doc, now)
            .unwrap();
        assert!(!parsed.complete);
        assert_eq!(parsed.snapshot.version, 0);
        assert_eq!(parsed.snapshot.balances[0].remaining, 2);
        assert_eq!(parsed.snapshot.balances[1].remaining, 3);
        assert_eq!(parsed.snapshot.balances[1].last_refill, now);
    }

    #[test]
    fn a_field_of_the_wrong_type_is_a_clear_error() {
        let now = t("2026-03-01T08:00:00Z");
        let uid = Uid::parse("u1").unwrap();
        let refill = (
            "lastTicketRefill",
            ValueType::TimestampValue(to_timestamp(now)),
        );
        let cases = [
            (
                vec![
                    ("ticketCount", ValueType::StringValue("5".into())),
                    refill.clone(),
                ],
                "field `ticketCount` holds the string \"5\"; expected an integer",
            ),
            (
                vec![("ticketCount", ValueType::IntegerValue(-1)), refill.clone()],
                "field `ticketCount` holds the integer -1; expected a count",
            ),
            (
                vec![
                    ("ticketCount", ValueType::IntegerValue(1)),
                    ("lastTicketRefill", ValueType::IntegerValue(1)),
                ],
                "field `lastTicketRefill` holds the integer 1; expected a timestamp",
            ),
            (
                vec![("ticketCount", ValueType::IntegerValue(1))],
                "the upload kind needs both `ticketCount` and `lastTicketRefill`",
            ),
            (
                vec![("ticketsVersion", ValueType::DoubleValue(1.5))],
                "field `ticketsVersion` holds the double 1.5",
            ),
        ];
        for (fields, expected) in cases {
            let error = layout().parse(&uid, &document(&fields), now).unwrap_err();
            assert_eq!(error.kind(), StoreErrorKind::Corrupt);
            let message = error.to_string();
            assert!(message.contains("users/u1"), "{message}");
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn unusual_field_names_are_quoted_in_masks() {
        assert_eq!(field_path("ticketCount"), "ticketCount");
        assert_eq!(field_path("_a1"), "_a1");
        assert_eq!(field_path("tickets.count"), "`tickets.count`");
        assert_eq!(field_path("1st"), "`1st`");
        assert_eq!(field_path("a`b"), "`a\\`b`");
    }
}
