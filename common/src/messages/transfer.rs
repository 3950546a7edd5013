//! The transfer messages of contract v1: a requester's `transfer.requested`
//! (one user's wallet pays another's), the hand-offs between stages, and
//! the events.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::SCHEMA_VERSION;

/// `transfer.requested`: published on `payfleet.ingress` by a registered
/// requester acting for users (the platform's wallet application), signed
/// with its request key like a payment request. `amount` leaves the
/// payer's wallet and reaches the payee's, in one currency.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransferRequested {
    pub schema_version: u32,
    /// The registered requester (a merchant id), whose key signs the body.
    pub requester_id: String,
    /// The idempotency key: the same id with the same content is the same transfer.
    pub request_id: String,
    /// The user whose wallet pays.
    pub payer_user_id: String,
    /// The user whose wallet receives.
    pub payee_user_id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    /// What the payer wrote for the payee, shown on both sides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
    /// Where the requester's webhook goes (else its registered notify URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_url: Option<String>,
    pub requested_at: DateTime<Utc>,
}

/// How a transfer ended, as far as a stage knows.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TransferResult {
    /// The payer was debited and the payee credited.
    Succeeded,
    /// Refused or released: nothing moved.
    Failed,
}

/// Every hand-off of a transfer between stages (its AMQP `type` says
/// which, [`super::kind::TRANSFER_STEPS`]); the transfer row holds the rest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TransferStep {
    pub schema_version: u32,
    pub transfer_id: Uuid,
    /// `transfer.outcome`: how it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TransferResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub sent_at: DateTime<Utc>,
}

impl TransferStep {
    pub fn new(transfer_id: Uuid) -> Self {
        TransferStep {
            schema_version: SCHEMA_VERSION,
            transfer_id,
            result: None,
            reason: None,
            sent_at: Utc::now(),
        }
    }
}

/// A transfer's BI event on `payfleet.events` (`transfer.succeeded`,
/// `transfer.failed`), and the body of the requester's webhook.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TransferEvent {
    pub schema_version: u32,
    /// Stable per transfer and event type: consumers deduplicate on it.
    pub event_id: Uuid,
    pub event_type: String,
    pub transfer_id: Uuid,
    pub requester_id: String,
    pub request_id: String,
    pub payer_user_id: String,
    pub payee_user_id: String,
    pub status: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub occurred_at: DateTime<Utc>,
}
