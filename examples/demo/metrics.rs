//! `GET /metrics`: the crate's metrics (see `tower_tickets::telemetry`) in
//! Prometheus text format.

use axum::extract::State;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Store latencies from 100 µs to 2.5 s: the memory store answers in
/// microseconds, Redis in about a millisecond, Firestore in tens.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Installs the process-wide recorder that the crate's metrics go to.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("tickets_store_latency_seconds".into()),
            LATENCY_BUCKETS,
        )?
        .install_recorder()
}

/// `GET /metrics`.
pub async fn render(State(handle): State<PrometheusHandle>) -> String {
    handle.render()
}
