//! Configuration mistakes, reported when the registry or a layer is built.

use std::fmt;

/// A configuration that cannot work, with what to change.
///
/// Returned by [`TicketsBuilder::build`](crate::TicketsBuilder::build) and
/// [`Tickets::layer`](crate::Tickets::layer), so that a mistake stops the
/// application at start-up instead of surfacing as odd answers later.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The registry has no kinds.
    NoKinds,
    /// A kind name is not 1 to 32 characters of `[a-z0-9_-]`.
    InvalidKindName {
        /// The name given.
        name: String,
    },
    /// Two kinds share a name.
    DuplicateKind {
        /// The repeated name.
        name: String,
    },
    /// A kind has a capacity of zero.
    ZeroCapacity {
        /// The kind.
        kind: String,
    },
    /// A kind starts new users above its capacity.
    InitialAboveCapacity {
        /// The kind.
        kind: String,
        /// The initial balance given.
        initial: u32,
        /// The kind's capacity.
        capacity: u32,
    },
    /// A rolling refill has a period shorter than one millisecond.
    ZeroPeriod {
        /// The kind.
        kind: String,
    },
    /// A cost names a kind the registry does not know.
    UnknownKind {
        /// The name in the cost.
        kind: String,
        /// The kinds the registry knows.
        known: Vec<String>,
    },
    /// A cost charges zero tickets of a kind.
    ZeroAmount {
        /// The kind.
        kind: String,
    },
    /// A cost names the same kind twice.
    RepeatedKindInCost {
        /// The kind.
        kind: String,
    },
    /// A fixed cost is larger than the kind's capacity: no refill could ever
    /// pay it.
    CostAboveCapacity {
        /// The kind.
        kind: String,
        /// The cost.
        cost: u32,
        /// The kind's capacity.
        capacity: u32,
    },
    /// The store's source of truth was given other kinds than the registry
    /// (different names, fields, capacities, initial balances or refills).
    SourceKindsDiffer {
        /// The registry's kinds.
        registry: Vec<String>,
        /// The source's kinds.
        source: Vec<String>,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoKinds => f.write_str(
                "no ticket kinds are registered: add one with TicketsBuilder::kind(TicketKind::new(\"upload\", 5))",
            ),
            Self::InvalidKindName { name } => write!(
                f,
                "kind name {name:?} is not allowed: use 1 to 32 characters of a-z, 0-9, '_' or '-'"
            ),
            Self::DuplicateKind { name } => {
                write!(f, "kind {name:?} is registered twice: give each kind its own name")
            }
            Self::ZeroCapacity { kind } => write!(
                f,
                "kind {kind:?} has a capacity of 0, so nothing could ever be charged: give it a capacity of at least 1"
            ),
            Self::InitialAboveCapacity {
                kind,
                initial,
                capacity,
            } => write!(
                f,
                "kind {kind:?} starts users with {initial} tickets but holds at most {capacity}: lower the initial balance or raise the capacity (use a grant to give more)"
            ),
            Self::ZeroPeriod { kind } => write!(
                f,
                "kind {kind:?} has a refill period of zero: use a period of at least 1 ms (24 h is the usual one)"
            ),
            Self::UnknownKind { kind, known } => write!(
                f,
                "the cost names kind {kind:?}, which is not registered (known kinds: {}): register it with TicketsBuilder::kind or fix the name",
                known.join(", ")
            ),
            Self::ZeroAmount { kind } => write!(
                f,
                "the cost charges 0 {kind:?} tickets: charge at least 1, or leave the route without the layer"
            ),
            Self::RepeatedKindInCost { kind } => write!(
                f,
                "the cost names kind {kind:?} twice: add the amounts into one entry"
            ),
            Self::CostAboveCapacity {
                kind,
                cost,
                capacity,
            } => write!(
                f,
                "the cost of {cost} {kind:?} tickets is above the kind's capacity of {capacity}, so no refill could ever pay it: lower the cost or raise the capacity"
            ),
            Self::SourceKindsDiffer { registry, source } => write!(
                f,
                "the store's source of truth holds the kinds {source:?} and the registry {registry:?}, \
                 or they differ in fields, capacity, initial balance or refill: give the source \
                 the very kinds given to Tickets::builder"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}
