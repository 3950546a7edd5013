//! A refund's final word: one `refund.succeeded` or `refund.failed` event
//! per refund (its event id is stable per refund and type, so every partial
//! refund of a payment has its own), and a signed webhook to the merchant.

use chrono::Utc;
use payfleet_common::{
    messages::{self, RefundEvent, RefundResult, RefundStep, SCHEMA_VERSION, event},
    runtime::{Outcome, StageError, StageTx},
};
use rust_decimal::Decimal;

use super::Operation;

pub(super) async fn notify(tx: &mut StageTx, m: &RefundStep) -> Result<Outcome, StageError> {
    tx.set_correlation_id(&m.payment_id.to_string());
    let event_type = match m.result {
        Some(RefundResult::Succeeded) => event::REFUND_SUCCEEDED,
        Some(RefundResult::Failed) => event::REFUND_FAILED,
        None => {
            return Err(StageError::permanent(format!(
                "refund.outcome for refund {} carries no result",
                m.refund_id
            )));
        }
    };
    let operation = Operation {
        payment_id: m.payment_id,
        refund_id: Some(m.refund_id),
        event_type,
    };
    let event_id = messages::stable_id(&["event", &m.refund_id.to_string(), event_type]);
    if !operation.claim_event(tx, event_id).await? {
        return Ok(Outcome::Stale {
            reason: format!("{event_type} for refund {} already emitted", m.refund_id),
        });
    }
    let Some((event, url)) = load(tx, m, event_id, event_type).await? else {
        return Ok(Outcome::NotYet {
            reason: format!("refund {} not found", m.refund_id),
        });
    };
    operation
        .publish(tx, event_id, &event.merchant_id, &event, url)
        .await
}

/// The refund's event as the refund reads now, and where its webhook goes
/// (the payment's notify URL, else the merchant's); `None` while not found.
async fn load(
    tx: &mut StageTx,
    m: &RefundStep,
    event_id: uuid::Uuid,
    event_type: &str,
) -> Result<Option<(RefundEvent, Option<String>)>, StageError> {
    type Row = (
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
    let row: Option<Row> = sqlx::query_as(
        "SELECT r.merchant_id, r.merchant_refund_id, p.merchant_order_id, r.status, r.amount, r.currency::text, r.detail,
                (SELECT COALESCE(sum(o.amount), 0) FROM refunds o
                  WHERE o.payment_id = r.payment_id AND o.origin = 'upstream' AND o.status = 'succeeded'),
                p.notify_url, m.notify_url
         FROM refunds r JOIN payments p ON p.id = r.payment_id JOIN merchants m ON m.id = r.merchant_id
         WHERE r.id = $1 AND r.origin = 'upstream'",
    )
    .bind(m.refund_id)
    .fetch_optional(tx.conn())
    .await?;
    let Some((
        merchant_id,
        merchant_refund_id,
        merchant_order_id,
        status,
        amount,
        currency,
        detail,
        refunded_total,
        payment_url,
        merchant_url,
    )) = row
    else {
        return Ok(None);
    };
    let event = RefundEvent {
        schema_version: SCHEMA_VERSION,
        event_id,
        event_type: event_type.to_owned(),
        refund_id: m.refund_id,
        merchant_id: merchant_id.clone(),
        merchant_refund_id,
        payment_id: Some(m.payment_id),
        merchant_order_id: Some(merchant_order_id),
        status,
        amount,
        currency,
        refunded_total,
        reason: detail.or_else(|| m.reason.clone()),
        occurred_at: Utc::now(),
    };
    Ok(Some((event, payment_url.or(merchant_url))))
}
