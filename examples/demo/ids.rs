//! Random identifiers for users and uploads.

use rand::Rng;
use rand::distributions::Alphanumeric;
use tower_tickets::Uid;

/// A new user id shaped like a Firebase Auth uid: 28 characters of
/// `[A-Za-z0-9]`.
pub fn new_uid() -> Uid {
    Uid::parse(&random_alphanumeric(28)).expect("28 alphanumeric characters make a valid uid")
}

/// A new upload id shaped like a Firestore document id: 20 characters of
/// `[A-Za-z0-9]`.
pub fn new_upload_id() -> String {
    random_alphanumeric(20)
}

fn random_alphanumeric(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}
