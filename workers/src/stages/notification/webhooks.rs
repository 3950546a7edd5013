//! The merchant webhook sender: due deliveries are claimed with a lease
//! (several processes share the work), sent signed outside any
//! transaction, every attempt logged, retried on their own schedule, and
//! an exhausted one dead-lettered to notification's DLQ.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use payfleet_common::{
    CancellationToken, broker, messages,
    runtime::{
        Inbound, Shared,
        dead_letter::{self, ErrorKind},
    },
};
use serde_json::Value;
use uuid::Uuid;

use super::{
    NAME, WEBHOOK_DELIVERY_TYPE, WEBHOOK_ID_HEADER, WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER, webhook_target,
};
use crate::domain::webhook_delivery::{self, DeliveryStatus};

#[derive(sqlx::FromRow)]
struct Due {
    id: Uuid,
    /// The payment or the withdrawal the event is about: the correlation id.
    subject_id: Uuid,
    url: String,
    payload: Value,
    attempts: i32,
    schedule_from: i32,
    secrets: Vec<String>,
    notify_hosts: Vec<String>,
    merchant_url: Option<String>,
}

/// Sends due webhooks until `stop`; claims rows with a lease so several
/// processes share the work.
pub async fn run_webhooks(shared: Arc<Shared>, stop: CancellationToken) {
    let timeout = shared.settings.webhook_timeout;
    let client = match webhook_target::client(
        timeout,
        shared.settings.webhook_allow_loopback,
        &shared.extra_ca,
    ) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot build the webhook HTTP client; webhooks are not sent");
            return;
        }
    };
    loop {
        let sent = match deliver_due(&shared, &client).await {
            Ok(n) => n,
            Err(error) => {
                tracing::warn!(%error, "webhook pass failed");
                0
            }
        };
        if sent > 0 {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn deliver_due(shared: &Shared, client: &reqwest::Client) -> Result<usize, sqlx::Error> {
    let pool = &shared.pool;
    let due: Vec<Due> = sqlx::query_as(
        "UPDATE webhook_deliveries d SET claimed_until = now() + interval '60 seconds'
         FROM merchants m
         WHERE d.id IN (SELECT id FROM webhook_deliveries
                        WHERE status = 'pending' AND next_attempt_at <= now() AND (claimed_until IS NULL OR claimed_until < now())
                        ORDER BY next_attempt_at LIMIT 32 FOR UPDATE SKIP LOCKED)
           AND m.id = d.merchant_id
         RETURNING d.id, COALESCE(d.payment_id, d.withdrawal_id, d.transfer_id) AS subject_id, d.url, d.payload, d.attempts, d.schedule_from,
                   ARRAY(SELECT s.secret FROM merchant_webhook_secrets s
                         WHERE s.merchant_id = m.id AND (s.expires_at IS NULL OR s.expires_at > now())
                         ORDER BY s.created_at DESC) AS secrets,
                   m.notify_hosts, m.notify_url AS merchant_url",
    )
    .fetch_all(pool)
    .await?;
    let count = due.len();
    let allow_loopback = shared.settings.webhook_allow_loopback;
    let sends = due.into_iter().map(|d| send(client, allow_loopback, d));
    for (d, http_status, error, refused, elapsed) in futures_util::future::join_all(sends).await {
        record(shared, &d, http_status, error, refused, elapsed).await?;
    }
    Ok(count)
}

/// What one webhook send came to: the delivery, the HTTP status, the error,
/// whether the target was refused (never retried) and the time taken.
type Sent = (Due, Option<i32>, Option<String>, bool, i32);

/// Sends one due webhook, signed, to its checked target.
async fn send(client: &reqwest::Client, allow_loopback: bool, d: Due) -> Sent {
    let body = serde_json::to_vec(&d.payload).unwrap_or_default();
    let started = std::time::Instant::now();
    let target = match webhook_target::check(
        &d.url,
        &d.notify_hosts,
        d.merchant_url.as_deref(),
        allow_loopback,
    ) {
        Ok(target) => target,
        Err(refused) => return (d, None, Some(refused.to_string()), true, 0),
    };
    let id = webhook_id(&d);
    let timestamp = Utc::now().timestamp();
    let signatures = messages::webhook_signatures(&d.secrets, &id, timestamp, &body);
    if signatures.is_empty() {
        return (
            d,
            None,
            Some("no active webhook secret".to_owned()),
            false,
            0,
        );
    }
    let response = client
        .post(target)
        .header("content-type", "application/json")
        .header(WEBHOOK_ID_HEADER, id)
        .header(WEBHOOK_TIMESTAMP_HEADER, timestamp.to_string())
        .header(WEBHOOK_SIGNATURE_HEADER, signatures)
        .body(body)
        .send()
        .await;
    let elapsed = started.elapsed().as_millis() as i32;
    let (http_status, error, refused) = match response {
        Ok(r) if r.status().is_success() => (Some(i32::from(r.status().as_u16())), None, false),
        Ok(r) => (
            Some(i32::from(r.status().as_u16())),
            Some(format!("HTTP {}", r.status())),
            false,
        ),
        Err(e) => match webhook_target::refusal(&e) {
            Some(refused) => (None, Some(refused), true),
            // the whole chain: the cause (a refused certificate, a reset) is at its end
            None => (None, Some(format!("{:#}", anyhow::Error::new(e))), false),
        },
    };
    (d, http_status, error, refused, elapsed)
}

/// Records an attempt and moves its delivery: delivered, refused, retried
/// later, or exhausted (dead-lettered).
async fn record(
    shared: &Shared,
    d: &Due,
    http_status: Option<i32>,
    error: Option<String>,
    refused: bool,
    elapsed: i32,
) -> Result<(), sqlx::Error> {
    let pool = &shared.pool;
    let attempt = d.attempts + 1;
    sqlx::query("INSERT INTO webhook_attempts (delivery_id, attempt, http_status, error, duration_ms) VALUES ($1, $2, $3, $4, $5)")
        .bind(d.id)
        .bind(attempt)
        .bind(http_status)
        .bind(&error)
        .bind(elapsed)
        .execute(pool)
        .await?;
    match error {
        None => {
            webhook_delivery::finish(pool, d.id, attempt, DeliveryStatus::Delivered).await?;
            metrics::counter!("payfleet_webhooks_total", "result" => "delivered").increment(1);
        }
        Some(error) if refused => {
            // Permanent: on record in webhook_attempts, not retried.
            webhook_delivery::finish(pool, d.id, attempt, DeliveryStatus::Refused).await?;
            metrics::counter!("payfleet_webhooks_total", "result" => "refused").increment(1);
            tracing::warn!(delivery = %d.id, subject_id = %d.subject_id, %error, "webhook target refused");
        }
        Some(error) => {
            let schedule = &shared.settings.webhook_delays;
            // A resend starts the schedule again.
            match schedule.get((d.attempts - d.schedule_from).max(0) as usize) {
                Some(delay) => {
                    sqlx::query(
                        "UPDATE webhook_deliveries SET attempts = $2, claimed_until = NULL,
                                next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1",
                    )
                    .bind(d.id)
                    .bind(attempt)
                    .bind(delay.as_secs_f64())
                    .execute(pool)
                    .await?;
                    metrics::counter!("payfleet_webhooks_total", "result" => "retried")
                        .increment(1);
                }
                None => {
                    if let Err(publish) = dead_letter_webhook(shared, d, attempt, &error).await {
                        // Not recorded as exhausted: the next pass tries again.
                        tracing::warn!(%publish, delivery = %d.id, "cannot dead-letter an exhausted webhook yet");
                        return Ok(());
                    }
                    webhook_delivery::finish(pool, d.id, attempt, DeliveryStatus::Exhausted)
                        .await?;
                    metrics::counter!("payfleet_webhooks_total", "result" => "exhausted")
                        .increment(1);
                    tracing::warn!(delivery = %d.id, subject_id = %d.subject_id, %error, "webhook retries exhausted; dead-lettered");
                }
            }
        }
    }
    Ok(())
}

/// The `webhook-id` of a delivery: its event id, the same for every attempt
/// and resend, so a merchant deduplicates on it.
fn webhook_id(d: &Due) -> String {
    d.payload
        .get("event_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| d.id.to_string())
}

/// Rotates a merchant's webhook secret: a new current secret, and every
/// other active one kept for `grace` (webhooks are signed with each
/// meanwhile). Returns the new secret.
pub async fn rotate_webhook_secret(
    pool: &sqlx::PgPool,
    merchant_id: &str,
    grace: chrono::Duration,
) -> Result<String, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // One rotation of a merchant at a time.
    sqlx::query_scalar::<_, String>("SELECT id FROM merchants WHERE id = $1 FOR UPDATE")
        .bind(merchant_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    let grace_s = grace.num_milliseconds().max(0) as f64 / 1000.0;
    sqlx::query(
        "UPDATE merchant_webhook_secrets SET expires_at = now() + make_interval(secs => $2)
         WHERE merchant_id = $1 AND (expires_at IS NULL OR expires_at > now() + make_interval(secs => $2))",
    )
    .bind(merchant_id)
    .bind(grace_s)
    .execute(&mut *tx)
    .await?;
    let secret: String = sqlx::query_scalar(
        "INSERT INTO merchant_webhook_secrets (merchant_id, secret) VALUES ($1, new_webhook_secret()) RETURNING secret",
    )
    .bind(merchant_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(secret)
}

async fn dead_letter_webhook(
    shared: &Shared,
    d: &Due,
    attempts: i32,
    error: &str,
) -> Result<(), broker::PublishError> {
    // The delivery goes to this stage's DLQ through the runtime's own
    // dead-lettering, as the message it would have been.
    let inbound = Inbound {
        stage: NAME.to_owned(),
        message_id: d.id.to_string(),
        correlation_id: Some(d.subject_id.to_string()),
        message_type: Some(WEBHOOK_DELIVERY_TYPE.to_owned()),
        attempt: 0,
        redelivered: false,
        suspect: false,
        routing_key: NAME.to_owned(),
        headers: lapin::types::FieldTable::default(),
        body: serde_json::to_vec(&d.payload).unwrap_or_default(),
    };
    let properties = broker::properties(
        &inbound.message_id,
        inbound.correlation_id.as_deref(),
        inbound.message_type.as_deref(),
    );
    dead_letter::publish(
        &shared.publisher,
        &shared.topology.exchanges().dead_letters,
        &inbound,
        &properties,
        ErrorKind::Exhausted,
        &format!("webhook to {} failed {attempts} times: {error}", d.url),
        attempts.max(0) as u32,
    )
    .await
}
