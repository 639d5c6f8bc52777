//! What the HTTP benchmarks share: the handler both routers serve, serving
//! on an ephemeral port, runtimes, and reading the machine's state.

#![allow(dead_code)] // Each benchmark uses part of it.

pub mod peer_routers;

use std::net::SocketAddr;

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use http::StatusCode;
use tokio::net::TcpListener;
use tokio::runtime::{Builder, Runtime};

/// The benchmarks' error type.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The handler every router serves: reads the upload, answers 201.
pub async fn upload(body: Bytes) -> (StatusCode, String) {
    (StatusCode::CREATED, format!("stored {} bytes", body.len()))
}

/// `POST /api/uploads`, unpriced.
pub fn router() -> Router {
    Router::new().route("/api/uploads", post(upload))
}

/// Serves `router` on an ephemeral 127.0.0.1 port of the current runtime.
pub async fn serve(router: Router) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            eprintln!("server on {address} stopped: {e}");
        }
    });
    Ok(address)
}

/// A tokio runtime with 2 worker threads named `threads` (so their CPU time
/// can be told apart in /proc).
pub fn runtime(threads: &str) -> Result<Runtime, Error> {
    Ok(Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(threads)
        .enable_all()
        .build()?)
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

/// The 1, 5 and 15 minute load averages (Linux): how busy the machine was
/// with other work, which a benchmark does not control.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}
