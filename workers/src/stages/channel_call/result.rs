//! The second transaction of a call: the channel's answer is committed to
//! the integration log and moves the attempt; a final answer goes to
//! callback, no answer schedules a status query.

use chrono::Utc;
use payfleet_common::{
    AttemptId, PaymentId,
    messages::{ChannelResult, ChannelStatus, PaymentResolved, Resolution, SCHEMA_VERSION, kind},
    runtime::{Outcome, StageError, StageTx},
};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::{Answer, Call, ChannelCall};
use crate::channels::in_house;
use crate::{
    channels::{ChannelReply, CloseReply, routing},
    domain::attempt::AttemptStatus,
};

impl Call {
    /// The payment, the attempt and the channel a call about a payment's
    /// own charge was for; none for a refund's or a payout's call.
    pub(super) fn ids(&self) -> Option<(PaymentId, AttemptId, String)> {
        Some(match self {
            Call::Charge { request, adapter } => (
                request.payment_id,
                request.attempt_id,
                adapter.name().to_owned(),
            ),
            Call::Query {
                payment_id,
                attempt_id,
                adapter,
                ..
            }
            | Call::Close {
                payment_id,
                attempt_id,
                adapter,
                ..
            } => (*payment_id, *attempt_id, adapter.name().to_owned()),
            Call::Refund(_) | Call::Payout(_) => return None,
        })
    }
}

impl ChannelCall {
    /// Counts the call for the channel's circuit breaker. The in-house
    /// channels have none: they never fail, and their calls are made inside
    /// a transaction (a batch's, even) that may yet roll back and be made
    /// again under a new attempt id, which would count twice.
    pub(super) async fn count_call(
        &self,
        call: &Call,
        answer: &Answer,
        attempt_id: AttemptId,
        channel: &str,
    ) -> Result<(), StageError> {
        if in_house::is_in_house(channel) {
            return Ok(());
        }
        let failed_call = matches!(
            answer,
            Answer::Channel(ChannelReply::Unknown { .. })
                | Answer::Close(CloseReply::Unknown { .. })
        );
        // Keyed by the call, not this handling of it: written before the
        // commit, it must count once when the message is handled again.
        let call_id = match call {
            Call::Charge { .. } => format!("{attempt_id}:charge"),
            Call::Query { number, .. } => format!("{attempt_id}:query:{number}"),
            Call::Close { .. } => format!("{attempt_id}:close"),
            Call::Refund(refund) => format!("{}:refund", refund.refund.id),
            Call::Payout(payout) => format!("{}:payout", payout.withdrawal.id),
        };
        routing::record(
            &self.redis,
            &self.redis_prefix,
            channel,
            &call_id,
            failed_call,
        )
        .await;
        Ok(())
    }

    /// The answer to a charge or to status query `number` (0: the charge).
    pub(super) async fn record_reply(
        &self,
        tx: &mut StageTx,
        (payment_id, attempt_id): (PaymentId, AttemptId),
        channel: &str,
        number: u32,
        reply: ChannelReply,
    ) -> Result<Outcome, StageError> {
        match reply {
            ChannelReply::Resolved {
                status,
                amount,
                currency,
                reference,
                reason,
                raw,
            } => {
                log(tx, payment_id, Some(attempt_id), channel, "response", raw).await?;
                report(
                    tx, payment_id, attempt_id, channel, &currency, status, amount, reference,
                    reason,
                )?;
                Ok(Outcome::Applied)
            }
            ChannelReply::Pending { reference, raw } => {
                log(tx, payment_id, Some(attempt_id), channel, "response", raw).await?;
                set_attempt(tx, attempt_id, AttemptStatus::Pending, reference.as_deref()).await?;
                // The webhook should come; a query makes sure.
                self.next_query(tx, payment_id, attempt_id, number + 1)?;
                Ok(Outcome::Applied)
            }
            ChannelReply::Unknown { error } => {
                log(
                    tx,
                    payment_id,
                    Some(attempt_id),
                    channel,
                    "response",
                    json!({"unknown": error}),
                )
                .await?;
                set_attempt(tx, attempt_id, AttemptStatus::Unknown, None).await?;
                tracing::warn!(%error, %attempt_id, channel, "no final answer from the channel; a status query decides");
                self.next_query(tx, payment_id, attempt_id, number + 1)?;
                Ok(Outcome::Applied)
            }
        }
    }
}

