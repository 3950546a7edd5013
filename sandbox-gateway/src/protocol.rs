//! What the sandbox gateway speaks: its channels' configuration, its
//! trades and requests, and its webhooks (the notice, its headers and its
//! signature). The fleet's sandbox channel adapter does not link to these:
//! it implements the same wire protocol on its own, as a real integration
//! implements a provider's documented API.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;
use hmac::{Hmac, Mac};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How a channel answers a create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The result is in the response.
    Sync,
    /// The response says PENDING; the result comes by webhook.
    Async,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelConfig {
    pub name: String,
    pub secret: String,
    pub mode: Mode,
    /// The channel's fee, e.g. 0.0060.
    #[serde(with = "rust_decimal::serde::str")]
    pub fee_rate: Decimal,
    /// The time of day (in the gateway's business zone) at which it settles
    /// the day's trades: a trade paid that day can be reversed until then,
    /// later only refunded. None: the channel does not reverse.
    #[serde(default)]
    pub reversal_cutoff: Option<NaiveTime>,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub channels: Vec<ChannelConfig>,
    pub webhook_delay: Duration,
    pub slow: Duration,
    pub timeout_hold: Duration,
    /// The zone its business day (statements, reversal cut-offs) is kept in.
    pub business_zone: Tz,
    /// How long after paying an `acct_returned` payout its bank sends it back.
    pub payout_return_delay: Duration,
}

/// The cut-off the standard channels reverse until: late in the day, so a
/// test run at any hour but the last minutes of a day is before it.
pub fn standard_reversal_cutoff() -> NaiveTime {
    NaiveTime::from_hms_opt(23, 59, 0).expect("a valid time")
}

