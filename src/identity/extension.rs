use chrono::{DateTime, Utc};
use http::request::Parts;

use super::{IdentityError, IdentityExtractor};
use crate::uid::Uid;

/// Reads the [`Uid`] that an authentication layer in front of this one put
/// in the request's extensions (`request.extensions_mut().insert(uid)`).
///
/// The authentication itself is that other layer's job; this extractor only
/// passes its verdict on. Without a `Uid` extension the request is a 401, so
/// a forgotten auth layer fails closed.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExtensionIdentity;

impl IdentityExtractor for ExtensionIdentity {
    fn identify(&self, request: &Parts, _now: DateTime<Utc>) -> Result<Uid, IdentityError> {
        request
            .extensions
            .get::<Uid>()
            .cloned()
            .ok_or(IdentityError::Missing {
                expected: "a Uid in the request extensions (is the authentication layer installed before the ticket layer?)",
            })
    }
}
