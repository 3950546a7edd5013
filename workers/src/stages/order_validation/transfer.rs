//! order-validation of a `transfer.requested`: the requester's signature
//! and standing (registered to act for users), the idempotency key
//! (requester, request id; compared by content like payments), freshness,
//! the committed schema, then the business checks: the amount, the
//! per-transfer limit, the two parties and their wallets in the one
//! currency, and risk on the payer. An accepted request becomes a transfer
//! in `requested`, handed to fund-freeze, whose Try freezes the amount on
//! the payer's wallet and judges the daily limit under its row lock. A
//! request refused by the business checks is kept `refused` (its id stays
//! taken) and reported through notification; one that cannot be trusted
//! or read is refused with a `transfer.failed` event and nothing kept but
//! the rejection.

use chrono::Utc;
use payfleet_common::{
    messages::{
        self, SCHEMA_VERSION, TransferEvent, TransferRequested, TransferResult, TransferStep, kind,
    },
    runtime::{Inbound, Outcome, StageError, StageTx, Undecodable},
};
use serde_json::Value;
use uuid::Uuid;

use super::{
    OrderValidation, Rejection,
    for_users::{self, ForUser, Opening},
    refusal::reported_money,
    request::read_transfer_request,
    risk::{self, Decision},
};
use crate::domain::{
    handoff,
    transfer::{self, TransferStatus, record::NewTransfer},
};

/// A transfer request as far as it could be read before any database lookup.
pub type TransferRequest = ForUser<TransferRequested>;

/// Only a body without a usable requester and request id cannot be
/// answered (poison); anything else is judged.
pub(super) fn decode(inbound: &Inbound, value: Value) -> Result<TransferRequest, Undecodable> {
    for_users::decode(
        inbound,
        value,
        (kind::TRANSFER_REQUESTED, "requester_id"),
        read_transfer_request,
    )
}

/// The lock of a transfer request while order-validation judges it.
pub(super) fn lock_key(request: &TransferRequest) -> String {
    format!(
        "transfer-request:{}:{}",
        request.requester_id, request.request_id
    )
}

/// What the business checks found: the two wallets (those found), or why
/// the transfer is refused.
#[derive(Default)]
struct Judged {
    payer_wallet: Option<i64>,
    payee_wallet: Option<i64>,
    refusal: Option<(&'static str, String)>,
}

impl OrderValidation {
    pub(super) async fn handle_transfer(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        request: &TransferRequest,
    ) -> Result<Outcome, StageError> {
        let id = transfer::transfer_id(&request.requester_id, &request.request_id);
        let opening = (request, for_users::Kept::Transfer, id);
        let parsed = match self.open_for_user(tx, inbound, opening).await? {
            Opening::Judge(parsed) => parsed,
            Opening::Seen(duplicate) => return Ok(duplicate),
            Opening::Refused(reason, detail) => {
                return refuse_unbound(tx, inbound, request, reason, &detail).await;
            }
        };
        tx.set_correlation_id(&id.to_string());
        let judged = self.judge_transfer(tx, id, parsed).await?;
        let new = NewTransfer {
            id,
            requester_id: &request.requester_id,
            request_id: &request.request_id,
            request_hash: &request.content_hash,
            payer_user_id: &parsed.payer_user_id,
            payee_user_id: &parsed.payee_user_id,
            payer_account_id: judged.payer_wallet,
            payee_account_id: judged.payee_wallet,
            amount: parsed.amount,
            currency: &parsed.currency,
            memo: parsed.memo.as_deref(),
            notify_url: parsed.notify_url.as_deref(),
        };
        if let Some((reason, detail)) = judged.refusal {
            let detail = format!("{reason}: {detail}");
            if !new
                .insert(tx.conn(), TransferStatus::Refused, Some(&detail))
                .await?
            {
                return Ok(super::recorded_meanwhile("transfer", id));
            }
            tracing::info!(reason, detail, "transfer refused");
            return transfer::emit_outcome(tx, id, TransferResult::Failed, Some(reason));
        }
        if !new
            .insert(tx.conn(), TransferStatus::Requested, None)
            .await?
        {
            return Ok(super::recorded_meanwhile("transfer", id));
        }
        transfer::hand_on(
            tx,
            handoff::FUND_FREEZE,
            kind::TRANSFER_VALIDATED,
            &TransferStep::new(id),
        )
    }

