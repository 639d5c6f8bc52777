use chrono::{DateTime, Utc};
use http::HeaderName;
use http::request::Parts;

use super::{IdentityError, IdentityExtractor, only_header};
use crate::uid::Uid;

/// Takes the uid from a plain request header, e.g. `X-User-Id`.
///
/// **Development only.** Nothing is verified: any client can spend any
/// user's tickets by sending another uid. Use it for local experiments, or
/// behind a trusted proxy that strips the header from client requests and
/// sets it itself. The value is still validated as a [`Uid`], and a request
/// that repeats the header is refused.
#[derive(Debug, Clone)]
pub struct HeaderIdentity {
    header: HeaderName,
}

impl HeaderIdentity {
    /// Reads the uid from `header`.
    pub fn new(header: HeaderName) -> Self {
        Self { header }
    }
}

impl IdentityExtractor for HeaderIdentity {
    fn identify(&self, request: &Parts, _now: DateTime<Utc>) -> Result<Uid, IdentityError> {
        let value = only_header(request, &self.header, "a user id header")?;
        let raw = value.to_str().map_err(|_| IdentityError::Invalid {
            reason: "the user id header is not visible ASCII".into(),
        })?;
        Ok(Uid::parse(raw)?)
    }
}
