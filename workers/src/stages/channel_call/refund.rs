//! A refund at its payment's original channel, whatever the channel's
//! circuit breaker says (the money can only go back the way it came), with
//! the refund id as the channel's idempotency key. intent → call → result,
//! as for charges: the refund is committed `sending` before the call; a
//! timeout, a 5xx or an answer still processing is UNKNOWN and status
//! queries through the delay levels decide; when they run out the refund
//! stays reserved as an exception for ops — never sent again under a new
//! id. A refund found still `sending` (the process died during the call)
//! is asked about, not sent again. A wallet payment's refund needs no
//! call: it is credited to the wallet by settlement.

use std::sync::Arc;

use payfleet_common::{
    AttemptId, Topology,
    messages::{RefundResult, RefundStep, kind},
    outbox::OutboxMessage,
    runtime::{Intent, Outcome, StageError, StageTx},
};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::{Call, ChannelCall, NAME};
use crate::{
    channels::{ChannelAdapter, RefundError},
    domain::{
        handoff,
        refund::{self, Refund, RefundStatus},
    },
};

/// A refund call decided by the first transaction.
pub struct RefundCall {
    pub refund: Refund,
    pub attempt_id: AttemptId,
    /// `Some(n)`: status query number n; `None`: the refund itself.
    pub query: Option<u32>,
    pub adapter: Arc<dyn ChannelAdapter>,
}

impl RefundCall {
    pub async fn call(&self) -> Result<Value, RefundError> {
        match self.query {
            None => {
                self.adapter
                    .refund(self.attempt_id, self.refund.id, self.refund.amount)
                    .await
            }
            Some(_) => {
                self.adapter
                    .query_refund(self.attempt_id, self.refund.id)
                    .await
            }
        }
    }
}

/// What a channel's refund answer says.
#[derive(Debug, PartialEq)]
enum Reading {
    Final(RefundResult, Option<String>),
    /// Accepted or processing, another amount, or no answer at all.
    Unknown(String),
}

fn read(answer: &Result<Value, RefundError>, amount: Decimal) -> Reading {
    match answer {
        Ok(raw) => match raw["status"].as_str() {
            Some("SUCCEEDED")
                if raw["amount"]
                    .as_str()
                    .and_then(|a| a.parse::<Decimal>().ok())
                    == Some(amount) =>
            {
                Reading::Final(RefundResult::Succeeded, None)
            }
            Some("FAILED") => Reading::Final(
                RefundResult::Failed,
                Some(format!(
                    "refund_declined: {}",
                    raw["reason"].as_str().unwrap_or("refused by the channel")
                )),
            ),
            _ => Reading::Unknown(format!("no final answer: {raw}")),
        },
        // The channel refused the request itself (not refundable there).
        Err(RefundError::Refused { status, body }) if status.is_client_error() => Reading::Final(
            RefundResult::Failed,
            Some(format!("refund_declined: HTTP {status}: {body}")),
        ),
        Err(error) => Reading::Unknown(error.to_string()),
    }
}

impl ChannelCall {
    /// First transaction of a refund's step at channel-call.
    pub(super) async fn intend_refund(
        &self,
        tx: &mut StageTx,
        m: &RefundStep,
        query: bool,
    ) -> Result<Intent<Call>, StageError> {
        tx.set_correlation_id(&m.payment_id.to_string());
        let Some(r) = refund::lock(tx.conn(), m.refund_id).await? else {
            return Ok(Intent::Finished(Outcome::NotYet {
                reason: format!("refund {} not found", m.refund_id),
            }));
        };
        let status = r.status()?;
        let number = match (status, query) {
            (RefundStatus::Reserved, false) => None,
            // Died during the call: ask, never send blindly again.
            (RefundStatus::Sending, false) => Some(1),
            (RefundStatus::Unknown, true) => Some(m.query_number.unwrap_or(1)),
            (status, _) => {
                return Ok(Intent::Finished(Outcome::Stale {
                    reason: format!("refund {} is {}", r.id, status.as_str()),
                }));
            }
        };
        if status == RefundStatus::Reserved {
            refund::transition(
                tx.conn(),
                r.id,
                RefundStatus::Reserved,
                RefundStatus::Sending,
            )
            .await?;
            if r.to_wallet() {
                let mut result = RefundStep::new(r.id, r.payment_id);
                result.result = Some(RefundResult::Succeeded);
                return refund::hand_on(tx, handoff::CALLBACK, kind::REFUND_RESULT, &result)
                    .map(Intent::Finished);
            }
        }
        let Some(attempt_id) = r.attempt_id else {
            return Err(StageError::permanent(format!(
                "refund {} at {} names no charge to refund",
                r.id, r.channel
            )));
        };
        sqlx::query("UPDATE refunds SET sends = sends + 1 WHERE id = $1")
            .bind(r.id)
            .execute(tx.conn())
            .await?;
        let adapter = self.adapters.get(tx.conn(), &r.channel).await?;
        Ok(Intent::Call(Call::Refund(RefundCall {
            refund: r,
            attempt_id,
            query: number,
            adapter,
        })))
    }

