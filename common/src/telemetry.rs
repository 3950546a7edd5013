//! Logs, metrics and health: tracing with the payment id on every span,
//! Prometheus metrics on `/metrics`, and `/healthz` / `/readyz`.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogFormat, Settings};

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
struct HttpState {
    health: Health,
    pool: PgPool,
    metrics: PrometheusHandle,
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `cancel` fires.
/// `extra` adds the routes of the stages a process runs (webhook ingress).
pub async fn serve_http(
    addr: SocketAddr,
    health: Health,
    pool: PgPool,
    extra: Option<Router>,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let state = HttpState {
        health,
        pool,
        metrics: metrics_handle(),
    };
    let mut app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<HttpState>| async move { s.metrics.render() }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    if let Some(extra) = extra {
        app = app.merge(extra);
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::warn!(%error, "HTTP endpoint stopped");
        }
    });
    Ok(bound)
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, String) {
    let not_ready = s.health.not_ready();
    if !not_ready.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not connected: {}\n", not_ready.join(", ")),
        );
    }
    match sqlx::query("SELECT 1").execute(&s.pool).await {
        Ok(_) => (StatusCode::OK, "ready\n".into()),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("PostgreSQL: {error}\n"),
        ),
    }
}
