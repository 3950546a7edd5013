//! A refund's final word: one `refund.succeeded` or `refund.failed` event
//! per refund (its event id is stable per refund and type, so every partial
//! refund of a payment has its own), and a signed webhook to the merchant.
//! A reversal's is `payment.reversed` or `payment.reversal_failed`.

use chrono::Utc;
use payfleet_common::{
    messages::{self, RefundEvent, RefundResult, RefundStep, ReversalEvent, SCHEMA_VERSION, event},
    runtime::{Outcome, StageError, StageTx},
};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::Operation;
use crate::domain::refund::RefundKind;

pub(super) async fn notify(tx: &mut StageTx, m: &RefundStep) -> Result<Outcome, StageError> {
    tx.set_correlation_id(&m.payment_id.to_string());
    let Some(result) = m.result else {
        return Err(StageError::permanent(format!(
            "refund.outcome for refund {} carries no result",
            m.refund_id
        )));
    };
    let Some(row) = Row::load(tx, m.refund_id).await? else {
        return Ok(Outcome::NotYet {
            reason: format!("refund {} not found", m.refund_id),
        });
    };
    let event_type = match (row.kind, result) {
        (RefundKind::Refund, RefundResult::Succeeded) => event::REFUND_SUCCEEDED,
        (RefundKind::Refund, RefundResult::Failed) => event::REFUND_FAILED,
        (RefundKind::Reversal, RefundResult::Succeeded) => event::REVERSED,
        (RefundKind::Reversal, RefundResult::Failed) => event::REVERSAL_FAILED,
    };
    let operation = Operation {
        payment_id: Some(m.payment_id),
        refund_id: Some(m.refund_id),
        withdrawal_id: None,
        transfer_id: None,
        event_type,
    };
    let event_id = messages::stable_id(&["event", &m.refund_id.to_string(), event_type]);
    if !operation.claim_event(tx, event_id).await? {
        return Ok(Outcome::Stale {
            reason: format!("{event_type} for refund {} already emitted", m.refund_id),
        });
    }
    let url = row.payment_url.clone().or_else(|| row.merchant_url.clone());
    let merchant_id = row.merchant_id.clone();
    let reason = row.detail.clone().or_else(|| m.reason.clone());
    let occurred_at = Utc::now();
    match row.kind {
        RefundKind::Refund => {
            let event = RefundEvent {
                schema_version: SCHEMA_VERSION,
                event_id,
                event_type: event_type.to_owned(),
                refund_id: m.refund_id,
                merchant_id: row.merchant_id,
                merchant_refund_id: row.merchant_request_id,
                payment_id: Some(m.payment_id),
                merchant_order_id: Some(row.merchant_order_id),
                status: row.status,
                amount: row.amount,
                currency: row.currency,
                refunded_total: row.refunded_total,
                reason,
                occurred_at,
            };
            operation
                .publish(tx, event_id, &merchant_id, &event, url)
                .await
        }
        RefundKind::Reversal => {
            let event = ReversalEvent {
                schema_version: SCHEMA_VERSION,
                event_id,
                event_type: event_type.to_owned(),
                reversal_id: m.refund_id,
                merchant_id: row.merchant_id,
                merchant_reversal_id: row.merchant_request_id,
                payment_id: Some(m.payment_id),
                merchant_order_id: Some(row.merchant_order_id),
                status: row.status,
                amount: row.amount,
                currency: row.currency,
                reason,
                occurred_at,
            };
            operation
                .publish(tx, event_id, &merchant_id, &event, url)
                .await
        }
    }
}

/// An upstream refund (or reversal) as its event reports it, and where
/// its webhook goes (the payment's notify URL, else the merchant's).
struct Row {
    kind: RefundKind,
    merchant_id: String,
    merchant_request_id: String,
    merchant_order_id: String,
    status: String,
    amount: Decimal,
    currency: String,
    detail: Option<String>,
    /// What the payment has had back in all: its refunds and a reversal.
    refunded_total: Decimal,
    payment_url: Option<String>,
    merchant_url: Option<String>,
}

impl Row {
    async fn load(tx: &mut StageTx, refund_id: Uuid) -> Result<Option<Row>, StageError> {
        type Columns = (
            String,
            String,
            String,
            String,
            String,
            Decimal,
            String,
            Option<String>,
            Decimal,
            Option<String>,
            Option<String>,
        );
        let row: Option<Columns> = sqlx::query_as(
            "SELECT r.kind, r.merchant_id, r.merchant_refund_id, p.merchant_order_id, r.status, r.amount,
                    r.currency::text, r.detail,
                    (SELECT COALESCE(sum(o.amount), 0) FROM refunds o
                      WHERE o.payment_id = r.payment_id AND o.origin = 'upstream' AND o.status = 'succeeded'),
                    p.notify_url, m.notify_url
             FROM refunds r JOIN payments p ON p.id = r.payment_id JOIN merchants m ON m.id = r.merchant_id
             WHERE r.id = $1 AND r.origin = 'upstream'",
        )
        .bind(refund_id)
        .fetch_optional(tx.conn())
        .await?;
        Ok(row.map(
            |(
                kind,
                merchant_id,
                merchant_request_id,
                merchant_order_id,
                status,
                amount,
                currency,
                detail,
                refunded_total,
                payment_url,
                merchant_url,
            )| Row {
                kind: if kind == RefundKind::Reversal.as_str() {
                    RefundKind::Reversal
                } else {
                    RefundKind::Refund
                },
                merchant_id,
                merchant_request_id,
                merchant_order_id,
                status,
                amount,
                currency,
                detail,
                refunded_total,
                payment_url,
                merchant_url,
            },
        ))
    }
}
