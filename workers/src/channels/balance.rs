//! The user's wallet as a channel.

use payfleet_common::{AttemptId, messages::ChannelStatus};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

use std::time::Duration;

use reqwest::header::HeaderMap;

use super::{
    Boxed, ChannelAdapter, ChannelReply, ChargeRequest, CloseReply, RefundError, WebhookNotice,
    WebhookRefusal,
};

/// The wallet's channel: its name in the routing table, its kind, and the
/// payment method that pays from the wallet.
pub const BALANCE: &str = "balance";

/// No money goes back through the wallet channel: a wallet payment's
/// refund is credited by settlement, and a wallet payment is never reversed.
fn nothing_charged<'a>(attempt_id: AttemptId) -> Boxed<'a, Result<Value, RefundError>> {
    Box::pin(async move {
        Err(RefundError::NothingCharged {
            channel: BALANCE.to_owned(),
            attempt_id,
        })
    })
}

/// The user's wallet: Try froze the funds, so the charge succeeds at once and
/// Confirm moves the frozen money. There is no trade to query or close.
pub struct BalanceChannel;

impl ChannelAdapter for BalanceChannel {
    fn name(&self) -> &str {
        BALANCE
    }
    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> Boxed<'a, ChannelReply> {
        Box::pin(async move {
            ChannelReply::Resolved {
                status: ChannelStatus::Succeeded,
                amount: request.amount,
                currency: request.currency.clone(),
                reference: Some(format!("balance:{}", request.attempt_id)),
                reason: None,
                raw: json!({"channel": BALANCE, "result": "frozen funds captured", "attempt_id": request.attempt_id}),
            }
        })
    }
    fn query<'a>(&'a self, attempt_id: AttemptId) -> Boxed<'a, ChannelReply> {
        Box::pin(async move {
            ChannelReply::Unknown {
                error: format!("the wallet channel keeps no trade for {attempt_id}"),
            }
        })
    }
    fn close<'a>(&'a self, _attempt_id: AttemptId) -> Boxed<'a, CloseReply> {
        Box::pin(async move {
            CloseReply::Closed {
                raw: json!({"channel": BALANCE, "result": "nothing to close"}),
            }
        })
    }
    fn refund<'a>(
        &'a self,
        attempt_id: AttemptId,
        _refund_id: Uuid,
        _amount: Decimal,
    ) -> Boxed<'a, Result<Value, RefundError>> {
        nothing_charged(attempt_id)
    }
    fn query_refund(
        &self,
        attempt_id: AttemptId,
        _refund_id: Uuid,
    ) -> Boxed<'_, Result<Value, RefundError>> {
        // no refund goes to a channel: there is none to query
        nothing_charged(attempt_id)
    }
    fn reverse(
        &self,
        attempt_id: AttemptId,
        _reversal_id: Uuid,
    ) -> Boxed<'_, Result<Value, RefundError>> {
        // a wallet payment is refunded, never reversed: there is no trade
        nothing_charged(attempt_id)
    }
    fn query_reversal(
        &self,
        attempt_id: AttemptId,
        _reversal_id: Uuid,
    ) -> Boxed<'_, Result<Value, RefundError>> {
        nothing_charged(attempt_id)
    }
    fn verify_webhook(
        &self,
        _headers: &HeaderMap,
        _body: &[u8],
        _tolerance: Duration,
    ) -> Result<WebhookNotice, WebhookRefusal> {
        // The wallet answers every charge at once: nobody posts its results.
        Err(WebhookRefusal::NotTaken)
    }
}
