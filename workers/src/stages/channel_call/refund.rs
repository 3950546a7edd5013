//! A refund (or a same-day reversal: the same steps, the channel's
//! reversal call) at its payment's original channel, whatever the channel's
//! circuit breaker says (the money can only go back the way it came), with
//! the refund id as the channel's idempotency key. intent → call → result,
//! as for charges: the refund is committed `sending` before the call; a
//! timeout, a 5xx or an answer still processing is UNKNOWN and status
//! queries through the delay levels decide; when they run out the refund
//! stays reserved as an exception for ops — never sent again under a new
//! id. A refund found still `sending` (the process died during the call)
//! is asked about, not sent again; one the channel says it has never heard
//! of (the send never reached it) is sent again under the same id — the
//! channel's idempotency key makes that harmless. A wallet payment's
//! refund needs no call: it is credited to the wallet by settlement.

use std::sync::Arc;

use payfleet_common::{
    AttemptId,
    messages::{RefundResult, RefundStep, kind},
    runtime::{Intent, Outcome, StageError, StageTx},
};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::{Call, ChannelCall};
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
    /// Send the refund (again, under its id), or ask what became of it.
    pub ask: Ask,
    /// 0 for the first send; then the number of the step in the
    /// status-query schedule this call is.
    pub number: u32,
    pub adapter: Arc<dyn ChannelAdapter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// The first send.
    Send,
    /// A send again under the same id, after a query found the channel
    /// had never heard of it. A refusal of it says nothing for certain:
    /// the first send may have landed since, and a channel may refuse the
    /// reused id as a client error. Only queries decide.
    Resend,
    Query,
}

impl Ask {
    /// Whether this call sends (rather than asks).
    pub fn sends(self) -> bool {
        matches!(self, Ask::Send | Ask::Resend)
    }
}

impl RefundCall {
    pub async fn call(&self) -> Result<Value, RefundError> {
        let (attempt, id) = (self.attempt_id, self.refund.id);
        match (self.ask.sends(), self.refund.is_reversal()) {
            (true, false) => self.adapter.refund(attempt, id, self.refund.amount).await,
            (false, false) => self.adapter.query_refund(attempt, id).await,
            (true, true) => self.adapter.reverse(attempt, id).await,
            (false, true) => self.adapter.query_reversal(attempt, id).await,
        }
    }
}

/// Where a refund or a payout stands, for what to ask its channel next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Reserved (frozen): never sent.
    Ready,
    /// Committed as being sent.
    Sending,
    /// Sent, without a final answer.
    Unknown,
    /// Decided, or not ours to send.
    Done,
}

/// What to ask the channel of a call in `standing`, on a status query
/// (`query`) or a send (`number`: its step of the status-query schedule
/// when it is a send again): the first send of one ready; a query of one
/// found still sending — the process died during the call, and it is never
/// sent blindly again; the scheduled query of one without an answer; a send
/// again, under the same id, of one the channel had never heard of. `None`:
/// nothing to ask.
pub fn next_ask(standing: Standing, query: bool, number: Option<u32>) -> Option<(Ask, u32)> {
    match (standing, query, number) {
        (Standing::Ready, false, _) => Some((Ask::Send, 0)),
        (Standing::Sending, false, _) => Some((Ask::Query, 1)),
        (Standing::Unknown, true, number) => Some((Ask::Query, number.unwrap_or(1))),
        (Standing::Unknown, false, Some(number)) => Some((Ask::Resend, number)),
        _ => None,
    }
}

/// What a channel's refund answer says.
#[derive(Debug, PartialEq)]
enum Reading {
    Final(RefundResult, Option<String>),
    /// Accepted or processing, another amount, or no answer at all.
    Unknown(String),
    /// The channel has no refund of this id: the send never reached it.
    NeverReceived,
}

