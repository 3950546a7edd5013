//! `payfleet webhook`: merchant webhook deliveries listed by payment,
//! merchant and time, sent again (an exhausted one, or any finished one),
//! and a merchant's webhook secret rotated. Sending again resets the
//! delivery to pending: it keeps its `webhook-id` (the event id), the
//! attempt log goes on, the retry schedule starts again, the webhook's
//! parked dead letter is marked replayed, and the resend is on record in
//! `webhook_resends`. `dlq replay` of a webhook's dead letter does the same.

use chrono::{DateTime, Utc};
use payfleet_common::PaymentId;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::Result;

/// Which deliveries.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Filter {
    pub payment: Option<PaymentId>,
    pub merchant: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub statuses: Vec<String>,
    pub limit: i64,
}

#[derive(Debug, sqlx::FromRow, serde::Serialize)]
pub struct Delivery {
    pub id: Uuid,
    /// The payment (or its refund) the event is about; none for a
    /// withdrawal's or a transfer's.
    pub payment_id: Option<PaymentId>,
    pub withdrawal_id: Option<Uuid>,
    pub transfer_id: Option<Uuid>,
    pub merchant_id: String,
    pub event_type: String,
    pub url: String,
    pub status: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// Parses `--since` / `--until`: an age (`30m`, `2h`, `7d`: that long ago),
/// an RFC 3339 time or a date (midnight UTC).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(age) = super::parse_age(text) {
        return Ok(Utc::now() - age);
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(at.with_timezone(&Utc));
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
        return Ok(day.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    Err(format!(
        "`{text}` is neither an age (30m, 2h, 7d) nor a time (2026-12-02T09:00:00Z or 2026-12-02)"
    ))
}

pub async fn list(pool: &PgPool, f: &Filter) -> Result<Vec<Delivery>> {
    Ok(sqlx::query_as(
        "SELECT d.id, d.payment_id, d.withdrawal_id, d.transfer_id, d.merchant_id, d.event_type, d.url, d.status, d.attempts,
                d.created_at, d.delivered_at,
                (SELECT COALESCE(a.error, a.http_status::text) FROM webhook_attempts a
                 WHERE a.delivery_id = d.id ORDER BY a.attempt DESC LIMIT 1) AS last_error
         FROM webhook_deliveries d
         WHERE ($1::uuid IS NULL OR d.payment_id = $1)
           AND ($2::text IS NULL OR d.merchant_id = $2)
           AND ($3::timestamptz IS NULL OR d.created_at >= $3)
           AND ($4::timestamptz IS NULL OR d.created_at < $4)
           AND (cardinality($5::text[]) = 0 OR d.status = ANY($5))
         ORDER BY d.created_at, d.id LIMIT $6",
    )
    .bind(f.payment)
    .bind(&f.merchant)
    .bind(f.since)
    .bind(f.until)
    .bind(&f.statuses)
    .bind(f.limit)
    .fetch_all(pool)
    .await?)
}

/// Resets these deliveries (those not pending) so the webhook sender sends
/// them again now; marks their parked dead letters replayed; records the
/// resend. Returns the deliveries reset.
pub async fn resend(
    pool: &PgPool,
    ids: &[Uuid],
    operator: &str,
    via: &str,
    selection: Value,
) -> Result<Vec<Uuid>> {
    let mut tx = pool.begin().await?;
    let reset = crate::domain::webhook_delivery::reopen(&mut *tx, ids).await?;
    let message_ids: Vec<String> = reset.iter().map(Uuid::to_string).collect();
    sqlx::query(
        "UPDATE dead_letters SET status = 'replayed', status_changed_at = now()
         WHERE message_id = ANY($1) AND stage = $2 AND status = 'parked'",
    )
    .bind(&message_ids)
    .bind(crate::domain::handoff::NOTIFICATION)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO webhook_resends (operator, via, selection, delivery_ids, count) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(operator)
    .bind(via)
    .bind(selection)
    .bind(&reset)
    .bind(reset.len() as i32)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(reset)
}
