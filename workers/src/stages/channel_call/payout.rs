//! A withdrawal's payout at its payout channel, with the withdrawal id as
//! the channel's idempotency key (`payout_no`). intent → call → result, as
//! for charges and refunds: the withdrawal is committed `sending` before
//! the call; a timeout, a 5xx or an answer still processing is UNKNOWN and
//! status queries through the delay levels decide. A payout cannot be
//! closed like a trade: when the queries run out the withdrawal stays
//! frozen as an exception for ops — releasing it would let the money leave
//! twice. A withdrawal found still `sending` (the process died during the
//! call) is asked about, never sent blindly again; one the channel has
//! never heard of (the send never reached it) is sent again under the same
//! id, which the channel's idempotency key makes harmless. Never a second
//! payout for one withdrawal.

use std::sync::Arc;

use payfleet_common::{
    messages::{WithdrawalResult, WithdrawalStep, kind},
    runtime::{Intent, Outcome, StageError, StageTx},
};
use serde_json::{Value, json};

use super::{
    Call, ChannelCall,
    refund::{Ask, Standing, next_ask},
};
use crate::{
    channels::{ChannelAdapter, PayoutRequest, RefundError},
    domain::{
        handoff,
        withdrawal::{
            self, Withdrawal, WithdrawalStatus,
            answer::{Reading, read_answer},
        },
    },
};

/// A payout call decided by the first transaction.
pub struct PayoutCall {
    pub withdrawal: Withdrawal,
    pub channel: String,
    /// Send the payout (again, under its id), or ask what became of it.
    pub ask: Ask,
    /// 0 for the first send; then the number of the step in the
    /// status-query schedule this call is.
    pub number: u32,
    pub notify_url: String,
    pub adapter: Arc<dyn ChannelAdapter>,
}

impl PayoutCall {
    pub async fn call(&self) -> Result<Value, RefundError> {
        let w = &self.withdrawal;
        match self.ask {
            Ask::Send | Ask::Resend => {
                self.adapter
                    .payout(&request(w, self.notify_url.clone()))
                    .await
            }
            Ask::Query => self.adapter.query_payout(w.id).await,
        }
    }
}

/// Where the channel sends its notices about payout `id`.
pub(crate) fn notify_url(callback_base_url: &str, channel: &str, id: uuid::Uuid) -> String {
    let base = callback_base_url.trim_end_matches('/');
    format!("{base}/callbacks/{channel}/payouts/{id}")
}

/// The payout request for `w`: its id as the channel's idempotency key,
/// the payee's amount (the withdrawal less its fee).
pub(crate) fn request(w: &Withdrawal, notify_url: String) -> PayoutRequest {
    PayoutRequest {
        payout_no: w.id,
        amount: w.payout_amount(),
        currency: w.currency.clone(),
        payee_account: w.payee_account.clone(),
        notify_url,
    }
}

/// Reads the answer to a payout sent again under its id (as ops'
/// `withdrawal requery --send-again` sends one): its refusal is no answer.
pub(crate) fn read_send_again(answer: &Result<Value, RefundError>, w: &Withdrawal) -> Reading {
    read(answer, Ask::Resend, w)
}

/// Reads a payout's answer to `ask`: a reply in the channel's shape as
/// [`read_answer`] does, a refusal of the call by what it says.
fn read(answer: &Result<Value, RefundError>, ask: Ask, w: &Withdrawal) -> Reading {
    match answer {
        Ok(raw) => read_answer(raw, w),
        // The channel refused the first send as malformed: nothing was
        // paid. Any other client error (throttled, a conflict,
        // unauthorised), and any refusal of a send again under the same id
        // (the first may have landed since), says nothing of what the
        // channel did: a query decides.
        Err(RefundError::Refused { status, body })
            if ask == Ask::Send
                && matches!(
                    *status,
                    reqwest::StatusCode::BAD_REQUEST | reqwest::StatusCode::UNPROCESSABLE_ENTITY
                ) =>
        {
            Reading::Final(
                WithdrawalResult::Failed,
                Some(format!("payout_declined: HTTP {status}: {body}")),
                None,
            )
        }
        Err(error @ RefundError::NoPayouts { .. }) => Reading::Final(
            WithdrawalResult::Failed,
            Some(format!("no_payout_channel: {error}")),
            None,
        ),
        Err(RefundError::NotFound { .. }) => Reading::NeverReceived,
        Err(error) => Reading::Unknown(error.to_string()),
    }
}

