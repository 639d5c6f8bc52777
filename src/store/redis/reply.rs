//! Script replies: flat integer arrays, turned back into balances.

use chrono::DateTime;

use super::error::unexpected_reply;
use crate::store::{KindBalance, StoreError};

/// One `(remaining, last refill ms)` pair, if both are in range.
pub(crate) fn balance(remaining: i64, last_refill_ms: i64) -> Option<KindBalance> {
    Some(KindBalance {
        remaining: u32::try_from(remaining).ok()?,
        last_refill: DateTime::from_timestamp_millis(last_refill_ms)?,
    })
}

/// Reads exactly `count` pairs from `values`.
pub(crate) fn balances(
    operation: &str,
    values: &[i64],
    count: usize,
) -> Result<Vec<KindBalance>, StoreError> {
    if values.len() != 2 * count {
        return Err(unexpected_reply(operation, values));
    }
    values
        .chunks_exact(2)
        .map(|pair| balance(pair[0], pair[1]).ok_or_else(|| unexpected_reply(operation, values)))
        .collect()
}
