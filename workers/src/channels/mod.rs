//! Channels: the [`ChannelAdapter`] trait every payment channel implements
//! (charge, query, close, refund, pay out, verify a webhook), the adapters (the user's wallet,
//! [`balance`]; the sandbox gateway over HTTP, [`sandbox`]), the registry
//! that builds them from the `channels` table ([`registry`]) and routing
//! with its circuit breaker ([`routing`]). Stages and the ingress reach a
//! channel only through this module.

use std::{future::Future, pin::Pin, time::Duration};

use chrono::{DateTime, Utc};
use payfleet_common::{AttemptId, PaymentId, messages::ChannelStatus};
use reqwest::header::HeaderMap;
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

pub mod in_house;
pub mod registry;
pub mod routing;
pub mod sandbox;

pub use in_house::{BALANCE, DEPOSIT, DEPOSIT_CHANNEL, InHouseChannel, WALLET_CHANNEL};
pub use registry::{AdapterError, Adapters};
pub use sandbox::SandboxChannel;

/// What we ask a channel to charge.
#[derive(Debug, Clone)]
pub struct ChargeRequest {
    pub attempt_id: AttemptId,
    pub payment_id: PaymentId,
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

/// A channel's webhook notice, verified and read.
#[derive(Debug, Clone)]
pub struct WebhookNotice {
    /// The attempt the notice is for (our idempotency key at the channel).
    pub attempt_id: AttemptId,
    /// The channel the notice names itself.
    pub channel: String,
    /// The result; `None` for a notice that decides nothing yet (pending).
    pub status: Option<ChannelStatus>,
    /// The amount and currency as the channel states them.
    pub amount: Decimal,
    pub currency: String,
    /// The channel's own reference of the trade.
    pub reference: String,
    /// What the notice says of the trade, in the channel's words: with
    /// `reference`, one notice sent twice is told from another.
    pub event: String,
    pub reason: Option<String>,
    /// When the channel decided this status.
    pub occurred_at: DateTime<Utc>,
    /// The signed timestamp and the signature as sent, kept with the raw
    /// body so the notice can be verified again later.
    pub signed_timestamp: String,
    pub signature: String,
    /// Set when the notice is about a refund of the attempt's charge.
    pub refund: Option<RefundNotice>,
}

/// What a refund's webhook says.
#[derive(Debug, Clone)]
pub struct RefundNotice {
    /// Our refund id (the channel's idempotency key for it).
    pub refund_id: Uuid,
    /// Its final result; `None` while the channel is still processing it.
    pub result: Option<payfleet_common::messages::RefundResult>,
}

/// What we ask a payout channel to pay: `payout_no` is our withdrawal id,
/// the channel's idempotency key, so a re-send pays once.
#[derive(Debug, Clone)]
pub struct PayoutRequest {
    pub payout_no: Uuid,
    /// What the payee receives.
    pub amount: Decimal,
    pub currency: String,
    /// The payee's bank card or account, as the channel tokenised it.
    pub payee_account: String,
    /// Where the channel posts a later change (a return by the payee's bank).
    pub notify_url: String,
}

/// A payout channel's webhook about a payout, verified and read.
#[derive(Debug, Clone)]
pub struct PayoutNotice {
    /// Our withdrawal id (the payout's `payout_no`).
    pub payout_no: Uuid,
    /// The channel the notice names itself.
    pub channel: String,
    /// The answer in the shape of `payout` / `query_payout`'s.
    pub answer: Value,
    /// The signed timestamp and the signature as sent, kept with the raw
    /// body so the notice can be verified again later.
    pub signed_timestamp: String,
    pub signature: String,
}

/// Why a webhook is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WebhookRefusal {
    #[error("the channel takes no webhooks")]
    NotTaken,
    #[error("bad signature")]
    BadSignature,
    #[error("stale timestamp")]
    Stale,
    #[error("unreadable notice")]
    Unreadable,
    /// A notice without a readable amount and currency is no answer: the
    /// channel sends it again, or a status query decides.
    #[error("unreadable amount or currency")]
    UnreadableMoney,
    #[error("unknown attempt")]
    UnknownAttempt,
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a refund was not paid back (yet): the refund stays owed and is
/// asked again with the same refund id.
#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    /// No answer: a timeout or a connection error.
    #[error("{0}")]
    Unreachable(#[from] Unreachable),
    /// The channel answered with an error status.
    #[error("HTTP {status}: {body}")]
    Refused {
        status: reqwest::StatusCode,
        body: Value,
    },
    /// The channel answered, but not that it paid back this amount.
    #[error("the channel did not confirm a refund of {amount}: {answer}")]
    Unconfirmed { amount: Decimal, answer: Value },
    /// The channel knows no refund by this id: the ask never reached it,
    /// so asking again with the same id is safe.
    #[error("the {channel} channel knows no {what} {id}")]
    NotFound {
        channel: String,
        /// `refund`, `reversal` or `payout`.
        what: &'static str,
        id: Uuid,
    },
    /// The channel pays nobody out (the user's wallet, say).
    #[error("the {channel} channel makes no payouts (payout {payout_no})")]
    NoPayouts { channel: String, payout_no: Uuid },
    /// The channel never took money for this attempt.
    #[error("the {channel} channel took no money for {attempt_id}: nothing to refund there")]
    NothingCharged {
        channel: String,
        attempt_id: AttemptId,
    },
    /// No adapter for the channel.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
}

/// A channel call that got no answer at all.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error("timeout: {0}")]
    Timeout(reqwest::Error),
    #[error("connection: {0}")]
    Connection(reqwest::Error),
}

