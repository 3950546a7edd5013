//! order-validation: the first stage. Turns an upstream `payment.requested`
//! into a validated payment (→ fund-freeze) or a rejection with a reason
//! (→ notification), checking the signature, the parties, the catalogue's
//! prices and stock, the coupon and the risk rules. Refund and reversal
//! requests ([`refund`]), withdrawal requests ([`withdrawal`]) and top-up
//! requests ([`top_up`]) are judged here the same way.
//!
//! Idempotency: the payment id is derived from (merchant, merchant order id);
//! the same id with the same content is a stale duplicate, with other content
//! a conflict that is rejected without touching the first payment. Requests
//! that are forged or not a payment at all are refused without taking the
//! merchant order id (`request_rejections`).

mod for_users;
mod judge;
pub mod payout;
pub mod pricing;
mod receipts;
mod record;
mod refund;
mod refusal;
mod request;
mod reversal;
pub mod risk;
pub mod schema;
pub mod top_up;
pub mod transfer;
pub mod withdrawal;

use chrono::{DateTime, Utc};
use payfleet_common::lock::Locks;
use payfleet_common::{
    PaymentId, broker,
    messages::{self, Outcome as Final, PaymentRequested, SCHEMA_VERSION, kind},
    runtime::{Inbound, Outcome, Stage, StageError, StageTx, Undecodable},
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::domain::{
    payment::{self, PaymentStatus},
    refund::RefundKind,
};
use judge::Verdict;
pub use judge::{PricedOrder, load_coupon};
pub use receipts::{prune_receipts, run_receipt_pruning};
use record::{insert_order, insert_payment};
use refusal::{Rejection, refuse, signed_by};
use request::usable_id;
pub use request::{freshness, is_usable_id, read_request};
use risk::{Decision, RiskRules};

pub const NAME: &str = crate::domain::handoff::ORDER_VALIDATION;
const MAX_LINES: usize = 100;
const MAX_QUANTITY: u32 = 10_000;
/// Payment methods: the wallet, or a third-party channel.
/// Literals, because the contract test reads this list from the source;
/// the first is the wallet (`channels::BALANCE`).
pub const METHODS: [&str; 3] = ["balance", "card", "wallet"];

/// A request as far as it could be read before any database lookup.
#[derive(Debug)]
pub struct Request {
    pub merchant_id: String,
    pub merchant_order_id: String,
    pub signature: Option<String>,
    pub body: Vec<u8>,
    /// Hash of the canonical JSON content (key order and spacing do not matter).
    pub content_hash: String,
    /// The request, or why it is refused before it becomes a payment: the
    /// reason code and a detail that starts with the JSON pointer.
    pub parsed: Result<PaymentRequested, (&'static str, String)>,
}

pub struct OrderValidation {
    pub redis: Locks,
    pub risk: RiskRules,
    pub payment_ttl: chrono::Duration,
    /// `request_max_age_ms`: how far `requested_at` may be from the first receipt.
    pub request_max_age: chrono::Duration,
    /// `ingress_max_body_bytes`: a larger body is not read at all.
    pub max_body_bytes: usize,
    /// `business_time_zone`: the day a reversal's cut-off belongs to.
    pub business_zone: chrono_tz::Tz,
    /// A withdrawal's fee and per-withdrawal limit.
    pub withdrawal_limits: crate::domain::withdrawal::Limits,
    /// A transfer's per-transfer limit.
    pub transfer_limits: crate::domain::transfer::Limits,
}

impl OrderValidation {
    pub fn new(settings: &payfleet_common::Settings, redis: Locks) -> Self {
        Self {
            redis,
            risk: RiskRules::new(settings),
            payment_ttl: chrono::Duration::from_std(settings.payment_ttl)
                .unwrap_or(chrono::Duration::MAX),
            request_max_age: chrono::Duration::from_std(settings.request_max_age)
                .unwrap_or(chrono::Duration::MAX),
            max_body_bytes: settings.ingress_max_body_bytes as usize,
            business_zone: settings.business_zone(),
            withdrawal_limits: crate::domain::withdrawal::Limits::new(settings),
            transfer_limits: crate::domain::transfer::Limits::for_transfers(settings),
        }
    }
}

/// The payment id of a merchant order: the same order always maps to it.
pub fn payment_id(merchant_id: &str, merchant_order_id: &str) -> PaymentId {
    PaymentId::from(messages::stable_id(&[
        "payment",
        merchant_id,
        merchant_order_id,
    ]))
}

/// What upstream asked for: a payment, a refund or reversal of one, a
/// withdrawal from a wallet, a top-up of one, a transfer between two, or a
/// merchant's payout.
#[derive(Debug)]
pub enum Asked {
    Payment(Request),
    Refund(refund::RefundRequest),
    Withdrawal(withdrawal::WithdrawalRequest),
    TopUp(top_up::TopUpRequest),
    Payout(payout::PayoutRequest),
    Transfer(transfer::TransferRequest),
}

/// Whether a delivery is a request of `kind` (by its routing key or type).
fn is_request_of(inbound: &Inbound, kind: &str) -> bool {
    inbound.routing_key == kind || inbound.message_type.as_deref() == Some(kind)
}

/// Whether a delivery is a refund or a reversal request (by its routing
/// key or type); `None` for a payment request.
fn refund_request_kind(inbound: &Inbound) -> Option<RefundKind> {
    let is =
        |kind: &str| inbound.routing_key == kind || inbound.message_type.as_deref() == Some(kind);
    if is(messages::kind::REFUND_REQUESTED) {
        Some(RefundKind::Refund)
    } else if is(messages::kind::PAYMENT_REVERSE) {
        Some(RefundKind::Reversal)
    } else {
        None
    }
}

impl Stage for OrderValidation {
    type Message = Asked;

    fn name(&self) -> &str {
        NAME
    }

    /// Only a body that is not JSON, or names no usable merchant and order,
    /// is undecodable (poison): it cannot be answered. Anything else is
    /// judged in `handle`, a body the schema refuses included.
    fn decode(&self, inbound: &Inbound) -> Result<Asked, Undecodable> {
        let refund_kind = refund_request_kind(inbound);
        let withdrawal = is_request_of(inbound, messages::kind::WITHDRAWAL_REQUESTED);
        let top_up = is_request_of(inbound, messages::kind::TOPUP_REQUESTED);
        let payout = is_request_of(inbound, messages::kind::PAYOUT_REQUESTED);
        let transfer = is_request_of(inbound, messages::kind::TRANSFER_REQUESTED);
        let kind = match refund_kind {
            Some(RefundKind::Refund) => messages::kind::REFUND_REQUESTED,
            Some(RefundKind::Reversal) => messages::kind::PAYMENT_REVERSE,
            None if withdrawal => messages::kind::WITHDRAWAL_REQUESTED,
            None if top_up => messages::kind::TOPUP_REQUESTED,
            None if payout => messages::kind::PAYOUT_REQUESTED,
            None if transfer => messages::kind::TRANSFER_REQUESTED,
            None => messages::kind::PAYMENT_REQUESTED,
        };
        // Capped before it is parsed: a body past the cap cannot be answered.
        if inbound.body.len() > self.max_body_bytes {
            return Err(Undecodable::TooLarge {
                kind,
                bytes: inbound.body.len(),
                setting: "ingress_max_body_bytes",
                limit: self.max_body_bytes,
            });
        }
        let not_json = |e| Undecodable::json(inbound, kind, e);
        let value: Value = serde_json::from_slice(&inbound.body).map_err(not_json)?;
        if let Some(refund_kind) = refund_kind {
            return refund::decode(inbound, value, refund_kind).map(Asked::Refund);
        }
        if withdrawal {
            return withdrawal::decode(inbound, value).map(Asked::Withdrawal);
        }
        if top_up {
            return top_up::decode(inbound, value).map(Asked::TopUp);
        }
        if payout {
            return payout::decode(inbound, value).map(Asked::Payout);
        }
        if transfer {
            return transfer::decode(inbound, value).map(Asked::Transfer);
        }
        let merchant_id = usable_id(&value, messages::kind::PAYMENT_REQUESTED, "merchant_id")?;
        let merchant_order_id = usable_id(
            &value,
            messages::kind::PAYMENT_REQUESTED,
            "merchant_order_id",
        )?;
        // serde_json's map is ordered by key: this is a canonical form.
        let canonical = serde_json::to_vec(&value).map_err(not_json)?;
        Ok(Asked::Payment(Request {
            merchant_id,
            merchant_order_id,
            signature: broker::header_str(Some(&inbound.headers), messages::SIGNATURE_HEADER),
            content_hash: hex::encode(Sha256::digest(&canonical)),
            parsed: read_request(value),
            body: inbound.body.clone(),
        }))
    }

    fn lock_key(&self, asked: &Asked) -> Option<String> {
        Some(match asked {
            Asked::Payment(request) => format!(
                "order:{}:{}",
                request.merchant_id, request.merchant_order_id
            ),
            Asked::Refund(request) => format!(
                "{}-request:{}:{}",
                request.kind.as_str(),
                request.merchant_id,
                request.merchant_request_id
            ),
            Asked::Withdrawal(request) => withdrawal::lock_key(request),
            Asked::TopUp(request) => top_up::lock_key(request),
            Asked::Payout(request) => payout::lock_key(request),
            Asked::Transfer(request) => transfer::lock_key(request),
        })
    }

    /// Notes the first receipt of these message ids (one statement for a
    /// batch), committed on its own so that a retry or a replay keeps the
    /// first one.
    async fn before_transaction(
        &self,
        pool: &sqlx::PgPool,
        items: &[(&Inbound, &Asked)],
    ) -> Result<(), StageError> {
        let ids: Vec<&str> = items
            .iter()
            .map(|(inbound, _)| inbound.message_id.as_str())
            .collect();
        sqlx::query(
            "INSERT INTO request_receipts (message_id) SELECT * FROM UNNEST($1::text[])
             ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(ids)
        .execute(pool)
        .await?;
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        asked: &Asked,
    ) -> Result<Outcome, StageError> {
        match asked {
            Asked::Payment(request) => self.handle_payment(tx, inbound, request).await,
            Asked::Refund(request) => self.handle_refund(tx, inbound, request).await,
            Asked::Withdrawal(request) => self.handle_withdrawal(tx, inbound, request).await,
            Asked::TopUp(request) => self.handle_top_up(tx, inbound, request).await,
            Asked::Payout(request) => self.handle_payout(tx, inbound, request).await,
            Asked::Transfer(request) => self.handle_transfer(tx, inbound, request).await,
        }
    }
}

impl OrderValidation {
    async fn handle_payment(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        request: &Request,
    ) -> Result<Outcome, StageError> {
        let merchant_status = match self.authenticate(tx, inbound, request).await? {
            Ok(status) => status,
            Err(refused) => return Ok(refused),
        };
        let id = payment_id(&request.merchant_id, &request.merchant_order_id);
        tx.set_correlation_id(&id.to_string());
        if let Some(outcome) = self.seen_or_stale(tx, inbound, request, id).await? {
            return Ok(outcome);
        }
        if merchant_status != "active" {
            return refuse(
                tx,
                inbound,
                request,
                "merchant_suspended",
                "the merchant is suspended",
            )
            .await;
        }
        let parsed = match &request.parsed {
            Ok(parsed) => parsed,
            Err((reason, detail)) => return refuse(tx, inbound, request, reason, detail).await,
        };
        match self.judge(tx.conn(), parsed).await? {
            Verdict::Reject { reason, detail } => {
                insert_payment(
                    tx.conn(),
                    id,
                    parsed,
                    request,
                    PaymentStatus::Rejected,
                    Some(&detail),
                    None,
                    None,
                    self.payment_ttl,
                )
                .await?;
                payment::emit_outcome(tx, id, Final::Rejected, Some(reason))
            }
            Verdict::Accept(order) => self.accept(tx, id, parsed, request, order).await,
        }
    }
}

impl OrderValidation {
    /// The merchant's status, when the request is signed with its key;
    /// otherwise the refusal's outcome.
    async fn authenticate(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        request: &Request,
    ) -> Result<Result<String, Outcome>, StageError> {
        match signed_by(
            tx,
            &request.merchant_id,
            request.signature.as_deref(),
            &request.body,
        )
        .await?
        {
            Ok(status) => Ok(Ok(status)),
            Err((reason, detail)) => refuse(tx, inbound, request, reason, detail).await.map(Err),
        }
    }

    /// A request already seen (a stale duplicate, or the same merchant
    /// order with other content), or one no longer fresh at its first
    /// receipt: its outcome. `None`: a new request, judged next.
    async fn seen_or_stale(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        request: &Request,
        id: PaymentId,
    ) -> Result<Option<Outcome>, StageError> {
        // The payment, and the request's first receipt, in one round trip.
        let (existing, first_received_at): (Option<(String, String)>, Option<DateTime<Utc>>) =
            sqlx::query_as(
                "SELECT (SELECT (request_hash, status) FROM payments WHERE id = $1),
                        (SELECT first_received_at FROM request_receipts WHERE message_id = $2)",
            )
            .bind(id)
            .bind(&inbound.message_id)
            .fetch_one(tx.conn())
            .await?;
        if let Some((hash, status)) = existing {
            if hash == request.content_hash {
                return Ok(Some(Outcome::Stale {
                    reason: format!("duplicate request of payment {id} ({status})"),
                }));
            }
            return refuse(
                tx,
                inbound,
                request,
                "idempotency_conflict",
                &format!("merchant order already used by payment {id} with different content"),
            )
            .await
            .map(Some);
        }
        // A signed request is no licence to replay it later (after the
        // merchant is reactivated, say): it must be fresh at its first receipt.
        if let Ok(parsed) = &request.parsed {
            if let Some((reason, detail)) = self.stale_at(parsed.requested_at, first_received_at) {
                return refuse(tx, inbound, request, reason, &detail)
                    .await
                    .map(Some);
            }
        }
        Ok(None)
    }

    /// A refusal when a request (payment or refund) was not fresh at its
    /// first receipt, judged by `requested_at`.
    async fn stale_request(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        requested_at: DateTime<Utc>,
    ) -> Result<Option<(&'static str, String)>, StageError> {
        let first: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT first_received_at FROM request_receipts WHERE message_id = $1",
        )
        .bind(&inbound.message_id)
        .fetch_optional(tx.conn())
        .await?;
        Ok(self.stale_at(requested_at, first))
    }

    /// [`freshness`] against the first receipt (none when pruned: this one).
    fn stale_at(
        &self,
        requested_at: DateTime<Utc>,
        first_received_at: Option<DateTime<Utc>>,
    ) -> Option<(&'static str, String)> {
        let first = first_received_at.unwrap_or_else(Utc::now);
        freshness(requested_at, first, self.request_max_age)
    }

    /// An order that passed every check: risk decides whether it is
    /// rejected, challenged or validated (and handed to fund-freeze).
    async fn accept(
        &self,
        tx: &mut StageTx,
        id: PaymentId,
        parsed: &PaymentRequested,
        request: &Request,
        order: PricedOrder,
    ) -> Result<Outcome, StageError> {
        let (decision, reasons) = risk::decide(
            &self.risk,
            &self.redis,
            &parsed.user_id,
            order.user_blocked,
            id,
            order.payable,
            &parsed.currency,
        )
        .await;
        let risk = Some((decision, reasons.clone()));
        let (status, reason) = match decision {
            Decision::Block => (PaymentStatus::Rejected, "risk_blocked"),
            Decision::Challenge => (PaymentStatus::Challenged, "risk_challenge"),
            Decision::Allow => {
                insert_payment(
                    tx.conn(),
                    id,
                    parsed,
                    request,
                    PaymentStatus::Validated,
                    None,
                    risk,
                    Some((order.route.channel.as_str(), order.channel_fee)),
                    self.payment_ttl,
                )
                .await?;
                insert_order(tx.conn(), id, parsed, &order).await?;
                tx.emit_to_stage(
                    crate::domain::handoff::FUND_FREEZE,
                    kind::ORDER_VALIDATED,
                    &messages::OrderValidated {
                        schema_version: SCHEMA_VERSION,
                        payment_id: id,
                        amount: order.payable,
                        currency: parsed.currency.clone(),
                        validated_at: Utc::now(),
                    },
                )?;
                return Ok(Outcome::Applied);
            }
        };
        let detail = format!("{reason}: {}", reasons.join(", "));
        insert_payment(
            tx.conn(),
            id,
            parsed,
            request,
            status,
            Some(&detail),
            risk,
            None,
            self.payment_ttl,
        )
        .await?;
        payment::emit_outcome(tx, id, Final::Rejected, Some(reason))
    }
}

/// Another copy of a request recorded its `what` (a refund, a withdrawal)
/// first (possible only when the lock failed): this copy is a duplicate.
fn recorded_meanwhile(what: &str, id: uuid::Uuid) -> Outcome {
    Outcome::Stale {
        reason: format!("{what} {id} recorded meanwhile by another copy"),
    }
}
