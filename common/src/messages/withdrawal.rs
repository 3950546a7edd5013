//! The withdrawal messages of contract v1: a requester's
//! `withdrawal.requested`, the hand-offs between stages, and the events.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::SCHEMA_VERSION;

/// `withdrawal.requested`: published on `payfleet.ingress` by a registered
/// requester (a merchant, or the platform's wallet application registered
/// like one), signed with its request key like a payment request. Money
/// leaves the user's wallet for the payee's bank card or account.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WithdrawalRequested {
    pub schema_version: u32,
    /// The registered requester (a merchant id), whose key signs the body.
    pub requester_id: String,
    /// The idempotency key: the same id with the same content is the same withdrawal.
    pub request_id: String,
    pub user_id: String,
    /// What leaves the wallet; the payee receives it less the withdrawal fee.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    /// The payee's bank card or account, as the payout channel tokenised it.
    pub payee_account: String,
    /// Where the requester's webhook goes (else its registered notify URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_url: Option<String>,
    pub requested_at: DateTime<Utc>,
}

/// How a payout ended, as far as a stage knows.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WithdrawalResult {
    /// The money left for the payee's account.
    Succeeded,
    /// Refused (by us or the channel): nothing left the wallet.
    Failed,
    /// Paid, then sent back by the payee's bank: the wallet is credited back.
    Returned,
}

/// Every hand-off of a withdrawal between stages (its AMQP `type` says
/// which, [`super::kind::WITHDRAWAL_STEPS`]); the withdrawal row holds the rest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WithdrawalStep {
    pub schema_version: u32,
    pub withdrawal_id: Uuid,
    /// `withdrawal.result` / `.resolved` / `.outcome`: how it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<WithdrawalResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The channel's fee on a paid payout, as it stated it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub channel_fee: Option<Decimal>,
    /// `withdrawal.query`: 1 for the first status query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_number: Option<u32>,
    pub sent_at: DateTime<Utc>,
}

impl WithdrawalStep {
    pub fn new(withdrawal_id: Uuid) -> Self {
        WithdrawalStep {
            schema_version: SCHEMA_VERSION,
            withdrawal_id,
            result: None,
            reason: None,
            channel_fee: None,
            query_number: None,
            sent_at: Utc::now(),
        }
    }
}

/// A withdrawal's BI event on `payfleet.events` (`withdrawal.succeeded`,
/// `withdrawal.failed`, `withdrawal.returned`), and the body of the
/// requester's webhook.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WithdrawalEvent {
    pub schema_version: u32,
    /// Stable per withdrawal and event type: consumers deduplicate on it.
    pub event_id: Uuid,
    pub event_type: String,
    pub withdrawal_id: Uuid,
    pub requester_id: String,
    pub request_id: String,
    pub user_id: String,
    pub status: String,
    /// What left (or was to leave) the wallet.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// The platform's withdrawal fee, out of `amount`: the payee receives the rest.
    #[serde(with = "rust_decimal::serde::str")]
    pub fee: Decimal,
    pub currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub occurred_at: DateTime<Utc>,
}