/// Reads a refund's (or reversal's) answer to `ask`; `declined` is the
/// reason code of a refusal the channel gives no code of its own for.
fn read(answer: &Result<Value, RefundError>, ask: Ask, amount: Decimal, declined: &str) -> Reading {
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
                Some(match raw["reason"].as_str() {
                    // the channel's own code: a reversal past its cut-off
                    Some(reason) if reason.starts_with("reversal_window_closed") => {
                        reason.to_owned()
                    }
                    Some(reason) => format!("{declined}: {reason}"),
                    None => format!("{declined}: refused by the channel"),
                }),
            ),
            _ => Reading::Unknown(format!("no final answer: {raw}")),
        },
        // The channel refused the first send itself (not refundable there).
        // A throttle or a timeout of it, and a query's or a send-again's
        // 4xx (unauthorised, the id reused, …), say nothing of what the
        // channel did: the money may be back with the payer, so it is no
        // answer, never a failure that would release the reservation.
        Err(RefundError::Refused { status, body })
            if ask == Ask::Send
                && status.is_client_error()
                && !matches!(
                    *status,
                    reqwest::StatusCode::TOO_MANY_REQUESTS | reqwest::StatusCode::REQUEST_TIMEOUT
                ) =>
        {
            Reading::Final(
                RefundResult::Failed,
                Some(format!("{declined}: HTTP {status}: {body}")),
            )
        }
        Err(RefundError::NotFound { .. }) => Reading::NeverReceived,
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
        let standing = match status {
            RefundStatus::Reserved => Standing::Ready,
            RefundStatus::Sending => Standing::Sending,
            RefundStatus::Unknown => Standing::Unknown,
            _ => Standing::Done,
        };
        let Some((ask, number)) = next_ask(standing, query, m.query_number) else {
            return Ok(Intent::Finished(Outcome::Stale {
                reason: format!("refund {} is {}", r.id, status.as_str()),
            }));
        };
        if status == RefundStatus::Reserved {
            refund::transition(
                tx.conn(),
                r.id,
                RefundStatus::Reserved,
                RefundStatus::Sending,
                None,
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
            ask,
            number,
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
        let what = match (call.ask.sends(), r.is_reversal()) {
            (true, false) => "refund",
            (false, false) => "refund_query",
            (true, true) => "reversal",
            (false, true) => "reversal_query",
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
        let declined = if r.is_reversal() {
            "reversal_declined"
        } else {
            "refund_declined"
        };
        match read(&answer, call.ask, r.amount, declined) {
            Reading::Final(result, reason) => {
                metrics::counter!("payfleet_refunds_total", "kind" => r.kind_label(), "result" => if result == RefundResult::Succeeded { "succeeded" } else { "failed" })
                    .increment(1);
                let mut step = RefundStep::new(r.id, r.payment_id);
                step.result = Some(result);
                step.reason = reason;
                refund::hand_on(tx, handoff::CALLBACK, kind::REFUND_RESULT, &step)
            }
            Reading::Unknown(why) => {
                self.not_yet(tx, r, status, &why, kind::REFUND_QUERY, call.number + 1)
                    .await
            }
            Reading::NeverReceived => {
                let why = "the channel has no refund of this id: sending it again";
                self.not_yet(tx, r, status, why, kind::REFUND_RESERVED, call.number + 1)
                    .await
            }
        }
    }

    /// No final answer: the refund is UNKNOWN, and `next` (a query, or a
    /// send again) follows through the delay level of step `number`.
    async fn not_yet(
        &self,
        tx: &mut StageTx,
        r: &Refund,
        status: RefundStatus,
        why: &str,
        next: &str,
        number: u32,
    ) -> Result<Outcome, StageError> {
        tracing::warn!(refund_id = %r.id, why, "refund has no final answer yet");
        if status == RefundStatus::Sending {
            refund::transition(tx.conn(), r.id, status, RefundStatus::Unknown, None).await?;
        }
        sqlx::query("UPDATE refunds SET last_error = $2 WHERE id = $1")
            .bind(r.id)
            .bind(why)
            .execute(tx.conn())
            .await?;
        self.next_refund_step(tx, r, next, number).await
    }

    /// Schedules step `number` of the status-query schedule (`next`: a
    /// query, or a send again) through a delay level, or, when the
    /// schedule has run out, leaves the refund reserved as an exception
    /// for ops.
    async fn next_refund_step(
        &self,
        tx: &mut StageTx,
        r: &Refund,
        next: &str,
        number: u32,
    ) -> Result<Outcome, StageError> {
        let mut step = RefundStep::new(r.id, r.payment_id);
        step.query_number = Some(number);
        let correlation_id = r.payment_id.to_string();
        if !self.schedule_step(tx, next, number, &correlation_id, &step)? {
            refund::transition(
                tx.conn(),
                r.id,
                RefundStatus::Unknown,
                RefundStatus::Exception,
                None,
            )
            .await?;
            metrics::counter!("payfleet_refunds_total", "kind" => r.kind_label(), "result" => "exception")
                .increment(1);
            tracing::error!(refund_id = %r.id, payment_id = %r.payment_id,
                "refund unresolved after {} status queries: left reserved for ops", number - 1);
        }
        Ok(Outcome::Applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refund_paid_in_full_or_refused_is_final() {
        let amount: Decimal = "30.00".parse().unwrap();
        let ok = |raw: Value| read(&Ok(raw), Ask::Send, amount, "refund_declined");
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

    #[test]
    fn a_client_error_refuses_a_first_send_but_answers_no_query_or_send_again() {
        let amount: Decimal = "30.00".parse().unwrap();
        let refused = |status| {
            Err(RefundError::Refused {
                status,
                body: json!({"error": "no"}),
            })
        };
        let not_refundable = || refused(reqwest::StatusCode::CONFLICT);
        for ask in [Ask::Query, Ask::Resend] {
            assert!(matches!(
                read(&not_refundable(), ask, amount, "reversal_declined"),
                Reading::Unknown(_)
            ));
        }
        assert!(matches!(
            read(&not_refundable(), Ask::Send, amount, "reversal_declined"),
            Reading::Final(RefundResult::Failed, Some(_))
        ));
        // a throttle or a timeout of the first send is no refusal
        for status in [
            reqwest::StatusCode::TOO_MANY_REQUESTS,
            reqwest::StatusCode::REQUEST_TIMEOUT,
        ] {
            assert!(matches!(
                read(&refused(status), Ask::Send, amount, "refund_declined"),
                Reading::Unknown(_)
            ));
        }
    }

    #[test]
    fn a_reversal_past_the_cut_off_keeps_the_channels_reason() {
        let amount: Decimal = "30.00".parse().unwrap();
        let closed = json!({"status": "FAILED", "amount": "30.00",
            "reason": "reversal_window_closed: today's cut-off 22:00:00 (UTC) has passed; refund instead"});
        match read(&Ok(closed), Ask::Send, amount, "reversal_declined") {
            Reading::Final(RefundResult::Failed, Some(reason)) => {
                assert!(reason.starts_with("reversal_window_closed: "), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let other = json!({"status": "FAILED", "reason": "risk"});
        assert_eq!(
            read(&Ok(other), Ask::Query, amount, "reversal_declined"),
            Reading::Final(RefundResult::Failed, Some("reversal_declined: risk".into()))
        );
    }
}
