//! order-validation of a `topup.requested`: the requester's signature and
//! its right to act for users, the idempotency key (requester, request id;
//! compared by content like payments), freshness, the committed schema,
//! then the business checks: the user and its wallet, risk, and a channel
//! taking the payment method. An accepted request becomes a payment of
//! kind `top_up` in `validated`, handed to fund-freeze and from there down
//! a payment's path through the channel; a refused one is kept `rejected`
//! (or `challenged`) with its reason, and one that cannot be trusted or
//! read is refused with a `topup.failed` event and nothing kept but the
//! rejection.

use chrono::Utc;
use payfleet_common::{
    PaymentId,
    messages::{
        self, OrderValidated, Outcome as Final, SCHEMA_VERSION, TopUpEvent, TopUpRequested, kind,
    },
    money,
    runtime::{Inbound, Outcome, StageError, StageTx, Undecodable},
};
use rust_decimal::Decimal;
use serde_json::Value;

use super::{
    OrderValidation, Rejection,
    for_users::{self, ForUser, Opening},
    record::unique_is_transient,
    refusal::reported_money,
    request::read_top_up_request,
    risk::{self, Decision},
};
use crate::domain::{
    handoff,
    payment::{self, PaymentKind, PaymentStatus},
};

/// A top-up request as far as it could be read before any database lookup.
pub type TopUpRequest = ForUser<TopUpRequested>;

/// Only a body without a usable requester and request id cannot be
/// answered (poison); anything else is judged.
pub(super) fn decode(inbound: &Inbound, value: Value) -> Result<TopUpRequest, Undecodable> {
    for_users::decode(
        inbound,
        value,
        (kind::TOPUP_REQUESTED, "requester_id"),
        read_top_up_request,
    )
}

/// The lock of a top-up request while order-validation judges it.
pub(super) fn lock_key(request: &TopUpRequest) -> String {
    format!(
        "topup-request:{}:{}",
        request.requester_id, request.request_id
    )
}

/// The id of a requester's top-up: a payment id of a namespace of its own,
/// so a top-up id never meets one of the requester's merchant order ids.
pub fn top_up_id(requester_id: &str, request_id: &str) -> PaymentId {
    PaymentId::from(messages::stable_id(&["top_up", requester_id, request_id]))
}

/// How the business checks ended: the channel and its fee, or the status
/// the top-up is kept in and why.
enum Judged {
    Accepted {
        channel: String,
        channel_fee: Decimal,
    },
    Refused {
        status: PaymentStatus,
        reason: &'static str,
        detail: String,
    },
}

impl OrderValidation {
    pub(super) async fn handle_top_up(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        request: &TopUpRequest,
    ) -> Result<Outcome, StageError> {
        let id = top_up_id(&request.requester_id, &request.request_id);
        let opening = (request, for_users::Kept::TopUp, id.into());
        let parsed = match self.open_for_user(tx, inbound, opening).await? {
            Opening::Judge(parsed) => parsed,
            Opening::Seen(duplicate) => return Ok(duplicate),
            Opening::Refused(reason, detail) => {
                return refuse_unbound(tx, inbound, request, reason, &detail).await;
            }
        };
        if money::currency(&parsed.currency).is_err() {
            let detail = parsed.currency.clone();
            return refuse_unbound(tx, inbound, request, "unsupported_currency", &detail).await;
        }
        tx.set_correlation_id(&id.to_string());
        let judged = self.judge_top_up(tx, id, parsed).await?;
        let new = NewTopUp {
            id,
            requester_id: &request.requester_id,
            request_id: &request.request_id,
            content_hash: &request.content_hash,
            parsed,
        };
        match judged {
            Judged::Accepted {
                channel,
                channel_fee,
            } => {
                new.insert(
                    tx.conn(),
                    PaymentStatus::Validated,
                    None,
                    Some((&channel, channel_fee)),
                    self.payment_ttl,
                )
                .await?;
                tx.emit_to_stage(
                    handoff::FUND_FREEZE,
                    kind::ORDER_VALIDATED,
                    &OrderValidated {
                        schema_version: SCHEMA_VERSION,
                        payment_id: id,
                        amount: parsed.amount,
                        currency: parsed.currency.clone(),
                        validated_at: Utc::now(),
                    },
                )?;
                Ok(Outcome::Applied)
            }
            Judged::Refused {
                status,
                reason,
                detail,
            } => {
                let detail = format!("{reason}: {detail}");
                new.insert(tx.conn(), status, Some(&detail), None, self.payment_ttl)
                    .await?;
                tracing::info!(reason, detail, "top-up refused");
                payment::emit_outcome(tx, id, Final::Rejected, Some(reason))
            }
        }
    }

