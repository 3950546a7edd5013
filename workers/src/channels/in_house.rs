//! The channels resolved inside payfleet, which answer every charge at
//! once: the user's wallet (`balance`: Try froze the funds, Confirm moves
//! them) and the operators' deposit channel (`ops`: the charge is an
//! operator's attestation of money a user paid the platform outside any
//! channel, with `payfleet wallet top-up`). There is no trade to query or
//! close, no money goes back through them (a wallet payment's refund is
//! credited by settlement; a wallet payment is never reversed; a top-up is
//! never refunded), and nobody posts their results.

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

/// The wallet's channel: its name in the routing table, its kind, and the
/// payment method that pays from the wallet.
pub const BALANCE: &str = "balance";
/// The deposit channel's name and kind in the routing table, and the
/// method only it takes (never offered to upstream requests).
pub const DEPOSIT: &str = "ops";

/// A channel resolved inside payfleet: its name, and what its charge is.
pub struct InHouseChannel {
    name: &'static str,
    charge_is: &'static str,
}

/// The user's wallet as a channel.
pub const WALLET_CHANNEL: InHouseChannel = InHouseChannel {
    name: BALANCE,
    charge_is: "frozen funds captured",
};

/// The operators' attested deposits as a channel.
pub const DEPOSIT_CHANNEL: InHouseChannel = InHouseChannel {
    name: DEPOSIT,
    charge_is: "deposit attested by an operator",
};

impl InHouseChannel {
    fn nothing_charged<'a>(&self, attempt_id: AttemptId) -> Boxed<'a, Result<Value, RefundError>> {
        let channel = self.name.to_owned();
        Box::pin(async move {
            Err(RefundError::NothingCharged {
                channel,
                attempt_id,
            })
        })
    }
}

/// Whether `channel` is one of the channels resolved inside payfleet.
pub fn is_in_house(channel: &str) -> bool {
    channel == BALANCE || channel == DEPOSIT
}

impl ChannelAdapter for InHouseChannel {
    fn name(&self) -> &str {
        self.name
    }
    fn answers_at_once(&self) -> bool {
        true
    }
    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> Boxed<'a, ChannelReply> {
        Box::pin(async move {
            ChannelReply::Resolved {
                status: ChannelStatus::Succeeded,
                amount: request.amount,
                currency: request.currency.clone(),
                reference: Some(format!("{}:{}", self.name, request.attempt_id)),
                reason: None,
                raw: json!({"channel": self.name, "result": self.charge_is, "attempt_id": request.attempt_id}),
            }
        })
    }
    fn query<'a>(&'a self, attempt_id: AttemptId) -> Boxed<'a, ChannelReply> {
        Box::pin(async move {
            ChannelReply::Unknown {
                error: format!("the {} channel keeps no trade for {attempt_id}", self.name),
            }
        })
    }
    fn close<'a>(&'a self, _attempt_id: AttemptId) -> Boxed<'a, CloseReply> {
        Box::pin(async move {
            CloseReply::Closed {
                raw: json!({"channel": self.name, "result": "nothing to close"}),
            }
        })
    }
    fn refund<'a>(
        &'a self,
        attempt_id: AttemptId,
        _refund_id: Uuid,
        _amount: Decimal,
    ) -> Boxed<'a, Result<Value, RefundError>> {
        self.nothing_charged(attempt_id)
    }
    fn query_refund(
        &self,
        attempt_id: AttemptId,
        _refund_id: Uuid,
    ) -> Boxed<'_, Result<Value, RefundError>> {
        self.nothing_charged(attempt_id)
    }
    fn reverse(
        &self,
        attempt_id: AttemptId,
        _reversal_id: Uuid,
    ) -> Boxed<'_, Result<Value, RefundError>> {
        self.nothing_charged(attempt_id)
    }
    fn query_reversal(
        &self,
        attempt_id: AttemptId,
        _reversal_id: Uuid,
    ) -> Boxed<'_, Result<Value, RefundError>> {
        self.nothing_charged(attempt_id)
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
