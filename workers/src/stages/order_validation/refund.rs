//! order-validation of a `refund.requested`: the signature, the merchant,
//! the idempotency key (merchant, merchant refund id; compared by content
//! like payments), freshness, the committed schema, and the payment — the
//! merchant's own and settled, in the refund's currency. An accepted
//! request becomes a refund in `requested`, handed to fund-freeze, whose
//! Try checks what is left and reserves it. A request refused once it
//! names a payment is kept as a `refused` refund (so its id stays taken)
//! and reported through notification; one that names no payment of the
//! merchant is refused like a bad payment request, with a `refund.failed`
//! event and nothing kept but the rejection.

use chrono::Utc;
use payfleet_common::{
    PaymentId, broker,
    messages::{
        self, RefundEvent, RefundRequested, RefundResult, RefundStep, SCHEMA_VERSION, kind,
    },
    money,
    runtime::{Inbound, Outcome, StageError, StageTx, Undecodable},
};
use rust_decimal::Decimal;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{OrderValidation, Rejection, payment_id, request::read_refund_request, signed_by};
use crate::{
    channels::BALANCE,
    domain::{
        handoff,
        ledger::ChannelCharge,
        payment::PaymentStatus,
        refund::{self, RefundStatus, record::NewUpstream},
    },
};

