//! What the crate reports: metrics through the [`metrics`] facade and a
//! `tracing` span per decision.
//!
//! Nothing is recorded unless the application installs a metrics recorder
//! (e.g. `metrics-exporter-prometheus`, as the demo does for `GET /metrics`)
//! before serving: each metric is registered once, on first use, and its
//! handle kept.
//! Names, all prefixed `tickets_`:
//!
//! | name | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `tickets_charged_total` | counter | `kind` | tickets spent |
//! | `tickets_refused_total` | counter | `kind` | requests refused because this kind could not pay |
//! | `tickets_refunded_total` | counter | `kind` | tickets given back after a failed or unanswered request |
//! | `tickets_fail_open_total` | counter | `kind` | requests let through uncharged while the store was down |
//! | `tickets_store_errors_total` | counter | `operation` | store operations that failed |
//! | `tickets_store_latency_seconds` | histogram | `operation` | time a store took to answer, once its future was first waited on (0 for a store that answers at once, as the embedded one) |
//! | `tickets_cache_misses_total` | counter | | decisions that had to load a user from the source of truth |
//! | `tickets_firestore_writes_total` | counter | | documents written to Firestore |
//! | `tickets_redis_evicting` | gauge | `policy` | 1 when Redis's `maxmemory-policy` may evict ticket keys |

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Histogram};

use crate::cost::{CheckedCost, CostItem};
use crate::store::StoreError;

/// Counter of decisions that had to load a user from the source of truth
/// (recorded by caching stores).
pub const CACHE_MISSES: &str = "tickets_cache_misses_total";
/// Counter of documents written to Firestore (recorded by the Firestore
/// backend).
pub const FIRESTORE_WRITES: &str = "tickets_firestore_writes_total";

/// One kind's counters. Each is registered with the metrics recorder the
/// first time it is used and kept, so the hot path builds no metric key
/// (install the recorder before serving, as any recorder wants).
#[derive(Default)]
pub(crate) struct KindCounters {
    charged: OnceLock<Counter>,
    refused: OnceLock<Counter>,
    refunded: OnceLock<Counter>,
    failed_open: OnceLock<Counter>,
}

impl fmt::Debug for KindCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KindCounters")
    }
}

/// Counters hold no configuration: two kinds alike in every setting are
/// equal whatever their counters.
impl PartialEq for KindCounters {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for KindCounters {}

fn kind_counter<'a>(
    cell: &'a OnceLock<Counter>,
    name: &'static str,
    kind: &Arc<str>,
) -> &'a Counter {
    cell.get_or_init(|| metrics::counter!(name, "kind" => kind.clone()))
}

/// Records the tickets of an allowed charge.
pub(crate) fn charged(cost: &CheckedCost) {
    for item in cost.items() {
        let kind = &item.kind;
        kind_counter(
            &kind.counters().charged,
            "tickets_charged_total",
            kind.shared_name(),
        )
        .increment(u64::from(item.amount));
    }
}

/// Records a refusal against each kind that could not pay.
pub(crate) fn refused<'a>(kinds: impl IntoIterator<Item = &'a crate::kind::TicketKind>) {
    for kind in kinds {
        kind_counter(
            &kind.counters().refused,
            "tickets_refused_total",
            kind.shared_name(),
        )
        .increment(1);
    }
}

/// Records the tickets given back by a refund (`refunded[i]` per cost item).
pub(crate) fn refunded(cost: &CheckedCost, refunded: &[u32]) {
    for (item, amount) in cost.items().iter().zip(refunded) {
        let kind = &item.kind;
        kind_counter(
            &kind.counters().refunded,
            "tickets_refunded_total",
            kind.shared_name(),
        )
        .increment(u64::from(*amount));
    }
}

/// Records a request let through uncharged because the store was down.
pub(crate) fn failed_open(cost: &CheckedCost) {
    for item in cost.items() {
        let kind = &item.kind;
        kind_counter(
            &kind.counters().failed_open,
            "tickets_fail_open_total",
            kind.shared_name(),
        )
        .increment(1);
    }
}

/// Records that a user was loaded from the source of truth (Firestore reads
/// happen only on cache misses and sign-ups).
#[cfg(feature = "firestore")]
pub(crate) fn cache_missed() {
    static MISSES: OnceLock<Counter> = OnceLock::new();
    MISSES
        .get_or_init(|| metrics::counter!(CACHE_MISSES))
        .increment(1);
}

/// Records that Redis may evict keys under `policy` (its
/// `maxmemory-policy`, anything but `noeviction`).
#[cfg(feature = "redis")]
pub(crate) fn redis_evicting(policy: &str) {
    metrics::gauge!("tickets_redis_evicting", "policy" => policy.to_string()).set(1.0);
}

/// Records a document written to Firestore.
#[cfg(feature = "firestore")]
pub(crate) fn firestore_written() {
    static WRITES: OnceLock<Counter> = OnceLock::new();
    WRITES
        .get_or_init(|| metrics::counter!(FIRESTORE_WRITES))
        .increment(1);
}

/// The store operations the layer times.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StoreOperation {
    Charge,
    Refund,
    Finish,
}

/// Records how long a store operation took, and whether it failed.
pub(crate) fn store_call<T>(
    operation: StoreOperation,
    took: Duration,
    result: &Result<T, StoreError>,
) {
    static LATENCY: [OnceLock<Histogram>; 3] = [const { OnceLock::new() }; 3];
    static ERRORS: [OnceLock<Counter>; 3] = [const { OnceLock::new() }; 3];
    let (index, label) = match operation {
        StoreOperation::Charge => (0, "charge"),
        StoreOperation::Refund => (1, "refund"),
        StoreOperation::Finish => (2, "finish"),
    };
    LATENCY[index]
        .get_or_init(|| metrics::histogram!("tickets_store_latency_seconds", "operation" => label))
        .record(took.as_secs_f64());
    if result.is_err() {
        ERRORS[index]
            .get_or_init(|| metrics::counter!("tickets_store_errors_total", "operation" => label))
            .increment(1);
    }
}

/// The span around one decision: `uid`, `kind` and `cost` (joined with `+`
/// for a multi-kind cost), and `outcome`, recorded when the store answers.
pub(crate) fn decision_span(uid: &crate::uid::Uid, cost: &CheckedCost) -> tracing::Span {
    tracing::info_span!(
        "tickets.decision",
        uid = %uid,
        kind = %Joined(cost, |item, f| f.write_str(item.kind.name())),
        cost = %Joined(cost, |item, f| write!(f, "{}", item.amount)),
        outcome = tracing::field::Empty,
    )
}

type WriteItem = fn(&CostItem, &mut fmt::Formatter<'_>) -> fmt::Result;

/// Displays each item of a cost with a writer, joined by `+`.
struct Joined<'a>(&'a CheckedCost, WriteItem);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, item) in self.0.items().iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            (self.1)(item, f)?;
        }
        Ok(())
    }
}
