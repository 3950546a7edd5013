//! The top-up messages of contract v1: a requester's `topup.requested` and
//! the events. Between stages a top-up travels as a payment (its id is a
//! payment id; the payment hand-offs carry it).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::PaymentId;

/// `topup.requested`: published on `payfleet.ingress` by a registered
/// requester acting for users (the platform's wallet application), signed
/// with its request key like a payment request. The user pays `amount` at
/// a channel; once the channel has the money, the wallet is credited.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopUpRequested {
    pub schema_version: u32,
    /// The registered requester (a merchant id), whose key signs the body.
    pub requester_id: String,
    /// The idempotency key: the same id with the same content is the same top-up.
    pub request_id: String,
    pub user_id: String,
    /// What the user pays at the channel, and what the wallet receives.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    /// `card` or `wallet`: the kind of third-party channel the user pays at.
    pub payment_method: String,
    /// The payer's token at the channel (a tokenised card or wallet account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer_token: Option<String>,
    /// Where the requester's webhook goes (else its registered notify URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_url: Option<String>,
    pub requested_at: DateTime<Utc>,
}

/// A top-up's BI event on `payfleet.events` (`topup.succeeded`,
/// `topup.failed`, `topup.exception`), and the body of the requester's webhook.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopUpEvent {
    pub schema_version: u32,
    /// Stable per top-up and event type: consumers deduplicate on it.
    pub event_id: uuid::Uuid,
    pub event_type: String,
    /// The top-up's id (a payment id: status queries and ops find it by it).
    pub top_up_id: PaymentId,
    pub requester_id: String,
    pub request_id: String,
    pub user_id: String,
    pub status: String,
    /// What the user paid (asked to pay), and what the wallet received on success.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub occurred_at: DateTime<Utc>,
}
