//! `payfleet refund`: the refunds (same-day reversals among them), asked
//! for by merchants or owed by the platform on its own, and one refund's
//! whole story — its split over the sellers, its journal entry and every
//! call to the channel.

use chrono::{DateTime, Utc};
use payfleet_common::PaymentId;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Error, Result};
use crate::domain::refund::{
    RefundStatus,
    record::{reversal_id, upstream_id},
};

/// The refunds `<refund id>` or `<merchant id>:<merchant refund or reversal id>`
/// may name (a merchant's refund ids and reversal ids are separate namespaces).
pub fn parse_reference(reference: &str) -> Result<Vec<Uuid>> {
    if let Ok(id) = reference.parse::<Uuid>() {
        return Ok(vec![id]);
    }
    match reference.split_once(':') {
        Some((merchant, refund)) if !merchant.is_empty() && !refund.is_empty() => Ok(vec![
            upstream_id(merchant, refund),
            reversal_id(merchant, refund),
        ]),
        _ => Err(Error::refused(format!(
            "`{reference}` is neither a refund id nor merchant-id:merchant-refund-id"
        ))),
    }
}

/// A refund as `refund list` and `refund show` tell it.
#[derive(Debug, serde::Serialize, sqlx::FromRow)]
pub struct RefundRow {
    pub id: Uuid,
    pub payment_id: PaymentId,
    /// `upstream` (asked for by the merchant) or `automatic` (owed by the platform).
    pub origin: String,
    /// `refund`, or `reversal` (the whole payment, cancelled the day it was paid).
    pub kind: String,
    pub merchant_id: Option<String>,
    pub merchant_refund_id: Option<String>,
    pub channel: String,
    pub amount: Decimal,
    pub currency: String,
    pub status: String,
    pub reason: String,
    pub detail: Option<String>,
    pub fee_back: Decimal,
    pub sends: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub booked_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, payment_id, origin, kind, merchant_id, merchant_refund_id, channel, amount, currency::text AS currency,
     status, reason, detail, fee_back, sends, last_error, created_at, updated_at, booked_at";

/// Refunds, newest first, by status and merchant when given.
pub async fn list(
    pool: &PgPool,
    status: Option<&str>,
    merchant: Option<&str>,
    limit: i64,
) -> Result<Vec<RefundRow>> {
    if let Some(status) = status {
        RefundStatus::parse(status).map_err(|_| {
            let known: Vec<&str> = RefundStatus::ALL.iter().map(|s| s.as_str()).collect();
            Error::refused(format!(
                "--status `{status}` is not a refund status ({})",
                known.join(", ")
            ))
        })?;
    }
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM refunds
         WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR merchant_id = $2)
         ORDER BY created_at DESC LIMIT $3"
    ))
    .bind(status)
    .bind(merchant)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// One seller's part of a refund.
#[derive(Debug, serde::Serialize, sqlx::FromRow)]
pub struct Part {
    pub seller_id: String,
    pub amount: Decimal,
    pub fee_back: Decimal,
    pub status: String,
}

/// One line of a refund's timeline.
#[derive(Debug, serde::Serialize, sqlx::FromRow)]
pub struct Line {
    pub at: DateTime<Utc>,
    pub what: String,
}

#[derive(Debug, serde::Serialize)]
pub struct RefundStory {
    pub refund: RefundRow,
    pub parts: Vec<Part>,
    pub timeline: Vec<Line>,
}

/// The refund among `ids` (see [`parse_reference`]) with its parts and
/// its story: calls, postings, events.
pub async fn show(pool: &PgPool, ids: &[Uuid]) -> Result<RefundStory> {
    let mut found: Vec<RefundRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM refunds WHERE id = ANY($1) ORDER BY kind"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await?;
    if found.len() > 1 {
        let named: Vec<String> = found
            .iter()
            .map(|r| format!("{} {}", r.kind, r.id))
            .collect();
        return Err(Error::refused(format!(
            "the merchant's id names both {}: show one by its id",
            named.join(" and ")
        )));
    }
    let Some(refund) = found.pop() else {
        return Err(Error::not_found(format!(
            "no refund {}",
            ids.first().map(Uuid::to_string).unwrap_or_default()
        )));
    };
    let id = refund.id;
    let parts = sqlx::query_as(
        "SELECT seller_id, amount, fee_back, status FROM refund_allocations WHERE refund_id = $1 ORDER BY seller_id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let timeline = sqlx::query_as(
        "SELECT at, what FROM (
           SELECT created_at AS at, 'channel ' || channel || ': ' || COALESCE(payload->>'call', direction || ' ' || (payload->>'status'))
                  || COALESCE(' → ' || COALESCE(payload->>'answer', payload->>'error'), '') AS what
             FROM integration_log WHERE payment_id = $2 AND payload->>'refund_no' = $1::text
           UNION ALL SELECT p.created_at, 'posting ' || a.owner_kind || ':' || a.owner_id || ' ' || p.amount || ' ' || p.currency
             FROM postings p JOIN journal_entries j ON j.id = p.entry_id JOIN accounts a ON a.id = p.account_id
            WHERE j.reference = $1::text
           UNION ALL SELECT created_at, 'event ' || event_type || ' ' || event_id FROM payment_events WHERE refund_id = $1
           UNION ALL SELECT a.at, 'webhook attempt ' || a.attempt || ' to ' || d.url || ': ' || COALESCE(a.http_status::text, a.error)
             FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.refund_id = $1
         ) t ORDER BY at",
    )
    .bind(id)
    .bind(refund.payment_id)
    .fetch_all(pool)
    .await?;
    Ok(RefundStory {
        refund,
        parts,
        timeline,
    })
}
