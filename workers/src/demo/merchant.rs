//! The demo merchant's webhook endpoint.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use payfleet_common::messages;

/// What the demo merchant's endpoint has accepted: verified webhooks, their
/// distinct ids (a webhook delivered again keeps its id), and the secrets it
/// verifies with (known once the merchant is seeded).
#[derive(Default)]
pub(super) struct WebhookCount {
    pub(super) received: AtomicU64,
    pub(super) ids: std::sync::Mutex<std::collections::HashSet<String>>,
    pub(super) secrets: std::sync::RwLock<Vec<String>>,
}

/// A merchant endpoint for the demo's webhooks: verifies each one (Standard
/// Webhooks, with the merchant's webhook secrets) and counts them.
pub(super) async fn webhook_receiver() -> anyhow::Result<(String, Arc<WebhookCount>)> {
    use axum::{
        Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post,
    };
    let count = Arc::new(WebhookCount::default());
    let app = Router::new()
        .route(
            "/webhooks",
            post(
                |State(count): State<Arc<WebhookCount>>, headers: HeaderMap, body: Bytes| async move {
                    let headers: std::collections::BTreeMap<String, String> = headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                        .collect();
                    let verified = count
                        .secrets
                        .read()
                        .expect("lock")
                        .iter()
                        .any(|secret| messages::verify_webhook(secret, &headers, &body));
                    if !verified {
                        return StatusCode::UNAUTHORIZED;
                    }
                    count.received.fetch_add(1, Ordering::Relaxed);
                    if let Some(id) = headers.get("webhook-id") {
                        count.ids.lock().expect("lock").insert(id.clone());
                    }
                    StatusCode::OK
                },
            ),
        )
        .with_state(count.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/webhooks", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, count))
}
