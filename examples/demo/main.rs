//! The tower-tickets demo server (DESIGN.md §8): a small image-upload app
//! whose users get 5 upload and 3 AI tickets a day.
//!
//! Run it with:
//!
//! ```text
//! cargo run --release --example demo
//! cargo run --release --example demo -- --help            # every flag and its env variable
//! cargo run --release --example demo -- --refill-period 2s --admin-token secret
//! ```
//!
//! It serves on 127.0.0.1:8080 with the embedded (in-memory) store. Sign up
//! with `POST /api/signup`, then send the returned token as
//! `Authorization: Bearer <token>`; see README.md ("A session with the demo") for a curl
//! session.

mod admin;
mod ai;
mod auth;
mod balances;
mod cli;
mod first_answers;
mod identity;
mod ids;
mod metrics;
mod page;
mod problem;
mod routes;
mod serve;
mod signup;
mod signup_limit;
mod store;
mod uploads;

use std::error::Error;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tower_tickets::{Refill, TicketKind, Tickets};
use tracing_subscriber::EnvFilter;

use crate::auth::AdminToken;
use crate::cli::Cli;
use crate::first_answers::FirstAnswers;
use crate::routes::AppState;
use crate::signup_limit::SignupLimit;
use crate::uploads::Uploads;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn Error>> {
    // First, so that every metric the stores and the layer register lands here.
    let metrics = metrics::install()?;
    let refill = Refill::rolling(cli.refill_period);
    let kinds = [
        TicketKind::new("upload", 5)
            .label_in("fr", "d'envoi")
            .refill(refill.clone()),
        TicketKind::new("ai", 3)
            .label("AI")
            .label_in("fr", "IA")
            .refill(refill),
    ];
    let store = store::open(&cli.store, &kinds).await?;
    let builder = kinds
        .into_iter()
        .fold(Tickets::builder(), |builder, kind| builder.kind(kind))
        .store(store);
    let (builder, issuer) = identity::install(builder, &cli.identity, cli.jwt_secret)?;
    let tickets = builder.build()?;
    tracing::info!(
        store = %cli.store.describe(),
        refill_period = %humantime::format_duration(cli.refill_period),
        "5 upload and 3 AI tickets per user"
    );
    let state = AppState {
        tickets,
        issuer,
        admin: AdminToken::new(cli.admin_token),
        uploads: Uploads::default(),
        first_answers: FirstAnswers::default(),
        signup_limit: SignupLimit::default(),
        metrics,
    };
    let app = routes::router(state)?;

    let listener = TcpListener::bind(cli.bind)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cli.bind))?;
    // Tests start the demo with `--bind 127.0.0.1:0` and read this line.
    tracing::info!("listening on http://{}", listener.local_addr()?);
    serve::serve(listener, app, cli.header_read_timeout, shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on Ctrl-C (or SIGTERM on Unix): in-flight requests finish first.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
