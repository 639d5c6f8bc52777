//! `POST /api/uploads` (costs 1 upload ticket) and `GET /api/uploads`
//! (free): the images a user sent.
//!
//! Only each upload's size is kept, in memory: the demo is about tickets,
//! not storage.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Json, body::Bytes};
use chrono::SecondsFormat;
use parking_lot::Mutex;
use serde::Serialize;
use tower_tickets::{Balances, Charged, Tickets, Uid};

use crate::ids::new_upload_id;
use crate::problem::{Payload, Problems};

/// The largest image accepted.
pub const MAX_UPLOAD_BYTES: usize = 10 * 1024 * 1024;

/// Every user's uploads. Cheap to clone; clones share the same list.
#[derive(Clone, Default)]
pub struct Uploads(Arc<Mutex<HashMap<Uid, Vec<Upload>>>>);

/// One stored upload.
#[derive(Clone, Serialize)]
pub struct Upload {
    id: String,
    bytes: usize,
    uploaded_at: String,
}

#[derive(Serialize)]
pub struct Stored {
    #[serde(flatten)]
    upload: Upload,
    /// The upload balance after this upload's charge.
    tickets: Balances,
}

#[derive(Serialize)]
pub struct Listed {
    uploads: Vec<Upload>,
}

/// Stores the image in the body and answers 201 with its id, its size and
/// the balance left. The ticket layer has already charged 1 upload ticket; an
/// empty or unreadable body answers 4xx, which the layer refunds.
pub async fn store(
    State(uploads): State<Uploads>,
    State(tickets): State<Tickets>,
    Extension(charged): Extension<Charged>,
    problems: Problems,
    Payload(image): Payload<Bytes>,
) -> Result<(StatusCode, Json<Stored>), Response> {
    if image.is_empty() {
        return Err(problems.bad_request("the body is empty; send the image bytes"));
    }
    let now = tickets.now();
    let upload = Upload {
        id: new_upload_id(),
        bytes: image.len(),
        uploaded_at: now.to_rfc3339_opts(SecondsFormat::Secs, true),
    };
    uploads
        .0
        .lock()
        .entry(charged.uid.clone())
        .or_default()
        .push(upload.clone());
    tracing::info!(uid = %charged.uid, id = %upload.id, bytes = upload.bytes, "upload stored");
    Ok((
        StatusCode::CREATED,
        Json(Stored {
            upload,
            tickets: Balances {
                now,
                kinds: charged.balances,
            },
        }),
    ))
}

/// The caller's uploads, oldest first. Spends nothing.
pub async fn list(State(uploads): State<Uploads>, uid: Uid) -> Json<Listed> {
    let uploads = uploads.0.lock().get(&uid).cloned().unwrap_or_default();
    Json(Listed { uploads })
}
