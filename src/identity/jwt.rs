use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::bearer::bearer_token;
use super::jwt_verification::{TokenHeader, decode, read_header};
use super::verified_tokens::{Verified, VerifiedTokens};
use super::{IdentityError, IdentityExtractor};
use crate::uid::{Uid, UidPolicy};

/// Verifies an `Authorization: Bearer <JWT>` token; its `sub` claim is the
/// uid.
///
/// Checks the signature (HS256 with a shared secret, or RS256 with the given
/// public keys, chosen by the token's `kid` when there are several), that
/// `exp` is present and in the future and `nbf`, if present, in the past
/// (read against the layer's clock, with a small leeway), and `iss`/`aud`
/// (always with RS256, when configured with HS256), all through
/// `jsonwebtoken::decode`. Tokens over 8 KiB, unsigned tokens and tokens
/// whose header lists critical extensions (`crit`) are refused before
/// anything is decoded. A request with more than one `Authorization` header
/// is refused. Any failure is a 401.
///
/// A token that verified is remembered (up to 10,000 by default, see
/// [`JwtIdentity::remember`]), so a client sending the same token again pays
/// only for a lookup and the expiry check.
///
/// ```
/// use tower_tickets::identity::JwtIdentity;
///
/// let verify = JwtIdentity::hs256(b"an example: use 32 or more random bytes")
///     .issuer("https://securetoken.google.com/my-project")
///     .audience("my-project");
/// # let _ = verify;
/// ```
#[derive(Clone)]
pub struct JwtIdentity {
    keys: Keys,
    validation: Validation,
    leeway_secs: i64,
    uid_policy: UidPolicy,
    /// Shared by clones: they verify alike. Every setter starts a new one.
    verified: Arc<VerifiedTokens>,
}

/// How many verified tokens a [`JwtIdentity`] remembers by default.
const REMEMBERED_TOKENS: usize = 10_000;

/// The longest [`JwtIdentity::leeway`].
const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// The shortest HS256 secret that is not warned about: as long as the hash
/// (RFC 7518, section 3.2).
const MIN_SECRET_LEN: usize = 32;

#[derive(Clone)]
enum Keys {
    One(DecodingKey),
    ById(HashMap<String, DecodingKey>),
}

impl fmt::Debug for JwtIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtIdentity")
            .field("algorithms", &self.validation.algorithms)
            .field("issuer", &self.validation.iss)
            .field("audience", &self.validation.aud)
            .finish_non_exhaustive()
    }
}

/// Failure to read a public key given to [`JwtIdentity::rs256`].
#[derive(Debug)]
pub struct InvalidKey {
    kid: String,
    source: jsonwebtoken::errors::Error,
}

impl fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "public key {:?} is not an RSA public key in PEM form: {}",
            self.kid, self.source
        )
    }
}

impl std::error::Error for InvalidKey {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Makes `jsonwebtoken` use its RustCrypto backend, unless the app installed
/// another one.
///
/// `jsonwebtoken` picks its backend from its crate features, and cannot when
/// another crate of the app enables its `aws_lc_rs` feature next to our
/// `rust_crypto` (Google's auth crates do, under the `firestore` feature):
/// every signature would then panic. Installing one makes the choice.
pub(super) fn select_jwt_crypto() {
    // Err: a provider is installed already, the app's or ours; keep it.
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

impl JwtIdentity {
    fn with(algorithm: Algorithm, keys: Keys) -> Self {
        select_jwt_crypto();
        let mut validation = Validation::new(algorithm);
        // Expiry is checked against the injected clock in `identify`.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            keys,
            validation,
            leeway_secs: 30,
            uid_policy: UidPolicy::Strict,
            verified: Arc::new(VerifiedTokens::new(REMEMBERED_TOKENS)),
        }
    }

    /// How many verified tokens to remember (default 10,000; 0 verifies
    /// every request's signature).
    pub fn remember(mut self, tokens: usize) -> Self {
        self.verified = Arc::new(VerifiedTokens::new(tokens));
        self
    }

    /// Forgets the tokens verified under the previous settings.
    fn reconfigured(mut self) -> Self {
        self.verified = Arc::new(VerifiedTokens::new(self.verified.capacity()));
        self
    }

    /// Tokens signed with HS256 and `secret`, which should be at least 32
    /// random bytes (RFC 7518, section 3.2); a shorter one is logged as a
    /// warning, since it can be guessed offline from any token it signed.
    pub fn hs256(secret: &[u8]) -> Self {
        if secret.len() < MIN_SECRET_LEN {
            tracing::warn!(
                bytes = secret.len(),
                "the HS256 secret is shorter than {MIN_SECRET_LEN} bytes: tokens signed with it \
                 can be forged once it is guessed; use at least {MIN_SECRET_LEN} random bytes"
            );
        }
        Self::with(
            Algorithm::HS256,
            Keys::One(DecodingKey::from_secret(secret)),
        )
    }

    /// Firebase Auth ID tokens of the project `project_id`, signed by one of
    /// Google's `keys` (`(kid, PEM)` pairs, as Google publishes them): RS256
    /// with `iss` `https://securetoken.google.com/<project_id>` and `aud`
    /// `<project_id>`.
    ///
    /// The keys are fixed: Google rotates its keys every few hours, after
    /// which tokens are refused. A real app uses `FirebaseIdentity` (feature
    /// `firebase`), which fetches them as they change.
    pub fn firebase<I, K, P>(project_id: &str, keys: I) -> Result<Self, InvalidKey>
    where
        I: IntoIterator<Item = (K, P)>,
        K: Into<String>,
        P: AsRef<[u8]>,
    {
        let issuer = format!("https://securetoken.google.com/{project_id}");
        Self::rs256(&issuer, project_id, keys)
    }

    /// Tokens signed with RS256 by one of `keys`: `(kid, PEM public key)`
    /// pairs. With several keys the token's `kid` header picks one (as with
    /// Firebase's rotating keys); with one, a token without `kid` uses it.
    ///
    /// The `iss` claim must equal `issuer` and `aud` name `audience`: public
    /// keys are often shared by many apps (every Firebase project's tokens
    /// are signed by the same Google keys), so the signature alone would
    /// accept another app's users.
    pub fn rs256<I, K, P>(issuer: &str, audience: &str, keys: I) -> Result<Self, InvalidKey>
    where
        I: IntoIterator<Item = (K, P)>,
        K: Into<String>,
        P: AsRef<[u8]>,
    {
        let mut by_id = HashMap::new();
        for (kid, pem) in keys {
            let kid = kid.into();
            let key = DecodingKey::from_rsa_pem(pem.as_ref()).map_err(|source| InvalidKey {
                kid: kid.clone(),
                source,
            })?;
            by_id.insert(kid, key);
        }
        Ok(Self::with(Algorithm::RS256, Keys::ById(by_id))
            .issuer(issuer)
            .audience(audience))
    }

    /// Requires the `iss` claim to equal `issuer`.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self.validation.required_spec_claims.insert("iss".into());
        self.reconfigured()
    }

