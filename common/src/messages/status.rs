//! Status requests of contract v1: upstream asks where a payment or a
//! refund stands (`status.request`, signed like a payment request) and is
//! answered on the request's `reply_to` (`status.reply`). Read-only and
//! outside the chain: no stage reads or writes them.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{PaymentId, SCHEMA_VERSION};

/// `status.request`: which of its payments (or refunds) a merchant asks
/// about. Exactly one of the four lookups is set (the schema says so).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    pub schema_version: u32,
    pub merchant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<PaymentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_order_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_refund_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_reversal_id: Option<String>,
    /// Judged against `request_max_age_ms`, like a payment request's.
    pub requested_at: DateTime<Utc>,
}

/// What a status request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusLookup {
    Payment(PaymentId),
    MerchantOrder(String),
    MerchantRefund(String),
    MerchantReversal(String),
}

impl StatusRequest {
    /// A request of `merchant_id` about `lookup`, dated now.
    pub fn new(merchant_id: &str, lookup: StatusLookup) -> Self {
        let mut request = StatusRequest {
            schema_version: SCHEMA_VERSION,
            merchant_id: merchant_id.to_owned(),
            payment_id: None,
            merchant_order_id: None,
            merchant_refund_id: None,
            merchant_reversal_id: None,
            requested_at: Utc::now(),
        };
        match lookup {
            StatusLookup::Payment(id) => request.payment_id = Some(id),
            StatusLookup::MerchantOrder(id) => request.merchant_order_id = Some(id),
            StatusLookup::MerchantRefund(id) => request.merchant_refund_id = Some(id),
            StatusLookup::MerchantReversal(id) => request.merchant_reversal_id = Some(id),
        }
        request
    }

    /// The one lookup the request names; `None` when it names none or several.
    pub fn lookup(&self) -> Option<StatusLookup> {
        let named = [
            self.payment_id.map(StatusLookup::Payment),
            self.merchant_order_id
                .clone()
                .map(StatusLookup::MerchantOrder),
            self.merchant_refund_id
                .clone()
                .map(StatusLookup::MerchantRefund),
            self.merchant_reversal_id
                .clone()
                .map(StatusLookup::MerchantReversal),
        ];
        let mut named = named.into_iter().flatten();
        match (named.next(), named.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }
}

/// Why a status request gets no data. Someone else's payment and one that
/// does not exist are the same `not_found`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum StatusErrorCode {
    /// Not JSON, or the body breaks the schema (the message names the pointer).
    InvalidRequest,
    UnsupportedSchemaVersion,
    UnknownMerchant,
    BadSignature,
    /// `requested_at` older than `request_max_age_ms`.
    RequestExpired,
    /// `requested_at` further ahead than `request_max_age_ms`.
    InvalidRequestedAt,
    /// No such payment or refund of this merchant.
    NotFound,
    /// payfleet could not look it up just now: ask again.
    Unavailable,
}

impl StatusErrorCode {
    pub const ALL: [StatusErrorCode; 8] = [
        StatusErrorCode::InvalidRequest,
        StatusErrorCode::UnsupportedSchemaVersion,
        StatusErrorCode::UnknownMerchant,
        StatusErrorCode::BadSignature,
        StatusErrorCode::RequestExpired,
        StatusErrorCode::InvalidRequestedAt,
        StatusErrorCode::NotFound,
        StatusErrorCode::Unavailable,
    ];

    /// The wire name, also the metric label (a bounded set).
    pub fn as_str(self) -> &'static str {
        match self {
            StatusErrorCode::InvalidRequest => "invalid_request",
            StatusErrorCode::UnsupportedSchemaVersion => "unsupported_schema_version",
            StatusErrorCode::UnknownMerchant => "unknown_merchant",
            StatusErrorCode::BadSignature => "bad_signature",
            StatusErrorCode::RequestExpired => "request_expired",
            StatusErrorCode::InvalidRequestedAt => "invalid_requested_at",
            StatusErrorCode::NotFound => "not_found",
            StatusErrorCode::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusError {
    pub code: StatusErrorCode,
    /// For people; match on `code`.
    pub message: String,
}

/// A refund of the payment, as a status reply tells it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RefundStanding {
    pub refund_id: Uuid,
    /// `refund` or `reversal`.
    pub kind: String,
    /// `upstream` (asked for by the merchant) or `automatic` (owed by the platform).
    pub origin: String,
    /// The merchant's refund id (its reversal id for a reversal); automatic
    /// refunds have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_refund_id: Option<String>,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub status: String,
    /// Why it was asked for (the merchant's reason, or the platform's).
    pub reason: String,
    /// Why it ended as it did (a refusal, a channel's decline), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the money was back with the payer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refunded_at: Option<DateTime<Utc>>,
}

/// A payment as a status reply tells it, with its refunds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PaymentStanding {
    pub payment_id: PaymentId,
    pub merchant_order_id: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub payment_method: String,
    /// Where it was routed; none before routing (or when rejected first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Σ of its succeeded upstream refunds and reversals.
    #[serde(with = "rust_decimal::serde::str")]
    pub refunded_total: Decimal,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Newest first, at most [`MAX_REFUNDS_LISTED`]; the refund asked about is always among them.
    pub refunds: Vec<RefundStanding>,
}

/// The most refunds one reply lists.
pub const MAX_REFUNDS_LISTED: usize = 100;

/// `status.reply`: on the request's `reply_to` through the default
/// exchange, with its `correlation_id`. Either `payment` or `error`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReply {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentStanding>,
    /// The refund (or reversal) the request named by its merchant id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StatusError>,
    pub replied_at: DateTime<Utc>,
}

impl StatusReply {
    pub fn found(payment: PaymentStanding, refund_id: Option<Uuid>) -> Self {
        StatusReply {
            schema_version: SCHEMA_VERSION,
            payment: Some(payment),
            refund_id,
            error: None,
            replied_at: Utc::now(),
        }
    }

    pub fn refused(code: StatusErrorCode, message: impl Into<String>) -> Self {
        StatusReply {
            schema_version: SCHEMA_VERSION,
            payment: None,
            refund_id: None,
            error: Some(StatusError {
                code,
                message: message.into(),
            }),
            replied_at: Utc::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_exactly_one_lookup() {
        let request = StatusRequest::new("shop", StatusLookup::MerchantOrder("o-1".into()));
        assert_eq!(
            request.lookup(),
            Some(StatusLookup::MerchantOrder("o-1".into()))
        );
        let both = StatusRequest {
            merchant_refund_id: Some("r-1".into()),
            ..request.clone()
        };
        assert_eq!(both.lookup(), None);
        let none = StatusRequest {
            merchant_order_id: None,
            ..request
        };
        assert_eq!(none.lookup(), None);
    }

    #[test]
    fn error_codes_are_written_as_their_names() {
        for code in StatusErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::Value::from(code.as_str())
            );
        }
    }
}
