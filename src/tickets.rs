//! The registry: kinds, store, clock, identity and messages, shared by every
//! layer and by the admin API.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::request::Parts;
use http::{HeaderMap, Response};

use crate::balances::Balances;
use crate::clock::{Clock, SystemClock, now_millis};
use crate::config_error::ConfigError;
use crate::cost::{CheckedCost, Cost, CostFn};
use crate::identity::{ExtensionIdentity, IdentityError, IdentityExtractor};
use crate::kind::TicketKind;
use crate::layer::TicketLayer;
use crate::messages::{DefaultMessages, Messages};
use crate::refill::Refill;
use crate::refusal_answers::RefusalAnswers;
use crate::rejection::Rejection;
use crate::store::{MemoryStore, StoreError, TicketStore};
use crate::uid::Uid;

/// The ticket registry. Build it once at start-up, then make one
/// [`TicketLayer`] per priced route with [`Tickets::layer`]. Cheap to clone.
///
/// ```
/// use tower_tickets::{Cost, TicketKind, Tickets};
///
/// let tickets = Tickets::builder()
///     .kind(TicketKind::new("upload", 5))
///     .kind(TicketKind::new("ai", 3))
///     .build()?;
/// let upload_layer = tickets.layer(Cost::of("upload", 1))?;
/// // A cost above capacity is refused when the layer is built.
/// assert!(tickets.layer(Cost::of("ai", 4)).is_err());
/// # let _ = upload_layer;
/// # Ok::<(), tower_tickets::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Tickets {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) kinds: Vec<Arc<TicketKind>>,
    pub(crate) store: Arc<dyn TicketStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) identity: Arc<dyn IdentityExtractor>,
    pub(crate) messages: Arc<dyn Messages>,
    /// Answers of recent refusals; only with the built-in catalogue.
    pub(crate) refusal_answers: Option<RefusalAnswers>,
}

