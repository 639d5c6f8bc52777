//! The charge script's call: one user's decision, or several decided in one
//! `EVALSHA` (see `lua/charge.lua` for the layout).

use chrono::{DateTime, Utc};
use redis::Script;

use super::scripts::{KindSpec, ScriptCall, millis};
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
    /// `<fingerprint>#<charge id>`, with an idempotency key only.
    pub(crate) fingerprint: Option<String>,
    pub(crate) cost: CheckedCost,
    /// The caller's instant: the calendar cutoffs are computed around it.
    pub(crate) now: DateTime<Utc>,
}

/// One `EVALSHA` of the charge `script` deciding `charges` in order; each
/// kind spec they use is sent once.
pub(crate) fn charge_call<'a>(
    script: &'static Script,
    charges: impl Iterator<Item = &'a Charge> + Clone,
) -> ScriptCall {
    let mut specs: Vec<KindSpec<'_>> = Vec::new();
    // Per charge, per item: the index of its spec (from 1, as Lua counts).
    let mut uses: Vec<usize> = Vec::new();
    for charge in charges.clone() {
        for item in charge.cost.items() {
            let spec = KindSpec::new(&item.kind, charge.now);
            let index = match specs.iter().position(|known| known.same_as(&spec)) {
                Some(index) => index,
                None => {
                    specs.push(spec);
                    specs.len() - 1
                }
            };
            uses.push(index + 1);
        }
    }
    let mut call = ScriptCall::new(script, charges.clone().flat_map(|charge| &charge.keys));
    call.arg(millis(IDEMPOTENCY_TTL)).arg(specs.len());
    for spec in &specs {
        spec.push(&mut call, spec.kind().initial_balance());
    }
    let mut uses = uses.into_iter();
    for charge in charges {
        call.arg(charge.keys.len());
        match charge.time {
            Some(ms) => call.arg(ms),
            None => call.arg(""),
        };
        call.arg(charge.idle_ttl)
            .arg(charge.fingerprint.as_deref().unwrap_or(""))
            .arg(charge.cost.items().len());
        for item in charge.cost.items() {
            call.arg(uses.next().unwrap_or_default()).arg(item.amount);
        }
    }
    call
}
