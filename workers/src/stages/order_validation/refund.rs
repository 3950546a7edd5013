//! order-validation of a `refund.requested` or a `payment.reverse` (a
//! reversal: a refund of the whole payment, of kind `reversal`, judged
//! further in [`super::reversal`]): the signature, the merchant,
//! the idempotency key (merchant, merchant refund or reversal id; compared
//! by content like payments), freshness, the committed schema, and the
//! payment — the merchant's own and settled, in the refund's currency. An accepted
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
        self, PaymentReverse, RefundEvent, RefundRequested, RefundResult, RefundStep,
        ReversalEvent, SCHEMA_VERSION, kind,
    },
    money,
    runtime::{Inbound, Outcome, StageError, StageTx, Undecodable},
};
use rust_decimal::Decimal;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    OrderValidation, Rejection, payment_id,
    request::{read_refund_request, read_reversal_request},
    reversal, signed_by,
};
use crate::{
    channels::BALANCE,
    domain::{
        handoff,
        ledger::ChannelCharge,
        payment::PaymentStatus,
        refund::{self, RefundKind, RefundStatus, record::NewUpstream},
    },
};

/// A refund or reversal request as far as it could be read before any
/// database lookup.
#[derive(Debug)]
pub struct RefundRequest {
    pub kind: RefundKind,
    pub merchant_id: String,
    /// The merchant's refund id, or its reversal id for a reversal.
    pub merchant_request_id: String,
    pub signature: Option<String>,
    pub body: Vec<u8>,
    pub content_hash: String,
    pub parsed: Result<Ask, (&'static str, String)>,
}

/// What a valid request asks for, whichever its kind.
#[derive(Debug)]
pub struct Ask {
    merchant_order_id: Option<String>,
    payment_id: Option<PaymentId>,
    /// What to give back and in which currency; none: the whole payment (a reversal).
    amount: Option<(Decimal, String)>,
    reason: String,
    return_stock: bool,
    requested_at: chrono::DateTime<Utc>,
}

impl From<RefundRequested> for Ask {
    fn from(r: RefundRequested) -> Self {
        Ask {
            merchant_order_id: r.merchant_order_id,
            payment_id: r.payment_id,
            amount: Some((r.amount, r.currency)),
            reason: r.reason,
            return_stock: r.return_stock,
            requested_at: r.requested_at,
        }
    }
}

impl From<PaymentReverse> for Ask {
    /// A reversal takes back every leg of the payment, its stock included.
    fn from(r: PaymentReverse) -> Self {
        Ask {
            merchant_order_id: r.merchant_order_id,
            payment_id: r.payment_id,
            amount: None,
            reason: r.reason,
            return_stock: true,
            requested_at: r.requested_at,
        }
    }
}

/// The message kind of a request of `kind`, and its merchant id field.
fn message_of(kind: RefundKind) -> (&'static str, &'static str) {
    match kind {
        RefundKind::Refund => (kind::REFUND_REQUESTED, "merchant_refund_id"),
        RefundKind::Reversal => (kind::PAYMENT_REVERSE, "merchant_reversal_id"),
    }
}

/// Only a body without a usable merchant and merchant refund (reversal) id
/// cannot be answered (poison); anything else is judged.
pub(super) fn decode(
    inbound: &Inbound,
    value: Value,
    refund_kind: RefundKind,
) -> Result<RefundRequest, Undecodable> {
    let (message, id_field) = message_of(refund_kind);
    let merchant_id = super::usable_id(&value, message, "merchant_id")?;
    let merchant_request_id = super::usable_id(&value, message, id_field)?;
    let canonical =
        serde_json::to_vec(&value).map_err(|e| Undecodable::json(inbound, message, e))?;
    let parsed = match refund_kind {
        RefundKind::Refund => read_refund_request(value).map(Ask::from),
        RefundKind::Reversal => read_reversal_request(value).map(Ask::from),
    };
    Ok(RefundRequest {
        kind: refund_kind,
        merchant_id,
        merchant_request_id,
        signature: broker::header_str(Some(&inbound.headers), messages::SIGNATURE_HEADER),
        content_hash: hex::encode(Sha256::digest(&canonical)),
        parsed,
        body: inbound.body.clone(),
    })
}

impl OrderValidation {
    /// A request that passed the checks needing no lock: the refund in
    /// `requested`, for fund-freeze's Try; or, refused by the business checks,
    /// kept `refused` and reported.
    async fn accept_refund(
        &self,
        tx: &mut StageTx,
        request: &RefundRequest,
        parsed: &Ask,
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
        let (amount, currency) = parsed
            .amount
            .clone()
            .unwrap_or_else(|| (payment.amount, payment.currency.clone()));
        let new = NewUpstream {
            id: refund_id,
            kind: request.kind,
            payment_id: payment.id,
            merchant_id: &request.merchant_id,
            merchant_refund_id: &request.merchant_request_id,
            request_hash: &request.content_hash,
            attempt_id,
            channel: &payment.channel,
            amount,
            currency: &currency,
            reason: &parsed.reason,
            return_stock: parsed.return_stock,
        };
        let mut refusal = judge(amount, &currency, &payment, attempt_id.is_some());
        if refusal.is_none() && request.kind == RefundKind::Reversal {
            refusal =
                reversal::window(tx.conn(), payment.id, self.business_zone, Utc::now()).await?;
        }
        if let Some((reason, detail)) = refusal {
            let detail = format!("{reason}: {detail}");
            if !new
                .insert(tx.conn(), RefundStatus::Refused, Some(&detail))
                .await?
            {
                return Ok(super::recorded_meanwhile("refund", refund_id));
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
            return Ok(super::recorded_meanwhile("refund", refund_id));
        }
        refund::hand_on(
            tx,
            handoff::FUND_FREEZE,
            kind::REFUND_VALIDATED,
            &RefundStep::new(refund_id, payment.id),
        )
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
            reason: format!(
                "duplicate request of {} {refund_id} ({status})",
                request.kind.as_str()
            ),
        }));
    }
    let detail = format!(
        "merchant {} id already used by {} {refund_id} with different content",
        request.kind.as_str(),
        request.kind.as_str()
    );
    refuse_unbound(tx, inbound, request, "idempotency_conflict", &detail)
        .await
        .map(Some)
}