impl fmt::Debug for Tickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tickets")
            .field("kinds", &self.shared.kinds)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Tickets`] registry; see [`Tickets::builder`].
#[must_use]
pub struct TicketsBuilder {
    kinds: Vec<TicketKind>,
    store: Option<Arc<dyn TicketStore>>,
    clock: Option<Arc<dyn Clock>>,
    identity: Option<Arc<dyn IdentityExtractor>>,
    messages: Option<Arc<dyn Messages>>,
}

impl TicketsBuilder {
    /// Registers a kind.
    pub fn kind(mut self, kind: TicketKind) -> Self {
        self.kinds.push(kind);
        self
    }

    /// The store (defaults to a new [`MemoryStore`]).
    pub fn store(mut self, store: impl TicketStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The clock (defaults to [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// How requests are tied to users (defaults to [`ExtensionIdentity`]:
    /// a [`Uid`] that an auth layer put in the request extensions).
    pub fn identity(mut self, identity: impl IdentityExtractor) -> Self {
        self.identity = Some(Arc::new(identity));
        self
    }

    /// The message catalogue (defaults to [`DefaultMessages`], English and
    /// French).
    ///
    /// A custom catalogue words every refusal afresh. With the default one,
    /// the answer of a one-kind 429 (problem body and headers) is reused
    /// while nothing it says changes (same kind, balance, refill, and wait
    /// to the second), which makes a client hammering a route at zero cheap
    /// to answer.
    pub fn messages(mut self, messages: impl Messages) -> Self {
        self.messages = Some(Arc::new(messages));
        self
    }

    /// Checks the kinds and builds the registry.
    pub fn build(self) -> Result<Tickets, ConfigError> {
        if self.kinds.is_empty() {
            return Err(ConfigError::NoKinds);
        }
        for (i, kind) in self.kinds.iter().enumerate() {
            check_kind(kind)?;
            if self.kinds[..i].iter().any(|k| k.name() == kind.name()) {
                return Err(ConfigError::DuplicateKind {
                    name: kind.name().into(),
                });
            }
        }
        let kinds: Vec<_> = self.kinds.into_iter().map(Arc::new).collect();
        let store = self.store.unwrap_or_else(|| Arc::new(MemoryStore::new()));
        store.check_kinds(&kinds)?;
        Ok(Tickets {
            shared: Arc::new(Shared {
                kinds,
                store,
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
                identity: self.identity.unwrap_or_else(|| Arc::new(ExtensionIdentity)),
                refusal_answers: self.messages.is_none().then(RefusalAnswers::default),
                messages: self.messages.unwrap_or_else(|| Arc::new(DefaultMessages)),
            }),
        })
    }
}

fn check_kind(kind: &TicketKind) -> Result<(), ConfigError> {
    let name = kind.name();
    let valid_name = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !valid_name {
        return Err(ConfigError::InvalidKindName { name: name.into() });
    }
    if kind.capacity() == 0 {
        return Err(ConfigError::ZeroCapacity { kind: name.into() });
    }
    if kind.initial_balance() > kind.capacity() {
        return Err(ConfigError::InitialAboveCapacity {
            kind: name.into(),
            initial: kind.initial_balance(),
            capacity: kind.capacity(),
        });
    }
    if let Refill::Rolling { period } = kind.refill_schedule()
        && period.as_millis() == 0
    {
        return Err(ConfigError::ZeroPeriod { kind: name.into() });
    }
    Ok(())
}

impl Tickets {
    /// Starts a registry.
    pub fn builder() -> TicketsBuilder {
        TicketsBuilder {
            kinds: Vec::new(),
            store: None,
            clock: None,
            identity: None,
            messages: None,
        }
    }

    /// A layer charging `cost` on every request it sees. Attach it with
    /// axum's `route_layer`, so unmatched paths (404s) are never charged.
    ///
    /// Fails if the cost names no kind, an unknown kind, or more tickets than
    /// a kind's capacity.
    pub fn layer(&self, cost: Cost) -> Result<TicketLayer, ConfigError> {
        let cost = CheckedCost::check(&cost, &self.shared.kinds)?;
        Ok(TicketLayer::fixed(self.clone(), cost))
    }

    /// A layer whose cost `price` computes from each request. A cost
    /// function may refuse a request (400), and a computed cost that cannot
    /// be paid (unknown kind, above capacity) is a 400 too; neither charges.
    pub fn layer_fn(&self, price: impl CostFn) -> TicketLayer {
        TicketLayer::dynamic(self.clone(), Arc::new(price))
    }

    /// The registered kinds, in registration order.
    pub fn kinds(&self) -> &[Arc<TicketKind>] {
        &self.shared.kinds
    }

    /// The registered kind named `name`.
    pub fn kind(&self, name: &str) -> Option<&Arc<TicketKind>> {
        self.shared.kinds.iter().find(|k| k.name() == name)
    }

    /// Checks `cost` against the registered kinds, as [`Tickets::layer`]
    /// does; for code that calls a [`TicketStore`] directly.
    pub fn check_cost(&self, cost: &Cost) -> Result<CheckedCost, ConfigError> {
        CheckedCost::check(cost, &self.shared.kinds)
    }

    /// The current instant, as every decision sees it.
    pub fn now(&self) -> DateTime<Utc> {
        now_millis(&*self.shared.clock)
    }

    /// The registry's message catalogue, for handlers that word a refusal
    /// themselves (pick the language with [`messages::negotiate`](crate::messages::negotiate)).
    pub fn messages(&self) -> &dyn Messages {
        &*self.shared.messages
    }

    /// Identifies the user of a request with the registry's extractor.
    pub fn identify(&self, request: &Parts) -> Result<Uid, IdentityError> {
        self.shared.identity.identify(request, self.now())
    }

    /// Answers `rejection` as problem+json, in the language of
    /// `request_headers`.
    pub fn reject<B: From<Bytes>>(
        &self,
        rejection: &Rejection,
        request_headers: &HeaderMap,
    ) -> Response<B> {
        self.respond(rejection.clone(), request_headers)
    }

    /// [`Self::reject`], the rejection moved into the response.
    pub(crate) fn respond<B: From<Bytes>>(
        &self,
        rejection: Rejection,
        request_headers: &HeaderMap,
    ) -> Response<B> {
        rejection.respond(
            &*self.shared.messages,
            request_headers,
            self.shared.refusal_answers.as_ref(),
        )
    }

    /// `uid`'s balances of every kind, spending nothing.
    pub async fn balances(&self, uid: &Uid) -> Result<Balances, StoreError> {
        let now = self.now();
        let balances = self
            .shared
            .store
            .balances(uid, &self.shared.kinds, now)
            .await?;
        Ok(Balances::new(&self.shared.kinds, &balances, now))
    }

    /// Records `uid` with the initial balances if the store does not know
    /// them yet (sign-up), and returns their balances.
    pub async fn ensure_user(&self, uid: &Uid) -> Result<Balances, StoreError> {
        let now = self.now();
        let balances = self
            .shared
            .store
            .ensure_user(uid, &self.shared.kinds, now)
            .await?;
        Ok(Balances::new(&self.shared.kinds, &balances, now))
    }
}
