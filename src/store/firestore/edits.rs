//! Firestore's change feed: a listen stream on the users collection that
//! reports documents somebody other than this crate changed or deleted.
//!
//! Every write to the collection streams to every listening instance, this
//! crate's own included (one small message per write: with one write per
//! user per second at most, about one message per active user per second
//! per instance); a document whose digest matches what it holds is this
//! crate's own write and is passed over (see `document.rs`). The stream
//! starts at the instant it is opened (no initial read of the collection)
//! and resumes from its last token when Firestore drops it. While it is down
//! an edit is not seen at once, but never undone: the next write round that
//! meets it is refused.

use std::collections::HashMap;

use chrono::{SecondsFormat, Utc};
use firestore::gcloud_sdk::google::firestore::v1::listen_response::ResponseType;
use firestore::{
    FirestoreDb, FirestoreInstant, FirestoreListenEvent, FirestoreListenerTarget,
    FirestoreListenerTargetParams, FirestoreListenerTargetResumeType,
    FirestoreMemListenStateStorage, FirestoreQueryParams, FirestoreTargetType,
};
use std::sync::Arc;
use tokio::sync::broadcast;

use super::document::DocumentLayout;
use crate::store::source::Edit;
use crate::uid::Uid;

/// The listen target's id (one target per listener).
const TARGET: u32 = 1;

/// How many edits the feed keeps for a follower that lags.
const FEED_CAPACITY: usize = 1024;

/// Opens the listen stream in the background; the feed it returns ends
/// (and the stream closes) once every receiver is dropped.
pub(super) fn follow(db: FirestoreDb, layout: Arc<DocumentLayout>) -> broadcast::Receiver<Edit> {
    let (feed, receiver) = broadcast::channel(FEED_CAPACITY);
    tokio::spawn(async move {
        if let Err(error) = listen(db, layout, feed).await {
            tracing::warn!(%error, "the Firestore change feed stopped; edits are found by write rounds only");
        }
    });
    receiver
}

async fn listen(
    db: FirestoreDb,
    layout: Arc<DocumentLayout>,
    feed: broadcast::Sender<Edit>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let start: FirestoreInstant = Utc::now()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
        .parse()?;
    let mut listener = db
        .create_listener(FirestoreMemListenStateStorage::new())
        .await?;
    let query = FirestoreQueryParams::new(layout.collection.as_str().into());
    listener.add_target(
        FirestoreListenerTargetParams::new(
            FirestoreListenerTarget::new(TARGET),
            FirestoreTargetType::Query(query),
            HashMap::new(),
        )
        .with_resume_type(FirestoreListenerTargetResumeType::ReadTime(start)),
    )?;
    let sender = feed.clone();
    listener
        .start(move |event| {
            let (feed, layout) = (sender.clone(), layout.clone());
            async move {
                if let Some(edit) = edit_of(&layout, event) {
                    // Nobody following is no error: the feed is closing.
                    let _ = feed.send(edit);
                }
                Ok(())
            }
        })
        .await?;
    feed.closed().await;
    listener.shutdown().await?;
    Ok(())
}

/// The edit an event reports, if it reports one.
fn edit_of(layout: &DocumentLayout, event: FirestoreListenEvent) -> Option<Edit> {
    let uid_of = |name: &str| Uid::from_encoded(name.rsplit('/').next()?);
    match event {
        ResponseType::DocumentChange(change) => {
            let document = change.document?;
            let uid = uid_of(&document.name)?;
            // A document this crate cannot read is not its edit to follow:
            // the next read says what is wrong with it.
            let stored = layout.parse(&uid, &document, Utc::now()).ok()?;
            stored.edited.then(|| Edit {
                uid,
                point: Some(stored.snapshot.point()),
            })
        }
        ResponseType::DocumentDelete(deleted) => Some(Edit {
            uid: uid_of(&deleted.document)?,
            point: None,
        }),
        ResponseType::DocumentRemove(removed) => Some(Edit {
            uid: uid_of(&removed.document)?,
            point: None,
        }),
        _ => None,
    }
}
