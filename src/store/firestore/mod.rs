//! Firestore: the source of truth that the app and its UI read.
//!
//! Each user is one document, `users/{uid}` by default, holding per kind a
//! count and a last-refill timestamp (the field names each [`TicketKind`]
//! configures) and the state's version, lineage and origins. A write lands
//! only where its [`WriteCondition`] allows (the new state descends from the
//! stored one), so a late or stale write-back cannot undo a newer state.
//! Each write is a read followed by a write conditioned on the document's
//! update time, retried when another writer got in between (see `attempts`
//! for how often and how soon).

mod attempts;
mod document;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use firestore::errors::FirestoreError;
use firestore::gcloud_sdk::google::firestore::v1::Document;
use firestore::timestamp_utils::from_timestamp;
use firestore::{FirestoreDb, FirestoreDbOptions, FirestoreWritePrecondition};

use self::attempts::{Attempts, WRITE_ATTEMPTS};
use self::document::{DocumentLayout, StoredDocument};
use super::breaker::Breaker;
use super::source::{SourceOfTruth, UserSnapshot, WriteCondition, WriteOutcome};
use super::{StoreError, StoreErrorKind, StoreFuture};
use crate::kind::TicketKind;
use crate::telemetry;
use crate::uid::Uid;

/// How long one operation (all its round trips) may take by default.
pub const DEFAULT_FIRESTORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Failed operations in a row that open the breaker, by default.
const BREAKER_FAILURES: u32 = 5;

/// How long an open breaker answers at once before it probes, by default.
const BREAKER_OPEN_FOR: Duration = Duration::from_secs(1);

/// Users' balances in Firestore documents. Cheap to clone.
///
/// ```no_run
/// use tower_tickets::TicketKind;
/// use tower_tickets::store::FirestoreSource;
///
/// # async fn run() -> Result<(), tower_tickets::store::StoreError> {
/// // Reads FIRESTORE_EMULATOR_HOST for the emulator, or finds Google
/// // credentials the usual way (GOOGLE_APPLICATION_CREDENTIALS, gcloud, the
/// // metadata server).
/// let source = FirestoreSource::connect(
///     "my-project",
///     [TicketKind::new("upload", 5), TicketKind::new("ai", 3)],
/// )
/// .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FirestoreSource {
    db: FirestoreDb,
    layout: Arc<DocumentLayout>,
    timeout: Duration,
    /// Shared by clones: they call the same Firestore.
    breaker: Arc<Breaker>,
}

