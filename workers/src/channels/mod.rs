//! Channels: the [`ChannelAdapter`] trait every payment channel implements
//! (charge, query, close, refund), the adapters (the user's wallet,
//! [`balance`]; the sandbox gateway over HTTP, [`sandbox`]), the registry
//! that builds them from the `channels` table ([`registry`]) and routing
//! with its circuit breaker ([`routing`]). Stages and the ingress reach a
//! channel only through this module.

use std::{future::Future, pin::Pin};

use payfleet_common::messages::ChannelStatus;
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

pub mod balance;
pub mod registry;
pub mod routing;
pub mod sandbox;

pub use balance::BalanceChannel;
pub use registry::{AdapterError, Adapters};
pub use sandbox::SandboxChannel;

/// What we ask a channel to charge.
#[derive(Debug, Clone)]
pub struct ChargeRequest {
    pub attempt_id: Uuid,
    pub payment_id: Uuid,
    pub user_id: String,
    pub amount: Decimal,
    pub currency: String,
    pub payer_token: Option<String>,
    pub notify_url: String,
}

/// What a channel answered a charge or a query.
#[derive(Debug, Clone)]
pub enum ChannelReply {
    /// A final answer, with the amount and currency as the channel states
    /// them (never assumed from our request).
    Resolved {
        status: ChannelStatus,
        amount: Decimal,
        currency: String,
        reference: Option<String>,
        reason: Option<String>,
        raw: Value,
    },
    /// Accepted; the result comes later (webhook or query).
    Pending {
        reference: Option<String>,
        raw: Value,
    },
    /// No answer: timeout, connection error, 5xx.
    Unknown { error: String },
}

/// What a channel answered a close.
#[derive(Debug, Clone)]
pub enum CloseReply {
    /// Nothing can be paid any more.
    Closed {
        raw: Value,
    },
    /// Too late: it was paid, this amount in this currency.
    AlreadyPaid {
        amount: Decimal,
        currency: String,
        reference: Option<String>,
        raw: Value,
    },
    Unknown {
        error: String,
    },
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A payment channel.
pub trait ChannelAdapter: Send + Sync {
    fn name(&self) -> &str;
    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> Boxed<'a, ChannelReply>;
    fn query<'a>(&'a self, attempt_id: Uuid) -> Boxed<'a, ChannelReply>;
    fn close<'a>(&'a self, attempt_id: Uuid) -> Boxed<'a, CloseReply>;
    /// Gives `amount` of a charged attempt back; `refund_id` is the channel's
    /// idempotency key, so a re-send refunds once.
    fn refund<'a>(
        &'a self,
        attempt_id: Uuid,
        refund_id: Uuid,
        amount: Decimal,
    ) -> Boxed<'a, Result<Value, String>>;
}

/// Whether `code` reads as an ISO 4217 code. One we do not accept is still
/// readable: it differs from the payment's, and callback holds it for review.
pub fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}