    /// Second transaction: the answer is logged; a final one goes to
    /// callback, no answer schedules the next status query.
    pub(super) async fn record_refund(
        &self,
        tx: &mut StageTx,
        call: RefundCall,
        answer: Result<Value, RefundError>,
    ) -> Result<Outcome, StageError> {
        let r = &call.refund;
        tx.set_correlation_id(&r.payment_id.to_string());
        let what = if call.query.is_some() {
            "refund_query"
        } else {
            "refund"
        };
        let payload = match &answer {
            Ok(raw) => {
                json!({"call": what, "refund_no": r.id, "amount": r.amount.to_string(), "answer": raw})
            }
            Err(error) => {
                json!({"call": what, "refund_no": r.id, "amount": r.amount.to_string(), "error": error.to_string()})
            }
        };
        sqlx::query("INSERT INTO integration_log (payment_id, attempt_id, channel, direction, payload) VALUES ($1, $2, $3, 'request', $4)")
            .bind(r.payment_id)
            .bind(call.attempt_id)
            .bind(&r.channel)
            .bind(payload)
            .execute(tx.conn())
            .await?;
        let Some(now) = refund::lock(tx.conn(), r.id).await? else {
            return Err(StageError::permanent(format!("refund {} vanished", r.id)));
        };
        let status = now.status()?;
        if !matches!(status, RefundStatus::Sending | RefundStatus::Unknown) {
            return Ok(Outcome::Stale {
                reason: format!("refund {} is already {}", r.id, status.as_str()),
            });
        }
        match read(&answer, r.amount) {
            Reading::Final(result, reason) => {
                metrics::counter!("payfleet_refunds_total", "result" => if result == RefundResult::Succeeded { "succeeded" } else { "failed" })
                    .increment(1);
                let mut step = RefundStep::new(r.id, r.payment_id);
                step.result = Some(result);
                step.reason = reason;
                refund::hand_on(tx, handoff::CALLBACK, kind::REFUND_RESULT, &step)
            }
            Reading::Unknown(why) => {
                tracing::warn!(refund_id = %r.id, %why, "refund has no final answer yet");
                if status == RefundStatus::Sending {
                    refund::transition(tx.conn(), r.id, status, RefundStatus::Unknown).await?;
                }
                sqlx::query("UPDATE refunds SET last_error = $2 WHERE id = $1")
                    .bind(r.id)
                    .bind(&why)
                    .execute(tx.conn())
                    .await?;
                self.next_refund_query(tx, r, call.query.map_or(1, |n| n + 1))
                    .await
            }
        }
    }

    /// Schedules refund status query `number` through a delay level, or,
    /// when the schedule has run out, leaves the refund reserved as an
    /// exception for ops.
    async fn next_refund_query(
        &self,
        tx: &mut StageTx,
        r: &Refund,
        number: u32,
    ) -> Result<Outcome, StageError> {
        let Some(delay) = self.query_delays.get(number as usize - 1) else {
            refund::transition(
                tx.conn(),
                r.id,
                RefundStatus::Unknown,
                RefundStatus::Exception,
            )
            .await?;
            metrics::counter!("payfleet_refunds_total", "result" => "exception").increment(1);
            tracing::error!(refund_id = %r.id, payment_id = %r.payment_id,
                "refund unresolved after {} status queries: left reserved for ops", number - 1);
            return Ok(Outcome::Applied);
        };
        let level = self.topology.level_for_delay(*delay);
        let mut step = RefundStep::new(r.id, r.payment_id);
        step.query_number = Some(number);
        let message = OutboxMessage::json(
            &self.topology.exchanges().retry,
            &Topology::retry_routing_key(NAME, level),
            kind::REFUND_QUERY,
            Some(&r.payment_id.to_string()),
            &step,
        )
        .map_err(StageError::permanent)?;
        tx.emit(message);
        Ok(Outcome::Applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refund_paid_in_full_or_refused_is_final() {
        let amount: Decimal = "30.00".parse().unwrap();
        let ok = |raw: Value| read(&Ok(raw), amount);
        assert_eq!(
            ok(json!({"status": "SUCCEEDED", "amount": "30.00"})),
            Reading::Final(RefundResult::Succeeded, None)
        );
        assert!(matches!(
            ok(json!({"status": "FAILED", "reason": "refund_declined"})),
            Reading::Final(RefundResult::Failed, Some(_))
        ));
        for raw in [
            json!({"status": "SUCCEEDED", "amount": "29.99"}),
            json!({"status": "PROCESSING", "amount": "30.00"}),
            json!({}),
        ] {
            assert!(matches!(ok(raw), Reading::Unknown(_)));
        }
    }
}