impl std::fmt::Debug for FirestoreSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirestoreSource")
            .field("database", self.db.get_database_path())
            .field("layout", &self.layout)
            .field("timeout", &self.timeout)
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl FirestoreSource {
    /// Connects to the `(default)` database of `project_id`.
    ///
    /// With `FIRESTORE_EMULATOR_HOST` set (`127.0.0.1:8080`, say), talks to
    /// that emulator without credentials. Otherwise the `firestore` crate's
    /// credential discovery applies: `GOOGLE_APPLICATION_CREDENTIALS`, then
    /// gcloud's application-default credentials, then the metadata server of
    /// Google Cloud runtimes.
    ///
    /// `kinds` are the kinds stored in each document; pass the same kinds as
    /// to the [`Tickets`](crate::Tickets) registry.
    pub async fn connect(
        project_id: &str,
        kinds: impl IntoIterator<Item = TicketKind>,
    ) -> Result<Self, StoreError> {
        let options = FirestoreDbOptions::new(project_id.to_string())
            .with_request_timeout(DEFAULT_FIRESTORE_TIMEOUT)
            .with_max_retries(1);
        let db = FirestoreDb::with_options(options).await.map_err(|e| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!("could not set up a Firestore client for project {project_id}"),
            )
            .with_source(e)
        })?;
        Ok(Self::new(db, kinds))
    }

    /// Stores balances through `db`, a client you configured yourself.
    pub fn new(db: FirestoreDb, kinds: impl IntoIterator<Item = TicketKind>) -> Self {
        Self {
            db,
            layout: Arc::new(DocumentLayout {
                collection: "users".into(),
                version_field: "ticketsVersion".into(),
                kinds: kinds.into_iter().map(Arc::new).collect(),
            }),
            timeout: DEFAULT_FIRESTORE_TIMEOUT,
            breaker: Arc::new(Breaker::new(
                "Firestore",
                BREAKER_FAILURES,
                BREAKER_OPEN_FOR,
            )),
        }
    }

    /// The collection of user documents (defaults to `users`).
    pub fn collection(self, collection: impl Into<String>) -> Self {
        self.with_layout(|layout| layout.collection = collection.into())
    }

    /// The field holding each document's version (defaults to
    /// `ticketsVersion`).
    pub fn version_field(self, field: impl Into<String>) -> Self {
        self.with_layout(|layout| layout.version_field = field.into())
    }

    /// How long one operation, with all its round trips, may take before it
    /// fails with [`StoreErrorKind::Timeout`] (defaults to
    /// [`DEFAULT_FIRESTORE_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// After `failures` operations in a row that timed out or could not
    /// reach Firestore (default 5), fail every operation at once with
    /// [`StoreErrorKind::CircuitOpen`] for `open_for` (default 1 s), then let
    /// one probe through: a Firestore that hangs costs requests one timeout
    /// each only until the breaker opens. Operations that were in flight
    /// together when they failed count as one failure.
    pub fn breaker(mut self, failures: u32, open_for: Duration) -> Self {
        self.breaker = Arc::new(Breaker::new("Firestore", failures, open_for));
        self
    }

    fn with_layout(mut self, change: impl FnOnce(&mut DocumentLayout)) -> Self {
        let mut layout = DocumentLayout {
            collection: self.layout.collection.clone(),
            version_field: self.layout.version_field.clone(),
            kinds: self.layout.kinds.clone(),
        };
        change(&mut layout);
        self.layout = Arc::new(layout);
        self
    }

    /// Reads the user's balances; `None` when there is no document. Kinds
    /// the document lacks hold their initial balance, refilled `now`.
    pub async fn load(
        &self,
        uid: &Uid,
        now: DateTime<Utc>,
    ) -> Result<Option<UserSnapshot>, StoreError> {
        telemetry::cache_missed();
        self.bounded("read", uid, async {
            Ok(self.read(uid, now).await?.map(|stored| stored.snapshot))
        })
        .await
    }

    /// Reads the user's balances, first creating the document with each
    /// kind's initial balance (refilled `now`, version 0) when it is absent,
    /// or adding the fields of the kinds it lacks.
    pub async fn load_or_create(
        &self,
        uid: &Uid,
        now: DateTime<Utc>,
    ) -> Result<UserSnapshot, StoreError> {
        telemetry::cache_missed();
        // `None`: other writers won every attempt (Firestore answered: not a
        // failure for the breaker).
        let created = self.bounded("create", uid, async {
            let mut attempts = Attempts::default();
            while attempts.next().await {
                let stored = match self.read(uid, now).await? {
                    Some(stored) if stored.complete => return Ok(Some(stored.snapshot)),
                    Some(stored) => stored,
                    None => StoredDocument {
                        snapshot: self.layout.initial(now),
                        complete: false,
                        update_time: None,
                    },
                };
                if self
                    .conditional_write(uid, &stored.snapshot, &stored)
                    .await?
                {
                    return Ok(Some(stored.snapshot));
                }
            }
            Ok(None)
        });
        created.await?.ok_or_else(|| contended(uid))
    }

    /// Stores `snapshot` if `condition` allows the stored document (an
    /// absent document allows nothing: the user was deleted).
    pub async fn write(
        &self,
        uid: &Uid,
        snapshot: &UserSnapshot,
        condition: WriteCondition,
    ) -> Result<WriteOutcome, StoreError> {
        // `None` as in `load_or_create`.
        let written = self.bounded("write", uid, async {
            let mut attempts = Attempts::default();
            while attempts.next().await {
                // Kinds the document lacks read as refilled at the epoch:
                // the write replaces every kind anyway.
                let stored = match self.read(uid, DateTime::UNIX_EPOCH).await? {
                    Some(stored) if condition.allows(Some(stored.snapshot.point())) => stored,
                    stored => {
                        return Ok(Some(WriteOutcome::Refused {
                            stored: stored.map(|s| s.snapshot),
                        }));
                    }
                };
                if self.conditional_write(uid, snapshot, &stored).await? {
                    return Ok(Some(WriteOutcome::Written));
                }
            }
            Ok(None)
        });
        written.await?.ok_or_else(|| contended(uid))
    }

    /// Reads and parses the document.
    async fn read(
        &self,
        uid: &Uid,
        now: DateTime<Utc>,
    ) -> Result<Option<StoredDocument>, StoreError> {
        let document = self
            .db
            .fluent()
            .select()
            .by_id_in(&self.layout.collection)
            .one(uid.encoded())
            .await
            .map_err(|e| failed("read", &self.layout.path(uid), e))?;
        document
            .map(|d| self.layout.parse(uid, &d, now))
            .transpose()
    }

    /// Writes `snapshot` if the document is still as `read` found it;
    /// `false` when another writer changed it in between.
    async fn conditional_write(
        &self,
        uid: &Uid,
        snapshot: &UserSnapshot,
        read: &StoredDocument,
    ) -> Result<bool, StoreError> {
        let precondition = match read.update_time {
            Some(time) => FirestoreWritePrecondition::UpdateTime(
                from_timestamp(time).map_err(|e| failed("write", &self.layout.path(uid), e))?,
            ),
            None => FirestoreWritePrecondition::Exists(false),
        };
        let document = Document {
            name: format!("{}/{}", self.db.get_documents_path(), self.layout.path(uid)),
            fields: self.layout.fields(snapshot),
            ..Document::default()
        };
        let written = self
            .db
            .fluent()
            .update()
            .fields(self.layout.field_mask())
            .in_col(&self.layout.collection)
            .precondition(precondition)
            .return_only_fields([self.layout.version_field.as_str()])
            .document(document)
            .execute()
            .await;
        match written {
            Ok(_) => {
                telemetry::firestore_written();
                Ok(true)
            }
            Err(e) if is_lost_race(&e) => Ok(false),
            Err(e) => Err(failed("write", &self.layout.path(uid), e)),
        }
    }

    /// Runs `operation` within the timeout, under the breaker.
    async fn bounded<T>(
        &self,
        action: &str,
        uid: &Uid,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let permit = self.breaker.admit()?;
        let outcome = tokio::time::timeout(self.timeout, operation)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::new(
                    StoreErrorKind::Timeout,
                    format!(
                        "Firestore did not complete the {action} of {} within {:?}",
                        self.layout.path(uid),
                        self.timeout
                    ),
                ))
            });
        match &outcome {
            Err(e)
                if matches!(
                    e.kind(),
                    StoreErrorKind::Timeout | StoreErrorKind::Unavailable
                ) =>
            {
                permit.failed();
            }
            // Firestore answered, if only that the data is wrong.
            _ => permit.succeeded(),
        }
        outcome
    }
}