    /// The user and its wallet, risk, and a healthy channel taking the
    /// method (its fee is the platform's cost).
    async fn judge_top_up(
        &self,
        tx: &mut StageTx,
        id: PaymentId,
        r: &TopUpRequested,
    ) -> Result<Judged, StageError> {
        let refused = |status, reason, detail| Judged::Refused {
            status,
            reason,
            detail,
        };
        // a user with no wallet in the currency yet: the top-up opens it
        let user_blocked = match for_users::usable_wallet(tx, &r.user_id, &r.currency, true).await?
        {
            Ok((_, blocked)) => blocked,
            Err((_, reason, detail)) => {
                return Ok(refused(PaymentStatus::Rejected, reason, detail));
            }
        };
        let (decision, reasons) = risk::decide(
            &self.risk,
            &self.redis,
            &r.user_id,
            user_blocked,
            id,
            r.amount,
            &r.currency,
        )
        .await;
        match decision {
            Decision::Allow => {}
            Decision::Block => {
                let detail = reasons.join(", ");
                return Ok(refused(PaymentStatus::Rejected, "risk_blocked", detail));
            }
            Decision::Challenge => {
                let detail = reasons.join(", ");
                return Ok(refused(PaymentStatus::Challenged, "risk_challenge", detail));
            }
        }
        let route = crate::channels::routing::choose(
            tx.conn(),
            &self.redis,
            &self.risk.key_prefix,
            &r.payment_method,
        )
        .await?;
        // A wallet is never filled from itself: the schema allows only
        // third-party methods, and no balance channel takes them.
        let Some(route) = route.filter(|route| route.channel != crate::channels::BALANCE) else {
            let detail = format!("no healthy channel takes `{}`", r.payment_method);
            return Ok(refused(
                PaymentStatus::Rejected,
                "no_channel_available",
                detail,
            ));
        };
        Ok(Judged::Accepted {
            channel_fee: money::round(r.amount * route.fee_rate),
            channel: route.channel,
        })
    }
}

/// A top-up about to be kept as a payment of kind `top_up`: by
/// order-validation, or by `payfleet wallet top-up` for a deposit an
/// operator attests.
pub struct NewTopUp<'a> {
    pub id: PaymentId,
    pub requester_id: &'a str,
    pub request_id: &'a str,
    pub content_hash: &'a str,
    pub parsed: &'a TopUpRequested,
}

impl NewTopUp<'_> {
    pub async fn insert(
        &self,
        conn: &mut sqlx::PgConnection,
        status: PaymentStatus,
        reason: Option<&str>,
        route: Option<(&str, Decimal)>,
        ttl: chrono::Duration,
    ) -> Result<(), StageError> {
        let r = self.parsed;
        sqlx::query(
            "INSERT INTO payments (id, kind, merchant_id, merchant_order_id, request_hash, user_id, method, channel,
                                   currency, amount, status, reason, notify_url, expires_at, requested_at,
                                   finished_at, payer_token, channel_fee)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, now() + $14, $15,
                     CASE WHEN $16 THEN now() END, $17, $18)",
        )
        .bind(self.id)
        .bind(PaymentKind::TopUp.as_str())
        .bind(self.requester_id)
        .bind(self.request_id)
        .bind(self.content_hash)
        .bind(&r.user_id)
        .bind(&r.payment_method)
        .bind(route.map(|(channel, _)| channel))
        .bind(&r.currency)
        .bind(r.amount)
        .bind(status.as_str())
        .bind(reason)
        .bind(&r.notify_url)
        .bind(ttl)
        .bind(r.requested_at)
        .bind(status != PaymentStatus::Validated)
        .bind(&r.payer_token)
        .bind(route.map_or(Decimal::ZERO, |(_, fee)| fee))
        .execute(conn)
        .await
        .map_err(unique_is_transient)?;
        Ok(())
    }
}

/// Refuses a request that creates no top-up (it cannot be trusted or
/// read, or its id is taken): a rejection row and a `topup.failed` event
/// naming the refused message, never the top-up its key belongs to.
async fn refuse_unbound(
    tx: &mut StageTx,
    inbound: &Inbound,
    request: &TopUpRequest,
    reason: &str,
    detail: &str,
) -> Result<Outcome, StageError> {
    let rejection = Rejection {
        merchant_id: &request.requester_id,
        merchant_order_id: None,
        merchant_refund_id: None,
        merchant_reversal_id: None,
        withdrawal_request_id: None,
        top_up_request_id: Some(&request.request_id),
        transfer_request_id: None,
    };
    rejection.record(tx, inbound, reason, detail).await?;
    let refusal_id = PaymentId::from(messages::stable_id(&[
        "refused-topup-request",
        &inbound.message_id,
    ]));
    tx.set_correlation_id(&refusal_id.to_string());
    let parsed = request.parsed.as_ref().ok();
    let (amount, currency) = reported_money(
        parsed.map(|p| p.amount),
        parsed.map(|p| p.currency.as_str()),
    );
    let event_type = messages::event::TOPUP_FAILED;
    let event = TopUpEvent {
        schema_version: SCHEMA_VERSION,
        event_id: messages::stable_id(&["event", &refusal_id.to_string(), event_type]),
        event_type: event_type.to_owned(),
        top_up_id: refusal_id,
        requester_id: request.requester_id.clone(),
        request_id: request.request_id.clone(),
        user_id: parsed.map(|p| p.user_id.clone()).unwrap_or_default(),
        status: PaymentStatus::Rejected.as_str().to_owned(),
        amount,
        currency,
        reason: Some(format!("{reason}: {detail}")),
        occurred_at: Utc::now(),
    };
    tx.emit_event(event_type, &event)?;
    tracing::info!(reason, detail, "top-up request refused");
    Ok(Outcome::Applied)
}