impl ChannelCall {
    /// First transaction of a withdrawal's step at channel-call.
    pub(super) async fn intend_payout(
        &self,
        tx: &mut StageTx,
        m: &WithdrawalStep,
        query: bool,
    ) -> Result<Intent<Call>, StageError> {
        tx.set_correlation_id(&m.withdrawal_id.to_string());
        let Some(w) = withdrawal::lock(tx.conn(), m.withdrawal_id).await? else {
            return Ok(Intent::Finished(Outcome::NotYet {
                reason: format!("withdrawal {} not found", m.withdrawal_id),
            }));
        };
        let status = w.status()?;
        let standing = match status {
            WithdrawalStatus::Frozen => Standing::Ready,
            WithdrawalStatus::Sending => Standing::Sending,
            WithdrawalStatus::Unknown => Standing::Unknown,
            _ => Standing::Done,
        };
        let Some((ask, number)) = next_ask(standing, query, m.query_number) else {
            return Ok(Intent::Finished(Outcome::Stale {
                reason: format!("withdrawal {} is {}", w.id, status.as_str()),
            }));
        };
        if status == WithdrawalStatus::Frozen {
            let (from, to) = (WithdrawalStatus::Frozen, WithdrawalStatus::Sending);
            withdrawal::transition(tx.conn(), w.id, from, to, None).await?;
        }
        if ask.sends() {
            sqlx::query("UPDATE withdrawals SET sends = sends + 1 WHERE id = $1")
                .bind(w.id)
                .execute(tx.conn())
                .await?;
        }
        let Some(channel) = w.channel.clone() else {
            return Err(StageError::permanent(format!(
                "withdrawal {} names no payout channel",
                w.id
            )));
        };
        let adapter = self.adapters.get(tx.conn(), &channel).await?;
        let notify_url = notify_url(&self.callback_base_url, &channel, w.id);
        Ok(Intent::Call(Call::Payout(PayoutCall {
            withdrawal: w,
            channel,
            ask,
            number,
            notify_url,
            adapter,
        })))
    }

    /// Second transaction: the answer is logged; a final one goes to
    /// callback, no answer schedules the next status query.
    pub(super) async fn record_payout(
        &self,
        tx: &mut StageTx,
        call: PayoutCall,
        answer: Result<Value, RefundError>,
    ) -> Result<Outcome, StageError> {
        let w = &call.withdrawal;
        tx.set_correlation_id(&w.id.to_string());
        let what = if call.ask.sends() {
            "payout"
        } else {
            "payout_query"
        };
        let amount = w.payout_amount();
        let mut payload = json!({"call": what, "payout_no": w.id, "amount": amount.to_string()});
        match &answer {
            Ok(raw) => payload["answer"] = raw.clone(),
            Err(error) => payload["error"] = json!(error.to_string()),
        }
        sqlx::query(
            "INSERT INTO withdrawal_log (withdrawal_id, channel, direction, payload) VALUES ($1, $2, 'request', $3)",
        )
        .bind(w.id)
        .bind(&call.channel)
        .bind(payload)
        .execute(tx.conn())
        .await?;
        let Some(now) = withdrawal::lock(tx.conn(), w.id).await? else {
            return Err(StageError::permanent(format!(
                "withdrawal {} vanished",
                w.id
            )));
        };
        let status = now.status()?;
        if !matches!(
            status,
            WithdrawalStatus::Sending | WithdrawalStatus::Unknown
        ) {
            return Ok(Outcome::Stale {
                reason: format!("withdrawal {} is already {}", w.id, status.as_str()),
            });
        }
        match read(&answer, call.ask, w) {
            Reading::Final(result, reason, channel_fee) => {
                let mut step = WithdrawalStep::new(w.id);
                step.result = Some(result);
                step.reason = reason;
                step.channel_fee = channel_fee;
                withdrawal::hand_on(tx, handoff::CALLBACK, kind::WITHDRAWAL_RESULT, &step)
            }
            Reading::Unknown(why) => {
                self.payout_not_yet(tx, w, status, &why, kind::WITHDRAWAL_QUERY, call.number + 1)
                    .await
            }
            Reading::NeverReceived => {
                let why = "the channel has no payout of this id: sending it again";
                self.payout_not_yet(tx, w, status, why, kind::WITHDRAWAL_FROZEN, call.number + 1)
                    .await
            }
        }
    }