impl SourceOfTruth for FirestoreSource {
    fn kinds(&self) -> &[Arc<TicketKind>] {
        &self.layout.kinds
    }

    fn load(&self, uid: &Uid, now: DateTime<Utc>) -> StoreFuture<Option<UserSnapshot>> {
        let (source, uid) = (self.clone(), uid.clone());
        Box::pin(async move { FirestoreSource::load(&source, &uid, now).await })
    }

    fn load_or_create(&self, uid: &Uid, now: DateTime<Utc>) -> StoreFuture<UserSnapshot> {
        let (source, uid) = (self.clone(), uid.clone());
        Box::pin(async move { FirestoreSource::load_or_create(&source, &uid, now).await })
    }

    fn write(
        &self,
        uid: &Uid,
        state: &UserSnapshot,
        condition: WriteCondition,
    ) -> StoreFuture<WriteOutcome> {
        let (source, uid, state) = (self.clone(), uid.clone(), state.clone());
        Box::pin(async move { FirestoreSource::write(&source, &uid, &state, condition).await })
    }
}

/// Whether a conditional write failed only because its precondition no
/// longer held (another writer changed or created the document).
fn is_lost_race(error: &FirestoreError) -> bool {
    match error {
        FirestoreError::DataConflictError(_) => true,
        FirestoreError::DatabaseError(e) => e.public.code == "FailedPrecondition",
        _ => false,
    }
}

fn failed(action: &str, path: &str, error: FirestoreError) -> StoreError {
    let kind = match &error {
        FirestoreError::DatabaseError(e) if e.public.code == "DeadlineExceeded" => {
            StoreErrorKind::Timeout
        }
        _ => StoreErrorKind::Unavailable,
    };
    StoreError::new(kind, format!("Firestore {action} of {path} failed")).with_source(error)
}

fn contended(uid: &Uid) -> StoreError {
    StoreError::new(
        StoreErrorKind::Unavailable,
        format!(
            "other writers kept changing the Firestore document of user {uid}; \
             gave up after {WRITE_ATTEMPTS} attempts"
        ),
    )
}
