//! A withdrawal's final word: one `withdrawal.succeeded`,
//! `withdrawal.failed` or `withdrawal.returned` event per withdrawal and
//! type (a returned payout has both its success and its return), and a
//! signed webhook to the requester. A merchant's settlement payout has
//! its own events (`payout.succeeded`, `payout.failed`, `payout.returned`).

use chrono::Utc;
use payfleet_common::{
    messages::{
        self, PayoutEvent, SCHEMA_VERSION, WithdrawalEvent, WithdrawalResult, WithdrawalStep, event,
    },
    runtime::{Outcome, StageError, StageTx},
};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::Operation;
use crate::domain::withdrawal::{WithdrawalStatus, record::OWNER_MERCHANT};

pub(super) async fn notify(tx: &mut StageTx, m: &WithdrawalStep) -> Result<Outcome, StageError> {
    let id = m.withdrawal_id;
    tx.set_correlation_id(&id.to_string());
    let Some(result) = m.result else {
        return Err(StageError::permanent(format!(
            "withdrawal.outcome for withdrawal {id} carries no result"
        )));
    };
    let Some(row) = Row::load(tx, id).await? else {
        return Ok(Outcome::NotYet {
            reason: format!("withdrawal {id} not found"),
        });
    };
    let event_type = event_type(row.owner_kind == OWNER_MERCHANT, result);
    let operation = Operation {
        payment_id: None,
        refund_id: None,
        withdrawal_id: Some(id),
        transfer_id: None,
        event_type,
    };
    let event_id = messages::stable_id(&["event", &id.to_string(), event_type]);
    if !operation.claim_event(tx, event_id).await? {
        return Ok(Outcome::Stale {
            reason: format!("{event_type} for withdrawal {id} already emitted"),
        });
    }
    let reason = match result {
        WithdrawalResult::Succeeded => None,
        _ => row.detail.or_else(|| m.reason.clone()),
    };
    // what the event reports, not where the row stands by now (a paid
    // payout may already be back when its success is told)
    let status = match result {
        WithdrawalResult::Succeeded => WithdrawalStatus::Succeeded.as_str().to_owned(),
        WithdrawalResult::Returned => WithdrawalStatus::Returned.as_str().to_owned(),
        WithdrawalResult::Failed => row.status.clone(),
    };
    let url = row.notify_url.clone().or(row.requester_url.clone());
    let requester = row.requester_id.clone();
    if row.owner_kind == OWNER_MERCHANT {
        let event = PayoutEvent {
            schema_version: SCHEMA_VERSION,
            event_id,
            event_type: event_type.to_owned(),
            payout_id: id,
            merchant_id: row.requester_id,
            request_id: row.request_id,
            status,
            amount: row.amount,
            currency: row.currency,
            reason,
            occurred_at: Utc::now(),
        };
        return operation
            .publish(tx, event_id, &requester, &event, url)
            .await;
    }
    let event = WithdrawalEvent {
        schema_version: SCHEMA_VERSION,
        event_id,
        event_type: event_type.to_owned(),
        withdrawal_id: id,
        requester_id: row.requester_id,
        request_id: row.request_id,
        user_id: row.user_id,
        status,
        amount: row.amount,
        fee: row.fee,
        currency: row.currency,
        reason,
        occurred_at: Utc::now(),
    };
    operation
        .publish(tx, event_id, &requester, &event, url)
        .await
}

/// The event a withdrawal's `result` makes: a merchant's payout has its own.
fn event_type(merchant_payout: bool, result: WithdrawalResult) -> &'static str {
    match (merchant_payout, result) {
        (false, WithdrawalResult::Succeeded) => event::WITHDRAWAL_SUCCEEDED,
        (false, WithdrawalResult::Failed) => event::WITHDRAWAL_FAILED,
        (false, WithdrawalResult::Returned) => event::WITHDRAWAL_RETURNED,
        (true, WithdrawalResult::Succeeded) => event::PAYOUT_SUCCEEDED,
        (true, WithdrawalResult::Failed) => event::PAYOUT_FAILED,
        (true, WithdrawalResult::Returned) => event::PAYOUT_RETURNED,
    }
}

/// The withdrawal as its event reads it, and where its webhook goes.
#[derive(sqlx::FromRow)]
struct Row {
    owner_kind: String,
    requester_id: String,
    request_id: String,
    user_id: String,
    status: String,
    amount: Decimal,
    fee: Decimal,
    currency: String,
    detail: Option<String>,
    /// The request's own notify URL, else the requester's.
    notify_url: Option<String>,
    requester_url: Option<String>,
}

impl Row {
    async fn load(tx: &mut StageTx, id: Uuid) -> Result<Option<Row>, StageError> {
        Ok(sqlx::query_as(
            "SELECT w.owner_kind, w.requester_id, w.request_id, w.user_id, w.status, w.amount, w.fee, w.currency::text AS currency,
                    w.detail, w.notify_url, m.notify_url AS requester_url
             FROM withdrawals w JOIN merchants m ON m.id = w.requester_id WHERE w.id = $1",
        )
        .bind(id)
        .fetch_optional(tx.conn())
        .await?)
    }
}
