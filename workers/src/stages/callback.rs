//! callback: resolves a payment from its channel's result (a sync result
//! from channel-call; later also webhooks and status queries). Statuses only
//! move forward; duplicates change nothing; a result for an attempt not yet
//! committed is retried; an amount or currency mismatch puts the payment in
//! exception for review. A result is taken only for an attempt of its own
//! payment at the channel that reported it. A refund's result moves the
//! refund the same way: forward only, a duplicate changes nothing; and a
//! payout's result moves its withdrawal ([`on_payout_result`]).

use chrono::Utc;
use payfleet_common::{
    PaymentId,
    messages::{
        ChannelResult, ChannelStatus, Outcome as Final, PaymentResolved, RefundResult, RefundStep,
        Resolution, SCHEMA_VERSION, WithdrawalStep, kind,
    },
    runtime::{Outcome, StageError, StageTx},
};

use crate::channels::BALANCE;
use crate::domain::{
    attempt::AttemptStatus,
    ledger::ChannelCharge,
    payment::{self, Payment, PaymentStatus},
    refund::{self, Refund, RefundStatus},
    step::PaymentStep,
    withdrawal::Withdrawal,
};

mod payout;
mod wallet_successes;
use payout::on_payout_result;

pub const NAME: &str = crate::domain::handoff::CALLBACK;

pub struct Callback;

impl PaymentStep for Callback {
    type Message = ChannelResult;

    const NAME: &'static str = NAME;

    /// A wallet's success may be resolved set-based with others.
    fn together(&self, m: &ChannelResult) -> bool {
        wallet_successes::admits(m)
    }

    async fn handle_together(
        &self,
        tx: &mut StageTx,
        messages: &[&ChannelResult],
    ) -> Result<Vec<bool>, StageError> {
        wallet_successes::resolve_wallet_successes(tx, messages).await
    }

    async fn handle(
        &self,
        tx: &mut StageTx,
        m: &ChannelResult,
        p: Payment,
    ) -> Result<Outcome, StageError> {
        let attempt: Option<(PaymentId, String, String)> = sqlx::query_as(
            "SELECT payment_id, channel, status FROM payment_attempts WHERE id = $1",
        )
        .bind(m.attempt_id)
        .fetch_optional(tx.conn())
        .await?;
        let Some((payment_id, channel, attempt_status)) = attempt else {
            return Ok(Outcome::NotYet {
                reason: format!("attempt {} not committed yet", m.attempt_id),
            });
        };
        if let Some(refused) = misdirected(m, payment_id, &channel) {
            return Err(refused);
        }
        let attempt_status = AttemptStatus::parse(&attempt_status)?;
        let status = p.status()?;
        // Paid after we gave up on it (expired, closed, failed): the money
        // is owed back. Recorded once, and reported for review.
        let gave_up = matches!(status, PaymentStatus::Failed | PaymentStatus::Cancelled)
            || attempt_status == AttemptStatus::Closed;
        if m.status == ChannelStatus::Succeeded && gave_up && m.channel != BALANCE {
            return owe_back_late_success(tx, m, &p, status).await;
        }
        // A success for another amount or currency than asked: held for
        // review. A failure carries no money, so its amount is not compared.
        if m.status == ChannelStatus::Succeeded
            && (m.amount != p.amount || m.currency != p.currency)
        {
            return hold_mismatch(tx, m, &p, status).await;
        }
        if let Some(outcome) = follow_attempt(tx, m, &p, status, attempt_status).await? {
            return Ok(outcome);
        }
        if m.status == ChannelStatus::Succeeded && m.channel != BALANCE {
            // What the channel says it charged, for settlement and reconciliation.
            sqlx::query(
                "UPDATE payment_attempts SET charged_amount = $2, charged_currency = $3
                 WHERE id = $1 AND status = 'succeeded' AND charged_amount IS NULL",
            )
            .bind(m.attempt_id)
            .bind(m.amount)
            .bind(&m.currency)
            .execute(tx.conn())
            .await?;
        }
        apply(tx, m, &p, status).await
    }

    async fn handle_withdrawal(
        &self,
        tx: &mut StageTx,
        m: &WithdrawalStep,
        w: Withdrawal,
    ) -> Result<Outcome, StageError> {
        on_payout_result(tx, m, w).await
    }

