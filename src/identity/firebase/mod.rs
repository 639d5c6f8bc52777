//! Firebase Auth ID tokens, verified with Google's rotating signing keys
//! (DESIGN.md §6).

mod claims;
mod emulator;
mod key_cache;
mod key_set;
mod refresher;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::request::Parts;
use jsonwebtoken::{Algorithm, Validation};

use self::claims::{FirebaseClaims, SignInRules};
use self::emulator::{EMULATOR_HOST_VAR, emulator_host, unsigned_claims};
use self::key_cache::KeyCache;
use self::refresher::Refresher;
use super::bearer::bearer_token;
use super::jwt::select_jwt_crypto;
use super::jwt_verification::{TokenHeader, decode, read_header};
use super::verified_tokens::{Verified, VerifiedTokens};
use super::{IdentityError, IdentityExtractor};
use crate::uid::{Uid, UidPolicy};

/// Where Google publishes the keys that sign Firebase ID tokens (X.509
/// certificates by key id).
pub const GOOGLE_SECURETOKEN_KEYS_URL: &str =
    "https://www.googleapis.com/robot/v1/metadata/x509/securetoken@system.gserviceaccount.com";

/// How many verified tokens a [`FirebaseIdentity`] remembers by default.
const REMEMBERED_TOKENS: usize = 10_000;

/// The longest leeway for clock differences.
const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Verifies Firebase Auth ID tokens (`Authorization: Bearer <ID token>`) of
/// one project; the token's `sub` (the Firebase uid) is the uid.
///
/// A token must be signed (RS256) by one of the keys Google publishes for
/// Firebase, with `iss` `https://securetoken.google.com/<project>`, `aud`
/// `<project>`, `exp` in the future and `iat` and `auth_time` in the past
/// (give or take a leeway), and a `sub` that is a valid uid under the
/// identity's [`UidPolicy`]. The signature and `iss`/`aud` are checked by
/// `jsonwebtoken::decode`, through the same path as [`JwtIdentity`]'s; a
/// verified token is remembered, so a client sending it again pays for a
/// lookup only.
///
/// The keys are fetched by a background task started by
/// [`FirebaseIdentityBuilder::build`]: at once, again when their
/// `Cache-Control: max-age` runs out, and when a token names a key id not
/// seen yet (at most once every few seconds). While the key server is
/// unreachable the last keys fetched are kept. **A request never waits on a
/// fetch**: until the first keys arrive, or while a key new to this process
/// is fetched, it is answered 503 with `Retry-After`
/// ([`IdentityError::Unavailable`]); a token that no key could make valid is
/// a 401 at once.
///
/// With `FIREBASE_AUTH_EMULATOR_HOST` set, and only then, the tokens of the
/// Firebase Auth emulator (unsigned: `alg` `none`) are accepted instead,
/// with a warning logged when the identity is built, as Firebase's Admin SDK
/// does; no key is fetched then. Never set it in production.
///
/// ```no_run
/// # async fn example() -> Result<(), tower_tickets::identity::FirebaseSetupError> {
/// use tower_tickets::identity::FirebaseIdentity;
///
/// let identity = FirebaseIdentity::builder("my-project")
///     .refuse_anonymous()
///     .require_email_verified()
///     .build()?;
/// # let _ = identity;
/// # Ok(())
/// # }
/// ```
///
/// [`JwtIdentity`]: super::JwtIdentity
#[derive(Clone)]
pub struct FirebaseIdentity {
    inner: Arc<Inner>,
}

struct Inner {
    project: String,
    issuer: String,
    validation: Validation,
    rules: SignInRules,
    uid_policy: UidPolicy,
    leeway_secs: i64,
    verified: VerifiedTokens,
    /// `None` in emulator mode.
    keys: Option<Keys>,
}

/// The fetched keys and the task that fetches them.
struct Keys {
    cache: Arc<KeyCache>,
    /// Stops the task when the identity is dropped.
    _refresher: Refresher,
}

impl fmt::Debug for FirebaseIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FirebaseIdentity")
            .field("project", &self.inner.project)
            .field("rules", &self.inner.rules)
            .field("uid_policy", &self.inner.uid_policy)
            .field("emulator", &self.inner.keys.is_none())
            .finish_non_exhaustive()
    }
}

/// Configures a [`FirebaseIdentity`]; made by [`FirebaseIdentity::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct FirebaseIdentityBuilder {
    project: String,
    keys_url: String,
    rules: SignInRules,
    uid_policy: UidPolicy,
    leeway: Duration,
    remember: usize,
}

/// Why a [`FirebaseIdentity`] cannot be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum FirebaseSetupError {
    /// The project id is empty or holds characters no project id has.
    InvalidProject {
        /// The id given.
        project: String,
    },
    /// `build` was called outside a Tokio runtime, which the key refresher
    /// runs on.
    NoRuntime,
    /// The HTTP client that fetches the keys cannot be made.
    HttpClient(String),
}

