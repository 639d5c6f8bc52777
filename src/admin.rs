//! The admin API: grant, set and reset a user's balances, each at most once
//! per idempotency key (a retried payment webhook grants once).

use std::fmt;

use crate::balances::BalanceView;
use crate::idempotency::IdempotencyKey;
use crate::store::{AdjustOutcome, AdjustRequest, Adjustment, StoreError};
use crate::tickets::Tickets;
use crate::uid::Uid;

/// What an administrative operation answered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Adjusted {
    /// The balances of the kinds changed, in the order they were named
    /// (registration order for a reset of every kind), as the operation
    /// left them.
    pub balances: Vec<BalanceView>,
    /// Whether this is a retry under an idempotency key that already made
    /// the same change: nothing changed, and `balances` are the first
    /// answer's.
    pub replayed: bool,
}

/// An administrative operation could not be done.
#[derive(Debug)]
#[non_exhaustive]
pub enum AdminError {
    /// The kind is not registered.
    UnknownKind(String),
    /// The idempotency key already served another request (another
    /// operation, kind or amount, or a charge); nothing changed. An HTTP
    /// face answers 422.
    KeyReused,
    /// The idempotency key already made this change, which is still being
    /// written to the source of truth; nothing changed again. An HTTP face
    /// answers 409 with `Retry-After`.
    InProgress,
    /// The store could not do it.
    Store(StoreError),
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKind(kind) => write!(f, "unknown ticket kind {kind:?}"),
            Self::KeyReused => write!(
                f,
                "the idempotency key was already used for another request; use a new key"
            ),
            Self::InProgress => write!(
                f,
                "the idempotency key's change is still being written; retry shortly"
            ),
            Self::Store(e) => write!(f, "ticket store error: {e}"),
        }
    }
}

impl std::error::Error for AdminError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Store(e) => Some(e),
            Self::UnknownKind(_) | Self::KeyReused | Self::InProgress => None,
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl Tickets {
    /// Adds `amount` tickets of `kind` to `uid`'s balance (above capacity
    /// if need be; a refill never takes them away). With `key`, a retry
    /// grants nothing again (see [`AdjustRequest::idempotency_key`]).
    pub async fn grant(
        &self,
        uid: &Uid,
        kind: &str,
        amount: u32,
        key: Option<IdempotencyKey>,
    ) -> Result<Adjusted, AdminError> {
        self.adjust(uid, &[(kind, Adjustment::Grant(amount))], key)
            .await
    }

    /// Sets `uid`'s balance of `kind` to `balance`; with `key`, at most
    /// once.
    pub async fn set(
        &self,
        uid: &Uid,
        kind: &str,
        balance: u32,
        key: Option<IdempotencyKey>,
    ) -> Result<Adjusted, AdminError> {
        self.adjust(uid, &[(kind, Adjustment::Set(balance))], key)
            .await
    }

    /// Refills `uid`'s balance of `kind` now, or of every kind when `kind`
    /// is `None`: each balance becomes at least its capacity, and its last
    /// refill now. With `key`, at most once.
    pub async fn reset(
        &self,
        uid: &Uid,
        kind: Option<&str>,
        key: Option<IdempotencyKey>,
    ) -> Result<Adjusted, AdminError> {
        let changes: Vec<_> = match kind {
            Some(kind) => vec![(kind, Adjustment::Reset)],
            None => self
                .kinds()
                .iter()
                .map(|kind| (kind.name(), Adjustment::Reset))
                .collect(),
        };
        self.adjust(uid, &changes, key).await
    }

    async fn adjust(
        &self,
        uid: &Uid,
        changes: &[(&str, Adjustment)],
        key: Option<IdempotencyKey>,
    ) -> Result<Adjusted, AdminError> {
        let changes = changes
            .iter()
            .map(|(name, adjustment)| match self.kind(name) {
                Some(kind) => Ok((kind.clone(), *adjustment)),
                None => Err(AdminError::UnknownKind((*name).into())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let request =
            AdjustRequest::new(uid.clone(), changes, self.now()).with_idempotency_key(key);
        let kinds: Vec<_> = request.changes.iter().map(|(k, _)| k.clone()).collect();
        let views = |balances: Vec<_>| {
            kinds
                .iter()
                .zip(balances)
                .map(|(kind, balance)| BalanceView::new(kind, balance))
                .collect()
        };
        match self.shared.store.adjust(request).await? {
            AdjustOutcome::Applied { balances } => Ok(Adjusted {
                balances: views(balances),
                replayed: false,
            }),
            AdjustOutcome::Replayed { balances } => Ok(Adjusted {
                balances: views(balances),
                replayed: true,
            }),
            AdjustOutcome::InProgress => Err(AdminError::InProgress),
            AdjustOutcome::KeyReused => Err(AdminError::KeyReused),
        }
    }
}
