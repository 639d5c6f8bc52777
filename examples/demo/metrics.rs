//! `GET /metrics`: the crate's metrics (see `tower_tickets::telemetry`) in
//! Prometheus text format, for a scraper on this machine or one that sends
//! the admin token: they tell who uses the service and how much.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::auth::AdminToken;
use crate::problem::Problems;

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

/// `GET /metrics`: 401 to a client elsewhere without the admin token.
pub async fn render(
    State(handle): State<PrometheusHandle>,
    State(admin): State<AdminToken>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    problems: Problems,
    headers: HeaderMap,
) -> Response {
    match admin.may_read_metrics(peer.ip(), &headers) {
        Ok(()) => handle.render().into_response(),
        Err(e) => problems.unauthorized(e),
    }
}