impl fmt::Display for FirebaseSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidProject { project } => write!(
                f,
                "{project:?} is not a Firebase project id: give the id shown in the Firebase \
                 console's project settings, e.g. \"my-project-1234\""
            ),
            Self::NoRuntime => f.write_str(
                "FirebaseIdentity must be built inside a Tokio runtime (it fetches Google's \
                 signing keys in the background): build it in an async fn run by Tokio",
            ),
            Self::HttpClient(e) => write!(f, "cannot make the HTTP client for the keys: {e}"),
        }
    }
}

impl std::error::Error for FirebaseSetupError {}

impl FirebaseIdentity {
    /// Starts configuring the verification of `project`'s ID tokens.
    pub fn builder(project: impl Into<String>) -> FirebaseIdentityBuilder {
        FirebaseIdentityBuilder {
            project: project.into(),
            keys_url: GOOGLE_SECURETOKEN_KEYS_URL.into(),
            rules: SignInRules::default(),
            uid_policy: UidPolicy::Strict,
            leeway: Duration::from_secs(30),
            remember: REMEMBERED_TOKENS,
        }
    }

    /// Verifies a token not met before; its `exp` is then checked against
    /// the layer's clock by the caller.
    fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Verified, IdentityError> {
        let inner = &*self.inner;
        let claims: FirebaseClaims = match (read_header(token)?, &inner.keys) {
            (TokenHeader::Signed(header), Some(keys)) => {
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| IdentityError::Invalid {
                        reason: "the token names no signing key (kid)".into(),
                    })?;
                decode(token, &*keys.cache.key(kid, now)?, &inner.validation)?
            }
            (TokenHeader::Unsigned, None) => unsigned_claims(token, &inner.project, &inner.issuer)?,
            (TokenHeader::Signed(_), None) => {
                return Err(IdentityError::Invalid {
                    reason: format!(
                        "{EMULATOR_HOST_VAR} is set: only the Firebase Auth emulator's tokens \
                         are accepted"
                    ),
                });
            }
            (TokenHeader::Unsigned, Some(_)) => {
                return Err(IdentityError::Invalid {
                    reason: "the token is not signed".into(),
                });
            }
        };
        claims.check(&inner.rules, now, inner.leeway_secs)?;
        Ok(Verified {
            uid: Uid::parse_with(&claims.sub, inner.uid_policy)?,
            exp: claims.exp,
            nbf: None,
        })
    }
}

impl IdentityExtractor for FirebaseIdentity {
    fn identify(&self, request: &Parts, now: DateTime<Utc>) -> Result<Uid, IdentityError> {
        let token = bearer_token(request)?;
        self.inner
            .verified
            .uid_of(token, now, self.inner.leeway_secs, |token| {
                self.verify(token, now)
            })
    }
}

impl FirebaseIdentityBuilder {
    /// Fetches the keys from `url` instead of Google's
    /// ([`GOOGLE_SECURETOKEN_KEYS_URL`]): a JSON object of PEM certificates
    /// by key id, or a JWK Set. For tests and proxies.
    pub fn keys_url(mut self, url: impl Into<String>) -> Self {
        self.keys_url = url.into();
        self
    }

    /// Refuses anonymous sign-ins (`firebase.sign_in_provider` `anonymous`):
    /// each one is a new user with fresh tickets, for free.
    pub fn refuse_anonymous(mut self) -> Self {
        self.rules.refuse_anonymous = true;
        self
    }

    /// Requires `email_verified` to be `true`: an account made with an
    /// address its owner does not hold gets no tickets.
    pub fn require_email_verified(mut self) -> Self {
        self.rules.require_email_verified = true;
        self
    }

    /// Accepts only sign-ins with these providers
    /// (`firebase.sign_in_provider`: `password`, `google.com`, `phone`,
    /// `custom`, ...).
    pub fn allow_providers<I, P>(mut self, providers: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.rules.providers = Some(
            providers
                .into_iter()
                .map(Into::into)
                .collect::<HashSet<_>>(),
        );
        self
    }

    /// Which uids are accepted (default [`UidPolicy::Strict`], which every
    /// uid Firebase Auth generates fits; [`UidPolicy::Firebase`] for the
    /// uids of custom tokens).
    pub fn uid_policy(mut self, policy: UidPolicy) -> Self {
        self.uid_policy = policy;
        self
    }

