//! The operators' deposit channel (`ops`): money a user paid to the
//! platform outside any third-party channel (a bank transfer to the
//! platform's account, cash at a counter), attested by an operator with
//! `payfleet wallet top-up`. The top-up takes the top-up path like any
//! other, and the attestation is the charge: it succeeds at once, for the
//! amount attested, with no fee. There is no trade to query, close,
//! refund or reverse, and nobody posts its results.

use std::time::Duration;

use payfleet_common::{AttemptId, messages::ChannelStatus};
use reqwest::header::HeaderMap;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    Boxed, ChannelAdapter, ChannelReply, ChargeRequest, CloseReply, RefundError, WebhookNotice,
    WebhookRefusal,
};

/// The deposit channel's name and kind in the routing table, and the
/// payment method only it takes (never offered to upstream requests).
pub const DEPOSIT: &str = "ops";

fn nothing_to_give_back<'a>(attempt_id: AttemptId) -> Boxed<'a, Result<Value, RefundError>> {
    Box::pin(async move {
        Err(RefundError::NothingCharged {
            channel: DEPOSIT.to_owned(),
            attempt_id,
        })
    })
}

pub struct DepositChannel;

impl ChannelAdapter for DepositChannel {
    fn name(&self) -> &str {
        DEPOSIT
    }
    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> Boxed<'a, ChannelReply> {
        Box::pin(async move {
            ChannelReply::Resolved {
                status: ChannelStatus::Succeeded,
                amount: request.amount,
                currency: request.currency.clone(),
                reference: Some(format!("ops:{}", request.attempt_id)),
                reason: None,
                raw: json!({"channel": DEPOSIT, "result": "deposit attested by an operator", "attempt_id": request.attempt_id}),
            }
        })
    }
    fn query<'a>(&'a self, attempt_id: AttemptId) -> Boxed<'a, ChannelReply> {
        Box::pin(async move {
            ChannelReply::Unknown {
                error: format!("the deposit channel keeps no trade for {attempt_id}"),
            }
        })
    }
    fn close<'a>(&'a self, _attempt_id: AttemptId) -> Boxed<'a, CloseReply> {
        Box::pin(async move {
            CloseReply::Closed {
                raw: json!({"channel": DEPOSIT, "result": "nothing to close"}),
            }
        })
    }
    fn refund<'a>(
        &'a self,
        attempt_id: AttemptId,
        _refund_id: Uuid,
        _amount: Decimal,
    ) -> Boxed<'a, Result<Value, RefundError>> {
        nothing_to_give_back(attempt_id)
    }
    fn query_refund(
        &self,
        attempt_id: AttemptId,
        _refund_id: Uuid,
    ) -> Boxed<'_, Result<Value, RefundError>> {
        nothing_to_give_back(attempt_id)
    }
    fn reverse(
        &self,
        attempt_id: AttemptId,
        _reversal_id: Uuid,
    ) -> Boxed<'_, Result<Value, RefundError>> {
        nothing_to_give_back(attempt_id)
    }
    fn query_reversal(
        &self,
        attempt_id: AttemptId,
        _reversal_id: Uuid,
    ) -> Boxed<'_, Result<Value, RefundError>> {
        nothing_to_give_back(attempt_id)
    }
    fn verify_webhook(
        &self,
        _headers: &HeaderMap,
        _body: &[u8],
        _tolerance: Duration,
    ) -> Result<WebhookNotice, WebhookRefusal> {
        Err(WebhookRefusal::NotTaken)
    }
}
