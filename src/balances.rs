//! Reading balances: the view handlers and clients see.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::kind::TicketKind;
use crate::store::KindBalance;

/// One kind's balance as a client sees it.
///
/// Serializes as `{"remaining": 4, "capacity": 5, "refill_at": "<RFC 3339>"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceView {
    /// The kind.
    pub kind: Arc<TicketKind>,
    /// Tickets left.
    pub remaining: u32,
    /// When the next refill comes.
    pub refill_at: DateTime<Utc>,
}

impl BalanceView {
    pub(crate) fn new(kind: &Arc<TicketKind>, balance: KindBalance) -> Self {
        Self {
            kind: kind.clone(),
            remaining: balance.remaining,
            refill_at: kind.refill_schedule().next_after(balance.last_refill),
        }
    }

    /// The kind's capacity.
    pub fn capacity(&self) -> u32 {
        self.kind.capacity()
    }
}

impl Serialize for BalanceView {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("BalanceView", 3)?;
        s.serialize_field("remaining", &self.remaining)?;
        s.serialize_field("capacity", &self.capacity())?;
        s.serialize_field(
            "refill_at",
            &self.refill_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        )?;
        s.end()
    }
}

/// A user's balances of several kinds, as of one instant.
///
/// Serializes as a map from kind name to [`BalanceView`]:
/// `{"upload": {...}, "ai": {...}}`.
///
/// With the `axum` feature it is also an extractor: a handler that takes
/// `Balances` reads the requesting user's balances without spending (the
/// router state must give a [`Tickets`](crate::Tickets) through `FromRef`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balances {
    /// The instant the balances were read at.
    pub now: DateTime<Utc>,
    /// One view per kind.
    pub kinds: Vec<BalanceView>,
}

impl Balances {
    pub(crate) fn new(
        kinds: &[Arc<TicketKind>],
        balances: &[KindBalance],
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            now,
            kinds: kinds
                .iter()
                .zip(balances)
                .map(|(kind, balance)| BalanceView::new(kind, *balance))
                .collect(),
        }
    }

    /// The view of the kind named `name`.
    pub fn get(&self, name: &str) -> Option<&BalanceView> {
        self.kinds.iter().find(|v| v.kind.name() == name)
    }
}

impl Serialize for Balances {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.kinds.len()))?;
        for view in &self.kinds {
            map.serialize_entry(view.kind.name(), view)?;
        }
        map.end()
    }
}
