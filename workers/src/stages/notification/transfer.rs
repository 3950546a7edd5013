//! A transfer's final word: one `transfer.succeeded` or `transfer.failed`
//! event per transfer, and a signed webhook to the requester.

use chrono::Utc;
use payfleet_common::{
    messages::{self, SCHEMA_VERSION, TransferEvent, TransferResult, TransferStep, event},
    runtime::{Outcome, StageError, StageTx},
};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::Operation;

pub(super) async fn notify(tx: &mut StageTx, m: &TransferStep) -> Result<Outcome, StageError> {
    let id = m.transfer_id;
    tx.set_correlation_id(&id.to_string());
    let Some(result) = m.result else {
        return Err(StageError::permanent(format!(
            "transfer.outcome for transfer {id} carries no result"
        )));
    };
    let Some(row) = Row::load(tx, id).await? else {
        return Ok(Outcome::NotYet {
            reason: format!("transfer {id} not found"),
        });
    };
    let event_type = match result {
        TransferResult::Succeeded => event::TRANSFER_SUCCEEDED,
        TransferResult::Failed => event::TRANSFER_FAILED,
    };
    let operation = Operation {
        payment_id: None,
        refund_id: None,
        withdrawal_id: None,
        transfer_id: Some(id),
        event_type,
    };
    let event_id = messages::stable_id(&["event", &id.to_string(), event_type]);
    if !operation.claim_event(tx, event_id).await? {
        return Ok(Outcome::Stale {
            reason: format!("{event_type} for transfer {id} already emitted"),
        });
    }
    let reason = match result {
        TransferResult::Succeeded => None,
        TransferResult::Failed => row.detail.or_else(|| m.reason.clone()),
    };
    let url = row.notify_url.or(row.requester_url);
    let event = TransferEvent {
        schema_version: SCHEMA_VERSION,
        event_id,
        event_type: event_type.to_owned(),
        transfer_id: id,
        requester_id: row.requester_id.clone(),
        request_id: row.request_id,
        payer_user_id: row.payer_user_id,
        payee_user_id: row.payee_user_id,
        status: row.status,
        amount: row.amount,
        currency: row.currency,
        memo: row.memo,
        reason,
        occurred_at: Utc::now(),
    };
    operation
        .publish(tx, event_id, &row.requester_id, &event, url)
        .await
}

/// The transfer as its event reads it, and where its webhook goes.
#[derive(sqlx::FromRow)]
struct Row {
    requester_id: String,
    request_id: String,
    payer_user_id: String,
    payee_user_id: String,
    status: String,
    amount: Decimal,
    currency: String,
    memo: Option<String>,
    detail: Option<String>,
    /// The request's own notify URL, else the requester's.
    notify_url: Option<String>,
    requester_url: Option<String>,
}

impl Row {
    async fn load(tx: &mut StageTx, id: Uuid) -> Result<Option<Row>, StageError> {
        Ok(sqlx::query_as(
            "SELECT t.requester_id, t.request_id, t.payer_user_id, t.payee_user_id, t.status, t.amount,
                    t.currency::text AS currency, t.memo, t.detail, t.notify_url, m.notify_url AS requester_url
             FROM transfers t JOIN merchants m ON m.id = t.requester_id WHERE t.id = $1",
        )
        .bind(id)
        .fetch_optional(tx.conn())
        .await?)
    }
}
