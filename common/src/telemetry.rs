//! Logs, metrics and health: tracing with the payment id on every span,
//! Prometheus metrics on `/metrics`, and `/healthz` / `/readyz`.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::{
    config::{LogFormat, Settings},
    lock::Locks,
};

/// Installs the tracing subscriber once per process (later calls are no-ops).
pub fn init_tracing(settings: &Settings) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let filter = EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(&settings.log_filter))
            .unwrap_or_else(|_| EnvFilter::new("info"));
        let registry = tracing_subscriber::registry().with(filter);
        let _ = match settings.log_format {
            LogFormat::Json => registry
                .with(
                    fmt::layer()
                        .json()
                        .with_current_span(true)
                        .with_writer(std::io::stderr),
                )
                .try_init(),
            LogFormat::Text => registry
                .with(fmt::layer().with_writer(std::io::stderr))
                .try_init(),
        };
    });
}

/// Request received → final event, per payment: seconds to tens of minutes
/// (status queries, expiry), so buckets of its own.
pub const END_TO_END_HISTOGRAM: &str = "payfleet_payment_end_to_end_seconds";

/// The process-wide Prometheus recorder.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .expect("static bucket list is valid")
                .set_buckets_for_metric(
                    Matcher::Full(END_TO_END_HISTOGRAM.into()),
                    &[
                        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
                        1800.0,
                    ],
                )
                .expect("static bucket list is valid")
                .build_recorder();
            let handle = recorder.handle();
            // A second recorder in the same process (tests) keeps the first.
            let _ = metrics::set_global_recorder(recorder);
            metrics::describe_counter!("payfleet_messages_total", "Deliveries handled per stage, by result (applied, stale, duplicate, exception, retried, lock_busy, dead_lettered, requeued)");
            metrics::describe_counter!("payfleet_dead_lettered_total", "Messages dead-lettered per stage and error kind");
            metrics::describe_histogram!("payfleet_handle_seconds", "Time to handle one delivery, per stage");
            metrics::describe_histogram!("payfleet_queue_wait_seconds", "Time a first delivery relayed by the outbox waited in its stage's queue, per stage");
            metrics::describe_counter!("payfleet_outbox_sent_total", "Outbox rows published and confirmed");
            metrics::describe_counter!("payfleet_outbox_returned_total", "Outbox publishes returned unroutable");
            metrics::describe_counter!("payfleet_webhooks_total", "Merchant webhook attempts by result");
            metrics::describe_counter!("payfleet_webhooks_in_total", "Channel webhooks received by result");
            metrics::describe_counter!("payfleet_batch_stepped_out_total", "Batched messages that waited too long for a row lock and ran alone after the commit, per stage");
            metrics::describe_counter!("payfleet_batches_rerun_total", "Batches PostgreSQL aborted as a whole and re-ran one message at a time, per stage");
            metrics::describe_counter!("payfleet_messages_together_total", "Batched messages a stage applied set-based with others of their batch (the Try, the resolution and the Confirm of plain wallet purchases), per stage");
            metrics::describe_counter!("payfleet_together_undone_total", "Set-based work of a batch undone (an entry already written, a wallet holding less frozen), its messages then handled one at a time, per stage");
            metrics::describe_histogram!("payfleet_batch_messages", "Deliveries per batch transaction, per stage");
            metrics::describe_gauge!(crate::lock::DEGRADED_GAUGE, "1 while Redis does not answer (locks are PostgreSQL leases), else 0");
            handle
        })
        .clone()
}

/// Which consumers are connected, for `/readyz`.
#[derive(Clone, Default)]
pub struct Health {
    consumers: Arc<Mutex<BTreeMap<String, bool>>>,
}

impl Health {
    pub fn expect(&self, consumer: &str) {
        self.consumers
            .lock()
            .expect("health lock")
            .entry(consumer.to_owned())
            .or_insert(false);
    }
    pub fn consumer_up(&self, consumer: &str) {
        self.consumers
            .lock()
            .expect("health lock")
            .insert(consumer.to_owned(), true);
    }
    pub fn consumer_down(&self, consumer: &str) {
        self.consumers
            .lock()
            .expect("health lock")
            .insert(consumer.to_owned(), false);
    }
    /// Consumers that are not connected.
    pub fn not_ready(&self) -> Vec<String> {
        self.consumers
            .lock()
            .expect("health lock")
            .iter()
            .filter(|(_, up)| !**up)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

#[derive(Clone)]
struct OpsState {
    health: Health,
    pool: PgPool,
    locks: Locks,
    metrics: PrometheusHandle,
}

/// Serves the operators' endpoints — `/metrics`, `/healthz`, `/readyz` —
/// on `addr` until `cancel` fires.
pub async fn serve_ops(
    addr: SocketAddr,
    health: Health,
    pool: PgPool,
    locks: Locks,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let state = OpsState {
        health,
        pool,
        locks,
        metrics: metrics_handle(),
    };
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<OpsState>| async move { s.metrics.render() }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    serve(addr, app, cancel).await
}

/// Serves `routes` (the public webhook ingress) on `addr`, apart from the
/// operators' endpoints, until `cancel` fires.
pub async fn serve_routes(
    addr: SocketAddr,
    routes: Router,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    serve(addr, routes, cancel).await
}

async fn serve(
    addr: SocketAddr,
    app: Router,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::warn!(%error, %bound, "HTTP endpoint stopped");
        }
    });
    Ok(bound)
}

/// Ready when every consumer is connected to the broker and PostgreSQL
/// answers; Redis being away is reported (the fleet runs degraded on
/// PostgreSQL leases) but never makes the process unready.
async fn readyz(State(s): State<OpsState>) -> (StatusCode, String) {
    let not_ready = s.health.not_ready();
    if !not_ready.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("broker: not connected: {}\n", not_ready.join(", ")),
        );
    }
    if let Err(error) = sqlx::query("SELECT 1").execute(&s.pool).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("PostgreSQL: {error}\n"),
        );
    }
    let redis = if s.locks.degraded() {
        "redis: degraded (locks are PostgreSQL leases)"
    } else {
        "redis: ok"
    };
    (
        StatusCode::OK,
        format!("ready\nbroker: ok\nPostgreSQL: ok\n{redis}\n"),
    )
}
