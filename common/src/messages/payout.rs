//! The merchant payout messages of contract v1: a merchant's
//! `payout.requested` and the events. Between stages a payout travels as
//! a withdrawal (its hand-offs carry a [`super::WithdrawalStep`]).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `payout.requested`: published on `payfleet.ingress` by a merchant,
/// signed with its own request key: pay `amount` of its settled balance
/// out to the bank account registered for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PayoutRequested {
    pub schema_version: u32,
    /// The merchant whose balance is paid out, and whose key signs the body.
    pub merchant_id: String,
    /// The idempotency key: the same id with the same content is the same payout.
    pub request_id: String,
    /// What leaves the merchant's balance and reaches its bank account.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    /// Where the merchant's webhook goes (else its registered notify URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_url: Option<String>,
    pub requested_at: DateTime<Utc>,
}

/// A merchant payout's BI event on `payfleet.events` (`payout.succeeded`,
/// `payout.failed`, `payout.returned`), and the body of the merchant's webhook.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PayoutEvent {
    pub schema_version: u32,
    /// Stable per payout and event type: consumers deduplicate on it.
    pub event_id: Uuid,
    pub event_type: String,
    pub payout_id: Uuid,
    pub merchant_id: String,
    /// The merchant's own id of the payout (`settlement-<day>` for the daily one).
    pub request_id: String,
    pub status: String,
    /// What left (or was to leave) the merchant's balance.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub occurred_at: DateTime<Utc>,
}
