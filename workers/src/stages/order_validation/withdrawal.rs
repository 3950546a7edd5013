//! order-validation of a `withdrawal.requested`: the requester's signature
//! and status, the idempotency key (requester, request id; compared by
//! content like payments), freshness, the committed schema, then the
//! business checks: the amount and its fee, the per-withdrawal limit, the
//! user and its wallet, risk, and a payout channel. An accepted request
//! becomes a withdrawal in `requested`, handed to fund-freeze, whose Try
//! freezes the amount and judges the daily limit under the wallet's lock.
//! A request refused by the business checks is kept `refused` (its id
//! stays taken) and reported through notification; one that cannot be
//! trusted or read is refused like a bad payment request, with a
//! `withdrawal.failed` event and nothing kept but the rejection.

use chrono::Utc;
use payfleet_common::{
    messages::{
        self, SCHEMA_VERSION, WithdrawalEvent, WithdrawalRequested, WithdrawalResult,
        WithdrawalStep, kind,
    },
    runtime::{Inbound, Outcome, StageError, StageTx, Undecodable},
};
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

use super::{
    OrderValidation, Rejection,
    for_users::{self, ForUser, Opening},
    refusal::reported_money,
    request::read_withdrawal_request,
    risk::{self, Decision},
};
use crate::domain::{
    handoff,
    withdrawal::{self, WithdrawalStatus, record::NewWithdrawal},
};

/// The method a channel lists to pay payees out.
pub const PAYOUT_METHOD: &str = "payout";

/// A withdrawal request as far as it could be read before any database lookup.
pub type WithdrawalRequest = ForUser<WithdrawalRequested>;

/// Only a body without a usable requester and request id cannot be
/// answered (poison); anything else is judged.
pub(super) fn decode(inbound: &Inbound, value: Value) -> Result<WithdrawalRequest, Undecodable> {
    for_users::decode(
        inbound,
        value,
        (kind::WITHDRAWAL_REQUESTED, "requester_id"),
        read_withdrawal_request,
    )
}

/// The lock of a withdrawal request while order-validation judges it.
pub(super) fn lock_key(request: &WithdrawalRequest) -> String {
    format!(
        "withdrawal-request:{}:{}",
        request.requester_id, request.request_id
    )
}

/// What the business checks found: the wallet and the payout channel, or
/// why the withdrawal is refused (with the wallet when one was found).
struct Judged {
    wallet: Option<i64>,
    channel: Option<String>,
    refusal: Option<(&'static str, String)>,
}

impl OrderValidation {
    pub(super) async fn handle_withdrawal(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        request: &WithdrawalRequest,
    ) -> Result<Outcome, StageError> {
        let id = withdrawal::withdrawal_id(&request.requester_id, &request.request_id);
        let opening = (request, for_users::Kept::Withdrawal, id);
        let parsed = match self.open_for_user(tx, inbound, opening).await? {
            Opening::Judge(parsed) => parsed,
            Opening::Seen(duplicate) => return Ok(duplicate),
            Opening::Refused(reason, detail) => {
                return refuse_unbound(tx, inbound, request, reason, &detail).await;
            }
        };
        tx.set_correlation_id(&id.to_string());
        let fee = self.withdrawal_limits.fee(parsed.amount);
        let judged = self.judge_withdrawal(tx, id, parsed, fee).await?;
        let new = NewWithdrawal {
            id,
            requester_id: &request.requester_id,
            request_id: &request.request_id,
            request_hash: &request.content_hash,
            owner_kind: "user",
            user_id: &parsed.user_id,
            account_id: judged.wallet,
            amount: parsed.amount,
            // the fee may not reach the amount: a refused one keeps none
            fee: if fee < parsed.amount {
                fee
            } else {
                Decimal::ZERO
            },
            currency: &parsed.currency,
            payee_account: &parsed.payee_account,
            channel: judged.channel.as_deref(),
            notify_url: parsed.notify_url.as_deref(),
        };
        if let Some((reason, detail)) = judged.refusal {
            let detail = format!("{reason}: {detail}");
            if !new
                .insert(tx.conn(), WithdrawalStatus::Refused, Some(&detail))
                .await?
            {
                return Ok(super::recorded_meanwhile("withdrawal", id));
            }
            tracing::info!(reason, detail, "withdrawal refused");
            return withdrawal::emit_outcome(tx, id, WithdrawalResult::Failed, Some(reason));
        }
        if !new
            .insert(tx.conn(), WithdrawalStatus::Requested, None)
            .await?
        {
            return Ok(super::recorded_meanwhile("withdrawal", id));
        }
        withdrawal::hand_on(
            tx,
            handoff::FUND_FREEZE,
            kind::WITHDRAWAL_VALIDATED,
            &WithdrawalStep::new(id),
        )
    }