impl From<reqwest::Error> for Unreachable {
    fn from(error: reqwest::Error) -> Self {
        if error.is_timeout() {
            Unreachable::Timeout(error)
        } else {
            Unreachable::Connection(error)
        }
    }
}

/// A payment channel.
pub trait ChannelAdapter: Send + Sync {
    fn name(&self) -> &str;
    /// Whether it answers charges, queries and closes inside payfleet at
    /// once, with nobody outside to wait for (see [`in_house`]).
    fn answers_at_once(&self) -> bool {
        false
    }
    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> Boxed<'a, ChannelReply>;
    fn query<'a>(&'a self, attempt_id: AttemptId) -> Boxed<'a, ChannelReply>;
    fn close<'a>(&'a self, attempt_id: AttemptId) -> Boxed<'a, CloseReply>;
    /// Gives `amount` of a charged attempt back; `refund_id` is the channel's
    /// idempotency key, so a re-send refunds once.
    fn refund<'a>(
        &'a self,
        attempt_id: AttemptId,
        refund_id: Uuid,
        amount: Decimal,
    ) -> Boxed<'a, Result<Value, RefundError>>;
    /// What the channel says of a refund asked before, in the same shape
    /// as `refund`'s answer: a refund whose answer was lost or still
    /// processing is decided without asking again.
    fn query_refund(
        &self,
        attempt_id: AttemptId,
        refund_id: Uuid,
    ) -> Boxed<'_, Result<Value, RefundError>>;
    /// Cancels a charged attempt whole, the day it was paid and before the
    /// channel's cut-off; `reversal_id` is the channel's idempotency key.
    /// Answers in a refund's shape: `status` SUCCEEDED or FAILED (with a
    /// `reason`; `reversal_window_closed` once the channel has settled it).
    fn reverse(
        &self,
        attempt_id: AttemptId,
        reversal_id: Uuid,
    ) -> Boxed<'_, Result<Value, RefundError>>;
    /// What the channel says of a reversal asked before, as `reverse` answers.
    fn query_reversal(
        &self,
        attempt_id: AttemptId,
        reversal_id: Uuid,
    ) -> Boxed<'_, Result<Value, RefundError>>;
    /// Pays a payee out of what the channel holds for us; `request.payout_no`
    /// is the idempotency key. Answers `{payout_no, amount, currency, fee,
    /// status, reason?}` with `status` SUCCEEDED, FAILED, RETURNED or
    /// PROCESSING; a channel that pays nobody out refuses.
    fn payout<'a>(&'a self, request: &'a PayoutRequest) -> Boxed<'a, Result<Value, RefundError>> {
        Box::pin(async move {
            Err(RefundError::NoPayouts {
                channel: self.name().to_owned(),
                payout_no: request.payout_no,
            })
        })
    }
    /// What the channel says of a payout asked before, as `payout` answers;
    /// one it has never heard of is [`RefundError::NotFound`] (safe to send again).
    fn query_payout(&self, payout_no: Uuid) -> Boxed<'_, Result<Value, RefundError>> {
        Box::pin(async move {
            Err(RefundError::NoPayouts {
                channel: self.name().to_owned(),
                payout_no,
            })
        })
    }
    /// Verifies a payout's webhook the channel posted, as `verify_webhook` does.
    fn verify_payout_notice(
        &self,
        _headers: &HeaderMap,
        _body: &[u8],
        _tolerance: Duration,
    ) -> Result<PayoutNotice, WebhookRefusal> {
        Err(WebhookRefusal::NotTaken)
    }
    /// Verifies a webhook the channel posted (its signature, and that it
    /// was signed within `tolerance` of now) and reads it.
    fn verify_webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        tolerance: Duration,
    ) -> Result<WebhookNotice, WebhookRefusal>;
}

/// Whether `code` reads as an ISO 4217 code. One we do not accept is still
/// readable: it differs from the payment's, and callback holds it for review.
pub fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}
