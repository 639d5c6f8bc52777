//! What a Firebase ID token says beyond a plain JWT, and the rules an app
//! sets on it: when the token and the sign-in were made, how the user
//! signed in, whether their email address is verified.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::identity::IdentityError;

/// The claims of a Firebase ID token that are checked. `decode` checked
/// the signature, `iss`, `aud` and the presence of `sub` and `exp`
/// (unsigned emulator tokens: see [`FirebaseClaims::check_issued_for`]).
#[derive(Deserialize)]
pub(super) struct FirebaseClaims {
    pub(super) sub: String,
    pub(super) exp: i64,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<String>,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    auth_time: Option<i64>,
    #[serde(default)]
    email_verified: Option<bool>,
    #[serde(default)]
    firebase: FirebaseMembers,
}

/// The token's `firebase` claim.
#[derive(Deserialize, Default)]
struct FirebaseMembers {
    #[serde(default)]
    sign_in_provider: Option<String>,
}

/// Who may sign in, beyond a valid token: the options against ticket
/// farming (every new account starts with fresh tickets).
#[derive(Debug, Clone, Default)]
pub(super) struct SignInRules {
    pub(super) refuse_anonymous: bool,
    pub(super) require_email_verified: bool,
    /// `None`: any provider.
    pub(super) providers: Option<HashSet<String>>,
}

fn refused(reason: impl Into<String>) -> IdentityError {
    IdentityError::Invalid {
        reason: reason.into(),
    }
}

impl FirebaseClaims {
    /// `iss` and `aud` as Firebase sets them for `project`. `decode` checks
    /// them on signed tokens; the emulator's unsigned tokens need this.
    pub(super) fn check_issued_for(
        &self,
        project: &str,
        issuer: &str,
    ) -> Result<(), IdentityError> {
        if self.iss.as_deref() != Some(issuer) {
            return Err(refused("the token was issued by another issuer"));
        }
        if self.aud.as_deref() != Some(project) {
            return Err(refused("the token is meant for another audience"));
        }
        Ok(())
    }

    /// Firebase's time rules (the token and the sign-in happened, give or
    /// take `leeway_secs`) and the app's sign-in rules. `exp` is checked
    /// with every use of the token, by the caller.
    pub(super) fn check(
        &self,
        rules: &SignInRules,
        now: DateTime<Utc>,
        leeway_secs: i64,
    ) -> Result<(), IdentityError> {
        let latest = now.timestamp().saturating_add(leeway_secs);
        match self.iat {
            None => return Err(refused("the token lacks its issue time (iat)")),
            Some(iat) if iat > latest => {
                return Err(refused("the token was issued in the future (iat)"));
            }
            Some(_) => {}
        }
        match self.auth_time {
            None => return Err(refused("the token lacks its sign-in time (auth_time)")),
            Some(at) if at > latest => {
                return Err(refused("the user signed in in the future (auth_time)"));
            }
            Some(_) => {}
        }
        let provider = self.firebase.sign_in_provider.as_deref();
        if rules.refuse_anonymous && provider == Some("anonymous") {
            return Err(refused(
                "anonymous sign-ins are not accepted here: sign in with an account",
            ));
        }
        if let Some(allowed) = &rules.providers
            && !provider.is_some_and(|p| allowed.contains(p))
        {
            return Err(refused(format!(
                "sign-ins with {} are not accepted here",
                provider.unwrap_or("an unnamed provider")
            )));
        }
        if rules.require_email_verified && self.email_verified != Some(true) {
            return Err(refused(
                "the account's email address is not verified: verify it, then sign in again",
            ));
        }
        Ok(())
    }
}
