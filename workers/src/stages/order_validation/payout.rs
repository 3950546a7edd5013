//! order-validation of a merchant's `payout.requested`: the merchant's own
//! signature and status, the idempotency key (merchant, request id;
//! compared by content like payments), freshness, the committed schema,
//! then the business checks: the currency's minimum, the bank account
//! registered for the merchant and a payout channel. An accepted request
//! becomes a withdrawal owned by the merchant's account, in `requested`,
//! handed to fund-freeze, whose Try folds the merchant's sales in and
//! freezes the amount, keeping the holdback. What the balance cannot pay
//! is left to Try.

use chrono::Utc;
use payfleet_common::{
    messages::{self, PayoutEvent, PayoutRequested, SCHEMA_VERSION, WithdrawalResult, kind},
    runtime::{Inbound, Outcome, StageError, StageTx, Undecodable},
};
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

use super::{
    OrderValidation, Rejection,
    for_users::storable_amount,
    for_users::{self, ForUser},
    refusal::reported_money,
    request::read_payout_request,
    signed_by,
    withdrawal::PAYOUT_METHOD,
};
use crate::domain::{
    handoff, payment,
    withdrawal::{
        self, WithdrawalStatus,
        record::{NewWithdrawal, OWNER_MERCHANT},
    },
};

/// The prefix of the daily payout's request ids (`settlement-<day>-<currency>`):
/// a merchant's own request may not take one, so it never blocks a day's payout.
pub const DAILY_PREFIX: &str = "settlement-";

/// A payout request as far as it could be read before any database lookup.
pub type PayoutRequest = ForUser<PayoutRequested>;

/// Only a body without a usable merchant and request id cannot be answered
/// (poison); anything else is judged.
pub(super) fn decode(inbound: &Inbound, value: Value) -> Result<PayoutRequest, Undecodable> {
    for_users::decode(
        inbound,
        value,
        (kind::PAYOUT_REQUESTED, "merchant_id"),
        read_payout_request,
    )
}

/// The lock of a payout request while order-validation judges it.
pub(super) fn lock_key(request: &PayoutRequest) -> String {
    format!(
        "payout-request:{}:{}",
        request.requester_id, request.request_id
    )
}

/// The id of a merchant's payout: a withdrawal id of a namespace of its
/// own, so it never meets a withdrawal the merchant asks for a user.
pub fn payout_id(merchant_id: &str, request_id: &str) -> Uuid {
    messages::stable_id(&["payout", merchant_id, request_id])
}

/// What the business checks found: the merchant's account, its bank
/// account and the payout channel, or why the payout is refused.
struct Judged {
    account: i64,
    payee_account: String,
    channel: Option<String>,
    refusal: Option<(&'static str, String)>,
}

impl OrderValidation {
    pub(super) async fn handle_payout(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        request: &PayoutRequest,
    ) -> Result<Outcome, StageError> {
        let id = payout_id(&request.requester_id, &request.request_id);
        let merchant = &request.requester_id;
        let signed = signed_by(tx, merchant, request.signature.as_deref(), &request.body).await?;
        let merchant_status = match signed {
            Ok(status) => status,
            Err((reason, detail)) => {
                return refuse_unbound(tx, inbound, request, reason, detail).await;
            }
        };
        if let Some(outcome) = seen(tx, inbound, request, id).await? {
            return Ok(outcome);
        }
        let parsed = match &request.parsed {
            Ok(parsed) => parsed,
            Err((reason, detail)) => {
                return refuse_unbound(tx, inbound, request, reason, detail).await;
            }
        };
        if let Some((reason, detail)) = self.stale_request(tx, inbound, parsed.requested_at).await?
        {
            return refuse_unbound(tx, inbound, request, reason, &detail).await;
        }
        if merchant_status != "active" {
            let detail = "the merchant is suspended";
            return refuse_unbound(tx, inbound, request, "merchant_suspended", detail).await;
        }
        if request.request_id.starts_with(DAILY_PREFIX) {
            let detail = format!("request ids starting `{DAILY_PREFIX}` are the daily payout's");
            return refuse_unbound(tx, inbound, request, "reserved_request_id", &detail).await;
        }
        if let Err(detail) = storable_amount(parsed.amount) {
            return refuse_unbound(tx, inbound, request, "invalid_amount", &detail).await;
        }
        if payfleet_common::money::currency(&parsed.currency).is_err() {
            let detail = parsed.currency.clone();
            return refuse_unbound(tx, inbound, request, "unsupported_currency", &detail).await;
        }
        tx.set_correlation_id(&id.to_string());
        let judged = self.judge_payout(tx, merchant, parsed).await?;
        let new = NewWithdrawal {
            id,
            requester_id: merchant,
            request_id: &request.request_id,
            request_hash: &request.content_hash,
            owner_kind: OWNER_MERCHANT,
            user_id: merchant,
            account_id: Some(judged.account),
            amount: parsed.amount,
            fee: Decimal::ZERO,
            currency: &parsed.currency,
            payee_account: &judged.payee_account,
            channel: judged.channel.as_deref(),
            notify_url: parsed.notify_url.as_deref(),
        };
        keep(tx, &new, judged.refusal).await
    }