/// The payment a valid request names, as far as the refund needs it.
struct Refundable {
    id: PaymentId,
    status: String,
    amount: Decimal,
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
        let refund_id = request
            .kind
            .id_of(&request.merchant_id, &request.merchant_request_id);
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
        self.accept_refund(tx, request, parsed, refund_id, payment)
            .await
    }
}

/// The payment named by merchant order id or payment id, when it is this
/// merchant's; otherwise why not.
async fn find_payment(
    tx: &mut StageTx,
    merchant_id: &str,
    parsed: &Ask,
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
    let row: Option<(String, Decimal, String, Option<String>, bool)> = sqlx::query_as(
        "SELECT status, amount, currency::text, channel, kind = 'top_up' FROM payments WHERE id = $1 AND merchant_id = $2",
    )
    .bind(id)
    .bind(merchant_id)
    .fetch_optional(tx.conn())
    .await?;
    Ok(match row {
        // The money of a top-up is the user's own, in the wallet: it
        // leaves by a withdrawal, never by refunding the top-up.
        Some((.., true)) => Err(format!(
            "{id} is a wallet top-up, not a payment: its money leaves the wallet by a withdrawal"
        )),
        Some((status, amount, currency, channel, false)) => Ok(Refundable {
            id,
            status,
            amount,
            currency,
            channel: channel.unwrap_or_else(|| BALANCE.to_owned()),
        }),
        None => Err(format!("no payment {id} of this merchant")),
    })
}

/// The business checks that need no lock: the payment settled, the amount
/// positive and in the payment's currency. What is left is Try's to judge.
fn judge(
    amount: Decimal,
    currency: &str,
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
    if money::check_amount(amount).is_err() || amount <= Decimal::ZERO {
        return Some((
            "invalid_amount",
            format!("{amount} is not a positive amount"),
        ));
    }
    if currency != payment.currency {
        return Some((
            "currency_mismatch",
            format!("the payment is in {}, not {currency}", payment.currency),
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
/// trusted to): a rejection row and a `refund.failed` (`payment.reversal_failed`)
/// event, nothing else.
async fn refuse_unbound(
    tx: &mut StageTx,
    inbound: &Inbound,
    request: &RefundRequest,
    reason: &str,
    detail: &str,
) -> Result<Outcome, StageError> {
    let reversal = request.kind == RefundKind::Reversal;
    let rejection = Rejection {
        merchant_id: &request.merchant_id,
        merchant_order_id: None,
        merchant_refund_id: (!reversal).then_some(request.merchant_request_id.as_str()),
        merchant_reversal_id: reversal.then_some(request.merchant_request_id.as_str()),
        withdrawal_request_id: None,
        top_up_request_id: None,
        transfer_request_id: None,
    };
    rejection.record(tx, inbound, reason, detail).await?;
    // No refund came of it: the event names the refused message, never the
    // refund its key belongs to (a conflict, a forgery must not report on
    // a refund that exists and may have succeeded).
    let refusal_id = messages::stable_id(&["refused-refund-request", &inbound.message_id]);
    tx.set_correlation_id(&refusal_id.to_string());
    let asked = request.parsed.as_ref().ok().and_then(|p| p.amount.as_ref());
    let (amount, currency) = super::refusal::reported_money(
        asked.map(|(amount, _)| *amount),
        asked.map(|(_, currency)| currency.as_str()),
    );
    let status = RefundStatus::Refused.as_str().to_owned();
    let why = Some(format!("{reason}: {detail}"));
    if reversal {
        let event_type = messages::event::REVERSAL_FAILED;
        let event = ReversalEvent {
            schema_version: SCHEMA_VERSION,
            event_id: messages::stable_id(&["event", &refusal_id.to_string(), event_type]),
            event_type: event_type.to_owned(),
            reversal_id: refusal_id,
            merchant_id: request.merchant_id.clone(),
            merchant_reversal_id: request.merchant_request_id.clone(),
            payment_id: None,
            merchant_order_id: None,
            status,
            amount,
            currency,
            reason: why,
            occurred_at: Utc::now(),
        };
        tx.emit_event(event_type, &event)?;
    } else {
        let event_type = messages::event::REFUND_FAILED;
        let event = RefundEvent {
            schema_version: SCHEMA_VERSION,
            event_id: messages::stable_id(&["event", &refusal_id.to_string(), event_type]),
            event_type: event_type.to_owned(),
            refund_id: refusal_id,
            merchant_id: request.merchant_id.clone(),
            merchant_refund_id: request.merchant_request_id.clone(),
            payment_id: None,
            merchant_order_id: None,
            status,
            amount,
            currency,
            refunded_total: Decimal::ZERO,
            reason: why,
            occurred_at: Utc::now(),
        };
        tx.emit_event(event_type, &event)?;
    }
    tracing::info!(
        reason,
        detail,
        kind = request.kind.as_str(),
        "refund request refused"
    );
    Ok(Outcome::Applied)
}