    /// A refund's result (the channel's answer, a status query's, or the
    /// wallet's): its final status, then settlement books or releases it.
    async fn handle_refund(
        &self,
        tx: &mut StageTx,
        m: &RefundStep,
        p: Payment,
        r: Refund,
    ) -> Result<Outcome, StageError> {
        let Some(result) = m.result else {
            return Err(StageError::permanent(format!(
                "refund.result for refund {} carries no result",
                r.id
            )));
        };
        let to = match result {
            RefundResult::Succeeded => RefundStatus::Succeeded,
            RefundResult::Failed => RefundStatus::Failed,
        };
        let status = r.status()?;
        if status == to {
            return Ok(Outcome::Stale {
                reason: format!("refund {} is already {}", r.id, status.as_str()),
            });
        }
        if status.is_terminal() {
            let reason = format!(
                "refund {} is {} but the channel now says {}",
                r.id,
                status.as_str(),
                to.as_str()
            );
            tracing::error!(refund_id = %r.id, %reason, "conflicting refund results");
            return Ok(Outcome::Exception { reason });
        }
        if !status.may_move_to(to) {
            return Ok(Outcome::NotYet {
                reason: format!("refund {} is {}", r.id, status.as_str()),
            });
        }
        refund::transition(tx.conn(), r.id, status, to, m.reason.as_deref()).await?;
        let mut resolved = RefundStep::new(r.id, p.id);
        resolved.result = Some(result);
        resolved.reason = m.reason.clone();
        refund::hand_on(
            tx,
            crate::domain::handoff::SETTLEMENT,
            kind::REFUND_RESOLVED,
            &resolved,
        )
    }
}

/// A success after the payment was given up: the charge is owed back to
/// the payer (once), and the payment is reported for review.
async fn owe_back_late_success(
    tx: &mut StageTx,
    m: &ChannelResult,
    p: &Payment,
    status: PaymentStatus,
) -> Result<Outcome, StageError> {
    let already_owed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM refunds WHERE attempt_id = $1 AND origin = 'automatic')",
    )
    .bind(m.attempt_id)
    .fetch_one(tx.conn())
    .await?;
    if already_owed {
        return Ok(Outcome::Stale {
            reason: format!("refund for attempt {} already owed", m.attempt_id),
        });
    }
    charge(p, m).owe_back(tx.conn(), "late_success").await?;
    sqlx::query(
        "UPDATE payment_attempts SET status = 'succeeded', resolved_at = now() WHERE id = $1",
    )
    .bind(m.attempt_id)
    .execute(tx.conn())
    .await?;
    payment::emit_outcome(tx, p.id, Final::Exception, Some("late_success_refund_owed"))?;
    Ok(Outcome::Exception {
        reason: format!(
            "payment {} is {} but attempt {} succeeded: refund of {} {} owed",
            p.id,
            status.as_str(),
            m.attempt_id,
            m.amount,
            m.currency
        ),
    })
}

/// A success for another amount or currency than asked. The channel holds
/// this money whatever ops decide: the attempt says so, and the books keep
/// it in suspense until the review. A payment already settled or given up
/// is not reopened: its exception is reported and nothing is booked twice.
/// (A wallet capture moves nothing: the money is the wallet's freeze.)
async fn hold_mismatch(
    tx: &mut StageTx,
    m: &ChannelResult,
    p: &Payment,
    status: PaymentStatus,
) -> Result<Outcome, StageError> {
    let detail = format!(
        "amount_mismatch: channel reported {} {}, payment is {} {}",
        m.amount, m.currency, p.amount, p.currency
    );
    let holds = m.channel != BALANCE
        && matches!(
            status,
            PaymentStatus::Frozen | PaymentStatus::Paid | PaymentStatus::Exception
        );
    let newly_held = holds
        && {
            sqlx::query(
                "UPDATE payment_attempts SET status = 'succeeded', channel_reference = COALESCE($2, channel_reference),
                        resolved_at = COALESCE(resolved_at, now()) WHERE id = $1 AND status IN ('sending', 'pending', 'unknown')",
            )
            .bind(m.attempt_id)
            .bind(&m.channel_reference)
            .execute(tx.conn())
            .await?;
            charge(p, m).hold(tx.conn()).await?
        };
    if status == PaymentStatus::Exception {
        // Already under review: a charge not yet on record (an exception
        // from before charges were held) is recorded now.
        return Ok(if newly_held {
            Outcome::Exception { reason: detail }
        } else {
            Outcome::Stale {
                reason: "already held for review".into(),
            }
        });
    }
    hold_for_review(tx, p.id, status, detail, "amount_mismatch").await
}