    /// The business checks of a readable request; what Try judges (the
    /// payer's balance, the daily limit) is left to Try.
    async fn judge_transfer(
        &self,
        tx: &mut StageTx,
        id: Uuid,
        r: &TransferRequested,
    ) -> Result<Judged, StageError> {
        let mut judged = Judged::default();
        let refused = |mut judged: Judged, reason, detail| {
            judged.refusal = Some((reason, detail));
            Ok(judged)
        };
        if r.payer_user_id == r.payee_user_id {
            let detail = format!("{} cannot transfer to itself", r.payer_user_id);
            return refused(judged, "transfer_to_self", detail);
        }
        if let Some((reason, detail)) = self.transfer_limits.per_one_refusal(r.amount, &r.currency)
        {
            return refused(judged, reason, detail);
        }
        let payer_blocked =
            match for_users::usable_wallet(tx, &r.payer_user_id, &r.currency, false).await? {
                Ok((wallet, blocked)) => {
                    judged.payer_wallet = wallet;
                    blocked
                }
                Err((wallet, reason, detail)) => {
                    judged.payer_wallet = wallet;
                    return refused(judged, reason, detail);
                }
            };
        match for_users::usable_wallet(tx, &r.payee_user_id, &r.currency, false).await? {
            Ok((wallet, _)) => judged.payee_wallet = wallet,
            Err((wallet, reason, detail)) => {
                judged.payee_wallet = wallet;
                let (reason, detail) = self.payee_refusal(tx, r, reason, detail).await?;
                return refused(judged, reason, detail);
            }
        }
        let (decision, reasons) = risk::decide(
            &self.risk,
            &self.redis,
            &r.payer_user_id,
            payer_blocked,
            payfleet_common::PaymentId::from(id),
            r.amount,
            &r.currency,
        )
        .await;
        // No one reviews a transfer in flight: what risk would challenge is refused.
        if decision != Decision::Allow {
            return refused(judged, "risk_blocked", reasons.join(", "));
        }
        Ok(judged)
    }

    /// Why the payee cannot receive, in the payee's words: a payee with no
    /// wallet in the transfer's currency is a transfer in another currency
    /// than the payee holds.
    async fn payee_refusal(
        &self,
        tx: &mut StageTx,
        r: &TransferRequested,
        reason: &'static str,
        detail: String,
    ) -> Result<(&'static str, String), StageError> {
        Ok(match reason {
            "unknown_user" => ("unknown_payee", format!("payee {detail}")),
            "user_frozen" => ("payee_frozen", format!("payee {detail}")),
            "wallet_not_active" => ("payee_wallet_not_active", format!("payee's {detail}")),
            "no_wallet" => {
                let held: Vec<String> = sqlx::query_scalar(
                    "SELECT currency::text FROM accounts WHERE owner_kind = 'user' AND owner_id = $1 ORDER BY currency",
                )
                .bind(&r.payee_user_id)
                .fetch_all(tx.conn())
                .await?;
                let held = if held.is_empty() {
                    "none".to_owned()
                } else {
                    held.join(", ")
                };
                (
                    "currency_mismatch",
                    format!(
                        "{} holds no {} wallet (its wallets: {held})",
                        r.payee_user_id, r.currency
                    ),
                )
            }
            other => (other, detail),
        })
    }
}

/// Refuses a request that creates no transfer (it cannot be trusted or
/// read, or its id is taken): a rejection row and a `transfer.failed`
/// event naming the refused message, never the transfer its key belongs
/// to (a conflict must not report on one that may have succeeded).
async fn refuse_unbound(
    tx: &mut StageTx,
    inbound: &Inbound,
    request: &TransferRequest,
    reason: &str,
    detail: &str,
) -> Result<Outcome, StageError> {
    let rejection = Rejection {
        merchant_id: &request.requester_id,
        merchant_order_id: None,
        merchant_refund_id: None,
        merchant_reversal_id: None,
        withdrawal_request_id: None,
        top_up_request_id: None,
        transfer_request_id: Some(&request.request_id),
    };
    rejection.record(tx, inbound, reason, detail).await?;
    let refusal_id = messages::stable_id(&["refused-transfer-request", &inbound.message_id]);
    tx.set_correlation_id(&refusal_id.to_string());
    let parsed = request.parsed.as_ref().ok();
    let (amount, currency) = reported_money(
        parsed.map(|p| p.amount),
        parsed.map(|p| p.currency.as_str()),
    );
    let event_type = messages::event::TRANSFER_FAILED;
    let event = TransferEvent {
        schema_version: SCHEMA_VERSION,
        event_id: messages::stable_id(&["event", &refusal_id.to_string(), event_type]),
        event_type: event_type.to_owned(),
        transfer_id: refusal_id,
        requester_id: request.requester_id.clone(),
        request_id: request.request_id.clone(),
        payer_user_id: parsed.map(|p| p.payer_user_id.clone()).unwrap_or_default(),
        payee_user_id: parsed.map(|p| p.payee_user_id.clone()).unwrap_or_default(),
        status: TransferStatus::Refused.as_str().to_owned(),
        amount,
        currency,
        memo: None,
        reason: Some(format!("{reason}: {detail}")),
        occurred_at: Utc::now(),
    };
    tx.emit_event(event_type, &event)?;
    tracing::info!(reason, detail, "transfer request refused");
    Ok(Outcome::Applied)
}
