//! Requests refused before they become a payment or a refund: who signed
//! them, and the record and event of a refusal.

use chrono::Utc;
use payfleet_common::{
    PaymentId,
    messages::{self, SCHEMA_VERSION},
    money,
    runtime::{Inbound, Outcome, StageError, StageTx},
};
use rust_decimal::Decimal;

use super::Request;
use crate::domain::merchant::RequestKeys;

/// The status of merchant `merchant_id` when `body` is signed with its
/// key; otherwise the refusal's reason and detail.
pub(super) async fn signed_by(
    tx: &mut StageTx,
    merchant_id: &str,
    signature: Option<&str>,
    body: &[u8],
) -> Result<Result<String, (&'static str, &'static str)>, StageError> {
    let Some(keys) = RequestKeys::load(tx.conn(), merchant_id).await? else {
        return Ok(Err(("unknown_merchant", "no such merchant")));
    };
    if !signature.is_some_and(|s| keys.verify(body, s)) {
        let detail = if signature.is_some() {
            "signature does not match the body"
        } else {
            "no signature header"
        };
        return Ok(Err(("bad_signature", detail)));
    }
    Ok(Ok(keys.status))
}

/// Whose request a refusal without a payment or a refund answers.
pub(super) struct Rejection<'a> {
    pub(super) merchant_id: &'a str,
    pub(super) merchant_order_id: Option<&'a str>,
    pub(super) merchant_refund_id: Option<&'a str>,
    pub(super) merchant_reversal_id: Option<&'a str>,
    pub(super) withdrawal_request_id: Option<&'a str>,
    pub(super) top_up_request_id: Option<&'a str>,
    pub(super) transfer_request_id: Option<&'a str>,
}

impl Rejection<'_> {
    /// Keeps the refused message in `request_rejections` (once per message
    /// id): it takes no merchant order or refund id.
    pub(super) async fn record(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        reason: &str,
        detail: &str,
    ) -> Result<(), StageError> {
        sqlx::query(
            "INSERT INTO request_rejections (message_id, merchant_id, merchant_order_id, merchant_refund_id,
                                             merchant_reversal_id, withdrawal_request_id, top_up_request_id,
                                             transfer_request_id, reason, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(&inbound.message_id)
        .bind(self.merchant_id)
        .bind(self.merchant_order_id)
        .bind(self.merchant_refund_id)
        .bind(self.merchant_reversal_id)
        .bind(self.withdrawal_request_id)
        .bind(self.top_up_request_id)
        .bind(self.transfer_request_id)
        .bind(reason)
        .bind(detail)
        .execute(tx.conn())
        .await?;
        Ok(())
    }
}

/// The amount and currency a refused request's event may carry: only what
/// the contract allows travels on, so an unusable amount or currency is
/// reported as 0 / [`money::NO_CURRENCY`] (ISO 4217 "no currency").
pub(super) fn reported_money(amount: Option<Decimal>, currency: Option<&str>) -> (Decimal, String) {
    (
        amount
            .and_then(|a| money::check_amount(a).ok())
            .unwrap_or(Decimal::ZERO),
        currency
            .and_then(|c| money::currency(c).ok())
            .unwrap_or(money::NO_CURRENCY)
            .to_owned(),
    )
}

/// Refuses a request that creates no payment, with a `payment.rejected`
/// event for BI (its payment id derived from the message, not the order).
pub(super) async fn refuse(
    tx: &mut StageTx,
    inbound: &Inbound,
    request: &Request,
    reason: &str,
    detail: &str,
) -> Result<Outcome, StageError> {
    let rejection = Rejection {
        merchant_id: &request.merchant_id,
        merchant_order_id: Some(&request.merchant_order_id),
        merchant_refund_id: None,
        merchant_reversal_id: None,
        withdrawal_request_id: None,
        top_up_request_id: None,
        transfer_request_id: None,
    };
    rejection.record(tx, inbound, reason, detail).await?;
    let refusal_id = PaymentId::from(messages::stable_id(&[
        "refused-request",
        &inbound.message_id,
    ]));
    tx.set_correlation_id(&refusal_id.to_string());
    let parsed = request.parsed.as_ref().ok();
    let (amount, currency) = reported_money(
        parsed.map(|p| p.expected_amount),
        parsed.map(|p| p.currency.as_str()),
    );
    let event = messages::PaymentEvent {
        schema_version: SCHEMA_VERSION,
        event_id: messages::stable_id(&[
            "event",
            &refusal_id.to_string(),
            messages::event::REJECTED,
        ]),
        event_type: messages::event::REJECTED.to_owned(),
        payment_id: refusal_id,
        merchant_id: request.merchant_id.clone(),
        merchant_order_id: request.merchant_order_id.clone(),
        user_id: parsed.map(|p| p.user_id.clone()).unwrap_or_default(),
        status: "rejected".to_owned(),
        amount,
        currency,
        reason: Some(format!("{reason}: {detail}")),
        sub_orders: Vec::new(),
        occurred_at: Utc::now(),
    };
    tx.emit_event(messages::event::REJECTED, &event)?;
    tracing::info!(reason, detail, "request refused");
    Ok(Outcome::Applied)
}
