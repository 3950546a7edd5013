//! The refund and reversal messages of contract v1: upstream's requests,
//! the hand-offs between stages (a reversal runs as a refund of the whole
//! payment, with the same steps), and the events.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{PaymentId, SCHEMA_VERSION};

/// `refund.requested`: published by upstream on `payfleet.ingress`, signed
/// like a payment request. The payment is named by the merchant's order id
/// or by its payment id (at least one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RefundRequested {
    pub schema_version: u32,
    pub merchant_id: String,
    /// The idempotency key: the same id with the same content is the same refund.
    pub merchant_refund_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_order_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<PaymentId>,
    /// In the payment's currency; at most what is left to refund.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub reason: String,
    /// Put the payment's stock back (only with the refund that makes it whole).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub return_stock: bool,
    pub requested_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RefundResult {
    /// The money is back with the payer.
    Succeeded,
    /// Refused for good: nothing was returned.
    Failed,
}

/// Every hand-off of a refund between stages (its AMQP `type` says which,
/// [`kind::REFUND_STEPS`]); the refund row in PostgreSQL holds the rest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RefundStep {
    pub schema_version: u32,
    pub refund_id: Uuid,
    pub payment_id: PaymentId,
    /// `refund.result` / `refund.resolved` / `refund.outcome`: how it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RefundResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `refund.query`: 1 for the first status query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_number: Option<u32>,
    pub sent_at: DateTime<Utc>,
}

impl RefundStep {
    pub fn new(refund_id: Uuid, payment_id: PaymentId) -> Self {
        RefundStep {
            schema_version: SCHEMA_VERSION,
            refund_id,
            payment_id,
            result: None,
            reason: None,
            query_number: None,
            sent_at: Utc::now(),
        }
    }
}

/// A refund's BI event on `payfleet.events` (`refund.succeeded`,
/// `refund.failed`), and the body of its merchant webhook.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RefundEvent {
    pub schema_version: u32,
    /// Stable per refund and event type: consumers deduplicate on it.
    pub event_id: Uuid,
    pub event_type: String,
    pub refund_id: Uuid,
    pub merchant_id: String,
    pub merchant_refund_id: String,
    /// Absent when the request named no payment of this merchant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<PaymentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_order_id: Option<String>,
    pub status: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    /// What the payment has had back in all, this refund included when it succeeded.
    #[serde(with = "rust_decimal::serde::str")]
    pub refunded_total: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

/// `payment.reverse`: published by upstream on `payfleet.ingress`, signed
/// like a payment request. Cancels a whole channel payment the channel has
/// not settled yet (the same business day, before the channel's cut-off);
/// later, a refund is the way. The payment is named by the merchant's order
/// id or by its payment id (at least one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PaymentReverse {
    pub schema_version: u32,
    pub merchant_id: String,
    /// The idempotency key: the same id with the same content is the same reversal.
    pub merchant_reversal_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_order_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<PaymentId>,
    pub reason: String,
    pub requested_at: DateTime<Utc>,
}

/// A reversal's BI event on `payfleet.events` (`payment.reversed`,
/// `payment.reversal_failed`), and the body of its merchant webhook.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReversalEvent {
    pub schema_version: u32,
    /// Stable per reversal and event type: consumers deduplicate on it.
    pub event_id: Uuid,
    pub event_type: String,
    pub reversal_id: Uuid,
    pub merchant_id: String,
    pub merchant_reversal_id: String,
    /// Absent when the request named no payment of this merchant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<PaymentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_order_id: Option<String>,
    pub status: String,
    /// The whole payment.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    /// Why it failed: `reversal_window_closed` means the channel has settled
    /// the payment, and a refund is the way to give it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub occurred_at: DateTime<Utc>,
}