impl GatewayConfig {
    /// The channels the demo and the tests use: a cheaper async wallet and a
    /// dearer sync card acquirer.
    pub fn standard() -> Self {
        Self {
            channels: vec![
                ChannelConfig {
                    name: "sandbox-wallet".into(),
                    secret: "sandbox-wallet-secret".into(),
                    mode: Mode::Async,
                    fee_rate: Decimal::new(40, 4),
                    reversal_cutoff: Some(standard_reversal_cutoff()),
                },
                ChannelConfig {
                    name: "sandbox-card".into(),
                    secret: "sandbox-card-secret".into(),
                    mode: Mode::Sync,
                    fee_rate: Decimal::new(120, 4),
                    reversal_cutoff: Some(standard_reversal_cutoff()),
                },
            ],
            webhook_delay: Duration::from_millis(300),
            slow: Duration::from_millis(1_500),
            timeout_hold: Duration::from_secs(30),
            business_zone: Tz::UTC,
            payout_return_delay: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TradeStatus {
    Pending,
    Succeeded,
    Failed,
    Closed,
    /// Cancelled whole the day it was paid: the payer has it all back and
    /// the channel keeps no fee.
    Reversed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trade {
    pub channel: String,
    pub trade_no: String,
    pub out_trade_no: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub status: TradeStatus,
    pub reason: Option<String>,
    pub payer_token: String,
    /// Times money was taken for this trade: never more than one.
    pub charges: u32,
    #[serde(with = "rust_decimal::serde::str")]
    pub fee: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub refunded: Decimal,
    pub created_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub notify_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CreatePayment {
    pub out_trade_no: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    #[serde(default)]
    pub payer_token: Option<String>,
    #[serde(default)]
    pub notify_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CreateRefund {
    pub out_trade_no: String,
    pub refund_no: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefundStatus {
    /// Accepted; the money goes back at `final_at`.
    Processing,
    Succeeded,
    /// Refused for good: the money stays with the merchant.
    Failed,
}

/// A refund as the gateway keeps it, deduplicated on (channel, refund_no).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refund {
    pub channel: String,
    pub refund_no: String,
    pub out_trade_no: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub status: RefundStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When it is (or becomes) final: a PROCESSING refund turns SUCCEEDED
    /// then, the moment a statement dates it by.
    pub final_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CreateReversal {
    pub out_trade_no: String,
    pub reversal_no: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReversalStatus {
    /// The trade is cancelled: the payer has the whole amount back.
    Succeeded,
    /// Refused for good (`reversal_window_closed`: the trade is settled).
    Failed,
}

/// A reversal as the gateway keeps it, deduplicated on (channel, reversal_no).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reversal {
    pub channel: String,
    pub reversal_no: String,
    pub out_trade_no: String,
    /// The whole trade.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub status: ReversalStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CreatePayout {
    /// Our idempotency key: a second ask with it answers the first and never pays twice.
    pub payout_no: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    /// The payee's bank card or account, tokenised; the sandbox picks its
    /// scenario by it (see the crate's docs).
    pub account: String,
    #[serde(default)]
    pub notify_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PayoutStatus {
    /// The money left for the payee's account.
    Succeeded,
    /// Refused for good: no money left.
    Failed,
    /// Paid, then sent back by the payee's bank (a closed account): the
    /// money is back with the channel, and so with us.
    Returned,
    /// Accepted, not decided (yet): no money has left.
    Processing,
}

impl PayoutStatus {
    /// Whether the money left the channel for the payee (a returned
    /// payout's did, then came back): what a statement lists.
    pub fn paid_out(self) -> bool {
        matches!(self, PayoutStatus::Succeeded | PayoutStatus::Returned)
    }
}

/// A payout as the gateway keeps it, deduplicated on (channel, payout_no).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payout {
    pub channel: String,
    pub payout_no: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub account: String,
    pub status: PayoutStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The channel's fee on it (none on a failed or a processing one; a
    /// returned one keeps it).
    #[serde(with = "rust_decimal::serde::str")]
    pub fee: Decimal,
    pub created_at: DateTime<Utc>,
    /// When the money left (the statement lists a payout on that day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<DateTime<Utc>>,
    /// When a returned payout came back (or, while SUCCEEDED, will).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returned_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub notify_url: Option<String>,
}

/// A payout's webhook body: sent when a payout is returned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PayoutNotice {
    pub channel: String,
    pub payout_no: String,
    pub status: PayoutStatus,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    /// The channel's fee on the payout: it keeps it on a return too.
    #[serde(with = "rust_decimal::serde::str")]
    pub fee: Decimal,
    pub reason: Option<String>,
    /// When the gateway decided this status.
    pub occurred_at: DateTime<Utc>,
}

/// A channel's statement for a day.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Statement {
    pub channel: String,
    pub date: NaiveDate,
    /// Every trade created that day (in the gateway's business zone).
    pub trades: Vec<Trade>,
    /// Every refund that succeeded that day; statements from before
    /// refunds were listed have none.
    #[serde(default)]
    pub refunds: Vec<Refund>,
    /// Every reversal that succeeded that day.
    #[serde(default)]
    pub reversals: Vec<Reversal>,
    /// Every payout that paid money out that day (a returned one as
    /// RETURNED, with when it came back).
    #[serde(default)]
    pub payouts: Vec<Payout>,
}

/// A webhook body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Notice {
    pub channel: String,
    pub out_trade_no: String,
    pub trade_no: String,
    pub status: TradeStatus,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub reason: Option<String>,
    /// When the gateway decided this status.
    pub occurred_at: DateTime<Utc>,
}

/// A refund's webhook body: sent when a PROCESSING refund becomes final.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RefundNotice {
    pub channel: String,
    pub refund_no: String,
    pub out_trade_no: String,
    pub status: RefundStatus,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub reason: Option<String>,
    /// When the gateway decided this status.
    pub occurred_at: DateTime<Utc>,
}

/// The headers a webhook carries its timestamp (Unix seconds) and its
/// signature in.
pub const TIMESTAMP_HEADER: &str = "x-sandbox-timestamp";
pub const SIGNATURE_HEADER: &str = "x-sandbox-signature";

/// The webhook signature: hex HMAC-SHA256(secret, "{timestamp}.{body}").
pub fn sign_notice(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}