/// The answer to a close: closed (released now), paid after all (settles),
/// or no answer (asked again).
pub(super) async fn record_close(
    tx: &mut StageTx,
    payment_id: PaymentId,
    attempt_id: AttemptId,
    channel: &str,
    reason: &str,
    reply: CloseReply,
) -> Result<Outcome, StageError> {
    match reply {
        CloseReply::Closed { raw } => {
            log(tx, payment_id, Some(attempt_id), channel, "response", raw).await?;
            set_attempt(tx, attempt_id, AttemptStatus::Closed, None).await?;
            resolve_failed(tx, payment_id, reason)?;
            Ok(Outcome::Applied)
        }
        CloseReply::AlreadyPaid {
            amount,
            currency,
            reference,
            raw,
        } => {
            // Paid after all: the payment goes on to settle, nothing is released.
            log(tx, payment_id, Some(attempt_id), channel, "response", raw).await?;
            report(
                tx,
                payment_id,
                attempt_id,
                channel,
                &currency,
                ChannelStatus::Succeeded,
                amount,
                reference,
                None,
            )?;
            Ok(Outcome::Applied)
        }
        CloseReply::Unknown { error } => Err(StageError::transient(format!(
            "closing attempt {attempt_id} at {channel}: {error}"
        ))),
    }
}

/// Hands a channel's final answer, in the amount and currency the channel
/// stated, to callback (statuses move there; callback compares them).
#[allow(clippy::too_many_arguments)]
pub(super) fn report(
    tx: &mut StageTx,
    payment_id: PaymentId,
    attempt_id: AttemptId,
    channel: &str,
    currency: &str,
    status: ChannelStatus,
    amount: Decimal,
    reference: Option<String>,
    reason: Option<String>,
) -> Result<(), StageError> {
    tx.emit_to_stage(
        crate::domain::handoff::CALLBACK,
        kind::CHANNEL_RESULT,
        &ChannelResult {
            schema_version: SCHEMA_VERSION,
            payment_id,
            attempt_id,
            channel: channel.to_owned(),
            status,
            amount,
            currency: currency.to_owned(),
            channel_reference: reference,
            reason,
            reported_at: Utc::now(),
        },
    )
}

pub(super) fn resolve_failed(
    tx: &mut StageTx,
    payment_id: PaymentId,
    reason: &str,
) -> Result<(), StageError> {
    tx.emit_to_stage(
        crate::domain::handoff::SETTLEMENT,
        kind::PAYMENT_RESOLVED,
        &PaymentResolved {
            schema_version: SCHEMA_VERSION,
            payment_id,
            resolution: Resolution::Failed,
            reason: Some(reason.to_owned()),
            resolved_at: Utc::now(),
        },
    )
}

pub(super) async fn set_attempt(
    tx: &mut StageTx,
    attempt_id: AttemptId,
    status: AttemptStatus,
    reference: Option<&str>,
) -> Result<(), StageError> {
    sqlx::query(
        "UPDATE payment_attempts SET status = $2, channel_reference = COALESCE($3, channel_reference),
                resolved_at = CASE WHEN $2 IN ('closed') THEN now() ELSE resolved_at END
         WHERE id = $1 AND status IN ('sending', 'pending', 'unknown')",
    )
    .bind(attempt_id)
    .bind(status.as_str())
    .bind(reference)
    .execute(tx.conn())
    .await?;
    Ok(())
}

pub(super) async fn log(
    tx: &mut StageTx,
    payment_id: PaymentId,
    attempt_id: Option<AttemptId>,
    channel: &str,
    direction: &str,
    payload: Value,
) -> Result<(), StageError> {
    sqlx::query("INSERT INTO integration_log (payment_id, attempt_id, channel, direction, payload) VALUES ($1, $2, $3, $4, $5)")
        .bind(payment_id)
        .bind(attempt_id)
        .bind(channel)
        .bind(direction)
        .bind(payload)
        .execute(tx.conn())
        .await?;
    Ok(())
}
