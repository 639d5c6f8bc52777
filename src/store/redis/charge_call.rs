//! The charge script's call: one user's decision, or several decided in one
//! call (see `lua/charge.lua` for the layout).

use std::ops::Range;

use chrono::{DateTime, Utc};
use redis::{ErrorKind, RedisError, RedisResult};

use super::connection::Connection;
use super::scripts::{KindSpec, Procedure, ScriptCall, millis};
use crate::cost::CheckedCost;
use crate::idempotency::IDEMPOTENCY_TTL;

/// What one charge asks of the charge script.
pub(crate) struct Charge {
    /// The user's keys: balances, then (caching a source) the high-water
    /// key, then the idempotency key if any.
    pub(crate) keys: Vec<String>,
    /// The decision time in Unix ms, or `None` for the Redis server's clock.
    pub(crate) time: Option<i64>,
    /// How long the user's hash outlives a refill, in ms.
    pub(crate) idle_ttl: u64,
    /// `<fingerprint>#<charge id>`, with an idempotency key (the last of
    /// `keys`) only.
    pub(crate) fingerprint: Option<String>,
    pub(crate) cost: CheckedCost,
    /// The caller's instant: the calendar cutoffs are computed around it.
    pub(crate) now: DateTime<Utc>,
}

/// Decides `charges` in one call of the charge `procedure`: each one's reply,
/// in order (a decision that failed is an error in its place).
pub(crate) async fn decide<'a>(
    connection: &mut Connection,
    procedure: Procedure,
    charges: impl Iterator<Item = &'a Charge> + Clone,
) -> RedisResult<Vec<RedisResult<Vec<i64>>>> {
    let sent = charges.clone().count();
    let replies: Vec<RedisResult<Vec<i64>>> =
        connection.invoke(&charge_call(procedure, charges)).await?;
    if replies.len() != sent {
        return Err(RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "the charge script answered another number of decisions than it was sent",
            format!("{} for {sent}", replies.len()),
        )));
    }
    Ok(replies)
}

/// One call of the charge `procedure` deciding `charges` in order. The
/// kind specs they use, and their shapes (key count, time, idle TTL, kinds),
/// are sent once each: most charges of a call share one.
fn charge_call<'a>(
    procedure: Procedure,
    charges: impl Iterator<Item = &'a Charge> + Clone,
) -> ScriptCall {
    let mut specs: Vec<KindSpec<'_>> = Vec::new();
    // Each charge's spec indices (from 1, as Lua counts), one after another.
    let mut spec_indices: Vec<usize> = Vec::new();
    let mut shapes: Vec<Shape> = Vec::new();
    // Each charge's shape index (from 1).
    let mut shape_of: Vec<usize> = Vec::new();
    for charge in charges.clone() {
        let first = spec_indices.len();
        for item in charge.cost.items() {
            let spec = KindSpec::new(&item.kind, charge.now);
            let index = match specs.iter().position(|known| known.same_as(&spec)) {
                Some(index) => index,
                None => {
                    specs.push(spec);
                    specs.len() - 1
                }
            };
            spec_indices.push(index + 1);
        }
        let shape = Shape {
            key_count: charge.keys.len(),
            time: charge.time,
            idle_ttl: charge.idle_ttl,
            specs: first..spec_indices.len(),
        };
        let same = |known: &Shape| known.same_as(&shape, &spec_indices);
        let index = match shapes.iter().position(same) {
            Some(index) => index,
            None => {
                shapes.push(shape);
                shapes.len() - 1
            }
        };
        shape_of.push(index + 1);
    }
    let mut call = ScriptCall::new(procedure, charges.clone().flat_map(|charge| &charge.keys));
    call.arg(millis(IDEMPOTENCY_TTL)).arg(specs.len());
    for spec in &specs {
        spec.push(&mut call, spec.kind().initial_balance());
    }
    call.arg(shapes.len());
    for shape in &shapes {
        call.arg(shape.key_count);
        match shape.time {
            Some(ms) => call.arg(ms),
            None => call.arg(""),
        };
        call.arg(shape.idle_ttl).arg(shape.specs.len());
        for index in &spec_indices[shape.specs.clone()] {
            call.arg(*index);
        }
    }
    for (charge, shape) in charges.zip(shape_of) {
        call.arg(shape);
        if let Some(fingerprint) = &charge.fingerprint {
            call.arg(fingerprint);
        }
        for item in charge.cost.items() {
            call.arg(item.amount);
        }
    }
    call
}

/// What charges of one call may share.
struct Shape {
    key_count: usize,
    time: Option<i64>,
    idle_ttl: u64,
    /// Where its spec indices are in the list of every charge's.
    specs: Range<usize>,
}

impl Shape {
    fn same_as(&self, other: &Self, spec_indices: &[usize]) -> bool {
        self.key_count == other.key_count
            && self.time == other.time
            && self.idle_ttl == other.idle_ttl
            && spec_indices[self.specs.clone()] == spec_indices[other.specs.clone()]
    }
}