    /// Tolerance for clock differences when checking `exp`, `iat` and
    /// `auth_time` (default 30 s, at most 5 min).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway.min(MAX_LEEWAY);
        self
    }

    /// How many verified tokens to remember (default 10,000; 0 verifies
    /// every request's signature).
    pub fn remember(mut self, tokens: usize) -> Self {
        self.remember = tokens;
        self
    }

    /// The identity, its key refresher started on the current Tokio
    /// runtime (in emulator mode: no refresher, and a warning logged).
    pub fn build(self) -> Result<FirebaseIdentity, FirebaseSetupError> {
        self.build_for(emulator_host())
    }

    /// [`Self::build`], with the Auth emulator at `emulator` if any.
    fn build_for(self, emulator: Option<String>) -> Result<FirebaseIdentity, FirebaseSetupError> {
        select_jwt_crypto();
        let project = self.project;
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':');
        if project.is_empty() || !project.chars().all(valid) {
            return Err(FirebaseSetupError::InvalidProject { project });
        }
        let issuer = format!("https://securetoken.google.com/{project}");
        let keys = match emulator {
            Some(host) => {
                tracing::warn!(
                    "{EMULATOR_HOST_VAR}={host} is set: the Firebase Auth emulator's unsigned \
                     tokens are accepted for project {project}, and no other; never set it in \
                     production"
                );
                None
            }
            None => {
                let runtime = tokio::runtime::Handle::try_current()
                    .map_err(|_| FirebaseSetupError::NoRuntime)?;
                let client = refresher::client()
                    .map_err(|e| FirebaseSetupError::HttpClient(e.to_string()))?;
                let cache = Arc::new(KeyCache::default());
                let refresher = Refresher::start(cache.clone(), client, self.keys_url, &runtime);
                Some(Keys {
                    cache,
                    _refresher: refresher,
                })
            }
        };
        let mut validation = Validation::new(Algorithm::RS256);
        // `exp` is checked against the layer's clock, with every use.
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.set_issuer(&[&issuer]);
        validation.set_audience(&[&project]);
        Ok(FirebaseIdentity {
            inner: Arc::new(Inner {
                leeway_secs: self.leeway.as_secs() as i64,
                verified: VerifiedTokens::new(self.remember),
                rules: self.rules,
                uid_policy: self.uid_policy,
                validation,
                issuer,
                project,
                keys,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-06-01T10:00:00Z".parse().unwrap()
    }

    fn parts(token: &str) -> Parts {
        let request = http::Request::builder()
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap();
        request.into_parts().0
    }

    /// A token as the Auth emulator issues them.
    fn unsigned(claims: serde_json::Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{header}.{claims}.")
    }

    fn emulator_claims(project: &str) -> serde_json::Value {
        let t = now().timestamp();
        json!({
            "iss": format!("https://securetoken.google.com/{project}"),
            "aud": project,
            "sub": "emulated",
            "iat": t - 10,
            "auth_time": t - 10,
            "exp": t + 3600,
            "firebase": {"sign_in_provider": "password"},
        })
    }

    #[tokio::test]
    async fn emulator_tokens_pass_only_in_emulator_mode() {
        let token = unsigned(emulator_claims("demo-p"));
        let emulated = FirebaseIdentity::builder("demo-p")
            .build_for(Some("127.0.0.1:9099".into()))
            .unwrap();
        assert_eq!(
            emulated.identify(&parts(&token), now()).unwrap().as_str(),
            "emulated"
        );
        let real = FirebaseIdentity::builder("demo-p")
            .keys_url("http://127.0.0.1:9/unused")
            .build_for(None)
            .unwrap();
        let refused = real.identify(&parts(&token), now()).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "invalid credentials: the token is not signed"
        );
    }

    #[tokio::test]
    async fn emulator_tokens_still_obey_the_claim_rules() {
        let emulated = FirebaseIdentity::builder("demo-p")
            .refuse_anonymous()
            .build_for(Some("127.0.0.1:9099".into()))
            .unwrap();
        let with = |change: &dyn Fn(&mut serde_json::Value)| {
            let mut claims = emulator_claims("demo-p");
            change(&mut claims);
            emulated
                .identify(&parts(&unsigned(claims)), now())
                .map_err(|e| e.to_string())
        };
        assert!(with(&|_| {}).is_ok());
        type Change = fn(&mut serde_json::Value);
        let cases: [(Change, &str); 5] = [
            (|c| c["aud"] = json!("other"), "another audience"),
            (|c| c["iss"] = json!("https://elsewhere"), "another issuer"),
            (|c| c["exp"] = json!(now().timestamp() - 60), "expired"),
            (|c| c["sub"] = json!(""), "empty"),
            (
                |c| c["firebase"]["sign_in_provider"] = json!("anonymous"),
                "anonymous",
            ),
        ];
        for (change, why) in cases {
            let refused = with(&change).unwrap_err();
            assert!(refused.contains(why), "{refused}");
        }
        let signed = FirebaseIdentity::builder("demo-p").build_for(Some("h:1".into()));
        let token = format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"k"}"#),
            URL_SAFE_NO_PAD.encode(emulator_claims("demo-p").to_string())
        );
        let refused = signed.unwrap().identify(&parts(&token), now()).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("only the Firebase Auth emulator's tokens")
        );
    }

    #[test]
    fn building_needs_a_runtime_and_a_project_id() {
        let error = FirebaseIdentity::builder("p").build_for(None).unwrap_err();
        assert!(matches!(error, FirebaseSetupError::NoRuntime), "{error}");
        for bad in ["", "a/b", "a b", "../x"] {
            let error = FirebaseIdentity::builder(bad).build_for(None).unwrap_err();
            assert!(
                matches!(error, FirebaseSetupError::InvalidProject { .. }),
                "{error}"
            );
        }
    }
}
