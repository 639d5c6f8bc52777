//! What the layer tells the handler about an allowed request.

use crate::balances::BalanceView;
use crate::uid::Uid;

/// Placed in the request's extensions when the layer lets a request through,
/// so the handler knows whose tickets paid and what is left (axum:
/// `Extension<Charged>`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Charged {
    /// The user.
    pub uid: Uid,
    /// The balances of the kinds charged, after the charge.
    pub balances: Vec<BalanceView>,
    /// `false` when the request was let through without a charge: an
    /// `Idempotency-Key` retry, or a fail-open kind whose store was down.
    pub charged: bool,
}
