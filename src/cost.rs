//! What a route charges: one or more `(kind, amount)` pairs.

use std::fmt;
use std::sync::Arc;

use http::request::Parts;

use crate::config_error::ConfigError;
use crate::kind::TicketKind;

/// What a request costs, before it is checked against the registered kinds.
///
/// A cost with several kinds is charged all-or-nothing: either every kind can
/// pay and all are charged, or none is.
///
/// ```
/// use tower_tickets::Cost;
///
/// let upload = Cost::of("upload", 1);
/// let both = Cost::of("upload", 1).and("ai", 2);
/// assert_eq!(both.items().len(), 2);
/// # let _ = upload;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cost {
    items: Vec<(String, u32)>,
}

impl Cost {
    /// A cost of `amount` tickets of `kind`.
    pub fn of(kind: impl Into<String>, amount: u32) -> Self {
        Self {
            items: vec![(kind.into(), amount)],
        }
    }

    /// Adds `amount` tickets of another `kind` to the cost.
    pub fn and(mut self, kind: impl Into<String>, amount: u32) -> Self {
        self.items.push((kind.into(), amount));
        self
    }

    /// The `(kind, amount)` pairs.
    pub fn items(&self) -> &[(String, u32)] {
        &self.items
    }
}

/// A cost function's refusal to price a request; answered with 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostRejection {
    detail: String,
}

impl CostRejection {
    /// A refusal explained by `detail` (shown to the client).
    pub fn new(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
        }
    }

    /// The explanation.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for CostRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for CostRejection {}

/// Prices a request from its head (method, URI, headers, extensions).
///
/// Implemented for every `Fn(&Parts) -> Result<Cost, CostRejection>`.
pub trait CostFn: Send + Sync + 'static {
    /// The cost of this request, or why it cannot be priced.
    fn price(&self, request: &Parts) -> Result<Cost, CostRejection>;
}

impl<F> CostFn for F
where
    F: Fn(&Parts) -> Result<Cost, CostRejection> + Send + Sync + 'static,
{
    fn price(&self, request: &Parts) -> Result<Cost, CostRejection> {
        self(request)
    }
}

/// One kind of a checked cost and how many of its tickets to charge.
#[derive(Debug, Clone)]
pub struct CostItem {
    /// The kind charged.
    pub kind: Arc<TicketKind>,
    /// How many tickets; at least 1 and at most the kind's capacity.
    pub amount: u32,
}

/// A cost checked against the registry: known kinds, each once, amounts
/// between 1 and capacity. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CheckedCost {
    items: Arc<[CostItem]>,
}

impl CheckedCost {
    /// Checks `cost` against `kinds` (a [`Cost`] names at least one kind by
    /// construction).
    pub(crate) fn check(cost: &Cost, kinds: &[Arc<TicketKind>]) -> Result<Self, ConfigError> {
        let mut items = Vec::with_capacity(cost.items.len());
        for (i, (name, amount)) in cost.items.iter().enumerate() {
            let Some(kind) = kinds.iter().find(|k| k.name() == name) else {
                return Err(ConfigError::UnknownKind {
                    kind: name.clone(),
                    known: kinds.iter().map(|k| k.name().to_string()).collect(),
                });
            };
            if cost.items[..i].iter().any(|(earlier, _)| earlier == name) {
                return Err(ConfigError::RepeatedKindInCost { kind: name.clone() });
            }
            if *amount == 0 {
                return Err(ConfigError::ZeroAmount { kind: name.clone() });
            }
            if *amount > kind.capacity() {
                return Err(ConfigError::CostAboveCapacity {
                    kind: name.clone(),
                    cost: *amount,
                    capacity: kind.capacity(),
                });
            }
            items.push(CostItem {
                kind: kind.clone(),
                amount: *amount,
            });
        }
        Ok(Self {
            items: items.into(),
        })
    }

    /// The kinds and amounts, in the order the cost named them.
    pub fn items(&self) -> &[CostItem] {
        &self.items
    }
}