    /// The business checks of a readable request; what the balance can pay
    /// is left to Try.
    async fn judge_payout(
        &self,
        tx: &mut StageTx,
        merchant: &str,
        r: &PayoutRequested,
    ) -> Result<Judged, StageError> {
        let account = payment::account_id(tx.conn(), "merchant", merchant, &r.currency).await?;
        let payee_account: Option<String> =
            sqlx::query_scalar("SELECT payout_account FROM merchants WHERE id = $1")
                .bind(merchant)
                .fetch_one(tx.conn())
                .await?;
        let mut judged = Judged {
            account,
            payee_account: payee_account.clone().unwrap_or_default(),
            channel: None,
            refusal: None,
        };
        if let Some(refusal) = self
            .withdrawal_limits
            .payout_minimum_refusal(r.amount, &r.currency)
        {
            judged.refusal = Some(refusal);
            return Ok(judged);
        }
        if payee_account.is_none() {
            let detail = format!("{merchant} has registered no bank account to pay out to");
            judged.refusal = Some(("no_payout_account", detail));
            return Ok(judged);
        }
        judged.channel = sqlx::query_scalar(
            "SELECT name FROM channels WHERE status = 'active' AND $1 = ANY (methods)
             ORDER BY fee_rate, name LIMIT 1",
        )
        .bind(PAYOUT_METHOD)
        .fetch_optional(tx.conn())
        .await?;
        if judged.channel.is_none() {
            let detail = "no active channel pays payees out".to_owned();
            judged.refusal = Some(("no_payout_channel", detail));
        }
        Ok(judged)
    }
}

/// Keeps the payout `refused` with its reason and reports it, or
/// `requested` and hands it to fund-freeze.
async fn keep(
    tx: &mut StageTx,
    new: &NewWithdrawal<'_>,
    refusal: Option<(&'static str, String)>,
) -> Result<Outcome, StageError> {
    if let Some((reason, detail)) = refusal {
        let detail = format!("{reason}: {detail}");
        if !new
            .insert(tx.conn(), WithdrawalStatus::Refused, Some(&detail))
            .await?
        {
            return Err(taken_meanwhile(new.id));
        }
        tracing::info!(reason, detail, "payout refused");
        return withdrawal::emit_outcome(tx, new.id, WithdrawalResult::Failed, Some(reason));
    }
    if !new
        .insert(tx.conn(), WithdrawalStatus::Requested, None)
        .await?
    {
        return Err(taken_meanwhile(new.id));
    }
    withdrawal::hand_on(
        tx,
        handoff::FUND_FREEZE,
        kind::WITHDRAWAL_VALIDATED,
        &messages::WithdrawalStep::new(new.id),
    )
}

/// The payout's id was taken while this request was judged (by another
/// copy when the lock was lost). Judged again, the request is a duplicate
/// or a conflict, and answered as one: never dropped without its event.
fn taken_meanwhile(id: Uuid) -> StageError {
    StageError::transient(format!("payout {id} recorded meanwhile: judged again"))
}

/// A request already seen: a duplicate (same content) or a conflict.
async fn seen(
    tx: &mut StageTx,
    inbound: &Inbound,
    request: &PayoutRequest,
    id: Uuid,
) -> Result<Option<Outcome>, StageError> {
    match for_users::kept_before(tx, for_users::Kept::Payout, request, id).await? {
        None => Ok(None),
        Some(Ok(duplicate)) => Ok(Some(duplicate)),
        Some(Err(detail)) => refuse_unbound(tx, inbound, request, "idempotency_conflict", &detail)
            .await
            .map(Some),
    }
}

/// Refuses a request that creates no payout (it cannot be trusted or read,
/// or its id is taken): a rejection row and a `payout.failed` event naming
/// the refused message, never the payout its key belongs to.
async fn refuse_unbound(
    tx: &mut StageTx,
    inbound: &Inbound,
    request: &PayoutRequest,
    reason: &str,
    detail: &str,
) -> Result<Outcome, StageError> {
    let rejection = Rejection {
        merchant_id: &request.requester_id,
        merchant_order_id: None,
        merchant_refund_id: None,
        merchant_reversal_id: None,
        withdrawal_request_id: Some(&request.request_id),
        top_up_request_id: None,
        transfer_request_id: None,
    };
    rejection.record(tx, inbound, reason, detail).await?;
    let refusal_id = messages::stable_id(&["refused-payout-request", &inbound.message_id]);
    tx.set_correlation_id(&refusal_id.to_string());
    let parsed = request.parsed.as_ref().ok();
    let (amount, currency) = reported_money(
        parsed.map(|p| p.amount),
        parsed.map(|p| p.currency.as_str()),
    );
    let event_type = messages::event::PAYOUT_FAILED;
    let event = PayoutEvent {
        schema_version: SCHEMA_VERSION,
        event_id: messages::stable_id(&["event", &refusal_id.to_string(), event_type]),
        event_type: event_type.to_owned(),
        payout_id: refusal_id,
        merchant_id: request.requester_id.clone(),
        request_id: request.request_id.clone(),
        status: WithdrawalStatus::Refused.as_str().to_owned(),
        amount,
        currency,
        reason: Some(format!("{reason}: {detail}")),
        occurred_at: Utc::now(),
    };
    tx.emit_event(event_type, &event)?;
    tracing::info!(reason, detail, "payout request refused");
    Ok(Outcome::Applied)
}