    /// No final answer: the withdrawal is UNKNOWN, and `next` (a query, or
    /// a send again) follows through the delay level of step `number`; when
    /// the schedule has run out it stays frozen as an exception for ops.
    async fn payout_not_yet(
        &self,
        tx: &mut StageTx,
        w: &Withdrawal,
        status: WithdrawalStatus,
        why: &str,
        next: &str,
        number: u32,
    ) -> Result<Outcome, StageError> {
        tracing::warn!(withdrawal_id = %w.id, why, "payout has no final answer yet");
        if status == WithdrawalStatus::Sending {
            let to = WithdrawalStatus::Unknown;
            withdrawal::transition(tx.conn(), w.id, status, to, None).await?;
        }
        sqlx::query("UPDATE withdrawals SET last_error = $2 WHERE id = $1")
            .bind(w.id)
            .bind(why)
            .execute(tx.conn())
            .await?;
        let mut step = WithdrawalStep::new(w.id);
        step.query_number = Some(number);
        if !self.schedule_step(tx, next, number, &w.id.to_string(), &step)? {
            let detail = format!(
                "exception: no final answer after {} status queries; still frozen, for ops to settle with the channel",
                number - 1
            );
            let (from, to) = (WithdrawalStatus::Unknown, WithdrawalStatus::Exception);
            withdrawal::transition(tx.conn(), w.id, from, to, Some(&detail)).await?;
            metrics::counter!("payfleet_withdrawal_exceptions_total").increment(1);
            tracing::error!(withdrawal_id = %w.id, user_id = %w.user_id, "{detail}");
        }
        Ok(Outcome::Applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::withdrawal::answer::tests::withdrawal;

    #[test]
    fn a_reply_is_read_as_a_notice_is() {
        let raw =
            json!({"status": "SUCCEEDED", "amount": "249.75", "currency": "CNY", "fee": "3.00"});
        assert_eq!(
            read(&Ok(raw.clone()), Ask::Query, &withdrawal()),
            read_answer(&raw, &withdrawal())
        );
    }

    #[test]
    fn only_a_malformed_first_send_is_refused_for_good() {
        let w = withdrawal();
        let refused = |status| {
            Err(RefundError::Refused {
                status,
                body: json!({"error": "no"}),
            })
        };
        let bad = refused(reqwest::StatusCode::BAD_REQUEST);
        assert!(matches!(
            read(&bad, Ask::Send, &w),
            Reading::Final(WithdrawalResult::Failed, ..)
        ));
        for ask in [Ask::Query, Ask::Resend] {
            assert!(matches!(read(&bad, ask, &w), Reading::Unknown(_)));
        }
        for status in [
            reqwest::StatusCode::CONFLICT,
            reqwest::StatusCode::TOO_MANY_REQUESTS,
        ] {
            assert!(matches!(
                read(&refused(status), Ask::Send, &w),
                Reading::Unknown(_)
            ));
        }
        let unheard = Err(RefundError::NotFound {
            channel: "card".into(),
            what: "payout",
            id: uuid::Uuid::nil(),
        });
        assert_eq!(read(&unheard, Ask::Query, &w), Reading::NeverReceived);
    }
}
