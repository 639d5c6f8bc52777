//! The charge script's call: one user's decision, or several decided in one
//! call (see `lua/charge.lua` for the layout).

use std::ops::Range;

use chrono::{DateTime, Utc};
use redis::{ErrorKind, RedisError, RedisResult, Value};

use super::connection::Connection;
use super::scripts::{KindSpec, Procedure, ScriptCall, SpecWord, millis};
use crate::cost::CheckedCost;
use crate::idempotency::IDEMPOTENCY_TTL;

/// What one charge asks of the charge script.
pub(crate) struct Charge {
    /// The user's keys: balances, then (caching a source) the high-water
    /// key, then the idempotency key if any.
    pub(crate) keys: Vec<String>,
    /// The decision time in Unix ms, or `None` for the Redis server's clock
    /// (a decision's own: under `TimeSource::Caller` each charge has its
    /// instant, and the plan stays the same).
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
    let reply: Vec<Value> = connection.invoke(&charge_call(procedure, charges)).await?;
    let replies = split_replies(reply)?;
    if replies.len() != sent {
        return Err(RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "the charge script answered another number of decisions than it was sent",
            format!("{} for {sent}", replies.len()),
        )));
    }
    Ok(replies)
}

/// The decisions of the charge script's flat reply: per decision, the count
/// of its values then the values, or an error in its place.
fn split_replies(reply: Vec<Value>) -> RedisResult<Vec<RedisResult<Vec<i64>>>> {
    let malformed = |detail: String| {
        RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "the charge script's reply is not a list of decisions",
            detail,
        ))
    };
    let mut values = reply.into_iter();
    let mut replies = Vec::new();
    while let Some(value) = values.next() {
        let count = match value {
            Value::ServerError(error) => {
                replies.push(Err(error.into()));
                continue;
            }
            Value::Int(count) => usize::try_from(count)
                .map_err(|_| malformed(format!("a decision of {count} values")))?,
            other => return Err(malformed(format!("{other:?} where a count was due"))),
        };
        let decision = values
            .by_ref()
            .take(count)
            .map(|value| match value {
                Value::Int(number) => Ok(number),
                other => Err(malformed(format!("{other:?} in a decision"))),
            })
            .collect::<RedisResult<Vec<i64>>>()?;
        if decision.len() != count {
            return Err(malformed(format!("a decision cut short: {decision:?}")));
        }
        replies.push(Ok(decision));
    }
    Ok(replies)
}

/// One call of the charge `procedure` deciding `charges` in order. What
/// they share goes in its plan, one argument: the kind specs they use, and
/// their shapes (key count, idle TTL, kinds), each once (most charges of a
/// call share one). A store sends the same plan call after call, which the
/// charge library reads once.
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
    let mut plan = Plan::new();
    plan.number(millis(IDEMPOTENCY_TTL)).number(specs.len());
    for spec in &specs {
        spec.each_word(spec.kind().initial_balance(), |word| {
            plan.word(word);
        });
    }
    plan.number(shapes.len());
    for shape in &shapes {
        plan.number(shape.key_count)
            .number(shape.idle_ttl)
            .number(shape.specs.len());
        for &index in &spec_indices[shape.specs.clone()] {
            plan.number(index);
        }
    }
    let mut call = ScriptCall::new(procedure, charges.clone().flat_map(|charge| &charge.keys));
    call.arg(plan.0);
    // Decisions alike but for their keys go as one run: its length, then
    // their arguments once. (Each argument costs Redis an object to parse
    // and a Lua string; a batch of one route's charges is one run.)
    let mut decisions = charges.zip(shape_of).peekable();
    while let Some((charge, shape)) = decisions.next() {
        let mut run = 1;
        while decisions
            .next_if(|&(next, next_shape)| next_shape == shape && charge.alike(next))
            .is_some()
        {
            run += 1;
        }
        call.arg(run).arg(shape);
        match charge.time {
            Some(ms) => call.arg(ms),
            None => call.arg(""),
        };
        if let Some(fingerprint) = &charge.fingerprint {
            call.arg(fingerprint);
        }
        for item in charge.cost.items() {
            call.arg(item.amount);
        }
    }
    call
}

impl Charge {
    /// Whether `other`, of the same shape, sends the same arguments: the
    /// same time and amounts, and neither an idempotency key (each key's
    /// fingerprint is its own).
    fn alike(&self, other: &Self) -> bool {
        self.fingerprint.is_none()
            && other.fingerprint.is_none()
            && self.time == other.time
            && self.cost.items().iter().map(|item| item.amount).eq(other
                .cost
                .items()
                .iter()
                .map(|item| item.amount))
    }
}

/// The plan of a charge call: words separated by spaces, numbers written
/// by `itoa` (through `format!`, writing them cost more than the rest of an
/// unbatched charge's call).
struct Plan(String);

impl Plan {
    fn new() -> Self {
        Self(String::with_capacity(96))
    }

    fn space(&mut self) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
    }

    fn number(&mut self, number: impl itoa::Integer) -> &mut Self {
        self.space();
        self.0.push_str(itoa::Buffer::new().format(number));
        self
    }

    fn word(&mut self, word: SpecWord<'_>) -> &mut Self {
        match word {
            SpecWord::Text(text) => {
                self.space();
                self.0.push_str(text);
                self
            }
            SpecWord::Number(number) => self.number(number),
        }
    }
}

/// What charges of one call may share.
struct Shape {
    key_count: usize,
    idle_ttl: u64,
    /// Where its spec indices are in the list of every charge's.
    specs: Range<usize>,
}

impl Shape {
    fn same_as(&self, other: &Self, spec_indices: &[usize]) -> bool {
        self.key_count == other.key_count
            && self.idle_ttl == other.idle_ttl
            && spec_indices[self.specs.clone()] == spec_indices[other.specs.clone()]
    }
}

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::split_replies;

    /// The elements of a RESP array reply, as Redis sends them.
    fn reply(elements: &[&str]) -> Vec<Value> {
        let mut resp = format!("*{}\r\n", elements.len());
        for element in elements {
            resp.push_str(element);
            resp.push_str("\r\n");
        }
        match redis::parse_redis_value(resp.as_bytes()).unwrap() {
            Value::Array(values) => values,
            other => panic!("not an array: {other:?}"),
        }
    }

    #[test]
    fn a_flat_reply_splits_into_its_decisions() {
        let flat = reply(&[
            ":3",
            ":1",
            ":4",
            ":1700000000000",
            "-TICKETS_CORRUPT k holds a string",
            ":1",
            ":-1",
        ]);
        let decisions = split_replies(flat).unwrap();
        assert_eq!(decisions.len(), 3);
        assert_eq!(decisions[0].as_ref().unwrap(), &[1, 4, 1_700_000_000_000]);
        let error = decisions[1].as_ref().unwrap_err();
        assert!(error.to_string().contains("holds a string"), "{error}");
        assert_eq!(decisions[2].as_ref().unwrap(), &[-1]);
    }

    #[test]
    fn a_malformed_reply_is_an_error_not_a_panic() {
        for elements in [
            &[":-2"][..],
            &[":3", ":1", ":4"],
            &["$-1"],
            &[":2", ":1", "$-1"],
        ] {
            let error = split_replies(reply(elements)).unwrap_err();
            assert!(
                error.to_string().contains("not a list of decisions"),
                "{elements:?}: {error}"
            );
        }
    }
}