/// A refund request as far as it could be read before any database lookup.
#[derive(Debug)]
pub struct RefundRequest {
    pub merchant_id: String,
    pub merchant_refund_id: String,
    pub signature: Option<String>,
    pub body: Vec<u8>,
    pub content_hash: String,
    pub parsed: Result<RefundRequested, (&'static str, String)>,
}

/// Only a body without a usable merchant and merchant refund id cannot be
/// answered (poison); anything else is judged.
pub(super) fn decode(inbound: &Inbound, value: Value) -> Result<RefundRequest, Undecodable> {
    let merchant_id = super::usable_id(&value, kind::REFUND_REQUESTED, "merchant_id")?;
    let merchant_refund_id =
        super::usable_id(&value, kind::REFUND_REQUESTED, "merchant_refund_id")?;
    let canonical = serde_json::to_vec(&value)
        .map_err(|e| Undecodable::json(inbound, kind::REFUND_REQUESTED, e))?;
    Ok(RefundRequest {
        merchant_id,
        merchant_refund_id,
        signature: broker::header_str(Some(&inbound.headers), messages::SIGNATURE_HEADER),
        content_hash: hex::encode(Sha256::digest(&canonical)),
        parsed: read_refund_request(value),
        body: inbound.body.clone(),
    })
}

/// A request that passed the checks needing no lock: the refund in
/// `requested`, for fund-freeze's Try; or, refused by the business checks,
/// kept `refused` and reported.
async fn accept(
    tx: &mut StageTx,
    request: &RefundRequest,
    parsed: &RefundRequested,
    refund_id: Uuid,
    payment: Refundable,
) -> Result<Outcome, StageError> {
    tx.set_correlation_id(&payment.id.to_string());
    let attempt_id = match payment.channel.as_str() {
        BALANCE => None,
        _ => ChannelCharge::of_payment(tx.conn(), payment.id)
            .await?
            .map(|charge| charge.attempt_id),
    };
    let new = NewUpstream {
        id: refund_id,
        payment_id: payment.id,
        merchant_id: &request.merchant_id,
        merchant_refund_id: &request.merchant_refund_id,
        request_hash: &request.content_hash,
        attempt_id,
        channel: &payment.channel,
        amount: parsed.amount,
        currency: &parsed.currency,
        reason: &parsed.reason,
        return_stock: parsed.return_stock,
    };
    if let Some((reason, detail)) = judge(parsed, &payment, attempt_id.is_some()) {
        let detail = format!("{reason}: {detail}");
        if !new
            .insert(tx.conn(), RefundStatus::Refused, Some(&detail))
            .await?
        {
            return Ok(recorded_meanwhile(refund_id));
        }
        return refund::emit_outcome(
            tx,
            refund_id,
            payment.id,
            RefundResult::Failed,
            Some(reason),
        );
    }
    if !new.insert(tx.conn(), RefundStatus::Requested, None).await? {
        return Ok(recorded_meanwhile(refund_id));
    }
    refund::hand_on(
        tx,
        handoff::FUND_FREEZE,
        kind::REFUND_VALIDATED,
        &RefundStep::new(refund_id, payment.id),
    )
}

/// Another copy of the request recorded the refund first (possible only
/// when the lock failed): this copy is a duplicate.
fn recorded_meanwhile(refund_id: Uuid) -> Outcome {
    Outcome::Stale {
        reason: format!("refund {refund_id} recorded meanwhile by another copy"),
    }
}

/// A request already seen: a duplicate (same content) or a conflict.
async fn seen(
    tx: &mut StageTx,
    inbound: &Inbound,
    request: &RefundRequest,
    refund_id: Uuid,
) -> Result<Option<Outcome>, StageError> {
    let existing: Option<(String, String)> =
        sqlx::query_as("SELECT request_hash, status FROM refunds WHERE id = $1")
            .bind(refund_id)
            .fetch_optional(tx.conn())
            .await?;
    let Some((hash, status)) = existing else {
        return Ok(None);
    };
    if hash == request.content_hash {
        return Ok(Some(Outcome::Stale {
            reason: format!("duplicate request of refund {refund_id} ({status})"),
        }));
    }
    let detail =
        format!("merchant refund id already used by refund {refund_id} with different content");
    refuse_unbound(tx, inbound, request, "idempotency_conflict", &detail)
        .await
        .map(Some)
}

/// The payment a valid request names, as far as the refund needs it.
struct Refundable {
    id: PaymentId,
    status: String,
    currency: String,
    channel: String,
}

impl OrderValidation {
    pub(super) async fn handle_refund(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        request: &RefundRequest,
    ) -> Result<Outcome, StageError> {
        let refund_id =
            refund::record::upstream_id(&request.merchant_id, &request.merchant_refund_id);
        let merchant_status = match signed_by(
            tx,
            &request.merchant_id,
            request.signature.as_deref(),
            &request.body,
        )
        .await?
        {
            Ok(status) => status,
            Err((reason, detail)) => {
                return refuse_unbound(tx, inbound, request, reason, detail).await;
            }
        };
        if let Some(outcome) = seen(tx, inbound, request, refund_id).await? {
            return Ok(outcome);
        }
        let parsed = match &request.parsed {
            Ok(parsed) => parsed,
            Err((reason, detail)) => {
                return refuse_unbound(tx, inbound, request, reason, detail).await;
            }
        };
        if let Some((reason, detail)) = self.stale_request(tx, inbound, parsed.requested_at).await?
        {
            return refuse_unbound(tx, inbound, request, reason, &detail).await;
        }
        if merchant_status != "active" {
            return refuse_unbound(
                tx,
                inbound,
                request,
                "merchant_suspended",
                "the merchant is suspended",
            )
            .await;
        }
        let payment = match find_payment(tx, &request.merchant_id, parsed).await? {
            Ok(payment) => payment,
            Err(detail) => {
                return refuse_unbound(tx, inbound, request, "unknown_payment", &detail).await;
            }
        };
        accept(tx, request, parsed, refund_id, payment).await
    }
}

/// The payment named by merchant order id or payment id, when it is this
/// merchant's; otherwise why not.
async fn find_payment(
    tx: &mut StageTx,
    merchant_id: &str,
    parsed: &RefundRequested,
) -> Result<Result<Refundable, String>, StageError> {
    let by_order = parsed
        .merchant_order_id
        .as_deref()
        .map(|order| payment_id(merchant_id, order));
    let id = match (by_order, parsed.payment_id) {
        (Some(a), Some(b)) if a != b => {
            return Ok(Err(format!(
                "merchant order {} is not payment {b}",
                parsed.merchant_order_id.as_deref().unwrap_or_default()
            )));
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => {
            return Ok(Err(
                "names neither merchant_order_id nor payment_id".to_owned()
            ));
        }
    };
    let row: Option<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT status, currency::text, channel FROM payments WHERE id = $1 AND merchant_id = $2",
    )
    .bind(id)
    .bind(merchant_id)
    .fetch_optional(tx.conn())
    .await?;
    Ok(match row {
        Some((status, currency, channel)) => Ok(Refundable {
            id,
            status,
            currency,
            channel: channel.unwrap_or_else(|| BALANCE.to_owned()),
        }),
        None => Err(format!("no payment {id} of this merchant")),
    })
}

/// The business checks that need no lock: the payment settled, the amount
/// positive and in the payment's currency. What is left is Try's to judge.
fn judge(
    parsed: &RefundRequested,
    payment: &Refundable,
    charged_at_channel: bool,
) -> Option<(&'static str, String)> {
    if payment.status != PaymentStatus::Settled.as_str() {
        return Some((
            "payment_not_settled",
            format!(
                "payment {} is {}: only a settled payment is refunded",
                payment.id, payment.status
            ),
        ));
    }
    if money::check_amount(parsed.amount).is_err() || parsed.amount <= Decimal::ZERO {
        return Some((
            "invalid_amount",
            format!("{} is not a positive amount", parsed.amount),
        ));
    }
    if parsed.currency != payment.currency {
        return Some((
            "currency_mismatch",
            format!(
                "the payment is in {}, not {}",
                payment.currency, parsed.currency
            ),
        ));
    }
    if payment.channel != BALANCE && !charged_at_channel {
        return Some((
            "payment_not_settled",
            format!(
                "payment {} has no charge at {} to refund",
                payment.id, payment.channel
            ),
        ));
    }
    None
}

/// Refuses a request that names no payment of the merchant (or cannot be
/// trusted to): a rejection row and a `refund.failed` event, nothing else.
async fn refuse_unbound(
    tx: &mut StageTx,
    inbound: &Inbound,
    request: &RefundRequest,
    reason: &str,
    detail: &str,
) -> Result<Outcome, StageError> {
    let rejection = Rejection {
        merchant_id: &request.merchant_id,
        merchant_order_id: None,
        merchant_refund_id: Some(&request.merchant_refund_id),
    };
    rejection.record(tx, inbound, reason, detail).await?;
    // No refund came of it: the event names the refused message, never the
    // refund its key belongs to (a conflict, a forgery must not report on
    // a refund that exists and may have succeeded).
    let refusal_id = messages::stable_id(&["refused-refund-request", &inbound.message_id]);
    tx.set_correlation_id(&refusal_id.to_string());
    let parsed = request.parsed.as_ref().ok();
    let event = RefundEvent {
        schema_version: SCHEMA_VERSION,
        event_id: messages::stable_id(&[
            "event",
            &refusal_id.to_string(),
            messages::event::REFUND_FAILED,
        ]),
        event_type: messages::event::REFUND_FAILED.to_owned(),
        refund_id: refusal_id,
        merchant_id: request.merchant_id.clone(),
        merchant_refund_id: request.merchant_refund_id.clone(),
        payment_id: None,
        merchant_order_id: None,
        status: RefundStatus::Refused.as_str().to_owned(),
        amount: parsed
            .and_then(|p| money::check_amount(p.amount).ok())
            .unwrap_or(Decimal::ZERO),
        currency: parsed
            .and_then(|p| money::currency(&p.currency).ok())
            .unwrap_or("XXX")
            .to_owned(),
        refunded_total: Decimal::ZERO,
        reason: Some(format!("{reason}: {detail}")),
        occurred_at: Utc::now(),
    };
    tx.emit_event(messages::event::REFUND_FAILED, &event)?;
    tracing::info!(reason, detail, "refund request refused");
    Ok(Outcome::Applied)
}