    /// The business checks of a readable request; what Try judges (the
    /// balance, the daily limit) is left to Try.
    async fn judge_withdrawal(
        &self,
        tx: &mut StageTx,
        id: Uuid,
        r: &WithdrawalRequested,
        fee: Decimal,
    ) -> Result<Judged, StageError> {
        let refused = |wallet, reason, detail| Judged {
            wallet,
            channel: None,
            refusal: Some((reason, detail)),
        };
        if r.amount <= fee {
            let detail = format!("{} is not more than the withdrawal fee of {fee}", r.amount);
            return Ok(refused(None, "invalid_amount", detail));
        }
        if let Some((reason, detail)) = self
            .withdrawal_limits
            .per_withdrawal_refusal(r.amount, &r.currency)
        {
            return Ok(refused(None, reason, detail));
        }
        let (wallet, user_blocked) =
            match for_users::usable_wallet(tx, &r.user_id, &r.currency, false).await? {
                Ok((Some(wallet), blocked)) => (wallet, blocked),
                Ok((None, _)) => {
                    let detail = format!("user {} has no {} wallet", r.user_id, r.currency);
                    return Ok(refused(None, "no_wallet", detail));
                }
                Err((wallet, reason, detail)) => return Ok(refused(wallet, reason, detail)),
            };
        let (decision, reasons) = risk::decide(
            &self.risk,
            &self.redis,
            &r.user_id,
            user_blocked,
            payfleet_common::PaymentId::from(id),
            r.amount,
            &r.currency,
        )
        .await;
        // No one reviews a withdrawal in flight: what risk would challenge is refused.
        if decision != Decision::Allow {
            return Ok(refused(Some(wallet), "risk_blocked", reasons.join(", ")));
        }
        let channel: Option<String> = sqlx::query_scalar(
            "SELECT name FROM channels WHERE status = 'active' AND $1 = ANY (methods)
             ORDER BY fee_rate, name LIMIT 1",
        )
        .bind(PAYOUT_METHOD)
        .fetch_optional(tx.conn())
        .await?;
        let Some(channel) = channel else {
            let detail = "no active channel pays payees out".to_owned();
            return Ok(refused(Some(wallet), "no_payout_channel", detail));
        };
        Ok(Judged {
            wallet: Some(wallet),
            channel: Some(channel),
            refusal: None,
        })
    }
}

/// Refuses a request that creates no withdrawal (it cannot be trusted or
/// read, or its id is taken): a rejection row and a `withdrawal.failed`
/// event naming the refused message, never the withdrawal its key
/// belongs to (a conflict must not report on one that may have succeeded).
async fn refuse_unbound(
    tx: &mut StageTx,
    inbound: &Inbound,
    request: &WithdrawalRequest,
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
    let refusal_id = messages::stable_id(&["refused-withdrawal-request", &inbound.message_id]);
    tx.set_correlation_id(&refusal_id.to_string());
    let parsed = request.parsed.as_ref().ok();
    let (amount, currency) = reported_money(
        parsed.map(|p| p.amount),
        parsed.map(|p| p.currency.as_str()),
    );
    let event_type = messages::event::WITHDRAWAL_FAILED;
    let event = WithdrawalEvent {
        schema_version: SCHEMA_VERSION,
        event_id: messages::stable_id(&["event", &refusal_id.to_string(), event_type]),
        event_type: event_type.to_owned(),
        withdrawal_id: refusal_id,
        requester_id: request.requester_id.clone(),
        request_id: request.request_id.clone(),
        user_id: parsed.map(|p| p.user_id.clone()).unwrap_or_default(),
        status: WithdrawalStatus::Refused.as_str().to_owned(),
        amount,
        fee: Decimal::ZERO,
        currency,
        reason: Some(format!("{reason}: {detail}")),
        occurred_at: Utc::now(),
    };
    tx.emit_event(event_type, &event)?;
    tracing::info!(reason, detail, "withdrawal request refused");
    Ok(Outcome::Applied)
}