    /// Requires the `aud` claim to contain `audience`.
    pub fn audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        self.validation.required_spec_claims.insert("aud".into());
        self.reconfigured()
    }

    /// Which `sub` claims are uids (default [`UidPolicy::Strict`];
    /// [`UidPolicy::Firebase`] for uids such as `auth0|123`).
    pub fn uid_policy(mut self, policy: UidPolicy) -> Self {
        self.uid_policy = policy;
        self.reconfigured()
    }

    /// Tolerance for clock differences when checking `exp` and `nbf`
    /// (default 30 s, at most 5 min: a longer one is cut to 5 min, since a
    /// leeway of hours would accept tokens long expired).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway_secs = leeway.min(MAX_LEEWAY).as_secs() as i64;
        self
    }

    /// The key that signed a token with this header.
    fn key_for(&self, header: &Header) -> Result<&DecodingKey, IdentityError> {
        match &self.keys {
            Keys::One(key) => Ok(key),
            Keys::ById(keys) => {
                let key = match &header.kid {
                    Some(kid) => keys.get(kid),
                    None if keys.len() == 1 => keys.values().next(),
                    None => None,
                };
                key.ok_or_else(|| IdentityError::Invalid {
                    reason: "the token is signed by an unknown key".into(),
                })
            }
        }
    }
}

/// The claims a [`JwtIdentity`] reads; `decode` checked `sub` and `exp`
/// are there.
#[derive(Deserialize)]
pub(super) struct Claims {
    sub: String,
    exp: i64,
    /// Any JSON, so that a malformed `nbf` gets an error that names it.
    #[serde(default)]
    nbf: Option<serde_json::Value>,
}

impl IdentityExtractor for JwtIdentity {
    fn identify(&self, request: &Parts, now: DateTime<Utc>) -> Result<Uid, IdentityError> {
        let token = bearer_token(request)?;
        self.verified
            .uid_of(token, now, self.leeway_secs, |token| self.verify(token))
    }
}

impl JwtIdentity {
    /// Verifies a token not met before: its signature and claims, by
    /// `jsonwebtoken::decode`; `exp` and `nbf` are then checked against the
    /// layer's clock by the caller.
    fn verify(&self, token: &str) -> Result<Verified, IdentityError> {
        let TokenHeader::Signed(header) = read_header(token)? else {
            return Err(IdentityError::Invalid {
                reason: "the token is not signed".into(),
            });
        };
        let claims: Claims = decode(token, self.key_for(&header)?, &self.validation)?;
        let nbf = match claims.nbf {
            None => None,
            Some(nbf) => Some(nbf.as_i64().ok_or_else(|| IdentityError::Invalid {
                reason: "the token's nbf claim is not a number of seconds".into(),
            })?),
        };
        Ok(Verified {
            uid: Uid::parse_with(&claims.sub, self.uid_policy)?,
            exp: claims.exp,
            nbf,
        })
    }
}

/// Mints HS256 tokens that [`JwtIdentity::hs256`] with the same secret
/// accepts: for demos, tests and apps that issue their own tokens.
#[derive(Clone)]
pub struct JwtIssuer {
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
}

impl fmt::Debug for JwtIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtIssuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct IssuedClaims<'a> {
    sub: &'a str,
    iat: i64,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

impl JwtIssuer {
    /// An issuer signing with HS256 and `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        select_jwt_crypto();
        Self {
            key: EncodingKey::from_secret(secret),
            issuer: None,
            audience: None,
        }
    }

    /// Puts `issuer` in the `iss` claim.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Puts `audience` in the `aud` claim.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// A token for `uid`, issued at `now`, valid for `ttl`.
    pub fn issue(&self, uid: &Uid, now: DateTime<Utc>, ttl: Duration) -> String {
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let claims = IssuedClaims {
            sub: uid.as_str(),
            iat: now.timestamp(),
            exp: now.timestamp().saturating_add(ttl),
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        // HS256 over a serializable struct cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key).unwrap_or_default()
    }
}