/// The attempt follows the result when it was still open (a webhook). A
/// failure of a closed attempt is stale; a result that contradicts the
/// attempt's own is held for review. `None`: go on.
async fn follow_attempt(
    tx: &mut StageTx,
    m: &ChannelResult,
    p: &Payment,
    status: PaymentStatus,
    attempt_status: AttemptStatus,
) -> Result<Option<Outcome>, StageError> {
    let attempt_to = AttemptStatus::of(m.status);
    if attempt_status.is_open() {
        sqlx::query("UPDATE payment_attempts SET status = $2, channel_reference = $3, resolved_at = now() WHERE id = $1")
            .bind(m.attempt_id)
            .bind(attempt_to.as_str())
            .bind(&m.channel_reference)
            .execute(tx.conn())
            .await?;
    } else if attempt_status == AttemptStatus::Closed && m.status == ChannelStatus::Failed {
        return Ok(Some(Outcome::Stale {
            reason: format!("attempt {} was closed: nothing was paid", m.attempt_id),
        }));
    } else if attempt_status != attempt_to {
        let detail = format!(
            "attempt {} reported {attempt_to} after {attempt_status}",
            m.attempt_id
        );
        return hold_for_review(tx, p.id, status, detail, "conflicting_results")
            .await
            .map(Some);
    }
    Ok(None)
}

/// What the channel's result does to the payment in `status`.
async fn apply(
    tx: &mut StageTx,
    m: &ChannelResult,
    p: &Payment,
    status: PaymentStatus,
) -> Result<Outcome, StageError> {
    match (m.status, status) {
        (ChannelStatus::Succeeded, PaymentStatus::Frozen) => {
            payment::transition(
                tx.conn(),
                p.id,
                PaymentStatus::Frozen,
                PaymentStatus::Paid,
                None,
            )
            .await?;
            resolve(tx, p.id, Resolution::Paid, None)
        }
        (ChannelStatus::Failed, PaymentStatus::Frozen) => {
            let reason = m.reason.clone().unwrap_or_else(|| "declined".to_owned());
            resolve(tx, p.id, Resolution::Failed, Some(reason))
        }
        (ChannelStatus::Succeeded, PaymentStatus::Paid | PaymentStatus::Settled)
        | (ChannelStatus::Failed, PaymentStatus::Failed | PaymentStatus::Cancelled) => {
            Ok(Outcome::Stale {
                reason: format!("payment {} already {}", p.id, status.as_str()),
            })
        }
        (ChannelStatus::Succeeded, PaymentStatus::Failed | PaymentStatus::Cancelled)
            if m.channel == BALANCE =>
        {
            // A wallet capture moves nothing by itself: the released funds stay released.
            Ok(Outcome::Stale {
                reason: format!(
                    "balance capture after payment {} was {}",
                    p.id,
                    status.as_str()
                ),
            })
        }
        (_, PaymentStatus::Exception) => Ok(Outcome::Stale {
            reason: "already held for review".into(),
        }),
        (result, s) => {
            let detail = format!(
                "channel reported {result:?} but payment {} is {}",
                p.id,
                s.as_str()
            );
            hold_for_review(tx, p.id, s, detail, "conflicting_final_state").await
        }
    }
}

/// Moves a payment that may still move to `exception` there, for review,
/// and reports its exception once; a payment already final keeps its
/// status, and its exception is reported.
async fn hold_for_review(
    tx: &mut StageTx,
    id: PaymentId,
    status: PaymentStatus,
    detail: String,
    reason: &str,
) -> Result<Outcome, StageError> {
    if !status.may_move_to(PaymentStatus::Exception)
        || payment::transition(
            tx.conn(),
            id,
            status,
            PaymentStatus::Exception,
            Some(&detail),
        )
        .await?
    {
        payment::emit_outcome(tx, id, Final::Exception, Some(reason))?;
    }
    Ok(Outcome::Exception { reason: detail })
}

/// The money the channel says it took for this attempt.
fn charge(p: &payment::Payment, m: &ChannelResult) -> ChannelCharge {
    ChannelCharge {
        payment_id: p.id,
        attempt_id: m.attempt_id,
        channel: m.channel.clone(),
        amount: m.amount,
        currency: m.currency.clone(),
    }
}

/// A result for another payment's attempt, or reported by another channel
/// than the attempt's (which is `payment_id`'s at `channel`), resolves
/// nothing: the ingress refuses such notices, and whatever sent this one,
/// it is dead-lettered for review.
fn misdirected(m: &ChannelResult, payment_id: PaymentId, channel: &str) -> Option<StageError> {
    (payment_id != m.payment_id || channel != m.channel).then(|| {
        StageError::permanent(format!(
            "refused: a result from {} for payment {} names attempt {}, which is payment {payment_id}'s at {channel}",
            m.channel, m.payment_id, m.attempt_id
        ))
    })
}

fn resolve(
    tx: &mut StageTx,
    payment_id: PaymentId,
    resolution: Resolution,
    reason: Option<String>,
) -> Result<Outcome, StageError> {
    tx.emit_to_stage(
        crate::domain::handoff::SETTLEMENT,
        kind::PAYMENT_RESOLVED,
        &PaymentResolved {
            schema_version: SCHEMA_VERSION,
            payment_id,
            resolution,
            reason,
            resolved_at: Utc::now(),
        },
    )?;
    Ok(Outcome::Applied)
}
