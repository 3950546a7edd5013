//! Where a merchant's payment stands, read from PostgreSQL in one
//! read-only snapshot (so its refunded total and its refunds agree), each
//! step an indexed lookup: the payment by its primary key (a merchant order
//! id gives the payment id, derived as order-validation derives it), a
//! refund by `refunds_merchant_request` (merchant, kind, merchant refund
//! id), its refunds by `refunds_payment`. Another merchant's payment is not
//! found, exactly like one that does not exist.

use chrono::{DateTime, Utc};
use payfleet_common::{
    PaymentId,
    messages::{
        MAX_REFUNDS_LISTED, PaymentStanding, RefundStanding, StatusErrorCode, StatusLookup,
        StatusReply, StatusRequest,
    },
};
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::stages::order_validation;

/// The reply to a request that passed its checks: its payment, or `not_found`.
pub async fn standing(pool: &PgPool, request: &StatusRequest) -> Result<StatusReply, sqlx::Error> {
    let merchant = request.merchant_id.as_str();
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let (payment_id, refund_id) = match request.lookup() {
        Some(StatusLookup::Payment(id)) => (Some(id), None),
        Some(StatusLookup::MerchantOrder(order)) => {
            (Some(order_validation::payment_id(merchant, &order)), None)
        }
        Some(StatusLookup::MerchantRefund(id)) => {
            refund_of(&mut tx, merchant, "refund", &id).await?
        }
        Some(StatusLookup::MerchantReversal(id)) => {
            refund_of(&mut tx, merchant, "reversal", &id).await?
        }
        // The schema asks for exactly one: a request without is refused before.
        None => (None, None),
    };
    let payment = match payment_id {
        Some(id) => payment(&mut tx, merchant, id, refund_id).await?,
        None => None,
    };
    tx.commit().await?;
    Ok(match payment {
        Some(payment) => StatusReply::found(payment, refund_id),
        None => StatusReply::refused(
            StatusErrorCode::NotFound,
            "no such payment or refund of this merchant",
        ),
    })
}

/// The payment and refund ids of a merchant's refund (or reversal) request.
async fn refund_of(
    tx: &mut Transaction<'_, Postgres>,
    merchant: &str,
    kind: &str,
    merchant_refund_id: &str,
) -> Result<(Option<PaymentId>, Option<Uuid>), sqlx::Error> {
    let found: Option<(PaymentId, Uuid)> = sqlx::query_as(
        "SELECT payment_id, id FROM refunds
         WHERE merchant_id = $1 AND kind = $2 AND merchant_refund_id = $3 AND origin = 'upstream'",
    )
    .bind(merchant)
    .bind(kind)
    .bind(merchant_refund_id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(found.map_or((None, None), |(payment, refund)| {
        (Some(payment), Some(refund))
    }))
}

type PaymentRow = (
    String,
    String,
    Option<String>,
    Decimal,
    String,
    String,
    Option<String>,
    Decimal,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

/// Payment `id` when it is `merchant`'s, with its refunds (`asked` first).
async fn payment(
    tx: &mut Transaction<'_, Postgres>,
    merchant: &str,
    id: PaymentId,
    asked: Option<Uuid>,
) -> Result<Option<PaymentStanding>, sqlx::Error> {
    let row: Option<PaymentRow> = sqlx::query_as(
        "SELECT p.merchant_order_id, p.status, p.reason, p.amount, p.currency::text, p.method, p.channel,
                (SELECT COALESCE(sum(r.amount), 0) FROM refunds r
                  WHERE r.payment_id = p.id AND r.origin = 'upstream' AND r.status = 'succeeded'),
                p.created_at, p.updated_at, p.finished_at
         FROM payments p WHERE p.id = $1 AND p.merchant_id = $2",
    )
    .bind(id)
    .bind(merchant)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((
        merchant_order_id,
        status,
        reason,
        amount,
        currency,
        payment_method,
        channel,
        refunded_total,
        created_at,
        updated_at,
        finished_at,
    )) = row
    else {
        return Ok(None);
    };
    Ok(Some(PaymentStanding {
        payment_id: id,
        merchant_order_id,
        status,
        reason,
        amount,
        currency,
        payment_method,
        channel,
        refunded_total,
        created_at,
        updated_at,
        finished_at,
        refunds: refunds(tx, id, asked).await?,
    }))
}

type RefundRow = (
    Uuid,
    String,
    String,
    Option<String>,
    Decimal,
    String,
    String,
    String,
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

/// A payment's refunds, newest first, the one asked about always listed.
async fn refunds(
    tx: &mut Transaction<'_, Postgres>,
    payment: PaymentId,
    asked: Option<Uuid>,
) -> Result<Vec<RefundStanding>, sqlx::Error> {
    let rows: Vec<RefundRow> = sqlx::query_as(
        "SELECT id, kind, origin, merchant_refund_id, amount, currency::text, status, reason, detail,
                created_at, updated_at, refunded_at
         FROM refunds WHERE payment_id = $1
         ORDER BY (id IS NOT DISTINCT FROM $2::uuid) DESC, created_at DESC, id LIMIT $3",
    )
    .bind(payment)
    .bind(asked)
    .bind(i64::try_from(MAX_REFUNDS_LISTED).unwrap_or(i64::MAX))
    .fetch_all(&mut **tx)
    .await?;
    let mut refunds: Vec<RefundStanding> = rows
        .into_iter()
        .map(
            |(
                refund_id,
                kind,
                origin,
                merchant_refund_id,
                amount,
                currency,
                status,
                reason,
                detail,
                created_at,
                updated_at,
                refunded_at,
            )| RefundStanding {
                refund_id,
                kind,
                origin,
                merchant_refund_id,
                amount,
                currency,
                status,
                reason,
                detail,
                created_at,
                updated_at,
                refunded_at,
            },
        )
        .collect();
    // The one asked about came first to be sure of a place; newest first for the rest.
    refunds.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then(a.refund_id.cmp(&b.refund_id))
    });
    Ok(refunds)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use crate::domain::{payment::PaymentStatus, refund::RefundStatus};

    fn reply_enum(def: &str, property: &str) -> BTreeSet<String> {
        let schema: Value = serde_json::from_str(include_str!(
            "../../../contracts/v1/status.reply.schema.json"
        ))
        .unwrap();
        schema["$defs"][def]["properties"][property]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn the_replys_statuses_are_the_domains() {
        let payments: BTreeSet<String> = PaymentStatus::ALL
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        assert_eq!(reply_enum("payment", "status"), payments);
        let refunds: BTreeSet<String> = RefundStatus::ALL
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        assert_eq!(reply_enum("refund", "status"), refunds);
    }
}
